"""The gateway service: MQTT in, handlers, MQTT out; plus lease expiry and broker supervision.

One process is one worker. Workers share device streams through MQTT shared subscriptions
(``$share/gw/...``) and one ledger file (SQLite serialises their writes), so more workers can be
started against the same broker and state directory (``serve --broker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import aiomqtt

from edge_agent.core import protocol
from gateway.accounts import Accounts, ServeInfo
from gateway.broker import Broker, BrokerEndpoint
from gateway.config import ServiceLimits, StatePaths
from gateway.handlers_device import Context
from gateway.handlers_enrol import AccountBatcher
from gateway.jobflow import JobFlow
from gateway.keys import GatewayKey
from gateway.ledger import Ledger
from gateway.router import Router
from gateway.scheduler import Expiry, Scheduler, SchedulerConfig
from gateway.wire import Reply

log = logging.getLogger(__name__)

Clock = Callable[[], float]
SHARE_GROUP = "$share/gw/"
SUBSCRIPTIONS = (
    SHARE_GROUP + protocol.ROOT + "/dev/+/+",
    SHARE_GROUP + protocol.ROOT + "/enrol/+/req",
)
ENROL_PREFIX = protocol.ROOT + "/enrol/"


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
    ) -> None:
        """``endpoint``: the gateway account on the broker's gateway listener. ``broker``: our
        own Mosquitto (supervised, reloaded after account changes), None for an external one."""
        self.paths = paths.ensure()
        self.endpoint = endpoint
        self.broker = broker
        self.clock = clock
        self.limits = limits or ServiceLimits()
        self.worker = worker
        self.key = GatewayKey.load_or_create(paths.key)
        self.ledger = Ledger.open(paths.ledger, clock())
        self.jobs = JobFlow(self.ledger, clock)
        self.scheduler = Scheduler(self.ledger, scheduler_config, self.jobs.advance)
        self.ctx = Context(self.ledger, self.scheduler, self.key, self.jobs, clock, self.limits,
                           self._note_deadline)
        accounts = Accounts(paths, broker.reload if broker is not None else None)
        self.batcher = AccountBatcher(accounts, self.limits.enrol_batch_s,
                                      self.limits.token_retire_s)
        self.router = Router(self.ctx, self.batcher)
        self.ready = asyncio.Event()  # subscribed: messages published from now on are seen
        self.expired = asyncio.Event()  # set each time the expiry loop ended some leases
        self._expiry_wake = asyncio.Event()
        self._next_expiry = float("inf")
        self._enrols: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def counters(self) -> dict[str, int]:
        return self.ctx.counters

    # -- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down cleanly."""
        self.jobs.recover()
        workers = [
            asyncio.create_task(self._mqtt_loop(), name="gateway-mqtt"),
            asyncio.create_task(self._expiry_loop(), name="gateway-expiry"),
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
                    self.ready.set()
                    backoff = self.limits.reconnect_min_s
                    async for message in client.messages:
                        await self._dispatch(client, message)
            except aiomqtt.MqttError as exc:
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

