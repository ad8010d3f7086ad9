"""``edge-agent run``: the device's work loop, with the governor in charge.

Two coroutines share one :class:`Agent`: the link's connection loop (link.py: the MQTT session,
the inbox, requests) and the **work loop** here, which asks the governor, pulls leases when fit,
checks each lease before anything runs, fetches and caches blobs, runs the kernel in chunks in a
worker thread, asks the governor between chunks (run at its duty cycle, pause = hold in memory,
stop = checkpoint and go idle), checkpoints every few seconds, and stores each sealed result
durably before publishing it.

Computing does not need the connection: results made offline wait in the outbox.

One task at a time on one worker thread: the kernels are single-threaded, and one thread keeps a
phone's heat and a Pi's supply well inside what the governor models; the governor's ``threads``
is reported but not used to fan out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from edge_agent import kernels
from edge_agent.claims import Claims
from edge_agent.core import blobs, leases, protocol
from edge_agent.core.governor import PAUSE, RUN, STOP, Decision, Governor
from edge_agent.devices import Device
from edge_agent.identity import StateDir
from edge_agent.leases import Task, check_lease
from edge_agent.link import FetchError, Link, cancel_and_wait
from edge_agent.outbox import Checkpoint, OutboxEntry, Store
from edge_agent.runtime import AgentConfig, Stats, wait_or_timeout
from edge_agent.state_doc import StateReport

log = logging.getLogger(__name__)

COMPUTE_THREADS = 1


@dataclasses.dataclass(frozen=True)
class Progress:
    device_id: str
    kernel: str
    lease: bytes
    done_units: int
    total_units: int
    tasks_done: int


def _timed_step(execution: kernels.Execution, units: int) -> tuple[int, float]:
    """One chunk, timed inside the worker (so time queued for a thread is not counted)."""
    start = time.perf_counter()
    done = execution.step(units)
    return done, time.perf_counter() - start


def _next_chunk(done: int, elapsed: float, target_s: float) -> int:
    """Units for the next chunk from the last one's speed; grows at most 4x per chunk."""
    if elapsed <= 0:
        return max(1, done * 4)
    return max(1, min(int(done / elapsed * target_s), done * 4))


# --- the agent ------------------------------------------------------------------------------


class Agent:
    def __init__(
        self,
        state_dir: StateDir,
        device: Device,
        *,
        config: AgentConfig | None = None,
        governor: Governor | None = None,
        executor: Executor | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.config = config or AgentConfig()
        self.identity = state_dir.load_identity()
        credentials = state_dir.load_credentials()
        self.gateway_pub = state_dir.load_gateway_key()
        self.device_id = self.identity.device_id
        self.device = device
        self.governor = governor or Governor()
        self.store = Store(state_dir.db_path, blob_cache_bytes=self.config.blob_cache_bytes)
        self.stats = Stats()
        self.report = StateReport()
        self.link = Link(
            credentials,
            self.device_id,
            self.gateway_pub,
            config=self.config,
            store=self.store,
            stats=self.stats,
            report=self.report,
            on_leases=self._accept_leases,
        )
        # Inbox message types handled elsewhere: type -> handler(payload) (see Link).
        self.handlers = self.link.handlers
        self.claims = Claims(self.store, self.device_id, self.gateway_pub, self.identity.sign,
                             self.stats)
        self.handlers.update(self.claims.handlers)
        self.tasks_done = 0
        self._executor = executor
        self._on_progress = on_progress
        self._kernels = kernels.names()
        self._pending: list[Task] = []  # verified leases not started yet
        self._held: list[Task] = []  # started, stopped by the governor (checkpointed)
        self._current: Task | None = None
        self._idle = False  # the gateway said no_work and nothing is left here
        self._paused_episode = False

    @property
    def last_decision(self) -> Decision | None:
        return self.report.decision

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the agent to finish: checkpoint any task and disconnect cleanly."""
        self.link.stop()

    async def run(self) -> None:
        """Work until stop(), or the --max-tasks / --exit-when-idle condition holds."""
        self._resume_checkpoints()
        connection = asyncio.create_task(self.link.run(), name="edge-agent-mqtt")
        link = self.link
        claiming = asyncio.create_task(
            self.claims.run(link.publish, link.connected, link.stopping, self._busy),
            name="edge-agent-claims")
        try:
            await self._work_loop()
            # Done by itself: claim what is acked (the receipts wait in the session's inbox).
            await self.claims.send(link.publish, all_of_them=True)
        finally:
            self.stop()
            await cancel_and_wait([claiming])
            await connection
            self.store.close()

    def _busy(self) -> bool:
        """Working, or waiting for acks: claims wait for full batches (edge_agent/claims.py)."""
        return self._current is not None or bool(self.store.unacked())

    def _finished(self) -> bool:
        if self.link.stopping.is_set():
            return True
        if self.store.unacked():
            return False
        return self._at_task_limit() or (self._idle and not self._pending and not self._held)

    def _at_task_limit(self) -> bool:
        limit = self.config.max_tasks
        return limit is not None and self.tasks_done >= limit

    # -- leases from the inbox -------------------------------------------------------------------

    def _accept_leases(self, items: list[bytes]) -> None:
        now = int(time.time())
        for item in items:
            try:
                lease = check_lease(item, self.gateway_pub, self.device_id, now)
            except protocol.ProtocolError as exc:
                self.stats.bump("lease_rejected:" + exc.code)
                log.warning("%s: lease rejected: %s", self.device_id[:8], exc)
                continue
            if self._knows_lease(lease["lease"]):
                self.stats.bump("lease_duplicate")
                continue
            self._pending.append(Task(lease, item))
            self.stats.bump("leases_accepted")

    def _knows_lease(self, lease_id: bytes) -> bool:
        local = [*self._pending, *self._held, *([self._current] if self._current else [])]
        return any(t.lease_id == lease_id for t in local) or self.store.knows_lease(lease_id)

    # -- the governor ----------------------------------------------------------------------------

    def _decide(self) -> Decision:
        reading = self.device.read()
        decision: Decision = self.governor.decide(
            reading, self.device.clock_s(), self.device.minute_of_day()
        )
        previous = self.last_decision
        if previous is None or previous.action != decision.action:
            self.stats.bump("decision:" + decision.action)
        self.report.note(reading, decision)
        return decision

    async def _idle_for_recheck(self) -> None:
        wake = self.link.wake
        wake.clear()
        await wait_or_timeout(wake, self.config.recheck_s / self.device.speedup)

    # -- the work loop ---------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while not self._finished():
            decision = self._decide()
            if decision.action != RUN:
                if decision.action == STOP:
                    self._note_idle()
                await self._idle_for_recheck()
                continue
            task = self._next_task()
            if task is None:
                await self._pull()
                continue
            await self._run_task(task)

    def _next_task(self) -> Task | None:
        task: Task | None = leases.next_live((self._held, self._pending), int(time.time()),
                                             lambda t: self._drop(t, "lease_expired"))
        return task

    def _drop(self, task: Task, code: str) -> None:
        self.store.drop_checkpoint(task.lease_id)
        self.stats.bump("task_dropped:" + code)
        log.warning("%s: dropped lease %s: %s", self.device_id[:8], task.lease_id.hex(), code)

    async def _pull(self) -> None:
        """Ask for leases; on anything but leases, wait before the loop asks again."""
        cfg, link = self.config, self.link
        if self._at_task_limit() or len(self.store.unacked()) >= cfg.max_outbox:
            await self._idle_for_recheck()  # wait for acks, not more work
            return
        if not link.connected.is_set():
            await wait_or_timeout(link.connected, cfg.recheck_s / self.device.speedup)
            return
        outcome = await link.request_leases(self._kernels)
        if outcome == "leases":
            return
        if outcome == "no_work":
            # Only "empty" means there is nothing to do; unfit, rate_limited or busy pass.
            if link.last_no_work_code == "empty":
                self._note_idle()
            if not self._finished():
                await wait_or_timeout(link.stopping, link.retry_after_s)
            return
        await self._idle_for_recheck()  # timeout, publish failure or disconnect

    def _note_idle(self) -> None:
        """--exit-when-idle: nothing to do here (the gateway has no work, or the governor has
        stopped the device for a long while) and nothing started."""
        if self.config.exit_when_idle and not self._pending and not self._held:
            self._idle = True

    async def _resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The params with their blobs' bytes in place (each fetched blob is already checked
        against its hash, and the cache holds only checked blobs: no second hashing)."""
        fetched = {digest: await self.link.fetch_blob(digest) for digest in blobs.refs(params)}
        resolved: dict[str, Any] = blobs.resolve(params, fetched, verify=False)
        return resolved

    async def _run_task(self, task: Task) -> None:
        lease = task.lease
        try:
            params = await self._resolve_params(lease["params"])
            execution = kernels.Execution(
                lease["kernel"], params, self.config.kernel_backend, task.state
            )
        except (kernels.KernelError, FetchError) as exc:
            code = "bad_params" if isinstance(exc, kernels.KernelError) else "blob_failed"
            self.stats.bump("lease_rejected:" + code)
            self._drop(task, code)
            return
        if task.started == 0:
            task.started = int(time.time())
        self._current = task
        try:
            finished = await self._compute(task, execution)
        finally:
            self._current = None
        if finished:
            self._finish(task, execution)
            await self._publish_result(task.lease_id)

    async def _compute(self, task: Task, execution: kernels.Execution) -> bool:
        """Run chunks while the governor allows; False if the task was stopped or dropped."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._checkpoint(task, execution)
        last_checkpoint = loop.time()
        units = cfg.chunk_units or min(execution.total_units, 4096)
        self._paused_episode = False
        while not execution.done:
            if task.deadline <= int(time.time()):
                self._drop(task, "lease_expired")
                return False
            decision = self._decide() if not self.link.stopping.is_set() else None
            if decision is None or decision.action == STOP:
                self._checkpoint(task, execution)
                if decision is not None:
                    self._held.append(task)
                    self.stats.bump("tasks_stopped")
                return False
            if decision.action == PAUSE:
                if not self._paused_episode:
                    self._paused_episode = True
                    self.stats.bump("tasks_paused")
                await self._idle_for_recheck()
                continue
            self._paused_episode = False
            reading = self.report.reading
            self.device.set_load(COMPUTE_THREADS / max(1, reading.cpu_count if reading else 1))
            try:
                done, elapsed = await loop.run_in_executor(
                    self._executor, _timed_step, execution, units
                )
            finally:
                self.device.set_load(0.0)
            self.stats.bump("chunks")
            self._report(task, execution)
            if cfg.chunk_units is None:
                units = _next_chunk(done, elapsed, cfg.chunk_s)
            if loop.time() - last_checkpoint >= cfg.checkpoint_every_s:
                self._checkpoint(task, execution)
                last_checkpoint = loop.time()
            if decision.duty < 1.0 and not execution.done:
                # Duty cycle: idle (1 - duty) / duty of the time just spent computing.
                idle_s = elapsed * (1.0 - decision.duty) / decision.duty
                await wait_or_timeout(self.link.stopping, idle_s)
        return True

    def _checkpoint(self, task: Task, execution: kernels.Execution) -> None:
        task.state = execution.checkpoint()
        self.store.save_checkpoint(
            Checkpoint(
                task.lease_id,
                task.sealed,
                task.deadline,
                task.started,
                execution.done_units,
                task.state,
            )
        )
        self.stats.bump("checkpoints")

    def _report(self, task: Task, execution: kernels.Execution) -> None:
        if self._on_progress is not None:
            self._on_progress(
                Progress(
                    self.device_id,
                    execution.name,
                    task.lease_id,
                    execution.done_units,
                    execution.total_units,
                    self.tasks_done,
                )
            )

    def _finish(self, task: Task, execution: kernels.Execution) -> None:
        """Seal the result and store it durably (dropping the checkpoint) before any publish."""
        lease, result = task.lease, execution.result()
        body = protocol.message(
            "result",
            lease=lease["lease"],
            task=lease["task"],
            dev=self.device_id,
            kernel=lease["kernel"],
            rhash=protocol.result_hash(result),
            units=lease["units"],
            started=task.started,
            finished=int(time.time()),
        )
        sealed = bytes(protocol.seal(body, self.identity.sign, attachment=result))
        entry = OutboxEntry(lease["lease"], lease["task"], body["rhash"], sealed)
        self.store.store_result(entry, int(time.time()))
        self.tasks_done += 1
        self.stats.bump("results")
        self._report(task, execution)

    async def _publish_result(self, lease_id: bytes) -> None:
        entry = self.store.outbox_entry(lease_id)
        if entry is not None and await self.link.publish("result", entry.sealed):
            self.stats.bump("results_sent")

    # -- restart ---------------------------------------------------------------------------------

    def _resume_checkpoints(self) -> None:
        """Resume checkpointed tasks whose lease still verifies and has time left; drop others."""
        now = int(time.time())
        for cp in self.store.checkpoints():
            try:
                lease = check_lease(cp.sealed_lease, self.gateway_pub, self.device_id, now)
            except protocol.ProtocolError as exc:
                self.store.drop_checkpoint(cp.lease)
                self.stats.bump("checkpoint_dropped:" + exc.code)
                continue
            self._held.append(Task(lease, cp.sealed_lease, cp.state, cp.started))
            self.stats.bump("checkpoints_resumed")
