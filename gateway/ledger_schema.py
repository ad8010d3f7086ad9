"""The ledger's schema and its forward migrations (docs/LEDGER.md explains every table and index).

A migration is a version number and a tuple of SQL statements. ``migrate`` applies the ones above
the file's version in order, each in its own ``BEGIN IMMEDIATE`` transaction together with the row
that records it, so a migration is applied entirely or not at all, and two gateway workers opening
the same file at once cannot both apply it. Later issues append migrations (credit, epochs); an
applied migration is never edited. v2 is the trust layer's (docs/TRUST.md, docs/LEDGER.md), v3
the rewards' (docs/REWARDS.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.core import rewards


class SchemaError(RuntimeError):
    """The file's schema is one this code cannot use (newer than it knows, or a gap)."""


@dataclass(frozen=True)
class Migration:
    version: int
    statements: tuple[str, ...]
    # Rebuilds a table that others reference (SQLite's "12-step" ALTER): foreign keys are
    # switched off around the transaction (the pragma is a no-op inside one), and the
    # migration commits only if PRAGMA foreign_key_check finds nothing dangling afterwards.
    rebuilds: bool = False


_TASK_STATES = "('queued', 'leased', 'done', 'failed', 'canceled')"
_JOB_STATES = "('queued', 'running', 'done', 'failed', 'canceled')"
_LEASE_STATES = "('active', 'completed', 'expired', 'released')"
_RESULT_STATUSES = "('accepted', 'replica', 'rejected', 'pending')"

V1_WORK_LOOP = Migration(
    1,
    (
        """CREATE TABLE enrol_tokens (
            id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
            secret_hash BLOB NOT NULL CHECK (length(secret_hash) = 32),
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_by TEXT,
            used_at REAL
        ) WITHOUT ROWID""",
        """CREATE TABLE devices (
            id TEXT PRIMARY KEY CHECK (length(id) = 32),
            public_key BLOB NOT NULL UNIQUE CHECK (length(public_key) = 32),
            token_id TEXT REFERENCES enrol_tokens(id),
            enrolled_at REAL NOT NULL,
            state_cbor BLOB,
            state_at REAL,
            fit INTEGER NOT NULL DEFAULT 0 CHECK (fit IN (0, 1)),
            fit_reason TEXT NOT NULL DEFAULT 'no_state',
            last_result_at REAL,
            ack_seq INTEGER NOT NULL DEFAULT 0,
            n_leased INTEGER NOT NULL DEFAULT 0,
            n_accepted INTEGER NOT NULL DEFAULT 0,
            n_replica INTEGER NOT NULL DEFAULT 0,
            n_rejected INTEGER NOT NULL DEFAULT 0,
            n_expired INTEGER NOT NULL DEFAULT 0,
            n_released INTEGER NOT NULL DEFAULT 0,
            units_accepted INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        """CREATE TABLE device_speeds (
            device_id TEXT NOT NULL REFERENCES devices(id),
            kernel TEXT NOT NULL,
            units_per_s REAL NOT NULL CHECK (units_per_s > 0),
            samples INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (device_id, kernel)
        ) WITHOUT ROWID""",
        f"""CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            kernel TEXT NOT NULL,
            spec_cbor BLOB NOT NULL,
            state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN {_JOB_STATES}),
            priority INTEGER NOT NULL DEFAULT 0,
            weight REAL NOT NULL DEFAULT 1 CHECK (weight > 0),
            stages INTEGER NOT NULL DEFAULT 1 CHECK (stages >= 1),
            max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            vpass REAL NOT NULL DEFAULT 0,
            n_queued INTEGER NOT NULL DEFAULT 0,
            n_leased INTEGER NOT NULL DEFAULT 0,
            n_done INTEGER NOT NULL DEFAULT 0,
            n_failed INTEGER NOT NULL DEFAULT 0,
            n_canceled INTEGER NOT NULL DEFAULT 0,
            units_total INTEGER NOT NULL DEFAULT 0,
            units_done INTEGER NOT NULL DEFAULT 0
        )""",
        # Only jobs with queued tasks, in the scheduler's pick order: the pick reads one entry.
        """CREATE INDEX jobs_pick ON jobs(priority DESC, vpass, id)
            WHERE n_queued > 0 AND state IN ('queued', 'running')""",
        f"""CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            stage INTEGER NOT NULL CHECK (stage >= 0),
            idx INTEGER NOT NULL CHECK (idx >= 0),
            kernel TEXT NOT NULL,
            params_cbor BLOB NOT NULL,
            work_units INTEGER NOT NULL CHECK (work_units > 0),
            state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN {_TASK_STATES}),
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
            result_id INTEGER REFERENCES results(id),
            result_hash BLOB,
            created_at REAL NOT NULL,
            finished_at REAL,
            UNIQUE (job_id, stage, idx)
        )""",
        # The queue: only queued tasks, per job in (stage, index) order. Retried tasks have low
        # indexes, so they go out first, which also lets assembly of early results proceed.
        "CREATE INDEX tasks_queue ON tasks(job_id, stage, idx) WHERE state = 'queued'",
        f"""CREATE TABLE leases (
            id BLOB PRIMARY KEY CHECK (length(id) = 16),
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            device_id TEXT NOT NULL REFERENCES devices(id),
            work_units INTEGER NOT NULL,
            issued_at REAL NOT NULL,
            deadline REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'active' CHECK (state IN {_LEASE_STATES}),
            ended_at REAL
        ) WITHOUT ROWID""",
        # At most one active lease per task: the database itself refuses a second one, whatever
        # two racing workers do. (v2 relaxes it to one per task and device, for replicas.)
        "CREATE UNIQUE INDEX leases_active_task ON leases(task_id) WHERE state = 'active'",
        "CREATE INDEX leases_active_deadline ON leases(deadline) WHERE state = 'active'",
        "CREATE INDEX leases_active_device ON leases(device_id) WHERE state = 'active'",
        f"""CREATE TABLE results (
            id INTEGER PRIMARY KEY,
            lease_id BLOB NOT NULL UNIQUE REFERENCES leases(id),
            task_id INTEGER NOT NULL REFERENCES tasks(id),
            device_id TEXT NOT NULL REFERENCES devices(id),
            result_hash BLOB NOT NULL CHECK (length(result_hash) = 32),
            result_cbor BLOB NOT NULL,
            receipt BLOB NOT NULL,
            received_at REAL NOT NULL,
            status TEXT NOT NULL CHECK (status IN {_RESULT_STATUSES}),
            code TEXT,
            ack BLOB
        )""",
        "CREATE INDEX results_task ON results(task_id)",
        # Operands shared by a stage's tasks (content-addressed), served to devices in parts.
        """CREATE TABLE blobs (
            hash BLOB PRIMARY KEY CHECK (length(hash) = 32),
            data BLOB NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE job_outputs (
            job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
            output_cbor BLOB NOT NULL,
            assembled_at REAL NOT NULL
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            device_id TEXT,
            job_id INTEGER,
            task_id INTEGER,
            lease_id BLOB,
            detail TEXT NOT NULL DEFAULT ''
        )""",
    ),
)

# The tasks table as of v2: the 'verifying' state, an opaque wire id, and the columns of the trust
# layer's TaskCheck (docs/TRUST.md). Rebuilt, because SQLite cannot alter a CHECK constraint.
_TASK_STATES_V2 = "('queued', 'leased', 'verifying', 'done', 'failed', 'canceled')"
_TASK_COLUMNS_V1 = ("id, job_id, stage, idx, kernel, params_cbor, work_units, state, attempts, "
                    "max_attempts, result_id, result_hash, created_at, finished_at")

V2_TRUST = Migration(
    2,
    (
        f"""CREATE TABLE tasks_v2 (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            stage INTEGER NOT NULL CHECK (stage >= 0),
            idx INTEGER NOT NULL CHECK (idx >= 0),
            kernel TEXT NOT NULL,
            params_cbor BLOB NOT NULL,
            work_units INTEGER NOT NULL CHECK (work_units > 0),
            state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN {_TASK_STATES_V2}),
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
            result_id INTEGER REFERENCES results(id),
            result_hash BLOB,
            created_at REAL NOT NULL,
            finished_at REAL,
            wire_id BLOB NOT NULL CHECK (length(wire_id) = 16),
            check_method TEXT CHECK (check_method IN ('trusted', 'replica', 'spot', 'canary')),
            check_state TEXT CHECK (check_state IN ('open', 'settled')),
            reference BLOB CHECK (reference IS NULL OR length(reference) = 32),
            authoritative INTEGER NOT NULL DEFAULT 0 CHECK (authoritative IN (0, 1)),
            spot_requested INTEGER NOT NULL DEFAULT 0 CHECK (spot_requested IN (0, 1)),
            replica_wanted INTEGER NOT NULL DEFAULT 0 CHECK (replica_wanted IN (0, 1)),
            verify_since REAL,
            template_id INTEGER REFERENCES tasks(id),
            UNIQUE (job_id, stage, idx)
        )""",
        f"INSERT INTO tasks_v2 ({_TASK_COLUMNS_V1}, wire_id) "
        f"SELECT {_TASK_COLUMNS_V1}, randomblob(16) FROM tasks",
        "DROP TABLE tasks",
        "ALTER TABLE tasks_v2 RENAME TO tasks",
        "CREATE INDEX tasks_queue ON tasks(job_id, stage, idx) WHERE state = 'queued'",
        # The gateway's own runs still owed, and tasks waiting for a replica lease: both small.
        "CREATE INDEX tasks_spot ON tasks(id) WHERE spot_requested = 1 AND check_state = 'open'",
        "CREATE INDEX tasks_replica ON tasks(verify_since) WHERE replica_wanted = 1",
        "ALTER TABLE jobs ADD COLUMN n_verifying INTEGER NOT NULL DEFAULT 0",
        # The hidden job that holds canaries (id 0: user jobs count from 1). Never picked by the
        # queue (its tasks are leased the moment they are made), never done, never on the wire.
        "INSERT INTO jobs (id, name, kernel, spec_cbor, state, max_attempts, created_at) "
        "VALUES (0, 'canaries', 'canary', x'a0', 'running', 1, 0)",
        "ALTER TABLE devices ADD COLUMN valid INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN invalid INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN streak INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN strikes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0 "
        "CHECK (quarantined IN (0, 1))",
        "ALTER TABLE results ADD COLUMN verdict TEXT "
        "CHECK (verdict IN ('pending', 'unverified', 'valid', 'invalid'))",
        # A device's results by status: voiding a quarantined device's pending ones, rechecks.
        "CREATE INDEX results_device ON results(device_id, status)",
        # Replicas: one active lease per (task, device) instead of one per task.
        "DROP INDEX leases_active_task",
        "CREATE UNIQUE INDEX leases_active_task ON leases(task_id, device_id) "
        "WHERE state = 'active'",
        # The gateway's own result of a task, when it is the task's output (no device matched).
        """CREATE TABLE reference_results (
            task_id INTEGER PRIMARY KEY REFERENCES tasks(id),
            result_hash BLOB NOT NULL CHECK (length(result_hash) = 32),
            result_cbor BLOB NOT NULL,
            computed_at REAL NOT NULL
        )""",
    ),
    rebuilds=True,
)


def _credit_sql(units: str, kernel: str) -> str:
    """SQL for ``rewards.credit(kernel, units)`` (floor of units x the kernel's rate; 0 for a
    kernel without a rate), to credit what was accepted before v3."""
    cases = " ".join(f"WHEN '{name}' THEN {units} * {micro} / {per}"
                     for name, (micro, per) in sorted(rewards.RATES.items()))
    return f"CASE {kernel} {cases} ELSE 0 END"


# Rewards (docs/REWARDS.md): each device's cumulative credit, every ack it was sent (its seq,
# the result it answers, the cumulative credit it carried), its accepted claims, and the closed
# epochs. A result's `credit` is what it earned when it became accepted (NULL: never); it stays
# when a recheck later finds it wrong, because the signed acks already carried it.
V3_REWARDS = Migration(
    3,
    (
        "ALTER TABLE devices ADD COLUMN credit INTEGER NOT NULL DEFAULT 0 CHECK (credit >= 0)",
        "ALTER TABLE results ADD COLUMN credit INTEGER CHECK (credit >= 0)",
        # SHA-256 of the receipt's signed body (protocol.receipt_id): what claims list.
        "ALTER TABLE results ADD COLUMN receipt_id BLOB "
        "CHECK (receipt_id IS NULL OR length(receipt_id) = 32)",
        "CREATE INDEX results_receipt ON results(receipt_id) WHERE receipt_id IS NOT NULL",
        """CREATE TABLE acks (
            device_id TEXT NOT NULL REFERENCES devices(id),
            seq INTEGER NOT NULL CHECK (seq >= 1),
            result_id INTEGER NOT NULL REFERENCES results(id),
            status TEXT NOT NULL,
            credit INTEGER NOT NULL CHECK (credit >= 0),
            PRIMARY KEY (device_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE claims (
            device_id TEXT NOT NULL REFERENCES devices(id),
            first INTEGER NOT NULL,
            last INTEGER NOT NULL CHECK (last >= first),
            root BLOB NOT NULL CHECK (length(root) = 32),
            credit INTEGER NOT NULL,
            claimed_at REAL NOT NULL,
            claim BLOB NOT NULL,
            receipt BLOB NOT NULL,
            PRIMARY KEY (device_id, first)
        ) WITHOUT ROWID""",
        """CREATE TABLE settlements (
            epoch INTEGER PRIMARY KEY CHECK (epoch >= 1),
            closed_at INTEGER NOT NULL,
            n INTEGER NOT NULL,
            total INTEGER NOT NULL,
            root BLOB NOT NULL CHECK (length(root) = 32),
            header_hash BLOB NOT NULL CHECK (length(header_hash) = 32),
            sealed_header BLOB NOT NULL,
            settled_at REAL NOT NULL,
            published_at REAL
        )""",
        """CREATE TABLE settlement_leaves (
            epoch INTEGER NOT NULL REFERENCES settlements(epoch),
            device_id TEXT NOT NULL REFERENCES devices(id),
            credit INTEGER NOT NULL,
            PRIMARY KEY (epoch, device_id)
        ) WITHOUT ROWID""",
        # Work accepted before v3 is credited now; its acks said 0, later ones say the sum.
        "UPDATE results SET credit = (SELECT "
        + _credit_sql("l.work_units", "t.kernel")
        + " FROM leases AS l JOIN tasks AS t ON t.id = l.task_id WHERE l.id = results.lease_id)"
        " WHERE status = 'accepted'",
        "UPDATE devices SET credit = (SELECT coalesce(sum(r.credit), 0) FROM results AS r "
        "WHERE r.device_id = devices.id)",
    ),
)

# A device is never leased the same task twice (scheduler.lease): after a lease of its expired,
# another device must do it, or one device could be credited twice for one task (seen when a
# gateway restart expired leases whose results then arrived late). This index answers "has this
# device held a lease on this task?" for the queued-task query.
V4_ONE_LEASE_PER_DEVICE = Migration(
    4,
    ("CREATE INDEX leases_device_task ON leases(device_id, task_id)",),
)

MIGRATIONS: tuple[Migration, ...] = (
    V1_WORK_LOOP,
    V2_TRUST,
    V3_REWARDS,
    V4_ONE_LEASE_PER_DEVICE,
)


def current_version(conn: sqlite3.Connection) -> int:
    """The file's schema version (0: a new file). Only reads, so opening a ledger that is up to
    date never waits for another worker's write lock."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if has_table is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return 0 if row[0] is None else int(row[0])


def _check_not_newer(version: int, known: int) -> None:
    if version > known:
        raise SchemaError(
            f"the ledger is at schema version {version}, newer than this code ({known}): "
            "upgrade the gateway"
        )


def migrate(
    conn: sqlite3.Connection, now: float, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Bring the file up to the last of ``migrations``; returns the version reached.

    ``conn`` must be in autocommit mode (isolation_level=None): transactions here are explicit.
    """
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise SchemaError(f"migrations must be numbered 1..n without gaps, got {versions}")
    version = current_version(conn)
    _check_not_newer(version, len(migrations))
    for migration in migrations[version:]:
        if migration.rebuilds:
            conn.execute("PRAGMA foreign_keys = OFF")
        try:
            _apply(conn, migration, now, len(migrations))
        finally:
            if migration.rebuilds:
                conn.execute("PRAGMA foreign_keys = ON")
    return current_version(conn)


def _apply(conn: sqlite3.Connection, migration: Migration, now: float, known: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another worker may have migrated meanwhile.
        version = current_version(conn)
        _check_not_newer(version, known)
        if migration.version > version:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            for statement in migration.statements:
                conn.execute(statement)
            if migration.rebuilds and conn.execute("PRAGMA foreign_key_check").fetchall():
                raise SchemaError(f"migration {migration.version} left dangling references")
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (migration.version, now),
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
