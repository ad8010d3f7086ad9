"""The ``result`` handler: a device's signed receipt with its result attached.

Checked in order, cheapest refusal first, nothing stored until all pass: size, envelope, the
signature by the device's enrolled key, the body's schema, ``dev`` = the topic's device,
``rhash`` = SHA-256 of the attached result, and (for the device's own lease) task, kernel, units
and the result's shape against the leased task. The scheduler then judges it against the lease
and stores it with its signed ack in one transaction; a repeat gets the stored ack again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_agent.core import cbor, protocol
from gateway import result_shape
from gateway import scheduler as sched
from gateway.handlers_device import Context
from gateway.jobflow import wire_task_id
from gateway.keys import verify_ed25519
from gateway.wire import Rejection, Reply

_LIMIT = protocol.MAX_PAYLOAD["result"]


def _ack_builder(ctx: Context, body: dict[str, Any], now: float
                 ) -> Callable[[sched.Outcome, int], bytes]:
    def make_ack(outcome: sched.Outcome, seq: int) -> bytes:
        accepted = outcome.status == sched.ACCEPTED
        ack = protocol.message(
            "ack", lease=body["lease"], task=body["task"], dev=body["dev"], rhash=body["rhash"],
            status="accepted" if accepted else "rejected", code=outcome.code or sched.OK,
            seq=seq, credit=0, at=int(now))
        return bytes(protocol.seal(ack, ctx.key.sign))

    return make_ack


def _check_against_lease(ctx: Context, dev: str, body: dict[str, Any], result: object) -> None:
    """Task, kernel, units and result shape must match the device's own lease. Foreign or
    unknown leases are left to the scheduler, which refuses them without revealing anything."""
    found = ctx.ledger.lease_task(body["lease"])
    if found is None or found[0].device_id != dev:
        return
    lease, task = found
    if (body["task"] != wire_task_id(task.job_id, task.id) or body["kernel"] != task.kernel
            or body["units"] != lease.work_units):
        raise Rejection("bad_result", "task, kernel or units differ from the lease's",
                        body["lease"])
    try:
        result_shape.check(task.kernel, cbor.loads(task.params_cbor), result)
    except result_shape.ShapeError as exc:
        raise Rejection("bad_result", str(exc), body["lease"]) from None


def handle_result(ctx: Context, dev: str, payload: bytes) -> list[Reply]:
    pub = ctx.ledger.device_key(dev)
    if pub is None:
        raise Rejection("unknown_device", f"device {dev} is not enrolled")
    body, body_bytes, result = protocol.open_sealed(payload, _LIMIT, verify_ed25519, pub,
                                                    ("result",))
    ref = body["lease"]
    if body["dev"] != dev:
        raise Rejection("bad_schema", f"the receipt names device {body['dev']}", ref)
    if result is None:
        raise Rejection("bad_result", "no result attached", ref)
    if protocol.result_hash(result) != body["rhash"]:
        raise Rejection("bad_result_hash", "rhash is not SHA-256 of the attached result", ref)
    _check_against_lease(ctx, dev, body, result)
    now = ctx.clock()
    signature = cbor.loads(payload, max_size=_LIMIT)["s"]
    receipt = cbor.dumps({"v": protocol.VERSION, "t": "result", "b": body_bytes, "s": signature})
    outcome = ctx.scheduler.complete(body["lease"], dev, body["rhash"], cbor.dumps(result),
                                     receipt, now, make_ack=_ack_builder(ctx, body, now))
    if not outcome.stored or outcome.ack is None:
        ctx.count(f"result_refused:{outcome.code}")
        raise Rejection(outcome.code or "internal", "result refused", ref)
    ctx.count("result_duplicate" if outcome.duplicate else f"result_{outcome.status}")
    if outcome.job_state == "done" and not outcome.duplicate and outcome.job_id is not None:
        ctx.jobs.finish(outcome.job_id)
    return [Reply(protocol.inbox_topic(dev), outcome.ack)]
