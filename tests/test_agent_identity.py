"""`edge-agent init`: the device key, enrolment against a real Mosquitto, and what gets stored.

The gateway side is a small test peer on the gateway account that speaks the real protocol
(edge_agent.core.protocol): it checks the sealed `enrol`, creates the device's broker account and
answers `enrolled` (or `error bad_token`). The real gateway service is joined in end-to-end tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
from pathlib import Path

import nacl.public
import nacl.signing
import pytest

from edge_agent.core import cbor, protocol, signing
from edge_agent.enrol import EnrolError, Token, enrol
from edge_agent.identity import StateDir
from gateway.broker import Broker
from tests.mqtt_fixtures import mqtt_client, serving


class EnrolPeer:
    """Plays the gateway's enrolment handler: one-time tokens, device accounts, `enrolled`."""

    def __init__(self, broker: Broker, gateway_key: nacl.signing.SigningKey) -> None:
        self.broker = broker
        self.key = gateway_key
        self.signing_key = gateway_key  # tests may swap in another key to forge replies
        self.secrets: dict[str, bytes] = {}
        self.requests = 0

    def new_token(self) -> str:
        user, secret = "tok-" + secrets.token_hex(8), secrets.token_hex(16)
        self.broker.add_client(user, secret)
        self.secrets[user] = bytes.fromhex(secret)
        fingerprint = hashlib.sha256(bytes(self.key.verify_key)).digest()[:8].hex()
        return f"{user}.{secret}.{fingerprint}"

    def reply(self, data: bytes, token_user: str) -> bytes:
        limit = protocol.MAX_PAYLOAD["enrol"]
        pub = protocol.peek_sealed(data, limit, ("enrol",))["pub"]
        body, _, _ = protocol.open_sealed(data, limit, signing.verify, pub, ("enrol",))
        if self.secrets.pop(token_user, None) != body["token"]:
            return bytes(protocol.encode(protocol.message("error", code="bad_token", msg="no")))
        dev, password = protocol.device_id(pub), secrets.token_urlsafe(24)
        self.broker.add_client(dev, password)
        box = nacl.public.SealedBox(nacl.signing.VerifyKey(pub).to_curve25519_public_key())
        sealed = box.encrypt(cbor.dumps({"username": dev, "password": password}))
        enrolled = protocol.message(
            "enrolled", dev=dev, gw_pub=bytes(self.key.verify_key), sealed=sealed
        )
        return bytes(protocol.seal(enrolled, lambda m: self.signing_key.sign(m).signature))

    async def serve(self, ready: asyncio.Event) -> None:
        async with mqtt_client(self.broker.gateway_endpoint(), identifier="gw-enrol") as client:
            await client.subscribe("edge/v1/enrol/+/req", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                _, token_user = protocol.parse_topic(message.topic.value)
                self.requests += 1
                answer = self.reply(message.payload, token_user)
                await client.publish(protocol.enrol_reply_topic(token_user), answer, qos=1)


@pytest.fixture
def peer(mqtt_broker: Broker) -> EnrolPeer:
    return EnrolPeer(mqtt_broker, nacl.signing.SigningKey.generate())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_enrol_stores_key_credentials_and_gateway_key_privately(
    peer: EnrolPeer, mqtt_broker: Broker, tmp_path: Path
) -> None:
    state = StateDir(tmp_path / "dev")

    async def main() -> None:
        async with serving(peer):
            identity, creds = await enrol(state, mqtt_broker.url, peer.new_token())
        assert creds.username == identity.device_id == state.load_identity().device_id
        # The stored credentials really log in as the device on the device listener.
        endpoint = mqtt_broker.endpoint(creds.username, creds.password)
        async with mqtt_client(endpoint) as client:
            await client.publish(protocol.device_topic(creds.username, "state"), b"", qos=1)

    asyncio.run(main())
    assert mode(state.root) == 0o700
    for path in (state.key_path, state.credentials_path, state.gateway_key_path):
        assert mode(path) == 0o600, path
    assert state.load_gateway_key() == bytes(peer.key.verify_key)
    seed = bytes.fromhex(state.key_path.read_text())
    pub = bytes(nacl.signing.SigningKey(seed).verify_key)
    assert state.load_credentials().username == protocol.device_id(pub)
    assert state.load_credentials().gateway_url == mqtt_broker.url
    # Enrolling an enrolled state directory again is refused before any network traffic.
    with pytest.raises(EnrolError, match="already enrolled"):
        asyncio.run(enrol(state, mqtt_broker.url, peer.new_token()))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tok-0123456789abcdef.00112233445566778899aabbccddeeff",
        "user-0123456789abcdef.00112233445566778899aabbccddeeff.0011223344556677",
        "tok-0123456789abcdef.0011223344556677.0011223344556677",
        "tok-0123456789abcdef.00112233445566778899AABBCCDDEEFF.0011223344556677",
        "tok-0123456789abcdef.00112233445566778899aabbccddeeff.00112233",
    ],
)
def test_malformed_tokens_are_refused_with_a_reason(text: str, tmp_path: Path) -> None:
    with pytest.raises(EnrolError, match="token"):
        asyncio.run(enrol(StateDir(tmp_path), "mqtt://127.0.0.1:1", text))
    assert not (tmp_path / "device.key").exists()  # nothing made for a bad token


def test_token_parts() -> None:
    token = Token.parse("tok-0123456789abcdef.00112233445566778899aabbccddeeff.0011223344556677")
    assert token.user == "tok-0123456789abcdef"
    assert token.secret == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert token.fingerprint == bytes.fromhex("0011223344556677")
    assert "00112233445566778899" not in repr(token)


def test_bad_token_reply_is_a_clear_error_and_stores_nothing(
    peer: EnrolPeer, mqtt_broker: Broker, tmp_path: Path
) -> None:
    token = peer.new_token()
    user = token.split(".")[0]
    peer.secrets[user] = b"\x00" * 16  # the gateway holds another secret for this token

    async def main() -> None:
        async with serving(peer):
            with pytest.raises(EnrolError, match="bad_token"):
                await enrol(StateDir(tmp_path), mqtt_broker.url, token)

    asyncio.run(main())
    assert not StateDir(tmp_path).enrolled


def test_wrong_gateway_fingerprint_is_rejected(
    peer: EnrolPeer, mqtt_broker: Broker, tmp_path: Path
) -> None:
    token = peer.new_token()
    peer.key = nacl.signing.SigningKey.generate()  # a different gateway key answers
    peer.signing_key = peer.key

    async def main() -> None:
        async with serving(peer):
            with pytest.raises(EnrolError, match="fingerprint"):
                await enrol(StateDir(tmp_path), mqtt_broker.url, token)

    asyncio.run(main())
    assert not StateDir(tmp_path).enrolled


def test_reply_not_signed_by_the_announced_gateway_key_is_rejected(
    peer: EnrolPeer, mqtt_broker: Broker, tmp_path: Path
) -> None:
    peer.signing_key = nacl.signing.SigningKey.generate()  # right gw_pub, wrong signature

    async def main() -> None:
        async with serving(peer):
            with pytest.raises(EnrolError, match="does not verify"):
                await enrol(StateDir(tmp_path), mqtt_broker.url, peer.new_token())

    asyncio.run(main())
    assert not StateDir(tmp_path).enrolled


def test_no_gateway_times_out_and_a_retry_reuses_the_key(
    peer: EnrolPeer, mqtt_broker: Broker, tmp_path: Path
) -> None:
    state = StateDir(tmp_path)
    token = peer.new_token()

    async def main() -> None:
        with pytest.raises(EnrolError, match="no answer"):
            await enrol(state, mqtt_broker.url, token, timeout_s=0.5)
        first = state.load_identity().device_id
        async with serving(peer):
            identity, _ = await enrol(state, mqtt_broker.url, token)
        assert identity.device_id == first

    asyncio.run(main())
    assert state.enrolled


def test_key_file_is_0600_from_the_start_and_stable(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "d")
    old = os.umask(0)  # even a permissive umask must not widen the key file
    try:
        first = state.load_or_create_identity()
    finally:
        os.umask(old)
    assert mode(state.key_path) == 0o600
    assert state.load_or_create_identity().device_id == first.device_id
    assert first.device_id == protocol.device_id(first.pub)


def test_cli_init(peer: EnrolPeer, mqtt_broker: Broker, tmp_path: Path) -> None:
    async def init(token: str, state_dir: Path) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge_agent.cli",
            "init",
            "--gateway",
            mqtt_broker.url,
            "--token",
            token,
            "--state-dir",
            str(state_dir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    async def main() -> None:
        async with serving(peer):
            code, out = await init(peer.new_token(), tmp_path / "ok")
            assert code == 0, out
            assert StateDir(tmp_path / "ok").load_identity().device_id in out
            code, out = await init("tok-nonsense", tmp_path / "bad")
            assert code == 2
            assert "token" in out

    asyncio.run(main())
