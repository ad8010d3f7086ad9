"""The ledger's invariants, recomputed from its rows: what tests and operators run to prove that
no transition (or crash in the middle of one) left the file inconsistent. Each check is one
set-based pass (GROUP BY, then compare), so checking a ledger of 20,000 tasks takes well under a
second."""

from __future__ import annotations

import sqlite3

from gateway.ledger_tx import JOB_COUNTERS


def _differs(pairs: list[tuple[str, str]]) -> str:
    return " OR ".join(f"{stored} != coalesce({counted}, 0)" for stored, counted in pairs)


_TASK_COUNTS = ", ".join(f"sum(state = '{state}') AS {column}" for state, column in
                         JOB_COUNTERS.items())
_RESULT_STATUSES = ("accepted", "replica", "rejected")

# Each query returns the rows that break one invariant; its name says which.
_INVARIANTS = {
    "job counters equal its tasks' states": (
        f"WITH c AS (SELECT job_id, {_TASK_COUNTS}, sum(work_units) AS units_total, "
        "sum(CASE state WHEN 'done' THEN work_units ELSE 0 END) AS units_done "
        "FROM tasks GROUP BY job_id) "
        "SELECT j.id FROM jobs AS j LEFT JOIN c ON c.job_id = j.id WHERE "
        + _differs([(f"j.{col}", f"c.{col}") for col in (*JOB_COUNTERS.values(),
                                                         "units_total", "units_done")])
    ),
    # A verifying task may hold replica leases (one per device: the unique index).
    "a leased task has exactly one active lease, a settled or queued one none": (
        "WITH a AS (SELECT task_id, count(*) AS n FROM leases WHERE state = 'active' "
        "GROUP BY task_id) "
        "SELECT t.id FROM tasks AS t LEFT JOIN a ON a.task_id = t.id "
        "WHERE t.state != 'verifying' AND (t.state = 'leased') != (coalesce(a.n, 0) = 1)"
    ),
    # Its counted result (accepted without a verifier; verified or accepted on trust with
    # one), or the gateway's own result when no device's matched.
    "a done task points at a correct result of its own": (
        "SELECT t.id FROM tasks AS t LEFT JOIN results AS r ON r.id = t.result_id "
        "LEFT JOIN reference_results AS g ON g.task_id = t.id "
        "WHERE (t.state = 'done') != coalesce(CASE WHEN t.result_id IS NULL "
        "THEN g.result_hash = t.result_hash ELSE r.task_id = t.id AND r.result_hash = "
        "t.result_hash AND coalesce(r.verdict, r.status) IN ('accepted', 'valid', 'unverified') "
        "END, 0)"
    ),
    "a verifying task has an open check, a done one a settled check": (
        "SELECT id FROM tasks WHERE (state = 'verifying' AND check_state IS NOT 'open') "
        "OR (state = 'done' AND check_state IS 'open')"
    ),
    "a quarantined device holds no active lease": (
        "SELECT DISTINCT l.device_id FROM leases AS l JOIN devices AS d ON d.id = l.device_id "
        "WHERE l.state = 'active' AND d.quarantined = 1"
    ),
    "a result comes from its lease's device and task": (
        "SELECT r.id FROM results AS r JOIN leases AS l ON l.id = r.lease_id "
        "WHERE l.device_id != r.device_id OR l.task_id != r.task_id"
    ),
    "device counters equal its leases and results": (
        "WITH l AS (SELECT device_id, count(*) AS n_leased, "
        "sum(state = 'expired') AS n_expired FROM leases GROUP BY device_id), "
        "r AS (SELECT r.device_id, "
        + "".join(f"sum(r.status = '{s}') AS n_{s}, " for s in _RESULT_STATUSES)
        + "sum(CASE r.status WHEN 'accepted' THEN l.work_units ELSE 0 END) AS units_accepted "
        "FROM results AS r JOIN leases AS l ON l.id = r.lease_id GROUP BY r.device_id) "
        "SELECT d.id FROM devices AS d LEFT JOIN l ON l.device_id = d.id "
        "LEFT JOIN r ON r.device_id = d.id WHERE "
        + _differs([("d.n_leased", "l.n_leased"), ("d.n_expired", "l.n_expired"),
                    ("d.units_accepted", "r.units_accepted")]
                   + [(f"d.n_{s}", f"r.n_{s}") for s in _RESULT_STATUSES])
    ),
    "a task is failed only after max_attempts": (
        "SELECT id FROM tasks WHERE state = 'failed' AND attempts < max_attempts"
    ),
    # Rewards (v3, docs/REWARDS.md).
    "a device's credit is what its results earned": (
        "WITH r AS (SELECT device_id, sum(credit) AS credit FROM results GROUP BY device_id) "
        "SELECT d.id FROM devices AS d LEFT JOIN r ON r.device_id = d.id WHERE "
        + _differs([("d.credit", "r.credit")])
    ),
    "a device's acks are numbered up to its ack_seq, credit never decreasing": (
        "SELECT a.device_id FROM (SELECT device_id, seq, credit, lag(credit) OVER "
        "(PARTITION BY device_id ORDER BY seq) AS before FROM acks) AS a "
        "JOIN devices AS d ON d.id = a.device_id "
        "WHERE a.seq > d.ack_seq OR a.credit < coalesce(a.before, 0) OR a.credit > d.credit"
    ),
    "a claim covers acks of its device": (
        "SELECT c.device_id FROM claims AS c JOIN devices AS d ON d.id = c.device_id "
        "WHERE c.last > d.ack_seq OR c.credit IS NOT (SELECT a.credit FROM acks AS a "
        "WHERE a.device_id = c.device_id AND a.seq = c.last)"
    ),
    "an epoch's n and total are its leaves', each at most the device's credit": (
        "WITH l AS (SELECT epoch, count(*) AS n, sum(credit) AS total FROM settlement_leaves "
        "GROUP BY epoch) SELECT s.epoch FROM settlements AS s LEFT JOIN l ON l.epoch = s.epoch "
        "WHERE " + _differs([("s.n", "l.n"), ("s.total", "l.total")])
        + " UNION SELECT sl.epoch FROM settlement_leaves AS sl JOIN devices AS d "
        "ON d.id = sl.device_id WHERE sl.credit > d.credit"
    ),
}


def problems(conn: sqlite3.Connection) -> list[str]:
    found: list[str] = []
    integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    if integrity != ["ok"]:
        found.append(f"integrity_check: {integrity[:5]}")
    if conn.execute("PRAGMA foreign_key_check").fetchall():
        found.append("foreign_key_check found dangling references")
    for name, sql in _INVARIANTS.items():
        bad = [row[0] for row in conn.execute(sql).fetchmany(5)]
        if bad:
            found.append(f"{name}: broken for {bad}")
    return found
