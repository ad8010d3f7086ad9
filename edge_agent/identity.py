"""Who this device is: its Ed25519 key, the gateway it enrolled with, and its state directory.

State directory layout (default ``platformdirs.user_data_dir("edge-agent")``, or ``--state-dir``);
the directory is 0700 and every secret in it 0600 from its first byte:

=====================  ==========================================================================
``device.key``         hex of the 32-byte Ed25519 seed (0600). Device id = protocol.device_id(pub)
``gateway.pub``        hex of the gateway's Ed25519 public key, learnt at enrolment (0600)
``credentials.json``   gateway URL, MQTT username (= device id) and password, token user (0600)
``agent.sqlite3``      outbox, acks, checkpoints and blob cache (edge_agent/outbox.py)
=====================  ==========================================================================
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import nacl.public
import nacl.signing
import platformdirs

from edge_agent.core import protocol

APP_NAME = "edge-agent"
DEFAULT_MQTT_PORT = 1883
KEY_LEN = 32  # Ed25519 seeds and public keys


class IdentityError(RuntimeError):
    """The state directory is missing something, or holds something unusable."""


def default_state_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``: a 0600 temporary file, fsync, rename, fsync dir.

    The file never exists with wider permissions, and a crash leaves the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclasses.dataclass(frozen=True)
class GatewayAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> GatewayAddress:
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"gateway URL must look like mqtt://host:port, got {url!r}")
        return cls(parts.hostname, parts.port or DEFAULT_MQTT_PORT)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What enrolment gave this device: where to connect and as whom."""

    gateway_url: str
    username: str
    password: str = dataclasses.field(repr=False)
    token_user: str

    @property
    def address(self) -> GatewayAddress:
        return GatewayAddress.parse(self.gateway_url)


class Identity:
    """The device key and its derived id; signs protocol messages."""

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self.key = key
        self.pub = bytes(key.verify_key)
        self.device_id: str = protocol.device_id(self.pub)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message).signature

    def sealed_box(self) -> nacl.public.SealedBox[nacl.public.PrivateKey]:
        """Opens libsodium sealed boxes made to this key (its Ed25519 key as X25519)."""
        return nacl.public.SealedBox(self.key.to_curve25519_private_key())


class StateDir:
    """Paths in one device's state directory, and loading and storing what lives there."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_state_dir()
        self.key_path = self.root / "device.key"
        self.gateway_key_path = self.root / "gateway.pub"
        self.credentials_path = self.root / "credentials.json"
        self.db_path = self.root / "agent.sqlite3"

    def ensure(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)

    # -- device key ------------------------------------------------------------------------------

    def load_or_create_identity(self) -> Identity:
        """The device key, made (0600) on first use."""
        self.ensure()
        if self.key_path.exists():
            return self.load_identity()
        key = nacl.signing.SigningKey.generate()
        write_private(self.key_path, bytes(key).hex().encode() + b"\n")
        return Identity(key)

    def load_identity(self) -> Identity:
        try:
            seed = bytes.fromhex(self.key_path.read_text().strip())
        except FileNotFoundError:
            raise IdentityError(
                f"no device key at {self.key_path}: run `edge-agent init`"
            ) from None
        except ValueError:
            raise IdentityError(f"{self.key_path} is not a hex Ed25519 seed") from None
        if len(seed) != KEY_LEN:
            raise IdentityError(f"{self.key_path} holds {len(seed)} bytes, want 32")
        return Identity(nacl.signing.SigningKey(seed))

    # -- enrolment -------------------------------------------------------------------------------

    @property
    def enrolled(self) -> bool:
        return self.credentials_path.exists() and self.gateway_key_path.exists()

    def save_enrolment(self, credentials: Credentials, gateway_pub: bytes) -> None:
        self.ensure()
        write_private(self.gateway_key_path, gateway_pub.hex().encode() + b"\n")
        text = json.dumps(dataclasses.asdict(credentials), indent=2, sort_keys=True) + "\n"
        # Written last: its presence means the enrolment is complete.
        write_private(self.credentials_path, text.encode())

    def load_credentials(self) -> Credentials:
        try:
            raw = json.loads(self.credentials_path.read_text())
            return Credentials(
                gateway_url=str(raw["gateway_url"]),
                username=str(raw["username"]),
                password=str(raw["password"]),
                token_user=str(raw["token_user"]),
            )
        except FileNotFoundError:
            raise IdentityError(
                f"not enrolled: no {self.credentials_path}; run `edge-agent init`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{self.credentials_path} is damaged: {exc}") from None

    def load_gateway_key(self) -> bytes:
        try:
            pub = bytes.fromhex(self.gateway_key_path.read_text().strip())
        except FileNotFoundError:
            raise IdentityError(
                f"no gateway key at {self.gateway_key_path}: run `edge-agent init`"
            ) from None
        except ValueError:
            raise IdentityError(f"{self.gateway_key_path} is not hex") from None
        if len(pub) != KEY_LEN:
            raise IdentityError(f"{self.gateway_key_path} holds {len(pub)} bytes, want 32")
        return pub
