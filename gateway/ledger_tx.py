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

TASK_COLUMNS = (
    "id, job_id, stage, idx, kernel, params_cbor, work_units, state, attempts, max_attempts"
)
LEASE_COLUMNS = "id, task_id, job_id, device_id, work_units, issued_at, deadline, state"

# Device counter per result status; the names are columns, never taken from input.
_RESULT_COUNTERS = {"accepted": "n_accepted", "replica": "n_replica", "rejected": "n_rejected"}
# Task state -> job counter column.
JOB_COUNTERS = {
    "queued": "n_queued",
    "leased": "n_leased",
    "done": "n_done",
    "failed": "n_failed",
    "canceled": "n_canceled",
}


class LedgerError(RuntimeError):
    """A transition the ledger's state does not allow (a bug in the caller, not bad input)."""


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    fit: bool
    fit_reason: str
    state_at: float | None
    last_result_at: float | None


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
            "SELECT id, fit, fit_reason, state_at, last_result_at FROM devices WHERE id = ?",
            (device_id,),
        )
        if row is None:
            return None
        id_, fit, reason, state_at, last_result_at = row
        return DeviceRow(str(id_), bool(fit), str(reason), _opt_float(state_at),
                         _opt_float(last_result_at))

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

    def next_task(self, job_id: int) -> TaskRow | None:
        row = self._one(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? AND state = 'queued' "
            "ORDER BY stage, idx LIMIT 1",
            (job_id,),
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
        row = self._one(
            "SELECT id, lease_id, task_id, device_id, result_hash, status, code, ack "
            "FROM results WHERE lease_id = ?",
            (lease_id,),
        )
        return None if row is None else ResultRow(*row)

    # Transitions.

    def store_ack(self, lease_id: bytes, device_id: str, build: Callable[[int], bytes]) -> bytes:
        """The ack of the result stored for ``lease_id``: made once by ``build(seq)``, with the
        device's next ack number, in the transaction that stored the result (or, for a result
        stored without one, in the first repeat's), then the same bytes for every repeat."""
        row = self._one("SELECT ack FROM results WHERE lease_id = ?", (lease_id,))
        if row is None:
            raise LedgerError(f"no result for lease {lease_id.hex()}")
        if row[0] is not None:
            return bytes(row[0])
        seq = self._one(
            "UPDATE devices SET ack_seq = ack_seq + 1 WHERE id = ? RETURNING ack_seq", (device_id,)
        )
        assert seq is not None  # a result's device exists (foreign key)
        ack = build(int(seq[0]))
        self._update_one("UPDATE results SET ack = ? WHERE lease_id = ?", (ack, lease_id))
        return ack

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
    ) -> int:
        """Store a result from the lease's own device and count it on the device."""
        cursor = self._conn.execute(
            "INSERT INTO results (lease_id, task_id, device_id, result_hash, result_cbor, "
            "receipt, received_at, status, code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (lease.id, lease.task_id, lease.device_id, result_hash, result_cbor, receipt, now,
             status, code),
        )
        counter = _RESULT_COUNTERS[status]
        credited = lease.work_units if status == "accepted" else 0
        worked = status != "rejected"
        self._update_one(
            f"UPDATE devices SET {counter} = {counter} + 1, units_accepted = units_accepted + ?, "
            "last_result_at = CASE WHEN ? THEN ? ELSE last_result_at END WHERE id = ?",
            (credited, worked, now, lease.device_id),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish_task(
        self, task: TaskRow, lease_id: bytes, result_id: int, result_hash: bytes, now: float
    ) -> TaskFinish:
        """queued|leased -> done with this result. The submitting lease, if still active, is
        completed; any other active lease on the task is released (its result becomes a replica)."""
        if task.state not in ("queued", "leased"):
            raise LedgerError(f"task {task.id} is {task.state}, cannot finish it")
        self._conn.execute(
            "UPDATE leases SET state = CASE id WHEN ? THEN 'completed' ELSE 'released' END, "
            "ended_at = ? WHERE task_id = ? AND state = 'active'",
            (lease_id, now, task.id),
        )
        self._update_one(
            "UPDATE tasks SET state = 'done', result_id = ?, result_hash = ?, finished_at = ? "
            "WHERE id = ?",
            (result_id, result_hash, now, task.id),
        )
        was = JOB_COUNTERS[task.state]
        row = self._one(
            f"UPDATE jobs SET {was} = {was} - 1, n_done = n_done + 1, "
            "units_done = units_done + ? WHERE id = ? "
            "RETURNING n_queued + n_leased = 0, stages, state",
            (task.work_units, task.job_id),
        )
        assert row is not None
        drained, stages, state = bool(row[0]), int(row[1]), str(row[2])
        if drained and task.stage + 1 >= stages and state in ("queued", "running"):
            self._update_one(
                "UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ?", (now, task.job_id)
            )
            state = "done"
        return TaskFinish(task.job_id, task.stage, drained, state)

    def end_lease(self, lease: LeaseRow, how: str, now: float) -> str:
        """End an active lease without a result: ``expired`` (counts an attempt; the task fails
        and its job with it after max_attempts) or ``released`` (the device gave it back).
        Returns the task's new state."""
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
        self._conn.execute(
            "UPDATE leases SET state = 'released', ended_at = ? WHERE state = 'active' AND "
            "task_id IN (SELECT id FROM tasks WHERE job_id = ? AND state = 'leased')",
            (now, job_id),
        )
        self._conn.execute(
            "UPDATE tasks SET state = 'canceled', finished_at = ? "
            "WHERE job_id = ? AND state IN ('queued', 'leased')",
            (now, job_id),
        )
        self._update_one(
            "UPDATE jobs SET n_canceled = n_canceled + n_queued + n_leased, n_queued = 0, "
            "n_leased = 0, state = ?, finished_at = ? WHERE id = ?",
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
