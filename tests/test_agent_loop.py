"""The agent's work loop against a real Mosquitto and a test peer on the gateway account.

The peer speaks the real protocol (edge_agent.core.protocol): it answers pulls with the leases a
test queued (or no_work), serves blobs in parts, records results and states, and acks results
with a signature. Devices are hal.simulated phones clocked 1000x, so governor holds and physics
take milliseconds. Synchronisation is by counters the agent and the peer bump (Stats.wait_for),
never by sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import nacl.signing
import pytest

from edge_agent import kernels
from edge_agent.agent import Agent, Progress
from edge_agent.core import protocol, signing
from edge_agent.devices import SimulatedDevice
from edge_agent.identity import Credentials, StateDir
from edge_agent.link import Backoff
from edge_agent.outbox import Checkpoint, Store
from edge_agent.runtime import AgentConfig, Stats
from edge_agent.swarm import run_swarm
from gateway.broker import Broker
from gateway.passwords import new_password
from hal.simulated import SimulatedBackend
from tests.mqtt_fixtures import WAIT_S, serving

SPEEDUP = 1000.0
MC = "montecarlo_pi"


class GatewayPeer:
    """Plays the gateway for the agent: leases, blobs, results, acks, states."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.key = nacl.signing.SigningKey.generate()
        self.pub = bytes(self.key.verify_key)
        self.device_pubs: dict[str, bytes] = {}
        self.queued: dict[str, list[bytes]] = collections.defaultdict(list)
        self.blobs: dict[bytes, bytes] = {}
        self.blob_gets: collections.Counter[bytes] = collections.Counter()
        self.results: list[tuple[str, bytes]] = []  # (device, exact payload)
        self.states: list[dict[str, Any]] = []
        self.auto_ack = True
        self.ack_seq = 0
        self.stats = Stats()
        self.client: aiomqtt.Client | None = None
        # Persistent, so nothing is lost across a broker restart; one per peer, so a module's
        # shared broker does not hand one test's leftovers to the next test's peer.
        self.session = "gw-test-" + secrets.token_hex(4)

    # -- what tests use ----------------------------------------------------------------------

    def enrol(self, root: Path) -> StateDir:
        """A device enrolled with this gateway: key, broker account, stored credentials."""
        state = StateDir(root)
        identity = state.load_or_create_identity()
        password = new_password()
        self.broker.add_client(identity.device_id, password)
        creds = Credentials(self.broker.url, identity.device_id, password, "tok-" + "0" * 16)
        state.save_enrolment(creds, self.pub)
        self.device_pubs[identity.device_id] = identity.pub
        return state

    def lease(
        self,
        dev: str,
        params: dict[str, Any],
        *,
        kernel: str = MC,
        deadline_in: int = 3600,
        key: nacl.signing.SigningKey | None = None,
    ) -> bytes:
        now = int(time.time())
        body = protocol.message(
            "lease",
            lease=secrets.token_bytes(16),
            task=secrets.token_bytes(16),
            dev=dev,
            kernel=kernel,
            params=params,
            units=7,
            issued=now,
            deadline=now + deadline_in,
            attempt=0,
        )
        signer = key or self.key
        return bytes(protocol.seal(body, lambda m: signer.sign(m).signature))

    def ack_for(
        self, result: dict[str, Any], *, rhash: bytes | None = None, key: Any = None
    ) -> bytes:
        self.ack_seq += 1
        body = protocol.message(
            "ack",
            lease=result["lease"],
            task=result["task"],
            dev=result["dev"],
            rhash=rhash or result["rhash"],
            status="accepted",
            code="ok",
            seq=self.ack_seq,
            credit=7 * self.ack_seq,
            at=int(time.time()),
        )
        signer = key or self.key
        return bytes(protocol.seal(body, lambda m: signer.sign(m).signature))

    def open_result(self, dev: str, payload: bytes) -> tuple[dict[str, Any], Any]:
        body, _, attachment = protocol.open_sealed(
            payload,
            protocol.MAX_PAYLOAD["result"],
            signing.verify,
            self.device_pubs[dev],
            ("result",),
        )
        assert body["rhash"] == protocol.result_hash(attachment)
        return body, attachment

    async def send(self, dev: str, payload: bytes) -> None:
        assert self.client is not None
        await self.client.publish(protocol.inbox_topic(dev), payload, qos=1)

    # -- the peer's loop ---------------------------------------------------------------------

    async def serve(self, ready: asyncio.Event) -> None:
        """Reconnects like a real gateway worker (persistent session: nothing is lost)."""
        endpoint = self.broker.gateway_endpoint()
        while True:
            try:
                async with aiomqtt.Client(
                    endpoint.host,
                    endpoint.port,
                    username=endpoint.username,
                    password=endpoint.password,
                    identifier=self.session,
                    clean_session=False,
                    timeout=WAIT_S,
                ) as client:
                    for kind in ("pull", "result", "blob", "state"):
                        await client.subscribe(f"edge/v1/dev/+/{kind}", qos=1)
                    self.client = client
                    ready.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        kind, dev = protocol.parse_topic(message.topic.value)
                        await self.handle(kind, dev, message.payload)
            except aiomqtt.MqttError:
                self.client = None
                await asyncio.sleep(0.05)  # reconnect pacing

    async def handle(self, kind: str, dev: str, payload: bytes) -> None:
        if dev not in self.device_pubs:
            return  # another test's device
        if kind == "pull":
            pull = protocol.decode(payload, protocol.MAX_PAYLOAD["pull"], ("pull",))
            items, self.queued[dev] = self.queued[dev][: pull["n"]], self.queued[dev][pull["n"] :]
            if items:
                reply = protocol.message("leases", req=pull["req"], items=items)
            else:
                reply = protocol.message(
                    "no_work", req=pull["req"], code="empty", why="nothing", retry=1
                )
            await self.send(dev, protocol.encode(reply))
            self.stats.bump("pulls")
        elif kind == "result":
            body, _ = self.open_result(dev, payload)
            self.results.append((dev, payload))
            self.stats.bump("results")
            if self.auto_ack:
                await self.send(dev, self.ack_for(body))
        elif kind == "blob":
            get = protocol.decode(payload, protocol.MAX_PAYLOAD["blob"], ("blob_get",))
            blob = self.blobs[get["hash"]]
            self.blob_gets[get["hash"]] += 1
            part = protocol.message(
                "blob_part",
                req=get["req"],
                hash=get["hash"],
                off=get["off"],
                total=len(blob),
                data=blob[get["off"] : get["off"] + get["len"]],
            )
            await self.send(dev, protocol.encode(part))
        elif kind == "state":
            self.states.append(protocol.decode(payload, protocol.MAX_PAYLOAD["state"], ("state",)))
            self.stats.bump("states")


def config(**over: Any) -> AgentConfig:
    fields: dict[str, Any] = {
        "reply_timeout_s": 5.0,
        "checkpoint_every_s": 0.0,  # every chunk
        "state_every_s": 0.2,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "exit_when_idle": True,
    }
    fields.update(over)
    return AgentConfig(**fields)


def phone(**kwargs: Any) -> SimulatedBackend:
    return SimulatedBackend("phone", soc=0.8, **kwargs)


def make_agent(
    state: StateDir,
    sim: SimulatedBackend | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    **over: Any,
) -> Agent:
    device = SimulatedDevice(sim or phone(), SPEEDUP)
    return Agent(state, device, config=config(**over), on_progress=on_progress)


async def run_to_end(agent: Agent) -> None:
    await asyncio.wait_for(agent.run(), 30)


@pytest.fixture
def peer(mqtt_broker: Broker) -> GatewayPeer:
    return GatewayPeer(mqtt_broker)


@contextlib.contextmanager
def stored(state: StateDir) -> Iterator[Store]:
    store = Store(state.db_path)
    try:
        yield store
    finally:
        store.close()


def mc_params(points: int = 20000, seed: int = 1) -> dict[str, Any]:
    return {"seed": seed, "points": points}


# -- the basics --------------------------------------------------------------------------------


def test_runs_a_lease_signs_the_result_and_clears_it_on_ack(
    peer: GatewayPeer, tmp_path: Path
) -> None:
    state = peer.enrol(tmp_path)
    agent = make_agent(state)
    dev = agent.device_id
    peer.queued[dev].append(peer.lease(dev, mc_params()))

    async def main() -> None:
        async with serving(peer):
            await run_to_end(agent)

    asyncio.run(main())
    ((who, payload),) = peer.results
    body, result = peer.open_result(who, payload)
    assert who == dev and body["dev"] == dev and body["units"] == 7
    assert result == kernels.run(MC, mc_params())
    assert agent.stats.counts["acks"] == 1 and agent.tasks_done == 1
    with stored(state) as store:
        assert store.unacked() == [] and store.checkpoints() == []
        assert [a.rhash for a in store.acks()] == [body["rhash"]]
    # Retained state documents: online while working, an explicit offline on a clean stop.
    assert peer.states[0]["online"] and peer.states[0]["decision"] == "run"
    assert peer.states[-1] == {"v": 1, "t": "state", "online": False}


def test_bad_leases_are_counted_and_never_run(peer: GatewayPeer, tmp_path: Path) -> None:
    state = peer.enrol(tmp_path)
    agent = make_agent(state)
    dev = agent.device_id
    other_dev = protocol.device_id(b"x" * 32)
    forger = nacl.signing.SigningKey.generate()
    good = peer.lease(dev, mc_params())
    peer.queued[dev] += [
        peer.lease(dev, mc_params(), key=forger),
        peer.lease(other_dev, mc_params()),
        peer.lease(dev, mc_params(), kernel="no_such_kernel"),
        peer.lease(dev, mc_params(points=0)),
        peer.lease(dev, {"seed": {"blob": b"short"}, "points": 5}),
        peer.lease(dev, mc_params(), deadline_in=-1),
        good,
    ]
    agent.config.pull_n = 16

    async def main() -> None:
        async with serving(peer):
            await run_to_end(agent)

    asyncio.run(main())
    counts = agent.stats.counts
    for code in (
        "bad_signature",
        "not_your_lease",
        "unknown_kernel",
        "bad_params",
        "lease_expired",
    ):
        assert counts["lease_rejected:" + code] == (2 if code == "bad_params" else 1), code
    ((_, payload),) = peer.results  # only the good one ran
    body, _ = peer.open_result(dev, payload)
    assert body["lease"] == protocol.peek_sealed(good, 4096, ("lease",))["lease"]
    assert agent.tasks_done == 1


def test_garbage_on_the_inbox_never_stops_the_loop(peer: GatewayPeer, tmp_path: Path) -> None:
    state = peer.enrol(tmp_path)
    agent = make_agent(state, exit_when_idle=False, max_tasks=1)
    dev = agent.device_id
    receipt = protocol.cbor.dumps({"v": 1, "t": "claim_receipt", "b": b"x", "s": b"y" * 64})
    garbage = [
        b"",
        os.urandom(100),
        b"\xff\xff",
        protocol.cbor.dumps([1, 2, 3]),
        protocol.cbor.dumps({"v": 2, "t": "leases"}),
        protocol.cbor.dumps({"v": 1, "t": "leases", "req": 1, "items": [5]}),
        protocol.cbor.dumps({"v": 1, "t": "party"}),
        protocol.cbor.dumps({"v": 1, "t": "ack", "b": b"x", "s": b"y" * 64}),
        protocol.encode(
            protocol.message("blob_part", req=999, hash=b"h" * 32, off=0, total=1, data=b"x")
        ),
        receipt,
        protocol.encode(protocol.message("error", code="internal", msg="oops", ref=b"z" * 16)),
    ]
    handled: list[bytes] = []
    agent.handlers["claim_receipt"] = handled.append  # types owned by other modules

    async def main() -> None:
        async with serving(peer):
            runner = asyncio.create_task(agent.run())
            await agent.stats.wait_for(lambda: agent.stats.counts["connects"] >= 1)
            for payload in garbage:
                await peer.send(dev, payload)
            rejected = agent.stats.counts
            await agent.stats.wait_for(
                lambda: (
                    sum(n for k, n in rejected.items() if k.startswith("inbox_")) >= 9
                    and rejected["gateway_error:internal"] == 1
                )
            )
            peer.queued[dev].append(peer.lease(dev, mc_params()))  # still working afterwards
            await asyncio.wait_for(runner, 30)

    asyncio.run(main())
    counts = agent.stats.counts
    assert counts["inbox_rejected:bad_cbor"] >= 2
    assert counts["inbox_rejected:bad_schema"] >= 4
    assert counts["inbox_rejected:bad_signature"] == 1
    assert counts["inbox_unexpected:blob_part"] == 1
    assert counts["inbox_rejected:internal"] == 0
    assert agent.tasks_done == 1 and len(peer.results) == 1
    assert handled == [receipt]


# -- durability --------------------------------------------------------------------------------


def test_result_survives_an_agent_restart_and_is_resent_byte_identical(
    peer: GatewayPeer, tmp_path: Path
) -> None:
    state = peer.enrol(tmp_path)
    first = make_agent(state, exit_when_idle=False)
    dev = first.device_id
    peer.queued[dev].append(peer.lease(dev, mc_params()))
    peer.auto_ack = False

    async def main() -> None:
        async with serving(peer):
            runner = asyncio.create_task(first.run())
            await peer.stats.wait_for(lambda: len(peer.results) == 1)
            first.stop()
            await asyncio.wait_for(runner, WAIT_S)
            with stored(state) as store:
                (entry,) = store.unacked()
            assert entry.sealed == peer.results[0][1]  # stored before it was published
            peer.auto_ack = True
            second = make_agent(state)
            await run_to_end(second)
            assert second.stats.counts["results_resent"] == 1
            assert second.stats.counts["acks"] == 1 and second.tasks_done == 0

    asyncio.run(main())
    assert len(peer.results) == 2 and peer.results[0] == peer.results[1]
    with stored(state) as store:
        assert store.unacked() == [] and len(store.acks()) == 1


def test_reconnects_after_broker_restart_and_resends(fresh_broker: Broker, tmp_path: Path) -> None:
    peer = GatewayPeer(fresh_broker)
    state = peer.enrol(tmp_path)
    agent = make_agent(state, exit_when_idle=False, max_tasks=1)
    dev = agent.device_id
    peer.queued[dev].append(peer.lease(dev, mc_params()))
    peer.auto_ack = False

    async def main() -> None:
        async with serving(peer):
            runner = asyncio.create_task(agent.run())
            await peer.stats.wait_for(lambda: len(peer.results) == 1)
            peer.auto_ack = True
            await asyncio.to_thread(fresh_broker.restart)
            await asyncio.wait_for(runner, 30)

    asyncio.run(main())
    counts = agent.stats.counts
    assert counts["connects"] >= 2 and counts["connection_errors"] >= 1
    assert counts["results_resent"] >= 1 and counts["acks"] == 1
    assert len({payload for _, payload in peer.results}) == 1  # every copy byte-identical


def test_forged_or_mismatched_acks_do_not_clear_the_outbox(
    peer: GatewayPeer, tmp_path: Path
) -> None:
    state = peer.enrol(tmp_path)
    agent = make_agent(state)
    dev = agent.device_id
    peer.queued[dev].append(peer.lease(dev, mc_params()))
    peer.auto_ack = False

    async def main() -> None:
        async with serving(peer):
            runner = asyncio.create_task(agent.run())
            await peer.stats.wait_for(lambda: len(peer.results) == 1)
            body, _ = peer.open_result(dev, peer.results[0][1])
            counts = agent.stats.counts
            await peer.send(dev, peer.ack_for(body, key=nacl.signing.SigningKey.generate()))
            await agent.stats.wait_for(lambda: counts["inbox_rejected:bad_signature"] == 1)
            await peer.send(dev, peer.ack_for(body, rhash=hashlib.sha256(b"x").digest()))
            await agent.stats.wait_for(lambda: counts["ack_unknown"] == 1)
            assert [e.lease for e in agent.store.unacked()] == [body["lease"]]
            await peer.send(dev, peer.ack_for(body))
            await asyncio.wait_for(runner, 30)
            assert counts["acks"] == 1

    asyncio.run(main())


# -- the governor between chunks ---------------------------------------------------------------


@pytest.mark.parametrize("trouble", ["unplugged", "hot"])
def test_governor_stop_or_pause_between_chunks_resumes_to_the_same_result(
    peer: GatewayPeer, tmp_path: Path, trouble: str
) -> None:
    state = peer.enrol(tmp_path)
    sim = phone(seed=3)
    params = mc_params(points=400_000, seed=42)
    seen: list[int] = []

    def on_progress(p: Progress) -> None:
        seen.append(p.done_units)
        if len(seen) == 3:  # deterministic: between the third and fourth chunk
            if trouble == "unplugged":
                sim.set_plugged(False)
            else:
                sim.batt_c = sim.soc_c = 46.0  # Android skin SEVERE and battery > 40 °C

    # State documents go out on change; the "hot" run limits them to one per hour instead.
    every = 0.0 if trouble == "unplugged" else 3600.0
    agent = make_agent(state, sim, on_progress, chunk_units=20_000, state_every_s=every)
    dev = agent.device_id
    peer.queued[dev].append(peer.lease(dev, params))

    async def main() -> None:
        async with serving(peer):
            runner = asyncio.create_task(agent.run())
            counts = agent.stats.counts
            if trouble == "unplugged":
                await agent.stats.wait_for(lambda: counts["tasks_stopped"] == 1)
                (cp,) = agent.store.checkpoints()
                assert 0 < cp.units < params["points"]  # progress kept on disk
                # The change of decision is reported in the retained state document.
                await peer.stats.wait_for(
                    lambda: any(s.get("code") == "not_charging" for s in peer.states)
                )
                sim.set_plugged(True)
            await asyncio.wait_for(runner, 30)

    asyncio.run(main())
    counts = agent.stats.counts
    if trouble == "unplugged":
        assert counts["tasks_stopped"] == 1 and counts["decision:stop"] >= 1
    else:
        assert counts["tasks_paused"] >= 1 and counts["tasks_stopped"] == 0
        assert [s["online"] for s in peer.states] == [True, False]  # rate limited
    assert seen[-1] == params["points"] and len(seen) > 20
    ((_, payload),) = peer.results
    _, result = peer.open_result(dev, payload)
    assert result == kernels.run(MC, params)  # paused/resumed result is identical


def test_restart_resumes_a_checkpointed_task_to_the_same_result(
    peer: GatewayPeer, tmp_path: Path
) -> None:
    state = peer.enrol(tmp_path)
    sim = phone(seed=5)
    params = mc_params(points=300_000, seed=9)

    def unplug_after_two(p: Progress) -> None:
        if p.done_units == 40_000:
            sim.set_plugged(False)

    first = make_agent(state, sim, unplug_after_two, chunk_units=20_000, exit_when_idle=False)
    dev = first.device_id
    peer.queued[dev].append(peer.lease(dev, params))

    async def main() -> None:
        async with serving(peer):
            runner = asyncio.create_task(first.run())
            await first.stats.wait_for(lambda: first.stats.counts["tasks_stopped"] == 1)
            first.stop()
            await asyncio.wait_for(runner, WAIT_S)
            with stored(state) as store:
                assert [cp.units for cp in store.checkpoints()] == [40_000]
            second = make_agent(state, phone(seed=6), chunk_units=20_000)
            await run_to_end(second)
            assert second.stats.counts["checkpoints_resumed"] == 1

    asyncio.run(main())
    ((_, payload),) = peer.results
    _, result = peer.open_result(dev, payload)
    assert result == kernels.run(MC, params)


def test_restart_drops_a_checkpoint_whose_lease_has_expired(
    peer: GatewayPeer, tmp_path: Path
) -> None:
    state = peer.enrol(tmp_path)
    dev = state.load_identity().device_id
    expired = peer.lease(dev, mc_params(), deadline_in=-1)
    lease_id = protocol.peek_sealed(expired, 4096, ("lease",))["lease"]
    execution = kernels.Execution(MC, mc_params())
    execution.step(1000)
    with stored(state) as store:  # as a run that stopped before the deadline left it
        store.save_checkpoint(
            Checkpoint(lease_id, expired, int(time.time()) - 1, 1, 1000, execution.checkpoint())
        )
    agent = make_agent(state)

    async def main() -> None:
        async with serving(peer):
            await run_to_end(agent)

    asyncio.run(main())
    assert agent.stats.counts["checkpoint_dropped:lease_expired"] == 1
    assert agent.stats.counts["checkpoints_resumed"] == 0
    assert peer.results == []
    with stored(state) as store:
        assert store.checkpoints() == []


def test_cli_run_and_the_last_will_when_the_process_dies(peer: GatewayPeer, tmp_path: Path) -> None:
    state = peer.enrol(tmp_path)
    dev = state.load_identity().device_id
    peer.queued[dev].append(peer.lease(dev, mc_params()))

    async def main() -> None:
        async with serving(peer):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge_agent.cli",
                "run",
                "--state-dir",
                str(state.root),
                "--hal",
                "simulated",
                "--speedup",
                "1000",
            )
            try:
                await peer.stats.wait_for(lambda: len(peer.results) == 1, timeout=30)
                assert peer.states[-1]["online"]
            finally:
                proc.kill()  # SIGKILL: no DISCONNECT, so the broker publishes the will
                await proc.wait()
            await peer.stats.wait_for(lambda: not peer.states[-1]["online"])

    asyncio.run(main())
    assert peer.states[-1] == {"v": 1, "t": "state", "online": False}
    ((who, payload),) = peer.results
    assert peer.open_result(who, payload)[1] == kernels.run(MC, mc_params())


# -- blobs -------------------------------------------------------------------------------------


def test_blobs_are_fetched_in_parts_verified_and_cached(peer: GatewayPeer, tmp_path: Path) -> None:
    state = peer.enrol(tmp_path)
    agent = make_agent(state, pull_n=4)
    dev = agent.device_id
    k = 40_000
    a, w = os.urandom(k), os.urandom(2 * k)
    ha, hw = hashlib.sha256(a).digest(), hashlib.sha256(w).digest()
    peer.blobs = {ha: a, hw: w}
    bad = os.urandom(100)
    hbad = hashlib.sha256(b"something else").digest()
    peer.blobs[hbad] = bad  # served, but does not match its hash
    shape = {"m": 1, "n": 2, "k": k, "multiplier": 1 << 20, "shift": 30}
    refs = {"a": {"blob": ha}, "w": {"blob": hw}}
    peer.queued[dev] += [
        peer.lease(dev, {**shape, **refs}, kernel="gemm_i8"),
        peer.lease(dev, {**shape, **refs, "relu": True}, kernel="gemm_i8"),
        peer.lease(dev, {**shape, "a": {"blob": hbad}, "w": {"blob": hw}}, kernel="gemm_i8"),
    ]

    async def main() -> None:
        async with serving(peer):
            await run_to_end(agent)

    asyncio.run(main())
    assert peer.blob_gets[ha] == 2 and peer.blob_gets[hw] == 3  # 32 KiB parts, fetched once
    counts = agent.stats.counts
    assert counts["blobs_fetched"] == 2 and counts["blob_cache_hits"] == 2
    assert counts["blob_bad_hash"] == 1 and counts["lease_rejected:blob_failed"] == 1
    results = sorted(peer.open_result(dev, p)[1]["out"] for _, p in peer.results)
    want = sorted(
        kernels.run("gemm_i8", {**shape, "a": a, "w": w, "relu": relu})["out"]
        for relu in (False, True)
    )
    assert results == want


# -- small parts -------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 60.0)
    delays = [backoff.next() for _ in range(10)]
    for n, delay in enumerate(delays):
        ceiling = min(60.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 0.5


def test_swarm_runs_varied_devices_in_one_loop(peer: GatewayPeer, tmp_path: Path) -> None:
    count = 4
    for i in range(count):
        state = peer.enrol(tmp_path / f"dev-{i:04d}")
        dev = state.load_identity().device_id
        peer.queued[dev].append(peer.lease(dev, mc_params(seed=i)))

    async def main() -> list[Agent]:
        async with serving(peer):
            return await asyncio.wait_for(
                run_swarm(tmp_path, count, config(), speedup=SPEEDUP, seed=22), 30
            )

    agents = asyncio.run(main())
    presets = {a.device.sim.preset.name for a in agents if isinstance(a.device, SimulatedDevice)}
    assert len(presets) >= 3
    plugged = [a for a in agents if isinstance(a.device, SimulatedDevice) and a.device.sim.plugged]
    assert len(plugged) == count - 1  # seed 22: the first phone is off its charger
    assert sum(a.tasks_done for a in agents) == len(plugged) == len(peer.results)
    (unplugged,) = set(agents) - set(plugged)
    assert unplugged.tasks_done == 0 and unplugged.stats.counts["pulls"] == 0
