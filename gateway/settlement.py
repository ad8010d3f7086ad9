"""Epoch settlement and claim checking: the gateway's pure part of rewards (docs/REWARDS.md).

``close_epoch`` turns the ledger's (device id, cumulative credit) rows into a signed epoch: 80-byte
leaves sorted by device id (``edge_agent.core.rewards.leaf``), an RFC 6962 tree, one signed header
``{epoch, n, root, total, closed_at, prev}`` and every device's audit path. Devices get the header
and their own path in an unsigned ``settlement`` message: the header's one signature and the path
authenticate it, so an epoch costs one signature however many devices it pays.

``check_claim`` judges a device's signed claim against the acks the ledger holds for it.

Nothing here touches the database or the network: the service passes rows in and sends bytes out.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import operator
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat
from pathlib import Path
from typing import Any, cast

import cbor2

from edge_agent import native
from edge_agent.core import cbor, merkle, rewards, signing
from edge_agent.core import protocol as p

__all__ = [
    "FILE_FORMAT",
    "AckedReceipt",
    "ClaimVerdict",
    "ClaimedRange",
    "Settlement",
    "SettlementError",
    "all_paths",
    "check_claim",
    "close_epoch",
    "leaf_levels",
    "level_path",
    "load_settlement",
    "seal_claim_receipt",
    "tree_levels",
]

Signer = Callable[[bytes], bytes]
FILE_FORMAT = "edge-grid-settlement/1"
U64_MAX = 0xFFFFFFFFFFFFFFFF

# rewards.LEAF_FORMAT (">24xQ16s24xQ") as 8-byte words: a leaf is 10 of them, the index in word
# 3, the device id in words 4 and 5, the credit in word 9, zeros elsewhere (the uint256 padding).
_LEAF_WORDS, _INDEX_WORD, _ID_WORD, _CREDIT_WORD = 10, 3, 4, 9
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
# C functions mapped over whole levels (no Python frame per hash or per concatenation).
_sha256 = cast(Callable[[bytes], "hashlib._Hash"], hashlib.sha256)
_digest = cast(Callable[["hashlib._Hash"], bytes], type(hashlib.sha256()).digest)
_concat = cast(Callable[[bytes, bytes], bytes], operator.concat)


class SettlementError(ValueError):
    """Input that cannot be settled, or a settlement file that does not verify."""


# --- the tree and every proof -------------------------------------------------------------------


def leaf_levels(
    leaves: bytes | bytearray, leaf_len: int, n: int, *, use_native: bool = True
) -> tuple[list[list[bytes]], bytes]:
    """The tree over n leaves of leaf_len bytes given back to back: ``merkle.levels`` of their
    leaf hashes, and the same hashes in one buffer as ``native.merkle_tree`` gives them (b"" if
    it did not run). In one C call when the C module is built, else by hashlib maps (same levels:
    tested)."""
    if use_native and native.AVAILABLE:
        nodes = native.merkle_tree(leaves, leaf_len, n)
        return native.merkle_split(nodes, n), nodes
    records = struct.unpack(f"{leaf_len}s" * n, leaves)
    inputs = map(_concat, repeat(_LEAF_PREFIX), records)
    return tree_levels(list(map(_digest, map(_sha256, inputs)))), b""


def tree_levels(leaf_hashes: list[bytes]) -> list[list[bytes]]:
    """``merkle.levels``, with each level hashed by C-level maps instead of a Python call per
    node (same bytes: tested). The settlement's cost is mostly hashing, so this is its hot loop."""
    level = leaf_hashes
    out = [level]
    while len(level) > 1:
        pairs = len(level) // 2
        inputs = map(
            _concat, repeat(_NODE_PREFIX), map(_concat, level[0 : 2 * pairs : 2], level[1::2])
        )
        up = list(map(_digest, map(_sha256, inputs)))
        if len(level) % 2:
            up.append(level[-1])  # an odd last node moves up unchanged (RFC 6962's split)
        out.append(up)
        level = up
    return out


def all_paths(levels: list[list[bytes]]) -> list[bytes]:
    """Every leaf's audit path, as its 32-byte hashes concatenated, deepest first (the same hashes
    as ``merkle.MerkleTree.proof``): the Python twin of ``native.merkle_paths``.

    Top down: a node's path is its sibling followed by its parent's path, so each level costs one
    concatenation per node and no hashing: 2n concatenations in all, O(n log n) bytes."""
    paths = [b""]  # the root's
    for level in reversed(levels[:-1]):
        pairs = len(level) // 2
        parents = paths[:pairs]
        below: list[bytes] = [b""] * len(level)
        below[0 : 2 * pairs : 2] = map(_concat, level[1 : 2 * pairs : 2], parents)
        below[1 : 2 * pairs : 2] = map(_concat, level[0 : 2 * pairs : 2], parents)
        if len(level) % 2:
            below[-1] = paths[pairs]  # no sibling at this level: the parent's path
        paths = below
    return paths if levels[0] else []


def level_path(levels: list[list[bytes]], i: int) -> bytes:
    """Leaf i's audit path read from the levels (no hashing): one sibling per level where its
    ancestor has one, concatenated, deepest first."""
    if not 0 <= i < len(levels[0]):
        raise IndexError(f"leaf {i} of {len(levels[0])}")
    path = []
    for level in levels[:-1]:
        if i ^ 1 < len(level):
            path.append(level[i ^ 1])
        i >>= 1
    return b"".join(path)


# --- closing an epoch ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settlement:
    """A closed epoch: its signed header, every device's leaf, and the tree's levels, from which
    any device's proof is read without hashing (``path``; all at once: ``paths``)."""

    header: dict[str, Any]  # the epoch body: epoch, n, root, total, closed_at, prev
    sealed_header: bytes  # the signed `epoch` message devices and files carry
    header_hash: bytes  # SHA-256 of the header body: the next epoch's `prev`
    devices: list[str]  # sorted device ids; a device's index is its position
    credits: list[int]  # cumulative micro-credits, aligned with devices
    levels: list[list[bytes]]  # the tree, leaf hashes first, [root] last
    # The same hashes in one buffer when C built the tree (native.merkle_tree), else b"": all
    # paths are then copied out of it by C.
    nodes: bytes = field(default=b"", repr=False, compare=False)

    @property
    def epoch(self) -> int:
        return int(self.header["epoch"])

    @property
    def root(self) -> bytes:
        return bytes(self.header["root"])

    def index(self, dev: str) -> int | None:
        i = bisect.bisect_left(self.devices, dev)
        return i if i < len(self.devices) and self.devices[i] == dev else None

    def path(self, i: int) -> bytes:
        return level_path(self.levels, i)

    def paths(self) -> list[bytes]:
        if self.nodes:
            return native.merkle_paths(self.nodes, len(self.devices))
        return all_paths(self.levels)

    def leaf(self, i: int, path: bytes | None = None) -> dict[str, Any]:
        """Leaf i as the map the core's build_dispute takes: index, dev, credit, path."""
        return {
            "index": i,
            "dev": self.devices[i],
            "credit": self.credits[i],
            "path": self.path(i) if path is None else path,
        }

    def proof_message(self, dev: str) -> bytes:
        """The `settlement` message for dev (canonical CBOR, unsigned: see the module doc)."""
        i = self.index(dev)
        if i is None:
            raise KeyError(f"device {dev} is not in epoch {self.epoch}")
        return self._message(self.leaf(i))

    def proof_messages(self) -> Iterator[tuple[str, bytes]]:
        """(device id, its `settlement` message) for every device, in index order."""
        for i, path in enumerate(self.paths()):
            yield self.devices[i], self._message(self.leaf(i, path))

    def _message(self, leaf: dict[str, Any]) -> bytes:
        # cbor2's canonical encoding is the core codec's (tested), and much faster per message.
        body = {"v": p.VERSION, "t": "settlement", "epoch": self.sealed_header}
        body.update(leaf)
        return cbor2.dumps(body, canonical=True)

    def bracket(self, dev: str) -> list[dict[str, Any]]:
        """The leaves either side of where an absent dev would sit (its proof of absence: leaves
        are sorted). KeyError if dev is in the settlement."""
        if self.index(dev) is not None:
            raise KeyError(f"device {dev} is in epoch {self.epoch}")
        i = bisect.bisect_left(self.devices, dev)
        return [self.leaf(j) for j in (i - 1, i) if 0 <= j < len(self.devices)]

    # Files: the same content as canonical CBOR (for machines) and JSON (for people and tools).

    def to_cbor(self, gateway_pub: bytes) -> bytes:
        leaves = [[bytes.fromhex(d), c] for d, c in zip(self.devices, self.credits, strict=True)]
        doc = {
            "format": FILE_FORMAT,
            "gateway_pub": gateway_pub,
            "header": self.sealed_header,
            "leaves": leaves,
        }
        return cbor2.dumps(doc, canonical=True)

    def to_json(self, gateway_pub: bytes) -> str:
        h = self.header
        doc = {
            "format": FILE_FORMAT,
            "leaf": "sha256(0x00 || uint256 index || bytes16 device || uint256 credit), RFC 6962",
            "epoch": h["epoch"],
            "n": h["n"],
            "root": h["root"].hex(),
            "total": h["total"],
            "closed_at": h["closed_at"],
            "prev": h["prev"].hex(),
            "header_hash": self.header_hash.hex(),
            "gateway_pub": gateway_pub.hex(),
            "header": self.sealed_header.hex(),
            "leaves": [
                {"index": i, "device": d, "credit": c}
                for i, (d, c) in enumerate(zip(self.devices, self.credits, strict=True))
            ],
        }
        return json.dumps(doc, indent=1)

    def write(self, directory: Path, gateway_pub: bytes) -> tuple[Path, Path]:
        """Write epoch-<N>.json and epoch-<N>.cbor into directory; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        stem = directory / f"epoch-{self.epoch:06d}"
        json_path, cbor_path = stem.with_suffix(".json"), stem.with_suffix(".cbor")
        for path, data in (
            (json_path, self.to_json(gateway_pub).encode()),
            (cbor_path, self.to_cbor(gateway_pub)),
        ):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # a reader never sees half a file
        return json_path, cbor_path


def _id_bytes(devices: Sequence[str]) -> bytes:
    """The ids' 16 bytes each, back to back; SettlementError unless every id is 32 lowercase hex
    and the ids are strictly ascending (sorted, no repeats). Each check is one C-level pass over
    all ids."""
    joined = "".join(devices)
    try:
        raw = bytes.fromhex(joined)
    except ValueError:
        raw = b""
    # fromhex alone takes upper case and spaces, which would give a leaf the device cannot match;
    # with the total length right, no id is shorter than 32 unless another is longer.
    if raw.hex() != joined or (devices and max(map(len, devices)) != 32):
        raise SettlementError("device ids must be 32 lowercase hex characters")
    if not all(map(operator.lt, devices, islice(devices, 1, None))):
        raise SettlementError("device ids must be sorted and unique")
    return raw


def _packed_leaves(raw_ids: bytes, credits: Sequence[int]) -> bytearray:
    """Every device's 80-byte leaf (``rewards.leaf``) back to back, written a column at a time:
    each field is one strided copy of 8-byte words, not a Python call per leaf. struct.error for
    a credit that is not an int in [0, 2**64)."""
    n = len(credits)
    leaves = bytearray(rewards.LEAF_SIZE * n)
    words = memoryview(leaves).cast("Q")
    ids = memoryview(raw_ids).cast("Q")
    # Big-endian bytes copied word for word: the words' native value is never read.
    words[_INDEX_WORD::_LEAF_WORDS] = memoryview(struct.pack(f">{n}Q", *range(n))).cast("Q")
    words[_ID_WORD::_LEAF_WORDS] = ids[0::2]
    words[_ID_WORD + 1 :: _LEAF_WORDS] = ids[1::2]
    words[_CREDIT_WORD::_LEAF_WORDS] = memoryview(struct.pack(f">{n}Q", *credits)).cast("Q")
    return leaves


def close_epoch(
    devices: Sequence[str],
    credits: Sequence[int],
    *,
    epoch: int,
    closed_at: int,
    prev: bytes,
    sign: Signer,
) -> Settlement:
    """Close an epoch. ``devices``: ids sorted ascending (the ledger's ORDER BY id); ``credits``:
    each device's cumulative micro-credits as of its last ack dated at or before ``closed_at``.
    ``prev`` is the previous epoch's header_hash (``rewards.ZERO_HASH`` for epoch 1); ``sign``
    signs with the gateway key. The settlement keeps the two lists: do not change them after.

    Cost: n leaf hashes, n - 1 node hashes (one C call, ``leaf_levels``), one signature, and a few
    C-level passes over the ids and credits (benchmarks/settlement.py); a device's proof is then
    read from the levels without hashing, all of them by ``Settlement.paths``."""
    if len(devices) != len(credits):
        raise SettlementError("devices and credits differ in length")
    raw_ids = _id_bytes(devices)
    try:
        leaves = _packed_leaves(raw_ids, credits)
    except struct.error as e:
        raise SettlementError(f"credits must be ints in [0, 2**64): {e}") from None
    levels, nodes = leaf_levels(leaves, rewards.LEAF_SIZE, len(devices))
    total = sum(credits)
    if total > U64_MAX:
        raise SettlementError("total credit of the epoch is above 2**64 - 1")
    header = p.message(
        "epoch",
        epoch=epoch,
        n=len(devices),
        root=levels[-1][0] if devices else merkle.root([]),
        total=total,
        closed_at=closed_at,
        prev=prev,
    )
    sealed = p.seal(header, sign)
    header_hash = rewards.header_hash(cbor.dumps(header))
    # Kept as given when they are lists (the ledger's): a copy of 100,000 rows is not free.
    devices = devices if isinstance(devices, list) else list(devices)
    credits = credits if isinstance(credits, list) else list(credits)
    return Settlement(header, sealed, header_hash, devices, credits, levels, nodes)


def load_settlement(path: Path, gateway_pub: bytes | None = None) -> Settlement:
    """Read a settlement file (.json or .cbor) and check all of it: the header's signature (by
    ``gateway_pub`` when given, else by the key the file names), sorted unique device ids, and
    that the leaves give the header's n, root and total. Returns it with every path rebuilt."""
    data = path.read_bytes()
    try:
        if path.suffix == ".json":
            doc = json.loads(data)
            pub = bytes.fromhex(doc["gateway_pub"])
            sealed = bytes.fromhex(doc["header"])
            rows = [(leaf["device"], leaf["credit"]) for leaf in doc["leaves"]]
        else:
            doc = cbor2.loads(data)
            pub, sealed = bytes(doc["gateway_pub"]), bytes(doc["header"])
            rows = [(bytes(d).hex(), c) for d, c in doc["leaves"]]
        if doc["format"] != FILE_FORMAT:
            raise SettlementError(f"not a {FILE_FORMAT} file")
    except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as e:
        raise SettlementError(f"{path}: not a settlement file ({e})") from None
    if gateway_pub is not None and pub != gateway_pub:
        raise SettlementError(f"{path}: signed by gateway key {pub.hex()}, not the one given")
    try:
        header = rewards.open_epoch(sealed, pub, signing.verify)
    except p.ProtocolError as e:
        raise SettlementError(f"{path}: epoch header: {e}") from None
    try:
        rebuilt = close_epoch(
            [d for d, _ in rows],
            [c for _, c in rows],
            epoch=header["epoch"],
            closed_at=header["closed_at"],
            prev=header["prev"],
            sign=lambda _msg: bytes(64),  # the header is compared, never this signature
        )
    except (SettlementError, p.ProtocolError) as e:
        raise SettlementError(f"{path}: {e}") from None
    for name in ("n", "root", "total"):
        if rebuilt.header[name] != header[name]:
            raise SettlementError(f"{path}: the leaves do not give the header's {name}")
    return dataclasses.replace(rebuilt, sealed_header=sealed, header_hash=header["hash"])


# --- claims ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckedReceipt:
    """One ack the ledger sent a device: its seq, the receipt id of the result body it answers
    (``protocol.receipt_id``) and the cumulative credit it carried."""

    seq: int
    receipt_id: bytes
    credit: int


@dataclass(frozen=True, slots=True)
class ClaimedRange:
    """An accepted claim of a device: its seq range and root."""

    first: int
    last: int
    root: bytes


@dataclass(frozen=True, slots=True)
class ClaimVerdict:
    status: str  # "accepted" | "rejected"
    code: str  # one of rewards.CLAIM_CODES
    why: str

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


def _rejected(code: str, why: str) -> ClaimVerdict:
    return ClaimVerdict("rejected", code, why)


def _classify(
    rid: bytes,
    seq: int,
    sender: str,
    seqs: dict[bytes, int],
    owner_of: Callable[[bytes], str | None],
) -> ClaimVerdict:
    if rid in seqs:
        return _rejected("bad_order", f"receipt {rid.hex()[:16]} is ack {seqs[rid]}, not {seq}")
    owner = owner_of(rid)
    if owner is not None and owner != sender:
        return _rejected("foreign", f"receipt {rid.hex()[:16]} is another device's")
    if owner == sender:
        return _rejected("bad_order", f"receipt {rid.hex()[:16]} is not ack {seq}")
    return _rejected("unacked", f"receipt {rid.hex()[:16]} was never acked")


def check_claim(
    claim: dict[str, Any],
    *,
    sender: str,
    acked: Sequence[AckedReceipt],
    accepted: Sequence[ClaimedRange],
    owner_of: Callable[[bytes], str | None],
) -> ClaimVerdict:
    """Judge a validated `claim` body from device ``sender`` (its signature already checked).

    ``acked``: the sender's acks with seq in [claim first, claim last] (more do no harm);
    ``accepted``: the sender's accepted claims (at least those overlapping the range);
    ``owner_of(receipt_id)``: the device a receipt belongs to, None if unknown (consulted only for
    a receipt that is not where the claim puts it). A claim is accepted only if it covers exactly
    acks first..last of the sender, in seq order, with their root and the credit of ack `last`.
    """
    first, last, ids = claim["first"], claim["last"], claim["ids"]
    if claim["dev"] != sender:
        return _rejected("foreign", "the claim names another device")
    if last < first or claim["n"] != last - first + 1 or len(ids) != claim["n"]:
        return _rejected("bad_range", f"seqs {first}..{last}, n {claim['n']}, {len(ids)} ids")
    if merkle.root(ids) != claim["root"]:
        return _rejected("bad_root", "root is not the Merkle root of the receipt ids")
    for c in accepted:
        if (c.first, c.last, c.root) == (first, last, claim["root"]):
            return _rejected("repeat", f"seqs {first}..{last} were claimed already")
        if c.first <= last and first <= c.last:
            return _rejected("overlap", f"seqs {c.first}..{c.last} were claimed already")
    by_seq = {a.seq: a for a in acked}
    seqs = {a.receipt_id: a.seq for a in acked}
    for k, rid in enumerate(ids):
        seq = first + k
        ack = by_seq.get(seq)
        if ack is None or ack.receipt_id != rid:
            return _classify(rid, seq, sender, seqs, owner_of)
    if by_seq[last].credit != claim["credit"]:
        return _rejected("bad_credit", f"ack {last} carried credit {by_seq[last].credit}")
    return ClaimVerdict("accepted", "ok", f"seqs {first}..{last}")


def seal_claim_receipt(
    claim: dict[str, Any], verdict: ClaimVerdict, at: int, sign: Signer
) -> bytes:
    """The signed `claim_receipt` answering a claim with a verdict."""
    body = p.message(
        "claim_receipt",
        dev=claim["dev"],
        first=claim["first"],
        last=claim["last"],
        root=claim["root"],
        credit=claim["credit"],
        status=verdict.status,
        code=verdict.code,
        at=at,
    )
    return bytes(p.seal(body, sign))
