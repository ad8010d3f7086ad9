"""The ledger's state transitions, run inside one write transaction (``Ledger.transaction()``).

Every method keeps the ledger's invariants by itself, so a caller (the scheduler's policy) cannot
leave a half-made change: a task is ``leased`` exactly when it has one ``active`` lease, and the
per-job and per-device counters always equal what the rows say (``Ledger.check`` verifies both).
Policy - who may lease what, for how long, which late results count - lives in the scheduler.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from edge_agent.core import cbor, protocol, rewards

TASK_COLUMNS = (
    "id, job_id, stage, idx, kernel, params_cbor, work_units, state, attempts, max_attempts, "
    "wire_id"
)
LEASE_COLUMNS = "id, task_id, job_id, device_id, work_units, issued_at, deadline, state"
RESULT_COLUMNS = "id, lease_id, task_id, device_id, result_hash, status, code, ack, verdict"

# Device counter per result status; the names are columns, never taken from input.
_RESULT_COUNTERS = {"accepted": "n_accepted", "replica": "n_replica", "rejected": "n_rejected"}
# Task state -> job counter column.
JOB_COUNTERS = {
    "queued": "n_queued",
    "leased": "n_leased",
    "verifying": "n_verifying",  # has a result awaiting verification (docs/TRUST.md)
    "done": "n_done",
    "failed": "n_failed",
    "canceled": "n_canceled",
}


# The hidden job that holds canary tasks (ledger_schema V2_TRUST): never picked by the queue,
# never done, never failed; a canary whose lease ends without a result is canceled.
CANARY_JOB = 0
# A verifying task whose check waits for a replica (and holds no active lease) wants one.
_REPLICA_WANTED = (
    "check_method = 'replica' AND check_state = 'open' AND spot_requested = 0 AND NOT EXISTS "
    "(SELECT 1 FROM leases AS l WHERE l.task_id = tasks.id AND l.state = 'active')"
)


class LedgerError(RuntimeError):
    """A transition the ledger's state does not allow (a bug in the caller, not bad input)."""


def receipt_id_of(receipt: bytes) -> bytes | None:
    """``protocol.receipt_id`` of a stored receipt (the sealed ``result`` envelope as received):
    what a device's claim lists for it. None when the bytes are not an envelope (a caller other
    than the wire handler: such a result can be acked, not claimed)."""
    try:
        envelope = cbor.loads(receipt)
    except ValueError:
        return None
    body = envelope.get("b") if isinstance(envelope, dict) else None
    return protocol.receipt_id(body) if isinstance(body, bytes) else None


def task_credit(kernel: str, work_units: int) -> int:
    """Micro-credits of an accepted task (``rewards.credit``); 0 for a kernel without a rate
    (none of the registry's: a test kernel)."""
    return rewards.credit(kernel, work_units) if kernel in rewards.RATES else 0


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    fit: bool
    fit_reason: str
    state_at: float | None
    last_result_at: float | None
    quarantined: bool = False


@dataclass(frozen=True, slots=True)
class TaskRow:
    id: int
    job_id: int
    stage: int
    idx: int
    kernel: str
    params_cbor: bytes
    work_units: int
    state: str
    attempts: int
    max_attempts: int
    wire_id: bytes  # the task's id on the wire: 16 random bytes (no job id, no order)


@dataclass(frozen=True, slots=True)
class LeaseRow:
    id: bytes
    task_id: int
    job_id: int
    device_id: str
    work_units: int
    issued_at: float
    deadline: float
    state: str


@dataclass(frozen=True, slots=True)
class ResultRow:
    id: int
    lease_id: bytes
    task_id: int
    device_id: str
    result_hash: bytes
    status: str
    code: str | None
    ack: bytes | None  # the signed ack sent for it: a repeat of the result gets these bytes
    verdict: str | None  # the trust layer's: pending/unverified/valid/invalid (None: not judged)


@dataclass(frozen=True, slots=True)
class TaskFinish:
    """What finishing a task did to its job."""

    job_id: int
    stage: int
    stage_complete: bool  # no task of the job is queued or leased any more
    job_state: str


class LedgerTx:
    """Reads and transitions on a connection that holds the write lock (BEGIN IMMEDIATE)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def conn(self) -> sqlite3.Connection:
        """For the other row modules of the same transaction (ledger_trust)."""
        return self._conn

    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        # fetchall, not fetchone: a statement left unfinished (UPDATE ... RETURNING) would keep
        # the transaction from committing.
        rows: list[tuple[Any, ...]] = self._conn.execute(sql, args).fetchall()
        return rows[0] if rows else None

    def _update_one(self, sql: str, args: tuple[object, ...]) -> None:
        if self._conn.execute(sql, args).rowcount != 1:
            raise LedgerError(f"expected to change one row: {sql.split()[1]} {args!r}")

    # Reads.

    def device(self, device_id: str) -> DeviceRow | None:
        row = self._one(
            "SELECT id, fit, fit_reason, state_at, last_result_at, quarantined FROM devices "
            "WHERE id = ?",
            (device_id,),
        )
        if row is None:
            return None
        id_, fit, reason, state_at, last_result_at, quarantined = row
        return DeviceRow(str(id_), bool(fit), str(reason), _opt_float(state_at),
                         _opt_float(last_result_at), bool(quarantined))

    def active_lease_count(self, device_id: str) -> int:
        row = self._one(
            "SELECT count(*) FROM leases WHERE device_id = ? AND state = 'active'", (device_id,)
        )
        return int(row[0]) if row else 0

    def speeds(self, device_id: str) -> dict[str, float]:
        rows = self._conn.execute(
            "SELECT kernel, units_per_s FROM device_speeds WHERE device_id = ?", (device_id,)
        )
        return {str(kernel): float(speed) for kernel, speed in rows}

    def next_job(self, exclude: Collection[int]) -> int | None:
        """The job whose turn it is: highest priority, then least virtual time (docs/LEDGER.md)."""
        skip = f"AND id NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        row = self._one(
            "SELECT id FROM jobs WHERE n_queued > 0 AND state IN ('queued', 'running') "
            f"{skip} ORDER BY priority DESC, vpass, id LIMIT 1",
            tuple(exclude),
        )
        return None if row is None else int(row[0])

    def next_task(self, job_id: int, device_id: str | None = None) -> TaskRow | None:
        """The job's first queued task; with ``device_id``, the first this device never held a
        lease on (a retried task goes to another device, so nobody is credited twice)."""
        if device_id is None:
            row = self._one(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? AND state = 'queued' "
                "ORDER BY stage, idx LIMIT 1",
                (job_id,),
            )
        else:
            row = self._one(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? AND state = 'queued' "
                "AND NOT EXISTS (SELECT 1 FROM leases AS l "
                "WHERE l.task_id = tasks.id AND l.device_id = ?) "
                "ORDER BY stage, idx LIMIT 1",
                (job_id, device_id),
            )
        return None if row is None else TaskRow(*row)

    def task(self, task_id: int) -> TaskRow:
        row = self._one(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            raise LedgerError(f"no task {task_id}")
        return TaskRow(*row)

    def lease(self, lease_id: bytes) -> LeaseRow | None:
        row = self._one(f"SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?", (lease_id,))
        return None if row is None else LeaseRow(*row)

    def overdue_leases(self, now: float, limit: int) -> list[LeaseRow]:
        rows = self._conn.execute(
            f"SELECT {LEASE_COLUMNS} FROM leases WHERE state = 'active' AND deadline < ? "
            "ORDER BY deadline LIMIT ?",
            (now, limit),
        )
        return [LeaseRow(*row) for row in rows]

    def result_for_lease(self, lease_id: bytes) -> ResultRow | None:
        row = self._one(f"SELECT {RESULT_COLUMNS} FROM results WHERE lease_id = ?", (lease_id,))
        return None if row is None else ResultRow(*row)

    def result(self, result_id: int) -> ResultRow:
        row = self._one(f"SELECT {RESULT_COLUMNS} FROM results WHERE id = ?", (result_id,))
        if row is None:
            raise LedgerError(f"no result {result_id}")
        return ResultRow(*row)

    def active_leases(self, *, task_id: int | None = None, device_id: str | None = None
                      ) -> list[LeaseRow]:
        """Active leases of a task or of a device."""
        column, value = ("task_id", task_id) if device_id is None else ("device_id", device_id)
        rows = self._conn.execute(
            f"SELECT {LEASE_COLUMNS} FROM leases WHERE {column} = ? AND state = 'active'",
            (value,),
        )
        return [LeaseRow(*row) for row in rows]

    # Transitions.

    def store_ack(self, result_id: int, device_id: str, build: Callable[[int], bytes], *,
                  renew: bool = False) -> bytes:
        """The ack of a stored result: made by ``build(seq)`` with the device's next ack number
        in the transaction that stored the result (or, for a result stored without one, in the
        first repeat's); then the same bytes for every repeat. ``renew``: the result's status
        changed (a verification resolved): a new ack with a higher seq replaces the old one."""
        row = self._one("SELECT ack, status FROM results WHERE id = ?", (result_id,))
        if row is None:
            raise LedgerError(f"no result {result_id}")
        if row[0] is not None and not renew:
            return bytes(row[0])
        seq = self._one(
            "UPDATE devices SET ack_seq = ack_seq + 1 WHERE id = ? RETURNING ack_seq, credit",
            (device_id,),
        )
        assert seq is not None  # a result's device exists (foreign key)
        # Recorded before the ack is signed: the signer reads the credit from this row
        # (ack_credit), so every signed ack says what the ledger holds for its seq.
        self._conn.execute(
            "INSERT INTO acks (device_id, seq, result_id, status, credit) VALUES (?, ?, ?, ?, ?)",
            (device_id, int(seq[0]), result_id, row[1], int(seq[1])),
        )
        ack = build(int(seq[0]))
        self._update_one("UPDATE results SET ack = ? WHERE id = ?", (ack, result_id))
        return ack

    def ack_credit(self, device_id: str, seq: int) -> int:
        """The cumulative credit recorded for a device's ack ``seq`` (by ``store_ack``)."""
        row = self._one("SELECT credit FROM acks WHERE device_id = ? AND seq = ?",
                        (device_id, seq))
        if row is None:
            raise LedgerError(f"no ack {seq} of device {device_id}")
        return int(row[0])

    def credit_result(self, result_id: int, device_id: str, task_id: int, work_units: int
                      ) -> None:
        """A result became accepted: it earns its task's credit once (a result credited before
        keeps what it earned), added to its device's cumulative credit, which never
        decreases: the acks sent already carry it."""
        kernel = self._one("SELECT kernel FROM tasks WHERE id = ?", (task_id,))
        assert kernel is not None  # a result's task exists (foreign key)
        credit = task_credit(str(kernel[0]), work_units)
        if self._conn.execute("UPDATE results SET credit = ? WHERE id = ? AND credit IS NULL",
                              (credit, result_id)).rowcount:
            self._update_one("UPDATE devices SET credit = credit + ? WHERE id = ?",
                             (credit, device_id))

    def set_result_status(self, result: ResultRow, work_units: int, status: str, code: str
                          ) -> None:
        """A result's ack status changed (a verification resolved): its device's counters
        follow. Credit is counted on ``accepted`` only, on the gateway's work units."""
        self._update_one("UPDATE results SET status = ?, code = ? WHERE id = ?",
                         (status, code, result.id))
        if status == result.status:
            return
        units = work_units if status == "accepted" else (
            -work_units if result.status == "accepted" else 0)
        changes = [f"{column} = {column} + {delta}" for column, delta in (
            (_RESULT_COUNTERS.get(result.status), -1), (_RESULT_COUNTERS.get(status), 1))
            if column is not None]
        changes.append("units_accepted = units_accepted + ?")
        self._update_one(f"UPDATE devices SET {', '.join(changes)} WHERE id = ?",
                         (units, result.device_id))
        if status == "accepted":
            self.credit_result(result.id, result.device_id, result.task_id, work_units)

    def complete_lease(self, lease_id: bytes, now: float) -> None:
        """The lease's result arrived (whatever its verdict will be)."""
        self._conn.execute(
            "UPDATE leases SET state = 'completed', ended_at = ? WHERE id = ? AND state = 'active'",
            (now, lease_id),
        )

    def move_task(self, task: TaskRow, state: str, now: float) -> None:
        """A task changes state outside leasing and finishing (a result went to verification,
        a refused result queued it again, a recheck reopened it): the job counters follow."""
        if state == task.state:
            return
        was, becomes = JOB_COUNTERS[task.state], JOB_COUNTERS[state]
        undone = task.state == "done"  # a recheck: its result is no longer the output
        self._update_one(
            "UPDATE tasks SET state = ?, result_id = CASE WHEN ? THEN NULL ELSE result_id END, "
            "result_hash = CASE WHEN ? THEN NULL ELSE result_hash END, "
            "finished_at = CASE WHEN ? THEN NULL ELSE finished_at END WHERE id = ? AND state = ?",
            (state, undone, undone, undone, task.id, task.state),
        )
        self._update_one(
            f"UPDATE jobs SET {was} = {was} - 1, {becomes} = {becomes} + 1, "
            "units_done = units_done - ? WHERE id = ?",
            (task.work_units if undone else 0, task.job_id),
        )

    def lease_replica(
        self, task: TaskRow, device_id: str, lease_id: bytes, now: float, deadline: float
    ) -> None:
        """A verifying task leased once more, to check a result (the task stays verifying)."""
        self._update_one(
            "UPDATE tasks SET replica_wanted = 0 WHERE id = ? AND state = 'verifying'",
            (task.id,),
        )
        self._conn.execute(
            f"INSERT INTO leases ({LEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'active')",
            (lease_id, task.id, task.job_id, device_id, task.work_units, now, deadline),
        )
        self._update_one("UPDATE devices SET n_leased = n_leased + 1 WHERE id = ?", (device_id,))

    def want_replica_if_waiting(self, task_id: int, now: float) -> None:
        """Mark a verifying task as wanting a replica lease when its check waits for one and
        nobody holds it (after a result, or a replica lease that ended without one)."""
        self._conn.execute(
            "UPDATE tasks SET replica_wanted = CASE WHEN " + _REPLICA_WANTED + " THEN 1 ELSE 0 "
            "END, verify_since = CASE WHEN replica_wanted = 0 AND " + _REPLICA_WANTED +
            " THEN ? ELSE verify_since END WHERE id = ? AND state = 'verifying'",
            (now, task_id),
        )

    def lease_task(
        self, task: TaskRow, device_id: str, lease_id: bytes, now: float, deadline: float
    ) -> None:
        """queued -> leased, with a new active lease; the job's virtual time advances."""
        self._update_one(
            "UPDATE tasks SET state = 'leased' WHERE id = ? AND state = 'queued'", (task.id,)
        )
        self._conn.execute(
            f"INSERT INTO leases ({LEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'active')",
            (lease_id, task.id, task.job_id, device_id, task.work_units, now, deadline),
        )
        self._update_one(
            "UPDATE jobs SET n_queued = n_queued - 1, n_leased = n_leased + 1, "
            "vpass = vpass + ? / weight, started_at = coalesce(started_at, ?), "
            "state = CASE state WHEN 'queued' THEN 'running' ELSE state END WHERE id = ?",
            (task.work_units, now, task.job_id),
        )
        self._update_one(
            "UPDATE devices SET n_leased = n_leased + 1 WHERE id = ?", (device_id,)
        )

    def insert_result(
        self,
        lease: LeaseRow,
        *,
        result_hash: bytes,
        result_cbor: bytes,
        receipt: bytes,
        now: float,
        status: str,
        code: str | None,
        worked: bool | None = None,
    ) -> int:
        """Store a result from the lease's own device and count it on the device. ``worked``
        (default: not rejected) moves the device's last result time, the start of its next
        task's measured time."""
        cursor = self._conn.execute(
            "INSERT INTO results (lease_id, task_id, device_id, result_hash, result_cbor, "
            "receipt, received_at, status, code, receipt_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (lease.id, lease.task_id, lease.device_id, result_hash, result_cbor, receipt, now,
             status, code, receipt_id_of(receipt)),
        )
        counter = _RESULT_COUNTERS.get(status)
        count = f"{counter} = {counter} + 1, " if counter else ""
        credited = lease.work_units if status == "accepted" else 0
        worked = status != "rejected" if worked is None else worked
        self._update_one(
            f"UPDATE devices SET {count}units_accepted = units_accepted + ?, "
            "last_result_at = CASE WHEN ? THEN ? ELSE last_result_at END WHERE id = ?",
            (credited, worked, now, lease.device_id),
        )
        assert cursor.lastrowid is not None
        if status == "accepted":
            self.credit_result(cursor.lastrowid, lease.device_id, lease.task_id,
                               lease.work_units)
        return cursor.lastrowid

    def finish_task(
        self,
        task: TaskRow,
        lease_id: bytes | None,
        result_id: int | None,
        result_hash: bytes,
        now: float,
    ) -> TaskFinish:
        """queued|leased|verifying -> done with this result (``result_id`` None: the gateway's
        own result in reference_results). The submitting lease, if still active, is completed;
        any other active lease on the task is released (a result from it is still judged)."""
        if task.state not in ("queued", "leased", "verifying"):
            raise LedgerError(f"task {task.id} is {task.state}, cannot finish it")
        self._conn.execute(
            "UPDATE leases SET state = CASE id WHEN ? THEN 'completed' ELSE 'released' END, "
            "ended_at = ? WHERE task_id = ? AND state = 'active'",
            (lease_id, now, task.id),
        )
        self._update_one(
            "UPDATE tasks SET state = 'done', result_id = ?, result_hash = ?, finished_at = ?, "
            "replica_wanted = 0 WHERE id = ?",
            (result_id, result_hash, now, task.id),
        )
        was = JOB_COUNTERS[task.state]
        row = self._one(
            f"UPDATE jobs SET {was} = {was} - 1, n_done = n_done + 1, "
            "units_done = units_done + ? WHERE id = ? "
            "RETURNING n_queued + n_leased + n_verifying = 0, stages, state",
            (task.work_units, task.job_id),
        )
        assert row is not None
        drained, stages, state = bool(row[0]), int(row[1]), str(row[2])
        last = task.stage + 1 >= stages and task.job_id != CANARY_JOB
        if drained and last and state in ("queued", "running"):
            self._update_one(
                "UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ?", (now, task.job_id)
            )
            state = "done"
        # The canary job has no stages to complete: it only ever holds canaries.
        return TaskFinish(task.job_id, task.stage, drained and task.job_id != CANARY_JOB, state)

    def end_lease(self, lease: LeaseRow, how: str, now: float) -> str:
        """End an active lease without a result: ``expired`` (counts an attempt; the task fails
        and its job with it after max_attempts) or ``released`` (the device gave it back, or was
        quarantined). A replica lease leaves its verifying task as it is; a canary's is
        canceled. Returns the task's new state."""
        if how not in ("expired", "released"):
            raise LedgerError(f"cannot end a lease as {how!r}")
        self._update_one(
            "UPDATE leases SET state = ?, ended_at = ? WHERE id = ? AND state = 'active'",
            (how, now, lease.id),
        )
        counter = "n_expired" if how == "expired" else "n_released"
        self._update_one(
            f"UPDATE devices SET {counter} = {counter} + 1 WHERE id = ?", (lease.device_id,)
        )
        task = self.task(lease.task_id)
        if task.state == "verifying":  # a replica lease: the check may want another one
            self.want_replica_if_waiting(task.id, now)
            return task.state
        if lease.job_id == CANARY_JOB:  # nobody needs a canary's result: no retry, no failure
            self.move_task(task, "canceled", now)
            return "canceled"
        row = self._one(
            "UPDATE tasks SET attempts = attempts + ?, state = CASE "
            "WHEN attempts + ? >= max_attempts THEN 'failed' ELSE 'queued' END "
            "WHERE id = ? AND state = 'leased' RETURNING state",
            (int(how == "expired"), int(how == "expired"), lease.task_id),
        )
        if row is None:
            raise LedgerError(f"task {lease.task_id} of active lease is not leased")
        task_state = str(row[0])
        now_counter = JOB_COUNTERS[task_state]
        self._update_one(
            f"UPDATE jobs SET n_leased = n_leased - 1, {now_counter} = {now_counter} + 1 "
            "WHERE id = ?",
            (lease.job_id,),
        )
        if task_state == "failed":
            self.stop_job(lease.job_id, "failed", now)
        return task_state

    def stop_job(self, job_id: int, state: str, now: float) -> None:
        """Job -> failed or canceled: its queued and leased tasks are canceled, their active
        leases released. Done tasks and their results stay."""
        if state not in ("failed", "canceled"):
            raise LedgerError(f"cannot stop a job as {state!r}")
        if job_id == CANARY_JOB:
            raise LedgerError("the canary job is never stopped")
        self._conn.execute(
            "UPDATE leases SET state = 'released', ended_at = ? WHERE state = 'active' AND "
            "task_id IN (SELECT id FROM tasks WHERE job_id = ? AND state IN ('leased', "
            "'verifying'))",
            (now, job_id),
        )
        self._conn.execute(
            "UPDATE tasks SET state = 'canceled', finished_at = ?, spot_requested = 0, "
            "replica_wanted = 0 WHERE job_id = ? AND state IN ('queued', 'leased', 'verifying')",
            (now, job_id),
        )
        self._update_one(
            "UPDATE jobs SET n_canceled = n_canceled + n_queued + n_leased + n_verifying, "
            "n_queued = 0, n_leased = 0, n_verifying = 0, state = ?, finished_at = ? WHERE id = ?",
            (state, now, job_id),
        )
        self.event("job_" + state, now, job_id=job_id)

    def update_speed(
        self, device_id: str, kernel: str, units_per_s: float, alpha: float, now: float
    ) -> None:
        """Exponentially weighted moving average of the device's measured speed on a kernel."""
        self._conn.execute(
            "INSERT INTO device_speeds (device_id, kernel, units_per_s, samples, updated_at) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT (device_id, kernel) DO UPDATE SET "
            "units_per_s = units_per_s * (1 - ?) + excluded.units_per_s * ?, "
            "samples = samples + 1, updated_at = excluded.updated_at",
            (device_id, kernel, units_per_s, now, alpha, alpha),
        )

    def event(
        self,
        kind: str,
        now: float,
        *,
        device_id: str | None = None,
        job_id: int | None = None,
        task_id: int | None = None,
        lease_id: bytes | None = None,
        detail: str = "",
    ) -> None:
        self._conn.execute(
            "INSERT INTO events (at, kind, device_id, job_id, task_id, lease_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now, kind, device_id, job_id, task_id, lease_id, detail),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
