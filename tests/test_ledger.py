"""The ledger on a real SQLite file: schema and migrations, enrolment, jobs and tasks, the indexes
the hot queries use, and consistency after a process is killed inside a transaction.

The helpers at the top are shared with tests/test_scheduler.py.
"""

from __future__ import annotations

import hashlib
import secrets
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.core import cbor
from gateway.ledger import ENROL_BAD_TOKEN, ENROL_OK, Ledger, NewTask, device_id_of
from gateway.ledger_schema import MIGRATIONS, Migration, SchemaError
from gateway.ledger_tx import LedgerError, LedgerTx
from gateway.scheduler import Scheduler

ROOT = Path(__file__).resolve().parent.parent
RUN_STATE = cbor.dumps({"decision": "run", "code": "ok", "online": True})


def enrol_device(ledger: Ledger, now: float = 0.0, fit: bool = True) -> str:
    """A freshly enrolled device, fit to work unless told otherwise."""
    token = "tok-" + secrets.token_hex(8)
    secret = secrets.token_bytes(16)
    ledger.create_token(token, secret, now, ttl_s=3600.0)
    enrolment = ledger.enrol(token, secret, secrets.token_bytes(32), now)
    assert enrolment.code == ENROL_OK and enrolment.device_id is not None
    if fit:
        assert Scheduler(ledger).report_state(enrolment.device_id, RUN_STATE, now) is not None
    return enrolment.device_id


def add_job(
    ledger: Ledger,
    tasks: int,
    units: int = 1000,
    now: float = 0.0,
    kernel: str = "montecarlo_pi",
    **options: int | float,
) -> int:
    """A job of ``tasks`` montecarlo_pi tasks of ``units`` points each, stage 0."""
    job = ledger.add_job(f"job-{secrets.token_hex(4)}", kernel, cbor.dumps({"n": tasks}), now,
                         **options)  # type: ignore[arg-type]
    ledger.add_tasks(job, 0, (NewTask(i, cbor.dumps({"seed": i, "points": units}), units)
                              for i in range(tasks)), now)
    return job


def result_of(payload: object) -> tuple[bytes, bytes]:
    """(hash, bytes) of a result as a device sends them."""
    blob = cbor.dumps(payload)
    return hashlib.sha256(blob).digest(), blob


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "ledger.db", now=0.0)


def test_open_sets_wal_foreign_keys_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, now=1.0):
        pass
    with Ledger.open(path, now=2.0) as again:  # reopening applies nothing twice
        conn = again._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
        assert conn.execute("SELECT version, applied_at FROM schema_version").fetchall() == [
            (m.version, 1.0) for m in MIGRATIONS
        ]
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
            conn.execute("INSERT INTO device_speeds VALUES ('x' , 'k', 1.0, 1, 0.0)")


NEXT = len(MIGRATIONS) + 1
V_NEXT = Migration(
    NEXT,
    (
        "ALTER TABLE devices ADD COLUMN rate REAL NOT NULL DEFAULT 0.5",
        "CREATE TABLE epochs (id INTEGER PRIMARY KEY, root BLOB NOT NULL)",
    ),
)


def test_migration_from_an_older_version_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, now=0.0) as current:
        device = enrol_device(current)
        job = add_job(current, tasks=3)
    with Ledger.open(path, now=5.0, migrations=(*MIGRATIONS, V_NEXT)) as later:
        conn = later._conn
        assert [v for (v,) in conn.execute("SELECT version FROM schema_version")] == list(
            range(1, NEXT + 1))
        assert conn.execute("SELECT rate FROM devices WHERE id = ?", (device,)).fetchone() == (
            0.5,
        )
        assert later.progress(job, 5.0) is not None
        assert later.progress(job, 5.0).counts["queued"] == 3  # type: ignore[union-attr]
        assert conn.execute("SELECT count(*) FROM epochs").fetchone() == (0,)
        assert later.check() == []


def test_the_trust_migration_rebuilds_tasks_and_keeps_a_v1_ledgers_work(tmp_path: Path) -> None:
    # A v1 file mid-job: a task done, a task leased, one queued; then the trust layer's v2.
    path = tmp_path / "ledger.db"
    with Ledger.open(path, now=0.0, migrations=MIGRATIONS[:1]) as v1:
        device = enrol_device(v1)
        job = v1.add_job("old", "montecarlo_pi", cbor.dumps({}), 0.0)
        conn = v1._conn
        conn.executemany(
            "INSERT INTO tasks (job_id, stage, idx, kernel, params_cbor, work_units, "
            "max_attempts, created_at) VALUES (?, 0, ?, 'montecarlo_pi', x'a0', 10, 3, 0)",
            [(job, i) for i in range(3)])
        conn.execute("UPDATE tasks SET state = 'leased' WHERE job_id = ? AND idx = 0", (job,))
        conn.execute("INSERT INTO leases (id, task_id, job_id, device_id, work_units, "
                     "issued_at, deadline) SELECT x'00112233445566778899aabbccddeeff', id, "
                     "job_id, ?, 10, 1.0, 100.0 FROM tasks WHERE job_id = ? AND idx = 0",
                     (device, job))
        conn.execute("UPDATE jobs SET n_queued = 2, n_leased = 1, units_total = 30 WHERE id = ?",
                     (job,))
        conn.execute("UPDATE devices SET n_leased = 1 WHERE id = ?", (device,))
    with Ledger.open(path, now=5.0) as v2:
        conn = v2._conn
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # switched back on
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        ids = [bytes(w) for (w,) in conn.execute("SELECT wire_id FROM tasks WHERE job_id = ?",
                                                 (job,))]
        assert len(set(ids)) == 3 and all(len(w) == 16 for w in ids)
        assert v2.progress(job, 5.0).counts == {  # type: ignore[union-attr]
            "queued": 2, "leased": 1, "verifying": 0, "done": 0, "failed": 0, "canceled": 0}
        assert v2.job(0) is not None and v2.job(0).name == "canaries"  # type: ignore[union-attr]
        assert v2.fleet()["jobs_open"] == 1  # the hidden canary job is not a user's
        assert v2.check() == []


def test_a_failing_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, now=0.0).close()
    broken = Migration(NEXT, ("ALTER TABLE devices ADD COLUMN rate REAL",
                              "CREATE TABLE jobs (x)"))
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        Ledger.open(path, now=1.0, migrations=(*MIGRATIONS, broken))
    with Ledger.open(path, now=2.0) as ledger:
        columns = [row[1] for row in ledger._conn.execute("PRAGMA table_info(devices)")]
        assert "rate" not in columns  # the first statement was rolled back with the second
        assert ledger._conn.execute("SELECT max(version) FROM schema_version").fetchone() == (
            len(MIGRATIONS),)


def test_a_newer_schema_or_gapped_migrations_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, now=0.0, migrations=(*MIGRATIONS, V_NEXT)).close()
    with pytest.raises(SchemaError, match="newer than this code"):
        Ledger.open(path, now=1.0)
    with pytest.raises(SchemaError, match="without gaps"):
        Ledger.open(tmp_path / "other.db", now=1.0, migrations=(Migration(NEXT, ()),))


def test_enrol_tokens_are_one_time_and_a_repeat_is_idempotent(ledger: Ledger) -> None:
    secret = b"s" * 16
    key = secrets.token_bytes(32)
    ledger.create_token("tok-1", secret, now=0.0, ttl_s=60.0)
    assert ledger.enrol("tok-1", b"wrong" * 4, key, now=1.0).code == ENROL_BAD_TOKEN
    first = ledger.enrol("tok-1", secret, key, now=2.0)
    assert first.code == ENROL_OK
    assert first.device_id == hashlib.sha256(key).digest()[:16].hex() == device_id_of(key)
    assert ledger.enrol("tok-1", secret, key, now=3.0) == first  # a lost reply, asked again
    assert ledger.enrol("tok-1", secret, secrets.token_bytes(32), now=3.0).code == ENROL_BAD_TOKEN
    assert ledger.enrol("tok-9", secret, key, now=3.0).code == ENROL_BAD_TOKEN
    ledger.create_token("tok-2", secret, now=0.0, ttl_s=60.0)
    assert ledger.enrol("tok-2", secret, secrets.token_bytes(32), now=60.0).code == ENROL_BAD_TOKEN
    assert ledger.enrol("tok-2", secret, b"short", now=1.0).code == ENROL_BAD_TOKEN
    kinds = [k for (k,) in ledger._conn.execute("SELECT kind FROM events ORDER BY id")]
    assert kinds.count("enrolled") == 1 and kinds.count("enrol_refused") == 4
    assert ledger._conn.execute("SELECT count(*) FROM devices").fetchone() == (1,)


def test_state_of_unknown_device_or_older_than_stored_is_not_recorded(ledger: Ledger) -> None:
    device = enrol_device(ledger, now=0.0, fit=False)
    assert not ledger.record_state("0" * 32, RUN_STATE, True, "ok", now=1.0)
    assert ledger.record_state(device, RUN_STATE, True, "ok", now=10.0)
    assert not ledger.record_state(device, b"\xa0", False, "dwell", now=9.0)
    row = ledger.device(device)
    assert row is not None and row.fit and row.state_at == 10.0


def test_tasks_store_params_byte_exact_and_refuse_non_canonical(ledger: Ledger) -> None:
    job = ledger.add_job("j", "montecarlo_pi", cbor.dumps({}), now=0.0)
    params = cbor.dumps({"points": 5, "seed": 2**40})
    unsorted = b"\xa2\x61b\x01\x61a\x02"  # {"b": 1, "a": 2}: keys out of canonical order
    with pytest.raises(LedgerError, match="task 1 is not canonical"):
        ledger.add_tasks(job, 0, [NewTask(0, params, 5), NewTask(1, unsorted, 5)], now=0.0)
    assert ledger.progress(job, 0.0).units_total == 0  # type: ignore[union-attr]
    ledger.add_tasks(job, 0, [NewTask(0, params, 5)], now=0.0)
    with ledger.transaction() as tx:
        task = tx.next_task(job)
    assert task is not None and task.params_cbor == params and task.kernel == "montecarlo_pi"
    info = ledger.job(job)
    assert info is not None and (info.name, info.spec_cbor, info.stages) == ("j", b"\xa0", 1)
    assert ledger.job(job + 1) is None


def test_stages_are_inserted_in_order(ledger: Ledger) -> None:
    job = ledger.add_job("two", "montecarlo_pi", cbor.dumps({}), now=0.0, stages=2)
    with pytest.raises(LedgerError, match="before stage"):
        ledger.add_tasks(job, 1, [NewTask(0, cbor.dumps({}), 1)], now=0.0)
    ledger.add_tasks(job, 0, [NewTask(0, cbor.dumps({}), 1)], now=0.0)
    with pytest.raises(LedgerError, match="before stage 0 is complete"):
        ledger.add_tasks(job, 1, [NewTask(0, cbor.dumps({}), 1)], now=0.0)
    with pytest.raises(LedgerError, match="takes no stage 2"):
        ledger.add_tasks(job, 2, [NewTask(0, cbor.dumps({}), 1)], now=0.0)
    assert not ledger.stage_done(job, 0)


def test_a_raising_transaction_rolls_back_and_they_do_not_nest(ledger: Ledger) -> None:
    device = enrol_device(ledger)
    job = add_job(ledger, tasks=1)
    with pytest.raises(RuntimeError, match="boom"), ledger.transaction() as tx:
        task = tx.next_task(job)
        assert task is not None
        tx.lease_task(task, device, b"L" * 16, now=1.0, deadline=2.0)
        raise RuntimeError("boom")
    assert ledger.progress(job, 1.0).counts["queued"] == 1  # type: ignore[union-attr]
    with ledger.transaction(), pytest.raises(LedgerError, match="nest"):
        ledger.cancel_job(job, 1.0)
    assert ledger.check() == []


def test_the_database_refuses_a_second_active_lease_on_a_task(ledger: Ledger) -> None:
    first, second = enrol_device(ledger), enrol_device(ledger)
    job = add_job(ledger, tasks=1)
    with ledger.transaction() as tx:
        task = tx.next_task(job)
        assert task is not None
        tx.lease_task(task, first, b"A" * 16, now=1.0, deadline=100.0)
    insert = ("INSERT INTO leases (id, task_id, job_id, device_id, work_units, issued_at, "
              "deadline) VALUES (?, ?, ?, ?, 1, 1.0, 2.0)")
    # Even bypassing the queue (a bug, or a racing worker with a stale read), SQLite refuses a
    # second active lease of one task to one device (replicas go to other devices) ...
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"), ledger.transaction():
        ledger._conn.execute(insert, (b"B" * 16, task.id, job, first))
    with pytest.raises(LedgerError, match="expected to change one row"), ledger.transaction() as tx:
        tx.lease_task(task, second, b"C" * 16, now=1.0, deadline=100.0)
    assert ledger.check() == []
    # ... and the invariant check finds a second device's lease on a task that is not verifying.
    with ledger.transaction():
        ledger._conn.execute(insert, (b"D" * 16, task.id, job, second))
    assert ledger.check()[0] == (
        f"a leased task has exactly one active lease, a settled or queued one none: broken for "
        f"[{task.id}]")


def _plan(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> str:
    return " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


@pytest.mark.parametrize(
    ("sql", "args", "index"),
    [
        ("SELECT id FROM jobs WHERE n_queued > 0 AND state IN ('queued', 'running') "
         "ORDER BY priority DESC, vpass, id LIMIT 1", (), "jobs_pick"),
        ("SELECT id FROM tasks WHERE job_id = ? AND state = 'queued' ORDER BY stage, idx LIMIT 1",
         (1,), "tasks_queue"),
        ("SELECT id FROM tasks WHERE job_id = ? AND state = 'queued' AND NOT EXISTS (SELECT 1 "
         "FROM leases AS l WHERE l.task_id = tasks.id AND l.device_id = ?) "
         "ORDER BY stage, idx LIMIT 1", (1, "d"), "leases_device_task"),
        ("SELECT id FROM leases WHERE state = 'active' AND deadline < ? ORDER BY deadline LIMIT 9",
         (1.0,), "leases_active_deadline"),
        ("SELECT count(*) FROM leases WHERE device_id = ? AND state = 'active'", ("d",),
         "leases_active_device|leases_device_task"),
        ("UPDATE leases SET state = 'released' WHERE task_id = ? AND state = 'active'", (1,),
         "leases_active_task"),
        ("SELECT id FROM results WHERE lease_id = ?", (b"x",), "sqlite_autoindex_results_1"),
        ("SELECT state FROM leases WHERE id = ?", (b"x",), "PRIMARY KEY"),
        ("SELECT t.idx FROM tasks AS t WHERE t.job_id = ? AND t.state = 'done' "
         "ORDER BY t.stage, t.idx", (1,), "sqlite_autoindex_tasks_1"),
    ],
)
def test_hot_queries_use_their_index(
    ledger: Ledger, sql: str, args: tuple[object, ...], index: str
) -> None:
    plan = _plan(ledger._conn, sql, args)
    # "a|b": either index answers the query from one range (the planner's choice).
    assert any(i in plan for i in index.split("|")) and "TEMP B-TREE" not in plan, plan


CHILD = """
import sys
from gateway import ledger_tx
from gateway.ledger import Ledger
from gateway.scheduler import Scheduler

original = ledger_tx.LedgerTx.lease_task

def lease_then_hang(self, *args, **kwargs):
    original(self, *args, **kwargs)
    print("inside", flush=True)
    sys.stdin.read()  # the parent kills us here, with the transaction open

ledger_tx.LedgerTx.lease_task = lease_then_hang
ledger = Ledger.open(sys.argv[1], now=0.0)
Scheduler(ledger).lease(sys.argv[2], 4, 3600.0, now=10.0)
"""


def test_a_process_killed_inside_a_lease_transaction_leaves_the_ledger_consistent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, now=0.0) as setup:
        device = enrol_device(setup)
        job = add_job(setup, tasks=4, units=10)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), device],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "inside"
        # The child holds the write lock and wrote a lease into the WAL, uncommitted.
        with (
            Ledger.open(path, now=0.0, busy_timeout_ms=50) as peer,
            pytest.raises(sqlite3.OperationalError, match="locked"),
            peer.transaction(),
        ):
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with Ledger.open(path, now=20.0, busy_timeout_ms=1000) as after:
        assert after.check() == []
        assert after.progress(job, 20.0).counts["queued"] == 4  # type: ignore[union-attr]
        assert after._conn.execute("SELECT count(*) FROM leases").fetchone() == (0,)
        reply = Scheduler(after).lease(device, 4, 3600.0, now=20.0)  # the lock is free again
        assert len(reply.leases) == 1  # one probe task: the device has no measured speed yet
        assert after.check() == []


def test_checker_reports_a_broken_counter(ledger: Ledger) -> None:
    job = add_job(ledger, tasks=2)
    with ledger.transaction():
        ledger._conn.execute("UPDATE jobs SET n_queued = 5 WHERE id = ?", (job,))
    assert ledger.check() == [f"job counters equal its tasks' states: broken for [{job}]"]


def test_ledger_tx_reads_outside_the_scheduler(ledger: Ledger) -> None:
    device = enrol_device(ledger)
    assert LedgerTx(ledger._conn).active_lease_count(device) == 0
    assert ledger.speeds(device) == {}
    assert ledger.device_counters(device)["n_leased"] == 0
    assert ledger.device("f" * 32) is None
