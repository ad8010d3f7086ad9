# The canonical CBOR codec under MicroPython: the vectors that tests/test_cbor.py checks against
# cbor2 (same bytes on both interpreters), every rejection class, and the 64-bit boundaries that
# exceed MicroPython's small ints.
from mpyassert import load_json, raises, unhex

from edge_agent.core.cbor import MAX_DEPTH, MAX_ITEMS, CBORError, dumps, loads

VECTORS = load_json("tests/data/cbor_vectors.json")


def test_known_vectors_encode_and_decode():
    assert len(VECTORS["encode"]) > 50
    for entry in VECTORS["encode"]:
        value = eval(entry["value"])  # a Python literal written by the CPython test
        encoded = unhex(entry["hex"])
        assert dumps(value) == encoded, entry["value"]
        assert loads(encoded) == value, entry["value"]


def test_rejections_with_their_messages():
    assert len(VECTORS["reject"]) > 40
    for entry in VECTORS["reject"]:
        e = raises(CBORError, loads, unhex(entry["hex"]))
        assert str(e) == entry["error"], (entry["hex"], str(e))


def test_lenient_utf8_forms_rejected():
    # MicroPython's own decoder accepts these; the codec must not.
    for raw in (b"\xed\xa0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xf4\x90\x80\x80"):
        e = raises(CBORError, loads, bytes((0x60 | len(raw),)) + raw)
        assert str(e) == "invalid UTF-8 in text string at offset 0"
    assert loads(b"\x64\xf4\x8f\xbf\xbf") == chr(0x10FFFF)
    assert loads(b"\x63\xef\xbf\xbf") == chr(0xFFFF)
    assert loads(b"\x63\xed\x9f\xbf") == chr(0xD7FF)


def test_surrogate_text_not_encoded():
    e = raises(CBORError, dumps, "a" + chr(0xD800))
    assert str(e).startswith("cannot encode str: not valid Unicode text")


def test_64_bit_boundaries():
    for bits in range(0, 65):
        for n in (2**bits - 1, 2**bits, -(2**bits), -(2**bits) - 1):
            if n >= 2**64 or n < -(2**64):
                raises(CBORError, dumps, n)
                continue
            encoded = dumps(n)
            assert loads(encoded) == n, n
            # Shortest form: the argument's size is the first of 0, 1, 2, 4, 8 bytes it fits.
            arg = n if n >= 0 else -1 - n
            size = (
                0 if arg < 24 else 1 if arg < 256 else 2 if arg < 65536 else 4 if arg < 2**32 else 8
            )
            assert len(encoded) == 1 + size, n
    assert dumps(2**64 - 1) == b"\x1b" + b"\xff" * 8
    assert dumps(-(2**64)) == b"\x3b" + b"\xff" * 8


def test_length_boundaries():
    for n in (23, 24, 255, 256, 65535, 65536):
        # A byte string's length is encoded like the int n, under major type 2.
        head = dumps(b"\x00" * n)[:-n]
        as_int = dumps(n)
        assert head == bytes((as_int[0] | 0x40,)) + as_int[1:], n
        assert loads(dumps(b"\x00" * n), max_size=70000) == b"\x00" * n


def test_map_key_order_is_length_first():
    value = {"bb": 1, "a": 2, 1000: 3, -1: 4, 0: 5}
    assert dumps(value) == unhex("a5000520046161021903e80362626201")
    assert loads(dumps(value)) == value


def test_float_and_unsupported_types():
    assert str(raises(CBORError, dumps, 1.5)).startswith("cannot encode float")
    assert str(raises(CBORError, dumps, {1, 2})) == "cannot encode type set"
    assert str(raises(CBORError, dumps, {True: 1})).startswith("cannot encode map key of type bool")


def test_limits():
    deep = []
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    assert loads(dumps(deep)) == deep
    assert str(raises(CBORError, loads, dumps([deep]))) == (
        "nesting deeper than max_depth=16 at offset 16"
    )
    assert len(loads(dumps(list(range(MAX_ITEMS - 1))))) == MAX_ITEMS - 1
    raises(CBORError, loads, dumps(list(range(MAX_ITEMS))))
    assert str(raises(CBORError, loads, b"\x00" * 3, max_size=2)) == (
        "input of 3 bytes exceeds max_size=2 at offset 0"
    )


def test_cycle_rejected():
    cyclic = []
    cyclic.append(cyclic)
    assert "nested deeper than 64" in str(raises(CBORError, dumps, cyclic))
