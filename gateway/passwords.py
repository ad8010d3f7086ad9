"""Mosquitto's password file, written by us in the format ``mosquitto_passwd`` 2.0 makes.

A line is ``username:$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt)>``
(Mosquitto 2.0 ``$7$``, 12-byte salt, 101 iterations by default). Hashing only the new or changed
entries and rewriting the file in one atomic rename keeps thousands of devices cheap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

GATEWAY_USERNAME = "gateway"
# Device id (32 lowercase hex) or one-time enrolment token account (tok- + 16 hex). Neither can
# contain the MQTT wildcards + # or a level separator /, so %u in an ACL pattern fills one level.
_DEVICE_RE = re.compile(r"[0-9a-f]{32}")
_TOKEN_RE = re.compile(r"tok-[0-9a-f]{16}")
MIN_PASSWORD_LEN = 16
MAX_PASSWORD_LEN = 128
# What mosquitto_passwd 2.0 uses; the broker reads the count from each line.
PBKDF2_ITERATIONS = 101
SALT_LEN = 12
_HASH_RE = re.compile(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


class CredentialError(ValueError):
    """A username or password the broker must not accept."""


def is_device_id(name: str) -> bool:
    return _DEVICE_RE.fullmatch(name) is not None


def is_token_user(name: str) -> bool:
    return _TOKEN_RE.fullmatch(name) is not None


def check_username(name: str) -> str:
    """Return ``name`` if it is a device id, a token account or the gateway account."""
    if name == GATEWAY_USERNAME or is_device_id(name) or is_token_user(name):
        return name
    raise CredentialError(
        f"username {name!r} is neither a device id (32 lowercase hex), "
        f"a token account (tok-<16 hex>) nor {GATEWAY_USERNAME!r}"
    )


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN:
        raise CredentialError(
            f"password length {len(password)} outside {MIN_PASSWORD_LEN}..{MAX_PASSWORD_LEN}"
        )
    if not password.isprintable():
        raise CredentialError("password has non-printable characters")
    return password


def new_password() -> str:
    """A random password of 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    match = _HASH_RE.fullmatch(encoded)
    if match is None:
        return False
    iterations, salt, digest = match.groups()
    computed = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations)
    )
    return hmac.compare_digest(computed, base64.b64decode(digest))


class PasswordFile:
    """The broker's password file: an in-memory map of username -> hash, saved atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hashes: dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                username, sep, encoded = line.partition(":")
                if sep and _HASH_RE.fullmatch(encoded):
                    self._hashes[username] = encoded

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def set_many(self, credentials: Iterable[tuple[str, str]]) -> None:
        """Validate every pair first, so a bad one changes nothing, then hash and store."""
        checked = [(check_username(u), check_password(p)) for u, p in credentials]
        for username, password in checked:
            self._hashes[username] = hash_password(password)

    def remove(self, username: str) -> bool:
        return self._hashes.pop(username, None) is not None

    def verify(self, username: str, password: str) -> bool:
        encoded = self._hashes.get(username)
        return encoded is not None and verify_password(password, encoded)

    def save(self) -> None:
        """Write to a 0600 temporary file beside the target and rename it over the target.

        The broker re-reads the file on SIGHUP; the rename means it sees either the old or the new
        file, never a half-written one.
        """
        text = "".join(f"{u}:{h}\n" for u, h in self._hashes.items())
        write_private_file(self.path, text)


def write_private_file(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, mode 0600 from the first byte."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
