"""The gateway service against a real Mosquitto and a real SQLite file, with device peers that
speak the protocol with their own pynacl keys and the MQTT credentials real enrolment gave them.
No sleeps: every step waits for the message (or event) it expects, with a timeout."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import nacl.public
import nacl.signing
import pytest

from edge_agent import kernels
from edge_agent.core import blobs, cbor, protocol, rewards, signing
from gateway import jobs
from gateway.broker import Broker, BrokerEndpoint
from gateway.config import ServiceLimits, StatePaths
from gateway.jobspec import JobSpec, parse_job
from gateway.ledger import Ledger
from gateway.passwords import PasswordFile
from gateway.scheduler import SchedulerConfig
from gateway.service import GatewayService
from gateway.tokens import create_tokens
from gateway.trust import TrustConfig
from tests.mqtt_fixtures import WAIT_S, mqtt_client, next_message

INBOX = protocol.MAX_PAYLOAD["inbox"]
PI_JOB = {"kind": "montecarlo_pi", "params": {"seed": 7, "points": 20_000},
          "split": {"points_per_task": 5_000}}
MLP_JOB = {"kind": "mlp_digits", "params": {"samples": 60}, "split": {"samples_per_task": 20}}


class FakeClock:
    """The service's clock, moved by hand (token expiry, lease deadlines)."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


class Refused(Exception):
    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(f"{body['code']}: {body['msg']}")
        self.code = body["code"]


@dataclass
class Peer:
    """A device: its own Ed25519 key, and after enrol() its MQTT credentials and inbox."""

    signing: nacl.signing.SigningKey = field(default_factory=nacl.signing.SigningKey.generate)
    password: str = ""
    gw_pub: bytes = b""

    @property
    def pub(self) -> bytes:
        return bytes(self.signing.verify_key)

    @property
    def dev(self) -> str:
        return str(protocol.device_id(self.pub))

    def sign(self, message: bytes) -> bytes:
        return bytes(self.signing.sign(message).signature)

    def enrol_message(self, secret: bytes, signer: Peer | None = None) -> bytes:
        body = protocol.message("enrol", pub=self.pub, token=secret, nonce=bytes(16), at=1,
                                platform="linux-test", kernels=kernels.names())
        return bytes(protocol.seal(body, (signer or self).sign))

    async def enrol(self, host: str, port: int, token: str, signer: Peer | None = None,
                    claimed_secret: bytes | None = None) -> None:
        """Enrol with ``token``; ``claimed_secret`` replaces the secret in the request only."""
        user, secret, fingerprint = token.split(".")
        async with mqtt_client(BrokerEndpoint(host, port, user, secret)) as client:
            await client.subscribe(protocol.enrol_reply_topic(user), qos=1)
            await client.publish(protocol.enrol_topic(user),
                                 self.enrol_message(claimed_secret or bytes.fromhex(secret),
                                                    signer), qos=1)
            reply = bytes((await next_message(client)).payload)
        self.accept_enrolled(reply, bytes.fromhex(fingerprint))

    def accept_enrolled(self, reply: bytes, fingerprint: bytes) -> None:
        envelope = cbor.loads(reply)
        if envelope["t"] == "error":
            raise Refused(protocol.validate(envelope, ("error",)))
        claimed = protocol.peek_sealed(reply, protocol.MAX_PAYLOAD["enrol_reply"], ("enrolled",))
        assert hashlib.sha256(claimed["gw_pub"]).digest()[:8] == fingerprint
        body, _, _ = protocol.open_sealed(reply, protocol.MAX_PAYLOAD["enrol_reply"],
                                          signing.verify, claimed["gw_pub"], ("enrolled",))
        assert body["dev"] == self.dev
        box = nacl.public.SealedBox(self.signing.to_curve25519_private_key())
        creds = cbor.loads(box.decrypt(body["sealed"]))
        assert creds["username"] == self.dev
        self.password, self.gw_pub = creds["password"], body["gw_pub"]

    def endpoint(self, broker: Broker) -> BrokerEndpoint:
        return self.endpoint_at(broker.host, broker.port)

    def endpoint_at(self, host: str, port: int) -> BrokerEndpoint:
        return BrokerEndpoint(host, port, self.dev, self.password)

    def result_message(self, lease: dict[str, Any], result: dict[str, Any],
                       signer: Peer | None = None, **override: Any) -> bytes:
        fields = {"lease": lease["lease"], "task": lease["task"], "dev": self.dev,
                  "kernel": lease["kernel"], "rhash": protocol.result_hash(result),
                  "units": lease["units"], "started": 1, "finished": 2, **override}
        body = protocol.message("result", **fields)
        return bytes(protocol.seal(body, (signer or self).sign, attachment=result))


Message = dict[str, Any]


@dataclass
class Device:
    """An enrolled peer connected with its own credentials, subscribed to its inbox. Acks are
    filed by lease as they arrive (a verification resolves later, with a second ack), so the
    replies to requests and the acks of results can be awaited separately."""

    peer: Peer
    client: aiomqtt.Client
    req: int = 0
    acks: dict[bytes, list[Message]] = field(default_factory=dict)  # by lease, in order
    backlog: list[Message] = field(default_factory=list)  # other messages not yet asked for

    async def send(self, kind: str, payload: bytes, *, retain: bool = False) -> None:
        await self.client.publish(protocol.device_topic(self.peer.dev, kind), payload, qos=1,
                                  retain=retain)

    async def _receive(self) -> Message:
        """The next inbox message: an ack is verified against the gateway key, and filed."""
        payload = bytes((await next_message(self.client)).payload)
        if cbor.loads(payload, max_size=INBOX)["t"] == "ack":
            body, _, _ = protocol.open_sealed(payload, INBOX, signing.verify, self.peer.gw_pub,
                                              ("ack",))
            ack = {**body, "sealed": payload}
            self.acks.setdefault(ack["lease"], []).append(ack)
            return ack
        decoded: Message = protocol.decode(payload, INBOX)
        return decoded

    async def inbox(self) -> Message:
        """The next inbox message that is not an ack."""
        if self.backlog:
            return self.backlog.pop(0)
        while (message := await self._receive())["t"] == "ack":
            pass
        return message

    async def ack(self, lease_id: bytes, after: int = 0, *, final: bool = True) -> Message:
        """The first ack of a lease from its ``after``-th on (the final one: not pending)."""
        while True:
            acks = self.acks.get(lease_id, [])[after:]
            found = [a for a in acks if not final or a["status"] != "pending"]
            if found:
                return found[0]
            message = await self._receive()
            if message["t"] != "ack":
                self.backlog.append(message)

    async def refused(self, kind: str, payload: bytes) -> str:
        await self.send(kind, payload)
        reply = await self.inbox()
        assert reply["t"] == "error", reply
        return str(reply["code"])

    async def state(self, **fields: Any) -> None:
        doc = {"online": True, "seq": 1, "at": 1, "decision": "run", "code": "ok",
               "why": "charging, cool", "duty_pm": 1000, **fields}
        await self.send("state", protocol.encode(protocol.message("state", **doc)), retain=True)

    async def pull(self, n: int = 4, secs: int = 3600) -> dict[str, Any]:
        self.req += 1
        body = protocol.message("pull", req=self.req, n=n, secs=secs, kernels=kernels.names())
        await self.send("pull", protocol.encode(body))
        reply = await self.inbox()
        assert reply["t"] in ("leases", "no_work") and reply["req"] == self.req, reply
        return reply

    def leases(self, reply: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for item in reply["items"]:
            lease, _, _ = protocol.open_sealed(item, INBOX, signing.verify, self.peer.gw_pub,
                                               ("lease",))
            assert lease["dev"] == self.peer.dev
            out.append(lease)
        return out

    async def blob(self, digest: bytes, part: int = 1000) -> bytes:
        data, off, total = b"", 0, None
        while total is None or off < total:
            self.req += 1
            await self.send("blob", protocol.encode(protocol.message(
                "blob_get", req=self.req, hash=digest, off=off, len=part)))
            reply = await self.inbox()
            assert reply["t"] == "blob_part" and reply["req"] == self.req, reply
            data, off, total = data + reply["data"], off + len(reply["data"]), reply["total"]
        assert hashlib.sha256(data).digest() == digest
        return data

    async def run(self, lease: dict[str, Any]) -> dict[str, Any]:
        params = dict(lease["params"])
        for key, value in lease["params"].items():
            if blobs.is_ref(value):
                params[key] = await self.blob(value["blob"])
        return kernels.run(lease["kernel"], params)

    async def submit(self, lease: dict[str, Any], result: dict[str, Any], *,
                     final: bool = True, **override: Any) -> Message:
        """Send a result; its final ack (the pending one, if any, is in ``acks``)."""
        before = len(self.acks.get(lease["lease"], []))
        await self.send("result", self.peer.result_message(lease, result, **override))
        return await self.ack(lease["lease"], before, final=final)

    def statuses(self, lease: dict[str, Any]) -> list[tuple[str, str, int]]:
        return [(a["status"], a["code"], a["seq"]) for a in self.acks.get(lease["lease"], [])]


@dataclass
class Gateway:
    service: GatewayService
    broker: Broker
    clock: Callable[[], float]

    def tokens(self, count: int = 1, ttl_s: float = 3600.0) -> list[str]:
        made, live = create_tokens(self.service.ledger, self.service.key, self.service.paths,
                                   count=count, ttl_s=ttl_s, now=self.clock())
        assert live  # the running broker reloaded and a new token account logged in
        return [str(t) for t in made]

    def submit(self, job: dict[str, Any], **top: Any) -> tuple[int, JobSpec]:
        spec = parse_job({**job, **top})
        return self.service.jobs.submit(spec), spec

    async def enrolled(self, stack: list[aiomqtt.Client]) -> Device:
        peer = Peer()
        await peer.enrol(self.broker.host, self.broker.port, self.tokens()[0])
        client = mqtt_client(peer.endpoint(self.broker))
        await client.__aenter__()
        stack.append(client)
        await client.subscribe(protocol.inbox_topic(peer.dev), qos=1)
        return Device(peer, client)


Scenario = Callable[[Gateway, list[aiomqtt.Client]], Awaitable[None]]


# The work-loop tests: the real trust policy, without canaries (whether one is ready when a slot
# draws it depends on the background pool: tests/test_trust_service.py covers them).
NO_CANARIES = TrustConfig(canary_rate=0.0)


def run_gateway(tmp_path: Path, scenario: Scenario, *, clock: Callable[[], float] | None = None,
                config: SchedulerConfig | None = None, limits: ServiceLimits | None = None,
                **service_options: Any) -> GatewayService:
    """Start a broker and the service in this event loop, run ``scenario``, stop cleanly.
    ``service_options``: GatewayService's trust options (default: NO_CANARIES, seeded)."""
    clock = clock or FakeClock()
    # Spent token accounts are removed at shutdown (test_tokens_are_one_time...).
    limits = limits or ServiceLimits(token_retire_s=60.0)
    service_options = {"trust": NO_CANARIES, "trust_rng": random.Random(1), **service_options}

    async def main() -> GatewayService:
        with Broker(tmp_path) as broker:
            service = GatewayService(StatePaths(tmp_path), broker.gateway_endpoint(),
                                     broker=broker, clock=clock, limits=limits,
                                     scheduler_config=config, **service_options)
            stop = asyncio.Event()
            running = asyncio.create_task(service.run(stop))
            clients: list[aiomqtt.Client] = []
            try:
                async with asyncio.timeout(WAIT_S):
                    await service.ready.wait()
                await scenario(Gateway(service, broker, clock), clients)
            finally:
                for client in clients:
                    await client.__aexit__(None, None, None)
                stop.set()
                await running
            return service

    return asyncio.run(main())


def _check_ledger(tmp_path: Path) -> None:
    with Ledger.open(StatePaths(tmp_path).ledger, 0.0) as ledger:
        assert ledger.check() == []


# -- the work loop ---------------------------------------------------------------------------


def test_enrol_state_pull_run_result_ack_and_the_job_output(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        job_id, spec = gw.submit(PI_JOB)
        device = await gw.enrolled(clients)
        assert device.peer.gw_pub == gw.service.key.pub
        await device.state()
        leases = device.leases(await device.pull(n=4))
        assert len(leases) == 1  # speed unknown: one probe task per kernel
        assert len({lease["task"] for lease in leases}) == len(leases)
        await device.submit(leases[0], await device.run(leases[0]))
        while len(leases) < 4:
            for lease in device.leases(await device.pull(n=4)):
                leases.append(lease)
                await device.submit(lease, await device.run(lease))
        # A new device is verified on every result (docs/TRUST.md): pending, then the gateway's
        # own run settles it and a second signed ack (the next seq) says accepted.
        assert [device.statuses(lease) for lease in leases] == [
            [("pending", "verifying", seq), ("accepted", "ok", seq + 1)] for seq in (1, 3, 5, 7)]
        # Credit is added once, when a result becomes accepted: pending acks carry it unchanged.
        each = rewards.credit("montecarlo_pi", leases[0]["units"])
        assert [[a["credit"] for a in device.acks[lease["lease"]]] for lease in leases] == [
            [k * each, (k + 1) * each] for k in range(4)
        ]
        report = gw.service.jobs.report(job_id)
        assert report["state"] == "done" and report["percent"] == 100.0
        assert report["output"] == jobs.compute_locally(spec)
        no_work = await device.pull()
        assert (no_work["t"], no_work["code"]) == ("no_work", "empty")

    service = run_gateway(tmp_path, scenario)
    assert service.counters["result_pending"] == 4
    assert service.counters["trust:gateway_runs"] == 4
    assert service.counters["enrolled"] == 1
    _check_ledger(tmp_path)


def test_a_two_stage_mlp_job_completes_with_the_local_output(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        job_id, spec = gw.submit(MLP_JOB)
        device = await gw.enrolled(clients)
        await device.state()
        while gw.service.jobs.report(job_id)["state"] != "done":
            reply = await device.pull(n=8)
            assert reply["t"] == "leases", reply
            for lease in device.leases(reply):
                ack = await device.submit(lease, await device.run(lease))
                assert ack["status"] == "accepted"
        output = gw.service.jobs.output(job_id)
        assert output == jobs.compute_locally(spec)
        assert output is not None and output["samples"] == 60

    service = run_gateway(tmp_path, scenario)
    assert service.counters["trust:gateway_runs"] == 6  # 3 batches x 2 layers, each verified
    _check_ledger(tmp_path)


# -- enrolment -------------------------------------------------------------------------------


def test_tokens_are_one_time_checked_and_expire(tmp_path: Path) -> None:
    clock = FakeClock()
    spent: list[str] = []

    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        host, port = gw.broker.host, gw.broker.port
        good, wrong, expiring, mismatched = gw.tokens(4, ttl_s=60.0)
        user, secret, fingerprint = good.split(".")
        spent.append(user)
        # Two enrolments on one token, back to back: the first wins, the second is refused.
        first, second = Peer(), Peer()
        async with mqtt_client(BrokerEndpoint(host, port, user, secret)) as client:
            await client.subscribe(protocol.enrol_reply_topic(user), qos=1)
            for peer in (first, second):
                await client.publish(protocol.enrol_topic(user),
                                     peer.enrol_message(bytes.fromhex(secret)), qos=1)
            replies = [bytes((await next_message(client)).payload)
                       for _ in range(2)]
        # The refusal needs no broker reload, so it may arrive first: order by type.
        replies.sort(key=lambda reply: cbor.loads(reply)["t"] == "error")
        first.accept_enrolled(replies[0], bytes.fromhex(fingerprint))
        with pytest.raises(Refused) as refused:
            second.accept_enrolled(replies[1], bytes.fromhex(fingerprint))
        assert refused.value.code == "bad_token"
        # A wrong secret in the request (the account's password is right).
        with pytest.raises(Refused, match="bad_token"):
            await Peer().enrol(host, port, wrong, claimed_secret=bytes(16))
        # No proof of possession: the request carries one key and is signed by another.
        with pytest.raises(Refused, match="bad_signature"):
            await Peer().enrol(host, port, mismatched, signer=Peer())
        clock.now += 61.0
        with pytest.raises(Refused, match="bad_token"):
            await Peer().enrol(host, port, expiring)
        # The enrolled device logs in with what the sealed box held.
        async with mqtt_client(first.endpoint(gw.broker)):
            pass

    service = run_gateway(tmp_path, scenario, clock=clock)
    assert service.counters["enrolled"] == 1
    assert service.counters["rejected:enrol:bad_token"] == 3
    assert service.counters["rejected:enrol:bad_signature"] == 1
    # The spent token's broker account is gone once the service has stopped.
    assert spent[0] not in PasswordFile(StatePaths(tmp_path).passwords)


# -- refusals --------------------------------------------------------------------------------


def test_every_bad_message_is_refused_with_its_code_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        gw.submit(PI_JOB)
        device, other = await gw.enrolled(clients), await gw.enrolled(clients)
        peer = device.peer
        for d in (device, other):
            await d.state()
        (lease,) = device.leases(await device.pull())
        (foreign,) = other.leases(await other.pull())
        result = await device.run(lease)
        pull = protocol.encode(protocol.message("pull", req=9, n=1, secs=60, kernels=[]))
        envelope = cbor.loads(peer.result_message(lease, result))
        unsigned = cbor.dumps({**envelope, "s": bytes(64)})

        assert await device.refused("pull", b"\xff\x00junk") == "bad_cbor"
        assert await device.refused("pull", pull + bytes(600)) == "too_large"
        assert await device.refused("pull", cbor.dumps({"v": 1, "t": "pull", "req": 1})) == \
            "bad_schema"
        assert await device.refused("result", unsigned) == "bad_signature"
        assert await device.refused("result", peer.result_message(
            lease, result, signer=other.peer)) == "bad_signature"
        assert await device.refused("result", peer.result_message(
            lease, result, dev=other.peer.dev)) == "not_your_lease"
        assert await device.refused("result", peer.result_message(
            lease, result, rhash=bytes(32))) == "bad_result_hash"
        assert await device.refused("result", peer.result_message(
            lease, {**result, "inside": result["points"] + 1})) == "bad_result"
        assert await device.refused("result", peer.result_message(
            {**lease, "lease": bytes(16)}, result)) == "unknown_task"
        assert await device.refused("result", peer.result_message(
            foreign, await device.run(foreign))) == "not_your_lease"
        assert await device.refused("blob", protocol.encode(protocol.message(
            "blob_get", req=1, hash=bytes(32), off=0, len=10))) == "unknown_blob"
        await device.client.publish(f"edge/v1/dev/{peer.dev}/bogus", b"x", qos=1)
        assert (await device.inbox())["code"] == "bad_topic"

        # Nothing above touched the lease: the real result is accepted, its repeat is answered
        # with the very same (latest) signed ack, and a later different result for it cannot
        # replace it.
        ack = await device.submit(lease, result)
        assert device.statuses(lease) == [("pending", "verifying", 1), ("accepted", "ok", 2)]
        again = await device.submit(lease, result)
        assert again["sealed"] == ack["sealed"]
        changed = await device.submit(lease, {**result, "inside": 0})
        assert changed["sealed"] == ack["sealed"]

    service = run_gateway(tmp_path, scenario)
    counters = service.counters
    for code in ("bad_cbor", "too_large", "bad_schema"):
        assert counters[f"rejected:pull:{code}"] == 1
    assert counters["rejected:result:bad_signature"] == 2
    assert counters["rejected:topic:bad_topic"] == 1
    assert counters["result_duplicate"] == 2
    assert counters["rejected:result:not_your_lease"] == 2  # another device named; a foreign lease
    _check_ledger(tmp_path)


def test_an_unfit_device_gets_no_work_with_the_reason(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        gw.submit(PI_JOB)
        device = await gw.enrolled(clients)
        reply = await device.pull()
        assert (reply["code"], reply["why"].split(":")[0]) == ("unfit", "no_state")
        await device.state(decision="pause", code="battery_hot", why="battery 46 C")
        reply = await device.pull()
        assert (reply["t"], reply["code"]) == ("no_work", "unfit")
        assert reply["why"].startswith("battery_hot") and reply["retry"] >= 1
        await device.send("state", protocol.encode(protocol.message("state", online=False)))
        assert (await device.pull())["why"].startswith("offline")
        await device.state()
        assert (await device.pull())["t"] == "leases"

    run_gateway(tmp_path, scenario)


def test_excess_states_are_counted_and_ignored(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        gw.submit(PI_JOB)
        device = await gw.enrolled(clients)
        burst = int(ServiceLimits().state.burst)
        for _ in range(burst):
            await device.state()
        await device.state(decision="stop", code="not_charging")  # beyond the burst: ignored
        assert (await device.pull())["t"] == "leases"

    service = run_gateway(tmp_path, scenario)
    assert service.counters["state_stored"] == ServiceLimits().state.burst
    assert service.counters["state_rate_limited"] == 1


def test_expiry_is_timer_driven_and_a_result_after_the_last_attempt_is_rejected(
    tmp_path: Path,
) -> None:
    short = SchedulerConfig(min_lease_s=0.2, max_lease_s=0.2, slack_s=0.0)

    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        job_id, _ = gw.submit(PI_JOB, max_attempts=1)
        device = await gw.enrolled(clients)
        await device.state()
        (lease,) = device.leases(await device.pull())
        gw.service.expired.clear()
        async with asyncio.timeout(WAIT_S):
            await gw.service.expired.wait()  # the expiry timer fired at the lease's deadline
        ack = await device.submit(lease, await device.run(lease))
        assert (ack["status"], ack["code"]) == ("rejected", "lease_expired")
        assert gw.service.jobs.report(job_id)["state"] == "failed"

    service = run_gateway(tmp_path, scenario, clock=time.time, config=short)
    assert service.counters["leases_expired"] == 1
    _check_ledger(tmp_path)
