"""The ``claim`` handler: a device's signed batch of acked receipts (docs/REWARDS.md, Claims).

Cheap checks first: the device must be enrolled and within its claim rate (``ServiceLimits.claim``;
beyond it the claim is refused with ``rate_limited`` before its signature is checked or the ledger
is touched, and the device sends it again later as it does any unanswered claim). Then the claim's
signature is checked with the device's enrolled key (the topic names the device),
then, under the ledger's write lock, ``settlement.check_claim`` compares it with the acks the
ledger sent that device and the claims it accepted before. The answer is a signed
``claim_receipt`` on the device's inbox:

* accepted: stored with the claim, in the transaction that judged it;
* the same range and root again (a replay, a lost receipt): the stored receipt, byte for byte,
  and nothing changes;
* anything else: a rejected receipt with the reason's code (not stored: a claim never changes
  an amount, so a refusal has nothing to undo).
"""

from __future__ import annotations

from edge_agent.core import protocol, signing
from gateway.handlers_device import Context
from gateway.settlement import check_claim, seal_claim_receipt
from gateway.wire import Rejection, Reply

_LIMIT = protocol.MAX_PAYLOAD["claim"]


def handle_claim(ctx: Context, dev: str, payload: bytes) -> list[Reply]:
    pub = ctx.ledger.device_key(dev)
    if pub is None:
        raise Rejection("unknown_device", f"device {dev} is not enrolled")
    limiter = ctx.claim_limiter
    if not limiter.allow(dev):
        ctx.count("claim_rate_limited")
        raise Rejection("rate_limited", f"too many claims: send it again in "
                                        f"{limiter.retry_after(dev)} s")
    claim, _, _ = protocol.open_sealed(payload, _LIMIT, signing.verify, pub, ("claim",))
    with ctx.ledger.transaction():  # the rows below run under its write lock
        rows = ctx.ledger.rewards
        first, last = claim["first"], claim["last"]
        verdict = check_claim(
            claim, sender=dev,
            acked=rows.acked(dev, first, last) if last >= first else [],
            accepted=rows.claims_overlapping(dev, first, last),
            owner_of=rows.owner_of)
        stored = rows.claim_receipt(dev, first, last, claim["root"])
        if verdict.code == "repeat" and stored is not None:
            receipt = stored
        else:
            receipt = seal_claim_receipt(claim, verdict, int(ctx.clock()), ctx.key.sign)
            if verdict.accepted:
                rows.insert_claim(claim, payload, receipt, ctx.clock())
    ctx.count(f"claim_{verdict.code}")
    return [Reply(protocol.inbox_topic(dev), receipt)]
