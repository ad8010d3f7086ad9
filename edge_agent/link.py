"""The agent's MQTT link to the gateway: one session kept up, the inbox, requests and replies.

* the **connection loop** keeps an MQTT session up (reconnecting with jittered exponential
  backoff), receives the inbox, publishes the retained ``state`` document (on change, at most
  once per ``state_every_s``) and re-sends every unacked result after each (re)connect and,
  while connected, each one still unacked ``resend_after_s`` after it was last sent;
* **inbox dispatch** checks every message (size, CBOR, schema or signature) and acts on it:
  leases go to the work loop, acks and final errors to the outbox, replies to their waiters;
* **requests**: ``pull`` (wait for ``leases`` or ``no_work``) and blobs (``blob_get`` in parts,
  cache first, the SHA-256 of the whole checked).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

import aiomqtt

from edge_agent.core import cbor, protocol, signing
from edge_agent.identity import Credentials
from edge_agent.outbox import Store, StoredAck
from edge_agent.runtime import AgentConfig, Stats, wait_or_timeout
from edge_agent.state_doc import StateReport, offline_document

log = logging.getLogger(__name__)

MAX_BLOB_BYTES = 1 << 24  # the largest kernel operand (gemm_i8 MAX_OPERAND)
# A result still unacked this long after it was (re)sent is sent again: the gateway sheds
# messages when its queue is full, and a lost ack leaves nothing else to trigger a re-send.
RESEND_AFTER_S = 30.0
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


class FetchError(RuntimeError):
    """A blob could not be fetched, or did not match its hash."""


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


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they are done, cancelling again while any is still pending:
    on Python 3.11 asyncio.wait_for (inside aiomqtt's publish) can swallow a cancellation that
    arrives as its inner future completes (CPython gh-86296), and the task would run on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


class Link:
    """One device's MQTT session. ``on_leases(items)`` takes the sealed leases of a ``leases``
    reply; ``handlers[type] = fn(payload)`` takes other inbox types (claim receipts,
    settlements: docs/REWARDS.md) and may raise ProtocolError like any rejected message."""

    def __init__(
        self,
        credentials: Credentials,
        device_id: str,
        gateway_pub: bytes,
        *,
        config: AgentConfig,
        store: Store,
        stats: Stats,
        report: StateReport,
        on_leases: Callable[[list[bytes]], None],
        resend_after_s: float = RESEND_AFTER_S,
    ) -> None:
        self.credentials = credentials
        self.device_id = device_id
        self.gateway_pub = gateway_pub
        self.config = config
        self.store = store
        self.stats = stats
        self.report = report
        self.handlers: dict[str, Callable[[bytes], None]] = {}
        self.connected = asyncio.Event()
        # This session's first state document is out: the gateway judges a pull by the last
        # state it has, so a pull that overtook it would get "unfit: no_state, retry in 60 s".
        self.state_sent = asyncio.Event()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()  # a lease, an ack or a connection arrived: look again
        self.retry_after_s = 1.0  # from the last no_work
        self.last_no_work_code = ""  # "empty" means the gateway has no work at all
        self.resend_after_s = resend_after_s
        self._on_leases = on_leases
        self._client: aiomqtt.Client | None = None
        self._pull_waiters: dict[int, asyncio.Future[str]] = {}
        self._blob_waiters: dict[int, tuple[bytes, asyncio.Future[dict[str, Any]]]] = {}

    def _topic(self, kind: str) -> str:
        return str(protocol.device_topic(self.device_id, kind))

    def stop(self) -> None:
        """End the session cleanly (state offline, disconnect) and wake whoever waits."""
        self.stopping.set()
        self.wake.set()

    # -- the session -----------------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        address = self.credentials.address
        return aiomqtt.Client(
            address.host,
            address.port,
            username=self.credentials.username,
            password=self.credentials.password,
            identifier=self.device_id,
            clean_session=False,  # the broker keeps acks and leases for us while we are away
            will=aiomqtt.Will(self._topic("state"), offline_document(), qos=1, retain=True),
            timeout=self.config.reply_timeout_s,
            max_queued_incoming_messages=self.config.max_queued_incoming,
            # Pulls and results are small packets that wait for an answer: without NODELAY,
            # Nagle holds each until the broker's delayed ACK (~40 ms, measured at the gateway).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def run(self) -> None:
        """Keep a session up until stop(), reconnecting after a jittered backoff."""
        cfg = self.config
        backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            connected_at: float | None = None
            try:
                async with self._new_client() as client:
                    connected_at = loop.time()
                    self.stats.bump("connects")
                    await self._serve(client)
                    await client.publish(
                        self._topic("state"), offline_document(), qos=1, retain=True
                    )
            except aiomqtt.MqttError as exc:
                self.stats.bump("connection_errors")
                log.warning("%s: MQTT connection lost or refused: %s", self.device_id[:8], exc)
            finally:
                self._client = None
                self.connected.clear()
                self.state_sent.clear()
                for waiter in self._pull_waiters.values():
                    if not waiter.done():
                        waiter.set_result("disconnected")
            if connected_at is not None and loop.time() - connected_at >= cfg.stable_after_s:
                backoff.reset()
            if not self.stopping.is_set():
                delay = backoff.next()
                self.stats.bump("reconnect_waits")
                await wait_or_timeout(self.stopping, delay)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """One connected session: returns on stop(), raises MqttError when the link drops."""
        await client.subscribe(protocol.inbox_topic(self.device_id), qos=1)
        workers: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._receive(client)),
            asyncio.create_task(self._send_states(client)),
            asyncio.create_task(self._resend(client)),
        ]
        stop: asyncio.Task[Any] = asyncio.create_task(self.stopping.wait())
        self._client = client
        self.connected.set()
        self.report.request()
        self.wake.set()
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
        """Re-send every unacked result now (a new session), then each one still unacked
        ``resend_after_s`` after it was last sent. The gateway keys results by lease: a repeat
        gets the stored ack again, so a re-send is never counted twice."""
        loop = asyncio.get_running_loop()
        sent_at: dict[bytes, float] = {}
        for entry in self.store.unacked():
            await client.publish(self._topic("result"), entry.sealed, qos=1)
            sent_at[entry.lease] = loop.time()
            self.stats.bump("results_resent")
        while True:
            await asyncio.sleep(self.resend_after_s / 2)  # re-send pacing, not synchronisation
            now = loop.time()
            pending = self.store.unacked()
            for entry in pending:
                # A result the work loop published since the last look was sent about now.
                if now - sent_at.setdefault(entry.lease, now) >= self.resend_after_s:
                    await client.publish(self._topic("result"), entry.sealed, qos=1)
                    sent_at[entry.lease] = now
                    self.stats.bump("results_resent_timeout")
            live = {entry.lease for entry in pending}
            sent_at = {lease: at for lease, at in sent_at.items() if lease in live}

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                self.stats.bump("inbox_rejected:bad_cbor")
                continue
            self.handle_inbox(bytes(payload))

    async def _send_states(self, client: aiomqtt.Client) -> None:
        report = self.report
        loop = asyncio.get_running_loop()
        while True:
            await report.dirty.wait()
            wait_s = report.sent_at + self.config.state_every_s - loop.time()
            if wait_s > 0 and not report.force:
                await asyncio.sleep(wait_s)  # rate limit (pacing, not synchronisation)
            report.dirty.clear()
            report.force = False
            doc = report.document(self.store.next_number("state_seq"))
            if doc is None:
                continue
            await client.publish(self._topic("state"), doc, qos=1, retain=True)
            report.mark_sent(loop.time())
            self.state_sent.set()
            self.stats.bump("states_sent")

    async def publish(self, kind: str, payload: bytes) -> bool:
        """Publish on the device's ``kind`` topic (QoS 1); False when offline or it failed."""
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
                payload, INBOX_LIMIT, signing.verify, self.gateway_pub, ("ack",)
            )
            self._on_ack(ack, payload)
            return
        body = protocol.validate(envelope, ("leases", "no_work", "blob_part", "error"))
        if kind == "leases":
            self._on_leases(body["items"])
            self._resolve_pull(body["req"], "leases")
        elif kind == "no_work":
            self.stats.bump("no_work:" + body["code"])
            self.retry_after_s = float(body["retry"])
            self.last_no_work_code = body["code"]
            self._resolve_pull(body["req"], "no_work")
        elif kind == "blob_part":
            waiter = self._blob_waiters.get(body["req"])
            if waiter is None or waiter[1].done():
                self.stats.bump("inbox_unexpected:blob_part")
            else:
                waiter[1].set_result(body)
        else:
            self._on_error(body)

    def _resolve_pull(self, req: int, outcome: str) -> None:
        waiter = self._pull_waiters.get(req)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)
        self.wake.set()

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
            self.wake.set()
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
                waiter.set_exception(FetchError(f"gateway: {code} {err['msg']}"))
        if code in FINAL_RESULT_ERRORS and self.store.refuse(ref, code):
            self.stats.bump("results_refused")

    # -- requests --------------------------------------------------------------------------------

    async def request_leases(self, kernels: list[str]) -> str:
        """Send a ``pull``; the outcome: ``leases``, ``no_work``, ``timeout``, ``disconnected``
        or ``publish_failed``."""
        cfg = self.config
        req = self.store.next_number("pull_req")
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pull_waiters[req] = waiter
        body = protocol.message("pull", req=req, n=cfg.pull_n, secs=cfg.pull_secs, kernels=kernels)
        try:
            await wait_or_timeout(self.state_sent, cfg.reply_timeout_s)
            if not await self.publish("pull", protocol.encode(body)):
                return "publish_failed"
            self.stats.bump("pulls")
            return await asyncio.wait_for(waiter, cfg.reply_timeout_s)
        except TimeoutError:
            self.stats.bump("pull_timeouts")
            return "timeout"
        finally:
            self._pull_waiters.pop(req, None)

    async def fetch_blob(self, digest: bytes) -> bytes:
        """The blob with this SHA-256: from the cache, else fetched in parts, checked, cached."""
        cached = self.store.get_blob(digest)
        if cached is not None:
            self.stats.bump("blob_cache_hits")
            return cached
        parts: list[bytes] = []
        offset, total = 0, -1
        while offset != total:
            part = await self._blob_part(digest, offset)
            if part["hash"] != digest or part["off"] != offset:
                raise FetchError("blob_part for another hash or offset")
            if total < 0:
                total = part["total"]
                if total > MAX_BLOB_BYTES:
                    raise FetchError(f"blob of {total} bytes is larger than {MAX_BLOB_BYTES}")
            if part["total"] != total or (not part["data"] and offset < total):
                raise FetchError("inconsistent blob_part")
            parts.append(part["data"])
            offset += len(part["data"])
            if offset > total:
                raise FetchError("blob longer than announced")
        blob = b"".join(parts)
        if hashlib.sha256(blob).digest() != digest:
            self.stats.bump("blob_bad_hash")
            raise FetchError(f"blob {digest.hex()} does not match its hash")
        self.store.put_blob(digest, blob)
        self.stats.bump("blobs_fetched")
        return blob

    async def _blob_part(self, digest: bytes, offset: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for _ in range(self.config.blob_retries):
            if not self.connected.is_set():
                await wait_or_timeout(self.connected, self.config.reply_timeout_s)
            req = self.store.next_number("blob_req")
            waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._blob_waiters[req] = (digest, waiter)
            get = protocol.message(
                "blob_get", req=req, hash=digest, off=offset, len=protocol.BLOB_PART
            )
            try:
                if await self.publish("blob", protocol.encode(get)):
                    self.stats.bump("blob_gets")
                    return await asyncio.wait_for(waiter, self.config.reply_timeout_s)
            except TimeoutError:
                self.stats.bump("blob_timeouts")
            finally:
                self._blob_waiters.pop(req, None)
        tries = self.config.blob_retries
        raise FetchError(f"no blob_part for {digest.hex()} after {tries} tries")
