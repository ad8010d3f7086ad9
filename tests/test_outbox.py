"""The agent's durable store: outbox, acks, checkpoints and the LRU blob cache (real SQLite)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from edge_agent.outbox import Checkpoint, OutboxEntry, Store, StoredAck

LEASE = b"L" * 16
TASK = b"T" * 16
RHASH = hashlib.sha256(b"result").digest()


def entry(lease: bytes = LEASE, rhash: bytes = RHASH) -> OutboxEntry:
    return OutboxEntry(lease, TASK, rhash, b"sealed:" + lease + rhash)


def ack(lease: bytes = LEASE, rhash: bytes = RHASH, seq: int = 1) -> StoredAck:
    return StoredAck(lease, TASK, rhash, "accepted", seq, 10 * seq, b"ack:%d" % seq)


def checkpoint(lease: bytes = LEASE, units: int = 5) -> Checkpoint:
    state = {"units": units, "s": [1, 2, 3, 2**63], "out": [b"\x00\x01"]}
    return Checkpoint(lease, b"sealed-lease", 1_900_000_000, 1_700_000_000, units, state)


def test_database_is_wal_full_sync_and_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.sqlite3")
    store.close()
    assert (tmp_path / "agent.sqlite3").stat().st_mode & 0o777 == 0o600
    db = sqlite3.connect(tmp_path / "agent.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    store = Store(tmp_path / "agent.sqlite3")
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_result_replaces_checkpoint_and_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite3"
    # Another process stores the result and dies without closing anything (os._exit).
    root = str(Path(__file__).resolve().parent.parent)
    script = (
        f"import sys, os; sys.path.insert(0, {root!r})\n"
        "from pathlib import Path\n"
        "from tests.test_outbox import checkpoint, entry\n"
        "from edge_agent.outbox import Store\n"
        f"s = Store(Path({str(path)!r})); s.save_checkpoint(checkpoint())\n"
        "s.store_result(entry(), 5)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    store = Store(path)
    assert store.unacked() == [entry()]
    assert store.checkpoints() == []  # the same transaction dropped it
    assert store.knows_lease(LEASE)


def test_only_a_matching_ack_clears_the_outbox(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.sqlite3")
    store.store_result(entry(), 1)
    assert not store.store_ack(ack(rhash=hashlib.sha256(b"other").digest()))
    assert not store.store_ack(ack(lease=b"X" * 16))
    assert store.unacked() == [entry()]
    assert store.store_ack(ack(seq=7))
    assert store.unacked() == []
    assert [a.seq for a in store.acks()] == [7]
    # A repeated or older ack for the same result is recognised but changes nothing.
    assert store.store_ack(ack(seq=3))
    assert [a.seq for a in store.acks()] == [7]
    assert store.store_ack(ack(seq=9))
    assert [(a.seq, a.credit) for a in store.acks()] == [(9, 90)]


def test_refused_entries_are_kept_but_not_resent(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.sqlite3")
    store.store_result(entry(), 1)
    store.store_result(entry(lease=b"M" * 16), 2)
    assert store.refuse(LEASE, "lease_expired")
    assert not store.refuse(LEASE, "lease_expired")
    assert [e.lease for e in store.unacked()] == [b"M" * 16]
    assert store.outbox_entry(LEASE) == entry()


def test_checkpoints_round_trip_big_ints_and_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.sqlite3")
    store.save_checkpoint(checkpoint(units=5))
    store.save_checkpoint(checkpoint(units=9))  # replaces
    (cp,) = Store(tmp_path / "agent.sqlite3").checkpoints()
    assert cp == checkpoint(units=9)
    store.drop_checkpoint(LEASE)
    assert store.checkpoints() == []


def test_counters_are_durable_and_increasing(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.sqlite3")
    assert [store.next_number("pull_req") for _ in range(3)] == [1, 2, 3]
    assert store.next_number("state_seq") == 1
    assert Store(tmp_path / "agent.sqlite3").next_number("pull_req") == 4


def test_blob_cache_evicts_least_recently_used_within_cap(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.sqlite3", blob_cache_bytes=3000)
    blobs = {name: os.urandom(1000) for name in "abcd"}
    digest = {name: hashlib.sha256(data).digest() for name, data in blobs.items()}
    for name in "abc":
        assert store.put_blob(digest[name], blobs[name])
    assert store.get_blob(digest["a"]) == blobs["a"]  # a is now the most recently used
    assert store.put_blob(digest["d"], blobs["d"])  # over the cap: b (least recent) goes
    assert store.blob_hashes() == [digest["c"], digest["a"], digest["d"]]
    assert store.get_blob(digest["b"]) is None
    assert not store.put_blob(b"\x00" * 32, os.urandom(3001))  # larger than the whole cap
    assert len(store.blob_hashes()) == 3
