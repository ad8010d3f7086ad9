"""Rewards in the gateway's ledger and the agent's store (docs/REWARDS.md), without a broker:
acks with seq and cumulative credit, claims judged against the ledger (each refusal), epochs
closed in one transaction and rebuilt from the ledger, the v3 migration's backfill; on the
agent, the ack log, claim batches, receipts and proofs checked before they are kept."""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from edge_agent.claims import Claims
from edge_agent.core import cbor, protocol, rewards, signing
from edge_agent.outbox import OutboxEntry, Store, StoredAck
from edge_agent.runtime import Stats
from gateway.config import ServiceLimits
from gateway.epochs import EpochError, load_epoch, settle_epoch, write_missing_files
from gateway.handlers_claim import handle_claim
from gateway.handlers_device import Context
from gateway.handlers_result import ack_signer
from gateway.jobflow import JobFlow
from gateway.keys import GatewayKey
from gateway.ledger import Ledger, NewTask
from gateway.ledger_schema import MIGRATIONS
from gateway.scheduler import Lease, Scheduler
from gateway.settlement import close_epoch, load_settlement
from tests.test_ledger import RUN_STATE

UNITS = 35_000  # montecarlo_pi points: 100 µcr each
EACH = rewards.credit("montecarlo_pi", UNITS)


class Device:
    def __init__(self, ledger: Ledger) -> None:
        self.key = nacl.signing.SigningKey.generate()
        token, secret = "tok-" + secrets.token_hex(8), secrets.token_bytes(16)
        ledger.create_token(token, secret, 0.0, ttl_s=3600.0)
        enrolment = ledger.enrol(token, secret, bytes(self.key.verify_key), 0.0)
        assert enrolment.device_id is not None
        self.id = enrolment.device_id
        Scheduler(ledger).report_state(self.id, RUN_STATE, 0.0)

    def sign(self, message: bytes) -> bytes:
        return bytes(self.key.sign(message).signature)

    def claim(self, first: int, ids: list[bytes], credit: int, dev: str | None = None) -> bytes:
        acked = [(first + i, rid, credit) for i, rid in enumerate(ids)]
        body = rewards.build_claim(dev or self.id, acked, 100)
        return bytes(protocol.seal(body, self.sign))


class Gateway:
    def __init__(self, tmp: Path) -> None:
        self.now = 1_000.0
        self.ledger = Ledger.open(tmp / "ledger.db", self.now)
        self.key = GatewayKey(bytes(32))
        self.sched = Scheduler(self.ledger, sign_ack=ack_signer(self.key, self.clock,
                                                                 self.ledger.ack_credit))
        self.ctx = Context(self.ledger, self.sched, self.key, JobFlow(self.ledger, self.clock),
                           self.clock, ServiceLimits(), lambda _deadline: None)
        job = self.ledger.add_job("j", "montecarlo_pi", cbor.dumps({}), 0.0)
        self.ledger.add_tasks(job, 0, (NewTask(i, cbor.dumps({"seed": i, "points": UNITS}),
                                               UNITS) for i in range(40)), 0.0)

    def clock(self) -> float:
        return self.now

    def work(self, device: Device) -> tuple[bytes, dict[str, Any]]:
        """One task leased and completed with a signed receipt: (receipt id, the ack)."""
        [lease] = self.sched.lease(device.id, 1, 3600.0, self.now).leases
        sealed = receipt(device, lease)
        env = cbor.loads(sealed)
        result = cbor.dumps({"inside": 1})
        outcome = self.sched.complete(lease.lease_id, device.id, hashlib.sha256(result).digest(),
                                      result, sealed, self.now)
        assert outcome.ack is not None
        ack, _, _ = protocol.open_sealed(outcome.ack, 4096, signing.verify, self.key.pub,
                                         ("ack",))
        return protocol.receipt_id(env["b"]), ack

    def send_claim(self, device: Device, sealed: bytes) -> tuple[bytes, dict[str, Any]]:
        [reply] = handle_claim(self.ctx, device.id, sealed)
        assert reply.topic == protocol.inbox_topic(device.id)
        body, _, _ = protocol.open_sealed(reply.payload, 1024, signing.verify, self.key.pub,
                                          ("claim_receipt",))
        return reply.payload, body


def receipt(device: Device, lease: Lease) -> bytes:
    body = protocol.message("result", lease=lease.lease_id, task=lease.wire_id, dev=device.id,
                            kernel="montecarlo_pi",
                            rhash=hashlib.sha256(cbor.dumps({"inside": 1})).digest(),
                            units=lease.work_units, started=1, finished=2)
    return bytes(protocol.seal(body, device.sign))


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


def test_acks_number_per_device_and_carry_the_cumulative_credit(gw: Gateway) -> None:
    a, b = Device(gw.ledger), Device(gw.ledger)
    acks = [gw.work(a)[1], gw.work(b)[1], gw.work(a)[1]]
    assert [(x["dev"], x["seq"], x["credit"]) for x in acks] == [
        (a.id, 1, EACH), (b.id, 1, EACH), (a.id, 2, 2 * EACH)]
    # Voided after it was acked (a recheck found it wrong): the signed credit is not taken back.
    with gw.ledger.transaction() as tx:
        [row] = [r for r in (tx.result(i) for i in (1, 2, 3)) if r.device_id == b.id]
        tx.set_result_status(row, UNITS, "rejected", "invalid")
    assert gw.ledger.device_counters(b.id)["credit"] == EACH
    # (Only the status moved here, not the verifier's whole recheck: the task still points at
    # the result, which check() reports; the credit invariants hold.)
    assert [p for p in gw.ledger.check() if "credit" in p] == []


def test_claims_are_judged_against_the_ledger_and_a_repeat_changes_nothing(gw: Gateway) -> None:
    a, b = Device(gw.ledger), Device(gw.ledger)
    ids = [gw.work(a)[0] for _ in range(3)]
    other = gw.work(b)[0]
    first, body = gw.send_claim(a, a.claim(1, ids, 3 * EACH))
    assert (body["status"], body["code"], body["credit"]) == ("accepted", "ok", 3 * EACH)
    again, body = gw.send_claim(a, a.claim(1, ids, 3 * EACH))  # signed anew: same range, root
    assert again == first and gw.ledger.rewards.claim_count(a.id) == 1
    refusals = [
        gw.send_claim(a, a.claim(2, ids[1:], 3 * EACH))[1],  # overlaps the accepted claim
        gw.send_claim(a, a.claim(4, [hashlib.sha256(b"x").digest()], 3 * EACH))[1],
        gw.send_claim(b, b.claim(1, [ids[0]], EACH))[1],  # a's receipt in b's claim
        gw.send_claim(b, b.claim(1, [other], EACH, dev=a.id))[1],  # names another device
        gw.send_claim(b, b.claim(1, [other], 2 * EACH))[1],  # not what ack 1 said
    ]
    assert [(r["status"], r["code"]) for r in refusals] == [
        ("rejected", "overlap"), ("rejected", "unacked"), ("rejected", "foreign"),
        ("rejected", "foreign"), ("rejected", "bad_credit")]
    with pytest.raises(protocol.ProtocolError, match="bad_signature"):
        handle_claim(gw.ctx, a.id, b.claim(1, [other], EACH, dev=a.id))  # b's key, a's topic
    assert gw.ledger.rewards.claim_count() == 1 and gw.ledger.check() == []


def test_epochs_close_over_the_ledger_chain_and_rebuild(gw: Gateway, tmp_path: Path) -> None:
    a, b = Device(gw.ledger), Device(gw.ledger)
    Device(gw.ledger)  # never acked: not in the epoch
    for device in (a, b, a):
        gw.work(device)
    one = settle_epoch(gw.ledger, gw.key, gw.clock).settlement
    assert dict(zip(one.devices, one.credits, strict=True)) == {a.id: 2 * EACH, b.id: EACH}
    assert (one.epoch, one.header["closed_at"]) == (1, int(gw.now) - 1)
    with pytest.raises(EpochError):  # within the same second
        settle_epoch(gw.ledger, gw.key, gw.clock)
    gw.now += 10
    gw.work(b)
    two = settle_epoch(gw.ledger, gw.key, gw.clock).settlement
    assert two.header["prev"] == one.header_hash and two.credits == [2 * EACH, 2 * EACH]
    assert load_epoch(gw.ledger, 2) == two
    written = write_missing_files(gw.ledger, tmp_path / "files", gw.key.pub)
    assert len(written) == 4 and write_missing_files(gw.ledger, tmp_path / "files",
                                                     gw.key.pub) == []
    assert load_settlement(tmp_path / "files" / "epoch-000002.cbor", gw.key.pub).root == two.root
    assert gw.ledger.rewards.unpublished() == [1, 2] and gw.ledger.check() == []


def test_the_rewards_migration_credits_work_accepted_before_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, 0.0, migrations=MIGRATIONS[:2]) as v2:
        device = Device(v2)
        job = v2.add_job("old", "montecarlo_pi", cbor.dumps({}), 0.0)
        conn = v2._conn
        conn.execute("INSERT INTO tasks (job_id, stage, idx, kernel, params_cbor, work_units, "
                     "state, max_attempts, created_at, wire_id) VALUES (?, 0, 0, "
                     "'montecarlo_pi', x'a0', ?, 'done', 3, 0, randomblob(16))", (job, UNITS))
        conn.execute("INSERT INTO leases (id, task_id, job_id, device_id, work_units, issued_at, "
                     "deadline, state) SELECT randomblob(16), id, job_id, ?, work_units, 0, 1, "
                     "'completed' FROM tasks WHERE job_id = ?", (device.id, job))
        conn.execute("INSERT INTO results (lease_id, task_id, device_id, result_hash, "
                     "result_cbor, receipt, received_at, status) SELECT id, task_id, device_id, "
                     "randomblob(32), x'a0', x'a0', 1, 'accepted' FROM leases")
    with Ledger.open(path, 1.0) as v3:
        assert v3.device_counters(device.id)["credit"] == EACH
        [(credit,)] = v3._conn.execute("SELECT credit FROM results").fetchall()
        assert credit == EACH


# -- the agent -------------------------------------------------------------------------------


class Agent:
    """A device's store and claims, fed what the gateway (a real key) would send."""

    def __init__(self, tmp: Path, gw: GatewayKey) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.id = protocol.device_id(bytes(self.key.verify_key))
        self.gw = gw
        self.store = Store(tmp / "agent.sqlite3")
        self.stats = Stats()
        self.claims = Claims(self.store, self.id, gw.pub, self.sign, self.stats)

    def sign(self, message: bytes) -> bytes:
        return bytes(self.key.sign(message).signature)

    def result(self, lease: bytes) -> bytes:
        """Store a signed result in the outbox; its receipt id."""
        rhash = hashlib.sha256(lease).digest()
        body = protocol.message("result", lease=lease, task=lease, dev=self.id,
                                kernel="montecarlo_pi", rhash=rhash, units=1, started=1,
                                finished=2)
        sealed = bytes(protocol.seal(body, self.sign, attachment={"x": 1}))
        self.store.store_result(OutboxEntry(lease, lease, rhash, sealed), 1)
        return bytes(protocol.receipt_id(cbor.dumps(body)))

    def ack(self, lease: bytes, seq: int, credit: int, status: str = "accepted") -> None:
        body = protocol.message("ack", lease=lease, task=lease, dev=self.id,
                                rhash=hashlib.sha256(lease).digest(), status=status, code="ok",
                                seq=seq, credit=credit, at=int(time.time()))
        sealed = bytes(protocol.seal(body, self.gw.sign))
        assert self.store.store_ack(StoredAck(lease, lease, body["rhash"], status, seq, credit,
                                              sealed))


def test_the_agent_logs_every_ack_and_claims_consecutive_runs(tmp_path: Path) -> None:
    gw = GatewayKey(bytes(32))
    agent = Agent(tmp_path, gw)
    first, second = agent.result(b"A" * 16), agent.result(b"B" * 16)
    agent.ack(b"A" * 16, 1, 0, "pending")
    agent.ack(b"A" * 16, 2, 5)  # the final ack: its receipt id comes from the log
    agent.ack(b"B" * 16, 4, 9)  # ack 3 never arrived
    assert [(a.seq, a.receipt_id) for a in agent.store.logged_acks()] == [
        (1, first), (2, first), (4, second)]
    assert agent.claims.due(all_of_them=False) == []  # no full batch yet
    runs = agent.claims.due(all_of_them=True)
    assert [[a.seq for a in run] for run in runs] == [[1, 2], [4]]
    claims = [agent.claims.make_claim(run, 100) for run in runs]
    assert agent.store.unclaimed_acks() == []
    body = protocol.message("claim_receipt", dev=agent.id, first=1, last=2,
                            root=claims[0].root, credit=5, status="accepted", code="ok", at=1)
    agent.claims.on_receipt(bytes(protocol.seal(body, gw.sign)))
    agent.claims.on_receipt(bytes(protocol.seal(body, gw.sign)))  # a repeat: nothing new
    assert agent.stats.counts["claim_accepted"] == 1
    assert agent.stats.counts["claim_receipt_unknown"] == 1
    with pytest.raises(protocol.ProtocolError, match="bad_signature"):
        agent.claims.on_receipt(bytes(protocol.seal(body, GatewayKey(bytes([1]) * 32).sign)))
    assert [c.status for c in agent.store.claims()] == ["accepted", None]


def test_the_agent_keeps_only_proofs_that_verify(tmp_path: Path) -> None:
    gw = GatewayKey(bytes(32))
    agent = Agent(tmp_path, gw)
    other = protocol.device_id(b"other")
    devices = sorted([agent.id, other])
    settled = close_epoch(devices, [7, 9], epoch=1, closed_at=5, prev=rewards.ZERO_HASH,
                          sign=gw.sign)
    forged = close_epoch(devices, [7, 9], epoch=1, closed_at=5, prev=rewards.ZERO_HASH,
                         sign=GatewayKey(bytes([2]) * 32).sign)
    with pytest.raises(rewards.RewardsError, match="not_mine"):
        agent.claims.on_settlement(settled.proof_message(other))
    with pytest.raises(protocol.ProtocolError, match="bad_signature"):
        agent.claims.on_settlement(forged.proof_message(agent.id))
    agent.claims.on_settlement(settled.proof_message(agent.id))
    agent.claims.on_settlement(settled.proof_message(agent.id))
    assert agent.stats.counts["settlements"] == 1
    assert agent.stats.counts["settlement_repeat"] == 1
    [kept] = agent.claims.verified_settlements()
    assert (kept["epoch"], kept["credit"]) == (1, settled.credits[devices.index(agent.id)])
