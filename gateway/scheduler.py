"""Lease policy on top of the ledger: who may pull which tasks, for how long, which results count.

Pull-based: a fit device asks for up to ``n`` tasks and ``seconds`` of work; the scheduler picks
tasks fairly across jobs (stride scheduling on work units / weight, see docs/LEDGER.md), sized by
the device's measured speed, each with a deadline. Expired leases go back to the queue until a
task's attempts run out (AWS IoT Jobs-style retry limit). Every call is one ledger transaction and
takes ``now`` from the caller. SQL stays in the ledger modules.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.core import cbor
from gateway.ledger import Ledger
from gateway.ledger_tx import CANARY_JOB, DeviceRow, LeaseRow, LedgerTx, TaskFinish, TaskRow
from gateway.verifier import AckFields, AckSigner, Notice, Verifier

# Result statuses (the ack's status).
ACCEPTED = "accepted"  # counted: credit is paid on it
PENDING = "pending"  # stored, awaiting verification (docs/TRUST.md); a final ack follows
REJECTED = "rejected"
REPLICA = "replica"  # without a verifier: stored, not counted (another lease finished the task)

# Codes: docs/PROTOCOL.md's error codes where one exists.
OK = "ok"
UNKNOWN_DEVICE = "unknown_device"
UNKNOWN_TASK = "unknown_task"  # no such lease
NOT_YOUR_LEASE = "not_your_lease"
LEASE_EXPIRED = "lease_expired"  # late, and the task has failed meanwhile
TASK_ALREADY_DONE = "task_already_done"
TASK_CANCELED = "task_canceled"
BAD_RESULT_HASH = "bad_result_hash"  # result bytes do not hash to the receipt's hash
# Refusals that store nothing: a corrected retry of the same lease may still be accepted.
_NOT_STORED = (UNKNOWN_TASK, NOT_YOUR_LEASE, BAD_RESULT_HASH)
LATE = "late"  # accepted although its lease had expired (BOINC accepts late results too)
# Why a pull got nothing (besides unknown_device and the device's own unfitness reason).
NO_STATE = "no_state"
OFFLINE = "offline"
BAD_STATE = "bad_state"
NOT_FIT = "not_fit"
NO_WORK = "no_work"
TOO_SLOW = "too_slow"  # work exists, but no task fits in the seconds asked for
BUSY = "busy"  # the device already holds max_active_per_device leases
QUARANTINED = "quarantined"  # caught cheating (docs/TRUST.md): no more leases

# Conservative speeds (work units per second) for a device that has not returned a result of a
# kernel yet: the pure-Python twins on a Raspberry Pi 4 class core, roughly a fifth of the CPython
# speeds measured on this machine (REFERENCE.md). Slow guesses give short first pulls with long
# deadlines; the device's measured speed replaces them after its first result.
DEFAULT_UNITS_PER_S: Mapping[str, float] = {
    "montecarlo_pi": 50_000.0,  # points
    "gemm_i8": 5_000_000.0,  # multiply-accumulates
    "sha256_search": 100_000.0,  # hashes
}
# A reason copied from a device's document is stored and may be echoed: a short code or nothing.
_REASON_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class SchedulerConfig:
    safety_factor: float = 2.0  # deadline = estimate x this + slack
    unknown_speed_factor: float = 4.0  # extra factor while the speed is a default guess
    slack_s: float = 30.0  # network and queueing on top of compute time
    min_lease_s: float = 60.0
    max_lease_s: float = 6 * 3600.0
    max_tasks_per_pull: int = 32
    max_active_per_device: int = 64
    unknown_speed_max_tasks: int = 1  # per kernel and pull, until the device has a measured speed
    default_units_per_s: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_UNITS_PER_S)
    )
    fallback_units_per_s: float = 100_000.0  # a kernel missing from default_units_per_s
    speed_alpha: float = 0.3  # EWMA weight of the newest speed sample
    min_elapsed_s: float = 0.001
    expire_batch: int = 500  # leases expired per transaction, so the write lock stays short


@dataclass(frozen=True)
class Fitness:
    fit: bool
    reason: str


@dataclass(frozen=True)
class Lease:
    lease_id: bytes
    task_id: int
    job_id: int
    stage: int
    idx: int
    kernel: str
    params_cbor: bytes
    work_units: int
    issued_at: float
    deadline: float
    wire_id: bytes  # the task's id on the wire: random, the same for every lease of the task
    attempt: int = 0  # expired leases of the task before this one


@dataclass(frozen=True)
class LeaseReply:
    leases: tuple[Lease, ...]
    reason: str  # OK when leases were granted, else why none were


@dataclass(frozen=True)
class Outcome:
    status: str  # ACCEPTED, REPLICA or REJECTED
    code: str | None  # why rejected or replica; LATE for a late accepted result
    duplicate: bool = False  # this lease's result was already stored: the original outcome
    task_id: int | None = None  # None when the caller must not learn it (not its lease)
    job_id: int | None = None
    stage_completed: int | None = None  # this result finished the last open task of a stage
    job_state: str | None = None
    ack: bytes | None = None  # the signed ack stored with the result (Scheduler(sign_ack=...))
    notices: tuple[Notice, ...] = ()  # new acks for other results this one settled

    @property
    def stored(self) -> bool:
        """The result is in the ledger (now or from before): it is final and gets an ack."""
        return self.code not in _NOT_STORED


@dataclass(frozen=True)
class Expiry:
    lease_id: bytes
    task_id: int
    device_id: str
    # "queued" (will be retried), "failed" (attempts used up), "verifying" (a replica lease:
    # the check may want another), "canceled" (a canary's)
    task_state: str


def fitness(state_cbor: bytes) -> Fitness:
    """Fitness from a device's last ``state`` document (docs/PROTOCOL.md, SCHEMAS["state"]).

    Unfit: ``online`` false (the last will), or a governor ``decision`` other than "run"; the
    reason is then the document's ``code`` when it is a short code, else ``not_fit``. Age is not
    a criterion: the agent publishes its state on every change and the broker retains it, so an
    old document is still the current one, and a device only pulls while its governor says run.
    The gateway validated the document against the schema before storing it."""
    try:
        doc = cbor.loads(state_cbor)
    except ValueError:
        return Fitness(False, BAD_STATE)
    if not isinstance(doc, dict):
        return Fitness(False, BAD_STATE)
    if doc.get("online") is False:
        return Fitness(False, OFFLINE)
    if doc.get("decision") == "run":
        return Fitness(True, OK)
    code = doc.get("code")
    if isinstance(code, str) and code != OK and _REASON_CODE.fullmatch(code):
        return Fitness(False, code)
    return Fitness(False, NOT_FIT)


class _Pull:
    """The tasks planned for one pull: their estimated run times, one after another, must fit
    in ``seconds``; a kernel without a measured speed gets a limited number of probe tasks."""

    def __init__(self, scheduler: Scheduler, speeds: Mapping[str, float], seconds: float,
                 now: float) -> None:
        self.scheduler = scheduler
        self.speeds = speeds
        self.seconds = seconds
        self.now = now
        self.planned_s = 0.0
        self.guessed: dict[str, int] = {}  # tasks per kernel leased on a default speed

    def deadline(self, kernel: str, work_units: int) -> float | None:
        """Plan the task and return its deadline, or None when it does not fit."""
        speed, measured = self.scheduler.speed(self.speeds, kernel)
        estimate = work_units / speed
        probes = self.guessed.get(kernel, 0)
        if self.planned_s + estimate > self.seconds or (
            not measured and probes >= self.scheduler.config.unknown_speed_max_tasks
        ):
            return None
        if not measured:
            self.guessed[kernel] = probes + 1
        self.planned_s += estimate
        return self.scheduler.deadline(self.now, self.planned_s, measured)


class Scheduler:
    def __init__(
        self,
        ledger: Ledger,
        config: SchedulerConfig | None = None,
        on_stage_complete: Callable[[int, int], None] | None = None,
        *,
        on_job_done: Callable[[int], None] | None = None,
        verifier: Verifier | None = None,
        sign_ack: AckSigner | None = None,
    ) -> None:
        """``on_stage_complete(job_id, stage)`` runs after the commit of the result that
        completed a stage of a job with more stages (the jobs layer inserts the next stage);
        ``on_job_done(job_id)`` after the commit that finished a job (its output is assembled).
        A crash can fall between the two: ``Ledger.pending_stages()`` and
        ``jobs_without_output()`` list what is owed.

        ``verifier``: results are judged by the trust layer (docs/TRUST.md): pending while
        verified, replicas and canaries among the leases, quarantined devices refused. Without
        one every result of a live task is accepted as it comes (the work loop of docs/LEDGER.md).
        ``sign_ack(fields, seq)`` signs the ack of each stored result, in its transaction."""
        self.ledger = ledger
        self.config = config or SchedulerConfig()
        self.on_stage_complete = on_stage_complete
        self.on_job_done = on_job_done
        self.verifier = verifier
        self.sign_ack = sign_ack
        if verifier is not None:
            verifier.sign_ack = sign_ack

    def report_state(self, device_id: str, state_cbor: bytes, now: float) -> Fitness | None:
        """Store a state document; None when the device is unknown or the state is stale."""
        fit = fitness(state_cbor)
        stored = self.ledger.record_state(device_id, state_cbor, fit.fit, fit.reason, now)
        return fit if stored else None

    def speed(self, speeds: Mapping[str, float], kernel: str) -> tuple[float, bool]:
        """(units per second, measured?) of the device on a kernel."""
        if kernel in speeds:
            return speeds[kernel], True
        cfg = self.config
        return cfg.default_units_per_s.get(kernel, cfg.fallback_units_per_s), False

    def deadline(self, now: float, planned_s: float, measured: bool) -> float:
        cfg = self.config
        factor = cfg.safety_factor * (1.0 if measured else cfg.unknown_speed_factor)
        span = planned_s * factor + cfg.slack_s
        return now + min(max(span, cfg.min_lease_s), cfg.max_lease_s)

    def _refusal(self, tx: LedgerTx, device: DeviceRow) -> str | None:
        """Why this device gets nothing at all, or None."""
        if device.quarantined or (
                self.verifier is not None and not self.verifier.admit(tx, device.id)):
            return QUARANTINED
        return None if device.fit else device.fit_reason

    def lease(self, device_id: str, n: int, seconds: float, now: float,
              kernels: Collection[str] | None = None) -> LeaseReply:
        """Up to ``n`` tasks whose estimated run times, one after another, fit in ``seconds``.
        A task's deadline covers the estimated time of the tasks before it in the same reply.
        ``kernels``: the kernels the device runs (None: all); other jobs are skipped. With a
        verifier, each slot may instead be a replica of a task awaiting verification (for a
        trusted device) or a canary (drawn per slot); both look like any other lease."""
        cfg = self.config
        with self.ledger.transaction() as tx:
            device = tx.device(device_id)
            if device is None:
                return LeaseReply((), UNKNOWN_DEVICE)
            refusal = self._refusal(tx, device)
            if refusal is not None:
                return LeaseReply((), refusal)
            room = min(n, cfg.max_tasks_per_pull,
                       cfg.max_active_per_device - tx.active_lease_count(device_id))
            if room <= 0:
                return LeaseReply((), BUSY if n > 0 else NO_WORK)
            pull = _Pull(self, tx.speeds(device_id), seconds, now)
            skipped: set[int] = set()  # jobs whose next task does not fit
            unrunnable: set[int] = set()  # jobs with nothing this device may run
            tried: set[int] = set()  # replicas offered in this pull
            checked_slot = -1  # the slot a replica or canary was last considered for
            leases: list[Lease] = []
            while len(leases) < room:
                if self.verifier is not None and checked_slot < len(leases):
                    checked_slot = len(leases)
                    check = self._check_lease(tx, self.verifier, device_id, kernels=kernels,
                                              pull=pull, tried=tried)
                    if check is not None:
                        leases.append(check)
                        continue
                job_id = tx.next_job(skipped)
                if job_id is None:
                    break
                task = tx.next_task(job_id, device_id)
                if task is None:  # its queued tasks were all this device's before: not again
                    unrunnable.add(job_id)
                    skipped.add(job_id)
                    continue
                if kernels is not None and task.kernel not in kernels:
                    unrunnable.add(job_id)
                    skipped.add(job_id)
                    continue
                deadline = pull.deadline(task.kernel, task.work_units)
                if deadline is None:
                    skipped.add(job_id)
                    continue
                leases.append(self._grant(tx, task, device_id, now, deadline))
        if leases:
            return LeaseReply(tuple(leases), OK)
        return LeaseReply((), TOO_SLOW if skipped - unrunnable else NO_WORK)

    def _check_lease(self, tx: LedgerTx, verifier: Verifier, device_id: str, *,
                     kernels: Collection[str] | None, pull: _Pull, tried: set[int]
                     ) -> Lease | None:
        """A replica this device may take, else a canary when one is due, if it fits."""
        now = pull.now
        replica = verifier.replica_offer(tx, device_id, kernels, tried)
        if replica is not None:
            tried.add(replica.id)
            deadline = pull.deadline(replica.kernel, replica.work_units)
            if deadline is not None:
                verifier.count("replicas_leased")
                return self._grant(tx, replica, device_id, now, deadline, replica=True)
        canary = verifier.canary_offer(tx, device_id, kernels)
        if canary is not None:
            deadline = pull.deadline(canary.kernel, canary.work_units)
            if deadline is not None:
                task = verifier.place_canary(tx, canary, now)
                return self._grant(tx, task, device_id, now, deadline)
        return None

    @staticmethod
    def _grant(tx: LedgerTx, task: TaskRow, device_id: str, now: float, deadline: float,
               *, replica: bool = False) -> Lease:
        # Random, not a counter: a lease id names one lease for ever, across gateway workers and
        # after a restore from backup, so an old receipt can never match a newer lease.
        lease_id = secrets.token_bytes(16)
        if replica:
            tx.lease_replica(task, device_id, lease_id, now, deadline)
        else:
            tx.lease_task(task, device_id, lease_id, now, deadline)
        return Lease(lease_id, task.id, task.job_id, task.stage, task.idx, task.kernel,
                     task.params_cbor, task.work_units, now, deadline, task.wire_id,
                     task.attempts)

    def complete(  # noqa: PLR0917 - the wire's fields, in the receipt's order
        self,
        lease_id: bytes,
        device_id: str,
        result_hash: bytes,
        result_cbor: bytes,
        receipt: bytes,
        now: float,
        *,
        claimed_units: int | None = None,
    ) -> Outcome:
        """Record a result. A retry of a stored result changes nothing and answers the original
        outcome (``duplicate``) with its latest ack; see docs/LEDGER.md for late and redundant
        results, docs/TRUST.md for verification. ``claimed_units``: the receipt's work units
        (the verifier treats a claim other than the lease's as a lie; None: the lease's)."""
        with self.ledger.transaction() as tx:
            outcome = self._judge_result(tx, lease_id, device_id, result_hash, result_cbor,
                                         receipt, now, claimed_units)
        self._after(outcome.job_id, outcome.stage_completed, outcome.job_state)
        return outcome

    def _after(self, job_id: int | None, stage: int | None, job_state: str | None) -> None:
        """The hooks owed after a commit that finished a task."""
        if job_id is None:
            return
        if stage is not None and job_state == "running" and self.on_stage_complete:
            self.on_stage_complete(job_id, stage)
        if job_state == "done" and self.on_job_done:
            self.on_job_done(job_id)

    def _ack(self, tx: LedgerTx, result_id: int, lease: LeaseRow, *, wire_id: bytes,
             result_hash: bytes, status: str, code: str | None) -> bytes | None:
        sign = self.sign_ack
        if sign is None:
            return None
        fields = AckFields(lease.id, wire_id, lease.device_id, result_hash, status, code or OK,
                           lease.work_units)
        return tx.store_ack(result_id, lease.device_id, lambda seq: sign(fields, seq))

    def _judge_result(  # noqa: PLR0917
        self,
        tx: LedgerTx,
        lease_id: bytes,
        device_id: str,
        result_hash: bytes,
        result_cbor: bytes,
        receipt: bytes,
        now: float,
        claimed_units: int | None,
    ) -> Outcome:
        lease = tx.lease(lease_id)
        if lease is None:
            tx.event(UNKNOWN_TASK, now, device_id=device_id, lease_id=lease_id[:16])
            return Outcome(REJECTED, UNKNOWN_TASK)
        if lease.device_id != device_id:
            tx.event(NOT_YOUR_LEASE, now, device_id=device_id, lease_id=lease_id)
            return Outcome(REJECTED, NOT_YOUR_LEASE)
        task = tx.task(lease.task_id)
        prior = tx.result_for_lease(lease_id)
        if prior is not None:
            if prior.result_hash != result_hash:
                tx.event("conflicting_duplicate", now, device_id=device_id,
                         task_id=lease.task_id, lease_id=lease_id)
            ack = self._ack(tx, prior.id, lease, wire_id=task.wire_id,
                            result_hash=prior.result_hash, status=prior.status, code=prior.code)
            return Outcome(prior.status, prior.code, True, lease.task_id, lease.job_id, ack=ack)
        if hashlib.sha256(result_cbor).digest() != result_hash:
            # Not stored: a corrected retry of the same lease may still be accepted.
            tx.event(BAD_RESULT_HASH, now, device_id=device_id, lease_id=lease_id)
            return Outcome(REJECTED, BAD_RESULT_HASH, False, lease.task_id, lease.job_id)
        on_time = lease.state == "active" and now <= lease.deadline
        if self.verifier is None:
            status, code = _judge(task.state, on_time)
        else:
            refused = _refused(task)
            status, code = (PENDING, None) if refused is None else (REJECTED, refused)
        device = tx.device(device_id)
        assert device is not None  # the lease references it
        result_id = tx.insert_result(lease, result_hash=result_hash, result_cbor=result_cbor,
                                     receipt=receipt, now=now, status=status, code=code)
        if status != REJECTED:
            self._measure(tx, lease, device, task.kernel, now)
        finish: TaskFinish | None = None
        notices: tuple[Notice, ...] = ()
        if self.verifier is not None:
            tx.complete_lease(lease_id, now)  # whatever the verdict: its result is in
        if self.verifier is not None and status == PENDING:
            units = lease.work_units if claimed_units is None else claimed_units
            judged = self.verifier.judge(tx, lease, task, result_id, rhash=result_hash,
                                         claimed_units=units, now=now)
            status, code, notices, finish = judged.status, judged.code, judged.notices, (
                judged.finish)
        elif status == ACCEPTED:
            finish = tx.finish_task(task, lease_id, result_id, result_hash, now)
        ack = self._ack(tx, result_id, lease, wire_id=task.wire_id, result_hash=result_hash,
                        status=status, code=code)
        stage = finish.stage if finish is not None and finish.stage_complete else None
        return Outcome(status, code, False, task.id, task.job_id, stage,
                       None if finish is None else finish.job_state, ack, notices)

    def _measure(self, tx: LedgerTx, lease: LeaseRow, device: DeviceRow, kernel: str,
                 now: float) -> None:
        """Throughput, not latency: tasks pulled together run one after another, so a task's
        time starts when the device's previous result arrived, if later. A late result counts
        as taking the lease's whole span: a device that was offline for hours is not judged by
        that, while a device slower than its estimate still sees its estimate fall each round
        until its results come in on time."""
        started = max(lease.issued_at, device.last_result_at or lease.issued_at)
        elapsed = min(now - started, lease.deadline - lease.issued_at)
        elapsed = max(elapsed, self.config.min_elapsed_s)
        tx.update_speed(device.id, kernel, lease.work_units / elapsed, self.config.speed_alpha,
                        now)

    # -- verification: the gateway's own runs (the service drives them) ---------------------

    def spots_owed(self, skip: frozenset[int] = frozenset()) -> list[TaskRow]:
        """Tasks the gateway owes a run of (a bounded batch, oldest first)."""
        if self.verifier is None:
            return []
        return self.verifier.spots_owed(self.ledger.trust, skip)

    def on_reference(self, task_id: int, answer: dict[str, Any], now: float
                     ) -> tuple[Notice, ...]:
        """The gateway's own result of a task it owed a run: settle its verification. Returns
        the new acks for the devices whose results it decided."""
        if self.verifier is None:
            return ()
        with self.ledger.transaction() as tx:
            judged = self.verifier.on_reference(tx, task_id, answer, now)
        if judged is None:
            return ()
        finish = judged.finish
        if finish is not None:
            self._after(finish.job_id, finish.stage if finish.stage_complete else None,
                        finish.job_state)
        return judged.notices

    def sweep_replicas(self, now: float) -> int:
        """Replicas nobody took in time go to the gateway's own run; returns how many."""
        if self.verifier is None:
            return 0
        with self.ledger.transaction() as tx:
            return self.verifier.sweep(tx, now)

    def release(self, lease_id: bytes, device_id: str, now: float) -> bool:
        """The device gives a task back unfinished (its governor said stop): the task is
        queued again without counting an attempt. False if it was not this device's active
        lease."""
        with self.ledger.transaction() as tx:
            lease = tx.lease(lease_id)
            if lease is None or lease.device_id != device_id or lease.state != "active":
                return False
            tx.end_lease(lease, "released", now)
        return True

    def expire(self, now: float) -> list[Expiry]:
        """End every active lease past its deadline: its task is queued again with one more
        attempt, or fails (and its job with it) once max_attempts attempts have expired."""
        expired: list[Expiry] = []
        while True:
            with self.ledger.transaction() as tx:
                batch = tx.overdue_leases(now, self.config.expire_batch)
                for lease in batch:
                    current = tx.lease(lease.id)  # failing a job releases its other leases
                    if current is None or current.state != "active":
                        continue
                    task_state = tx.end_lease(lease, "expired", now)
                    if task_state == "failed":
                        tx.event("task_failed", now, device_id=lease.device_id,
                                 job_id=lease.job_id, task_id=lease.task_id)
                    expired.append(Expiry(lease.id, lease.task_id, lease.device_id, task_state))
            if len(batch) < self.config.expire_batch:
                return expired


def _refused(task: TaskRow) -> str | None:
    """With a verifier: a result no verification can use (the task failed, or its job was
    stopped; a canary given back is still judged, like any late result)."""
    if task.state == "failed":
        return LEASE_EXPIRED
    if task.state == "canceled" and task.job_id != CANARY_JOB:
        return TASK_CANCELED
    return None


def _judge(task_state: str, on_time: bool) -> tuple[str, str | None]:
    """Status and code of a result from the lease's own device, given its task's state."""
    if task_state == "done":
        return REPLICA, TASK_ALREADY_DONE
    if task_state == "canceled":
        return REJECTED, TASK_CANCELED
    if task_state == "failed":
        return REJECTED, LEASE_EXPIRED
    return ACCEPTED, None if on_time else LATE
