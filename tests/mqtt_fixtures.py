"""Reusable pytest fixtures and helpers for tests that talk to a real Mosquitto.

Nothing is registered globally: import the fixtures where they are used (or from conftest.py).
Every broker runs from a temporary directory on ephemeral loopback ports. Clients speak MQTT v5 so
that PUBACK reason codes (0x87 "not authorised" for an ACL-denied publish) can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.link import cancel_and_wait
from gateway.broker import Broker, BrokerEndpoint
from gateway.passwords import new_password

RC_SUCCESS = 0x00
RC_NO_MATCHING_SUBSCRIBERS = 0x10
RC_NOT_AUTHORIZED = 0x87
WAIT_S = 10.0  # upper bound for anything that should take milliseconds


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One running broker shared by a test module; tests use fresh random accounts."""
    with Broker(tmp_path_factory.mktemp("mqtt-broker")) as broker:
        yield broker


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of its own, for tests that restart or kill it."""
    with Broker(tmp_path) as broker:
        yield broker


def new_device(broker: Broker) -> BrokerEndpoint:
    """Register a random device account (id = 32 hex chars) and return its endpoint."""
    return _register(broker, secrets.token_hex(16))


def new_token_account(broker: Broker) -> BrokerEndpoint:
    """Register a random one-time enrolment account (tok-<16 hex>)."""
    return _register(broker, "tok-" + secrets.token_hex(8))


def _register(broker: Broker, username: str) -> BrokerEndpoint:
    password = new_password()
    broker.add_client(username, password)
    return broker.endpoint(username, password)


class RecordingClient(aiomqtt.Client):
    """An aiomqtt client that keeps the PUBACK reason code of each publish (aiomqtt drops it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.puback_codes: dict[int, int] = {}

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self.puback_codes[mid] = reason_code.value
        super()._on_publish(client, userdata, mid, reason_code, properties)


def mqtt_client(
    endpoint: BrokerEndpoint,
    *,
    identifier: str | None = None,
    will: aiomqtt.Will | None = None,
) -> RecordingClient:
    """An MQTT v5 client for ``endpoint`` with a bounded incoming queue; use ``async with``."""
    return RecordingClient(
        endpoint.host,
        endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        timeout=WAIT_S,
        max_queued_incoming_messages=1000,
    )


async def publish_acked(
    client: RecordingClient, topic: str, payload: bytes | str, *, retain: bool = False
) -> int:
    """Publish at QoS 1 and return the broker's PUBACK reason code.

    Call sequentially on one client: the code is the one recorded during this call.
    """
    before = set(client.puback_codes)
    await client.publish(topic, payload, qos=1, retain=retain)
    (mid,) = set(client.puback_codes) - before
    return client.puback_codes.pop(mid)


async def next_message(client: aiomqtt.Client, timeout: float = WAIT_S) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        return await anext(aiter(client.messages))


async def messages_until(
    client: aiomqtt.Client, marker_topic: str, timeout: float = WAIT_S
) -> list[aiomqtt.Message]:
    """Collect messages up to and including the first one on ``marker_topic``.

    A client publishes something, then a marker; once the marker has arrived anything sent
    before it by the same client would have arrived too (MQTT keeps per-client order), so its
    absence from the list proves it was never delivered.
    """
    seen: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            seen.append(message)
            if message.topic.matches(marker_topic):
                return seen
    raise AssertionError("message stream ended before the marker")  # pragma: no cover


def topics(messages: list[aiomqtt.Message]) -> list[str]:
    return [m.topic.value for m in messages]


class Peer(Protocol):
    async def serve(self, ready: asyncio.Event) -> None: ...


PeerT = TypeVar("PeerT", bound=Peer)


@contextlib.asynccontextmanager
async def serving(peer: PeerT) -> AsyncIterator[PeerT]:
    """Run a test's MQTT peer (the gateway or enrolment side) until the block ends; enter the
    block only once it has subscribed (serve sets ready)."""
    ready = asyncio.Event()
    task = asyncio.create_task(peer.serve(ready))
    await asyncio.wait_for(ready.wait(), WAIT_S)
    try:
        yield peer
    finally:
        await cancel_and_wait([task])
