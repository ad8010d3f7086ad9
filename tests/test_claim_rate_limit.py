"""The per-device claim rate limit (gateway/handlers_claim.py, ServiceLimits.claim), against the
real service, a real Mosquitto and a real SQLite ledger; time is the service's injected clock.

A device that sends more claims than the bucket holds gets ``error``/``rate_limited`` for the
excess, before its signature is checked and without the ledger changing; the same claim is judged
normally once the bucket has refilled; other devices are not affected. The default bucket takes a
burst of pending claims sent at once (a board re-sends all of them at each reconnect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiomqtt
import nacl.signing

from edge_agent.core import cbor, protocol, rewards, signing
from gateway.config import ServiceLimits
from tests.mqtt_fixtures import next_message
from tests.test_gateway_service import PI_JOB, Device, FakeClock, Gateway, run_gateway

INBOX = protocol.MAX_PAYLOAD["inbox"]
BURST = int(ServiceLimits().claim.burst)


async def claim_reply(device: Device, sealed: bytes) -> dict[str, Any]:
    """Publish a claim; the gateway's answer: a verified ``claim_receipt`` body or an ``error``.
    (Acks were all received before claiming starts: nothing else comes to the inbox.)"""
    await device.send("claim", sealed)
    payload = bytes((await next_message(device.client)).payload)
    if cbor.loads(payload, max_size=INBOX)["t"] == "error":
        return dict(protocol.decode(payload, INBOX, ("error",)))
    body, _, _ = protocol.open_sealed(payload, INBOX, signing.verify, device.peer.gw_pub,
                                      ("claim_receipt",))
    return dict(body)


def sealed_claim(device: Device, acked: list[tuple[int, bytes, int]],
                 key: nacl.signing.SigningKey | None = None) -> bytes:
    body = rewards.build_claim(device.peer.dev, acked, 1)
    signer = key or device.peer.signing
    return bytes(protocol.seal(body, lambda m: bytes(signer.sign(m).signature)))


async def worked(gw: Gateway, clients: list[aiomqtt.Client]) -> tuple[Device, bytes]:
    """An enrolled device that did one task: its acks 1 (pending) and 2 (accepted) name one
    receipt; returns the device and the sealed claim of both, which the ledger would accept."""
    device = await gw.enrolled(clients)
    await device.state()
    (lease,) = device.leases(await device.pull())
    sealed = device.peer.result_message(lease, await device.run(lease))
    receipt_id = protocol.receipt_id(cbor.loads(sealed)["b"])
    await device.send("result", sealed)
    final = await device.ack(lease["lease"])
    pending, accepted = device.acks[lease["lease"]]
    assert (pending["seq"], accepted["seq"], final["status"]) == (1, 2, "accepted")
    return device, sealed_claim(device, [(1, receipt_id, pending["credit"]),
                                         (2, receipt_id, accepted["credit"])])


def test_claims_beyond_the_burst_are_refused_unjudged_until_the_bucket_refills(
    tmp_path: Path,
) -> None:
    clock = FakeClock()

    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        gw.submit(PI_JOB)
        device, good = await worked(gw, clients)
        other = await gw.enrolled(clients)
        rows = gw.service.ledger.rewards
        # A full burst at one instant (the clock does not move): every claim is judged. These
        # name an ack the device never got, so each is rejected, and nothing is stored.
        unacked = sealed_claim(device, [(3, bytes(32), 1)])
        for _ in range(BURST):
            reply = await claim_reply(device, unacked)
            assert (reply["t"], reply["status"], reply["code"]) == (
                "claim_receipt", "rejected", "unacked")
        # Beyond it: refused with rate_limited, the acceptable claim included, and not stored.
        reply = await claim_reply(device, good)
        assert (reply["t"], reply["code"]) == ("error", "rate_limited")
        assert reply["msg"] == "too many claims: send it again in 1 s"
        assert rows.claim_count(device.peer.dev) == 0
        # Cheap checks first: a forged claim is refused for its rate, its signature unchecked.
        forged = sealed_claim(device, [(1, bytes(32), 1)], nacl.signing.SigningKey.generate())
        assert (await claim_reply(device, forged))["code"] == "rate_limited"
        # The limit is per device: another one is judged meanwhile.
        reply = await claim_reply(other, sealed_claim(other, [(1, bytes(32), 1)]))
        assert (reply["t"], reply["code"]) == ("claim_receipt", "unacked")
        # One refill interval later the same claim is judged, accepted and stored.
        clock.now += 1.0 / ServiceLimits().claim.per_s
        reply = await claim_reply(device, good)
        assert (reply["t"], reply["status"], reply["code"]) == ("claim_receipt", "accepted", "ok")
        assert rows.claim_count(device.peer.dev) == 1

    service = run_gateway(tmp_path, scenario, clock=clock)
    counters = service.counters
    assert counters["claim_rate_limited"] == counters["rejected:claim:rate_limited"] == 2
    assert "rejected:claim:bad_signature" not in counters
    assert (counters["claim_unacked"], counters["claim_ok"]) == (BURST + 1, 1)


def test_the_default_burst_takes_a_reconnecting_board_s_pending_claims_twice(
    tmp_path: Path,
) -> None:
    """Half the burst of pending claims re-sent at a reconnect, then all again at once (a second
    reconnect): none refused. Thirty seconds on (the CPython agent's resend interval) they are
    all sent again and judged, and the bucket holds what it refilled less those."""
    clock = FakeClock()
    pending = BURST // 2
    limit = ServiceLimits().claim

    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        gw.submit(PI_JOB)
        device, good = await worked(gw, clients)
        claims = [good] + [sealed_claim(device, [(3 + k, bytes(32), 1)])
                           for k in range(pending - 1)]
        for _ in range(2):
            replies = [await claim_reply(device, sealed) for sealed in claims]
            assert {r["t"] for r in replies} == {"claim_receipt"}
        clock.now += 30.0
        replies = [await claim_reply(device, sealed) for sealed in claims]
        assert {r["t"] for r in replies} == {"claim_receipt"}
        left = min(BURST, int(30.0 * limit.per_s)) - pending
        replies = [await claim_reply(device, claims[-1]) for _ in range(left + 1)]
        assert [r["t"] for r in replies] == ["claim_receipt"] * left + ["error"]
        assert gw.service.ledger.rewards.claim_count(device.peer.dev) == 1

    service = run_gateway(tmp_path, scenario, clock=clock)
    assert (service.counters["claim_ok"], service.counters["claim_repeat"]) == (1, 2)
    assert service.counters["claim_rate_limited"] == 1
