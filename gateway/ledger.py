"""The gateway's ledger: devices, enrolment tokens, jobs, tasks, leases and results in SQLite.

This module and its two helpers (``ledger_schema``: tables and migrations; ``ledger_tx``: the
state transitions) are the only code that writes SQL. The file runs in WAL mode with foreign keys
on and a busy timeout, so several gateway workers (processes behind MQTT shared subscriptions) can
share it: every state change is one ``BEGIN IMMEDIATE`` transaction, which takes the write lock
before it reads what it will change. Time is always passed in. docs/LEDGER.md is the reference.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.core import cbor
from gateway.ledger_check import problems
from gateway.ledger_rewards import RewardsRows
from gateway.ledger_schema import MIGRATIONS, Migration, migrate
from gateway.ledger_trust import TrustRows
from gateway.ledger_tx import (
    CANARY_JOB,
    JOB_COUNTERS,
    DeviceRow,
    LeaseRow,
    LedgerError,
    LedgerTx,
    TaskRow,
)

__all__ = ["Enrolment", "JobInfo", "JobProgress", "Ledger", "LedgerError", "NewTask", "TaskResult"]

# FULL: a result is acked only after its commit reached the disk, so a power cut cannot take back
# an ack the device already acted on (it deletes its receipt then). NORMAL is safe against a
# crashed process but not a power cut; use it only where that is acceptable.
SYNCHRONOUS_MODES = ("FULL", "NORMAL")
ENROL_OK = "ok"
ENROL_BAD_TOKEN = "bad_token"
_JOB_OPEN = ("queued", "running")
_USER_JOB = f"id != {CANARY_JOB}"  # every job but the hidden one that holds canaries


@dataclass(frozen=True, slots=True)
class NewTask:
    idx: int
    params_cbor: bytes  # canonical CBOR, stored and sent byte for byte
    work_units: int
    kernel: str | None = None  # None: the job's kernel


@dataclass(frozen=True, slots=True)
class Enrolment:
    code: str  # ENROL_OK or ENROL_BAD_TOKEN
    device_id: str | None


@dataclass(frozen=True, slots=True)
class JobInfo:
    id: int
    name: str
    kernel: str
    spec_cbor: bytes
    state: str
    priority: int
    weight: float
    stages: int
    max_attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class JobProgress:
    job_id: int
    state: str
    counts: dict[str, int]  # per task state
    units_total: int
    units_done: int
    percent: float
    eta_s: float | None  # None until some work is done


@dataclass(frozen=True, slots=True)
class TaskResult:
    stage: int
    idx: int
    task_id: int
    result_hash: bytes
    result_cbor: bytes


def device_id_of(public_key: bytes) -> str:
    """docs/PROTOCOL.md: the first 16 bytes of SHA-256(public key), lowercase hex."""
    return hashlib.sha256(public_key).digest()[:16].hex()


def _secret_hash(secret: bytes) -> bytes:
    # Token secrets are random (128 bits or more): a fast hash is enough, no password stretching.
    return hashlib.sha256(b"edge-grid/enrol-token\x00" + secret).digest()


def _check_canonical(blob: bytes, what: str) -> None:
    try:
        cbor.loads(blob)  # accepts canonical CBOR only
    except ValueError as e:
        raise LedgerError(f"{what} is not canonical CBOR: {e}") from e


class Ledger:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(
        cls,
        path: str | Path,
        now: float,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Ledger:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE.
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout_ms / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(f"cannot switch {path} to WAL (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, now, migrations)
        except BaseException:
            conn.close()
            raise
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[LedgerTx]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        if self._conn.in_transaction:
            raise LedgerError("transactions do not nest")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield LedgerTx(self._conn)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @property
    def trust(self) -> TrustRows:
        """The trust layer's rows, for reads outside a transaction (the verifier's queues)."""
        return TrustRows(self._conn)

    @property
    def rewards(self) -> RewardsRows:
        """The rewards' rows (acks by seq, claims, epochs): reads outside a transaction, or
        writes on ``tx.conn`` inside one."""
        return RewardsRows(self._conn)

    def ack_credit(self, device_id: str, seq: int) -> int:
        """The cumulative credit of a device's ack ``seq``. Called by the ack signer inside the
        transaction that records the ack (same connection: it sees the uncommitted row)."""
        return LedgerTx(self._conn).ack_credit(device_id, seq)

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._conn.execute(sql, args).fetchall()
        return rows

    # Enrolment and device state.

    def create_token(self, token_id: str, secret: bytes, now: float, ttl_s: float) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO enrol_tokens (id, secret_hash, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (token_id, _secret_hash(secret), now, now + ttl_s),
            )

    def enrol(self, token_id: str, secret: bytes, public_key: bytes, now: float) -> Enrolment:
        """Spend a one-time token on a device key. Repeating the same enrolment (a lost reply)
        answers the same; any other use of a spent, expired or unknown token is ``bad_token``."""
        if len(public_key) != 32:
            return Enrolment(ENROL_BAD_TOKEN, None)
        device_id = device_id_of(public_key)
        with self.transaction() as tx:
            rows = self._rows(
                "SELECT secret_hash, expires_at, used_by FROM enrol_tokens WHERE id = ?",
                (token_id,),
            )
            stored, expires_at, used_by = rows[0] if rows else (b"", 0.0, None)
            secret_ok = hmac.compare_digest(stored, _secret_hash(secret))
            if secret_ok and used_by == device_id:
                return Enrolment(ENROL_OK, device_id)
            if not secret_ok or used_by is not None or now >= expires_at:
                tx.event("enrol_refused", now, device_id=device_id, detail=token_id)
                return Enrolment(ENROL_BAD_TOKEN, None)
            self._conn.execute(
                "INSERT INTO devices (id, public_key, token_id, enrolled_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (device_id, public_key, token_id, now),
            )
            self._conn.execute(
                "UPDATE enrol_tokens SET used_by = ?, used_at = ? WHERE id = ?",
                (device_id, now, token_id),
            )
            tx.event("enrolled", now, device_id=device_id, detail=token_id)
        return Enrolment(ENROL_OK, device_id)

    def record_state(
        self, device_id: str, state_cbor: bytes, fit: bool, reason: str, now: float
    ) -> bool:
        """Store a device's state document and the fitness derived from it. False when the
        device is unknown or a newer state was already stored (messages can cross workers)."""
        with self.transaction():
            changed = self._conn.execute(
                "UPDATE devices SET state_cbor = ?, state_at = ?, fit = ?, fit_reason = ? "
                "WHERE id = ? AND (state_at IS NULL OR state_at <= ?)",
                (state_cbor, now, int(fit), reason, device_id, now),
            ).rowcount
        return changed == 1

    def device(self, device_id: str) -> DeviceRow | None:
        return LedgerTx(self._conn).device(device_id)

    def device_key(self, device_id: str) -> bytes | None:
        """The device's Ed25519 public key, which every receipt it signs must verify with."""
        rows = self._rows("SELECT public_key FROM devices WHERE id = ?", (device_id,))
        return bytes(rows[0][0]) if rows else None

    def lease_task(self, lease_id: bytes) -> tuple[LeaseRow, TaskRow] | None:
        """A lease and its task (read only): what a result must match before it is judged."""
        tx = LedgerTx(self._conn)
        lease = tx.lease(lease_id)
        return None if lease is None else (lease, tx.task(lease.task_id))

    def next_deadline(self) -> float | None:
        """The earliest deadline of an active lease: when expiry next has work."""
        rows = self._rows("SELECT min(deadline) FROM leases WHERE state = 'active'")
        return None if rows[0][0] is None else float(rows[0][0])

    def fleet(self) -> dict[str, int]:
        """Devices (all, fit, with an active lease) and tasks per state over open jobs."""
        devices = self._rows(
            "SELECT count(*), coalesce(sum(fit), 0), "
            "(SELECT count(DISTINCT device_id) FROM leases WHERE state = 'active') FROM devices"
        )[0]
        tasks = self._rows(
            "SELECT coalesce(sum(n_queued), 0), coalesce(sum(n_leased), 0), count(*) FROM jobs "
            f"WHERE state IN ('queued', 'running') AND {_USER_JOB}"
        )[0]
        names = ("devices", "devices_fit", "devices_working", "tasks_queued", "tasks_leased",
                 "jobs_open")
        return dict(zip(names, (int(v) for v in (*devices, *tasks)), strict=True))

    # Blobs (operands shared by a stage's tasks) and assembled job outputs.

    def put_blobs(self, blobs: Mapping[bytes, bytes], now: float) -> None:
        for digest, data in blobs.items():
            if hashlib.sha256(data).digest() != digest:
                raise LedgerError(f"blob {digest.hex()} does not match its bytes")
        with self.transaction():
            self._conn.executemany(
                "INSERT INTO blobs (hash, data, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (hash) DO NOTHING",
                [(digest, data, now) for digest, data in blobs.items()],
            )

    def blob_part(self, digest: bytes, offset: int, length: int) -> tuple[int, bytes] | None:
        """(total size, up to ``length`` bytes from ``offset``) of a blob; None if unknown."""
        rows = self._rows(
            "SELECT length(data), substr(data, ?, ?) FROM blobs WHERE hash = ?",
            (offset + 1, length, digest),
        )
        return (int(rows[0][0]), bytes(rows[0][1] or b"")) if rows else None

    def blob(self, digest: bytes) -> bytes | None:
        rows = self._rows("SELECT data FROM blobs WHERE hash = ?", (digest,))
        return bytes(rows[0][0]) if rows else None

    def store_output(self, job_id: int, output_cbor: bytes, now: float) -> bool:
        """Keep a done job's assembled output (canonical CBOR, made by the jobs layer);
        False when one is stored already (another worker assembled it first)."""
        with self.transaction():
            return self._conn.execute(
                "INSERT INTO job_outputs (job_id, output_cbor, assembled_at) VALUES (?, ?, ?) "
                "ON CONFLICT (job_id) DO NOTHING",
                (job_id, output_cbor, now),
            ).rowcount == 1

    def output(self, job_id: int) -> bytes | None:
        rows = self._rows("SELECT output_cbor FROM job_outputs WHERE job_id = ?", (job_id,))
        return bytes(rows[0][0]) if rows else None

    def jobs_without_output(self) -> list[int]:
        """Done jobs whose output was never stored (a crash between the last result and it)."""
        rows = self._rows(
            f"SELECT id FROM jobs WHERE state = 'done' AND {_USER_JOB} AND id NOT IN (SELECT "
            "job_id FROM job_outputs) ORDER BY id"
        )
        return [int(job) for (job,) in rows]

    def device_counters(self, device_id: str) -> dict[str, int]:
        names = ("n_leased", "n_accepted", "n_replica", "n_rejected", "n_expired",
                 "n_released", "units_accepted", "ack_seq", "credit")
        rows = self._rows(f"SELECT {', '.join(names)} FROM devices WHERE id = ?", (device_id,))
        return dict(zip(names, rows[0], strict=True)) if rows else {}

    def speeds(self, device_id: str) -> dict[str, float]:
        return LedgerTx(self._conn).speeds(device_id)

    # Jobs and tasks (the jobs layer's side).

    def add_job(
        self,
        name: str,
        kernel: str,
        spec_cbor: bytes,
        now: float,
        *,
        priority: int = 0,
        weight: float = 1.0,
        stages: int = 1,
        max_attempts: int = 3,
    ) -> int:
        _check_canonical(spec_cbor, "job spec")
        with self.transaction():
            cursor = self._conn.execute(
                "INSERT INTO jobs (name, kernel, spec_cbor, priority, weight, stages, "
                "max_attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, kernel, spec_cbor, priority, weight, stages, max_attempts, now),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def add_tasks(self, job_id: int, stage: int, tasks: Iterable[NewTask], now: float) -> int:
        """Insert one stage's tasks (all of them in one call). Stage s+1 may be inserted only
        once no task of the job is queued or leased: then "stage complete" is simply "the job
        has nothing queued or leased" (docs/LEDGER.md, multi-stage jobs)."""
        with self.transaction():
            rows = self._rows(
                "SELECT kernel, stages, state, max_attempts, n_queued + n_leased + n_verifying, "
                "(SELECT max(stage) FROM tasks WHERE job_id = jobs.id) FROM jobs WHERE id = ?",
                (job_id,),
            )
            if not rows:
                raise LedgerError(f"no job {job_id}")
            kernel, stages, state, max_attempts, open_tasks, top = rows[0]
            if state not in _JOB_OPEN or not 0 <= stage < stages:
                raise LedgerError(f"job {job_id} ({state}, {stages} stages) takes no stage {stage}")
            next_stage = top is not None and stage == top + 1 and not open_tasks
            if stage != (top or 0) and not next_stage:
                raise LedgerError(f"job {job_id}: stage {stage} before stage {top} is complete")
            values = []
            for t in tasks:
                _check_canonical(t.params_cbor, f"params of task {t.idx}")
                # The wire id: random, so a task's id tells a device nothing (not its job,
                # not its order, not whether it is a canary: docs/TRUST.md).
                values.append((job_id, stage, t.idx, t.kernel or kernel, t.params_cbor,
                               t.work_units, max_attempts, now, secrets.token_bytes(16)))
            self._conn.executemany(
                "INSERT INTO tasks (job_id, stage, idx, kernel, params_cbor, work_units, "
                "max_attempts, created_at, wire_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            units = sum(v[5] for v in values)
            # A job that had nothing queued starts at the least virtual time of the jobs that
            # are waiting, so it takes its fair turn from now on instead of a catch-up burst.
            self._conn.execute(
                "UPDATE jobs SET vpass = CASE WHEN n_queued > 0 THEN vpass ELSE max(vpass, "
                "(SELECT coalesce(min(j.vpass), 0) FROM jobs AS j WHERE j.n_queued > 0 AND "
                "j.state IN ('queued', 'running') AND j.id != jobs.id)) END, "
                "n_queued = n_queued + ?, units_total = units_total + ? WHERE id = ?",
                (len(values), units, job_id),
            )
        return len(values)

    def cancel_job(self, job_id: int, now: float) -> bool:
        with self.transaction() as tx:
            rows = self._rows("SELECT state FROM jobs WHERE id = ?", (job_id,))
            if not rows or rows[0][0] not in _JOB_OPEN or job_id == CANARY_JOB:
                return False
            tx.stop_job(job_id, "canceled", now)
        return True

    # Queries for progress and assembly.

    def job(self, job_id: int) -> JobInfo | None:
        rows = self._rows(
            "SELECT id, name, kernel, spec_cbor, state, priority, weight, stages, max_attempts, "
            "created_at FROM jobs WHERE id = ?",
            (job_id,),
        )
        return JobInfo(*rows[0]) if rows else None

    def progress(self, job_id: int, now: float) -> JobProgress | None:
        rows = self._rows(
            f"SELECT state, {', '.join(JOB_COUNTERS.values())}, units_total, units_done, "
            "started_at FROM jobs WHERE id = ?",
            (job_id,),
        )
        if not rows:
            return None
        state, *counts, units_total, units_done, started_at = rows[0]
        percent = 100.0 * units_done / units_total if units_total else 0.0
        eta: float | None = None
        if units_done and started_at is not None and now > started_at:
            # Rough: the job's mean throughput so far, applied to the work left.
            eta = (units_total - units_done) * (now - started_at) / units_done
        return JobProgress(job_id, state, dict(zip(JOB_COUNTERS, counts, strict=True)),
                           units_total, units_done, percent, eta)

    def job_results(self, job_id: int, stage: int | None = None) -> list[TaskResult]:
        """The output result of every done task, in (stage, index) order, for assembly: the
        accepted (or verified) result it points at, or the gateway's own when no device's
        matched (docs/TRUST.md)."""
        stage_filter = "" if stage is None else "AND t.stage = ?"
        args: tuple[object, ...] = (job_id,) if stage is None else (job_id, stage)
        rows = self._rows(
            "SELECT t.stage, t.idx, t.id, t.result_hash, coalesce(r.result_cbor, g.result_cbor) "
            "FROM tasks AS t LEFT JOIN results AS r ON r.id = t.result_id "
            "LEFT JOIN reference_results AS g ON g.task_id = t.id AND t.result_id IS NULL "
            f"WHERE t.job_id = ? AND t.state = 'done' {stage_filter} ORDER BY t.stage, t.idx",
            args,
        )
        return [TaskResult(*row) for row in rows]

    def stage_done(self, job_id: int, stage: int) -> bool:
        rows = self._rows(
            "SELECT count(*), coalesce(sum(state = 'done'), 0) FROM tasks "
            "WHERE job_id = ? AND stage = ?",
            (job_id, stage),
        )
        total, done = rows[0]
        return bool(total) and total == done

    def pending_stages(self) -> list[tuple[int, int]]:
        """(job, stage) pairs whose stage is complete while the next one was never inserted:
        what the jobs layer must act on, e.g. after a crash between a completion and its hook."""
        rows = self._rows(
            "SELECT j.id, max(t.stage) FROM jobs AS j JOIN tasks AS t ON t.job_id = j.id "
            "WHERE j.state = 'running' AND j.n_queued = 0 AND j.n_leased = 0 AND "
            "j.n_verifying = 0 "
            "GROUP BY j.id HAVING max(t.stage) + 1 < j.stages ORDER BY j.id"
        )
        return [(int(job), int(stage)) for job, stage in rows]

    def check(self) -> list[str]:
        """Every invariant the transitions keep, recomputed from the rows; [] when consistent."""
        return problems(self._conn)
