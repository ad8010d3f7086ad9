"""The portable canonical CBOR codec against cbor2 (canonical=True), and its strict decoder.

tests/data/cbor_vectors.json is derived from ENCODE_VALUES and REJECT_CASES below and read by the
MicroPython twin of this file (tests/mpy/test_cbor.py); rewrite it with
`.venv/bin/python -m tests.test_cbor` after changing either list.
"""

from __future__ import annotations

import ast
import json
import sys
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.core.cbor import MAX_DEPTH, MAX_ITEMS, MAX_SIZE, CBORError, dumps, loads
from tests.conftest import DATA

VECTORS_PATH = DATA / "cbor_vectors.json"

# Where the encoded argument changes size (and MicroPython's 31-bit small ints end); the values
# one below and above each are taken too.
ARG_BOUNDARIES = [0, 24, 256, 65536, 2**30, 2**31, 2**32, 2**63, 2**64]
INT_BOUNDARIES = sorted(
    {
        n
        for b in ARG_BOUNDARIES
        for n in (b - 1, b, b + 1, -1 - b, -b, -2 - b)
        if -(2**64) <= n < 2**64
    }
)
LENGTH_BOUNDARIES = [0, 1, 23, 24, 255, 256, 1000]

ENCODE_VALUES: list[Any] = [
    *INT_BOUNDARIES,
    *(b"\x5a" * n for n in LENGTH_BOUNDARIES),
    *("z" * n for n in LENGTH_BOUNDARIES),
    "é",
    "€",
    "\U0001f600",
    "ascii and ünïcödé \u2603",
    False,
    True,
    None,
    [],
    [1, [2, 3]],
    list(range(25)),
    [None, True, False, b"", ""],
    # No map mixes str and bytes keys: MicroPython warns on every bytes/str comparison that its
    # dicts make (test_mixed_str_and_bytes_keys covers that mix here).
    {},
    {"a": 1},
    {"b": 1, "aa": 2, 100: 3, -1: 4, "": 6, 0: [7, {"n": None}]},
    {b"x": 5, b"": 6, b"yy": 7, 24: 8, -25: 9},
    {2**64 - 1: "max", -(2**64): "min", 23: "23", 24: "24"},
    {"task": b"\x01" * 32, "lease": 7, "units": 2**40, "result": [b"\xaa" * 32, -5]},
]

# (hex input, exact error): every rejection class of the decoder, with the offset it reports.
REJECT_CASES: list[tuple[str, str]] = [
    ("", "truncated input: item missing at offset 0"),
    ("0000", "1 trailing bytes at offset 1"),
    ("820102ff", "1 trailing bytes at offset 3"),
    ("18", "truncated input: 1-byte argument cut short at offset 0"),
    ("1b00000001000000", "truncated input: 8-byte argument cut short at offset 0"),
    ("6261", "truncated input: string of 2 bytes cut short at offset 0"),
    ("8301", "truncated input: 3 items announced at offset 0"),
    ("a20102", "truncated input: 4 items announced at offset 0"),
    ("820181", "truncated input: 1 items announced at offset 2"),
    ("82626161", "truncated input: item missing at offset 4"),
    ("5f4100ff", "indefinite-length item at offset 0"),
    ("7f6100ff", "indefinite-length item at offset 0"),
    ("9fff", "indefinite-length item at offset 0"),
    ("bfff", "indefinite-length item at offset 0"),
    ("811c", "reserved additional information 28 at offset 1"),
    ("1f", "reserved additional information 31 at offset 0"),
    ("1817", "non-shortest argument 23 in 1 bytes at offset 0"),
    ("1900ff", "non-shortest argument 255 in 2 bytes at offset 0"),
    ("1a0000ffff", "non-shortest argument 65535 in 4 bytes at offset 0"),
    ("1b00000000ffffffff", "non-shortest argument 4294967295 in 8 bytes at offset 0"),
    ("3800", "non-shortest argument 0 in 1 bytes at offset 0"),
    ("5801" + "00", "non-shortest argument 1 in 1 bytes at offset 0"),
    ("780161", "non-shortest argument 1 in 1 bytes at offset 0"),
    ("980100", "non-shortest argument 1 in 1 bytes at offset 0"),
    ("b8010000", "non-shortest argument 1 in 1 bytes at offset 0"),
    ("a2616201616102", "map keys out of order at offset 4"),
    ("a2626161016162" + "02", "map keys out of order at offset 5"),
    ("a220000102", "map keys out of order at offset 3"),
    ("a201000101", "duplicate map key at offset 3"),
    ("a1f501", "map key that is not an int, text or bytes at offset 1"),
    ("a1f601", "map key that is not an int, text or bytes at offset 1"),
    ("a18001", "map key that is not an int, text or bytes at offset 1"),
    ("a1a001", "map key that is not an int, text or bytes at offset 1"),
    ("a1c00001", "map key that is not an int, text or bytes at offset 1"),
    ("f90000", "float at offset 0"),
    ("fa3f800000", "float at offset 0"),
    ("fb3ff0000000000000", "float at offset 0"),
    ("c11a514b67b0", "tag at offset 0"),
    ("c249010000000000000000", "tag at offset 0"),
    ("f7", "undefined at offset 0"),
    ("f0", "simple value at offset 0"),
    ("f820", "simple value at offset 0"),
    ("ff", "unexpected break at offset 0"),
    ("8161ff", "invalid UTF-8 in text string at offset 1"),
    ("6180", "invalid UTF-8 in text string at offset 0"),
    ("62c328", "invalid UTF-8 in text string at offset 0"),
    ("62e282", "invalid UTF-8 in text string at offset 0"),
    ("62c0b0", "invalid UTF-8 in text string at offset 0"),
    ("62c1bf", "invalid UTF-8 in text string at offset 0"),
    ("63e09fbf", "invalid UTF-8 in text string at offset 0"),
    ("64f08fbfbf", "invalid UTF-8 in text string at offset 0"),
    ("63eda080", "invalid UTF-8 in text string at offset 0"),
    ("63edbfbf", "invalid UTF-8 in text string at offset 0"),
    ("64f4908080", "invalid UTF-8 in text string at offset 0"),
    ("64f5808080", "invalid UTF-8 in text string at offset 0"),
]


def vectors_document() -> dict[str, Any]:
    """The content of cbor_vectors.json: encodings by cbor2, rejections by this codec's spec."""
    return {
        "comment": "Generated by `python -m tests.test_cbor` from tests/test_cbor.py; "
        "test_vectors_file_matches_cbor2 keeps it current. value is a Python literal.",
        "encode": [
            {"value": repr(v), "hex": cbor2.dumps(v, canonical=True).hex()} for v in ENCODE_VALUES
        ],
        "reject": [{"hex": h, "error": e} for h, e in REJECT_CASES],
    }


def write_vectors() -> None:
    # UTF-8, not \u escapes: MicroPython's json leaves an escaped surrogate pair as two surrogates.
    document = vectors_document()
    lines = ["{", f'"comment": {json.dumps(document["comment"])},']
    for section, closing in (("encode", "],"), ("reject", "]")):
        entries = [json.dumps(e, ensure_ascii=False) for e in document[section]]
        lines += [f'"{section}": [', ",\n".join(entries), closing]
    lines.append("}")
    VECTORS_PATH.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_vectors_file_matches_cbor2() -> None:
    on_disk = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    assert on_disk == vectors_document(), "stale: run `python -m tests.test_cbor`"


@pytest.mark.parametrize("entry", vectors_document()["encode"], ids=lambda e: e["value"][:40])
def test_known_vector(entry: dict[str, str]) -> None:
    value = ast.literal_eval(entry["value"])
    encoded = bytes.fromhex(entry["hex"])
    assert dumps(value) == encoded
    assert loads(encoded) == value


@pytest.mark.parametrize(("hex_input", "error"), REJECT_CASES)
def test_rejects_non_canonical_input(hex_input: str, error: str) -> None:
    with pytest.raises(CBORError) as info:
        loads(bytes.fromhex(hex_input))
    assert str(info.value) == error


# Ints over the whole encodable range, weighted towards every argument-size boundary.
ints = st.integers(-(2**64), 2**64 - 1) | st.sampled_from(INT_BOUNDARIES)
sized_bytes = st.binary(max_size=300) | st.sampled_from(LENGTH_BOUNDARIES).map(lambda n: b"\0" * n)
sized_text = st.text(max_size=100) | st.sampled_from(LENGTH_BOUNDARIES).map(lambda n: "t" * n)
scalars = ints | sized_bytes | sized_text | st.booleans() | st.none()
keys = ints | st.binary(max_size=20) | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(keys, inner, max_size=8),
    max_leaves=40,
)


@given(values)
def test_encoding_equals_cbor2_canonical(value: Any) -> None:
    assert dumps(value) == cbor2.dumps(value, canonical=True)


@given(values)
def test_round_trip(value: Any) -> None:
    assert loads(dumps(value)) == value


@given(values)
def test_decodes_what_cbor2_encodes(value: Any) -> None:
    assert loads(cbor2.dumps(value, canonical=True)) == value


def check_canonical_or_rejected(data: bytes) -> None:
    """loads accepts exactly the canonical encodings: what it returns re-encodes to the input."""
    try:
        value = loads(data)
    except CBORError:
        return
    assert dumps(value) == data
    assert cbor2.loads(data) == value


@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_canonical_or_rejected(data: bytes) -> None:
    check_canonical_or_rejected(data)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes replaced, inserted, deleted or cut off."""
    data = bytearray(dumps(draw(values)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = draw(st.integers(0, 255))
        if edit == "replace" and at < len(data):
            data[at] = byte
        elif edit == "insert":
            data.insert(at, byte)
        elif edit == "delete" and at < len(data):
            del data[at]
        elif edit == "truncate":
            del data[at:]
    return bytes(data)


@given(mutated_encodings())
def test_mutated_encodings_are_canonical_or_rejected(data: bytes) -> None:
    check_canonical_or_rejected(data)


def test_mixed_str_and_bytes_keys() -> None:
    value = {"b": 1, b"b": 2, "": 3, b"": 4, "aa": 5, 1: 6}
    encoded = dumps(value)
    assert encoded == cbor2.dumps(value, canonical=True)
    assert encoded.hex() == "a6010640046003416202616201626161" + "05"
    assert loads(encoded) == value


@st.composite
def maps_in_any_order(draw: st.DrawFn) -> bytes:
    """A map encoded pair by pair in drawn order, keys often repeated: rarely canonical."""
    key_pool = draw(st.lists(keys, min_size=1, max_size=4))
    pairs = draw(st.lists(st.tuples(st.sampled_from(key_pool), scalars), max_size=6))
    body = b"".join(dumps(k) + dumps(v) for k, v in pairs)
    return bytes([0xA0 + len(pairs)]) + body  # at most 6 pairs: the length fits the initial byte


@given(maps_in_any_order())
def test_unsorted_or_repeated_keys_are_rejected(data: bytes) -> None:
    check_canonical_or_rejected(data)


def test_tuple_bytearray_memoryview_encode_like_list_and_bytes() -> None:
    assert (
        dumps((1, (2, b"x")))
        == dumps([1, [2, b"x"]])
        == cbor2.dumps((1, (2, b"x")), canonical=True)
    )
    assert (
        dumps(bytearray(b"abc")) == dumps(b"abc") == cbor2.dumps(bytearray(b"abc"), canonical=True)
    )
    # cbor2 encodes a memoryview as an array of ints; here it is the bytes it views.
    assert dumps(memoryview(b"abcdef")[1:3]) == dumps(b"bc")


def test_loads_accepts_bytearray_and_memoryview() -> None:
    encoded = dumps({"k": [1, b"v"]})
    assert loads(bytearray(encoded)) == loads(memoryview(encoded)) == {"k": [1, b"v"]}


def test_decoded_types() -> None:
    value = loads(bytes.fromhex("a3614140614280614300"))
    assert value == {"A": b"", "B": [], "C": 0}
    assert [type(v) for v in value.values()] == [bytes, list, int]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1.5, "cannot encode float 1.5: floats are not allowed in canonical messages"),
        ([0.0], "cannot encode float 0.0: floats are not allowed in canonical messages"),
        (2**64, "cannot encode int 18446744073709551616: above 2**64-1"),
        (-(2**64) - 1, "cannot encode int -18446744073709551617: below -2**64"),
        ({1, 2}, "cannot encode type set"),
        ({"a": object()}, "cannot encode type object"),
        (1j, "cannot encode type complex"),
        ({True: 1}, "cannot encode map key of type bool: keys are int, str or bytes"),
        ({None: 1}, "cannot encode map key of type NoneType: keys are int, str or bytes"),
        ({(1, 2): 1}, "cannot encode map key of type tuple: keys are int, str or bytes"),
        ("\ud800", "cannot encode str: not valid Unicode text"),
    ],
)
def test_dumps_rejects(value: Any, error: str) -> None:
    with pytest.raises(CBORError) as info:
        dumps(value)
    assert str(info.value).startswith(error)


def test_dumps_rejects_cycles() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(CBORError, match="nested deeper than 64"):
        dumps(cyclic)


class NeverEqual(str):
    """Two such keys with the same text are distinct dict keys that encode identically."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


def test_dumps_rejects_keys_with_equal_encodings() -> None:
    with pytest.raises(CBORError, match="two keys encode to b'ak'"):
        dumps({NeverEqual("k"): 1, NeverEqual("k"): 2})


def test_cbor_error_is_a_value_error() -> None:
    assert issubclass(CBORError, ValueError)


def test_loads_rejects_non_bytes() -> None:
    with pytest.raises(CBORError, match="cannot decode type str: want bytes"):
        loads("00")


def test_default_limits() -> None:
    assert (MAX_SIZE, MAX_DEPTH, MAX_ITEMS) == (65536, 16, 4096)


def nested_lists(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_max_depth() -> None:
    assert loads(dumps(nested_lists(MAX_DEPTH))) == nested_lists(MAX_DEPTH)
    with pytest.raises(CBORError, match=r"^nesting deeper than max_depth=16 at offset 16$"):
        loads(dumps(nested_lists(MAX_DEPTH + 1)))
    with pytest.raises(CBORError, match=r"^nesting deeper than max_depth=2 at offset 4$"):
        loads(dumps({"a": [[1]]}), max_depth=2)
    assert loads(dumps(7), max_depth=0) == 7


def test_max_items_counts_every_data_item() -> None:
    # The array itself plus its elements.
    assert loads(dumps(list(range(MAX_ITEMS - 1)))) == list(range(MAX_ITEMS - 1))
    with pytest.raises(CBORError, match=r"^more than max_items=4096 data items at offset "):
        loads(dumps(list(range(MAX_ITEMS))))
    # A map of two pairs is five items: the map, two keys, two values.
    assert loads(dumps({1: 2, 3: 4}), max_items=5) == {1: 2, 3: 4}
    with pytest.raises(CBORError, match=r"^more than max_items=4 data items at offset 4$"):
        loads(dumps({1: 2, 3: 4}), max_items=4)


def test_max_size() -> None:
    biggest = dumps(b"\0" * (MAX_SIZE - 3))
    assert len(biggest) == MAX_SIZE and loads(biggest) == b"\0" * (MAX_SIZE - 3)
    with pytest.raises(
        CBORError, match=r"^input of 65537 bytes exceeds max_size=65536 at offset 0$"
    ):
        loads(dumps(b"\0" * (MAX_SIZE - 2)))
    assert loads(dumps(b"ab"), max_size=3) == b"ab"
    with pytest.raises(CBORError, match="exceeds max_size=2"):
        loads(dumps(b"ab"), max_size=2)


def test_huge_announced_lengths_fail_fast() -> None:
    # 2**64-1 elements announced in nine bytes: rejected before any allocation or loop.
    for major in (0x9B, 0xBB, 0x5B, 0x7B):
        with pytest.raises(CBORError, match="truncated input"):
            loads(bytes([major]) + b"\xff" * 8)


if __name__ == "__main__":
    write_vectors()
    sys.exit(0)
