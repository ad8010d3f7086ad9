"""edge_agent.core.rewards on CPython: credit, leaves, claims, offline settlement checks, disputes.

The gateway side (gateway/settlement.py) makes the settlements checked here; helpers at the top are
shared with tests/test_settlement.py and tests/test_dispute.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.core import merkle, rewards, signing
from edge_agent.core import protocol as p
from edge_agent.core.kernels import REGISTRY
from gateway.settlement import Settlement, close_epoch

GW_SEED = bytes(range(1, 33))
GW_KEY = nacl.signing.SigningKey(GW_SEED)
GW_PUB = bytes(GW_KEY.verify_key)
OTHER_KEY = nacl.signing.SigningKey(bytes(32))
CLOSED_AT = 1_700_000_000


def gw_sign(msg: bytes) -> bytes:
    return GW_KEY.sign(msg).signature


def dev_id(k: int) -> str:
    return str(p.device_id(k.to_bytes(4, "big") * 8))


def settle(
    credits: dict[str, int],
    epoch: int = 1,
    prev: bytes = rewards.ZERO_HASH,
    closed_at: int = CLOSED_AT,
) -> Settlement:
    devices = sorted(credits)
    return close_epoch(
        devices,
        [credits[d] for d in devices],
        epoch=epoch,
        closed_at=closed_at,
        prev=prev,
        sign=gw_sign,
    )


def seal_ack(
    dev: str, seq: int, credit: int, at: int, key: nacl.signing.SigningKey = GW_KEY
) -> bytes:
    body = p.message(
        "ack",
        lease=seq.to_bytes(16, "big"),
        task=b"T" * 16,
        dev=dev,
        rhash=hashlib.sha256(b"%d" % seq).digest(),
        status="accepted",
        code="",
        seq=seq,
        credit=credit,
        at=at,
    )
    return bytes(p.seal(body, lambda m: key.sign(m).signature))


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


FLEET = {dev_id(k): 1_000 * k for k in range(1, 21)}


# --- credit ----------------------------------------------------------------------------------


def test_every_registry_kernel_has_a_rate_and_no_other() -> None:
    assert set(rewards.RATES) == set(REGISTRY)


# Reference speeds of the C kernels (docs/KERNELS.md, benchmarks/kernels.py), units per second.
REFERENCE_UNITS_PER_S = {"gemm_i8": 29.65e9, "montecarlo_pi": 348e6, "sha256_search": 31.7e6}


@pytest.mark.parametrize("kernel", sorted(REFERENCE_UNITS_PER_S))
def test_a_reference_device_second_earns_about_one_credit_on_every_kernel(kernel: str) -> None:
    earned = rewards.credit(kernel, int(REFERENCE_UNITS_PER_S[kernel]))
    assert 0.95 * rewards.MICRO <= earned <= 1.05 * rewards.MICRO


def test_credit_is_an_integer_floor_of_units_times_rate() -> None:
    assert rewards.credit("gemm_i8", 29_999) == 0
    assert rewards.credit("gemm_i8", 30_000) == 1
    assert rewards.credit("sha256_search", 2**32) == 2**32 // 32
    assert rewards.credit("montecarlo_pi", 0) == 0
    assert type(rewards.credit("montecarlo_pi", 10**12)) is int


@pytest.mark.parametrize(
    ("kernel", "units", "code"),
    [
        ("nope", 5, "unknown_kernel"),
        ("gemm_i8", -1, "bad_units"),
        ("gemm_i8", 2.0, "bad_units"),
        ("gemm_i8", True, "bad_units"),
    ],
)
def test_credit_refuses_what_it_cannot_price(kernel: str, units: Any, code: str) -> None:
    with pytest.raises(rewards.RewardsError) as e:
        rewards.credit(kernel, units)
    assert e.value.code == code


# --- leaves ----------------------------------------------------------------------------------


@given(st.integers(0, 2**32 - 1), st.binary(min_size=16, max_size=16), st.integers(0, 2**64 - 1))
def test_leaf_is_uniswap_packing_with_a_16_byte_account(
    index: int, dev: bytes, amount: int
) -> None:
    # abi.encodePacked(uint256 index, bytes16 account, uint256 amount)
    expected = index.to_bytes(32, "big") + dev + amount.to_bytes(32, "big")
    leaf = rewards.leaf(index, dev.hex(), amount)
    assert leaf == expected and len(leaf) == rewards.LEAF_SIZE
    assert rewards.parse_leaf(leaf) == (index, dev.hex(), amount)


def test_parse_leaf_rejects_non_leaves() -> None:
    good = rewards.leaf(3, dev_id(1), 7)
    for bad in (good[:-1], good + b"\x00", flipped(good, 0), flipped(good, 8 * 50)):
        with pytest.raises(rewards.RewardsError):
            rewards.parse_leaf(bad)


# --- claims ----------------------------------------------------------------------------------


def acked(first: int, count: int) -> list[tuple[int, bytes, int]]:
    return [(s, hashlib.sha256(b"r%d" % s).digest(), 100 * s) for s in range(first, first + count)]


def test_claim_is_one_root_over_receipt_ids_in_seq_order() -> None:
    batch = acked(5, 7)
    claim = rewards.build_claim(dev_id(1), batch, at=CLOSED_AT)
    assert (claim["first"], claim["last"], claim["n"], claim["credit"]) == (5, 11, 7, 1100)
    assert claim["root"] == merkle.root([a[1] for a in batch])
    assert p.decode(p.encode(claim), p.MAX_PAYLOAD["claim"], ("claim",)) == claim
    sealed = p.seal(claim, gw_sign)  # one signature for the whole batch, and it fits its topic
    assert len(sealed) <= p.MAX_PAYLOAD["claim"]


def test_full_claim_fits_the_claim_topic_limit() -> None:
    claim = rewards.build_claim(dev_id(1), acked(1, p.MAX_CLAIM_RECEIPTS), at=CLOSED_AT)
    assert len(p.seal(claim, gw_sign)) <= p.MAX_PAYLOAD["claim"]


def test_claim_needs_consecutive_seqs() -> None:
    with pytest.raises(rewards.RewardsError) as e:
        rewards.build_claim(dev_id(1), [*acked(1, 2), *acked(4, 1)], at=CLOSED_AT)
    assert e.value.code == "bad_range"
    with pytest.raises(rewards.RewardsError):
        rewards.build_claim(dev_id(1), [], at=CLOSED_AT)


def test_batches_split_at_gaps_and_size_and_missing_acks_show() -> None:
    items = [*acked(1, 5), *acked(8, 3)]
    assert [[a[0] for a in b] for b in rewards.claim_batches(items, size=2)] == [
        [1, 2],
        [3, 4],
        [5],
        [8, 9],
        [10],
    ]
    assert rewards.missing_seqs([a[0] for a in items]) == [6, 7]
    assert rewards.missing_seqs([3, 4], after=2) == []
    assert rewards.missing_seqs([], after=9) == []


# --- offline verification of a settlement ------------------------------------------------------


@pytest.mark.parametrize(
    "verify", [signing.nacl_verify, signing.core_verify], ids=["pynacl", "core"]
)
def test_every_device_verifies_its_proof_offline(verify: Any) -> None:
    s = settle(FLEET)
    for dev, msg in s.proof_messages():
        got = rewards.verify_settlement(msg, GW_PUB, verify, dev)
        assert got["credit"] == FLEET[dev] and got["epoch"] == 1 and got["n"] == len(FLEET)
        assert got["hash"] == s.header_hash and got["sealed"] == s.sealed_header
    assert sum(FLEET.values()) == s.header["total"]


def test_every_flipped_bit_of_a_settlement_message_is_rejected() -> None:
    s = settle(FLEET)
    dev = s.devices[13]
    msg = s.proof_message(dev)
    for bit in range(8 * len(msg)):
        with pytest.raises((p.ProtocolError, rewards.RewardsError)):
            rewards.verify_settlement(flipped(msg, bit), GW_PUB, signing.verify, dev)


def _message(s: Settlement, i: int, **over: Any) -> dict[str, Any]:
    body = {"v": 1, "t": "settlement", "epoch": s.sealed_header, **s.leaf(i)}
    body.update(over)
    return body


def test_tampered_leaf_proof_root_or_signature_is_rejected_with_its_reason() -> None:
    s = settle(FLEET)
    i, dev = 4, s.devices[4]
    assert rewards.verify_settlement(_message(s, i), GW_PUB, signing.verify, dev)["index"] == i

    def rejected(body: dict[str, Any], code: str) -> None:
        with pytest.raises((p.ProtocolError, rewards.RewardsError)) as e:
            rewards.verify_settlement(body, GW_PUB, signing.verify, dev)
        assert e.value.code == code, e.value

    rejected(_message(s, i, credit=FLEET[dev] + 1), "bad_proof")  # leaf amount
    rejected(_message(s, i, index=i + 1), "bad_proof")  # leaf position
    rejected(_message(s, i, path=flipped(s.path(i), 77)), "bad_proof")  # proof
    rejected(_message(s, i, path=s.path(i)[:-32]), "bad_proof")
    rejected(_message(s, i, path=s.path(i)[:-1]), "bad_proof")
    rejected(_message(s, i + 1), "not_mine")
    # A header with a flipped root: either its signature fails, or (re-signed by the gateway
    # itself) the proof no longer leads to it.
    env = p.cbor.loads(s.sealed_header)
    body = p.cbor.loads(env["b"])
    body["root"] = flipped(body["root"], 5)
    rejected(_message(s, i, epoch=p.cbor.dumps(dict(env, b=p.cbor.dumps(body)))), "bad_signature")
    rejected(_message(s, i, epoch=p.seal(body, gw_sign)), "bad_proof")
    rejected(_message(s, i, epoch=p.cbor.dumps(dict(env, s=flipped(env["s"], 9)))), "bad_signature")
    with pytest.raises(p.ProtocolError):  # another gateway's key
        rewards.verify_settlement(_message(s, i), bytes(OTHER_KEY.verify_key), signing.verify, dev)


def test_earnings_per_epoch_follow_the_chain_of_headers() -> None:
    dev = dev_id(3)
    e1 = settle({dev: 500, dev_id(4): 1})
    e2 = settle({dev: 1_200, dev_id(4): 1}, epoch=2, prev=e1.header_hash)
    e3 = settle({dev: 1_100, dev_id(4): 1}, epoch=3, prev=bytes(32))  # forked and lower
    seen = [
        rewards.verify_settlement(e.proof_message(dev), GW_PUB, signing.verify, dev)
        for e in (e3, e1, e2)
    ]
    rows = rewards.epoch_earnings(seen)
    assert [(r["epoch"], r["credit"], r["earned"]) for r in rows] == [
        (1, 500, 500),
        (2, 1200, 700),
        (3, 1100, 0),
    ]
    assert [r["chained"] for r in rows] == [True, True, False]
    assert [r["decreased"] for r in rows] == [False, False, True]


# --- disputes (the gateway-side command is tested in tests/test_dispute.py) -------------------


def own_leaf_dispute(s: Settlement, dev: str, acks: list[bytes]) -> dict[str, Any] | None:
    settled = rewards.verify_settlement(s.proof_message(dev), GW_PUB, signing.verify, dev)
    evidence: dict[str, Any] | None = rewards.dispute_from_settlement(
        settled, GW_PUB, signing.verify, acks
    )
    return evidence


def test_settlement_that_omitted_acked_work_gives_proven_evidence() -> None:
    dev = dev_id(7)
    s = settle({**FLEET, dev: 6_000})  # the gateway acked 7,000 before the close
    acks = [
        seal_ack(dev, 1, 6_000, CLOSED_AT - 50),
        seal_ack(dev, 2, 7_000, CLOSED_AT),
        seal_ack(dev, 3, 9_000, CLOSED_AT + 1),
    ]  # after the close: next epoch's, not evidence
    evidence = own_leaf_dispute(s, dev, acks)
    assert evidence is not None and evidence["acks"] == [acks[1].hex()]
    verdict = rewards.check_dispute(evidence, signing.verify)
    assert verdict["proven"] and verdict["code"] == "underpaid"
    assert (verdict["settled"], verdict["acked"], verdict["shortfall"]) == (6_000, 7_000, 1_000)
    assert verdict["gateway_pub"] == GW_PUB and verdict["epoch"] == 1


def test_honest_settlement_gives_no_dispute() -> None:
    dev = dev_id(7)
    s = settle(FLEET)
    honest = [
        seal_ack(dev, 1, FLEET[dev] - 10, CLOSED_AT - 9),
        seal_ack(dev, 2, FLEET[dev], CLOSED_AT),
    ]
    assert own_leaf_dispute(s, dev, honest) is None
    # Evidence assembled by hand from honest data is judged, and not proven.
    evidence = {
        "format": rewards.DISPUTE_FORMAT,
        "gateway_pub": GW_PUB.hex(),
        "dev": dev,
        "epoch": s.sealed_header.hex(),
        "leaves": [dict(s.leaf(s.devices.index(dev)), path=s.path(s.devices.index(dev)).hex())],
        "acks": [a.hex() for a in honest],
    }
    verdict = rewards.check_dispute(evidence, signing.verify)
    assert not verdict["proven"] and verdict["code"] == "no_dispute", verdict


def test_device_left_out_of_a_settlement_proves_it_with_the_neighbouring_leaves() -> None:
    fleet = dict(FLEET)
    for dev in sorted(fleet)[:1] + sorted(fleet)[9:10] + sorted(fleet)[-1:]:  # first, middle, last
        credit = fleet.pop(dev)
        s = settle(fleet)
        bracket = s.bracket(dev)
        assert 1 <= len(bracket) <= 2
        evidence = rewards.build_dispute(
            GW_PUB,
            signing.verify,
            s.sealed_header,
            bracket,
            dev=dev,
            sealed_acks=[seal_ack(dev, 4, credit, CLOSED_AT - 1)],
        )
        assert evidence is not None
        verdict = rewards.check_dispute(evidence, signing.verify)
        assert verdict["proven"] and verdict["code"] == "omitted" and verdict["shortfall"] == credit
        fleet[dev] = credit


def test_leaves_that_do_not_bracket_the_device_prove_nothing() -> None:
    s = settle(FLEET)
    absent = "f" * 32 if s.devices[-1] < "f" * 32 else "0" * 32
    far = [s.leaf(0), s.leaf(5)]  # not neighbours of where the absent id would sit
    with pytest.raises(rewards.RewardsError) as e:
        rewards.build_dispute(
            GW_PUB,
            signing.verify,
            s.sealed_header,
            far,
            dev=absent,
            sealed_acks=[seal_ack(absent, 1, 5, CLOSED_AT)],
        )
    assert e.value.code == "bad_evidence"


def test_tampered_or_foreign_evidence_is_not_proven() -> None:
    dev = dev_id(2)
    s = settle({**FLEET, dev: 10})
    evidence = own_leaf_dispute(s, dev, [seal_ack(dev, 9, 2_000, CLOSED_AT)])
    assert evidence is not None
    good: dict[str, Any] = evidence
    assert rewards.check_dispute(good, signing.verify)["proven"]
    for name in ("epoch", "acks"):
        raw = bytes.fromhex(good[name] if name == "epoch" else good[name][0])
        for bit in range(0, 8 * len(raw), 7):
            bad_hex = flipped(raw, bit).hex()
            bad = dict(good, **{name: bad_hex if name == "epoch" else [bad_hex]})
            assert not rewards.check_dispute(bad, signing.verify)["proven"], (name, bit)
    forged = dict(good, acks=[seal_ack(dev, 9, 2_000, CLOSED_AT, key=OTHER_KEY).hex()])
    late = dict(good, acks=[seal_ack(dev, 9, 2_000, CLOSED_AT + 1).hex()])
    other = dict(good, acks=[seal_ack(dev_id(3), 9, 2_000, CLOSED_AT).hex()])
    leaf = dict(good["leaves"][0], credit=9)
    junk: Any
    for junk in (
        forged,
        late,
        other,
        dict(good, leaves=[leaf]),
        dict(good, format="x"),
        [],
        None,
        dict(good, acks=[]),
        dict(good, leaves="x"),
        dict(good, gateway_pub="zz"),
    ):
        verdict = rewards.check_dispute(junk, signing.verify)
        assert not verdict["proven"] and verdict["code"] == "bad_evidence", junk
