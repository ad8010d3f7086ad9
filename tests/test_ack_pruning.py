"""Pruning the agent's ack log (edge_agent/outbox.py ``Store.prune_acks``, docs/REWARDS.md) on
real SQLite files, with acks, claim receipts and settlements signed by a real gateway key.

An ack goes only when an accepted claim covers it, a kept settlement closed at or after it, it
is not the ack a dispute of any kept epoch shows (highest credit by the close, ties: highest seq)
and its result awaits no final ack. Shown here: exactly those go (a hand-made history, then
random ones against a brute-force reading of the rule), disputes and earnings read the same from
what is left as from every ack ever received, claims see the same unclaimed runs, a second prune
finds nothing, and a failure or a killed process mid-prune leaves the log as it was."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.claims import Claims
from edge_agent.core import cbor, protocol, rewards, signing
from edge_agent.core.rewards import needless_acks
from edge_agent.earnings import earnings_report, write_disputes
from edge_agent.identity import Credentials, StateDir
from edge_agent.outbox import OutboxEntry, Store, StoredAck, StoredSettlement
from edge_agent.runtime import Stats
from gateway.keys import GatewayKey
from gateway.settlement import Settlement, close_epoch

GW = GatewayKey(bytes(range(32)))
OTHER = protocol.device_id(b"another device")


@dataclasses.dataclass(frozen=True)
class Delivered:
    """An ack as the phone received it: the full log, kept by the test."""

    seq: int
    lease: bytes
    status: str
    credit: int
    at: int
    sealed: bytes


class Phone:
    """A device's state directory, store and claims, fed what a gateway with a real key sends."""

    def __init__(self, root: Path) -> None:
        self.state = StateDir(root)
        identity = self.state.load_or_create_identity()
        self.state.save_enrolment(
            Credentials("mqtt://127.0.0.1:1", identity.device_id, "pw", "tok"), GW.pub)
        self.id = identity.device_id
        self.sign = identity.sign
        self.store = Store(self.state.db_path)
        self.stats = Stats()
        self.claims = Claims(self.store, self.id, GW.pub, self.sign, self.stats)
        self.delivered: list[Delivered] = []
        self.receipt_ids: dict[bytes, bytes] = {}
        self.epochs: list[Settlement] = []

    def ack(self, lease: bytes, seq: int, credit: int, at: int, status: str = "accepted") -> None:
        """The gateway's signed ack of our result for ``lease`` (the result stored first)."""
        rhash = hashlib.sha256(lease).digest()
        if lease not in self.receipt_ids:
            body = protocol.message("result", lease=lease, task=lease, dev=self.id,
                                    kernel="montecarlo_pi", rhash=rhash, units=1, started=1,
                                    finished=2)
            sealed = bytes(protocol.seal(body, self.sign, attachment={"inside": 1}))
            self.store.store_result(OutboxEntry(lease, lease, rhash, sealed), 1)
            self.receipt_ids[lease] = bytes(protocol.receipt_id(cbor.dumps(body)))
        body = protocol.message("ack", lease=lease, task=lease, dev=self.id, rhash=rhash,
                                status=status, code="ok", seq=seq, credit=credit, at=at)
        sealed = bytes(protocol.seal(body, GW.sign))
        assert self.store.store_ack(StoredAck(lease, lease, rhash, status, seq, credit, sealed))
        self.delivered.append(Delivered(seq, lease, status, credit, at, sealed))

    def claim_due(self, answers: list[str | None]) -> None:
        """Claim every unclaimed run; the gateway answers the k-th with answers[k % len]
        ("accepted", "rejected" or None: no answer yet)."""
        for k, run in enumerate(self.claims.due(all_of_them=True)):
            claim = self.claims.make_claim(run, 1)
            status = answers[k % len(answers)]
            if status is not None:
                body = protocol.message(
                    "claim_receipt", dev=self.id, first=claim.first, last=claim.last,
                    root=claim.root, credit=claim.credit, status=status,
                    code="ok" if status == "accepted" else "overlap", at=1)
                self.claims.on_receipt(bytes(protocol.seal(body, GW.sign)))

    def settle(self, closed_at: int, shortfall: int = 0) -> int:
        """The next epoch, closed at ``closed_at``, paying what was acked by then less
        ``shortfall``; delivered to the phone. Returns how many acks it pruned."""
        acked = max((a.credit for a in self.delivered if a.at <= closed_at), default=0)
        devices = sorted([self.id, OTHER])
        credits = [max(0, acked - shortfall) if d == self.id else 7 for d in devices]
        prev = self.epochs[-1].header_hash if self.epochs else rewards.ZERO_HASH
        settled = close_epoch(devices, credits, epoch=len(self.epochs) + 1, closed_at=closed_at,
                              prev=prev, sign=GW.sign)
        self.epochs.append(settled)
        before = self.stats.counts["acks_pruned"]
        self.claims.on_settlement(settled.proof_message(self.id))
        return self.stats.counts["acks_pruned"] - before

    def kept(self) -> list[int]:
        return [a.seq for a in self.store.logged_acks()]

    def pending_leases(self) -> set[bytes]:
        latest = {a.lease: a.status for a in sorted(self.delivered, key=lambda a: a.seq)}
        return {lease for lease, status in latest.items() if status == "pending"}


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[Phone]:
    made = Phone(tmp_path / "phone")
    yield made
    made.store.close()


def lease(k: int) -> bytes:
    return b"lease-%010d" % k


def expected_kept(phone: Phone) -> list[int]:
    """The rule as docs/REWARDS.md states it, by brute force over every ack ever received."""
    closings = [s.header["closed_at"] for s in phone.epochs]
    accepted = [(c.first, c.last) for c in phone.store.claims() if c.status == "accepted"]
    best = set()
    for closed_at in closings:
        by_close = [a for a in phone.delivered if a.at <= closed_at]
        if by_close:
            best.add(max(by_close, key=lambda a: (a.credit, a.seq)).seq)
    pending = phone.pending_leases()
    return sorted(a.seq for a in phone.delivered
                  if not (any(f <= a.seq <= last for f, last in accepted)
                          and a.at <= max(closings, default=-1)
                          and a.seq not in best and a.lease not in pending))


def verdicts(phone: Phone, sealed_acks: list[bytes]) -> list[dict[str, Any] | None]:
    """check_dispute's verdict on each kept epoch's evidence from these acks (None: nothing to
    dispute, build_dispute made no evidence)."""
    out: list[dict[str, Any] | None] = []
    for settled in phone.claims.verified_settlements():
        evidence = rewards.dispute_from_settlement(settled, GW.pub, signing.verify, sealed_acks)
        out.append(None if evidence is None else rewards.check_dispute(evidence, signing.verify))
    return out


def runs(phone: Phone) -> list[list[int]]:
    return [[a.seq for a in run] for run in phone.claims.due(all_of_them=True)]


# -- one history by hand ---------------------------------------------------------------------


def test_a_hand_made_history_keeps_exactly_what_the_rule_says(phone: Phone) -> None:
    # seq (= at / 10): credit. Acks 1 and 2 tie at 200; lease 4 is pending (credit unchanged).
    credits = {1: 200, 2: 200, 3: 250, 4: 250, 5: 300, 6: 400, 7: 500, 8: 600, 9: 700,
               10: 800, 11: 900, 12: 1000}
    for seq, credit in credits.items():
        phone.ack(lease(seq), seq, credit, 10 * seq, "pending" if seq == 4 else "accepted")
        if seq in (4, 6, 8, 10):  # claims 1..4 accepted, 5..6 rejected, 7..8 unanswered,
            phone.claim_due([{4: "accepted", 6: "rejected", 8: None, 10: "accepted"}[seq]])
    assert runs(phone) == [[11, 12]]  # 9..10 accepted; 11..12 never claimed
    # Epoch 1 closes at 25: of the tie, the higher seq (2) is its dispute's ack; 1 goes.
    assert phone.settle(25) == 1 and phone.kept() == list(range(2, 13))
    # Epoch 2 closes at 95 paying 650 of the 700 acked (seq 9) by then: disputable. 3 goes;
    # 4 stays (its result awaits the final ack), 5..8 are in rejected or unanswered claims,
    # 10..12 after the close or unclaimed.
    assert phone.settle(95, shortfall=50) == 1
    assert phone.kept() == [2, *range(4, 13)] == expected_kept(phone)
    # The final ack of lease 4 comes after the prune: its receipt id is still in the log.
    phone.ack(lease(4), 13, 1100, 130)
    phone.ack(lease(14), 14, 1200, 140)
    [logged] = [a for a in phone.store.logged_acks() if a.seq == 13]
    assert logged.receipt_id == phone.receipt_ids[lease(4)]
    assert runs(phone) == [[11, 12, 13, 14]]
    phone.claim_due(["accepted"])
    assert phone.settle(200) == 5  # 4, 10, 11, 12, 13: epoch 3's dispute ack is 14
    assert phone.kept() == [2, 5, 6, 7, 8, 9, 14] == expected_kept(phone)
    assert phone.store.prune_acks() == 0 and phone.kept() == [2, 5, 6, 7, 8, 9, 14]
    assert phone.store.pruned_ack_count() == phone.stats.counts["acks_pruned"] == 7
    assert runs(phone) == []
    # Disputes: epoch 2 is proven from what is left exactly as from every ack received.
    full = verdicts(phone, [a.sealed for a in phone.delivered])
    assert verdicts(phone, [a.sealed for a in phone.store.logged_acks()]) == full
    assert [v and (v["proven"], v["code"], v["acked"], v["settled"]) for v in full] == [
        None, (True, "underpaid", 700, 650), None]


def test_earnings_and_dispute_files_read_the_same_after_pruning(phone: Phone,
                                                                tmp_path: Path) -> None:
    for seq in range(1, 41):
        phone.ack(lease(seq), seq, 100 * seq, seq)
    phone.claim_due(["accepted"])
    before = earnings_report(phone.state)
    assert phone.settle(10, shortfall=1) == 9 and phone.settle(30) == 19  # 10, 30 stay
    phone.ack(lease(42), 42, 4200, 42)  # ack 41 never came
    after = earnings_report(phone.state)
    assert after["acks"] == 13 and after["acks_pruned"] == 28
    assert after["missing_acks"] == [41]  # the pruned seqs are in an accepted claim, not missing
    assert after["acked_credit"] == 4200 and after["claims"]["unclaimed_acks"] == 1
    assert before["missing_acks"] == [] and before["acks"] == 40
    assert [(e["epoch"], e["acked_by_close"], e["short"]) for e in after["epochs"]] == [
        (1, 1000, 1), (2, 3000, 0)]
    out = tmp_path / "disputes"
    out.mkdir()
    [(first, written), (second, honest)] = write_disputes(phone.state, out)  # epoch 1 is short
    assert (first, second) == (1, 2) and written is not None and honest is None
    verdict = rewards.check_dispute(json.loads(written.read_text()), signing.verify)
    assert (verdict["proven"], verdict["acked"], verdict["shortfall"]) == (True, 1000, 1)


# -- random histories ------------------------------------------------------------------------

ACK = st.tuples(st.just("ack"), st.integers(0, 3), st.sampled_from([0, 1, 100]),
                st.sampled_from(["accepted", "accepted", "pending", "final"]), st.booleans())
CLAIM = st.tuples(st.just("claim"),
                  st.lists(st.sampled_from(["accepted", "accepted", "rejected", None]),
                           min_size=1, max_size=3))
SETTLE = st.tuples(st.just("settle"), st.integers(0, 8), st.sampled_from([0, 0, 1, 150]))
HISTORY = st.lists(st.one_of(ACK, ACK, ACK, CLAIM, SETTLE), min_size=10, max_size=60)


@settings(max_examples=60)
@given(HISTORY)
def test_random_histories_prune_by_the_rule_and_disputes_claims_stay_the_same(
        history: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        phone = Phone(Path(tmp))
        try:
            play(phone, history)
            report = earnings_report(phone.state)
        finally:
            phone.store.close()
    received = [a.seq for a in phone.delivered]
    assert report["missing_acks"] == rewards.missing_seqs(received)
    assert report["acked_credit"] == max((a.credit for a in phone.delivered), default=0)
    assert report["acks"] + report["acks_pruned"] == len(received)


def play(phone: Phone, history: list[tuple[Any, ...]]) -> None:
    seq, credit, now, closed_at = 0, 0, 1_000, 0
    pending: list[bytes] = []
    for step in history:
        if step[0] == "ack":
            _, dt, earned, kind, lost_one = step
            seq += 2 if lost_one else 1
            credit += earned
            now += dt
            if kind == "final" and pending:
                phone.ack(pending.pop(0), seq, credit, now)
            else:
                phone.ack(lease(seq), seq, credit, now, "pending" if kind == "pending" else
                          "accepted")
                if kind == "pending":
                    pending.append(lease(seq))
        elif step[0] == "claim":
            phone.claim_due(list(step[1]))
        else:
            _, lag, shortfall = step
            closed_at = max(closed_at + 1, now - lag)
            unclaimed = runs(phone)
            phone.settle(closed_at, shortfall)
            check_after_settlement(phone, unclaimed)


def check_after_settlement(phone: Phone, unclaimed: list[list[int]]) -> None:
    assert phone.kept() == expected_kept(phone)
    assert runs(phone) == unclaimed  # the gaps are all inside accepted claims
    full = verdicts(phone, [a.sealed for a in phone.delivered])
    assert verdicts(phone, [a.sealed for a in phone.store.logged_acks()]) == full
    assert phone.store.prune_acks() == 0 and phone.kept() == expected_kept(phone)
    assert phone.store.pruned_ack_count() == len(phone.delivered) - len(phone.kept())


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5), st.booleans()), max_size=30),
       st.lists(st.integers(0, 120), max_size=5))
def test_needless_acks_is_the_rule_on_any_ack_order(
        steps: list[tuple[int, int, bool]], closings: list[int]) -> None:
    """Without the store: acks need not come in time order, ties in credit and time abound."""
    acks = [(seq, credit, at, settled) for seq, (at, credit, settled) in enumerate(steps, 1)]
    best = {max((a for a in acks if a[2] <= c), key=lambda a: (a[1], a[0]))[0]
            for c in closings if any(a[2] <= c for a in acks)}
    horizon = max(closings, default=-1)
    assert needless_acks(acks, closings) == [
        a[0] for a in acks if a[3] and a[2] <= horizon and a[0] not in best]


# -- failures mid-prune ----------------------------------------------------------------------


def history_of_twenty(phone: Phone) -> None:
    for seq in range(1, 21):
        phone.ack(lease(seq), seq, 10 * seq, seq)
    phone.claim_due(["accepted"])


def snapshot(store: Store) -> tuple[Any, ...]:
    return (store.logged_acks(), store.settlements(), store.claims(), store.pruned_ack_count())


def test_a_failure_inside_the_prune_rolls_back_the_settlement_and_every_delete(
        phone: Phone) -> None:
    history_of_twenty(phone)
    before = snapshot(phone.store)
    # Another connection adds a trigger that fails on the 5th delete (acks 1..4 already gone
    # inside the transaction): the store's own statement fails half-way.
    other = sqlite3.connect(phone.state.db_path)
    other.execute("CREATE TRIGGER fail_mid_prune BEFORE DELETE ON ack_log WHEN old.seq = 5 "
                  "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    other.commit()
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        phone.settle(15)
    assert snapshot(phone.store) == before  # not the settlement either: one transaction
    assert phone.stats.counts["settlements"] == 0
    other.execute("DROP TRIGGER fail_mid_prune")
    other.commit()
    other.close()
    phone.epochs.clear()
    assert phone.settle(15) == 14 and phone.kept() == [15, 16, 17, 18, 19, 20]


KILLED_MID_PRUNE = """
import os, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from edge_agent.outbox import Store, StoredSettlement
store = Store(Path({db!r}))
store._db.create_function("die", 0, lambda: os._exit(3))  # no rollback, no close: a power cut
store._db.execute("CREATE TEMP TRIGGER die_mid_prune BEFORE DELETE ON ack_log "
                  "WHEN old.seq = 5 BEGIN SELECT die(); END")
store.store_settlement(StoredSettlement(1, 15, 150, Path({msg!r}).read_bytes(), 1))
"""


def test_a_process_killed_mid_prune_leaves_the_log_as_it_was(phone: Phone,
                                                             tmp_path: Path) -> None:
    history_of_twenty(phone)
    devices = sorted([phone.id, OTHER])
    settled = close_epoch(devices, [150 if d == phone.id else 7 for d in devices], epoch=1,
                          closed_at=15, prev=rewards.ZERO_HASH, sign=GW.sign)
    message = tmp_path / "settlement.cbor"
    message.write_bytes(settled.proof_message(phone.id))
    before = snapshot(phone.store)
    phone.store.close()
    script = KILLED_MID_PRUNE.format(root=str(Path(__file__).resolve().parent.parent),
                                     db=str(phone.state.db_path), msg=str(message))
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == 3
    phone.store = Store(phone.state.db_path)
    assert snapshot(phone.store) == before
    assert phone.store.store_settlement(StoredSettlement(1, 15, 150, message.read_bytes(),
                                                         1)) == 14
    assert [a.seq for a in phone.store.logged_acks()] == [15, 16, 17, 18, 19, 20]


# -- size -------------------------------------------------------------------------------------


def test_three_thousand_acks_over_ten_epochs_keep_one_per_epoch_and_the_unsettled(
    phone: Phone
) -> None:
    """A phone's months in small: 3,000 acks one second apart, claimed 64 at a time as the
    agent does, an epoch every 300 acks closing 60 s behind the newest ack."""
    total, every, lag = 3_000, 300, 60
    prune_s: list[float] = []
    for seq in range(1, total + 1):
        phone.ack(lease(seq), seq, 100 * seq, seq)
        if seq % 64 == 0:
            phone.claim_due(["accepted"])
        if seq % every == 0:
            started = time.perf_counter()
            phone.settle(seq - lag)
            prune_s.append(time.perf_counter() - started)
    kept = phone.kept()
    # After the last close: `lag` acks; before it, one best ack per epoch.
    assert kept == ([seq - lag for seq in range(every, total + 1, every)]
                    + list(range(total - lag + 1, total + 1)))
    assert phone.store.pruned_ack_count() == total - len(kept) == total - 10 - lag
    # Each result's latest ack goes with its last logged one: the outbox stays bounded too.
    assert sorted(a.seq for a in phone.store.acks()) == kept
    claimed_up_to = total // 64 * 64
    assert runs(phone) == [list(range(claimed_up_to + 1, total + 1))]  # not a full 64 yet
    print(f"\n{total} acks: {len(kept)} kept, {phone.store.pruned_ack_count()} pruned; "
          f"settlement + prune median {1000 * sorted(prune_s)[5]:.1f} ms, "
          f"max {1000 * max(prune_s):.1f} ms; db {os.path.getsize(phone.state.db_path)} B")
