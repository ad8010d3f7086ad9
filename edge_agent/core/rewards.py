# Rewards, the portable part (docs/REWARDS.md): credit rates, settlement leaves, claims, offline
# verification of a settlement proof, and dispute evidence. The gateway (gateway/settlement.py,
# gateway/dispute.py) and the agent on CPython and MicroPython all use these same functions, so
# what one side computes the other side checks byte for byte.
#
# Integers only: credit is counted in micro-credits (1 credit = 1,000,000), every amount that is
# hashed or signed is an int. Signature checks take `verify(pub, msg, sig) -> bool` as a function
# (pynacl on CPython, core.ed25519 on MicroPython), as protocol.open_sealed does.

import binascii
import hashlib
import struct

from edge_agent.core import merkle
from edge_agent.core import protocol as p

MICRO = 1000000  # micro-credits per credit

# Micro-credits paid per work unit of each kernel, as (micro_credits, per_units): credit of a task
# is floor(units * micro_credits / per_units). Chosen so one second of the kernel's C version on
# one core of the reference machine (docs/KERNELS.md: 2 vCPU AMD EPYC, AVX2 + SHA-NI) earns about
# 1 credit, whatever the kernel: gemm_i8 ~29.7 G MAC/s, sha256_search ~31.7 M nonces/s,
# montecarlo_pi ~348 M points/s (benchmarks/kernels.py). So a reference device-hour earns about
# 3600 credits on any kernel, and an operator's choice of kernel does not change what a device
# earns per hour. A slower device (a Pi, a MicroPython twin) earns less per hour for the same work.
RATES = {
    "gemm_i8": (1, 30000),
    "montecarlo_pi": (1, 350),
    "sha256_search": (1, 32),
}

# Settlement leaf: the packing of Uniswap's MerkleDistributor leaf,
# abi.encodePacked(uint256 index, address account, uint256 amount), with the 16-byte device id in
# place of the 20-byte address: index as 32 bytes big-endian, the device id's 16 bytes, the
# cumulative credit as 32 bytes big-endian. 80 bytes. Hashed as an RFC 6962 leaf,
# SHA-256(0x00 || leaf), in an RFC 6962 tree (edge_agent/core/merkle.py).
LEAF_FORMAT = ">24xQ16s24xQ"
LEAF_SIZE = 80
HASH_SIZE = 32
ZERO_HASH = b"\x00" * HASH_SIZE  # `prev` of the first epoch
DISPUTE_FORMAT = "edge-grid-dispute/1"

# Reason codes of a claim receipt (status "rejected"); "ok" when accepted.
CLAIM_CODES = (
    "ok",
    "foreign",  # the claim names another device, or includes another device's receipts
    "bad_range",  # n, the seq range and the number of ids disagree
    "bad_root",  # root is not the Merkle root of ids
    "repeat",  # this exact claim was accepted before (the original receipt stands)
    "overlap",  # some of its seqs are in an accepted claim
    "unacked",  # a receipt or seq the gateway never acked
    "bad_order",  # a receipt acked to this device, but not at this position of the range
    "bad_credit",  # credit is not the cumulative credit of the ack at `last`
)


class RewardsError(ValueError):
    """A claim, proof or dispute that does not hold. `code` says why, `msg` for people."""

    def __init__(self, code, msg):
        super().__init__("%s: %s" % (code, msg))
        self.code = code
        self.msg = msg


def _hex(b):
    return binascii.hexlify(b).decode()


def _unhex(s, name):
    if type(s) is not str:
        raise RewardsError("bad_evidence", "%s: want hex text" % name)
    try:
        return binascii.unhexlify(s)
    except ValueError:
        raise RewardsError("bad_evidence", "%s: not hex" % name) from None


# --- credit ----------------------------------------------------------------------------------


def credit(kernel, units):
    """Micro-credits of an accepted task of `kernel` with `units` work units (floor)."""
    rate = RATES.get(kernel)
    if rate is None:
        raise RewardsError("unknown_kernel", "no credit rate for kernel %r" % (kernel,))
    if type(units) is not int or units < 0:
        raise RewardsError("bad_units", "work units must be an int >= 0, not %r" % (units,))
    return units * rate[0] // rate[1]


# --- settlement leaves and proofs ---------------------------------------------------------------


def leaf(index, dev, amount):
    """The 80-byte settlement leaf of device `dev` (32 hex) at `index` with cumulative credit."""
    return struct.pack(LEAF_FORMAT, index, binascii.unhexlify(dev), amount)


def parse_leaf(data):
    """(index, dev, amount) of an 80-byte leaf; RewardsError if it is not one."""
    if type(data) is not bytes or len(data) != LEAF_SIZE:
        raise RewardsError("bad_leaf", "not an 80-byte settlement leaf")
    if data[:24] != bytes(24) or data[48:72] != bytes(24):
        raise RewardsError("bad_leaf", "high bytes of index or amount are not zero")
    index, dev, amount = struct.unpack(LEAF_FORMAT, data)
    return index, _hex(dev), amount


def split_path(path):
    """A settlement message's `path` (concatenated 32-byte hashes) as a list of hashes."""
    if type(path) is not bytes or len(path) % HASH_SIZE:
        raise RewardsError("bad_proof", "path is not a whole number of 32-byte hashes")
    return [path[i : i + HASH_SIZE] for i in range(0, len(path), HASH_SIZE)]


def header_hash(body_bytes):
    """An epoch header's identity (what the next epoch's `prev` names): SHA-256 of its body."""
    return hashlib.sha256(body_bytes).digest()


def open_epoch(sealed, gw_pub, verify):
    """The epoch header map of a sealed `epoch` message signed by gw_pub, with its "hash" added.
    Raises protocol.ProtocolError (bad signature, schema) on anything else."""
    body, body_bytes, _ = p.open_sealed(sealed, p.MAX_PAYLOAD["epoch"], verify, gw_pub, ("epoch",))
    header = dict(body)
    header["hash"] = header_hash(body_bytes)
    return header


def _check_leaf(header, index, dev, amount, path):
    """RewardsError unless (index, dev, amount) is leaf `index` of the header's tree."""
    if amount > header["total"]:
        raise RewardsError("bad_proof", "credit %d above the epoch total" % amount)
    hashes = split_path(path)
    if not merkle.verify(header["root"], leaf(index, dev, amount), index, header["n"], hashes):
        raise RewardsError("bad_proof", "leaf %d does not prove to the epoch root" % index)


def verify_settlement(msg, gw_pub, verify, dev=None):
    """Check a `settlement` message (bytes, or its map) offline: the epoch header's signature by
    gw_pub and the Merkle proof of the device's leaf. With `dev`, the leaf must be that device's.

    Returns a map: epoch, n, root, total, closed_at, prev, hash (of the header), and the leaf's
    dev, index, credit, path, plus "sealed" (the signed header bytes, for storage and disputes).
    Raises protocol.ProtocolError or RewardsError (code "bad_proof", "not_mine")."""
    if type(msg) is not dict:
        msg = p.decode(msg, p.MAX_PAYLOAD["settlement"], ("settlement",))
    else:
        p.validate(msg, ("settlement",))
    if dev is not None and msg["dev"] != dev:
        raise RewardsError("not_mine", "settlement leaf is for device %s" % msg["dev"])
    header = open_epoch(msg["epoch"], gw_pub, verify)
    _check_leaf(header, msg["index"], msg["dev"], msg["credit"], msg["path"])
    out = header
    out["dev"] = msg["dev"]
    out["index"] = msg["index"]
    out["credit"] = msg["credit"]
    out["path"] = msg["path"]
    out["sealed"] = msg["epoch"]
    return out


def epoch_earnings(settled):
    """Per-epoch rows of a device's verified settlements (verify_settlement results), by epoch:
    epoch, credit (cumulative), earned (since the previous epoch), chained (its `prev` is the
    previous verified header's hash), decreased (cumulative credit went down: a dispute)."""
    rows = []
    before = None
    for s in sorted(settled, key=lambda s: s["epoch"]):
        prior = 0 if before is None else before["credit"]
        chained = (before is None and s["epoch"] == 1 and s["prev"] == ZERO_HASH) or (
            before is not None and before["epoch"] == s["epoch"] - 1 and s["prev"] == before["hash"]
        )
        rows.append(
            {
                "epoch": s["epoch"],
                "credit": s["credit"],
                "earned": max(0, s["credit"] - prior),
                "chained": chained,
                "decreased": s["credit"] < prior,
                "closed_at": s["closed_at"],
            }
        )
        before = s
    return rows


# --- claims (device side) ---------------------------------------------------------------------
# An "acked receipt" is (seq, receipt_id, credit): the ack's seq and cumulative credit, and
# protocol.receipt_id of the signed result body the ack answers.


def missing_seqs(seqs, after=0):
    """The ack seqs missing between after + 1 and the largest of `seqs` (acks never received)."""
    have = set(seqs)
    top = max(have) if have else after
    return [s for s in range(after + 1, top + 1) if s not in have]


def dispute_acks(acks, closings):
    """Seqs of the acks disputes need: for each settlement's `closed_at`, the ack with the
    highest credit (ties: the highest seq) among `acks` = (seq, credit, at) with
    at <= closed_at, the ack _best_ack puts in evidence. One sweep in time order: the best so
    far is the best at every close reached."""
    by_time = sorted(acks, key=lambda a: a[2])
    needed = set()
    best = None  # (credit, seq)
    i = 0
    for closed_at in sorted(closings):
        while i < len(by_time) and by_time[i][2] <= closed_at:
            seq, credit, _ = by_time[i]
            if best is None or (credit, seq) > best:
                best = (credit, seq)
            i += 1
        if best is not None:
            needed.add(best[1])
    return needed


def needless_acks(acks, closings):
    """Seqs of the kept acks no claim or dispute needs any more, of `acks` = (seq, credit, at,
    settled) where `settled` says the ack is in a claim the gateway accepted (and its result
    needs no further ack). Needless: settled, dated at or before the newest settlement's close,
    and not an ack a dispute of any kept settlement needs (dispute_acks). Acks of rejected or
    unanswered claims, of no claim, or newer than every settlement all stay. The agent on
    CPython (edge_agent/outbox.py) and the board (edge_board/store.py) prune by this rule."""
    if not closings:
        return []
    acks = list(acks)
    horizon = max(closings)
    needed = dispute_acks([(a[0], a[1], a[2]) for a in acks], closings)
    return [a[0] for a in acks if a[3] and a[2] <= horizon and a[0] not in needed]


def claim_batches(acked, size=p.MAX_CLAIM_RECEIPTS):
    """Split acked receipts (seq order) into runs of consecutive seqs of at most `size` each:
    a claim covers a contiguous range, so a missing ack ends a batch."""
    batches = []
    run = []
    for a in acked:
        if run and (a[0] != run[-1][0] + 1 or len(run) == size):
            batches.append(run)
            run = []
        run.append(a)
    if run:
        batches.append(run)
    return batches


def build_claim(dev, acked, at):
    """The `claim` body for one batch of acked receipts with consecutive seqs: one Merkle root over
    their receipt ids in seq order, and the cumulative credit of the last ack. Seal it once with
    protocol.seal(body, sign)."""
    if not acked:
        raise RewardsError("bad_range", "a claim needs at least one acked receipt")
    for k in range(1, len(acked)):
        if acked[k][0] != acked[k - 1][0] + 1:
            raise RewardsError("bad_range", "seq %d after %d" % (acked[k][0], acked[k - 1][0]))
    ids = [a[1] for a in acked]
    return p.message(
        "claim",
        dev=dev,
        first=acked[0][0],
        last=acked[-1][0],
        n=len(acked),
        root=merkle.root(ids),
        ids=ids,
        credit=acked[-1][2],
        at=at,
    )


def receipt_matches(receipt, claim):
    """True iff a `claim_receipt` body answers this `claim` body (same device, range, root)."""
    for k in ("dev", "first", "last", "root"):
        if receipt[k] != claim[k]:
            return False
    return True


# --- disputes --------------------------------------------------------------------------------
# Evidence (JSON-able, hex for bytes): {"format", "gateway_pub", "dev", "epoch": sealed header,
# "leaves": [{"index", "dev", "credit", "path"}], "acks": [sealed acks]}. "leaves" holds the
# device's own leaf, or, when the settlement left the device out, the neighbours that bracket
# where its leaf would be (leaves are sorted by device id).


def _best_ack(sealed_acks, gw_pub, verify, dev, closed_at, *, strict):
    """(credit, sealed ack) of the highest cumulative credit among gw_pub-signed acks for dev
    dated at or before closed_at; (None, None) if there is none. With `strict` (evidence), an ack
    that is not such an ack is an error; without (a device's own store), it is skipped."""
    best = None
    best_ack = None
    for sealed in sealed_acks:
        ack, _, _ = p.open_sealed(sealed, p.MAX_PAYLOAD["inbox"], verify, gw_pub, ("ack",))
        if ack["dev"] != dev or ack["at"] > closed_at:
            if strict:
                raise RewardsError("bad_evidence", "an ack of another device or after the close")
            continue
        if best is None or ack["credit"] > best:
            best = ack["credit"]
            best_ack = sealed
    return best, best_ack


def _settled_credit(header, dev, leaves):
    """What the settlement gives dev, from verified leaves: its leaf's credit, or 0 when the
    leaves prove it is absent. RewardsError when they prove neither."""
    by_index = {}
    for lf in leaves:
        if lf["dev"] == dev:
            return lf["credit"], "underpaid"
        by_index[lf["index"]] = lf["dev"]
    n = header["n"]
    if n == 0:
        return 0, "omitted"
    if 0 in by_index and dev < by_index[0]:
        return 0, "omitted"
    if n - 1 in by_index and by_index[n - 1] < dev:
        return 0, "omitted"
    for i, below in by_index.items():
        if i + 1 in by_index and below < dev < by_index[i + 1]:
            return 0, "omitted"
    raise RewardsError("bad_evidence", "the leaves neither hold nor bracket device %s" % dev)


def _is_uint(v, top):
    return type(v) is int and 0 <= v <= top


def _parse_evidence(evidence, verify):
    if type(evidence) is not dict or evidence.get("format") != DISPUTE_FORMAT:
        raise RewardsError("bad_evidence", "not a %s file" % DISPUTE_FORMAT)
    gw_pub = _unhex(evidence.get("gateway_pub"), "gateway_pub")
    dev = evidence.get("dev")
    if not p.is_device_id(dev):
        raise RewardsError("bad_evidence", "dev: want a device id")
    header = open_epoch(_unhex(evidence.get("epoch"), "epoch"), gw_pub, verify)
    leaves = []
    raw_leaves = evidence.get("leaves")
    if type(raw_leaves) is not list or len(raw_leaves) > 2:
        raise RewardsError("bad_evidence", "leaves: want a list of at most 2")
    for raw in raw_leaves:
        if type(raw) is not dict:
            raise RewardsError("bad_evidence", "a leaf is not a map")
        lf = {
            "index": raw.get("index"),
            "dev": raw.get("dev"),
            "credit": raw.get("credit"),
            "path": _unhex(raw.get("path"), "path"),
        }
        if not (_is_uint(lf["index"], 0xFFFFFFFF) and _is_uint(lf["credit"], 0xFFFFFFFFFFFFFFFF)):
            raise RewardsError("bad_evidence", "a leaf's index or credit is out of range")
        if not p.is_device_id(lf["dev"]):
            raise RewardsError("bad_evidence", "a leaf's dev is not a device id")
        _check_leaf(header, lf["index"], lf["dev"], lf["credit"], lf["path"])
        leaves.append(lf)
    acks = evidence.get("acks")
    if type(acks) is not list or not 1 <= len(acks) <= 16:
        raise RewardsError("bad_evidence", "acks: want a list of 1 to 16 sealed acks")
    acks = [_unhex(a, "acks") for a in acks]
    return gw_pub, dev, header, leaves, acks


def check_dispute(evidence, verify):
    """Judge dispute evidence (a map as written by build_dispute). Never raises on bad input.

    Returns a map: proven (bool), code ("underpaid", "omitted" when proven; "no_dispute" when the
    acks do not exceed what the settlement gives; "bad_evidence"), why, and when known: dev,
    epoch, closed_at, settled, acked (highest acked cumulative credit), shortfall, gateway_pub.
    Proven means: the key gateway_pub signed an epoch header whose settlement gives dev less than
    the cumulative credit the same key signed in an ack dated no later than the epoch's close."""
    verdict = {"proven": False, "code": "bad_evidence", "why": "", "shortfall": 0}
    try:
        gw_pub, dev, header, leaves, acks = _parse_evidence(evidence, verify)
        verdict["gateway_pub"] = gw_pub
        verdict["dev"] = dev
        verdict["epoch"] = header["epoch"]
        verdict["closed_at"] = header["closed_at"]
        settled, kind = _settled_credit(header, dev, leaves)
        acked, _ = _best_ack(acks, gw_pub, verify, dev, header["closed_at"], strict=True)
    except (RewardsError, p.ProtocolError) as e:
        verdict["why"] = e.msg
        return verdict
    verdict["settled"] = settled
    verdict["acked"] = acked
    if acked > settled:
        verdict["proven"] = True
        verdict["code"] = kind
        verdict["shortfall"] = acked - settled
        verdict["why"] = "epoch %d gives %d, its gateway acked %d by its close" % (
            header["epoch"],
            settled,
            acked,
        )
    else:
        verdict["code"] = "no_dispute"
        verdict["why"] = "epoch %d gives %d, at least the %d acked by its close" % (
            header["epoch"],
            settled,
            acked,
        )
    return verdict


def _leaf_evidence(lf):
    return {
        "index": lf["index"],
        "dev": lf["dev"],
        "credit": lf["credit"],
        "path": _hex(lf["path"]),
    }


def build_dispute(gw_pub, verify, sealed_header, leaves, *, dev, sealed_acks):
    """Dispute evidence for dev against one epoch, or None when the settlement pays at least the
    highest qualifying ack (honest). `leaves` are the device's own leaf or the bracketing
    neighbours, as maps {index, dev, credit, path}; `sealed_acks` the device's stored acks: only
    the one with the highest credit dated at or before the close goes into the evidence."""
    header = open_epoch(sealed_header, gw_pub, verify)
    for lf in leaves:
        _check_leaf(header, lf["index"], lf["dev"], lf["credit"], lf["path"])
    settled, _ = _settled_credit(header, dev, leaves)
    acked, best = _best_ack(sealed_acks, gw_pub, verify, dev, header["closed_at"], strict=False)
    if acked is None or acked <= settled:
        return None
    return {
        "format": DISPUTE_FORMAT,
        "gateway_pub": _hex(gw_pub),
        "dev": dev,
        "epoch": _hex(sealed_header),
        "leaves": [_leaf_evidence(lf) for lf in leaves],
        "acks": [_hex(best)],
    }


def dispute_from_settlement(settled, gw_pub, verify, sealed_acks):
    """build_dispute for a device's own verified settlement (a verify_settlement result)."""
    own = {}
    for k in ("index", "dev", "credit", "path"):
        own[k] = settled[k]
    return build_dispute(
        gw_pub, verify, settled["sealed"], [own], dev=settled["dev"], sealed_acks=sealed_acks
    )
