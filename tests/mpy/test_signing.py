# edge_agent.core.signing under the real MicroPython interpreter: there is no pynacl here, so
# verify must be the pure-Python fallback, accept the RFC 8032 vectors and reject anything else
# with False, never an exception. The pynacl path is tested in tests/test_signing.py (CPython).
import sys

from mpyassert import load_json, unhex

from edge_agent.core import signing

VECTORS = load_json("tests/data/crypto_vectors.json")


def test_falls_back_to_the_core_verify_without_pynacl():
    # pytest also collects this file on CPython, where pynacl is there.
    if sys.implementation.name == "micropython":
        assert signing.VerifyKey is None
        assert signing.verify is signing.core_verify
    else:
        assert signing.verify is signing.nacl_verify


def test_accepts_the_rfc8032_signatures():
    for v in VECTORS["ed25519"]:
        assert signing.verify(unhex(v["public_key"]), unhex(v["message"]), unhex(v["signature"]))


def test_rejects_a_changed_message_or_a_bad_argument_with_false():
    v = VECTORS["ed25519"][0]
    pub, msg, sig = unhex(v["public_key"]), unhex(v["message"]), unhex(v["signature"])
    assert signing.verify(pub, msg + b"x", sig) is False
    assert signing.verify(pub[:31], msg, sig) is False
    assert signing.verify(pub, msg, sig[:63]) is False
    assert signing.verify(None, msg, sig) is False
    assert signing.verify(pub, "text", sig) is False
