"""The trust layer in the real gateway service (docs/TRUST.md), with a real Mosquitto, a real
ledger and device peers that speak the protocol with their own keys: honest devices get
pending -> accepted acks and vouch for each other through replicas; cheaters (always wrong,
lying about their work units, replaying another device's signed receipt) are caught,
quarantined and kept out of the job's output; canary leases look like any other; and the
gateway's own kernel runs never stall the MQTT loop. No sleeps: every wait is for a message or
an event, with a timeout."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from edge_agent import kernels
from edge_agent.core import cbor
from gateway import jobs
from gateway.config import Bucket, ServiceLimits
from gateway.jobspec import JobSpec
from gateway.ledger import Ledger
from gateway.service import run_c_kernel
from gateway.trust import TrustConfig
from gateway.verifier import VerifierConfig
from tests.mqtt_fixtures import WAIT_S
from tests.test_gateway_service import Device, Gateway, _check_ledger, run_gateway

TRUST = TrustConfig(warmup=2, canary_rate=0.0)  # quick to trust, so replicas happen soon
# The test clock stands still, so a rate limit would never refill: pulls are not limited here.
LIMITS = ServiceLimits(token_retire_s=60.0, pull=Bucket(burst=1e9, per_s=1.0))


def pi_job(tasks: int, seed: int = 3) -> dict[str, Any]:
    return {"kind": "montecarlo_pi", "params": {"seed": seed, "points": 1000 * tasks},
            "split": {"points_per_task": 1000}}


def wrong(result: dict[str, Any]) -> dict[str, Any]:
    """A made-up answer of the right shape."""
    return {**result, "inside": (result["inside"] + 1) % (result["points"] + 1)}


async def work(device: Device, n: int = 4) -> list[dict[str, Any]]:
    """One honest pull: run and submit whatever was leased; returns the leases."""
    reply = await device.pull(n=n)
    leases = device.leases(reply) if reply["t"] == "leases" else []
    for lease in leases:
        await device.submit(lease, await device.run(lease), final=False)
    return leases


async def until(gw: Gateway, condition: Callable[[], bool]) -> None:
    """Wait, run by run of the gateway's own (checks, canaries), until ``condition`` holds."""
    while True:
        gw.service.verified.clear()
        if condition():
            return
        async with asyncio.timeout(WAIT_S):
            await gw.service.verified.wait()


async def until_done(gw: Gateway, job_id: int, devices: list[Device]) -> None:
    """Honest devices work until the job is done (waiting for verifications when idle)."""
    while gw.service.jobs.report(job_id)["state"] != "done":
        gw.service.verified.clear()
        leased = [lease for device in devices for lease in await work(device)]
        if not leased and gw.service.jobs.report(job_id)["state"] != "done":
            async with asyncio.timeout(WAIT_S):
                await gw.service.verified.wait()


async def trusted(gw: Gateway, clients: list[aiomqtt.Client]) -> Device:
    """An honest device that has earned trust (warmup results verified by the gateway)."""
    device = await gw.enrolled(clients)
    await device.state()
    done = 0
    while done < TRUST.warmup:
        for lease in await work(device, n=1):
            assert (await device.ack(lease["lease"]))["status"] == "accepted"
            done += 1
    return device


def output_of(gw: Gateway, job_id: int, spec: JobSpec) -> None:
    assert gw.service.jobs.output(job_id) == jobs.compute_locally(spec)


# -- honest devices ----------------------------------------------------------------------------


def test_honest_results_go_pending_then_accepted_and_a_replica_settles_a_new_device(
    tmp_path: Path,
) -> None:
    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        job_id, spec = gw.submit(pi_job(12))
        veteran = await trusted(gw, clients)
        first = veteran.acks[next(iter(veteran.acks))]
        assert [(a["status"], a["code"]) for a in first] == [("pending", "verifying"),
                                                             ("accepted", "ok")]
        assert first[0]["seq"] < first[1]["seq"]
        newcomer = await gw.enrolled(clients)
        await newcomer.state()
        (lease,) = newcomer.leases(await newcomer.pull(n=1))
        ack = await newcomer.submit(lease, await newcomer.run(lease), final=False)
        assert (ack["status"], ack["code"]) == ("pending", "verifying")
        # The veteran (another key, another enrol token) gets the same task as a replica: a
        # lease like any other, first in its next pull.
        replica = veteran.leases(await veteran.pull(n=1))[0]
        assert replica["task"] == lease["task"] and replica["lease"] != lease["lease"]
        assert (await veteran.submit(replica, await veteran.run(replica)))["status"] == (
            "accepted")
        final = await newcomer.ack(lease["lease"])  # unasked: its verification resolved
        assert (final["status"], final["code"]) == ("accepted", "ok")
        assert final["seq"] > ack["seq"]
        await until_done(gw, job_id, [veteran, newcomer])
        output_of(gw, job_id, spec)

    service = run_gateway(tmp_path, scenario, limits=LIMITS, trust=TRUST)
    assert service.counters["trust:replicas_leased"] >= 1
    assert service.counters["trust:method:replica"] >= 1
    assert "trust:quarantined" not in service.counters
    _check_ledger(tmp_path)


# -- cheaters ----------------------------------------------------------------------------------


async def caught(cheater: Device, vouchers: list[Device], cheat: Any) -> int:
    """Let ``cheat(lease)`` answer every lease of the cheater (honest devices answer the
    replicas) until it is quarantined; returns how many results it sent."""
    sent = 0
    while True:
        reply = await cheater.pull(n=1)
        if reply["t"] == "no_work":
            assert reply["code"] == "quarantined", reply
            return sent
        (lease,) = cheater.leases(reply)
        first = await cheat(lease)
        sent += 1
        if first["status"] == "pending":
            for voucher in vouchers:  # a replica, if one was asked for, comes first in a pull
                await work(voucher)
        final = await cheater.ack(lease["lease"])
        assert final["status"] == "rejected", final


def test_cheaters_are_caught_quarantined_and_kept_out_of_the_output(tmp_path: Path) -> None:
    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        job_id, spec = gw.submit(pi_job(24))
        honest = await trusted(gw, clients)
        always_wrong, liar, replayer = [await gw.enrolled(clients) for _ in range(3)]
        for device in (always_wrong, liar, replayer):
            await device.state()

        async def answer_wrong(lease: dict[str, Any]) -> dict[str, Any]:
            return await always_wrong.submit(lease, wrong(await always_wrong.run(lease)),
                                             final=False)

        async def claim_more_work(lease: dict[str, Any]) -> dict[str, Any]:
            ack = await liar.submit(lease, await liar.run(lease), final=False,
                                    units=lease["units"] * 10)
            assert (ack["status"], ack["code"]) == ("rejected", "bad_units")
            return ack

        # The replayer presents the honest device's own signed receipt, then the honest
        # device's answer (to another task) re-signed as its own.
        (theirs,) = honest.leases(await honest.pull(n=1))
        their_result = await honest.run(theirs)
        receipt = honest.peer.result_message(theirs, their_result)
        await honest.submit(theirs, their_result, final=False)

        async def replay(lease: dict[str, Any]) -> dict[str, Any]:
            assert await replayer.refused("result", receipt) == "bad_signature"
            return await replayer.submit(lease, their_result, final=False)

        assert await caught(always_wrong, [honest], answer_wrong) == TRUST.max_strikes
        assert await caught(liar, [honest], claim_more_work) == TRUST.max_strikes
        assert await caught(replayer, [honest], replay) == TRUST.max_strikes
        for cheater in (always_wrong, liar, replayer):  # no more leases, whatever it asks
            assert (await cheater.pull(n=4))["code"] == "quarantined"
        await until_done(gw, job_id, [honest])
        output_of(gw, job_id, spec)  # none of the wrong answers made it in
        with Ledger.open(gw.service.paths.ledger, 0.0) as ledger:
            rows = ledger._conn.execute(
                "SELECT d.quarantined, count(r.id), sum(r.status = 'accepted') FROM devices AS d "
                "LEFT JOIN results AS r ON r.device_id = d.id GROUP BY d.id").fetchall()
        assert sorted(rows) == [(0, rows_of_honest := sum(r[1] for r in rows if r[0] == 0),
                                 rows_of_honest)] + [(1, 2, 0)] * 3

    service = run_gateway(tmp_path, scenario, limits=LIMITS, trust=TRUST)
    assert service.counters["trust:quarantined"] == 3
    assert service.counters["rejected:result:bad_signature"] == TRUST.max_strikes
    _check_ledger(tmp_path)


# -- canaries ------------------------------------------------------------------------------------


def test_a_canary_lease_is_indistinguishable_from_a_real_one(tmp_path: Path) -> None:
    pool = 6
    found: dict[str, list[dict[str, Any]]] = {"canary": [], "real": []}

    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        gw.submit(pi_job(40, seed=11))
        gw.submit({"kind": "sha256_search", "params": {"prefix": "canary test", "start": 0,
                                                      "count": 40 * 256, "zero_bits": 8},
                   "split": {"nonces_per_task": 256}})
        device = await gw.enrolled(clients)
        await device.state()
        gw.service.verifier.wake()  # jobs came in: fill the canary pool
        await until(gw, lambda: len(gw.service.verifier.canaries) == pool)
        while len(found["canary"]) < 3 or len(found["real"]) < 6:
            for lease in await work(device, n=2):
                found[_kind(gw, lease["lease"])].append(lease)
            await until(gw, lambda: len(gw.service.verifier.canaries) >= 2)

    service = run_gateway(tmp_path, scenario, limits=LIMITS, trust=TrustConfig(canary_rate=0.3),
                          verifier_config=VerifierConfig(canary_pool=pool))
    canaries, real = found["canary"], found["real"]
    assert {frozenset(lease) for lease in canaries + real} == {frozenset(real[0])}
    ids = [lease["task"] for lease in canaries + real]
    assert len(set(ids)) == len(ids) and {len(i) for i in ids} == {16}
    kernels = {lease["kernel"] for lease in real}
    for canary in canaries:
        assert canary["kernel"] in kernels
        same = [lease for lease in real if lease["kernel"] == canary["kernel"]]
        assert {frozenset(lease["params"]) for lease in same} == {frozenset(canary["params"])}
        assert {lease["units"] for lease in same} == {canary["units"]}
        assert canary["attempt"] == 0 and canary["deadline"] - canary["issued"] in {
            lease["deadline"] - lease["issued"] for lease in same} | {canary["deadline"] -
                                                                     canary["issued"]}
        if canary["kernel"] == "montecarlo_pi":  # a fresh seed: nobody can have its answer
            assert canary["params"]["points"] == same[0]["params"]["points"]
            assert 0 <= canary["params"]["seed"] < 2**64
    assert service.counters["trust:canaries_leased"] == len(canaries)
    _check_ledger(tmp_path)


def _kind(gw: Gateway, lease_id: bytes) -> str:
    """Whether a lease is a canary: only the ledger knows (the hidden job 0)."""
    job = gw.service.ledger._conn.execute(
        "SELECT job_id FROM leases WHERE id = ?", (lease_id,)).fetchone()[0]
    return "canary" if job == 0 else "real"


# -- the gateway's own runs -----------------------------------------------------------------------


def test_the_gateways_kernel_runs_off_the_event_loop(tmp_path: Path) -> None:
    release = threading.Event()
    threads: list[str] = []

    def held_run(kernel: str, params: dict[str, Any]) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        if not release.wait(WAIT_S):
            raise TimeoutError("the test never released the kernel")
        return run_c_kernel(kernel, params)

    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        gw.submit(pi_job(2))
        device = await gw.enrolled(clients)
        await device.state()
        (lease,) = device.leases(await device.pull(n=1))
        ack = await device.submit(lease, await device.run(lease), final=False)
        assert ack["status"] == "pending"
        # The kernel is held mid-run in its thread; the service still answers at once.
        assert (await device.pull(n=1))["t"] == "leases"
        assert device.statuses(lease) == [("pending", "verifying", ack["seq"])]
        release.set()
        assert (await device.ack(lease["lease"]))["status"] == "accepted"

    run_gateway(tmp_path, scenario, limits=LIMITS, run_kernel=held_run, trust=TRUST)
    assert threads and threading.main_thread().name not in threads
    _check_ledger(tmp_path)


# -- a mixed fleet, measured ----------------------------------------------------------------------


def test_measure_a_mixed_fleet(tmp_path: Path) -> None:
    """Eight honest devices and one of each cheater over MQTT on one montecarlo job of 96
    tasks; prints one JSON line: who was caught after how many results, the gateway's own runs,
    replicas and canaries over the tasks (the verification overhead), wrong results in the
    output, and the wall time."""
    config = TrustConfig(warmup=3, canary_rate=0.05)
    stats: dict[str, Any] = {}

    async def scenario(gw: Gateway, clients: list[aiomqtt.Client]) -> None:
        job_id, spec = gw.submit(pi_job(96, seed=5))
        fleet = [await gw.enrolled(clients) for _ in range(11)]
        for device in fleet:
            await device.state()
        honest, cheaters = fleet[:8], dict(zip(("always_wrong", "bad_units", "replay"),
                                               fleet[8:], strict=True))
        sent = dict.fromkeys(cheaters, 0)
        caught_after: dict[str, int] = {}
        stolen: list[dict[str, Any]] = []
        started = time.perf_counter()
        while gw.service.jobs.report(job_id)["state"] != "done":
            gw.service.verified.clear()
            leased = [lease for device in honest for lease in await work(device, n=2)]
            for name, cheater in cheaters.items():
                if name in caught_after:
                    continue
                reply = await cheater.pull(n=1)
                if reply["t"] == "no_work":
                    if reply["code"] == "quarantined":
                        caught_after[name] = sent[name]
                    continue
                for lease in cheater.leases(reply):
                    leased.append(lease)
                    sent[name] += 1
                    result = await cheater.run(lease)
                    if name == "always_wrong":
                        await cheater.submit(lease, wrong(result), final=False)
                    elif name == "bad_units":
                        await cheater.submit(lease, result, final=False,
                                             units=lease["units"] + 1)
                    else:  # another device's answer to another task, signed as its own
                        await cheater.submit(lease, stolen[-1] if stolen else wrong(result),
                                             final=False)
                        stolen.append(result)
            if not leased and gw.service.jobs.report(job_id)["state"] != "done":
                async with asyncio.timeout(WAIT_S):
                    await gw.service.verified.wait()
        output_of(gw, job_id, spec)
        params = dict(gw.service.ledger._conn.execute(
            "SELECT id, params_cbor FROM tasks WHERE job_id = ?", (job_id,)).fetchall())
        wrong_in_output = sum(
            cbor.loads(r.result_cbor) != kernels.run("montecarlo_pi", cbor.loads(params[r.task_id]))
            for r in gw.service.ledger.job_results(job_id))
        counters = gw.service.counters
        extra = sum(counters.get(f"trust:{k}", 0) for k in (
            "gateway_runs", "replicas_leased", "canaries_leased"))
        stats.update(
            caught=len(caught_after), cheaters=len(cheaters), results_before_caught=caught_after,
            tasks=96, gateway_runs=counters.get("trust:gateway_runs", 0),
            replicas=counters.get("trust:replicas_leased", 0),
            canaries=counters.get("trust:canaries_leased", 0),
            verification_overhead=round(extra / 96, 3), wrong_in_output=wrong_in_output,
            seconds=round(time.perf_counter() - started, 2))

    run_gateway(tmp_path, scenario, limits=LIMITS, trust=config, trust_rng=random.Random(5))
    print(json.dumps(stats))
    assert stats["caught"] == 3 and stats["wrong_in_output"] == 0
    _check_ledger(tmp_path)
    with Ledger.open(tmp_path / "ledger.sqlite3", 0.0) as ledger:
        assert ledger.fleet()["devices"] == 11
        assert cbor.loads(ledger.output(1) or b"\xa0")  # assembled
