"""Expired unused enrolment tokens are pruned (gateway/tokens.py, GatewayService.prune_tokens):
their broker accounts (Mosquitto reloaded: the account can no longer log in) and their ledger
rows, at the start of ``serve`` and then periodically. A token a device enrolled with and one
not yet expired (or expired less than the grace period ago) are left alone. Real Mosquitto, real
SQLite; time is the service's injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from edge_agent.core import protocol
from gateway.accounts import Accounts
from gateway.broker import Broker, BrokerEndpoint, BrokerError, probe_login
from gateway.config import ServiceLimits, StatePaths
from gateway.keys import GatewayKey
from gateway.ledger import Ledger
from gateway.passwords import PasswordFile
from gateway.service import GatewayService
from gateway.tokens import create_tokens, expired_unused, prune_expired_tokens
from tests.e2e_helpers import rows
from tests.mqtt_fixtures import WAIT_S, mqtt_client
from tests.test_gateway_service import Device, FakeClock, Gateway, Peer, run_gateway

TTL_S = 60.0
GRACE_S = ServiceLimits().token_prune_grace_s
CONNACK_NOT_AUTHORISED = 5  # MQTT 3.1.1 CONNACK: bad user name or password


def login(host: str, port: int, token: str) -> int:
    """The CONNACK code of a login with a token's account (its user and secret)."""
    user, secret, _ = token.split(".")
    return probe_login(BrokerEndpoint(host, port, user, secret))


def user_of(token: str) -> str:
    return token.split(".", maxsplit=1)[0]


def token_rows(state: Path) -> dict[str, str | None]:
    """Every enrol token row in the ledger file: id -> the device that used it."""
    return dict(rows(StatePaths(state).ledger, "SELECT id, used_by FROM enrol_tokens"))


async def pruned_by_the_loop(service: GatewayService) -> None:
    """Wait for a pass of the periodic pruning that removed something (a pass already running
    when the test moved the clock may have read the old time, hence the counter)."""
    async with asyncio.timeout(WAIT_S):
        while not service.counters.get("tokens_pruned"):
            service.tokens_pruned.clear()
            await service.tokens_pruned.wait()


def test_serve_prunes_expired_unused_tokens_at_start_and_leaves_the_others(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    made: dict[str, str] = {}
    enrolled = Peer()

    async def before(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        made["used"], made["expired"] = gw.tokens(2, ttl_s=TTL_S)
        (made["kept"],) = gw.tokens(1, ttl_s=7 * 86_400.0)
        await enrolled.enrol(gw.broker.host, gw.broker.port, made["used"])

    run_gateway(tmp_path, before, clock=clock)
    clock.now += TTL_S + GRACE_S + 1.0  # the gateway was down; its next start prunes

    async def after(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        async with asyncio.timeout(WAIT_S):
            await gw.service.tokens_pruned.wait()  # the first pass, at start
        host, port = gw.broker.host, gw.broker.port
        assert login(host, port, made["expired"]) == CONNACK_NOT_AUTHORISED
        passwords = PasswordFile(StatePaths(tmp_path).passwords)
        assert user_of(made["expired"]) not in passwords and user_of(made["kept"]) in passwords
        assert token_rows(tmp_path) == {user_of(made["used"]): enrolled.dev,
                                        user_of(made["kept"]): None}
        # The device enrolled with an expired token works on.
        client = mqtt_client(enrolled.endpoint(gw.broker))
        await client.__aenter__()
        clients.append(client)
        await client.subscribe(protocol.inbox_topic(enrolled.dev), qos=1)
        assert (await Device(enrolled, client).pull())["t"] == "no_work"
        # The unexpired token enrols a device.
        await Peer().enrol(host, port, made["kept"])

    service = run_gateway(tmp_path, after, clock=clock)
    assert service.counters["tokens_pruned"] == 1
    assert service.counters["enrolled"] == 1


def test_serve_prunes_periodically_once_the_grace_period_is_over(tmp_path: Path) -> None:
    clock = FakeClock()
    limits = ServiceLimits(token_retire_s=60.0, token_prune_every_s=0.05)

    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        host, port = gw.broker.host, gw.broker.port
        (expiring,) = gw.tokens(1, ttl_s=TTL_S)
        clock.now += TTL_S + GRACE_S / 2  # expired (an enrolment is refused), not yet pruned
        assert await gw.service.prune_tokens() == 0
        assert login(host, port, expiring) == 0
        clock.now += GRACE_S
        await pruned_by_the_loop(gw.service)
        assert login(host, port, expiring) == CONNACK_NOT_AUTHORISED
        assert user_of(expiring) not in token_rows(tmp_path)
        # A token made now is not touched by the passes that follow.
        (fresh,) = gw.tokens(1, ttl_s=TTL_S)
        gw.service.tokens_pruned.clear()
        async with asyncio.timeout(WAIT_S):
            await gw.service.tokens_pruned.wait()
        await Peer().enrol(host, port, fresh)

    service = run_gateway(tmp_path, scenario, clock=clock, limits=limits)
    assert service.counters["tokens_pruned"] == 1
    assert service.counters["enrolled"] == 1


def test_a_failed_broker_reload_keeps_the_rows_and_the_next_pass_finishes(
    tmp_path: Path,
) -> None:
    """Accounts are removed before rows: a removal that fails leaves the token to be found again
    (here Mosquitto is down when the pass runs; the pass after its restart completes)."""
    paths = StatePaths(tmp_path).ensure()
    with Broker(tmp_path) as broker, Ledger.open(paths.ledger, 0.0) as ledger:
        (token,), _ = create_tokens(ledger, GatewayKey.load_or_create(paths.key), paths,
                                    count=1, ttl_s=TTL_S, now=0.0)
        broker.reload()
        accounts = Accounts(paths, broker.reload)
        assert login(broker.host, broker.port, str(token)) == 0
        broker.stop()
        with pytest.raises(BrokerError, match="not running"):
            asyncio.run(prune_expired_tokens(ledger, accounts, TTL_S))
        assert expired_unused(ledger, TTL_S) == [token.user]
        broker.start()
        assert asyncio.run(prune_expired_tokens(ledger, accounts, TTL_S)) == 1
        assert expired_unused(ledger, TTL_S) == []
        assert login(broker.host, broker.port, str(token)) == CONNACK_NOT_AUTHORISED
    assert token_rows(tmp_path) == {}
