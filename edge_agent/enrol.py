"""``edge-agent init``: enrol this device with a gateway (docs/PROTOCOL.md, "Enrolment").

1. parse the one-time token ``tok-<16 hex>.<32 hex secret>.<16 hex gateway key fingerprint>``;
2. make (or reuse, after a failed attempt) the device key, 0600;
3. log in as the token account, subscribe to its reply topic, publish a sealed ``enrol``;
4. on ``enrolled``: the gateway key must match the token's fingerprint (so a broker in the middle
   cannot substitute its own key), the reply must be signed by that key and name this device,
   and the sealed box must open with this device's key; then store credentials and gateway key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import platform
import secrets
import sys
import time
from typing import Any

import aiomqtt
import nacl.exceptions

from edge_agent import kernels
from edge_agent.core import cbor, protocol, signing
from edge_agent.identity import Credentials, GatewayAddress, Identity, StateDir

DEFAULT_TIMEOUT_S = 30.0
FINGERPRINT_LEN = 8  # bytes of SHA-256(gateway public key) in the token
SECRET_LEN = 16  # bytes; 32 hex characters in the token
CREDENTIAL_MAX_BYTES = 512


class EnrolError(RuntimeError):
    """Enrolment failed; the message says why in words an operator can act on."""


@dataclasses.dataclass(frozen=True)
class Token:
    user: str  # the one-time MQTT account, tok-<16 hex>
    secret_hex: str = dataclasses.field(repr=False)  # that account's password
    fingerprint: bytes  # first 8 bytes of SHA-256(gateway public key)

    @property
    def secret(self) -> bytes:
        """The enrol message's ``token`` field: the secret's 16 bytes."""
        return bytes.fromhex(self.secret_hex)

    @classmethod
    def parse(cls, text: str) -> Token:
        parts = text.strip().split(".")
        want = "tok-<16 hex>.<32 hex secret>.<16 hex fingerprint>"
        if len(parts) != 3:
            raise EnrolError(f"a token has three dot-separated parts ({want}), got {len(parts)}")
        user, secret_hex, fingerprint_hex = parts
        if not protocol.is_token_user(user):
            raise EnrolError(f"token user {user[:40]!r} is not tok-<16 lowercase hex>")
        if not _is_hex(secret_hex, 2 * SECRET_LEN):
            raise EnrolError("token secret must be 32 lowercase hex characters")
        if not _is_hex(fingerprint_hex, 2 * FINGERPRINT_LEN):
            raise EnrolError("token fingerprint must be 16 lowercase hex characters")
        return cls(user, secret_hex, bytes.fromhex(fingerprint_hex))


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def platform_name() -> str:
    if "TERMUX_VERSION" in os.environ:
        return "termux"
    return f"{sys.platform}-{platform.machine().lower()}"[:32]


def enrol_message(identity: Identity, token: Token, now: int, platform: str | None = None) -> bytes:
    body = protocol.message(
        "enrol",
        pub=identity.pub,
        token=token.secret,
        nonce=secrets.token_bytes(16),
        at=now,
        platform=platform or platform_name(),
        kernels=kernels.names(),
    )
    return bytes(protocol.seal(body, identity.sign))


def check_enrolled(reply: bytes, identity: Identity, token: Token) -> tuple[bytes, dict[str, str]]:
    """(gateway public key, {"username", "password"}) from an ``enrolled`` reply, or EnrolError."""
    limit = protocol.MAX_PAYLOAD["enrol_reply"]
    try:
        claimed = protocol.peek_sealed(reply, limit, ("enrolled",))
    except protocol.ProtocolError as exc:
        raise EnrolError(f"the gateway's reply is not a valid `enrolled`: {exc}") from None
    gw_pub: bytes = claimed["gw_pub"]
    if hashlib.sha256(gw_pub).digest()[:FINGERPRINT_LEN] != token.fingerprint:
        raise EnrolError(
            "the gateway key in the reply does not match the token's fingerprint "
            f"({token.fingerprint.hex()}): refusing it (wrong gateway, or someone in the middle)"
        )
    try:
        body, _, _ = protocol.open_sealed(reply, limit, signing.verify, gw_pub, ("enrolled",))
    except protocol.ProtocolError as exc:
        raise EnrolError(f"the `enrolled` reply does not verify: {exc}") from None
    if body["dev"] != identity.device_id:
        raise EnrolError(f"the reply enrols {body['dev']}, not this device {identity.device_id}")
    try:
        plain = identity.sealed_box().decrypt(body["sealed"])
    except nacl.exceptions.CryptoError:
        raise EnrolError(
            "the credentials in the reply are not sealed to this device's key"
        ) from None
    return gw_pub, _parse_credentials(plain, identity.device_id)


def _parse_credentials(plain: bytes, device_id: str) -> dict[str, str]:
    try:
        creds: Any = cbor.loads(plain, max_size=CREDENTIAL_MAX_BYTES)
    except cbor.CBORError as exc:
        raise EnrolError(f"sealed credentials are not CBOR: {exc}") from None
    if type(creds) is not dict or set(creds) != {"username", "password"}:
        raise EnrolError("sealed credentials must be a map of exactly username and password")
    username, password = creds["username"], creds["password"]
    if username != device_id:
        raise EnrolError(f"MQTT username {username!r} is not this device's id {device_id}")
    if type(password) is not str or not 16 <= len(password) <= 128 or not password.isprintable():
        raise EnrolError("MQTT password must be 16-128 printable characters")
    return {"username": username, "password": password}


def _explain_error(data: bytes) -> str:
    try:
        err = protocol.decode(data, protocol.MAX_PAYLOAD["enrol_reply"], ("error",))
    except protocol.ProtocolError:
        return ""
    if err["code"] == "bad_token":
        return (
            "the gateway refused the token (bad_token): it is wrong, expired, or already used "
            f"by another device. Ask the operator for a new one. ({err['msg']})"
        )
    return f"the gateway answered error {err['code']}: {err['msg']}"


async def enrol(
    state: StateDir,
    gateway_url: str,
    token_text: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    platform: str | None = None,
) -> tuple[Identity, Credentials]:
    """Enrol the device in ``state`` with the gateway; return its identity and credentials.

    ``platform`` names the device in the enrol message when it is not this machine (a
    MicroPython board provisioned from a host); by default, this machine's platform."""
    token = Token.parse(token_text)
    try:
        address = GatewayAddress.parse(gateway_url)
    except ValueError as exc:
        raise EnrolError(str(exc)) from None
    if state.enrolled:
        who = state.load_identity().device_id
        raise EnrolError(f"{state.root} is already enrolled as {who}; use another --state-dir")
    identity = state.load_or_create_identity()
    request = enrol_message(identity, token, int(time.time()), platform)
    reply = await _exchange(address, token, request, timeout_s)
    gw_pub, creds = check_enrolled(reply, identity, token)
    credentials = Credentials(address.url, creds["username"], creds["password"], token.user)
    state.save_enrolment(credentials, gw_pub)
    return identity, credentials


async def _exchange(
    address: GatewayAddress, token: Token, request: bytes, timeout_s: float
) -> bytes:
    """Publish the enrol request as the token account and return the first sealed reply."""
    reply_topic = protocol.enrol_reply_topic(token.user)
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=token.user,
        password=token.secret_hex,
        identifier=token.user,
        timeout=timeout_s,
        max_queued_incoming_messages=16,
    )
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                await client.subscribe(reply_topic, qos=1)
                await client.publish(protocol.enrol_topic(token.user), request, qos=1)
                async for message in client.messages:
                    data = message.payload
                    if not isinstance(data, bytes):
                        continue
                    explained = _explain_error(data)
                    if explained:
                        raise EnrolError(explained)
                    return data
    except TimeoutError:
        raise EnrolError(
            f"no answer from the gateway at {address.url} within {timeout_s:g} s "
            "(is the gateway running? the token may be spent: re-running init with the same "
            "token resumes a lost reply)"
        ) from None
    except aiomqtt.MqttCodeError as exc:
        raise EnrolError(
            f"the broker at {address.url} refused the token account {token.user} ({exc}): "
            "wrong or already used token"
        ) from None
    except aiomqtt.MqttError as exc:
        raise EnrolError(f"cannot reach the gateway at {address.url}: {exc}") from None
    raise EnrolError("the connection closed before the gateway answered")
