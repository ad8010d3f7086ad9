"""The work loop end to end: the real gateway (``edge-gateway serve`` or GatewayService in this
process), real agents (``edge-agent init``/``run``/``swarm`` subprocesses), a real Mosquitto.

What is proven here, each against the gateway's own computation of the job (every task's stored
result and the assembled output) and the ledger's invariants:
* 50 simulated devices enrolled with real one-time tokens complete a 2,000-task job;
* an agent killed with SIGKILL mid-task: its lease expires, another device completes the task;
  the killed agent restarted drops its stale checkpoint; a result whose ack was lost (the
  gateway was down) is re-sent from the outbox byte for byte, answered with the same signed
  ack, and counted once;
* Mosquitto killed with SIGKILL and then the whole gateway restarted on the same state directory
  and port in the middle of a job: the job completes, nothing lost or counted twice;
* an agent re-sends a result that stays unacked (a gateway shedding load) after a timeout.
ACLs and bad messages are proven in tests/test_broker.py and tests/test_gateway_service.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge_agent.core import cbor, protocol
from gateway.broker import Broker
from gateway.config import StatePaths
from gateway.jobspec import parse_job
from gateway.scheduler import SchedulerConfig
from gateway.service import GatewayService
from gateway.tokens import create_tokens
from tests.e2e_helpers import (
    Serve,
    agent_db,
    assert_counted_once,
    assert_identical_to_local,
    counts_of,
    edge_agent,
    enrol,
    finished,
    job_state,
    kill9,
    rows,
    stop,
    submit,
    tasks_done,
    tokens,
    wait_until,
)
from tests.mqtt_fixtures import WAIT_S, mqtt_client, serving
from tests.test_agent_loop import GatewayPeer, make_agent, mc_params, run_to_end, stored

ROOT = Path(__file__).resolve().parent.parent
SWARM_SEED = 21  # a seed whose 50 simulated devices are all on their chargers
SPEEDUP = "100"  # simulated device clocks: governor holds and physics take milliseconds


def _mc_job(seed: int, tasks: int, points_per_task: int) -> dict[str, Any]:
    return {"kind": "montecarlo_pi", "params": {"seed": seed, "points": tasks * points_per_task},
            "split": {"points_per_task": points_per_task}}


def _report(name: str, **numbers: float) -> None:
    print(json.dumps({"test": name, **{k: round(v, 2) for k, v in numbers.items()}}))


async def _swarm(base: Path, devices: int, gateway_url: str, token_file: Path
                 ) -> asyncio.subprocess.Process:
    return await edge_agent("swarm", "--devices", str(devices), "--gateway", gateway_url,
                            "--tokens", str(token_file), "--state-dir", str(base), "--seed",
                            str(SWARM_SEED), "--speedup", SPEEDUP, "--no-progress")


# -- 50 devices, 2,000 tasks ---------------------------------------------------------------


def test_fifty_devices_complete_a_2000_task_job_identical_to_local(tmp_path: Path) -> None:
    state = tmp_path / "gw"
    measured: dict[str, float] = {}

    async def main() -> None:
        serve = await Serve.start(state)
        try:
            token_file = tmp_path / "tokens"
            token_file.write_text("\n".join(await tokens(state, 50)))
            job_id, spec = await submit(state, _mc_job(seed=2024, tasks=2000,
                                                       points_per_task=10_000))
            started = time.monotonic()
            swarm = await _swarm(tmp_path / "swarm", 50, serve.url, token_file)
            await wait_until(lambda: job_state(state, job_id) == "done", 120, "the job to finish")
            measured["wall_s"] = time.monotonic() - started
            code, out = await stop(swarm)
            found = re.search(r"50 devices, (\d+) tasks done", out)
            # More than 2,000 when the trust layer replicates tasks to verify them.
            assert code == 0 and found and int(found.group(1)) >= 2000, out
            measured["tasks_run"] = int(found.group(1))
        finally:
            assert await serve.stop() == 0
        output = assert_identical_to_local(state, job_id, spec)
        assert output["points"] == 20_000_000
        assert assert_counted_once(state, job_id) == 2000
        db = StatePaths(state).ledger
        per_device = dict(rows(db, "SELECT d.id, count(r.id) FROM devices d LEFT JOIN "
                                   "results r ON r.device_id = d.id GROUP BY d.id"))
        # Every device worked: none had its first pull refused for want of a state
        # (the link sends a session's first state before any pull).
        assert len(per_device) == 50 and min(per_device.values()) >= 1
        assert sum(per_device.values()) == measured["tasks_run"]  # each result stored once
        ((first, last),) = rows(db, "SELECT started_at, finished_at FROM jobs WHERE id = ?",
                                (job_id,))
        measured["job_s"] = last - first
        measured["tasks_per_s"] = 2000 / (last - first)

    asyncio.run(main())
    _report("fifty_devices", **measured)


# -- an agent killed mid-task --------------------------------------------------------------

LEASE_S = 5.0  # every lease's deadline: expiry within the test's time
SLOW_POINTS = 1_000_000  # ~2.3 s in the pure-Python kernel, ~3 ms in C


class InProcessGateway:
    """GatewayService in this event loop on a broker that outlives it (stop and start again)."""

    def __init__(self, root: Path, broker: Broker, lease_s: float = LEASE_S) -> None:
        self.root, self.broker = root, broker
        self.config = SchedulerConfig(min_lease_s=lease_s, max_lease_s=lease_s, slack_s=0.0)
        self.service: GatewayService | None = None
        self._stop = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    async def start(self) -> GatewayService:
        self.service = GatewayService(StatePaths(self.root), self.broker.gateway_endpoint(),
                                      broker=self.broker, scheduler_config=self.config)
        self._stop = asyncio.Event()
        self._running = asyncio.create_task(self.service.run(self._stop))
        await asyncio.wait_for(self.service.ready.wait(), WAIT_S)
        return self.service

    async def stop(self) -> None:
        assert self._running is not None
        if self._running.done():
            return
        self._stop.set()
        await asyncio.wait_for(self._running, WAIT_S)


def _agent_rows(state: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of an agent's database, [] before the agent has made it."""
    db = agent_db(state)
    if not db.exists():
        return []
    try:
        return rows(db, sql)
    except Exception as exc:  # the agent has not created its tables yet
        if "no such table" in str(exc):
            return []
        raise


def _checkpoints(state: Path) -> list[bytes]:
    return [lease for (lease,) in _agent_rows(state, "SELECT lease FROM checkpoints")]


def _unacked(state: Path) -> list[tuple[bytes, bytes]]:
    return [(lease, sealed) for lease, sealed in _agent_rows(
        state, "SELECT lease, sealed FROM outbox WHERE refused IS NULL")]


def _acked(state: Path) -> list[tuple[bytes, str, int]]:
    return [(lease, status, seq) for lease, status, seq in _agent_rows(
        state, "SELECT lease, status, seq FROM acks")]


async def _run(state: Path, backend: str) -> asyncio.subprocess.Process:
    return await edge_agent("run", "--state-dir", str(state), "--hal", "simulated", "--speedup",
                      SPEEDUP, "--kernel-backend", backend)


def test_an_agent_killed_mid_task_loses_nothing_and_nothing_counts_twice(
    tmp_path: Path,
) -> None:
    root, a_dir, b_dir = tmp_path / "gw", tmp_path / "a", tmp_path / "b"
    timings: dict[str, float] = {}

    async def main() -> None:
        started = time.monotonic()
        with Broker(root) as broker:
            gw = InProcessGateway(root, broker)
            service = await gw.start()
            made, _ = create_tokens(service.ledger, service.key, service.paths, count=2,
                                    ttl_s=3600.0, now=time.time())
            await asyncio.gather(enrol(a_dir, broker.url, str(made[0])),
                                 enrol(b_dir, broker.url, str(made[1])))
            spec1 = parse_job(_mc_job(seed=11, tasks=4, points_per_task=SLOW_POINTS))
            job1 = service.jobs.submit(spec1)
            ledger_db = StatePaths(root).ledger

            # A (the pure-Python kernel: seconds per task) starts a task and is killed in it.
            a = await _run(a_dir, "python")
            await wait_until(lambda: bool(_checkpoints(a_dir)), 30, "A to start a task")
            kill9(a.pid)
            assert await a.wait() == -9
            (lease,) = _checkpoints(a_dir)
            assert _unacked(a_dir) == [] and _acked(a_dir) == []  # it died mid-task
            ((task_id, a_dev),) = rows(ledger_db, "SELECT task_id, device_id FROM leases "
                                       "WHERE id = ? AND state = 'active'", (lease,))

            # The lease expires at its deadline; B (C kernel) then completes the whole job.
            await wait_until(lambda: rows(ledger_db, "SELECT state FROM leases WHERE id = ?",
                                          (lease,)) == [("expired",)], LEASE_S + WAIT_S,
                             "A's lease to expire")
            assert rows(ledger_db, "SELECT state, attempts FROM tasks WHERE id = ?",
                        (task_id,)) == [("queued", 1)]
            b = await _run(b_dir, "c")
            await wait_until(lambda: job_state(root, job1) == "done" and _unacked(b_dir) == []
                             and bool(_acked(b_dir)), 30, "B to finish job 1, all acked")
            code, out = await stop(b)
            ((b_dev,),) = rows(ledger_db, "SELECT DISTINCT device_id FROM results")
            b_results = rows(ledger_db, "SELECT count(*) FROM results WHERE device_id = ?",
                             (b_dev,))
            assert code == 0 and [(len(_acked(b_dir)),)] == b_results
            assert b_dev != a_dev  # A's task was done by B, A has no result at all
            assert_identical_to_local(root, job1, spec1)
            assert assert_counted_once(root, job1) == 4

            # A restarted: its stale checkpoint is dropped, it takes the next job's task ...
            spec2 = parse_job(_mc_job(seed=12, tasks=1, points_per_task=SLOW_POINTS))
            job2 = service.jobs.submit(spec2)
            a = await _run(a_dir, "python")
            await wait_until(lambda: _checkpoints(a_dir) not in ([], [lease]), 30,
                             "A to start job 2's task")
            assert lease not in _checkpoints(a_dir)
            # ... and finishes it while the gateway is down: the result waits in A's outbox.
            await gw.stop()
            await wait_until(lambda: bool(_unacked(a_dir)), 30, "A to store its result")
            kill9(a.pid)
            assert await a.wait() == -9
            ((lease2, sealed),) = _unacked(a_dir)

            # A restarted again re-sends it byte for byte; the gateway, back, acks it once.
            endpoint = broker.gateway_endpoint()
            async with mqtt_client(endpoint, identifier="e2e-spy") as spy:
                await spy.subscribe(protocol.device_topic(a_dev, "result"), qos=1)
                await spy.subscribe(protocol.inbox_topic(a_dev), qos=1)
                a = await _run(a_dir, "c")
                seen = await _messages(spy, lambda m: bytes(m.payload) == sealed)
                assert seen[-1].topic.value == protocol.device_topic(a_dev, "result")
                service = await gw.start()
                await wait_until(lambda: _unacked(a_dir) == [] and bool(_acked(a_dir)), 30,
                                 "A's result to be acked")
                (ack,) = await _acks(spy, 1)
            code, out = await stop(a)
            counts = counts_of(out)
            assert code == 0 and counts["results_resent"] == 1 and counts["acks"] >= 1
            # One ack stored for the lease (a repeat or a later status replaces, never adds).
            assert [(lease2, "accepted")] == [(le, st) for le, st, _ in _acked(a_dir)]
            body = cbor.loads(cbor.loads(ack)["b"])
            assert (body["lease"], body["dev"]) == (lease2, a_dev)
            await wait_until(lambda: job_state(root, job2) == "done", WAIT_S, "job 2 done")
            assert_identical_to_local(root, job2, spec2)
            assert assert_counted_once(root, job2) == 1
            assert rows(ledger_db, "SELECT count(*) FROM results WHERE device_id = ?",
                        (a_dev,)) == [(1,)]
            assert rows(ledger_db, "SELECT count(*) FROM results WHERE lease_id = ?",
                        (lease,)) == [(0,)]
            await gw.stop()
        timings["wall_s"] = time.monotonic() - started

    asyncio.run(main())
    _report("killed_mid_task", **timings)


async def _acks(client: aiomqtt.Client, count: int) -> list[bytes]:
    """The next ``count`` acks among the messages ``client`` receives."""
    found: list[bytes] = []
    async with asyncio.timeout(30):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            payload = message.payload
            if cbor.loads(payload, max_size=protocol.MAX_PAYLOAD["inbox"]).get("t") == "ack":
                found.append(payload)
                if len(found) == count:
                    return found
    raise AssertionError("the message stream ended")


async def _messages(client: aiomqtt.Client, last: Any) -> list[aiomqtt.Message]:
    """Messages up to and including the first for which ``last(message)`` holds."""
    seen: list[aiomqtt.Message] = []
    async with asyncio.timeout(30):
        async for message in client.messages:
            seen.append(message)
            if last(message):
                return seen
    raise AssertionError("the message stream ended")


# -- Mosquitto and the gateway restarted during a job --------------------------------------


def test_broker_crash_and_gateway_restart_mid_job_lose_and_double_nothing(
    tmp_path: Path,
) -> None:
    """In-process gateway with 10 s leases: a reply lost in a crash (a lease the device never
    saw) costs one lease time, not the 60 s minimum of the default configuration."""
    root = tmp_path / "gw"
    tasks, devices = 400, 20
    timings: dict[str, float] = {}

    async def main() -> None:
        started = time.monotonic()
        with Broker(root) as broker:
            gw = InProcessGateway(root, broker, lease_s=10.0)
            service = await gw.start()
            made, _ = create_tokens(service.ledger, service.key, service.paths, count=devices,
                                    ttl_s=3600.0, now=time.time())
            token_file = tmp_path / "tokens"
            token_file.write_text("\n".join(str(t) for t in made))
            spec = parse_job(_mc_job(seed=99, tasks=tasks, points_per_task=10_000))
            job_id = service.jobs.submit(spec)
            swarm = await _swarm(tmp_path / "swarm", devices, broker.url, token_file)
            try:
                await wait_until(lambda: tasks_done(root, job_id) >= tasks // 4, 60,
                                 "a quarter of the job")
                # Mosquitto dies: the gateway's supervisor restarts it on the same ports.
                old = broker.pid
                assert old is not None
                kill9(old)
                await wait_until(lambda: broker.pid not in (None, old), WAIT_S * 3,
                                 "the supervisor to restart Mosquitto")
                at_crash = tasks_done(root, job_id)
                await wait_until(lambda: tasks_done(root, job_id) >= at_crash + tasks // 4, 60,
                                 "work to go on after the broker crash")
                # The gateway and its Mosquitto stop and start again on the same ports.
                await gw.stop()
                await asyncio.to_thread(broker.restart)
                assert tasks_done(root, job_id) < tasks
                await gw.start()
                await wait_until(lambda: job_state(root, job_id) == "done", 60,
                                 "the job to finish")
                code, out = await stop(swarm)
                assert code == 0 and f"{devices} devices, " in out
            finally:
                if swarm.returncode is None:
                    swarm.kill()
                    await swarm.wait()
                await gw.stop()
        assert_identical_to_local(root, job_id, spec)
        assert assert_counted_once(root, job_id) == tasks
        timings["wall_s"] = time.monotonic() - started

    asyncio.run(main())
    _report("broker_and_gateway_restart", **timings)


# -- re-sent on a timeout ------------------------------------------------------------------


@pytest.fixture
def peer(mqtt_broker: Broker) -> Iterator[GatewayPeer]:
    yield GatewayPeer(mqtt_broker)


def test_an_unacked_result_is_resent_after_a_timeout(peer: GatewayPeer, tmp_path: Path) -> None:
    """A gateway that sheds a result under load never acks it: the connected agent sends it
    again once ``resend_after_s`` has passed, not only after a reconnect."""
    state = peer.enrol(tmp_path)
    agent = make_agent(state, max_tasks=1)
    agent.link.resend_after_s = 0.3
    peer.queued[agent.device_id].append(peer.lease(agent.device_id, mc_params()))
    peer.auto_ack = False

    async def main() -> None:
        async with serving(peer):
            runner = asyncio.create_task(run_to_end(agent))
            await peer.stats.wait_for(lambda: len(peer.results) == 1)  # shed: no ack
            peer.auto_ack = True
            await runner

    asyncio.run(main())
    counts = agent.stats.counts
    assert counts["connects"] == 1 and counts["results_resent_timeout"] >= 1
    assert counts["acks"] == 1
    assert len(peer.results) >= 2 and len({payload for _, payload in peer.results}) == 1
    with stored(state) as store:
        assert store.unacked() == [] and len(store.acks()) == 1



# -- make demo -----------------------------------------------------------------------------


def test_the_quick_demo_runs_real_jobs_and_reports_them_identical_to_local(
    tmp_path: Path,
) -> None:
    started = time.monotonic()

    async def main() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "scripts" / "demo.py"), "--quick", "--state-dir",
            str(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "160"})
        return await finished(proc, 90)

    code, out = asyncio.run(main())
    assert code == 0, out
    summary = " ".join(out.split("summary", 1)[1].split())  # unwrapped
    tasks, working, devices = map(int, re.search(
        r"tasks: (\d+) done by (\d+) of (\d+) devices", summary).groups())  # type: ignore[union-attr]
    assert tasks == 24 + 120 + 32 and devices == 16 and 8 <= working < devices
    assert summary.count("identical to local: yes") == 3 and "NO" not in summary
    assert "accuracy 118/120" in summary and "Monte Carlo pi: 3.14" in summary
    assert re.search(r"SHA-256 search: \d+ nonces found", summary)
    assert "pause: android_thermal" in summary and "stop: not_charging" in summary
    _report("quick_demo", wall_s=time.monotonic() - started)
