# The sha256_search twin under MicroPython: the known answers tests/test_kernel_sha256_search.py
# checks against the C kernel (nonces up to 2**64 - 1, past MicroPython's small ints), chunking,
# the hasher without hashlib, and the rejections.
import hashlib
import struct

from mpyassert import load_json, raises, unhex

from edge_agent.core.kernels import base, sha256_search
from edge_agent.core.kernels.base import KernelError

VECTORS = load_json("tests/data/sha256_search_vectors.json")


def decode_params(v):
    p = dict(v["params"])
    p["prefix"] = unhex(p["prefix"])
    p["target"] = unhex(p["target"])
    return p


def expected(v):
    r = dict(v["result"])
    r["best_hash"] = unhex(r["best_hash"])
    return r


def test_known_vectors_whole_and_chunked():
    assert len(VECTORS) >= 14
    for v in VECTORS:
        p = decode_params(v)
        want = expected(v)
        assert base.run(sha256_search, p) == want, v["params"]
        assert base.run(sha256_search, p, chunk_units=3) == want, v["params"]


def test_pure_hasher_gives_the_same_answers():
    # Ports without hashlib.sha256 take this path; a few vectors keep the test quick.
    for v in VECTORS[:4]:
        p = sha256_search.validate(decode_params(v))
        state = sha256_search.start(p)
        sha256_search.scan(sha256_search.hasher(p["prefix"], "pure"), p, state, p["count"])
        assert sha256_search.result(p, state) == expected(v), v["params"]


def test_pure_sha256_matches_hashlib():
    for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 200):
        data = bytes(range(n % 256)) + bytes(max(0, n - 256))
        data = (data * 2)[:n]
        assert sha256_search.sha256_pure(data) == hashlib.sha256(data).digest(), n


def test_top_nonce_packs_as_eight_little_endian_bytes():
    top = 2**64 - 1
    assert struct.pack("<Q", top) == b"\xff" * 8
    assert struct.pack("<Q", 2**32 + 2) == b"\x02\x00\x00\x00\x01\x00\x00\x00"
    p = sha256_search.validate({"prefix": b"p", "start": top, "count": 1,
                                "target": b"\xff" * 32, "max_found": 1})
    r = base.run(sha256_search, p)
    assert r["found"] == [top] and r["best_nonce"] == top
    assert r["best_hash"] == hashlib.sha256(b"p" + b"\xff" * 8).digest()


def test_bad_params_rejected():
    good = {"prefix": b"", "start": 0, "count": 1, "target": bytes(32)}
    cases = [
        ("prefix", "x", "'prefix' must be bytes"),
        ("prefix", bytes(257), "'prefix' has 257 bytes"),
        ("start", True, "'start' must be an int"),
        ("start", -1, "out of range"),
        ("start", 2**64, "out of range"),
        ("count", 0, "out of range"),
        ("count", 2**32 + 1, "out of range"),
        ("target", bytes(31), "'target' has 31 bytes"),
        ("max_found", 65, "out of range"),
        ("max_found", False, "'max_found' must be an int"),
        ("extra", 1, "unknown param 'extra'"),
    ]
    for key, value, message in cases:
        p = dict(good)
        p[key] = value
        e = raises(KernelError, sha256_search.validate, p)
        assert message in str(e), (key, str(e))
    p = dict(good)
    p["start"] = 2**64 - 1
    p["count"] = 2
    assert "passes 2**64 - 1" in str(raises(KernelError, sha256_search.validate, p))
