"""`edge-gateway verify-dispute FILE` (gateway/dispute.py) on evidence files written by the core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.core import rewards, signing
from gateway.dispute import EXIT_NOT_PROVEN, EXIT_PROVEN, EXIT_UNREADABLE, main, verify_dispute_file
from tests.test_rewards import (
    CLOSED_AT,
    FLEET,
    GW_PUB,
    OTHER_KEY,
    dev_id,
    flipped,
    seal_ack,
    settle,
)

DEV = dev_id(11)


def write_evidence(tmp_path: Path, acked: int, settled: int, **over: Any) -> Path:
    """Evidence for DEV against a settlement giving it `settled`, with an ack of `acked` before
    the close (built by the core's build_dispute; honest data is assembled the same way)."""
    s = settle({**FLEET, DEV: settled})
    i = s.index(DEV)
    assert i is not None
    ack = seal_ack(DEV, 3, acked, CLOSED_AT - 1)
    evidence = rewards.build_dispute(
        GW_PUB, signing.verify, s.sealed_header, [s.leaf(i)], dev=DEV, sealed_acks=[ack]
    ) or {
        "format": rewards.DISPUTE_FORMAT,
        "gateway_pub": GW_PUB.hex(),
        "dev": DEV,
        "epoch": s.sealed_header.hex(),
        "leaves": [dict(s.leaf(i), path=s.path(i).hex())],
        "acks": [ack.hex()],
    }
    evidence.update(over)
    path = tmp_path / "dispute.json"
    path.write_text(json.dumps(evidence))
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict[str, Any]]:
    code = main(args)
    out = capsys.readouterr().out.strip().splitlines()
    return code, out[0] if out else "", json.loads(out[-1]) if out else {}


def test_settlement_that_omitted_acked_work_is_proven(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_evidence(tmp_path, acked=9_000, settled=8_000)
    code, line, verdict = run([str(path)], capsys)
    assert code == EXIT_PROVEN and line.startswith("PROVEN (underpaid)")
    assert (verdict["settled"], verdict["acked"], verdict["shortfall"]) == (8_000, 9_000, 1_000)
    assert verdict["gateway_pub"] == GW_PUB.hex()
    code, _, _ = run([str(path), "--gateway-pub", GW_PUB.hex()], capsys)
    assert code == EXIT_PROVEN


def test_honest_data_is_not_proven(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_evidence(tmp_path, acked=8_000, settled=8_000)
    code, line, verdict = run([str(path)], capsys)
    assert code == EXIT_NOT_PROVEN and line.startswith("NOT PROVEN (no_dispute)")
    assert verdict["shortfall"] == 0


def test_evidence_signed_by_another_key_proves_nothing_against_this_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_evidence(tmp_path, acked=9_000, settled=8_000)
    other = bytes(OTHER_KEY.verify_key)
    assert verify_dispute_file(path, other)["code"] == "wrong_gateway"
    code, _, verdict = run([str(path), "--gateway-pub", other.hex()], capsys)
    assert code == EXIT_NOT_PROVEN and verdict["code"] == "wrong_gateway"


def test_flipped_bits_in_the_evidence_are_not_proven(tmp_path: Path) -> None:
    good = json.loads(write_evidence(tmp_path, acked=9_000, settled=8_000).read_text())
    leaf = good["leaves"][0]
    variants = [
        dict(good, epoch=flipped(bytes.fromhex(good["epoch"]), 900).hex()),  # header/root/signature
        dict(good, acks=[flipped(bytes.fromhex(good["acks"][0]), 1000).hex()]),  # the ack
        dict(good, leaves=[dict(leaf, path=flipped(bytes.fromhex(leaf["path"]), 3).hex())]),
        dict(good, leaves=[dict(leaf, credit=leaf["credit"] - 1)]),  # the leaf
        dict(good, leaves=[dict(leaf, index=leaf["index"] + 1)]),
    ]
    for k, bad in enumerate(variants):
        path = tmp_path / f"bad{k}.json"
        path.write_text(json.dumps(bad))
        verdict = verify_dispute_file(path)
        assert not verdict["proven"] and verdict["code"] == "bad_evidence", (k, verdict)


def test_unreadable_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert main([str(junk)]) == EXIT_UNREADABLE
    assert main([str(tmp_path / "missing.json")]) == EXIT_UNREADABLE
    assert main([str(write_evidence(tmp_path, 2, 1)), "--gateway-pub", "zz"]) == EXIT_UNREADABLE
    assert "cannot read" in capsys.readouterr().err
