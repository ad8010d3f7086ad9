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
