"""The gateway's Ed25519 key: made at first start (0600), signs leases, acks and enrolments.

Devices learn its public key at enrolment and check it against the token's fingerprint (the first
8 bytes of its SHA-256), so a broker in the middle cannot substitute its own key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import tempfile
from pathlib import Path

import nacl.signing

SEED_LEN = 32
FINGERPRINT_LEN = 8
_PASSWORD_DOMAIN = b"edge-grid/mqtt-password/v1\x00"


class GatewayKeyError(RuntimeError):
    """The key file exists but cannot be used."""


class GatewayKey:
    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._signing = nacl.signing.SigningKey(seed)
        self.pub = bytes(self._signing.verify_key)
        self.fingerprint = hashlib.sha256(self.pub).digest()[:FINGERPRINT_LEN]

    @classmethod
    def load_or_create(cls, path: Path) -> GatewayKey:
        """Read the key file, or make it (0600 from the first byte). Two processes starting at
        once agree: the file is linked into place only if absent, and both then read it."""
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(os.urandom(SEED_LEN))
                    out.flush()
                    os.fsync(out.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        seed = path.read_bytes()
        if len(seed) != SEED_LEN:
            raise GatewayKeyError(f"{path}: want a {SEED_LEN}-byte seed, got {len(seed)} bytes")
        if path.stat().st_mode & 0o077:
            raise GatewayKeyError(f"{path}: must not be readable by others (chmod 600)")
        return cls(seed)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._signing.sign(message).signature)

    def device_password(self, device_id: str) -> str:
        """The device's MQTT password, derived from the gateway key: the same on every worker
        and for a repeated enrolment, so a duplicate reply never invalidates stored ones."""
        mac = hmac.new(self._seed, _PASSWORD_DOMAIN + device_id.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode()[:32]
