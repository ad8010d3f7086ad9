"""The ledger's schema and its forward migrations (docs/LEDGER.md explains every table and index).

A migration is a version number and a tuple of SQL statements. ``migrate`` applies the ones above
the file's version in order, each in its own ``BEGIN IMMEDIATE`` transaction together with the row
that records it, so a migration is applied entirely or not at all, and two gateway workers opening
the same file at once cannot both apply it. Later issues append migrations (trust, credit, epochs);
an applied migration is never edited.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass


class SchemaError(RuntimeError):
    """The file's schema is one this code cannot use (newer than it knows, or a gap)."""


@dataclass(frozen=True)
class Migration:
    version: int
    statements: tuple[str, ...]


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
        # two racing workers do. (Replication, a later issue, relaxes it to one per task and
        # device with a migration.)
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

MIGRATIONS: tuple[Migration, ...] = (V1_WORK_LOOP,)


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
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another worker may have migrated meanwhile.
            version = current_version(conn)
            _check_not_newer(version, len(migrations))
            if migration.version > version:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    "version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
                )
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (migration.version, now),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return current_version(conn)
