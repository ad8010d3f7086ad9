# The wire protocol under MicroPython: the same sealed bytes as CPython, schema checks, topics.
from mpyassert import raises

from edge_agent.core import ed25519
from edge_agent.core import protocol as p

SEED = bytes(range(32))
PUB = ed25519.publickey(SEED)
DEV = p.device_id(PUB)


def _result():
    return p.message(
        "result",
        lease=b"L" * 16,
        task=b"T" * 16,
        dev=DEV,
        kernel="montecarlo_pi",
        rhash=p.result_hash({"inside": 3, "points": 4}),
        units=4,
        started=1700000000,
        finished=1700000001,
    )


def test_device_id():
    assert DEV == "".join("%02x" % b for b in __import__("hashlib").sha256(PUB).digest()[:16])


def test_seal_open_round_trip():
    sealed = p.seal(_result(), lambda m: ed25519.sign(SEED, m), {"inside": 3, "points": 4})
    body, _b, att = p.open_sealed(sealed, 4096, ed25519.verify, PUB, ("result",))
    assert body == _result() and att == {"inside": 3, "points": 4}
    bad = bytearray(sealed)
    bad[-70] ^= 1
    e = raises(p.ProtocolError, p.open_sealed, bytes(bad), 4096, ed25519.verify, PUB, ("result",))
    assert e.code in ("bad_signature", "bad_cbor", "bad_schema")


# SHA-256 of the sealed result CPython (pynacl + cbor2) makes; tests/test_protocol.py pins it.
CPYTHON_SEALED_SHA256 = "ff2096af825365f8057bcb2773dc4f21475790982ce6fededd007785adb63566"


def test_sealed_bytes_match_cpython():
    import hashlib

    from mpyassert import unhex

    sealed = p.seal(_result(), lambda m: ed25519.sign(SEED, m), {"inside": 3, "points": 4})
    assert hashlib.sha256(sealed).digest() == unhex(CPYTHON_SEALED_SHA256)


def test_schema_errors():
    e = raises(
        p.ProtocolError,
        p.validate,
        {"v": 1, "t": "pull", "req": 1, "n": 99, "secs": 5, "kernels": []},
    )
    assert e.code == "bad_schema" and "pull.n" in e.msg
    e = raises(p.ProtocolError, p.parse_topic, "edge/v1/dev/tok-0123456789abcdef/pull")
    assert e.code == "bad_topic"
    assert p.parse_topic(p.device_topic(DEV, "result")) == ("result", DEV)
