"""Handlers of a device's transport-authenticated messages: ``state``, ``pull``, ``blob_get``.

The topic names the device (the broker's ACL lets only its account publish there); each handler
checks the payload's size and schema, and answers on the device's inbox.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.core import cbor, protocol
from gateway import scheduler as sched
from gateway.config import ServiceLimits
from gateway.jobflow import JobFlow
from gateway.keys import GatewayKey
from gateway.ledger import Ledger
from gateway.wire import RateLimiter, Rejection, Reply, encode

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# A `leases` reply must fit the device's inbox limit: room for the wrapper around the items.
_LEASES_OVERHEAD = 1024
QUARANTINE_RETRY_S = 86_400  # the longest retry hint the protocol allows: it will not change


@dataclass
class Context:
    ledger: Ledger
    scheduler: sched.Scheduler
    key: GatewayKey
    jobs: JobFlow
    clock: Clock
    limits: ServiceLimits
    on_deadline: Callable[[float], None]  # a lease with this deadline was issued
    counters: dict[str, int] = field(default_factory=dict)
    state_limiter: RateLimiter = field(init=False)
    pull_limiter: RateLimiter = field(init=False)
    blob_limiter: RateLimiter = field(init=False)
    claim_limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.state_limiter = RateLimiter(self.limits.state, self.clock)
        self.pull_limiter = RateLimiter(self.limits.pull, self.clock)
        self.blob_limiter = RateLimiter(self.limits.blob, self.clock)
        self.claim_limiter = RateLimiter(self.limits.claim, self.clock)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def known(self, device_id: str) -> None:
        if self.ledger.device(device_id) is None:
            raise Rejection("unknown_device", f"device {device_id} is not enrolled")


def handle_state(ctx: Context, dev: str, payload: bytes) -> list[Reply]:
    """Store the device's state document; its fitness decides its next pulls. Excess documents
    (beyond the rate limit) are counted and ignored; the last will (offline) always counts."""
    body = protocol.decode(payload, protocol.MAX_PAYLOAD["state"], ("state",))
    ctx.known(dev)
    if body["online"] and not ctx.state_limiter.allow(dev):
        ctx.count("state_rate_limited")
        return []
    fit = ctx.scheduler.report_state(dev, cbor.dumps(body), ctx.clock())
    ctx.count("state_stored" if fit is not None else "state_stale")
    return []


def _no_work(reason: str, limits: ServiceLimits) -> tuple[str, str, int]:
    """(code, why, retry seconds) of a pull that got nothing."""
    if reason == sched.NO_WORK:
        return "empty", "no queued tasks", limits.retry_empty_s
    if reason == sched.TOO_SLOW:
        return "too_slow", "no queued task fits in the seconds offered", limits.retry_unfit_s
    if reason == sched.BUSY:
        return "busy", "the device holds its maximum of active leases", limits.retry_busy_s
    if reason == sched.QUARANTINED:
        return "quarantined", "results of this device failed verification", QUARANTINE_RETRY_S
    # The device's fitness reason: its governor's code, offline, no_state, not_fit, bad_state.
    return "unfit", f"{reason}: the device's last state does not allow work", limits.retry_unfit_s


def _lease_message(ctx: Context, dev: str, lease: sched.Lease) -> bytes:
    body = protocol.message(
        "lease", lease=lease.lease_id, task=lease.wire_id, dev=dev,
        kernel=lease.kernel, params=cbor.loads(lease.params_cbor), units=lease.work_units,
        issued=int(lease.issued_at), deadline=int(lease.deadline), attempt=min(lease.attempt, 255))
    return bytes(protocol.seal(body, ctx.key.sign))


def handle_pull(ctx: Context, dev: str, payload: bytes) -> list[Reply]:
    body = protocol.decode(payload, protocol.MAX_PAYLOAD["pull"], ("pull",))
    ctx.known(dev)
    inbox = protocol.inbox_topic(dev)
    if not ctx.pull_limiter.allow(dev):
        ctx.count("pull_rate_limited")
        return [Reply(inbox, encode("no_work", req=body["req"], code="rate_limited",
                                    why="too many pulls", retry=ctx.pull_limiter.retry_after(dev)))]
    now = ctx.clock()
    granted = ctx.scheduler.lease(dev, body["n"], body["secs"], now, kernels=body["kernels"])
    if not granted.leases:
        if granted.reason == sched.UNKNOWN_DEVICE:
            raise Rejection("unknown_device", f"device {dev} is not enrolled")
        code, why, retry = _no_work(granted.reason, ctx.limits)
        ctx.count(f"no_work:{code}")
        return [Reply(inbox, encode("no_work", req=body["req"], code=code, why=why[:120],
                                    retry=retry))]
    items: list[bytes] = []
    room = protocol.MAX_PAYLOAD["inbox"] - _LEASES_OVERHEAD
    for lease in granted.leases:
        sealed = _lease_message(ctx, dev, lease)
        if len(sealed) + 16 > room:
            # Too big for this reply: back to the queue at once, no attempt counted.
            ctx.scheduler.release(lease.lease_id, dev, now)
            ctx.count("lease_released_reply_full")
            continue
        room -= len(sealed) + 16
        items.append(sealed)
        ctx.on_deadline(lease.deadline)
    ctx.count("leases_issued")
    return [Reply(inbox, encode("leases", req=body["req"], items=items))]


def handle_blob(ctx: Context, dev: str, payload: bytes) -> list[Reply]:
    body = protocol.decode(payload, protocol.MAX_PAYLOAD["blob"], ("blob_get",))
    ctx.known(dev)
    if not ctx.blob_limiter.allow(dev):
        raise Rejection("rate_limited", "too many blob requests", body["hash"])
    part = ctx.ledger.blob_part(body["hash"], body["off"], body["len"])
    if part is None:
        raise Rejection("unknown_blob", "no such blob", body["hash"])
    total, data = part
    if body["off"] > total:
        raise Rejection("bad_schema", f"offset {body['off']} is past the blob's {total} bytes",
                        body["hash"])
    return [Reply(protocol.inbox_topic(dev), encode(
        "blob_part", req=body["req"], hash=body["hash"], off=body["off"], total=total,
        data=data))]
