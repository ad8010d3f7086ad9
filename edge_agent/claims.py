"""The device's side of rewards (docs/REWARDS.md): claims of its acked receipts, the gateway's
claim receipts, and settlement proofs checked offline and kept.

* **Claims.** Every ack the gateway signs carries a seq and the cumulative credit; the outbox
  logs each one (``ack_log``). Unclaimed acks are cut into runs of consecutive seqs
  (``rewards.claim_batches``, at most 256) and each run is claimed with one signature over a
  Merkle root of its receipt ids, whatever its length. When: as soon as a full batch
  (``batch`` acks) is waiting, else once the device is not busy (no task running, no result
  waiting for its ack) and no ack came for ``quiet_s``: a working device signs one claim per
  ``batch`` results, an idle one claims what it has. An unanswered claim is re-sent unchanged
  (the gateway answers a repeat with the receipt it stored, so nothing changes).
* **Receipts** are checked (gateway key, our device, a claim we sent) and kept.
* **Settlements**: ``rewards.verify_settlement`` (the gateway's key learnt at enrolment, our own
  leaf, the Merkle path to the signed root) before a proof is kept; one per epoch. Keeping one
  prunes, in the same transaction, the logged acks no claim or dispute needs any more
  (``Store.store_settlement``): in an accepted claim, dated at or before the newest close, and
  not the ack a dispute of some kept epoch would show. So the log stays small on a device that
  runs for months, and the gaps it leaves are all inside accepted claims: never unclaimed, never
  in a run still to claim.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.core import protocol, rewards, signing
from edge_agent.outbox import LoggedAck, SentClaim, Store, StoredSettlement
from edge_agent.runtime import Stats

log = logging.getLogger(__name__)

BATCH = 64  # acks that make a claim due at once
QUIET_S = 1.0  # an idle device claims once no ack came for this long
RESEND_S = 30.0  # an unanswered claim is sent again after this long
INBOX_LIMIT = protocol.MAX_PAYLOAD["inbox"]

Publish = Callable[[str, bytes], Awaitable[bool]]


class Claims:
    def __init__(self, store: Store, device_id: str, gateway_pub: bytes,
                 sign: Callable[[bytes], bytes], stats: Stats, *, batch: int = BATCH,
                 quiet_s: float = QUIET_S, resend_s: float = RESEND_S) -> None:
        self.store = store
        self.device_id = device_id
        self.gateway_pub = gateway_pub
        self.sign = sign
        self.stats = stats
        self.batch = batch
        self.quiet_s = quiet_s
        self.resend_s = resend_s
        # Inbox message type -> handler, for Link.handlers.
        self.handlers: dict[str, Callable[[bytes], None]] = {
            "claim_receipt": self.on_receipt,
            "settlement": self.on_settlement,
        }

    # -- the inbox ----------------------------------------------------------------------------

    def on_receipt(self, payload: bytes) -> None:
        """A signed claim receipt: kept when it answers a claim of ours. Raises ProtocolError
        for anything else (the link counts it)."""
        receipt, _, _ = protocol.open_sealed(payload, INBOX_LIMIT, signing.verify,
                                             self.gateway_pub, ("claim_receipt",))
        if receipt["dev"] != self.device_id:
            raise protocol.ProtocolError("bad_schema", f"receipt for device {receipt['dev']}")
        if self.store.answer_claim(receipt["first"], receipt["root"], receipt["status"],
                                   receipt["code"], payload):
            self.stats.bump(f"claim_{receipt['status']}")
            if receipt["status"] != "accepted":
                log.warning("%s: claim of acks %d..%d rejected: %s", self.device_id[:8],
                            receipt["first"], receipt["last"], receipt["code"])
        else:
            self.stats.bump("claim_receipt_unknown")

    def on_settlement(self, payload: bytes) -> None:
        """A settlement proof: verified offline against the gateway's key, then kept (and the
        acks it makes needless pruned)."""
        settled = rewards.verify_settlement(payload, self.gateway_pub, signing.verify,
                                            self.device_id)
        pruned = self.store.store_settlement(StoredSettlement(
            settled["epoch"], settled["closed_at"], settled["credit"], payload, int(time.time())))
        if pruned is None:
            self.stats.bump("settlement_repeat")
            return
        self.stats.bump("settlements")
        if pruned:
            self.stats.bump("acks_pruned", pruned)

    # -- claiming -----------------------------------------------------------------------------

    def due(self, *, all_of_them: bool) -> list[list[LoggedAck]]:
        """Batches to claim now: every run of unclaimed acks, or only full ones."""
        acked = self.store.unclaimed_acks()
        runs = rewards.claim_batches([(a.seq, a.receipt_id, a.credit, a) for a in acked])
        runs = [[entry[3] for entry in run] for run in runs]
        return runs if all_of_them else [run for run in runs if len(run) >= self.batch]

    def make_claim(self, run: list[LoggedAck], now: int) -> SentClaim:
        body = rewards.build_claim(self.device_id,
                                   [(a.seq, a.receipt_id, a.credit) for a in run], now)
        sealed = bytes(protocol.seal(body, self.sign))
        claim = SentClaim(body["first"], body["last"], body["root"], body["credit"], sealed,
                          now, None, None, None)
        self.store.add_claim(claim)
        return claim

    async def send(self, publish: Publish, *, all_of_them: bool) -> int:
        """Claim what is due and (re)send every unanswered claim older than ``resend_s``;
        returns how many claims went out."""
        now = int(time.time())
        owed = [c for c in self.store.claims()
                if c.status is None and now - c.sent_at >= self.resend_s]
        fresh = [self.make_claim(run, now) for run in self.due(all_of_them=all_of_them)]
        sent = 0
        for claim in [*owed, *fresh]:
            if await publish("claim", claim.sealed):
                sent += 1
        if sent:
            self.stats.bump("claims_sent", sent)
        return sent

    def unanswered(self) -> list[SentClaim]:
        return [c for c in self.store.claims() if c.status is None]

    async def run(self, publish: Publish, connected: asyncio.Event, stopping: asyncio.Event,
                  busy: Callable[[], bool]) -> None:
        """Claim as acks come in (module doc) until ``stopping``."""
        while not stopping.is_set():
            await connected.wait()
            quiet = await self._quiet(stopping)
            if not stopping.is_set() and connected.is_set():
                await self.send(publish, all_of_them=quiet and not busy())

    async def _quiet(self, stopping: asyncio.Event) -> bool:
        """True when no ack came for ``quiet_s`` (False as soon as one does, or on stop)."""
        seen = self.stats.counts["acks"]
        try:
            await self.stats.wait_for(
                lambda: self.stats.counts["acks"] != seen or stopping.is_set(), self.quiet_s)
        except TimeoutError:
            return True
        return False

    # -- what the device holds ----------------------------------------------------------------

    def verified_settlements(self) -> list[dict[str, Any]]:
        """Every kept proof verified again (offline), oldest epoch first."""
        return [rewards.verify_settlement(s.message, self.gateway_pub, signing.verify,
                                          self.device_id) for s in self.store.settlements()]
