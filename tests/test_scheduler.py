"""The scheduler on a real SQLite ledger: the lease/complete/expire lifecycle, retry limits,
duplicate and foreign results, unfit devices, speed-sized pulls, fairness between jobs, two
connections racing, and a measured run of 20,000 tasks over 500 devices.

Time is passed in everywhere; nothing sleeps.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from edge_agent.core import cbor
from gateway.ledger import Ledger, NewTask
from gateway.scheduler import (
    ACCEPTED,
    BAD_RESULT_HASH,
    BAD_STATE,
    BUSY,
    LATE,
    LEASE_EXPIRED,
    NO_STATE,
    NO_WORK,
    NOT_YOUR_LEASE,
    OFFLINE,
    OK,
    PENDING,
    REJECTED,
    REPLICA,
    TASK_ALREADY_DONE,
    TASK_CANCELED,
    TOO_SLOW,
    UNKNOWN_DEVICE,
    UNKNOWN_TASK,
    Lease,
    LeaseReply,
    Outcome,
    Scheduler,
    SchedulerConfig,
)
from gateway.trust import DeviceTrust, TrustConfig
from gateway.verifier import AckFields, Notice, Verifier, VerifierConfig
from tests.test_ledger import RUN_STATE, add_job, enrol_device, result_of

HOUR = 3600.0


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "ledger.db", now=0.0)


def finish(sched: Scheduler, device: str, lease: Lease, now: float, answer: int = 0) -> Outcome:
    """Complete a lease the way the device would: result bytes, their hash, a receipt."""
    digest, blob = result_of({"task": lease.task_id, "answer": answer})
    return sched.complete(lease.lease_id, device, digest, blob, b"receipt:" + digest, now)


def teach_speed(sched: Scheduler, device: str, units_per_s: float, now: float) -> float:
    """Give the device a measured speed on montecarlo_pi by completing one probe task."""
    [lease] = sched.lease(device, 1, HOUR, now).leases
    assert finish(sched, device, lease, now + lease.work_units / units_per_s).status == ACCEPTED
    return now + lease.work_units / units_per_s


def test_lease_complete_lifecycle_to_a_done_job_with_ordered_results(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    device = enrol_device(ledger)
    job = add_job(ledger, tasks=5, units=1000)
    now = teach_speed(sched, device, units_per_s=1000.0, now=1.0)  # 1 s per task from now on
    reply = sched.lease(device, 10, seconds=3.5, now=now)
    assert reply.reason == OK
    assert [lease.idx for lease in reply.leases] == [1, 2, 3]  # 3 x 1 s fits in 3.5 s, 4 does not
    assert len({lease.lease_id for lease in reply.leases}) == 3
    assert all(len(lease.lease_id) == 16 for lease in reply.leases)
    assert ledger.progress(job, now).state == "running"  # type: ignore[union-attr]
    for lease in reply.leases:
        now += 1.0
        assert finish(sched, device, lease, now, answer=lease.idx).status == ACCEPTED
    [last] = sched.lease(device, 10, seconds=HOUR, now=now).leases
    outcome = finish(sched, device, last, now + 1.0, answer=last.idx)
    assert (outcome.stage_completed, outcome.job_state) == (0, "done")
    progress = ledger.progress(job, now + 1.0)
    assert progress is not None and progress.percent == 100.0 and progress.eta_s == 0.0
    assert progress.counts == {"queued": 0, "leased": 0, "verifying": 0, "done": 5, "failed": 0,
                               "canceled": 0}
    results = ledger.job_results(job)
    assert [r.idx for r in results] == [0, 1, 2, 3, 4]
    assert [cbor.loads(r.result_cbor)["answer"] for r in results[1:]] == [1, 2, 3, 4]
    assert ledger.device_counters(device)["units_accepted"] == 5000
    assert sched.lease(device, 1, HOUR, now + 2.0).reason == NO_WORK
    assert ledger.check() == []


def test_progress_reports_an_eta_from_the_rate_so_far(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    device = enrol_device(ledger)
    job = add_job(ledger, tasks=4, units=1000)
    [lease] = sched.lease(device, 1, HOUR, now=100.0).leases
    finish(sched, device, lease, now=110.0)
    progress = ledger.progress(job, now=110.0)
    assert progress is not None
    assert progress.percent == 25.0 and progress.eta_s == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (None, NO_STATE),
        ({"decision": "pause", "code": "battery_hot"}, "battery_hot"),
        ({"decision": "stop", "code": "not_charging"}, "not_charging"),
        ({"decision": "run", "code": "ok", "online": False}, OFFLINE),
        ({"decision": "pause"}, "not_fit"),
        ({"decision": "pause", "code": "x" * 33}, "not_fit"),
        ({"decision": "pause", "code": "Hot\n<b>"}, "not_fit"),
        ([1, 2], BAD_STATE),
    ],
)
def test_an_unfit_device_gets_no_lease_and_the_reason(
    ledger: Ledger, state: object, reason: str
) -> None:
    sched = Scheduler(ledger)
    device = enrol_device(ledger, fit=False)
    add_job(ledger, tasks=3)
    if state is not None:
        fit = sched.report_state(device, cbor.dumps(state), now=1.0)
        assert fit is not None and not fit.fit and fit.reason == reason
    assert sched.lease(device, 3, HOUR, now=2.0) == LeaseReply((), reason)
    assert sched.report_state(device, RUN_STATE, now=3.0) is not None
    assert len(sched.lease(device, 3, HOUR, now=3.0).leases) == 1


def test_unknown_device_and_garbage_state_bytes(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    add_job(ledger, tasks=1)
    assert sched.lease("a" * 32, 1, HOUR, now=1.0).reason == UNKNOWN_DEVICE
    assert sched.report_state("a" * 32, RUN_STATE, now=1.0) is None
    device = enrol_device(ledger, fit=False)
    fit = sched.report_state(device, b"\xff\x00", now=1.0)
    assert fit is not None and fit.reason == BAD_STATE


def test_expired_leases_retry_until_max_attempts_then_the_job_fails(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    slow, other = enrol_device(ledger), enrol_device(ledger)
    job = add_job(ledger, tasks=3, max_attempts=2)
    [first] = sched.lease(slow, 1, HOUR, now=0.0).leases
    [bystander] = sched.lease(other, 1, HOUR, now=0.0).leases
    assert sched.expire(now=first.deadline) == []  # a deadline is inclusive
    expired = sched.expire(now=first.deadline + 1.0)
    assert sorted((e.task_id, e.task_state) for e in expired) == [
        (first.task_id, "queued"), (bystander.task_id, "queued")
    ]
    assert ledger.check() == []
    # The same task comes back first (lowest index), to a device that never held it (never to
    # `slow` again: see test_a_device_is_never_leased_the_same_task_twice), and expires again:
    # attempts are used up.
    [again] = sched.lease(other, 1, HOUR, now=first.deadline + 2.0).leases
    assert again.task_id == first.task_id and again.lease_id != first.lease_id
    [final] = sched.expire(now=again.deadline + 1.0)
    assert final.task_state == "failed"
    progress = ledger.progress(job, now=again.deadline + 1.0)
    assert progress is not None and progress.state == "failed"
    assert progress.counts == {"queued": 0, "leased": 0, "verifying": 0, "done": 0, "failed": 1,
                               "canceled": 2}
    assert sched.lease(other, 1, HOUR, now=again.deadline + 2.0).reason == NO_WORK
    # A late result for the failed task is refused (and that refusal is itself idempotent).
    outcome = finish(sched, other, again, now=again.deadline + 3.0)
    assert (outcome.status, outcome.code) == (REJECTED, LEASE_EXPIRED)
    repeat = finish(sched, other, again, now=again.deadline + 4.0)
    assert (repeat.status, repeat.code, repeat.duplicate) == (REJECTED, LEASE_EXPIRED, True)
    assert ledger.device_counters(slow)["n_expired"] == 1
    assert ledger.device_counters(other)["n_expired"] == 2
    assert ledger.check() == []


@pytest.mark.parametrize(("max_attempts", "expected"), [(3, ["queued"] * 5), (1, ["failed"])])
def test_expire_works_in_batches_and_skips_leases_a_failed_job_released(
    ledger: Ledger, max_attempts: int, expected: list[str]
) -> None:
    sched = Scheduler(ledger, SchedulerConfig(expire_batch=2))
    devices = [enrol_device(ledger) for _ in range(5)]
    add_job(ledger, tasks=5, max_attempts=max_attempts)
    leases = [sched.lease(device, 1, HOUR, now=0.0).leases[0] for device in devices]
    expired = sched.expire(now=leases[0].deadline + 1.0)
    assert [e.task_state for e in expired] == expected
    states = Counter(state for (state,) in ledger._conn.execute("SELECT state FROM leases"))
    assert states == ({"expired": 5} if max_attempts > 1 else {"expired": 1, "released": 4})
    assert ledger.check() == []


def test_a_duplicate_result_is_a_no_op_answered_with_the_original_outcome(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    device = enrol_device(ledger)
    job = add_job(ledger, tasks=2)
    [lease] = sched.lease(device, 1, HOUR, now=1.0).leases
    first = finish(sched, device, lease, now=2.0)
    assert (first.status, first.duplicate) == (ACCEPTED, False)
    counters = ledger.device_counters(device)
    again = finish(sched, device, lease, now=3.0)
    assert (again.status, again.code, again.duplicate, again.task_id) == (
        ACCEPTED, None, True, lease.task_id
    )
    conflicting = finish(sched, device, lease, now=4.0, answer=99)  # same lease, other bytes
    assert (conflicting.status, conflicting.duplicate) == (ACCEPTED, True)
    assert ledger.device_counters(device) == counters
    assert ledger.progress(job, 4.0).units_done == lease.work_units  # type: ignore[union-attr]
    [stored] = ledger.job_results(job)
    assert cbor.loads(stored.result_cbor)["answer"] == 0  # the first result stands
    kinds = [k for (k,) in ledger._conn.execute("SELECT kind FROM events")]
    assert kinds.count("conflicting_duplicate") == 1
    assert ledger.check() == []


def test_results_for_someone_elses_or_an_unknown_lease_are_rejected(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    owner, thief = enrol_device(ledger), enrol_device(ledger)
    job = add_job(ledger, tasks=1)
    [lease] = sched.lease(owner, 1, HOUR, now=1.0).leases
    stolen = finish(sched, thief, lease, now=2.0)
    assert (stolen.status, stolen.code, stolen.task_id) == (REJECTED, NOT_YOUR_LEASE, None)
    digest, blob = result_of({"x": 1})
    unknown = sched.complete(b"\x00" * 16, owner, digest, blob, b"r", now=2.0)
    assert (unknown.status, unknown.code) == (REJECTED, UNKNOWN_TASK)
    assert ledger.progress(job, 2.0).counts["leased"] == 1  # type: ignore[union-attr]
    assert finish(sched, owner, lease, now=3.0).status == ACCEPTED  # the owner is unaffected
    assert ledger.device_counters(thief)["n_rejected"] == 0  # nothing stored in its name
    assert ledger.check() == []


def test_a_result_whose_bytes_do_not_match_its_hash_is_refused_unstored(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    device = enrol_device(ledger)
    add_job(ledger, tasks=1)
    [lease] = sched.lease(device, 1, HOUR, now=1.0).leases
    digest, blob = result_of({"answer": 1})
    bad = sched.complete(lease.lease_id, device, digest, blob + b"\x00", b"r", now=2.0)
    assert (bad.status, bad.code) == (REJECTED, BAD_RESULT_HASH)
    assert sched.complete(lease.lease_id, device, digest, blob, b"r", 3.0).status == ACCEPTED


def test_late_result_is_accepted_and_the_re_leased_copy_becomes_a_replica(ledger: Ledger) -> None:
    """BOINC's choice: a result that arrives after its deadline still counts if nobody finished
    the task meanwhile. The device that got the task next is then told task_already_done, its
    result is stored as a replica and counted for nobody."""
    sched = Scheduler(ledger)
    late, fresh = enrol_device(ledger), enrol_device(ledger)
    job = add_job(ledger, tasks=1)
    [first] = sched.lease(late, 1, HOUR, now=0.0).leases
    sched.expire(now=first.deadline + 1.0)
    [second] = sched.lease(fresh, 1, HOUR, now=first.deadline + 2.0).leases
    assert second.task_id == first.task_id
    outcome = finish(sched, late, first, now=first.deadline + 3.0)
    assert (outcome.status, outcome.code, outcome.job_state) == (ACCEPTED, LATE, "done")
    replica = finish(sched, fresh, second, now=first.deadline + 4.0)
    assert (replica.status, replica.code) == (REPLICA, TASK_ALREADY_DONE)
    assert ledger.device_counters(late)["units_accepted"] == first.work_units
    assert ledger.device_counters(fresh)["units_accepted"] == 0
    assert ledger.device_counters(fresh)["n_replica"] == 1
    assert ledger.progress(job, 0.0).units_done == first.work_units  # type: ignore[union-attr]
    leases = dict(ledger._conn.execute("SELECT id, state FROM leases").fetchall())
    assert leases == {first.lease_id: "expired", second.lease_id: "released"}
    assert ledger.check() == []


def test_a_released_task_is_queued_again_without_using_an_attempt(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    device, other = enrol_device(ledger), enrol_device(ledger)
    add_job(ledger, tasks=1, max_attempts=1)
    [lease] = sched.lease(device, 1, HOUR, now=1.0).leases
    assert not sched.release(lease.lease_id, other, now=2.0)  # not its lease
    assert sched.release(lease.lease_id, device, now=2.0)
    assert not sched.release(lease.lease_id, device, now=2.0)  # already ended
    [again] = sched.lease(other, 1, HOUR, now=3.0).leases
    assert again.task_id == lease.task_id
    with ledger.transaction() as tx:
        assert tx.task(lease.task_id).attempts == 0
    assert ledger.check() == []


def test_canceling_a_job_releases_its_leases_and_refuses_its_late_results(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    device = enrol_device(ledger)
    job = add_job(ledger, tasks=3)
    [lease] = sched.lease(device, 1, HOUR, now=1.0).leases
    assert ledger.cancel_job(job, now=2.0)
    assert not ledger.cancel_job(job, now=2.0)
    outcome = finish(sched, device, lease, now=3.0)
    assert (outcome.status, outcome.code) == (REJECTED, TASK_CANCELED)
    assert ledger.progress(job, 3.0).counts["canceled"] == 3  # type: ignore[union-attr]
    assert sched.expire(now=lease.deadline + 1.0) == []  # nothing active is left to expire
    assert ledger.check() == []


def test_speed_is_measured_per_device_and_sizes_pulls_and_deadlines(ledger: Ledger) -> None:
    cfg = SchedulerConfig(
        safety_factor=2.0, slack_s=30.0, min_lease_s=10.0, max_lease_s=HOUR,
        unknown_speed_factor=1000.0,  # probes on time, so the speeds measured are exact
    )
    sched = Scheduler(ledger, cfg)
    fast, slow = enrol_device(ledger), enrol_device(ledger)
    add_job(ledger, tasks=100, units=10_000)
    # Unknown speed: one probe task, on the default speed with a wider safety margin.
    probe = sched.lease(fast, 10, HOUR, now=0.0).leases
    assert len(probe) == 1
    default = cfg.default_units_per_s["montecarlo_pi"]
    assert probe[0].deadline == pytest.approx(10_000 / default * 2.0 * 1000.0 + 30.0)
    assert finish(sched, fast, probe[0], now=1.0).status == ACCEPTED  # 10,000 units/s
    now = teach_speed(sched, slow, units_per_s=100.0, now=1.0)  # 100 s per task
    assert ledger.speeds(fast) == {"montecarlo_pi": pytest.approx(10_000.0)}
    fast_leases = sched.lease(fast, 32, seconds=10.0, now=now).leases
    assert len(fast_leases) == 10
    # 1 s each, run one after another: the k-th is due k x 1 s x 2 + 30 s from now.
    assert [lease.deadline - now for lease in fast_leases] == pytest.approx(
        [k * 2.0 + 30.0 for k in range(1, 11)]
    )
    slow_leases = sched.lease(slow, 32, seconds=250.0, now=now).leases
    assert [lease.deadline - now for lease in slow_leases] == pytest.approx([230.0, 430.0])
    assert sched.lease(slow, 1, seconds=50.0, now=now).reason == TOO_SLOW
    # The EWMA moves towards new samples: the next result in 50 s (twice as fast).
    finish(sched, slow, slow_leases[0], now=now + 50.0)
    assert ledger.speeds(slow)["montecarlo_pi"] == pytest.approx(0.7 * 100.0 + 0.3 * 200.0)
    # Back-to-back results: the second is timed from the first, not from the lease.
    finish(sched, slow, slow_leases[1], now=now + 100.0)
    assert ledger.speeds(slow)["montecarlo_pi"] == pytest.approx(0.7 * 130.0 + 0.3 * 200.0)
    assert ledger.check() == []


def test_a_device_slower_than_its_estimate_converges_to_on_time_results(ledger: Ledger) -> None:
    """500 times slower than the default guess: its late results each count as taking their
    lease's whole span, so the estimate falls and the deadlines grow until results are on time."""
    sched = Scheduler(ledger)
    device = enrol_device(ledger)
    add_job(ledger, tasks=20, units=10_000)
    now, spans, codes = 0.0, [], []
    for _ in range(5):
        [lease] = sched.lease(device, 1, 10 * HOUR, now).leases
        spans.append(lease.deadline - now)
        now += 10_000 / 100.0  # the device really does 100 units/s
        outcome = finish(sched, device, lease, now)
        codes.append(outcome.code)
        assert outcome.status == ACCEPTED
    assert spans == sorted(spans) and spans[0] < 100.0 < spans[-1]
    assert codes[0] == LATE and codes[-1] is None
    assert ledger.speeds(device)["montecarlo_pi"] > 100.0  # approaching from above


def test_deadlines_are_bounded(ledger: Ledger) -> None:
    cfg = SchedulerConfig(max_lease_s=150.0, min_lease_s=60.0)
    sched = Scheduler(ledger, cfg)
    device = enrol_device(ledger)
    add_job(ledger, tasks=1, units=1_000_000)  # 20 s at the default speed: 20 x 2 x 4 + 30
    add_job(ledger, tasks=1, units=10, weight=0.5)  # 0.2 ms: 30 s of slack, raised to 60
    [lease] = sched.lease(device, 1, 10 * HOUR, now=0.0).leases
    assert lease.deadline == 150.0
    [tiny] = sched.lease(device, 1, 10 * HOUR, now=0.0).leases
    assert tiny.work_units == 10 and tiny.deadline == 60.0


def test_a_device_holds_at_most_max_active_leases(ledger: Ledger) -> None:
    sched = Scheduler(ledger, SchedulerConfig(max_active_per_device=3, unknown_speed_max_tasks=5))
    device = enrol_device(ledger)
    add_job(ledger, tasks=10, units=10)
    assert len(sched.lease(device, 2, HOUR, now=0.0).leases) == 2
    assert len(sched.lease(device, 2, HOUR, now=0.0).leases) == 1
    assert sched.lease(device, 2, HOUR, now=0.0).reason == BUSY


def _share_of_leases(sched: Scheduler, devices: list[str], rounds: int, now: float) -> Counter[int]:
    """Lease and complete ``rounds`` x len(devices) single tasks; count tasks per job."""
    per_job: Counter[int] = Counter()
    for _ in range(rounds):
        for device in devices:
            for lease in sched.lease(device, 1, HOUR, now).leases:
                per_job[lease.job_id] += 1
                now += 1.0
                assert finish(sched, device, lease, now).status == ACCEPTED
    return per_job


def test_a_small_job_submitted_later_is_not_starved_by_a_big_one(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    devices = [enrol_device(ledger) for _ in range(5)]
    big = add_job(ledger, tasks=2000, units=100)
    assert _share_of_leases(sched, devices, rounds=40, now=0.0) == {big: 200}
    small = add_job(ledger, tasks=10, units=100, now=300.0)
    # The small job takes turns with the big one from now on: done within 20 leases, not 1,800.
    per_job = _share_of_leases(sched, devices, rounds=4, now=300.0)
    assert per_job == {big: 10, small: 10}
    assert ledger.progress(small, 400.0).state == "done"  # type: ignore[union-attr]
    assert ledger.progress(big, 400.0).counts["queued"] == 1790  # type: ignore[union-attr]


def test_weights_share_the_fleet_and_priority_goes_first(ledger: Ledger) -> None:
    sched = Scheduler(ledger)
    devices = [enrol_device(ledger) for _ in range(4)]
    light = add_job(ledger, tasks=500, units=100, weight=1.0)
    heavy = add_job(ledger, tasks=500, units=100, weight=3.0)
    per_job = _share_of_leases(sched, devices, rounds=25, now=0.0)
    assert per_job == {light: 25, heavy: 75}
    urgent = add_job(ledger, tasks=8, units=100, priority=1)
    assert _share_of_leases(sched, devices, rounds=2, now=200.0) == {urgent: 8}


def test_multi_stage_job_calls_the_hook_and_finishes_after_its_last_stage(ledger: Ledger) -> None:
    completed: list[tuple[int, int]] = []
    sched = Scheduler(ledger, on_stage_complete=lambda job, stage: completed.append((job, stage)))
    device = enrol_device(ledger)
    job = ledger.add_job("map-reduce", "montecarlo_pi", cbor.dumps({}), now=0.0, stages=2)
    ledger.add_tasks(job, 0, [NewTask(i, cbor.dumps({"i": i}), 10) for i in range(2)], now=0.0)
    now = 0.0
    for _ in range(2):
        [lease] = sched.lease(device, 1, HOUR, now).leases
        now += 1.0
        outcome = finish(sched, device, lease, now)
    assert (outcome.stage_completed, outcome.job_state) == (0, "running")
    assert completed == [(job, 0)]
    assert ledger.stage_done(job, 0) and ledger.pending_stages() == [(job, 0)]
    assert sched.lease(device, 1, HOUR, now).reason == NO_WORK  # stage 1 is not inserted yet
    ledger.add_tasks(job, 1, [NewTask(0, cbor.dumps({"sum": 2}), 10)], now=now)
    assert ledger.pending_stages() == []
    [reduce] = sched.lease(device, 1, HOUR, now).leases
    assert reduce.stage == 1
    outcome = finish(sched, device, reduce, now + 1.0)
    assert (outcome.stage_completed, outcome.job_state) == (1, "done")
    assert completed == [(job, 0)]  # the hook is for stages that have a next one
    assert [(r.stage, r.idx) for r in ledger.job_results(job)] == [(0, 0), (0, 1), (1, 0)]
    assert [r.idx for r in ledger.job_results(job, stage=0)] == [0, 1]


def test_two_connections_racing_never_lease_one_task_twice(tmp_path: Path) -> None:
    """Two workers, each with its own connection, start every round together at a barrier and
    race for the write lock. (Without the barrier SQLite's busy handler is not fair: one worker
    can hold the queue for a whole run, which docs/LEDGER.md notes.)"""
    path = tmp_path / "ledger.db"
    config = SchedulerConfig(unknown_speed_max_tasks=4)
    rounds = 120
    with Ledger.open(path, now=0.0) as setup:
        devices = [enrol_device(setup) for _ in range(40)]
        add_job(setup, tasks=300, units=10)
        add_job(setup, tasks=300, units=10)
    start = threading.Barrier(2)
    granted: list[list[Lease]] = [[], []]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        mine = devices[k::2]
        try:
            with Ledger.open(path, now=0.0) as own:  # one connection per worker
                sched = Scheduler(own, config)
                for n in range(rounds):
                    device = mine[n % len(mine)]
                    start.wait()
                    leases = sched.lease(device, 4, HOUR, now=1.0 + n).leases
                    granted[k].extend(leases)
                    for lease in leases:
                        assert finish(sched, device, lease, now=1.5 + n).status == ACCEPTED
        except BaseException as e:
            start.abort()  # do not leave the other worker waiting
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(len(g) > 100 for g in granted), [len(g) for g in granted]
    tasks = [lease.task_id for leases in granted for lease in leases]
    assert len(tasks) == len(set(tasks)) == 600  # every task exactly once, none twice
    with Ledger.open(path, now=200.0) as after:
        assert after.check() == []


def _bare_commits_per_s(path: Path, count: int = 2000) -> float:
    """The floor under every ledger write here: one-row transactions on a file with the
    ledger's pragmas (WAL, synchronous FULL), measured in the same run as the reference."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    t0 = time.perf_counter()
    for i in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return count / elapsed


@pytest.mark.slow
def test_measure_leasing_and_completing_20000_tasks_over_500_devices(tmp_path: Path) -> None:
    reference = _bare_commits_per_s(tmp_path / "reference.db")
    ledger = Ledger.open(tmp_path / "ledger.db", now=0.0)
    sched = Scheduler(ledger, SchedulerConfig(max_tasks_per_pull=8))
    devices = [enrol_device(ledger) for _ in range(500)]
    jobs = [add_job(ledger, tasks=5000, units=1000) for _ in range(4)]
    now = 0.0
    lease_s: list[float] = []
    complete_s: list[float] = []
    completed = 0
    while completed < 20_000:
        for device in devices:
            t0 = time.perf_counter()
            leases = sched.lease(device, 8, HOUR, now).leases
            lease_s.append(time.perf_counter() - t0)
            for lease in leases:
                now += 0.001
                t0 = time.perf_counter()
                outcome = finish(sched, device, lease, now)
                complete_s.append(time.perf_counter() - t0)
                assert outcome.status == ACCEPTED
                completed += 1
        now += 1.0
    report = {
        "tasks": completed,
        "devices": len(devices),
        "lease_calls": len(lease_s),
        "lease_calls_per_s": round(len(lease_s) / sum(lease_s)),
        "lease_median_ms": round(statistics.median(lease_s) * 1000, 3),
        "completes_per_s": round(len(complete_s) / sum(complete_s)),
        "complete_median_ms": round(statistics.median(complete_s) * 1000, 3),
        "tasks_per_s_end_to_end": round(completed / (sum(lease_s) + sum(complete_s))),
        "bare_commits_per_s": round(reference),
        "completes_to_bare_commits": round(len(complete_s) / sum(complete_s) / reference, 3),
    }
    print(json.dumps(report))
    assert all(ledger.progress(job, now).state == "done" for job in jobs)  # type: ignore[union-attr]
    assert ledger.check() == []
    assert report["completes_per_s"] > 100  # a floor far below what SQLite does; catches O(n^2)
    ledger.close()


# -- with a verifier: the trust layer's transitions (docs/TRUST.md) -----------------------------


def signed(fields: AckFields, seq: int) -> bytes:
    """Acks as plain CBOR of what they say (the service signs the same fields)."""
    return bytes(cbor.dumps({"status": fields.status, "code": fields.code, "seq": seq,
                             "dev": fields.device_id, "task": fields.task}))


def verifying(ledger: Ledger, **options: float) -> Scheduler:
    config = TrustConfig(**{"warmup": 2, "canary_rate": 0.0, **options})  # type: ignore[arg-type]
    verifier = Verifier.load(ledger.trust, config, VerifierConfig(replica_wait_s=60.0),
                             random.Random(3))
    return Scheduler(ledger, verifier=verifier, sign_ack=signed)


def truth(lease: Lease) -> dict[str, int]:
    return {"task": lease.task_id, "answer": 0}  # finish(..., answer=0) is right, others wrong


def acks(notices: tuple[Notice, ...]) -> list[tuple[str, str, str]]:
    return [(n.device_id, cbor.loads(n.ack)["status"], cbor.loads(n.ack)["code"])
            for n in notices]


def trust_of(sched: Scheduler, device: str) -> DeviceTrust:
    record = sched.ledger.trust.device(device)  # the ledger is the truth
    assert record is not None
    return record


def earn_trust(sched: Scheduler, device: str, now: float) -> None:
    """Results verified by the gateway's own runs until the device is trusted."""
    assert sched.verifier is not None
    while not trust_of(sched, device).trusted(sched.verifier.policy.config):
        [lease] = sched.lease(device, 1, HOUR, now).leases
        assert finish(sched, device, lease, now).status == PENDING
        sched.on_reference(lease.task_id, truth(lease), now)


def test_a_result_is_pending_until_the_gateways_own_run_then_accepted(ledger: Ledger) -> None:
    sched = verifying(ledger)
    device = enrol_device(ledger)
    job = add_job(ledger, tasks=1)
    [lease] = sched.lease(device, 1, HOUR, 1.0).leases
    outcome = finish(sched, device, lease, 2.0)
    assert (outcome.status, outcome.code, outcome.job_state) == (PENDING, "verifying", None)
    assert cbor.loads(outcome.ack or b"")["status"] == "pending"
    assert ledger.progress(job, 2.0).counts["verifying"] == 1  # type: ignore[union-attr]
    assert ledger.job_results(job) == [] and ledger.check() == []
    assert [t.id for t in sched.spots_owed()] == [lease.task_id]
    assert acks(sched.on_reference(lease.task_id, truth(lease), 3.0)) == [
        (device, "accepted", "ok")]
    assert ledger.progress(job, 3.0).state == "done"  # type: ignore[union-attr]
    assert [r.task_id for r in ledger.job_results(job)] == [lease.task_id]
    assert sched.spots_owed() == [] and ledger.check() == []
    again = finish(sched, device, lease, 4.0)  # a repeat: the latest ack, nothing changes
    assert again.duplicate and cbor.loads(again.ack or b"")["status"] == "accepted"


def test_wrong_answers_are_replaced_by_the_gateways_and_quarantine_the_device(
    ledger: Ledger,
) -> None:
    sched = verifying(ledger)
    cheat = enrol_device(ledger)
    teach_speed_free = Scheduler(ledger)  # give the cheater a speed, so a pull holds 3 leases
    job = add_job(ledger, tasks=5)
    [probe] = teach_speed_free.lease(cheat, 1, HOUR, 1.0).leases
    assert finish(teach_speed_free, cheat, probe, 2.0).status == ACCEPTED
    first, second, third = sched.lease(cheat, 3, HOUR, 3.0).leases
    assert finish(sched, cheat, first, 4.0, answer=1).status == PENDING
    assert acks(sched.on_reference(first.task_id, truth(first), 5.0)) == [
        (cheat, "rejected", "invalid")]
    [output] = [r for r in ledger.job_results(job) if r.task_id == first.task_id]
    assert cbor.loads(output.result_cbor) == truth(first)  # the gateway's result, not the lie
    assert finish(sched, cheat, second, 6.0, answer=1).status == PENDING
    assert acks(sched.on_reference(second.task_id, truth(second), 7.0)) == [
        (cheat, "rejected", "invalid")]
    assert sched.lease(cheat, 1, HOUR, 8.0).reason == "quarantined"
    assert ledger.progress(job, 8.0).counts["queued"] == 2  # type: ignore[union-attr]
    late = finish(sched, cheat, third, 9.0)  # its lease was taken back at the quarantine
    assert (late.status, late.code) == (REJECTED, "quarantined")
    assert ledger.device_counters(cheat)["units_accepted"] == probe.work_units
    assert ledger.check() == []


def test_a_replica_of_a_new_devices_task_goes_to_a_trusted_device_and_settles_both(
    ledger: Ledger,
) -> None:
    sched = verifying(ledger)
    veteran, newcomer = enrol_device(ledger), enrol_device(ledger)
    job = add_job(ledger, tasks=6)
    earn_trust(sched, veteran, 1.0)
    [lease] = sched.lease(newcomer, 1, HOUR, 2.0).leases
    assert finish(sched, newcomer, lease, 3.0).status == PENDING
    assert sched.lease(newcomer, 1, HOUR, 3.0).leases[0].task_id != lease.task_id  # not twice
    replica = sched.lease(veteran, 1, HOUR, 4.0).leases[0]
    assert (replica.task_id, replica.wire_id) == (lease.task_id, lease.wire_id)
    assert ledger.check() == []  # a verifying task holding a replica lease is consistent
    outcome = finish(sched, veteran, replica, 5.0)
    assert (outcome.status, acks(outcome.notices)) == (ACCEPTED, [
        (newcomer, "accepted", "ok")])
    assert ledger.progress(job, 5.0).counts["done"] == 3  # type: ignore[union-attr]
    assert ledger.check() == []


def test_an_untaken_or_expired_replica_goes_to_the_gateways_own_run(ledger: Ledger) -> None:
    sched = verifying(ledger)
    veteran, newcomer = enrol_device(ledger), enrol_device(ledger)
    add_job(ledger, tasks=4)
    earn_trust(sched, veteran, 1.0)
    [lease] = sched.lease(newcomer, 1, HOUR, 2.0).leases
    assert finish(sched, newcomer, lease, 3.0).status == PENDING
    replica = sched.lease(veteran, 1, HOUR, 4.0).leases[0]
    assert replica.task_id == lease.task_id
    expired = sched.expire(replica.deadline + 1.0)
    assert [(e.task_id, e.task_state) for e in expired] == [(lease.task_id, "verifying")]
    assert sched.sweep_replicas(replica.deadline + 2.0) == 0  # wanted again, not yet stale
    assert sched.sweep_replicas(replica.deadline + 100.0) == 1
    assert [t.id for t in sched.spots_owed()] == [lease.task_id]
    assert acks(sched.on_reference(lease.task_id, truth(lease), replica.deadline + 101.0)) == [
        (newcomer, "accepted", "ok")]
    assert ledger.check() == []


def test_canaries_lease_from_the_pool_look_real_and_are_judged_at_once(ledger: Ledger) -> None:
    sched = verifying(ledger, canary_rate=0.999)
    verifier = sched.verifier
    assert verifier is not None
    device = enrol_device(ledger)
    job = add_job(ledger, tasks=3)
    for _ in range(2):  # what the service's verify loop does, with the C kernel's answer
        wanted = verifier.next_canary(ledger.trust)
        assert wanted is not None and wanted[0].job_id == job
        verifier.add_canary(wanted[0], wanted[1], {"canary": 1})
    [canary] = sched.lease(device, 1, HOUR, 1.0).leases
    assert canary.job_id == 0 and canary.kernel == "montecarlo_pi"
    assert cbor.loads(canary.params_cbor).keys() == {"seed", "points"}
    digest, blob = result_of({"canary": 1})
    outcome = sched.complete(canary.lease_id, device, digest, blob, b"r", 2.0)
    assert (outcome.status, outcome.code) == (ACCEPTED, "ok")  # no wait: the answer was known
    [given_back] = sched.lease(device, 1, HOUR, 3.0).leases
    assert given_back.job_id == 0
    assert [e.task_state for e in sched.expire(given_back.deadline + 1.0)] == ["canceled"]
    late = sched.complete(given_back.lease_id, device, *result_of({"canary": 2}), b"r",
                          given_back.deadline + 2.0)
    assert (late.status, late.code) == (REJECTED, "invalid")  # judged like any late result
    hidden = ledger.progress(0, 9.0)
    assert hidden is not None and hidden.state == "running"  # the canary job never ends
    assert hidden.counts["done"] == 1 and hidden.counts["canceled"] == 1
    assert ledger.check() == []


def test_a_caught_device_has_its_trusted_results_rechecked_before_assembly(
    ledger: Ledger,
) -> None:
    sched = verifying(ledger)
    assert sched.verifier is not None
    cheat = enrol_device(ledger)
    job = add_job(ledger, tasks=400)
    earn_trust(sched, cheat, 1.0)
    with ledger.transaction():  # a long clean record: checked at the floor rate only
        ledger._conn.execute("UPDATE devices SET streak = 100000, valid = 100000 WHERE id = ?",
                             (cheat,))
    on_trust: list[Lease] = []
    while True:  # wrong every time: accepted unchecked until the floor-rate check comes
        [lease] = sched.lease(cheat, 1, HOUR, 2.0).leases
        outcome = finish(sched, cheat, lease, 2.0, answer=1)
        if outcome.status == PENDING:
            break
        assert outcome.status == ACCEPTED
        on_trust.append(lease)
    assert 1 <= len(on_trust) < 300  # expected 19 at the 5 % floor
    assert acks(sched.on_reference(lease.task_id, truth(lease), 3.0)) == [
        (cheat, "rejected", "invalid")]
    # The catch reopened everything it had accepted on trust: out of the output again.
    assert {t.id for t in ledger.trust.spots_owed(1000)} == {x.task_id for x in on_trust}
    assert ledger.progress(job, 3.0).counts["verifying"] == len(on_trust)  # type: ignore[union-attr]
    while owed := sched.spots_owed():
        for task in owed:
            sched.on_reference(task.id, truth(next(x for x in on_trust if x.task_id == task.id)),
                               4.0)
    assert trust_of(sched, cheat).quarantined
    outputs = {r.task_id: cbor.loads(r.result_cbor) for r in ledger.job_results(job)}
    assert [outputs[x.task_id] for x in on_trust] == [truth(x) for x in on_trust]
    assert ledger.device_counters(cheat)["n_accepted"] == TrustConfig(warmup=2).warmup
    assert ledger.check() == []


def test_a_device_is_never_leased_the_same_task_twice(ledger: Ledger) -> None:
    """A task whose lease expired goes to another device: a second lease to the same device,
    plus its first lease's late result, would credit it twice for one task."""
    sched = Scheduler(ledger)
    a, b = enrol_device(ledger), enrol_device(ledger)
    add_job(ledger, tasks=1, max_attempts=3)
    [first] = sched.lease(a, 1, HOUR, now=0.0).leases
    sched.expire(now=first.deadline + 1.0)
    again = sched.lease(a, 1, HOUR, now=first.deadline + 2.0)
    assert again.leases == () and again.reason == NO_WORK
    [other] = sched.lease(b, 1, HOUR, now=first.deadline + 3.0).leases
    assert other.task_id == first.task_id
    # a's late result still counts (BOINC's rule); b's is then a replica credited to nobody.
    assert finish(sched, a, first, now=first.deadline + 4.0).status == ACCEPTED
    assert finish(sched, b, other, now=first.deadline + 5.0).status != ACCEPTED
    assert ledger.device_counters(a)["n_accepted"] == 1
    assert ledger.device_counters(b)["n_accepted"] == 0
    assert ledger.check() == []
