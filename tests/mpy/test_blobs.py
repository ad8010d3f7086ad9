# Blob references resolve to checked bytes under MicroPython (tests/test_jobs.py: CPython).
import hashlib

from mpyassert import raises

from edge_agent.core import blobs

DATA = b"weights" * 10
H = hashlib.sha256(DATA).digest()


def test_resolve_substitutes_and_checks():
    params = {"w": {"blob": H}, "m": 3}
    assert blobs.refs(params) == [H]
    assert blobs.resolve(params, {H: DATA}) == {"w": DATA, "m": 3}
    e = raises(blobs.BlobError, blobs.resolve, params, {H: DATA + b"!"})
    assert "does not match" in str(e)
    e = raises(blobs.BlobError, blobs.resolve, params, {})
    assert "not available" in str(e)
    e = raises(blobs.BlobError, blobs.resolve, {"w": {"blob": 5}}, {})
    assert "not available" in str(e)


def test_check_refs_wants_exact_sha256_references():
    blobs.check_refs({"w": {"blob": H}, "m": 3, "name": "x", "data": b"raw"})
    blobs.check_refs({})
    bad = (
        {"blob": H[:31]},  # not 32 bytes
        {"blob": 5},  # not bytes
        {"blob": H, "extra": 1},  # more than the reference
        {"hash": H},  # another key
        {},  # an empty map is not a reference either
    )
    for value in bad:
        e = raises(blobs.BlobError, blobs.check_refs, {"m": 3, "w": value})
        assert str(e) == "params.w: bad blob reference", str(e)
