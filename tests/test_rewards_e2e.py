"""Rewards end to end (docs/REWARDS.md): the real ``edge-gateway serve`` (its own Mosquitto), 20
real agents (``edge-agent swarm`` subprocesses), ``edge-gateway settle`` as a second process.

One scenario, in phases, each asserting on the gateway's ledger and the agents' own databases:
* a job's results are acked with the cumulative credit and claimed in signed batches; every
  claim is accepted and covers every ack; epoch 1 is settled while ``serve`` runs, and every
  device gets its proof over MQTT;
* epoch 2 is settled while a second job is being worked on (acks committing meanwhile): each
  leaf is the credit of an ack that device was sent, and the epoch matches the ledger;
* epoch 3 is settled while every device is offline: each gets its proof when it reconnects
  (persistent session, QoS 1);
* every device verifies its three proofs offline (signature, path, chain); the sum of the
  leaves is the ledger's credit, which is the sum of what the accepted results earned;
* a replayed claim gets the identical receipt and changes nothing (epoch 4 has epoch 3's root);
* ``edge-agent earnings`` (table and JSON); ``earnings --dispute`` finds nothing against an
  honest gateway, and ``verify-dispute`` says not proven for honest evidence; a settlement the
  gateway's key signed that underpays a device gives evidence ``verify-dispute`` proves.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2

from edge_agent.claims import Claims
from edge_agent.core import protocol, rewards, signing
from edge_agent.earnings import earnings_report
from edge_agent.identity import StateDir
from edge_agent.outbox import Store
from edge_agent.runtime import Stats
from gateway.config import StatePaths
from gateway.epochs import load_epoch
from gateway.keys import GatewayKey
from gateway.settlement import close_epoch, load_settlement
from tests.e2e_helpers import (
    PY,
    Serve,
    agent_db,
    edge_agent,
    finished,
    gateway_cli,
    job_state,
    ledger_of,
    rows,
    stop,
    submit,
    tasks_done,
    tokens,
    wait_until,
)

DEVICES = 20
SWARM_SEED = 21  # its simulated devices are all on their chargers (tests/test_e2e_workloop.py)


def _mc_job(seed: int, tasks: int) -> dict[str, Any]:
    return {"kind": "montecarlo_pi", "params": {"seed": seed, "points": tasks * 200_000},
            "split": {"points_per_task": 200_000}}


async def _swarm(base: Path, url: str, token_file: Path) -> asyncio.subprocess.Process:
    return await edge_agent("swarm", "--devices", str(DEVICES), "--gateway", url, "--tokens",
                            str(token_file), "--state-dir", str(base), "--seed", str(SWARM_SEED),
                            "--speedup", "100", "--no-progress")


def _dirs(base: Path) -> list[StateDir]:
    return [StateDir(base / f"dev-{i:04d}") for i in range(DEVICES)]


def _all_claimed(state: Path) -> bool:
    """Nothing awaits verification, and every ack of every device is in an accepted claim."""
    db = StatePaths(state).ledger
    [(pending,)] = rows(db, "SELECT count(*) FROM results WHERE status = 'pending'")
    unclaimed = rows(db, "SELECT d.id FROM devices AS d WHERE d.ack_seq != (SELECT "
                         "coalesce(sum(c.last - c.first + 1), 0) FROM claims AS c "
                         "WHERE c.device_id = d.id)")
    return pending == 0 and not unclaimed


def _have_epoch(base: Path, epoch: int) -> bool:
    return all(rows(agent_db(d.root), "SELECT 1 FROM settlements WHERE epoch = ?", (epoch,))
               for d in _dirs(base))


async def _settle(state: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(await gateway_cli(state, "settle", "--json"))
    return report


def _ledger_credits(state: Path) -> dict[str, int]:
    return dict(rows(StatePaths(state).ledger, "SELECT id, credit FROM devices WHERE ack_seq > 0"))


async def _replay(state: Path, device: StateDir, sealed: bytes, times: int
                  ) -> tuple[list[bytes], list[float]]:
    """Publish a claim as the device (its own MQTT account, its persistent session) and
    collect the receipts: (receipts, round trips in seconds)."""
    creds = device.load_credentials()
    received: list[bytes] = []
    trips: list[float] = []
    async with aiomqtt.Client(creds.address.host, creds.address.port, username=creds.username,
                              password=creds.password, identifier=creds.username,
                              clean_session=False, timeout=10, socket_options=[
                                  (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]) as client:
        await client.subscribe(protocol.inbox_topic(creds.username), qos=1)
        messages = aiomqtt_messages(client)
        for _ in range(times):
            started = time.perf_counter()
            await client.publish(protocol.device_topic(creds.username, "claim"), sealed, qos=1)
            while True:
                payload = await asyncio.wait_for(anext(messages), 10)
                if isinstance(payload, bytes) and cbor2.loads(payload)["t"] == "claim_receipt":
                    break
            trips.append(time.perf_counter() - started)
            received.append(payload)
    return received, trips


async def _queued_epochs(device: StateDir, want: set[int]) -> set[int]:
    """Connect as the device (its persistent session) and verify the settlements waiting for
    it until the epochs ``want`` are seen; the epochs seen."""
    creds = device.load_credentials()
    seen: set[int] = set()
    async with aiomqtt.Client(creds.address.host, creds.address.port, username=creds.username,
                              password=creds.password, identifier=creds.username,
                              clean_session=False, timeout=10) as client:
        await client.subscribe(protocol.inbox_topic(creds.username), qos=1)
        messages = aiomqtt_messages(client)
        while not want <= seen:
            payload = await asyncio.wait_for(anext(messages), 10)
            if isinstance(payload, bytes) and cbor2.loads(payload)["t"] == "settlement":
                seen.add(rewards.verify_settlement(payload, device.load_gateway_key(),
                                                   signing.verify, creds.username)["epoch"])
    return seen


def _receipt_body(sealed: bytes, gateway_pub: bytes) -> dict[str, Any]:
    body: dict[str, Any] = protocol.open_sealed(
        sealed, protocol.MAX_PAYLOAD["inbox"], signing.verify, gateway_pub, ("claim_receipt",))[0]
    return body


async def aiomqtt_messages(client: aiomqtt.Client) -> Any:
    async for message in client.messages:
        yield message.payload


def _evidence_of_honest_epoch(device: StateDir, epoch: int) -> dict[str, Any]:
    """Evidence in the dispute format built from an honest epoch (build_dispute refuses to make
    it: there is nothing to dispute), to show verify-dispute does not prove it."""
    store = Store(device.db_path)
    try:
        [settled] = [rewards.verify_settlement(s.message, device.load_gateway_key(),
                                               signing.verify) for s in store.settlements()
                     if s.epoch == epoch]
        acks = [a for a in store.logged_acks() if a.at <= settled["closed_at"]]
    finally:
        store.close()
    return {"format": rewards.DISPUTE_FORMAT, "gateway_pub": device.load_gateway_key().hex(),
            "dev": settled["dev"], "epoch": settled["sealed"].hex(),
            "leaves": [{"index": settled["index"], "dev": settled["dev"],
                        "credit": settled["credit"], "path": settled["path"].hex()}],
            "acks": [max(acks, key=lambda a: a.credit).sealed.hex()]}


async def _verify_dispute(state: Path, path: Path, gateway_pub: bytes) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "gateway.cli", "verify-dispute", str(path), "--gateway-pub",
        gateway_pub.hex(), stdout=asyncio.subprocess.PIPE)
    return await finished(proc, 30)


def _underpaying_epoch(state: Path, victim: str, shortfall: int) -> bytes:
    """What a dishonest (or broken) gateway would do: sign, with its own key, the next epoch
    over the ledger's credits with one device paid less. Returns the victim's proof."""
    paths = StatePaths(state)
    key = GatewayKey.load_or_create(paths.key)
    with ledger_of(state) as ledger:
        last = ledger.rewards.last_epoch()
        assert last is not None
        devices, credits = ledger.rewards.credits()
    credits[devices.index(victim)] -= shortfall
    forged = close_epoch(devices, credits, epoch=last.epoch + 1, closed_at=int(time.time()) - 1,
                         prev=last.header_hash, sign=key.sign)
    return forged.proof_message(victim)


def test_twenty_devices_claim_settle_three_epochs_and_prove_an_underpayment(
        tmp_path: Path) -> None:
    state, base = tmp_path / "gw", tmp_path / "swarm"
    measured: dict[str, Any] = {}

    async def main() -> None:
        serve = await Serve.start(state)
        try:
            token_file = tmp_path / "tokens"
            token_file.write_text("\n".join(await tokens(state, DEVICES)))
            # -- epoch 1: work, claims, settled while serve runs, proofs over MQTT ----------
            job1, _ = await submit(state, _mc_job(1, 40))
            swarm = await _swarm(base, serve.url, token_file)
            await wait_until(lambda: job_state(state, job1) == "done", 60, "job 1 to finish")
            await wait_until(lambda: _all_claimed(state), 30, "every ack to be claimed")
            measured["t_claimed1"] = round(time.monotonic() - started, 1)
            e1 = await _settle(state)
            assert (e1["epoch"], e1["devices"], e1["proofs_sent"]) == (1, DEVICES, DEVICES)
            assert e1["total"] == sum(_ledger_credits(state).values()) > 0
            await wait_until(lambda: _have_epoch(base, 1), 30, "every device's epoch 1 proof")
            measured["settle_close_s"] = e1["close_s"]
            measured["settle_publish_s"] = e1["publish_s"]
            # -- epoch 2: settled while acks are being committed --------------------------
            measured["t_epoch1"] = round(time.monotonic() - started, 1)
            # Idle agents pull again only after the gateway's no_work retry (30 s): restart.
            code, _ = await stop(swarm)
            assert code == 0
            job2, _ = await submit(state, _mc_job(2, 120))
            swarm = await _swarm(base, serve.url, token_file)
            await wait_until(lambda: tasks_done(state, job2) >= 30, 60, "job 2 under way")
            e2 = await _settle(state)
            measured["epoch2_during_job"] = job_state(state, job2) == "running"
            await wait_until(lambda: job_state(state, job2) == "done", 60, "job 2 to finish")
            await wait_until(lambda: _all_claimed(state), 30, "every ack to be claimed")
            await wait_until(lambda: _have_epoch(base, 2), 30, "every device's epoch 2 proof")
            measured["t_epoch2"] = round(time.monotonic() - started, 1)
            code, out = await stop(swarm)
            assert code == 0 and f"{DEVICES} devices" in out, out
            db = StatePaths(state).ledger
            acked = set(rows(db, "SELECT device_id, credit FROM acks"))
            with ledger_of(state) as ledger:
                settled2 = load_epoch(ledger, 2)
            # Each leaf is a credit the ledger acked to that device (or 0 before its first).
            assert all((d, c) in acked or c == 0
                       for d, c in zip(settled2.devices, settled2.credits, strict=True))
            assert sum(settled2.credits) == e2["total"]
            # -- epoch 3: every device offline; proofs queued for their sessions -----------
            e3 = await _settle(state)
            assert e3["proofs_sent"] == DEVICES
            swarm = await _swarm(base, serve.url, token_file)
            await wait_until(lambda: _have_epoch(base, 3), 30, "proofs delivered on reconnect")
            measured["t_epoch3"] = round(time.monotonic() - started, 1)
            code, _ = await stop(swarm)
            assert code == 0
            # -- every proof verifies offline; the leaves are the ledger -------------------
            files = state / "settlements"
            settled3 = load_settlement(files / "epoch-000003.cbor", GatewayKey.load_or_create(
                StatePaths(state).key).pub)
            assert load_settlement(files / "epoch-000003.json").root == settled3.root
            credits = _ledger_credits(state)
            assert dict(zip(settled3.devices, settled3.credits, strict=True)) == credits
            [(earned,)] = rows(db, "SELECT sum(credit) FROM results")
            assert sum(settled3.credits) == e3["total"] == earned
            for device in _dirs(base):
                report = earnings_report(device)
                assert [(r["epoch"], r["verified"], r["chained"]) for r in report["epochs"]] == [
                    (1, True, True), (2, True, True), (3, True, True)]
                assert report["epochs"][-1]["credit"] == credits[report["device"]]
                assert report["acked_credit"] == credits[report["device"]]
                assert report["claims"]["unclaimed_acks"] == 0
                assert all(r["short"] == 0 for r in report["epochs"])
            with ledger_of(state) as ledger:
                assert ledger.check() == []
            # -- a replayed claim changes nothing ----------------------------------------
            measured["t_verified"] = round(time.monotonic() - started, 1)
            dev0 = _dirs(base)[0]
            store = Store(dev0.db_path)
            claim = store.claims()[0]
            store.close()
            [(claims_before,)] = rows(db, "SELECT count(*) FROM claims")
            receipts, trips = await _replay(state, dev0, claim.sealed, 10)
            assert set(receipts) == {claim.receipt}
            assert rows(db, "SELECT count(*) FROM claims") == [(claims_before,)]
            assert _ledger_credits(state) == credits
            measured["claim_replay_rtt_ms"] = round(1000 * statistics.median(trips), 2)
            # A new claim (judged and signed afresh): its first ack again, so it overlaps.
            store = Store(dev0.db_path)
            first = store.logged_acks()[0]
            store.close()
            fresh = rewards.build_claim(dev0.load_identity().device_id,
                                        [(first.seq, first.receipt_id, first.credit)],
                                        int(time.time()))
            sealed = bytes(protocol.seal(fresh, dev0.load_identity().sign))
            receipts, trips = await _replay(state, dev0, sealed, 10)
            answers = {(b["status"], b["code"]) for b in (
                _receipt_body(r, dev0.load_gateway_key()) for r in receipts)}
            assert answers == {("rejected", "overlap")}
            measured["claim_judged_rtt_ms"] = round(1000 * statistics.median(trips), 2)
            assert rows(db, "SELECT count(*) FROM claims") == [(claims_before,)]
            e4 = await _settle(state)
            assert (e4["root"], e4["total"]) == (settled3.root.hex(), e3["total"])
            # -- earnings and disputes at the command line -------------------------------
            table = await edge_agent("earnings", "--state-dir", str(dev0.root))
            code, out = await finished(table, 30)
            assert code == 0 and "verified" in out and "claims:" in out, out
            print(out)  # the table, for people reading `pytest -s`
            as_json = await edge_agent("earnings", "--state-dir", str(dev0.root), "--json")
            code, out = await finished(as_json, 30)
            assert code == 0 and len(json.loads(out)["epochs"]) == 3  # 4 waits in its session
            honest = await edge_agent("earnings", "--state-dir", str(dev0.root), "--dispute")
            code, out = await finished(honest, 30)
            assert code == 0 and out.count("nothing to dispute") == 3, out
            gw_pub = dev0.load_gateway_key()
            evidence = tmp_path / "honest.json"
            evidence.write_text(json.dumps(_evidence_of_honest_epoch(dev0, 3)))
            code, out = await _verify_dispute(state, evidence, gw_pub)
            assert code == 1 and out.startswith("NOT PROVEN (no_dispute)"), out
            victim = dev0.load_identity().device_id
            proof = _underpaying_epoch(state, victim, shortfall=1)
            store = Store(dev0.db_path)
            Claims(store, victim, gw_pub, lambda m: b"", Stats()).on_settlement(proof)
            store.close()
            dispute = await edge_agent("earnings", "--state-dir", str(dev0.root), "--dispute",
                                       "--out", str(tmp_path))
            code, out = await finished(dispute, 30)
            [written] = list(tmp_path.glob("dispute-*-epoch-000005.json"))
            assert code == 0 and f"epoch 5: evidence written to {written}" in out, out
            code, out = await _verify_dispute(state, written, gw_pub)
            assert code == 0 and out.startswith("PROVEN (underpaid)"), out
            assert json.loads(out.splitlines()[1])["shortfall"] == 1
            code, out = await _verify_dispute(state, written, bytes(32))
            assert code == 1 and "wrong_gateway" in out
        finally:
            assert await serve.stop() == 0
        # -- settled while no serve runs: the service sends the proofs when it starts ------
        e5 = await _settle(state)
        assert (e5["epoch"], e5["proofs_sent"]) == (5, 0)
        serve = await Serve.start(state, serve.port)
        try:
            await wait_until(lambda: not rows(StatePaths(state).ledger, "SELECT epoch FROM "
                                              "settlements WHERE published_at IS NULL"),
                             30, "the service to publish epoch 5")
            dev0 = _dirs(base)[0]
            epochs = await _queued_epochs(dev0, {4, 5})
            assert epochs == {4, 5}  # both waited in the device's session while it was away
        finally:
            assert await serve.stop() == 0

    started = time.monotonic()
    asyncio.run(main())
    measured["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps({"test": "rewards_e2e", **measured}))
