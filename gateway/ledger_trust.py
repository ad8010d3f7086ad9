"""The trust layer's rows (docs/TRUST.md, "state to persist"), read and written inside a ledger
write transaction: device records, each task's check and its results' verdicts, canary tasks
and the gateway's own results, and the queries the verifier runs (replicas wanted, spot runs
owed, results to recheck, canary templates). SQL only: the policy is gateway/trust.py, its use
gateway/verifier.py.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from gateway.ledger_tx import CANARY_JOB, RESULT_COLUMNS, TASK_COLUMNS, ResultRow, TaskRow
from gateway.trust import SETTLED, TRUSTED, DeviceTrust, Submission, TaskCheck

_DEVICE_COLUMNS = "id, coalesce(token_id, ''), valid, invalid, streak, strikes, quarantined"
_CHECK_COLUMNS = "check_method, check_state, reference, authoritative, spot_requested"
_OPEN_JOB = "j.id != 0 AND j.state IN ('queued', 'running')"


@dataclass(frozen=True)
class CanaryRow:
    """A canary ready to be leased: a real task's params (freshened), its known answer."""

    template_id: int  # the real task it was made from: never a canary for a device leased it
    job_id: int  # the template's job: the canary is dropped once that job is over
    kernel: str
    params_cbor: bytes
    work_units: int
    answer_hash: bytes
    answer_cbor: bytes


class TrustRows:
    """Trust state on a connection that holds the write lock (or for reads, any)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._conn.execute(sql, args).fetchall()
        return rows

    # Devices.

    def devices(self) -> list[DeviceTrust]:
        return [_device(row) for row in self._all(f"SELECT {_DEVICE_COLUMNS} FROM devices")]

    def device(self, device_id: str) -> DeviceTrust | None:
        rows = self._all(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = ?", (device_id,))
        return _device(rows[0]) if rows else None

    def save_device(self, record: DeviceTrust) -> None:
        self._conn.execute(
            "UPDATE devices SET valid = ?, invalid = ?, streak = ?, strikes = ?, quarantined = ? "
            "WHERE id = ?",
            (record.valid, record.invalid, record.streak, record.strikes,
             int(record.quarantined), record.device_id),
        )

    # Checks: columns of the task row; submissions are its results with a verdict.

    def check(self, task_id: int) -> TaskCheck | None:
        rows = self._all(f"SELECT {_CHECK_COLUMNS}, state, result_hash FROM tasks WHERE id = ?",
                         (task_id,))
        if not rows:
            return None
        method, state, reference, authoritative, spot, task_state, result_hash = rows[0]
        submissions = [Submission(str(d), bytes(h), str(v)) for d, h, v in self._all(
            "SELECT device_id, result_hash, verdict FROM results WHERE task_id = ? AND "
            "verdict IS NOT NULL ORDER BY id", (task_id,))]
        if method is None:
            if task_state != "done":
                return None
            # Done before the trust layer judged it (an older ledger): its result is the answer.
            return TaskCheck(task_id, TRUSTED, SETTLED, bytes(result_hash), False, False,
                             submissions)
        return TaskCheck(task_id, str(method), str(state), _opt_bytes(reference),
                         bool(authoritative), bool(spot), submissions)

    def save_check(self, check: TaskCheck, new_result: int | None) -> None:
        """The check's columns, and each submission's verdict (``new_result``: the row of a
        submission the policy has just added)."""
        self._conn.execute(
            "UPDATE tasks SET check_method = ?, check_state = ?, reference = ?, "
            "authoritative = ?, spot_requested = ? WHERE id = ?",
            (check.method, check.state, check.reference, int(check.authoritative),
             int(check.spot_requested), check.task_id),
        )
        if new_result is not None:
            self._conn.execute("UPDATE results SET verdict = 'pending' WHERE id = ?",
                               (new_result,))
        self._conn.executemany(
            "UPDATE results SET verdict = ? WHERE task_id = ? AND device_id = ? AND "
            "verdict IS NOT NULL",
            [(s.verdict, check.task_id, s.device_id) for s in check.submissions],
        )

    def submission(self, task_id: int, device_id: str) -> ResultRow | None:
        rows = self._all(f"SELECT {RESULT_COLUMNS} FROM results WHERE task_id = ? AND "
                         "device_id = ? AND verdict IS NOT NULL", (task_id, device_id))
        return ResultRow(*rows[0]) if rows else None

    def output_result(self, task_id: int, answer: bytes) -> int | None:
        """The task's output once settled: its first result with the right answer, else None
        (the gateway's own result, which must be stored then)."""
        rows = self._all(
            "SELECT id FROM results WHERE task_id = ? AND result_hash = ? AND verdict IN "
            "('valid', 'unverified') ORDER BY id LIMIT 1", (task_id, answer))
        if rows:
            return int(rows[0][0])
        if not self._all("SELECT 1 FROM reference_results WHERE task_id = ? AND "
                         "result_hash = ?", (task_id, answer)):
            raise LookupError(f"task {task_id} settled on an answer nobody stored")
        return None

    def store_reference(self, task_id: int, answer: bytes, answer_cbor: bytes,
                        now: float) -> None:
        """The gateway's own result of a task (its output when no device matched it)."""
        self._conn.execute(
            "INSERT INTO reference_results (task_id, result_hash, result_cbor, computed_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (task_id) DO UPDATE SET result_hash = "
            "excluded.result_hash, result_cbor = excluded.result_cbor, computed_at = "
            "excluded.computed_at",
            (task_id, answer, answer_cbor, now),
        )

    # Work the verifier owes or offers.

    def replicas_wanted(self, limit: int) -> list[TaskRow]:
        """Verifying tasks waiting for a replica lease, longest waiting first."""
        return [TaskRow(*row) for row in self._all(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE replica_wanted = 1 ORDER BY verify_since "
            "LIMIT ?", (limit,))]

    def replicas_waiting_since(self, before: float, limit: int) -> list[int]:
        return [int(task) for (task,) in self._all(
            "SELECT id FROM tasks WHERE replica_wanted = 1 AND verify_since < ? "
            "ORDER BY verify_since LIMIT ?", (before, limit))]

    def spots_owed(self, limit: int, skip: frozenset[int] = frozenset()) -> list[TaskRow]:
        """Tasks the gateway must run itself (spot checks, rechecks, disagreements)."""
        rows = [TaskRow(*row) for row in self._all(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE spot_requested = 1 AND "
            "check_state = 'open' AND state = 'verifying' ORDER BY id LIMIT ?",
            (limit + len(skip),))]
        return [t for t in rows if t.id not in skip][:limit]

    def recheck_candidates(self, device_id: str) -> list[int]:
        """Tasks this device answered that were accepted without the gateway's own run (on
        trust or by a quorum) and can still be recalled: done, in the latest stage of an open
        job (an earlier stage's results have been used to make the next one already)."""
        return [int(task) for (task,) in self._all(
            "SELECT DISTINCT t.id FROM results AS r JOIN tasks AS t ON t.id = r.task_id "
            "JOIN jobs AS j ON j.id = t.job_id WHERE r.device_id = ? AND r.verdict IN "
            f"('unverified', 'valid') AND t.state = 'done' AND t.authoritative = 0 AND {_OPEN_JOB} "
            "AND t.stage = (SELECT max(stage) FROM tasks WHERE job_id = j.id)", (device_id,))]

    def results_with_status(self, device_id: str, status: str) -> list[ResultRow]:
        return [ResultRow(*row) for row in self._all(
            f"SELECT {RESULT_COLUMNS} FROM results WHERE device_id = ? AND status = ?",
            (device_id, status))]

    def work_units(self, result: ResultRow) -> int:
        """The gateway's count of the work behind a result (its lease's units)."""
        rows = self._all("SELECT work_units FROM leases WHERE id = ?", (result.lease_id,))
        return int(rows[0][0])

    def wire_id(self, task_id: int) -> bytes:
        return bytes(self._all("SELECT wire_id FROM tasks WHERE id = ?", (task_id,))[0][0])

    # Canaries.

    def canary_template(self, rng: random.Random) -> TaskRow | None:
        """A random task of the latest stage of a random open job (what a canary copies)."""
        jobs = self._all(
            "SELECT j.id, max(t.stage), count(*) FROM jobs AS j JOIN tasks AS t ON t.job_id = "
            f"j.id WHERE {_OPEN_JOB} GROUP BY j.id")
        if not jobs:
            return None
        job_id, stage, _ = rng.choice(jobs)
        count = self._all("SELECT count(*) FROM tasks WHERE job_id = ? AND stage = ?",
                          (job_id, stage))[0][0]
        rows = self._all(f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? AND stage = ? "
                         "ORDER BY idx LIMIT 1 OFFSET ?", (job_id, stage, rng.randrange(count)))
        return TaskRow(*rows[0]) if rows else None

    def job_open(self, job_id: int) -> bool:
        return bool(self._all(f"SELECT 1 FROM jobs AS j WHERE j.id = ? AND {_OPEN_JOB}",
                              (job_id,)))

    def canary_fits(self, canary: CanaryRow, device_id: str) -> bool:
        """Its template's job is still open and this device was never leased the template."""
        return bool(self._all(
            f"SELECT 1 FROM jobs AS j WHERE j.id = ? AND {_OPEN_JOB} AND NOT EXISTS (SELECT 1 "
            "FROM leases WHERE task_id = ? AND device_id = ?)",
            (canary.job_id, canary.template_id, device_id)))

    def insert_canary(self, canary: CanaryRow, now: float) -> TaskRow:
        """A queued task of the hidden canary job with its known answer (the caller leases it
        in the same transaction, so the queue never sees it)."""
        cursor = self._conn.execute(
            "INSERT INTO tasks (job_id, stage, idx, kernel, params_cbor, work_units, "
            "max_attempts, created_at, wire_id, check_method, check_state, reference, "
            "authoritative, template_id) VALUES (?, 0, (SELECT coalesce(max(idx), -1) + 1 FROM "
            "tasks WHERE job_id = ? AND stage = 0), ?, ?, ?, 1, ?, ?, 'canary', 'open', ?, 1, ?)",
            (CANARY_JOB, CANARY_JOB, canary.kernel, canary.params_cbor, canary.work_units, now,
             secrets.token_bytes(16), canary.answer_hash, canary.template_id),
        )
        task_id = cursor.lastrowid
        assert task_id is not None
        self._conn.execute(
            "UPDATE jobs SET n_queued = n_queued + 1, units_total = units_total + ? WHERE id = ?",
            (canary.work_units, CANARY_JOB))
        self.store_reference(task_id, canary.answer_hash, canary.answer_cbor, now)
        rows = self._all(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
        return TaskRow(*rows[0])


def _device(row: tuple[Any, ...]) -> DeviceTrust:
    device_id, token_id, valid, invalid, streak, strikes, quarantined = row
    return DeviceTrust(str(device_id), str(token_id), int(valid), int(invalid), int(streak),
                       int(strikes), bool(quarantined))


def _opt_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
