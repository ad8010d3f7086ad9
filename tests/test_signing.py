"""edge_agent.core.signing on CPython: verify is pynacl's, and both backends agree on the RFC 8032
vectors, tampered signatures and malformed arguments (False, never an exception).
tests/mpy/test_signing.py checks the pure-Python fallback under the real MicroPython."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import nacl.signing
import pytest

from edge_agent.core import signing
from tests.conftest import ROOT

VECTORS = json.loads((ROOT / "tests" / "data" / "crypto_vectors.json").read_text())["ed25519"]
BACKENDS = pytest.mark.parametrize(
    "verify", [signing.nacl_verify, signing.core_verify], ids=["pynacl", "core"]
)


def test_cpython_uses_pynacl() -> None:
    assert signing.VerifyKey is nacl.signing.VerifyKey
    assert signing.verify is signing.nacl_verify


@BACKENDS
@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_accepts_the_rfc8032_signatures(verify: Callable[..., bool], vector: Any) -> None:
    pub, msg, sig = (bytes.fromhex(vector[k]) for k in ("public_key", "message", "signature"))
    assert verify(pub, msg, sig) is True


@BACKENDS
def test_rejects_every_single_bit_flip(verify: Callable[..., bool]) -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    pub, msg = bytes(key.verify_key), b"lease"
    sig = key.sign(msg).signature
    for bit in range(0, 64 * 8, 7):
        bad = bytearray(sig)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert verify(pub, msg, bytes(bad)) is False


@BACKENDS
@pytest.mark.parametrize(
    "args",
    [(b"\x01" * 31, b"m", b"\x00" * 64), (b"\x01" * 32, b"m", b"\x00" * 63),
     (None, b"m", b"\x00" * 64), (b"\x01" * 32, "text", b"\x00" * 64)],
    ids=["short-key", "short-sig", "none-key", "str-message"],
)
def test_malformed_arguments_give_false(verify: Callable[..., bool], args: Any) -> None:
    assert verify(*args) is False
