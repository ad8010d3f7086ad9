# edge_agent.core.rewards under the real MicroPython: the device checks its settlement proof and the
# gateway's epoch signature offline with the core's own Ed25519, byte-identical to CPython's
# settlement (pinned hash), and judges dispute evidence. tests/test_rewards.py covers the rest.
import hashlib

from mpyassert import raises, unhex

from edge_agent.core import ed25519, merkle, rewards
from edge_agent.core import protocol as p

GW_SEED = bytes(range(1, 33))  # the key tests/test_rewards.py signs with
GW_PUB = ed25519.publickey(GW_SEED)
CLOSED_AT = 1700000000
# tests/test_settlement.py pins the same bytes from gateway.settlement.close_epoch on CPython.
PINNED_SEALED_SHA256 = "6ea6280b1bb9c5446492e6114263fed7922e48c46be9266dfb7fd90c31cb0be9"


def _sign(msg):
    return ed25519.sign(GW_SEED, msg)


def _dev(k):
    return p.device_id(k.to_bytes(4, "big") * 8)


def _flip(data, bit):
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def _settle(credits, epoch=1, prev=rewards.ZERO_HASH):
    """A settlement made with the core alone: what the gateway makes, for the device to check."""
    devices = sorted(credits)
    leaves = [rewards.leaf(i, d, credits[d]) for i, d in enumerate(devices)]
    tree = merkle.MerkleTree(leaves)
    total = 0
    for d in devices:
        total += credits[d]
    header = p.message(
        "epoch",
        epoch=epoch,
        n=len(devices),
        root=tree.root(),
        total=total,
        closed_at=CLOSED_AT,
        prev=prev,
    )
    sealed = p.seal(header, _sign)
    messages = {}
    for i, d in enumerate(devices):
        path = b"".join(tree.proof(i))
        messages[d] = p.message(
            "settlement", epoch=sealed, dev=d, index=i, credit=credits[d], path=path
        )
    return sealed, messages


PINNED = {}
for _k in range(1, 6):
    PINNED[_dev(_k)] = 10**12 * _k + 7
SEALED, MESSAGES = _settle(PINNED)


def test_header_bytes_equal_cpython_gateway():
    assert hashlib.sha256(SEALED).digest() == unhex(PINNED_SEALED_SHA256)


def test_every_device_verifies_its_proof_offline():
    for dev in sorted(MESSAGES):
        got = rewards.verify_settlement(p.encode(MESSAGES[dev]), GW_PUB, ed25519.verify, dev)
        assert got["credit"] == PINNED[dev] and got["n"] == 5 and got["epoch"] == 1
        assert got["total"] == 15 * 10**12 + 35


def test_tampered_leaf_proof_root_and_signature_are_rejected():
    dev = sorted(MESSAGES)[2]
    good = MESSAGES[dev]
    env = p.cbor.loads(SEALED)
    header = p.cbor.loads(env["b"])
    header["root"] = _flip(header["root"], 3)
    bad_root = p.cbor.dumps({"v": 1, "t": "epoch", "b": p.cbor.dumps(header), "s": env["s"]})
    bad_sig = p.cbor.dumps({"v": 1, "t": "epoch", "b": env["b"], "s": _flip(env["s"], 100)})
    cases = [
        (dict(good, credit=good["credit"] + 1), "bad_proof"),
        (dict(good, index=good["index"] ^ 1), "bad_proof"),
        (dict(good, path=_flip(good["path"], 200)), "bad_proof"),
        (dict(good, epoch=bad_root), "bad_signature"),
        (dict(good, epoch=bad_sig), "bad_signature"),
    ]
    for body, code in cases:
        e = raises(ValueError, rewards.verify_settlement, body, GW_PUB, ed25519.verify, dev)
        assert e.code == code, (code, e)
    e = raises(ValueError, rewards.verify_settlement, good, GW_PUB, ed25519.verify, _dev(1))
    assert e.code == "not_mine"


def test_leaf_layout_and_credit_are_integer_exact():
    leaf = rewards.leaf(7, _dev(1), 2**64 - 1)
    assert leaf == bytes(31) + b"\x07" + unhex(_dev(1)) + bytes(24) + b"\xff" * 8
    assert rewards.parse_leaf(leaf) == (7, _dev(1), 2**64 - 1)
    assert rewards.credit("gemm_i8", 30000 * 2**40) == 2**40
    assert rewards.credit("sha256_search", 2**32) == 2**27
    raises(ValueError, rewards.credit, "nope", 1)


def test_claims_and_missing_acks():
    acks = [(s, hashlib.sha256(b"r%d" % s).digest(), 10 * s) for s in (1, 2, 3, 5, 6)]
    batches = rewards.claim_batches(acks, 2)
    assert [[a[0] for a in b] for b in batches] == [[1, 2], [3], [5, 6]]
    claim = rewards.build_claim(_dev(1), batches[0], CLOSED_AT)
    assert claim["root"] == merkle.root([acks[0][1], acks[1][1]]) and claim["credit"] == 20
    assert rewards.missing_seqs([a[0] for a in acks]) == [4]


def _ack(dev, credit, at):
    body = p.message(
        "ack",
        lease=bytes(16),
        task=bytes(16),
        dev=dev,
        rhash=bytes(32),
        status="accepted",
        code="",
        seq=9,
        credit=credit,
        at=at,
    )
    return p.seal(body, _sign)


def test_dispute_proven_only_when_the_gateway_acked_more():
    dev = sorted(MESSAGES)[1]
    settled = rewards.verify_settlement(MESSAGES[dev], GW_PUB, ed25519.verify, dev)
    more = _ack(dev, PINNED[dev] + 1, CLOSED_AT)
    evidence = rewards.dispute_from_settlement(settled, GW_PUB, ed25519.verify, [more])
    verdict = rewards.check_dispute(evidence, ed25519.verify)
    assert verdict["proven"] and verdict["shortfall"] == 1 and verdict["code"] == "underpaid"
    same = _ack(dev, PINNED[dev], CLOSED_AT)
    assert rewards.dispute_from_settlement(settled, GW_PUB, ed25519.verify, [same]) is None
    evidence["acks"] = [rewards._hex(same)]
    assert rewards.check_dispute(evidence, ed25519.verify)["code"] == "no_dispute"


def test_earnings_rows():
    dev = sorted(MESSAGES)[0]
    first = rewards.verify_settlement(MESSAGES[dev], GW_PUB, ed25519.verify, dev)
    rows = rewards.epoch_earnings([first])
    assert rows[0]["earned"] == PINNED[dev] and rows[0]["chained"] and not rows[0]["decreased"]
