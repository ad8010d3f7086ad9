"""The ``result`` handler: a device's signed receipt with its result attached.

Checked in order, cheapest refusal first, nothing stored until all pass: size, envelope, the
signature by the device's enrolled key and the receipt's binding to the device's own lease
(``trust.open_receipt``: lease, task, device and kernel, and ``rhash`` = SHA-256 of the attached
result), then the result's shape against the leased task. The receipt's work units are not
refused here: a claim other than the lease's is a signed lie about the work, which the trust
layer judges (a strike; docs/TRUST.md). The scheduler then judges the result and stores it with
its signed ack in one transaction; a repeat gets the latest stored ack again. A result that
settles other results' verification (a replica that agrees) also answers those devices: their
new acks go to their inboxes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from edge_agent.core import cbor, protocol, signing
from gateway import result_shape, trust
from gateway.handlers_device import Context
from gateway.keys import GatewayKey
from gateway.verifier import AckFields, AckSigner, Notice
from gateway.wire import Rejection, Reply

_LIMIT = protocol.MAX_PAYLOAD["result"]


def ack_signer(key: GatewayKey, clock: Callable[[], float],
               credit_of: Callable[[str, int], int]) -> AckSigner:
    """Signs an ack (docs/PROTOCOL.md) with the device's next sequence number and its
    cumulative credit after it, ``credit_of(device, seq)``: the ledger's record of that ack
    (``Ledger.ack_credit``, read in the transaction that stores the ack), so a signed ack never
    says other than the ledger (docs/REWARDS.md)."""

    def sign(fields: AckFields, seq: int) -> bytes:
        ack = protocol.message(
            "ack", lease=fields.lease_id, task=fields.task, dev=fields.device_id,
            rhash=fields.result_hash, status=fields.status, code=fields.code, seq=seq,
            credit=credit_of(fields.device_id, seq), at=int(clock()))
        return bytes(protocol.seal(ack, key.sign))

    return sign


def notice_replies(notices: Iterable[Notice]) -> list[Reply]:
    return [Reply(protocol.inbox_topic(n.device_id), n.ack) for n in notices]


def _open(ctx: Context, dev: str, pub: bytes, payload: bytes
          ) -> tuple[dict[str, Any], bytes, Any]:
    """The receipt's body, body bytes and result, checked against the device's own lease.
    Someone else's or an unknown lease is only signature-checked here: the scheduler refuses it
    without telling whose it is."""
    lease_id = protocol.peek_sealed(payload, _LIMIT, ("result",))["lease"]
    found = ctx.ledger.lease_task(lease_id)
    if found is None or found[0].device_id != dev:
        body, body_bytes, result = protocol.open_sealed(payload, _LIMIT, signing.verify, pub,
                                                        ("result",))
        return body, body_bytes, result
    lease, task = found
    try:
        receipt = trust.open_receipt(
            payload, pub, trust.LeaseBinding(lease.id, task.wire_id, dev, task.kernel),
            signing.verify)
        result_shape.check(task.kernel, cbor.loads(task.params_cbor), receipt.result)
    except protocol.ProtocolError as exc:
        raise Rejection(exc.code, exc.msg, lease_id) from None
    except result_shape.ShapeError as exc:
        raise Rejection("bad_result", str(exc), lease_id) from None
    return dict(receipt.body), receipt.body_bytes, receipt.result


def handle_result(ctx: Context, dev: str, payload: bytes) -> list[Reply]:
    pub = ctx.ledger.device_key(dev)
    if pub is None:
        raise Rejection("unknown_device", f"device {dev} is not enrolled")
    body, body_bytes, result = _open(ctx, dev, pub, payload)
    ref = body["lease"]
    if body["dev"] != dev:
        raise Rejection("not_your_lease", f"the receipt names device {body['dev']}", ref)
    if result is None or protocol.result_hash(result) != body["rhash"]:
        raise Rejection("bad_result_hash", "rhash is not SHA-256 of the attached result", ref)
    now = ctx.clock()
    signature = cbor.loads(payload, max_size=_LIMIT)["s"]
    receipt = cbor.dumps({"v": protocol.VERSION, "t": "result", "b": body_bytes, "s": signature})
    outcome = ctx.scheduler.complete(body["lease"], dev, body["rhash"], cbor.dumps(result),
                                     receipt, now, claimed_units=body["units"])
    if not outcome.stored or outcome.ack is None:
        ctx.count(f"result_refused:{outcome.code}")
        raise Rejection(outcome.code or "internal", "result refused", ref)
    ctx.count("result_duplicate" if outcome.duplicate else f"result_{outcome.status}")
    if outcome.notices:
        ctx.count("acks_resolved", len(outcome.notices))
    return [Reply(protocol.inbox_topic(dev), outcome.ack), *notice_replies(outcome.notices)]
