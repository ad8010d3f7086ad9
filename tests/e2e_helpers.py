"""The real commands for the end-to-end tests: ``edge-gateway serve`` and its CLI, ``edge-agent
run``/``swarm`` as subprocesses, and checks read from the gateway's ledger and the agents'
databases. Waits poll the ledger or a database with a timeout (the processes share no events
with the test); nothing sleeps a fixed time."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge_agent import kernels
from edge_agent.core import cbor
from gateway import jobs
from gateway.accounts import ServeInfo
from gateway.config import StatePaths
from gateway.jobflow import JobFlow
from gateway.jobspec import JobSpec, parse_job
from gateway.ledger import Ledger

PY = sys.executable
SERVING = re.compile(r"devices connect to (mqtt://([\d.]+):(\d+));")
POLL_S = 0.05  # how often a wait re-reads the state it waits for


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once ``predicate()`` holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_S)  # polling interval of a wait with a timeout


async def finished(proc: asyncio.subprocess.Process, timeout: float) -> tuple[int, str]:
    """Wait for a process to exit: (exit code, its stdout)."""
    async with asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out or b"").decode()


# -- the gateway ---------------------------------------------------------------------------


async def gateway_cli(state: Path, *args: str) -> str:
    """Run ``edge-gateway ARGS --state-dir STATE``; its stdout (fails on a non-zero exit)."""
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "gateway.cli", *args, "--state-dir", str(state),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


class Serve:
    """A running ``edge-gateway serve`` with its own Mosquitto on loopback."""

    def __init__(self, state: Path, proc: asyncio.subprocess.Process, url: str, port: int):
        self.state, self.proc, self.url, self.port = state, proc, url, port

    @classmethod
    async def start(cls, state: Path, port: int = 0) -> Serve:
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "gateway.cli", "serve", "--state-dir", str(state), "--mqtt-host",
            "127.0.0.1", "--mqtt-port", str(port), "--log-level", "WARNING",
            stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        found = SERVING.search(line)
        assert found, f"serve did not announce itself: {line!r}"
        return cls(state, proc, found.group(1), int(found.group(3)))

    def mosquitto_pid(self) -> int:
        info = ServeInfo.load(StatePaths(self.state).serve_info)
        assert info is not None and info.mosquitto_pid is not None
        return info.mosquitto_pid

    async def stop(self) -> int:
        """SIGTERM (a clean stop: its Mosquitto saves its persistence); the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            return await self.proc.wait()


async def tokens(state: Path, count: int) -> list[str]:
    made = (await gateway_cli(state, "token", "create", "--count", str(count))).split()
    assert len(made) == count
    return made


async def submit(state: Path, job: dict[str, Any]) -> tuple[int, JobSpec]:
    """Submit a job document through ``edge-gateway submit``: (job id, parsed spec)."""
    path = state / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    return int((await gateway_cli(state, "submit", str(path))).strip()), parse_job(job)


@contextlib.contextmanager
def ledger_of(state: Path) -> Iterator[Ledger]:
    with Ledger.open(StatePaths(state).ledger, time.time()) as ledger:
        yield ledger


def job_state(state: Path, job_id: int) -> str:
    with ledger_of(state) as ledger:
        progress = ledger.progress(job_id, time.time())
    assert progress is not None
    return progress.state


def tasks_done(state: Path, job_id: int) -> int:
    with ledger_of(state) as ledger:
        progress = ledger.progress(job_id, time.time())
    assert progress is not None
    return progress.counts["done"]


def rows(db: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Read a SQLite database another process is writing (WAL: readers do not block it)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- checks --------------------------------------------------------------------------------


def local_results(spec: JobSpec) -> list[list[dict[str, Any]]]:
    """Every task's result computed here, stage by stage (what compute_locally assembles)."""
    plan = jobs.plan(spec)
    results: list[list[dict[str, Any]]] = []
    for stage in plan.stages:
        tasks = stage.tasks if stage.tasks is not None else jobs.next_stage(
            spec, stage.index, results[-1])
        results.append([kernels.run(t.kernel, jobs.resolve(t.params, plan.blobs))
                        for t in tasks])
    return results


def assert_identical_to_local(state: Path, job_id: int, spec: JobSpec) -> dict[str, Any]:
    """Each task's stored result and the assembled output equal the gateway's own
    computation; returns the output."""
    local = local_results(spec)
    with ledger_of(state) as ledger:
        stored = ledger.job_results(job_id)
        output = JobFlow(ledger, time.time).output(job_id)
    assert [(r.stage, r.idx) for r in stored] == [
        (s, i) for s, stage in enumerate(local) for i in range(len(stage))]
    for r in stored:
        assert cbor.loads(r.result_cbor) == local[r.stage][r.idx], (r.stage, r.idx)
    assert output is not None and output == jobs.compute_locally(spec)
    return output


def assert_counted_once(state: Path, job_id: int) -> int:
    """Every task done and pointing at one counted result; no device credited twice for one
    task (a repeat is answered, never stored; a late copy from a re-leased task is a replica
    credited to nobody); nothing refused or left pending; the ledger's invariants hold
    (counters equal the rows). Returns the number of tasks."""
    db = StatePaths(state).ledger
    per_task = rows(db, "SELECT t.id, t.state, t.result_id IS NOT NULL, "
                        "coalesce(sum(r.status = 'accepted'), 0), "
                        "count(DISTINCT CASE WHEN r.status = 'accepted' THEN r.device_id END), "
                        "coalesce(sum(r.status NOT IN ('accepted', 'replica')), 0) "
                        "FROM tasks t LEFT JOIN results r ON r.task_id = t.id "
                        "WHERE t.job_id = ? GROUP BY t.id", (job_id,))
    wrong = [p for p in per_task if p[1:3] != ("done", 1) or p[3] != p[4] or p[5] != 0]
    assert per_task and not wrong, wrong[:5]
    with ledger_of(state) as ledger:
        assert ledger.check() == []
    return len(per_task)


# -- agents --------------------------------------------------------------------------------


async def edge_agent(command: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        PY, "-m", "edge_agent.cli", command, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)


async def enrol(state: Path, gateway_url: str, token: str) -> None:
    proc = await edge_agent("init", "--gateway", gateway_url, "--token", token,
                            "--state-dir", str(state))
    code, out = await finished(proc, 60)
    assert code == 0 and out.startswith("enrolled as "), out


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM an agent (a clean stop) and return (exit code, its stdout)."""
    proc.send_signal(signal.SIGTERM)
    return await finished(proc, 30)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def agent_db(state: Path) -> Path:
    return state / "agent.sqlite3"


def counts_of(run_output: str) -> dict[str, int]:
    """The counters ``edge-agent run`` prints when it stops: ``<id>: N tasks done; {...}``."""
    found = re.search(r"tasks done; (\{.*\})", run_output)
    assert found, run_output
    parsed: dict[str, int] = ast.literal_eval(found.group(1))
    return parsed
