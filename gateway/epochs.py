"""Closing an epoch against the ledger, and sending every device its proof (docs/REWARDS.md).

``settle_epoch`` runs in one ``BEGIN IMMEDIATE`` transaction: it takes the write lock, reads the
clock, and snapshots every acked device's cumulative credit, so no gateway worker can ack
anything between the snapshot and the epoch's record. ``closed_at`` is the second before the
clock read under the lock: an ack signed after the snapshot is dated at least a second later,
and one signed before it is committed and counted (an ack dated ``closed_at + 1`` that was
committed before the snapshot is counted too: a settlement may pay early, never short). The
epoch (header and leaves) is stored in the ledger in the same transaction; the files
(``settlements/epoch-NNNNNN.json`` and ``.cbor``) are written after the commit, from the ledger,
so the write lock is not held for file I/O and a lost file is rebuilt (``write_missing_files``).

Proofs go to each device's inbox with QoS 1: devices keep persistent sessions
(``clean_session=False``) on a broker with persistence, so a device offline at the close gets its
proof when it reconnects. Whoever publishes (``edge-gateway settle`` as the gateway account while
a ``serve`` runs, else the service when it next connects) marks the epoch published afterwards:
at least once; a device keeps one proof per epoch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.core import protocol, rewards
from gateway.config import StatePaths
from gateway.keys import GatewayKey
from gateway.ledger import Ledger
from gateway.settlement import Settlement, close_epoch
from gateway.wire import Reply

__all__ = ["EpochError", "Settled", "load_epoch", "mark_published", "owed_proofs",
           "proof_replies", "settle_epoch", "settlements_dir", "write_missing_files"]


class EpochError(RuntimeError):
    """An epoch that cannot be closed now (the previous one closed within this second)."""


@dataclass(frozen=True)
class Settled:
    settlement: Settlement
    close_s: float  # the transaction: snapshot, tree, signature, the epoch's rows


def settlements_dir(paths: StatePaths) -> Path:
    return paths.root / "settlements"


def settle_epoch(ledger: Ledger, key: GatewayKey, clock: Callable[[], float]) -> Settled:
    """Close the next epoch over every acked device's cumulative credit (module doc)."""
    started = time.perf_counter()
    with ledger.transaction():  # the rows below run under its write lock
        rows = ledger.rewards
        now = clock()
        closed_at = int(now) - 1
        last = rows.last_epoch()
        if last is not None and closed_at <= last.closed_at:
            raise EpochError(f"epoch {last.epoch} closed at {last.closed_at}: wait a second")
        devices, credits = rows.credits()
        settlement = close_epoch(
            devices, credits, epoch=1 if last is None else last.epoch + 1, closed_at=closed_at,
            prev=rewards.ZERO_HASH if last is None else last.header_hash, sign=key.sign)
        rows.insert_epoch(settlement, now)
    return Settled(settlement, time.perf_counter() - started)


def load_epoch(ledger: Ledger, epoch: int) -> Settlement:
    """A closed epoch rebuilt from the ledger (its leaves and signed header): every proof."""
    row = ledger.rewards.epoch(epoch)
    if row is None:
        raise EpochError(f"no epoch {epoch} in the ledger")
    devices, credits = ledger.rewards.leaves(epoch)
    # Its own signed bytes, read back (the signature was made by this gateway at the close).
    header = protocol.peek_sealed(row.sealed_header, protocol.MAX_PAYLOAD["epoch"], ("epoch",))
    rebuilt = close_epoch(devices, credits, epoch=epoch, closed_at=row.closed_at,
                          prev=header["prev"], sign=lambda _msg: bytes(64))
    if rebuilt.root != row.root or rebuilt.header["total"] != row.total:
        raise EpochError(f"epoch {epoch}: the stored leaves do not give its root")
    return dataclasses.replace(rebuilt, sealed_header=row.sealed_header,
                               header_hash=row.header_hash)


def write_missing_files(ledger: Ledger, directory: Path, gateway_pub: bytes) -> list[Path]:
    """Write the files of every epoch whose JSON or CBOR file is missing; their paths."""
    written: list[Path] = []
    last = ledger.rewards.last_epoch()
    for epoch in range(1, 0 if last is None else last.epoch + 1):
        stem = directory / f"epoch-{epoch:06d}"
        if not (stem.with_suffix(".json").exists() and stem.with_suffix(".cbor").exists()):
            written += load_epoch(ledger, epoch).write(directory, gateway_pub)
    return written


def proof_replies(settlement: Settlement) -> list[Reply]:
    """Each device's `settlement` message, to its inbox."""
    return [Reply(protocol.inbox_topic(dev), message)
            for dev, message in settlement.proof_messages()]


def owed_proofs(ledger: Ledger) -> tuple[list[int], list[Reply]]:
    """The epochs nobody has published yet, and all their proofs (oldest epoch first)."""
    epochs = ledger.rewards.unpublished()
    return epochs, [reply for epoch in epochs for reply in proof_replies(load_epoch(ledger, epoch))]


def mark_published(ledger: Ledger, epochs: list[int], now: float) -> None:
    if epochs:
        with ledger.transaction():
            ledger.rewards.mark_published(epochs, now)
