"""Jobs through the ledger: submit (plan, blobs, stage 0), the next stage when one completes,
the assembled output when the job is done, and progress for ``edge-gateway job``.

The plan is a deterministic function of the spec (gateway.jobs), so the ledger stores only the
normalised spec document; later stages are made from the previous stage's stored results.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from edge_agent.core import blobs, cbor
from gateway import jobs
from gateway.jobspec import JobSpec, parse_job, spec_document
from gateway.ledger import Ledger, LedgerError, NewTask

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# Job outputs and stored results are ours (canonical CBOR we made or checked): decode them with
# room for the largest (a gemm output of 4096 x 4096 bytes).
_OUTPUT_LIMITS = {"max_size": 64 << 20, "max_items": 1 << 20}


def _new_tasks(tasks: tuple[jobs.Task, ...]) -> list[NewTask]:
    return [NewTask(t.index, cbor.dumps(t.params), t.work_units, t.kernel) for t in tasks]


class JobFlow:
    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock

    def submit(self, spec: JobSpec) -> int:
        """Plan the job and store it with its blobs and stage-0 tasks; returns the job id."""
        plan = jobs.plan(spec)
        first = plan.stages[0].tasks
        assert first is not None  # stage 0 never depends on results
        now = self.clock()
        self.ledger.put_blobs(plan.blobs, now)
        job_id = self.ledger.add_job(
            spec.name, plan.stages[0].kernel, cbor.dumps(spec_document(spec)), now,
            priority=spec.priority, stages=len(plan.stages), max_attempts=spec.max_attempts)
        self.ledger.add_tasks(job_id, 0, _new_tasks(first), now)
        log.info("job %d (%s): %d tasks in %d stages", job_id, spec.name, plan.task_count,
                 len(plan.stages))
        return job_id

    def spec(self, job_id: int) -> JobSpec:
        info = self.ledger.job(job_id)
        if info is None:
            raise LookupError(f"no job {job_id}")
        return parse_job(cbor.loads(info.spec_cbor, max_size=len(info.spec_cbor) + 1,
                                    max_items=_OUTPUT_LIMITS["max_items"]))

    def resolved_params(self, params_cbor: bytes) -> dict[str, Any]:
        """A task's params with its blob references replaced by their bytes (what the gateway
        runs a task on: spot checks, canary answers)."""
        params: dict[str, Any] = cbor.loads(params_cbor)
        refs = [v["blob"] for v in params.values() if blobs.is_ref(v)]
        found = {digest: self.ledger.blob(digest) for digest in refs}
        missing = [d.hex() for d, data in found.items() if data is None]
        if missing:
            raise LookupError(f"blobs {missing} are not in the ledger")
        return jobs.resolve(params, {d: data for d, data in found.items() if data is not None})

    def _results(self, job_id: int, stage: int) -> list[dict[str, Any]]:
        return [cbor.loads(r.result_cbor) for r in self.ledger.job_results(job_id, stage)]

    def advance(self, job_id: int, stage: int) -> None:
        """Stage ``stage`` is complete: insert the next stage's tasks from its results (the
        scheduler's on_stage_complete hook)."""
        spec = self.spec(job_id)
        try:
            tasks = jobs.next_stage(spec, stage + 1, self._results(job_id, stage))
        except jobs.JobError as exc:
            log.error("job %d: stage %d cannot be made (%s); canceling the job", job_id,
                      stage + 1, exc)
            self.ledger.cancel_job(job_id, self.clock())
            return
        try:
            self.ledger.add_tasks(job_id, stage + 1, _new_tasks(tasks), self.clock())
        except (LedgerError, sqlite3.IntegrityError) as exc:
            # Another worker inserted it first (recovery racing a live hook): nothing owed.
            log.info("job %d: stage %d already inserted (%s)", job_id, stage + 1, exc)
            return
        log.info("job %d: stage %d inserted, %d tasks", job_id, stage + 1, len(tasks))

    def finish(self, job_id: int) -> None:
        """The job is done: assemble its output from every stage's results and store it."""
        spec = self.spec(job_id)
        info = self.ledger.job(job_id)
        assert info is not None
        results = [self._results(job_id, s) for s in range(info.stages)]
        try:
            output = jobs.assemble(spec, results)
        except jobs.JobError as exc:
            log.error("job %d: results do not assemble: %s", job_id, exc)
            return
        if self.ledger.store_output(job_id, cbor.dumps(output), self.clock()):
            log.info("job %d: done, output stored", job_id)

    def recover(self) -> None:
        """What a crash between a commit and its follow-up left owed: next stages, outputs."""
        for job_id, stage in self.ledger.pending_stages():
            self.advance(job_id, stage)
        for job_id in self.ledger.jobs_without_output():
            self.finish(job_id)

    def output(self, job_id: int) -> dict[str, Any] | None:
        data = self.ledger.output(job_id)
        if data is None:
            return None
        output: dict[str, Any] = cbor.loads(data, max_size=len(data) + 1,
                                            max_items=_OUTPUT_LIMITS["max_items"])
        return output

    def report(self, job_id: int) -> dict[str, Any]:
        """Progress (counts per task state, percent, ETA) and, once done, the output."""
        info = self.ledger.job(job_id)
        progress = self.ledger.progress(job_id, self.clock())
        if info is None or progress is None:
            raise LookupError(f"no job {job_id}")
        return {
            "id": job_id, "name": info.name, "kind": self.spec(job_id).kind,
            "state": progress.state, "stages": info.stages, "counts": progress.counts,
            "units_done": progress.units_done, "units_total": progress.units_total,
            "percent": round(progress.percent, 2),
            "eta_s": None if progress.eta_s is None else round(progress.eta_s, 1),
            "output": self.output(job_id),
        }
