"""The gateway service: MQTT in, handlers, MQTT out; plus lease expiry and broker supervision.

One process is one worker. Workers share device streams through MQTT shared subscriptions
(``$share/gw/...``) and one ledger file (SQLite serialises their writes), so more workers can be
started against the same broker and state directory (``serve --broker``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import aiomqtt

from edge_agent import kernels
from edge_agent.core import cbor, protocol
from gateway.accounts import Accounts, ServeInfo
from gateway.broker import Broker, BrokerEndpoint
from gateway.config import ServiceLimits, StatePaths
from gateway.epochs import mark_published, owed_proofs
from gateway.handlers_device import Context
from gateway.handlers_enrol import AccountBatcher
from gateway.handlers_result import ack_signer, notice_replies
from gateway.jobflow import JobFlow
from gateway.keys import GatewayKey
from gateway.ledger import Ledger
from gateway.router import Router
from gateway.scheduler import Expiry, Scheduler, SchedulerConfig
from gateway.tokens import prune_expired_tokens
from gateway.trust import TrustConfig
from gateway.verifier import Verifier, VerifierConfig
from gateway.wire import Reply

log = logging.getLogger(__name__)


class _NoPendingPublishes(logging.Filter):
    """aiomqtt warns for every publish while more than 10 await their PUBACK, which is how the
    gateway sends (bounded by ServiceLimits.max_unacked_replies): one line per proof of an
    epoch. Everything else it logs is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("pending publish calls.")


MQTT_LOG = logging.getLogger("gateway.mqtt")
MQTT_LOG.addFilter(_NoPendingPublishes())

Clock = Callable[[], float]
SHARE_GROUP = "$share/gw/"
SUBSCRIPTIONS = (
    SHARE_GROUP + protocol.ROOT + "/dev/+/+",
    SHARE_GROUP + protocol.ROOT + "/enrol/+/req",
)
ENROL_PREFIX = protocol.ROOT + "/enrol/"
KernelRun = Callable[[str, dict[str, Any]], dict[str, Any]]
MAX_UNDELIVERED = 10_000  # acks resolved while the broker was away, sent on reconnect


def run_c_kernel(kernel: str, params: dict[str, Any]) -> dict[str, Any]:
    """The gateway's own run of a task: the C kernel (docs/TRUST.md, known_answer)."""
    return kernels.run(kernel, params, backend="c")


def _shedding_queue(count: Callable[[str], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's bounded incoming queue, counting what it sheds when full (aiomqtt drops the
    message and logs; the device retries: a pull times out, a result is sent again)."""

    class SheddingQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            if self.full():
                count("shed:queue_full")
            super().put_nowait(item)

    return SheddingQueue


class GatewayService:
    def __init__(
        self,
        paths: StatePaths,
        endpoint: BrokerEndpoint,
        *,
        broker: Broker | None = None,
        clock: Clock = time.time,
        limits: ServiceLimits | None = None,
        scheduler_config: SchedulerConfig | None = None,
        worker: str = "1",
        trust: TrustConfig | None = None,
        verifier_config: VerifierConfig | None = None,
        trust_rng: random.Random | None = None,
        run_kernel: KernelRun = run_c_kernel,
    ) -> None:
        """``endpoint``: the gateway account on the broker's gateway listener. ``broker``: our
        own Mosquitto (supervised, reloaded after account changes), None for an external one.
        ``trust``, ``verifier_config``: docs/TRUST.md; ``trust_rng`` None is SystemRandom (a
        seeded one is for tests only: checks must not be predictable). ``run_kernel``: how the
        gateway runs a task itself (spot checks, canary answers), in a worker thread."""
        self.paths = paths.ensure()
        self.endpoint = endpoint
        self.broker = broker
        self.clock = clock
        self.limits = limits or ServiceLimits()
        self.worker = worker
        self.key = GatewayKey.load_or_create(paths.key)
        self.ledger = Ledger.open(paths.ledger, clock())
        self.jobs = JobFlow(self.ledger, clock)
        self.verifier = Verifier.load(self.ledger.trust, trust, verifier_config, trust_rng)
        self.scheduler = Scheduler(self.ledger, scheduler_config, self.jobs.advance,
                                   on_job_done=self.jobs.finish, verifier=self.verifier,
                                   sign_ack=ack_signer(self.key, clock,
                                                       self.ledger.ack_credit))
        self.run_kernel = run_kernel
        self.ctx = Context(self.ledger, self.scheduler, self.key, self.jobs, clock, self.limits,
                           self._note_deadline)
        self.accounts = Accounts(paths, broker.reload if broker is not None else None)
        self.batcher = AccountBatcher(self.accounts, self.limits.enrol_batch_s,
                                      self.limits.token_retire_s)
        self.router = Router(self.ctx, self.batcher)
        self.ready = asyncio.Event()  # subscribed: messages published from now on are seen
        self.expired = asyncio.Event()  # set each time the expiry loop ended some leases
        self._expiry_wake = asyncio.Event()
        self._next_expiry = float("inf")
        self._enrols: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()
        self._verify_wake = asyncio.Event()
        self.verifier.wake = self._verify_wake.set
        self.verified = asyncio.Event()  # set after each own run of the gateway (check, canary)
        self.tokens_pruned = asyncio.Event()  # set after each pass of the token pruning
        self._connected: aiomqtt.Client | None = None
        self._undelivered: collections.deque[Reply] = collections.deque(maxlen=MAX_UNDELIVERED)

    @property
    def counters(self) -> dict[str, int]:
        trust = {f"trust:{name}": n for name, n in self.verifier.counters.items()}
        return {**self.ctx.counters, **trust}

    # -- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down cleanly."""
        self.jobs.recover()
        workers = [
            asyncio.create_task(self._mqtt_loop(), name="gateway-mqtt"),
            asyncio.create_task(self._expiry_loop(), name="gateway-expiry"),
            asyncio.create_task(self._verify_loop(), name="gateway-verify"),
            asyncio.create_task(self._settlement_loop(), name="gateway-settlements"),
            asyncio.create_task(self._token_prune_loop(), name="gateway-token-prune"),
        ]
        if self.broker is not None:
            workers.append(asyncio.create_task(self._snapshot_loop(), name="gateway-snapshot"))
            workers.append(asyncio.create_task(
                self.broker.supervise(on_restart=lambda n: self._snapshot()),
                name="gateway-broker"))
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopping, *workers],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping:
                    task.result()  # a worker that ends on its own has failed: raise it
        finally:
            await self._shutdown([stopping, *workers])

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        for task in [*tasks, *self._enrols, *self._sending]:
            task.cancel()
        await asyncio.gather(*tasks, *self._enrols, *self._sending, return_exceptions=True)
        try:
            await self.batcher.close()
        except Exception:
            log.exception("removing spent token accounts failed at shutdown")
        if self.broker is not None:
            with contextlib.suppress(FileNotFoundError):
                self.paths.serve_info.unlink()
        self.ledger.close()
        log.info("gateway worker %s stopped; counters: %s", self.worker, self.counters)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.endpoint.host, self.endpoint.port,
            username=self.endpoint.username, password=self.endpoint.password,
            identifier=f"edge-gateway-{self.worker}",
            logger=MQTT_LOG,
            clean_session=False,  # results sent while this worker is away are queued for it
            queue_type=_shedding_queue(self.ctx.count),
            max_queued_incoming_messages=self.limits.incoming_queue,
            timeout=10.0,
            # Replies are small packets written right after the PUBACK of the request: without
            # NODELAY, Nagle holds them until the broker's delayed ACK (~40 ms each, measured).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def _mqtt_loop(self) -> None:
        backoff = self.limits.reconnect_min_s
        while True:
            try:
                async with self._client() as client:
                    for topic in SUBSCRIPTIONS:
                        await client.subscribe(topic, qos=1)
                    log.info("worker %s subscribed at %s", self.worker, self.endpoint.url)
                    self._connected = client
                    self.ready.set()
                    backoff = self.limits.reconnect_min_s
                    owed = list(self._undelivered)
                    self._undelivered.clear()
                    await self._send(client, owed)
                    await self.publish_settlements()
                    async for message in client.messages:
                        await self._dispatch(client, message)
            except aiomqtt.MqttError as exc:
                self._connected = None
                self.ready.clear()
                self.ctx.count("mqtt_reconnects")
                log.warning("MQTT connection lost (%s); reconnecting in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)  # reconnect backoff, not synchronisation
                backoff = min(backoff * 2, self.limits.reconnect_max_s)

    async def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if topic.startswith(ENROL_PREFIX):
            # Enrolments wait for a batched broker reload: they run beside the stream.
            if len(self._enrols) >= self.limits.max_enrols_in_flight:
                await self._send(client, self.router.busy(topic))
                return
            task = asyncio.create_task(self._enrol(client, topic, payload))
            self._enrols.add(task)
            task.add_done_callback(self._enrols.discard)
            return
        await self._send(client, await self.router.handle(topic, payload))

    async def _send(self, client: aiomqtt.Client, replies: list[Reply]) -> None:
        """Publish without waiting for each PUBACK (the stream goes on; paho keeps the order of
        QoS 1 publishes), but with at most ``max_unacked_replies`` outstanding."""
        for reply in replies:
            while len(self._sending) >= self.limits.max_unacked_replies:
                await asyncio.wait(self._sending, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.create_task(client.publish(reply.topic, reply.payload, qos=1))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The connection dropped: devices repeat what went unanswered (a repeated result
            # gets its stored ack again).
            self.ctx.count("reply_lost")

    async def _enrol(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        await self._send(client, await self.router.handle(topic, payload))

    async def _publish(self, replies: list[Reply]) -> None:
        """Replies made away from a message (verifications resolved in the background)."""
        client = self._connected
        if client is None:
            self._undelivered.extend(replies)  # the ledger keeps each result's latest ack too
            return
        await self._send(client, replies)

    # -- settlements: proofs nobody has published yet -----------------------------------------

    async def publish_settlements(self) -> int:
        """Send every device its proof of each epoch not published yet (closed while no serve
        ran, or by a settle that could not reach the broker: gateway/epochs.py); the number
        of epochs. Devices hold persistent sessions, so offline ones get theirs on reconnect."""
        client = self._connected
        if client is None:
            return 0
        epochs, replies = owed_proofs(self.ledger)
        await self._send(client, replies)
        mark_published(self.ledger, epochs, self.clock())
        if epochs:
            self.ctx.count("settlement_proofs_sent", len(replies))
        return len(epochs)

    async def _settlement_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.expiry_max_wait_s)  # a timer: epochs are rare
            await self.publish_settlements()

    # -- expired enrolment tokens: pruned at start, then every token_prune_every_s -----------

    async def prune_tokens(self) -> int:
        """Remove the accounts and ledger rows of tokens that expired unused (gateway/tokens.py,
        after ``token_prune_grace_s``); how many."""
        before = self.clock() - self.limits.token_prune_grace_s
        pruned = await prune_expired_tokens(self.ledger, self.accounts, before)
        if pruned:
            self.ctx.count("tokens_pruned", pruned)
            log.info("%d expired unused enrolment tokens pruned", pruned)
        self.tokens_pruned.set()
        return pruned

    async def _token_prune_loop(self) -> None:
        while True:
            try:
                await self.prune_tokens()
            except Exception:  # e.g. the broker did not reload: the next pass tries again
                log.exception("pruning expired enrolment tokens failed")
                self.ctx.count("token_prune_failed")
            await asyncio.sleep(self.limits.token_prune_every_s)  # a timer: tokens expire rarely

    # -- verification: the gateway's own runs ------------------------------------------------

    async def _verify_loop(self) -> None:
        """Run what the trust layer owes (spot checks, rechecks, disagreements) and keep the
        canary pool filled. Kernels run in a worker thread, one at a time, so MQTT handling
        never waits for one; the queue is the ledger (tasks owed a run, read a small batch at a
        time), so nothing is lost at a restart and memory stays bounded."""
        broken: set[int] = set()  # tasks whose run raised: not retried by this worker
        while True:
            self._verify_wake.clear()
            worked = False
            for task in self.scheduler.spots_owed(frozenset(broken)):
                worked = True
                try:
                    params = self.jobs.resolved_params(task.params_cbor)
                    answer = await asyncio.to_thread(self.run_kernel, task.kernel, params)
                except Exception:
                    log.exception("the gateway's run of task %d failed", task.id)
                    broken.add(task.id)
                    continue
                notices = self.scheduler.on_reference(task.id, answer, self.clock())
                await self._publish(notice_replies(notices))
                self.verified.set()
            worked = await self._make_canary() or worked
            if not worked:
                # Woken by a result owing a run, a canary taken or missed; at the latest after
                # a while (jobs submitted by another process do not wake it).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._verify_wake.wait(),
                                           self.limits.expiry_max_wait_s)

    async def _make_canary(self) -> bool:
        """Precompute one canary's answer if the pool has room; True if one was added."""
        wanted = self.verifier.next_canary(self.ledger.trust)
        if wanted is None:
            return False
        template, params = wanted
        try:
            resolved = self.jobs.resolved_params(cbor.dumps(params))
            answer = await asyncio.to_thread(self.run_kernel, template.kernel, resolved)
        except Exception:
            log.exception("a canary from task %d failed", template.id)
            return False
        self.verifier.add_canary(template, params, answer)
        self.verified.set()
        return True

    # -- lease expiry -------------------------------------------------------------------------

    def _note_deadline(self, deadline: float) -> None:
        if deadline < self._next_expiry:
            self._expiry_wake.set()

    def expire_now(self) -> list[Expiry]:
        expired = self.scheduler.expire(self.clock())
        if expired:
            self.ctx.counters["leases_expired"] = (
                self.ctx.counters.get("leases_expired", 0) + len(expired))
            log.info("%d leases expired", len(expired))
        return expired

    def kick_expiry(self) -> None:
        """Re-check deadlines now (e.g. after the clock moved)."""
        self._expiry_wake.set()

    async def _expiry_loop(self) -> None:
        """Expire overdue leases, then sleep until the next deadline (or a new, earlier one)."""
        while True:
            self._expiry_wake.clear()
            if self.expire_now():
                self.expired.set()
            self.scheduler.sweep_replicas(self.clock())
            deadline = self.ledger.next_deadline()
            wait = self.limits.expiry_max_wait_s
            if deadline is not None:
                # expire() ends leases whose deadline is strictly past: wake just after it.
                wait = min(wait, max(0.0, deadline - self.clock()) + 0.01)
                self._next_expiry = deadline
            else:
                self._next_expiry = float("inf")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._expiry_wake.wait(), wait)

    # -- serve.json ---------------------------------------------------------------------------

    def _snapshot(self) -> None:
        broker = self.broker
        if broker is None:
            return
        ServeInfo(os.getpid(), broker.pid, broker.url, broker.host, broker.port,
                  broker.gateway_url, dict(self.counters)).save(self.paths.serve_info)

    async def _snapshot_loop(self) -> None:
        while True:
            self._snapshot()
            await asyncio.sleep(self.limits.snapshot_every_s)  # periodic report, a timer

