"""gateway/settlement.py: closing epochs (tree, proofs, signed header, files) and judging claims."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.core import cbor, merkle, rewards, signing
from edge_agent.core import protocol as p
from gateway.settlement import (
    AckedReceipt,
    ClaimedRange,
    SettlementError,
    all_paths,
    check_claim,
    close_epoch,
    level_path,
    load_settlement,
    seal_claim_receipt,
    tree_levels,
)
from tests.test_rewards import (
    CLOSED_AT,
    FLEET,
    GW_PUB,
    OTHER_KEY,
    dev_id,
    flipped,
    gw_sign,
    settle,
)

# SHA-256 of the sealed epoch header CPython makes for PINNED; tests/mpy/test_rewards.py makes the
# same settlement under MicroPython and must get the same bytes.
PINNED = {dev_id(k): 10**12 * k + 7 for k in range(1, 6)}
PINNED_SEALED_SHA256 = "6ea6280b1bb9c5446492e6114263fed7922e48c46be9266dfb7fd90c31cb0be9"


@given(st.integers(0, 70))
def test_levels_and_paths_equal_the_core_merkle_tree(n: int) -> None:
    leaves = [b"leaf %d" % i for i in range(n)]
    hashes = [merkle.leaf_hash(x) for x in leaves]
    levels = tree_levels(hashes)
    assert levels == merkle.levels(hashes)
    tree = merkle.MerkleTree(leaves)
    assert all_paths(levels) == [b"".join(tree.proof(i)) for i in range(n)]
    assert [level_path(levels, i) for i in range(n)] == all_paths(levels)


def test_level_path_refuses_a_leaf_that_is_not_there() -> None:
    levels = tree_levels([merkle.leaf_hash(b"x")])
    assert level_path(levels, 0) == b""
    for i in (-1, 1):
        with pytest.raises(IndexError):
            level_path(levels, i)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 33])
def test_settlement_is_the_core_tree_over_core_leaves(n: int) -> None:
    rng = random.Random(n)
    credits = {dev_id(k): rng.randrange(2**64 // 64) for k in range(n)}
    s = settle(credits)
    devices = sorted(credits)
    leaves = [rewards.leaf(i, d, credits[d]) for i, d in enumerate(devices)]
    assert s.root == merkle.root(leaves)
    assert s.header == p.message(
        "epoch",
        epoch=1,
        n=n,
        root=s.root,
        total=sum(credits.values()),
        closed_at=CLOSED_AT,
        prev=rewards.ZERO_HASH,
    )
    assert s.header_hash == hashlib.sha256(cbor.dumps(s.header)).digest()
    header = rewards.open_epoch(s.sealed_header, GW_PUB, signing.verify)
    assert header["hash"] == s.header_hash
    for i, d in enumerate(devices):
        assert s.index(d) == i
        assert merkle.verify(s.root, leaves[i], i, n, rewards.split_path(s.path(i)))


def test_header_bytes_match_the_pinned_micropython_ones() -> None:
    s = settle(PINNED)
    assert hashlib.sha256(s.sealed_header).hexdigest() == PINNED_SEALED_SHA256


def test_proof_messages_are_canonical_cbor_and_fit_the_inbox() -> None:
    s = settle(FLEET)
    for dev, msg in s.proof_messages():
        i = s.index(dev)
        assert i is not None
        body = p.message("settlement", epoch=s.sealed_header, **s.leaf(i))
        assert msg == p.encode(body) == s.proof_message(dev)
        assert len(msg) <= p.MAX_PAYLOAD["settlement"]
    with pytest.raises(KeyError):
        s.proof_message(dev_id(999))


def test_twenty_devices_two_epochs_chain_and_sum_to_the_ledger() -> None:
    e1 = settle(FLEET)
    grown = {d: c + 5 * i for i, (d, c) in enumerate(sorted(FLEET.items()))}
    e2 = settle(grown, epoch=2, prev=e1.header_hash, closed_at=CLOSED_AT + 3600)
    assert e2.header["prev"] == e1.header_hash != e2.header_hash
    for e, credits in ((e1, FLEET), (e2, grown)):
        assert e.header["total"] == sum(credits.values()) == sum(e.credits)
        for dev, msg in e.proof_messages():
            settled = rewards.verify_settlement(msg, GW_PUB, signing.verify, dev)
            assert settled["credit"] == credits[dev]


@pytest.mark.parametrize(
    ("devices", "credits", "why"),
    [
        (sorted([dev_id(1), dev_id(2)], reverse=True), [1, 2], "sorted"),
        ([dev_id(1), dev_id(1)], [1, 2], "sorted"),
        ([dev_id(1).upper()], [1], "lowercase hex"),
        ([dev_id(1)[:31], dev_id(2) + "0"], [1, 2], "lowercase hex"),
        ([" " + dev_id(1)[1:]], [1], "lowercase hex"),
        ([dev_id(1)[:30] + "zz"], [1], "lowercase hex"),
        ([dev_id(1)], [-1], "ints in"),
        ([dev_id(1)], [2**64], "ints in"),
        ([dev_id(1)], [1.5], "ints in"),
        (sorted([dev_id(1), dev_id(2)]), [2**63, 2**63], "above 2\\*\\*64"),
        ([dev_id(1)], [], "length"),
    ],
)
def test_bad_rows_are_refused(devices: list[str], credits: list[Any], why: str) -> None:
    with pytest.raises(SettlementError, match=why):
        close_epoch(
            devices, credits, epoch=1, closed_at=CLOSED_AT, prev=rewards.ZERO_HASH, sign=gw_sign
        )


def test_files_round_trip_and_verify(tmp_path: Path) -> None:
    s = settle(FLEET)
    json_path, cbor_path = s.write(tmp_path, GW_PUB)
    doc = json.loads(json_path.read_text())
    assert (doc["root"], doc["total"], doc["n"]) == (s.root.hex(), s.header["total"], 20)
    assert cbor2.loads(cbor_path.read_bytes())["header"] == s.sealed_header
    for path in (json_path, cbor_path):
        loaded = load_settlement(path, GW_PUB)
        assert (loaded.root, loaded.devices, loaded.credits) == (s.root, s.devices, s.credits)
        assert loaded.header_hash == s.header_hash and loaded.paths() == s.paths()


def test_tampered_files_are_refused(tmp_path: Path) -> None:
    s = settle(FLEET)
    json_path, cbor_path = s.write(tmp_path, GW_PUB)
    doc = json.loads(json_path.read_text())
    cases: dict[str, Callable[[dict[str, Any]], None]] = {
        "credit": lambda d: d["leaves"][3].update(credit=d["leaves"][3]["credit"] + 1),
        "order": lambda d: d["leaves"].reverse(),
        "dropped": lambda d: d["leaves"].pop(),
        "signature": lambda d: d.update(header=flipped(bytes.fromhex(d["header"]), 600).hex()),
        "key": lambda d: d.update(gateway_pub=bytes(OTHER_KEY.verify_key).hex()),
        "format": lambda d: d.update(format="x"),
    }
    for name, tamper in cases.items():
        bad = json.loads(json.dumps(doc))
        tamper(bad)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(SettlementError):
            load_settlement(path, GW_PUB)
    with pytest.raises(SettlementError, match="not the one given"):
        load_settlement(cbor_path, bytes(OTHER_KEY.verify_key))
    garbage = tmp_path / "garbage.cbor"
    garbage.write_bytes(b"\xff\x00")
    with pytest.raises(SettlementError):
        load_settlement(garbage)


# --- claims ------------------------------------------------------------------------------------

DEV, OTHER = dev_id(1), dev_id(2)


def receipt_ids(device: str, seqs: range) -> list[bytes]:
    return [hashlib.sha256(f"{device}/{s}".encode()).digest() for s in seqs]


ACKED = [
    AckedReceipt(s, r, 50 * s)
    for s, r in zip(range(1, 11), receipt_ids(DEV, range(1, 11)), strict=True)
]
FOREIGN = receipt_ids(OTHER, range(1, 3))


def owner_of(rid: bytes) -> str | None:
    return DEV if any(a.receipt_id == rid for a in ACKED) else OTHER if rid in FOREIGN else None


def claim_of(first: int, last: int, **over: Any) -> dict[str, Any]:
    acks = [(a.seq, a.receipt_id, a.credit) for a in ACKED if first <= a.seq <= last]
    body: dict[str, Any] = rewards.build_claim(DEV, acks, at=CLOSED_AT)
    body.update(over)
    return body


def judge(claim: dict[str, Any], accepted: list[ClaimedRange] | None = None) -> tuple[str, str]:
    v = check_claim(claim, sender=DEV, acked=ACKED, accepted=accepted or [], owner_of=owner_of)
    return v.status, v.code


def with_ids(claim: dict[str, Any], ids: list[bytes]) -> dict[str, Any]:
    return dict(claim, ids=ids, root=merkle.root(ids))


def test_a_claim_over_acked_receipts_is_accepted_with_a_signed_receipt() -> None:
    claim = claim_of(3, 7)
    verdict = check_claim(claim, sender=DEV, acked=ACKED, accepted=[], owner_of=owner_of)
    assert verdict.accepted and verdict.code == "ok"
    receipt, _, _ = p.open_sealed(
        seal_claim_receipt(claim, verdict, CLOSED_AT, gw_sign),
        p.MAX_PAYLOAD["claim_receipt"],
        signing.verify,
        GW_PUB,
        ("claim_receipt",),
    )
    assert rewards.receipt_matches(receipt, claim) and receipt["status"] == "accepted"
    assert receipt["credit"] == 350
    assert not rewards.receipt_matches(dict(receipt, root=bytes(32)), claim)


def test_a_replayed_claim_is_a_repeat_and_an_overlapping_one_is_refused() -> None:
    done = [ClaimedRange(3, 7, claim_of(3, 7)["root"])]
    assert judge(claim_of(3, 7), done) == ("rejected", "repeat")
    assert judge(claim_of(7, 9), done) == ("rejected", "overlap")
    assert judge(claim_of(1, 3), done) == ("rejected", "overlap")
    assert judge(claim_of(8, 10), done) == ("accepted", "ok")
    assert judge(claim_of(1, 2), done) == ("accepted", "ok")


def test_claims_with_unacked_foreign_or_misplaced_receipts_are_refused() -> None:
    base = claim_of(1, 3)
    ids = list(base["ids"])
    assert judge(with_ids(base, [ids[0], FOREIGN[0], ids[2]])) == ("rejected", "foreign")
    assert judge(with_ids(base, [ids[0], bytes(32), ids[2]])) == ("rejected", "unacked")
    assert judge(with_ids(base, [ids[1], ids[0], ids[2]])) == ("rejected", "bad_order")
    assert judge(with_ids(base, [ids[0], ids[1], ACKED[9].receipt_id])) == ("rejected", "bad_order")
    beyond = receipt_ids(DEV, range(11, 13))  # seqs the gateway never acked
    tail = rewards.build_claim(DEV, [(11, beyond[0], 600), (12, beyond[1], 650)], at=CLOSED_AT)
    assert judge(tail) == ("rejected", "unacked")
    assert judge(dict(base, dev=OTHER)) == ("rejected", "foreign")


def test_claims_with_inconsistent_fields_are_refused() -> None:
    base = claim_of(2, 5)
    assert judge(dict(base, root=bytes(32))) == ("rejected", "bad_root")
    assert judge(dict(base, n=3)) == ("rejected", "bad_range")
    assert judge(dict(base, last=6)) == ("rejected", "bad_range")
    assert judge(dict(base, first=6, last=5)) == ("rejected", "bad_range")
    assert judge(dict(base, credit=base["credit"] + 1)) == ("rejected", "bad_credit")
    rejected = check_claim(
        dict(base, root=bytes(32)), sender=DEV, acked=ACKED, accepted=[], owner_of=owner_of
    )
    body = p.cbor.loads(p.cbor.loads(seal_claim_receipt(base, rejected, CLOSED_AT, gw_sign))["b"])
    assert (body["status"], body["code"]) == ("rejected", "bad_root")
    assert {v for v in rewards.CLAIM_CODES} >= {"ok", "repeat", "overlap", "unacked", "foreign"}
