"""``edge-agent earnings``: what this device earned, checked on the device (docs/REWARDS.md).

Everything comes from the agent's own database and is verified again here, offline, with the
gateway key learnt at enrolment: each epoch's proof (signature, Merkle path, chain to the
previous epoch), the acks (the running cumulative credit the gateway signed), the claims and
their receipts. ``--dispute`` writes a self-contained evidence file for every epoch that pays
less than an ack the same gateway signed before the epoch's close
(``rewards.dispute_from_settlement``), checkable by anyone with ``edge-gateway verify-dispute``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_agent.core import protocol, rewards, signing
from edge_agent.identity import StateDir
from edge_agent.outbox import Store

__all__ = ["earnings_report", "render", "write_disputes"]


def _credits(micro: int) -> str:
    return f"{micro / rewards.MICRO:,.6f}"


def _epoch_rows(store: Store, gw_pub: bytes, dev: str) -> tuple[list[dict[str, Any]],
                                                                 list[dict[str, Any]]]:
    """(verified settlements, one report row per stored epoch). A stored proof that no longer
    verifies (a damaged database) is reported, never counted."""
    verified: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    acks = store.logged_acks()
    for stored in store.settlements():
        try:
            settled = rewards.verify_settlement(stored.message, gw_pub, signing.verify, dev)
        except (protocol.ProtocolError, rewards.RewardsError) as exc:
            rows.append({"epoch": stored.epoch, "verified": False, "why": str(exc)})
            continue
        verified.append(settled)
        before = [a.credit for a in acks if a.at <= settled["closed_at"]]
        rows.append({"epoch": stored.epoch, "verified": True,
                     "acked_by_close": max(before, default=0)})
    by_epoch = {r["epoch"]: r for r in rewards.epoch_earnings(verified)}
    for row in rows:
        row.update(by_epoch.get(row["epoch"], {}))
        if row["verified"]:
            row["short"] = max(0, row["acked_by_close"] - row["credit"])
    return verified, rows


def earnings_report(state: StateDir) -> dict[str, Any]:
    """Per-epoch credit and verification, the acked credit and the claims, as one map."""
    dev = state.load_identity().device_id
    gw_pub = state.load_gateway_key()
    store = Store(state.db_path)
    try:
        _, epochs = _epoch_rows(store, gw_pub, dev)
        acks = store.logged_acks()
        pruned = store.pruned_ack_count()
        claims = store.claims()
        unclaimed = store.unclaimed_acks()
    finally:
        store.close()
    # Pruned acks (Store.prune_acks) all lie in accepted claims: those seqs were acked.
    settled = [(c.first, c.last) for c in claims if c.status == "accepted"]
    missing = [seq for seq in rewards.missing_seqs([a.seq for a in acks])
               if not any(first <= seq <= last for first, last in settled)]
    return {
        "device": dev,
        "gateway_pub": gw_pub.hex(),
        "epochs": epochs,
        "acked_credit": max((a.credit for a in acks), default=0),
        "acks": len(acks),
        "acks_pruned": pruned,
        "missing_acks": missing,
        "claims": {
            "accepted": sum(c.status == "accepted" for c in claims),
            "rejected": [{"first": c.first, "last": c.last, "code": c.code}
                         for c in claims if c.status == "rejected"],
            "pending": [{"first": c.first, "last": c.last, "credit": c.credit}
                        for c in claims if c.status is None],
            "unclaimed_acks": len(unclaimed),
        },
    }


def render(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"earnings of device {report['device']}")
    for name in ("epoch", "closed", "credit (cumulative)", "earned", "proof", "chained",
                 "acked by close"):
        table.add_column(name, justify="right" if name != "proof" else "left")
    for row in report["epochs"]:
        if not row["verified"]:
            table.add_row(str(row["epoch"]), "", "", "", f"[red]BAD: {row['why']}", "", "")
            continue
        closed = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["closed_at"]))
        short = f" [red](short {_credits(row['short'])})" if row["short"] else ""
        table.add_row(str(row["epoch"]), closed, _credits(row["credit"]),
                      _credits(row["earned"]), "[green]verified",
                      "yes" if row["chained"] else "[yellow]no",
                      _credits(row["acked_by_close"]) + short)
    console.print(table)
    claims = report["claims"]
    console.print(
        f"acked: {_credits(report['acked_credit'])} credits in {report['acks']} acks kept"
        + (f" ({report['acks_pruned']} settled ones pruned)" if report["acks_pruned"] else "")
        + (f", missing acks {report['missing_acks'][:10]}" if report["missing_acks"] else ""))
    console.print(
        f"claims: {claims['accepted']} accepted, {len(claims['pending'])} pending, "
        f"{len(claims['rejected'])} rejected; {claims['unclaimed_acks']} acks not claimed yet")
    for c in claims["pending"]:
        console.print(f"  pending: acks {c['first']}..{c['last']} ({_credits(c['credit'])})")
    for c in claims["rejected"]:
        console.print(f"  rejected: acks {c['first']}..{c['last']}: {c['code']}")


def write_disputes(state: StateDir, out_dir: Path) -> list[tuple[int, Path | None]]:
    """For each verified epoch: (epoch, the evidence file written) or (epoch, None) when the
    epoch pays at least every ack signed before its close."""
    dev = state.load_identity().device_id
    gw_pub = state.load_gateway_key()
    store = Store(state.db_path)
    try:
        verified, _ = _epoch_rows(store, gw_pub, dev)
        sealed_acks = [a.sealed for a in store.logged_acks()]
    finally:
        store.close()
    written: list[tuple[int, Path | None]] = []
    for settled in verified:
        evidence = rewards.dispute_from_settlement(settled, gw_pub, signing.verify, sealed_acks)
        path = None
        if evidence is not None:
            path = out_dir / f"dispute-{dev}-epoch-{settled['epoch']:06d}.json"
            path.write_text(json.dumps(evidence, indent=1, sort_keys=True))
        written.append((settled["epoch"], path))
    return written
