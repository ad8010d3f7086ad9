"""``edge-agent run``: the device's work loop, with the governor in charge.

Two coroutines share one :class:`Agent`:

* the **connection loop** keeps an MQTT session up (reconnecting with jittered exponential
  backoff), receives the inbox, publishes the retained ``state`` document (on change, at most
  once per ``state_every_s``) and re-sends every unacked result after each (re)connect;
* the **work loop** asks the governor, pulls leases when fit, checks each lease before anything
  runs, fetches and caches blobs, runs the kernel in chunks in a worker thread, asks the governor
  between chunks (run at its duty cycle, pause = hold in memory, stop = checkpoint and go idle),
  checkpoints every few seconds, and stores each sealed result durably before publishing it.

Computing does not need the connection: results made offline wait in the outbox.

One task at a time on one worker thread: the kernels are single-threaded, and one thread keeps a
phone's heat and a Pi's supply well inside what the governor models; the governor's ``threads``
is reported but not used to fan out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
import random
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import aiomqtt

from edge_agent import kernels
from edge_agent.core import cbor, protocol
from edge_agent.core.governor import PAUSE, RUN, STOP, Decision, Governor
from edge_agent.identity import IdentityError, StateDir, verify_ed25519
from edge_agent.outbox import Checkpoint, OutboxEntry, Store, StoredAck
from edge_agent.status import throttled
from hal.simulated import SimulatedBackend
from hal.state import Backend, DeviceState

log = logging.getLogger(__name__)

MAX_LEASE_BYTES = 131072  # an item of `leases` (protocol.SCHEMAS["leases"])
MAX_BLOB_BYTES = 1 << 24  # the largest kernel operand (gemm_i8 MAX_OPERAND)
INBOX_LIMIT = protocol.MAX_PAYLOAD["inbox"]
# Gateway errors about one of our results that will not change on a re-send: stop re-sending it.
FINAL_RESULT_ERRORS = frozenset(
    {
        "lease_expired",
        "unknown_task",
        "not_your_lease",
        "task_already_done",
        "task_canceled",
        "bad_result",
        "bad_result_hash",
        "bad_schema",
    }
)
COMPUTE_THREADS = 1


# --- the device: a HAL reading and the governor's clock --------------------------------------


class Device(Protocol):
    """What the agent needs of a device: readings, a clock for the governor, and a load input."""

    speedup: float  # device seconds per wall second (1 on real hardware)

    def read(self) -> DeviceState: ...

    def clock_s(self) -> float: ...

    def minute_of_day(self) -> int: ...

    def set_load(self, load: float) -> None: ...


class RealDevice:
    """Real hardware: the monotonic clock, local time, and the load is whatever we run."""

    speedup = 1.0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def read(self) -> DeviceState:
        return self.backend.read()

    def clock_s(self) -> float:
        return time.monotonic()

    def minute_of_day(self) -> int:
        local = time.localtime()
        return local.tm_hour * 60 + local.tm_min

    def set_load(self, load: float) -> None:
        pass  # real hardware heats by itself


class SimulatedDevice:
    """hal.simulated stepped along with the wall clock, ``speedup`` times faster, at the load
    the agent puts on it (a fraction of all cores), so heat and charge follow what it runs."""

    def __init__(self, sim: SimulatedBackend, speedup: float = 1.0) -> None:
        self.sim = sim
        self.speedup = speedup
        self._load = 0.0
        self._wall = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        dt = (now - self._wall) * self.speedup
        self._wall = now
        if dt > 0:
            self.sim.step(dt, self._load)

    def read(self) -> DeviceState:
        self._advance()
        return self.sim.read()

    def clock_s(self) -> float:
        self._advance()
        return self.sim.t_s

    def minute_of_day(self) -> int:
        return int(self.sim.minute_of_day)

    def set_load(self, load: float) -> None:
        self._advance()
        self._load = min(max(load, 0.0), 1.0)


# --- configuration, counters, progress ------------------------------------------------------


@dataclasses.dataclass
class AgentConfig:
    kernel_backend: str = "c"
    pull_n: int = 1
    pull_secs: int = 600
    reply_timeout_s: float = 10.0  # wall seconds to wait for leases or a blob part
    chunk_s: float = 0.5  # target wall seconds per chunk (adapted from measured speed)
    chunk_units: int | None = None  # fixed chunk size instead (tests, demos)
    checkpoint_every_s: float = 5.0
    recheck_s: float = 10.0  # device seconds between governor checks while not running
    state_every_s: float = 30.0  # at most one state document per this many wall seconds
    max_outbox: int = 64  # no new pulls while this many results wait for acks
    max_tasks: int | None = None  # exit once this many results are made and acked
    exit_when_idle: bool = False  # exit when the gateway has no work and nothing is pending
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    stable_after_s: float = 30.0  # a connection up this long resets the backoff
    max_queued_incoming: int = 256
    blob_retries: int = 3
    blob_cache_bytes: int = 64 * 1024 * 1024


class Stats:
    """Counters (``counts``), and a way for tests and the swarm to wait for them."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._changed = asyncio.Event()

    def bump(self, key: str, n: int = 1) -> None:
        self.counts[key] += n
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate()`` holds; it is checked after every counter change."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()


@dataclasses.dataclass(frozen=True)
class Progress:
    device_id: str
    kernel: str
    lease: bytes
    done_units: int
    total_units: int
    tasks_done: int


class Backoff:
    """Exponential backoff with "equal jitter": the delay is uniform in [d/2, d]."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.max_s, self.initial_s * 2.0**self.failures)
        self.failures += 1
        return delay * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self.failures = 0


# --- leases ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """A verified lease, and, once started, its progress."""

    lease: dict[str, Any]
    sealed: bytes
    state: dict[str, Any] | None = None  # kernel checkpoint to resume from
    started: int = 0

    @property
    def lease_id(self) -> bytes:
        lease_id: bytes = self.lease["lease"]
        return lease_id

    @property
    def deadline(self) -> int:
        return int(self.lease["deadline"])


def check_lease(sealed: bytes, gateway_pub: bytes, device_id: str, now: int) -> dict[str, Any]:
    """A lease's body if it may run here, else ProtocolError with the reason's code.

    Checks, in order: the gateway's signature and the schema, that it is for this device, that
    its kernel is in the registry, that its deadline has not passed, and the shape of blob
    references. The params themselves are validated by the kernel once blobs are resolved."""
    body: dict[str, Any]
    body, _, _ = protocol.open_sealed(
        sealed, MAX_LEASE_BYTES, verify_ed25519, gateway_pub, ("lease",)
    )
    if body["dev"] != device_id:
        raise protocol.ProtocolError("not_your_lease", f"lease is for device {body['dev']}")
    if body["kernel"] not in kernels.names():
        raise protocol.ProtocolError("unknown_kernel", f"no kernel {body['kernel']!r} here")
    if body["deadline"] <= now:
        raise protocol.ProtocolError("lease_expired", f"deadline {body['deadline']} has passed")
    blob_refs(body["params"])
    return body


def blob_refs(params: dict[str, Any]) -> dict[str, bytes]:
    """{param name: SHA-256} of the params given as ``{"blob": <sha256>}``."""
    refs: dict[str, bytes] = {}
    for name, value in params.items():
        if isinstance(value, dict):
            digest = value.get("blob")
            if set(value) != {"blob"} or type(digest) is not bytes or len(digest) != 32:
                raise protocol.ProtocolError("bad_params", f"param {name!r}: bad blob reference")
            refs[name] = digest
    return refs


class BlobError(RuntimeError):
    """A blob could not be fetched, or did not match its hash."""


def _timed_step(execution: kernels.Execution, units: int) -> tuple[int, float]:
    """One chunk, timed inside the worker (so time queued for a thread is not counted)."""
    start = time.perf_counter()
    done = execution.step(units)
    return done, time.perf_counter() - start


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
        self.credentials = state_dir.load_credentials()
        self.gateway_pub = state_dir.load_gateway_key()
        self.device_id = self.identity.device_id
        self.device = device
        self.governor = governor or Governor()
        self.store = Store(state_dir.db_path, blob_cache_bytes=self.config.blob_cache_bytes)
        self.stats = Stats()
        self.tasks_done = 0
        self.last_decision: Decision | None = None
        self._executor = executor
        # Inbox message types handled elsewhere: type -> handler(payload). A handler may raise
        # protocol.ProtocolError; it is counted like any rejected inbox message.
        self.handlers: dict[str, Callable[[bytes], None]] = {}
        self._on_progress = on_progress
        self._kernels = kernels.names()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # a lease, an ack or a connection arrived: look again
        self._pending: list[Task] = []  # verified leases not started yet
        self._held: list[Task] = []  # started, stopped by the governor (checkpointed)
        self._current: Task | None = None
        self._pull_waiters: dict[int, asyncio.Future[str]] = {}
        self._blob_waiters: dict[int, tuple[bytes, asyncio.Future[dict[str, Any]]]] = {}
        self._idle = False  # the gateway said no_work and nothing is left here
        self._retry_after_s = 1.0  # from the last no_work
        self._reading: DeviceState | None = None
        self._state_dirty = asyncio.Event()
        self._state_force = False
        self._state_sent_sig: tuple[Any, ...] | None = None
        self._state_sent_at = -float("inf")
        self._paused_episode = False

    # -- topics ----------------------------------------------------------------------------------

    def _topic(self, kind: str) -> str:
        return str(protocol.device_topic(self.device_id, kind))

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the agent to finish: checkpoint any task and disconnect cleanly."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Work until stop(), or the --max-tasks / --exit-when-idle condition holds."""
        self._resume_checkpoints()
        connection = asyncio.create_task(self._connection_loop(), name="edge-agent-mqtt")
        try:
            await self._work_loop()
        finally:
            self.stop()
            await connection
            self.store.close()

    def _finished(self) -> bool:
        if self._stopping.is_set():
            return True
        if self.store.unacked():
            return False
        limit = self.config.max_tasks
        return (limit is not None and self.tasks_done >= limit) or (
            self._idle and not self._pending and not self._held
        )

    # -- connection ------------------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        address = self.credentials.address
        offline = protocol.encode(protocol.message("state", online=False))
        return aiomqtt.Client(
            address.host,
            address.port,
            username=self.credentials.username,
            password=self.credentials.password,
            identifier=self.device_id,
            clean_session=False,  # the broker keeps acks and leases for us while we are away
            will=aiomqtt.Will(self._topic("state"), offline, qos=1, retain=True),
            timeout=self.config.reply_timeout_s,
            max_queued_incoming_messages=self.config.max_queued_incoming,
        )

    async def _connection_loop(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            connected_at: float | None = None
            try:
                async with self._new_client() as client:
                    connected_at = loop.time()
                    self.stats.bump("connects")
                    await self._serve(client)
                    offline = protocol.encode(protocol.message("state", online=False))
                    await client.publish(self._topic("state"), offline, qos=1, retain=True)
            except aiomqtt.MqttError as exc:
                self.stats.bump("connection_errors")
                log.warning("%s: MQTT connection lost or refused: %s", self.device_id[:8], exc)
            finally:
                self._client = None
                self._connected.clear()
                for waiter in self._pull_waiters.values():
                    if not waiter.done():
                        waiter.set_result("disconnected")
            if connected_at is not None and loop.time() - connected_at >= cfg.stable_after_s:
                backoff.reset()
            if not self._stopping.is_set():
                delay = backoff.next()
                self.stats.bump("reconnect_waits")
                await self._wait(self._stopping, delay)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """One connected session: returns on stop(), raises MqttError when the link drops."""
        await client.subscribe(protocol.inbox_topic(self.device_id), qos=1)
        workers: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._receive(client)),
            asyncio.create_task(self._send_states(client)),
            asyncio.create_task(self._resend(client)),
        ]
        stop: asyncio.Task[Any] = asyncio.create_task(self._stopping.wait())
        self._client = client
        self._connected.set()
        self._state_force = True
        self._state_dirty.set()
        self._wake.set()
        try:
            while True:
                done, _ = await asyncio.wait([*workers, stop], return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return
                for task in done:
                    task.result()  # re-raises MqttError
                    workers.remove(task)
        finally:
            await cancel_and_wait([*workers, stop])

    async def _resend(self, client: aiomqtt.Client) -> None:
        for entry in self.store.unacked():
            await client.publish(self._topic("result"), entry.sealed, qos=1)
            self.stats.bump("results_resent")

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                self.stats.bump("inbox_rejected:bad_cbor")
                continue
            self.handle_inbox(bytes(payload))

    async def _publish(self, kind: str, payload: bytes) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(self._topic(kind), payload, qos=1)
        except aiomqtt.MqttError as exc:
            self.stats.bump("publish_failed")
            log.info("%s: publish on %s failed: %s", self.device_id[:8], kind, exc)
            return False
        return True

    # -- the state document ----------------------------------------------------------------------

    def _state_doc(self, seq: int) -> bytes | None:
        reading, decision = self._reading, self.last_decision
        if reading is None or decision is None:
            return None
        fields = _state_fields(reading, decision)
        return bytes(
            protocol.encode(
                protocol.message("state", online=True, seq=seq, at=int(time.time()), **fields)
            )
        )

    async def _send_states(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._state_dirty.wait()
            wait_s = self._state_sent_at + self.config.state_every_s - loop.time()
            if wait_s > 0 and not self._state_force:
                await asyncio.sleep(wait_s)  # rate limit (pacing, not synchronisation)
            self._state_dirty.clear()
            self._state_force = False
            doc = self._state_doc(self.store.next_number("state_seq"))
            if doc is None:
                continue
            await client.publish(self._topic("state"), doc, qos=1, retain=True)
            self._state_sent_at = loop.time()
            if self.last_decision is not None and self._reading is not None:
                self._state_sent_sig = _state_signature(self._reading, self.last_decision)
            self.stats.bump("states_sent")

    # -- the inbox -------------------------------------------------------------------------------

    def handle_inbox(self, payload: bytes) -> None:
        """Act on one inbox message. Never raises: bad input is counted and logged."""
        try:
            self._dispatch(payload)
        except protocol.ProtocolError as exc:
            self.stats.bump("inbox_rejected:" + exc.code)
            log.warning("%s: inbox message rejected: %s", self.device_id[:8], exc)
        except Exception:
            self.stats.bump("inbox_rejected:internal")
            log.exception("%s: inbox message broke a handler", self.device_id[:8])

    def _dispatch(self, payload: bytes) -> None:
        if len(payload) > INBOX_LIMIT:
            raise protocol.ProtocolError("too_large", f"{len(payload)} bytes")
        try:
            envelope = cbor.loads(payload, max_size=INBOX_LIMIT)
        except cbor.CBORError as exc:
            raise protocol.ProtocolError("bad_cbor", str(exc)) from None
        kind = envelope.get("t") if isinstance(envelope, dict) else None
        extra = self.handlers.get(kind) if isinstance(kind, str) else None
        if extra is not None:
            extra(payload)  # e.g. claim receipts and settlements (docs/REWARDS.md)
            return
        if kind == "ack":
            ack, _, _ = protocol.open_sealed(
                payload, INBOX_LIMIT, verify_ed25519, self.gateway_pub, ("ack",)
            )
            self._on_ack(ack, payload)
            return
        body = protocol.validate(envelope, ("leases", "no_work", "blob_part", "error"))
        if kind == "leases":
            self._on_leases(body)
        elif kind == "no_work":
            self._on_no_work(body)
        elif kind == "blob_part":
            waiter = self._blob_waiters.get(body["req"])
            if waiter is None or waiter[1].done():
                self.stats.bump("inbox_unexpected:blob_part")
            else:
                waiter[1].set_result(body)
        else:
            self._on_error(body)

    def _on_leases(self, body: dict[str, Any]) -> None:
        now = int(time.time())
        for item in body["items"]:
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
        self._resolve_pull(body["req"], "leases")

    def _knows_lease(self, lease_id: bytes) -> bool:
        local = [*self._pending, *self._held, *([self._current] if self._current else [])]
        return any(t.lease_id == lease_id for t in local) or self.store.knows_lease(lease_id)

    def _on_no_work(self, body: dict[str, Any]) -> None:
        self.stats.bump("no_work:" + body["code"])
        self._retry_after_s = float(body["retry"])
        self._resolve_pull(body["req"], "no_work")

    def _resolve_pull(self, req: int, outcome: str) -> None:
        waiter = self._pull_waiters.get(req)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)
        self._wake.set()

    def _on_ack(self, ack: dict[str, Any], sealed: bytes) -> None:
        if ack["dev"] != self.device_id:
            raise protocol.ProtocolError("not_your_lease", f"ack for device {ack['dev']}")
        stored = StoredAck(
            ack["lease"],
            ack["task"],
            ack["rhash"],
            ack["status"],
            ack["seq"],
            ack["credit"],
            sealed,
        )
        if self.store.store_ack(stored):
            self.stats.bump("acks")
            self._wake.set()
        else:
            self.stats.bump("ack_unknown")

    def _on_error(self, err: dict[str, Any]) -> None:
        code, ref = err["code"], err.get("ref")
        self.stats.bump("gateway_error:" + code)
        log.warning("%s: gateway error %s: %s", self.device_id[:8], code, err["msg"])
        if ref is None:
            return
        for digest, waiter in self._blob_waiters.values():
            if digest == ref and not waiter.done():
                waiter.set_exception(BlobError(f"gateway: {code} {err['msg']}"))
        if code in FINAL_RESULT_ERRORS and self.store.refuse(ref, code):
            self.stats.bump("results_refused")

    # -- the governor ----------------------------------------------------------------------------

    def _decide(self) -> Decision:
        reading = self.device.read()
        decision: Decision = self.governor.decide(
            reading, self.device.clock_s(), self.device.minute_of_day()
        )
        previous = self.last_decision
        if previous is None or previous.action != decision.action:
            self.stats.bump("decision:" + decision.action)
        self._reading, self.last_decision = reading, decision
        if _state_signature(reading, decision) != self._state_sent_sig:
            self._state_dirty.set()
        return decision

    async def _wait(self, event: asyncio.Event, wall_s: float) -> None:
        """Wait until ``event`` is set or ``wall_s`` passes (pacing, not synchronisation)."""
        if wall_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), wall_s)

    async def _idle_for_recheck(self) -> None:
        self._wake.clear()
        await self._wait(self._wake, self.config.recheck_s / self.device.speedup)

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
        now = int(time.time())
        for queue in (self._held, self._pending):
            queue.sort(key=lambda t: t.deadline)
            while queue:
                task = queue.pop(0)
                if task.deadline > now:
                    return task
                self._drop(task, "lease_expired")
        return None

    def _drop(self, task: Task, code: str) -> None:
        self.store.drop_checkpoint(task.lease_id)
        self.stats.bump("task_dropped:" + code)
        log.warning("%s: dropped lease %s: %s", self.device_id[:8], task.lease_id.hex(), code)

    async def _pull(self) -> None:
        """Ask for leases; on anything but leases, wait before the loop asks again."""
        cfg = self.config
        limit = cfg.max_tasks
        if (limit is not None and self.tasks_done >= limit) or len(
            self.store.unacked()
        ) >= cfg.max_outbox:
            await self._idle_for_recheck()  # wait for acks, not more work
            return
        if not self._connected.is_set():
            await self._wait(self._connected, cfg.recheck_s / self.device.speedup)
            return
        outcome = await self._request_leases()
        if outcome == "leases":
            return
        if outcome == "no_work":
            self._note_idle()
            if not self._finished():
                await self._wait(self._stopping, self._retry_after_s)
            return
        await self._idle_for_recheck()  # timeout, publish failure or disconnect

    async def _request_leases(self) -> str:
        cfg = self.config
        req = self.store.next_number("pull_req")
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pull_waiters[req] = waiter
        body = protocol.message(
            "pull", req=req, n=cfg.pull_n, secs=cfg.pull_secs, kernels=self._kernels
        )
        try:
            if not await self._publish("pull", protocol.encode(body)):
                return "publish_failed"
            self.stats.bump("pulls")
            return await asyncio.wait_for(waiter, cfg.reply_timeout_s)
        except TimeoutError:
            self.stats.bump("pull_timeouts")
            return "timeout"
        finally:
            self._pull_waiters.pop(req, None)

    def _note_idle(self) -> None:
        """--exit-when-idle: nothing to do here (the gateway has no work, or the governor has
        stopped the device for a long while) and nothing started."""
        if self.config.exit_when_idle and not self._pending and not self._held:
            self._idle = True

    async def _run_task(self, task: Task) -> None:
        lease = task.lease
        try:
            params = await self._resolve_params(lease["params"])
            execution = kernels.Execution(
                lease["kernel"], params, self.config.kernel_backend, task.state
            )
        except (kernels.KernelError, BlobError) as exc:
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
            decision = self._decide() if not self._stopping.is_set() else None
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
            load = COMPUTE_THREADS / max(1, self._reading.cpu_count if self._reading else 1)
            self.device.set_load(load)
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
                await self._wait(self._stopping, elapsed * (1.0 - decision.duty) / decision.duty)
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
        if entry is not None and await self._publish("result", entry.sealed):
            self.stats.bump("results_sent")

    # -- blobs -----------------------------------------------------------------------------------

    async def _resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        resolved = dict(params)
        for name, digest in blob_refs(params).items():
            resolved[name] = await self._blob(digest)
        return resolved

    async def _blob(self, digest: bytes) -> bytes:
        cached = self.store.get_blob(digest)
        if cached is not None:
            self.stats.bump("blob_cache_hits")
            return cached
        parts: list[bytes] = []
        offset, total = 0, -1
        while offset != total:
            part = await self._blob_part(digest, offset)
            if part["hash"] != digest or part["off"] != offset:
                raise BlobError("blob_part for another hash or offset")
            if total < 0:
                total = part["total"]
                if total > MAX_BLOB_BYTES:
                    raise BlobError(f"blob of {total} bytes is larger than {MAX_BLOB_BYTES}")
            if part["total"] != total or (not part["data"] and offset < total):
                raise BlobError("inconsistent blob_part")
            parts.append(part["data"])
            offset += len(part["data"])
            if offset > total:
                raise BlobError("blob longer than announced")
        blob = b"".join(parts)
        if hashlib.sha256(blob).digest() != digest:
            self.stats.bump("blob_bad_hash")
            raise BlobError(f"blob {digest.hex()} does not match its hash")
        self.store.put_blob(digest, blob)
        self.stats.bump("blobs_fetched")
        return blob

    async def _blob_part(self, digest: bytes, offset: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for _ in range(self.config.blob_retries):
            if not self._connected.is_set():
                await self._wait(self._connected, self.config.reply_timeout_s)
            req = self.store.next_number("blob_req")
            waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._blob_waiters[req] = (digest, waiter)
            get = protocol.message(
                "blob_get", req=req, hash=digest, off=offset, len=protocol.BLOB_PART
            )
            try:
                if await self._publish("blob", protocol.encode(get)):
                    self.stats.bump("blob_gets")
                    return await asyncio.wait_for(waiter, self.config.reply_timeout_s)
            except TimeoutError:
                self.stats.bump("blob_timeouts")
            finally:
                self._blob_waiters.pop(req, None)
        tries = self.config.blob_retries
        raise BlobError(f"no blob_part for {digest.hex()} after {tries} tries")

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


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they are done, cancelling again while any is still pending:
    on Python 3.11 asyncio.wait_for (inside aiomqtt's publish) can swallow a cancellation that
    arrives as its inner future completes (CPython gh-86296), and the task would run on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


def _next_chunk(done: int, elapsed: float, target_s: float) -> int:
    """Units for the next chunk from the last one's speed; grows at most 4x per chunk."""
    if elapsed <= 0:
        return max(1, done * 4)
    return max(1, min(int(done / elapsed * target_s), done * 4))


def _clamp(value: int | None, lo: int, hi: int) -> int | None:
    return None if value is None else min(max(value, lo), hi)


def _state_fields(reading: DeviceState, decision: Decision) -> dict[str, Any]:
    """The coarse, personal-data-free fields of a ``state`` document."""
    return {
        "battery_pct": _clamp(reading.battery_percent, 0, 100),
        "charging": reading.charging,
        "battery_dc": _clamp(reading.battery_temp_dc, 0, 2000),
        "hottest_mc": _clamp(reading.hottest_zone_mc, 0, 200000),
        "throttled": throttled(reading),
        "decision": decision.action,
        "code": decision.reason[:32],
        "why": decision.text[:120],
        "duty_pm": int(decision.duty * 1000 + 0.5),
    }


def _state_signature(reading: DeviceState, decision: Decision) -> tuple[Any, ...]:
    """What makes a state document worth sending: whole degrees, 5 % duty steps."""
    f = _state_fields(reading, decision)
    return (
        f["battery_pct"],
        f["charging"],
        None if f["battery_dc"] is None else f["battery_dc"] // 10,
        None if f["hottest_mc"] is None else f["hottest_mc"] // 1000,
        f["throttled"],
        f["decision"],
        f["code"],
        f["duty_pm"] // 50,
    )


# --- `edge-agent run` -----------------------------------------------------------------------


def device_for(backend: Backend, speedup: float) -> Device:
    if isinstance(backend, SimulatedBackend):
        return SimulatedDevice(backend, speedup)
    return RealDevice(backend)


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        kernel_backend=args.kernel_backend,
        max_tasks=args.max_tasks,
        exit_when_idle=args.exit_when_idle,
        state_every_s=args.state_every,
    )


async def run_agents(agents: list[Agent]) -> None:
    """Run agents until they finish; SIGINT/SIGTERM stop them cleanly (checkpoint, offline)."""
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for agent in agents:
            agent.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all)
    try:
        await asyncio.gather(*(agent.run() for agent in agents))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_main(args: argparse.Namespace) -> int:
    from hal.detect import open_backend

    backend = open_backend(
        args.hal,
        sysfs_root=args.sysfs_root,
        vcgencmd=args.vcgencmd,
        termux_command=args.termux_command,
    )

    async def main() -> Agent:
        agent = Agent(StateDir(args.state_dir), device_for(backend, args.speedup), config=config)
        await run_agents([agent])
        return agent

    config = config_from_args(args)
    try:
        agent = asyncio.run(main())
    except IdentityError as exc:
        print(f"edge-agent run: {exc}", file=sys.stderr)
        return 2
    counts = dict(sorted(agent.stats.counts.items()))
    print(f"{agent.device_id}: {agent.tasks_done} tasks done; {counts}")
    return 0
