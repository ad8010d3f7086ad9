"""The rewards' rows (docs/REWARDS.md): acks by seq, accepted claims, closed epochs and their
leaves. SQL only, on a connection that holds the write lock for writes (``Ledger.transaction``);
what they mean is gateway/settlement.py's (pure) and gateway/epochs.py's (the settle command).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.settlement import AckedReceipt, ClaimedRange, Settlement

__all__ = ["EpochRow", "RewardsRows"]


@dataclass(frozen=True, slots=True)
class EpochRow:
    """A closed epoch as the ledger keeps it (the leaves are in ``settlement_leaves``)."""

    epoch: int
    closed_at: int
    n: int
    total: int
    root: bytes
    header_hash: bytes
    sealed_header: bytes
    settled_at: float
    published_at: float | None


_EPOCH_COLUMNS = ("epoch, closed_at, n, total, root, header_hash, sealed_header, settled_at, "
                  "published_at")


def _epoch(row: tuple[Any, ...]) -> EpochRow:
    epoch, closed_at, n, total, root, header_hash, sealed, settled_at, published_at = row
    return EpochRow(int(epoch), int(closed_at), int(n), int(total), bytes(root),
                    bytes(header_hash), bytes(sealed), float(settled_at),
                    None if published_at is None else float(published_at))


class RewardsRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._conn.execute(sql, args).fetchall()
        return rows

    # Claims.

    def acked(self, device_id: str, first: int, last: int) -> list[AckedReceipt]:
        """The device's acks with seq in [first, last], with the receipt id of the result each
        answers (a result whose receipt is not a wire envelope cannot be claimed: skipped)."""
        return [AckedReceipt(int(seq), bytes(rid), int(credit)) for seq, rid, credit in self._all(
            "SELECT a.seq, r.receipt_id, a.credit FROM acks AS a JOIN results AS r "
            "ON r.id = a.result_id WHERE a.device_id = ? AND a.seq BETWEEN ? AND ? AND "
            "r.receipt_id IS NOT NULL ORDER BY a.seq", (device_id, first, last))]

    def claims_overlapping(self, device_id: str, first: int, last: int) -> list[ClaimedRange]:
        return [ClaimedRange(int(f), int(la), bytes(root)) for f, la, root in self._all(
            "SELECT first, last, root FROM claims WHERE device_id = ? AND first <= ? AND "
            "last >= ? ORDER BY first", (device_id, last, first))]

    def claim_receipt(self, device_id: str, first: int, last: int, root: bytes) -> bytes | None:
        """The signed receipt of an accepted claim of exactly this range and root."""
        rows = self._all("SELECT receipt FROM claims WHERE device_id = ? AND first = ? AND "
                         "last = ? AND root = ?", (device_id, first, last, root))
        return bytes(rows[0][0]) if rows else None

    def owner_of(self, receipt_id: bytes) -> str | None:
        rows = self._all("SELECT device_id FROM results WHERE receipt_id = ? LIMIT 1",
                         (receipt_id,))
        return str(rows[0][0]) if rows else None

    def insert_claim(self, claim: dict[str, Any], sealed_claim: bytes, receipt: bytes,
                     now: float) -> None:
        self._conn.execute(
            "INSERT INTO claims (device_id, first, last, root, credit, claimed_at, claim, "
            "receipt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (claim["dev"], claim["first"], claim["last"], claim["root"], claim["credit"], now,
             sealed_claim, receipt))

    def claim_count(self, device_id: str | None = None) -> int:
        where, args = ("WHERE device_id = ?", (device_id,)) if device_id else ("", ())
        return int(self._all(f"SELECT count(*) FROM claims {where}", args)[0][0])

    def claimed_seqs(self) -> dict[str, int]:
        """Per device, how many ack seqs its accepted claims cover."""
        return {str(d): int(n) for d, n in self._all(
            "SELECT device_id, sum(last - first + 1) FROM claims GROUP BY device_id")}

    # Epochs.

    def credits(self) -> tuple[list[str], list[int]]:
        """Every device that was ever acked, by id, and its cumulative credit now: what an
        epoch closed in this transaction settles (docs/REWARDS.md, Epoch settlement)."""
        rows = self._all("SELECT id, credit FROM devices WHERE ack_seq > 0 ORDER BY id")
        return [str(d) for d, _ in rows], [int(c) for _, c in rows]

    def last_epoch(self) -> EpochRow | None:
        rows = self._all(f"SELECT {_EPOCH_COLUMNS} FROM settlements ORDER BY epoch DESC LIMIT 1")
        return _epoch(rows[0]) if rows else None

    def epoch(self, epoch: int) -> EpochRow | None:
        rows = self._all(f"SELECT {_EPOCH_COLUMNS} FROM settlements WHERE epoch = ?", (epoch,))
        return _epoch(rows[0]) if rows else None

    def unpublished(self) -> list[int]:
        return [int(e) for (e,) in self._all(
            "SELECT epoch FROM settlements WHERE published_at IS NULL ORDER BY epoch")]

    def leaves(self, epoch: int) -> tuple[list[str], list[int]]:
        rows = self._all("SELECT device_id, credit FROM settlement_leaves WHERE epoch = ? "
                         "ORDER BY device_id", (epoch,))
        return [str(d) for d, _ in rows], [int(c) for _, c in rows]

    def insert_epoch(self, settlement: Settlement, now: float) -> None:
        h = settlement.header
        self._conn.execute(
            f"INSERT INTO settlements ({_EPOCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (h["epoch"], h["closed_at"], h["n"], h["total"], h["root"], settlement.header_hash,
             settlement.sealed_header, now))
        self._conn.executemany(
            "INSERT INTO settlement_leaves (epoch, device_id, credit) VALUES (?, ?, ?)",
            zip([h["epoch"]] * len(settlement.devices), settlement.devices, settlement.credits,
                strict=True))

    def mark_published(self, epochs: Sequence[int], now: float) -> None:
        self._conn.executemany("UPDATE settlements SET published_at = ? WHERE epoch = ?",
                               [(now, e) for e in epochs])
