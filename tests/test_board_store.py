"""The board's durable store and claims (firmware/micropython/edge_board/store.py, claims.py) in
the real ``micropython`` on a real directory, fed with messages the project's CPython code makes:
results sealed with the device key, acks, claim receipts and settlement proofs signed with a
gateway key by the gateway's own code (gateway/settlement.py). Each test runs
tests/board/store_driver.py once over a list of steps and checks, per step, its return value,
the counters it bumped, what it published and the files it left (their SHA-256), then the files.

The edge cases the end-to-end board test (tests/test_micropython_agent.py) does not reach:
pending/final/repeated/foreign acks, claim batching, gaps, re-sends and restarts, bad or foreign
receipts, tampered settlement proofs, ack pruning, and the .tmp recovery of write_file."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import nacl.signing

from edge_agent.core import merkle, rewards, signing
from edge_agent.core import protocol as p
from gateway.settlement import (
    AckedReceipt,
    ClaimedRange,
    Settlement,
    check_claim,
    close_epoch,
    seal_claim_receipt,
)
from tests.conftest import ROOT
from tests.test_rewards import GW_KEY, GW_PUB, OTHER_KEY, dev_id, flipped, gw_sign

FIRMWARE = ROOT / "firmware" / "micropython"
DRIVER = ROOT / "tests" / "board" / "store_driver.py"
SYS_PATH = [str(FIRMWARE / "lib"), str(FIRMWARE), str(ROOT)]  # inserted in front, in this order
DEVICE_KEY = nacl.signing.SigningKey(bytes(range(100, 132)))
DEVICE_PUB = bytes(DEVICE_KEY.verify_key)
DEV = p.device_id(DEVICE_PUB)
NOW = 1_700_000_000  # the board's wall clock: claims are dated with it
T0 = NOW - 10_000  # acks are dated T0 + 100 * seq
ACK_HEAD = ">32sQI"  # store.ACK_HEAD: receipt id, cumulative credit, ack time
PENDING_NOTE = ">32s16s32s"  # store.PENDING_NOTE: receipt id, task, rhash
KEEP_SETTLEMENTS = 8  # store.KEEP_SETTLEMENTS


def device_sign(message: bytes) -> bytes:
    return bytes(DEVICE_KEY.sign(message).signature)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- messages, made by the project's CPython code -----------------------------------------------


@dataclass(frozen=True)
class Result:
    lease: bytes
    task: bytes
    rhash: bytes
    sealed: bytes  # as the board stores it in outbox/<lease>.res
    receipt_id: bytes  # protocol.receipt_id of the signed body: what claims put in their trees

    @property
    def stem(self) -> str:
        return self.lease.hex()


def make_result(k: int) -> Result:
    """Result number k of this device, sealed with its key as edge_board/agent.py does."""
    output = {"inside": 1000 + k, "points": 4000}
    body = p.message("result", lease=b"L" * 12 + k.to_bytes(4, "big"),
                     task=b"T" * 12 + k.to_bytes(4, "big"), dev=DEV, kernel="montecarlo_pi",
                     rhash=p.result_hash(output), units=4000, started=NOW - 60, finished=NOW)
    sealed = bytes(p.seal(body, device_sign, attachment=output))
    body_bytes = cbor2.loads(sealed)["b"]
    return Result(body["lease"], body["task"], body["rhash"], sealed, p.receipt_id(body_bytes))


def make_ack(r: Result, seq: int, credit: int, status: str = "accepted",
             key: nacl.signing.SigningKey = GW_KEY, **over: Any) -> bytes:
    fields: dict[str, Any] = {"lease": r.lease, "task": r.task, "dev": DEV, "rhash": r.rhash,
                              "status": status, "code": "", "seq": seq, "credit": credit,
                              "at": T0 + 100 * seq}
    fields.update(over)
    return bytes(p.seal(p.message("ack", **fields), lambda m: key.sign(m).signature))


def ack_file(r: Result, seq: int, credit: int, sealed_ack: bytes) -> tuple[str, bytes]:
    """(path, content) of the ack file the board must keep: ACK_HEAD, then the signed ack."""
    head = struct.pack(ACK_HEAD, r.receipt_id, credit, T0 + 100 * seq)
    return f"acks/{seq:010d}-{r.stem}.ack", head + sealed_ack


def claim_path(first: int, last: int, ending: str) -> str:
    return f"claims/{first:010d}-{last:010d}{ending}"


def claim_body(run: list[tuple[int, Result, int]]) -> dict[str, Any]:
    """What rewards.build_claim makes on CPython for (seq, result, credit) acks."""
    body: dict[str, Any] = rewards.build_claim(DEV, [(s, r.receipt_id, c) for s, r, c in run], NOW)
    return body


def sealed_claim(run: list[tuple[int, Result, int]]) -> bytes:
    return bytes(p.seal(claim_body(run), device_sign))  # Ed25519 is deterministic


def receipt(run: list[tuple[int, Result, int]], *, rejected_by: ClaimedRange | None = None,
            key: nacl.signing.SigningKey = GW_KEY, **over: Any) -> bytes:
    """The gateway's answer to the claim of `run`: its check_claim verdict against these acks
    (rejected as an overlap of `rejected_by` when given), sealed by seal_claim_receipt."""
    claim = claim_body(run)
    verdict = check_claim(claim, sender=DEV, acked=[AckedReceipt(s, r.receipt_id, c)
                                                    for s, r, c in run],
                          accepted=[] if rejected_by is None else [rejected_by],
                          owner_of=lambda _rid: None)
    assert verdict.status == ("accepted" if rejected_by is None else "rejected"), verdict
    claim.update(over)
    return seal_claim_receipt(claim, verdict, NOW + 5, lambda m: key.sign(m).signature)


def tampered(message: bytes, **change: Any) -> bytes:
    """A CBOR map message with some fields changed (canonical again, as the gateway sends)."""
    doc = cbor2.loads(message)
    doc.update(change)
    return bytes(cbor2.dumps(doc, canonical=True))


def bad_signature(sealed: bytes) -> bytes:
    """A sealed message with one bit of its signature flipped."""
    return tampered(sealed, s=flipped(cbor2.loads(sealed)["s"], 9))


# -- the board, under MicroPython ---------------------------------------------------------------


def step(op: str, **fields: Any) -> dict[str, Any]:
    return {"op": op, **{k: v.hex() if isinstance(v, bytes) else v for k, v in fields.items()}}


def run_board(micropython: str, state: Path, steps: list[dict[str, Any]],
              **cfg: Any) -> list[dict[str, Any]]:
    """Run the steps on the board's Store, Inbox and Claims in `state` (enrolled with DEVICE_KEY
    and GW_PUB); each step's {"ret", "stats", "published", "files"}."""
    state.mkdir(exist_ok=True)
    (state / "device.key").write_text(bytes(DEVICE_KEY).hex())
    (state / "gateway.pub").write_text(GW_PUB.hex())
    doc = {"paths": SYS_PATH, "state_dir": str(state), "unix_time": NOW, "cfg": cfg,
           "steps": steps}
    inputs = state.parent / "input.json"
    inputs.write_text(json.dumps(doc))
    proc = subprocess.run([micropython, str(DRIVER), str(inputs)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), proc.stdout
    out: list[dict[str, Any]] = json.loads(last[len("RESULT "):])
    assert len(out) == len(steps)
    return out


def run_named(micropython: str, state: Path, setup: list[dict[str, Any]],
              cases: list[tuple[str | None, dict[str, Any]]],
              **cfg: Any) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """run_board over the setup steps then the named steps: (setup outputs, {name: output})."""
    out = run_board(micropython, state, [*setup, *(s for _, s in cases)], **cfg)
    named = zip([name for name, _ in cases], out[len(setup):], strict=True)
    return out[:len(setup)], {name: o for name, o in named if name is not None}


def published(out: dict[str, Any]) -> list[bytes]:
    """What a step published, each checked to be a claim already stored as claims/*.pend."""
    assert all(kind == "claim" and stored for kind, _, stored in out["published"]), out
    return [bytes.fromhex(payload) for _, payload, _ in out["published"]]


def files_of(state: Path, under: str) -> dict[str, bytes]:
    return {f"{under}/{f.name}": f.read_bytes() for f in sorted((state / under).iterdir())}


# -- 1. acks --------------------------------------------------------------------------------------


def test_acks_clear_the_outbox_pending_ones_leave_a_note_repeats_and_strangers_change_nothing(
    micropython: str, tmp_path: Path
) -> None:
    r1, r2, r3, r5, never_stored = (make_result(k) for k in (1, 2, 3, 5, 9))
    a1 = make_ack(r1, 1, 100)
    pending2, final2 = make_ack(r2, 2, 100, "pending"), make_ack(r2, 3, 250)
    pending5 = make_ack(r5, 5, 250, "pending")
    cases: list[tuple[str | None, dict[str, Any]]] = [
        ("r1", step("result", lease=r1.lease, sealed=r1.sealed)),
        ("ack1", step("ack", sealed=a1)),
        ("ack1_again", step("ack", sealed=a1)),
        ("r2", step("result", lease=r2.lease, sealed=r2.sealed)),
        ("pending2", step("ack", sealed=pending2)),
        ("pending2_again", step("ack", sealed=pending2)),
        ("final2", step("ack", sealed=final2)),  # a new seq, matched through the .pnd note
        ("final2_again", step("ack", sealed=final2)),
        ("r3", step("result", lease=r3.lease, sealed=r3.sealed)),
        ("other_task", step("ack", sealed=make_ack(r3, 4, 250, task=b"X" * 16))),
        ("other_rhash", step("ack", sealed=make_ack(r3, 4, 250, rhash=bytes(32)))),
        ("no_result", step("ack", sealed=make_ack(never_stored, 4, 250))),
        ("r5", step("result", lease=r5.lease, sealed=r5.sealed)),
        ("pending5", step("ack", sealed=pending5)),
        ("final5_other_rhash", step("ack", sealed=make_ack(r5, 6, 250, rhash=bytes(32)))),
        ("r2_after_final", step("ack", sealed=make_ack(r2, 7, 300))),  # its note is gone
    ]
    _, got = run_named(micropython, tmp_path / "state", [], cases)
    ack1_path, ack1 = ack_file(r1, 1, 100, a1)
    ack2_path, ack2 = ack_file(r2, 2, 100, pending2)
    ack3_path, ack3 = ack_file(r2, 3, 250, final2)
    note2 = struct.pack(PENDING_NOTE, r2.receipt_id, r2.task, r2.rhash)

    assert got["r1"]["files"][f"outbox/{r1.stem}.res"] == sha(r1.sealed)
    assert got["ack1"]["ret"] is True
    assert f"outbox/{r1.stem}.res" not in got["ack1"]["files"]
    assert got["ack1"]["files"][ack1_path] == sha(ack1)  # receipt id, credit, at, signed ack
    assert got["pending2"]["ret"] is True
    assert f"outbox/{r2.stem}.res" not in got["pending2"]["files"]
    assert got["pending2"]["files"][f"outbox/{r2.stem}.pnd"] == sha(note2)
    assert got["pending2"]["files"][ack2_path] == sha(ack2)
    assert got["final2"]["ret"] is True
    assert f"outbox/{r2.stem}.pnd" not in got["final2"]["files"]
    assert got["final2"]["files"][ack3_path] == sha(ack3)  # the receipt id came from the note
    for repeat, before in (("ack1_again", "ack1"), ("pending2_again", "pending2"),
                           ("final2_again", "final2"), ("other_task", "r3"),
                           ("other_rhash", "r3"), ("no_result", "r3"),
                           ("final5_other_rhash", "pending5"), ("r2_after_final", "pending5")):
        assert got[repeat]["ret"] is False, repeat
        assert got[repeat]["files"] == got[before]["files"], repeat
    assert got["pending5"]["ret"] is True

    state = tmp_path / "state"
    assert files_of(state, "acks") == {
        ack1_path: ack1, ack2_path: ack2, ack3_path: ack3,
        **dict([ack_file(r5, 5, 250, pending5)]),
    }
    note5 = struct.pack(PENDING_NOTE, r5.receipt_id, r5.task, r5.rhash)
    assert files_of(state, "outbox") == {f"outbox/{r3.stem}.res": r3.sealed,
                                         f"outbox/{r5.stem}.pnd": note5}


def test_a_repeated_ack_finishes_what_a_crash_in_store_ack_left_half_done(
    micropython: str, tmp_path: Path
) -> None:
    """store_ack writes the ack file, then the pending note, then removes the result: a board
    that died in between re-sends the result, the gateway answers with the same ack, and that
    repeat completes the rest (counted once)."""
    r1, r2 = make_result(1), make_result(2)
    a1, pending2 = make_ack(r1, 1, 100), make_ack(r2, 2, 100, "pending")
    res1, res2, note2 = (f"outbox/{r1.stem}.res", f"outbox/{r2.stem}.res",
                         f"outbox/{r2.stem}.pnd")
    steps = [
        step("result", lease=r1.lease, sealed=r1.sealed),
        step("ack", sealed=a1),  # 1
        step("raw_write", path=res1, data=r1.sealed),  # 2: died before removing the result
        step("ack", sealed=a1),  # 3: the repeat cleans up
        step("result", lease=r2.lease, sealed=r2.sealed),
        step("ack", sealed=pending2),  # 5
        step("remove", path=note2),  # died after the ack file, before the note ...
        step("raw_write", path=res2, data=r2.sealed),  # ... and the result's removal
        step("ack", sealed=pending2),  # 8
    ]
    out = run_board(micropython, tmp_path / "state", steps)
    assert out[1]["ret"] is True and out[3]["ret"] is False
    assert res1 in out[2]["files"] and res1 not in out[3]["files"]
    assert out[3]["files"] == out[1]["files"]
    assert out[5]["ret"] is True and out[8]["ret"] is False
    assert note2 not in out[7]["files"] and res2 in out[7]["files"]
    assert out[8]["files"] == out[5]["files"]  # the note is back, the result gone


def test_a_full_batch_is_claimed_while_busy_after_an_idle_claim_left_no_acks_waiting(
    micropython: str, tmp_path: Path
) -> None:
    first, acked = acked_steps([1, 2, 4])  # 3 never acked
    later, more = acked_steps([5, 6, 7])
    acked.update(more)
    out = run_board(micropython, tmp_path / "state",
                    [*first, step("tick", idle=False), step("tick", idle=True), *later,
                     step("tick", idle=False)], claim_batch=3, claim_quiet_s=0)
    assert published(out[len(first)]) == []  # three waiting, but no run of three
    assert published(out[len(first) + 1]) == [sealed_claim([acked[1], acked[2]]),
                                               sealed_claim([acked[4]])]
    assert published(out[-1]) == [sealed_claim([acked[5], acked[6], acked[7]])]


# -- 2. claims ------------------------------------------------------------------------------------


def acked_steps(seqs: list[int]) -> tuple[list[dict[str, Any]], dict[int, tuple[int, Result, int]]]:
    """Steps that store a result per seq and feed its ack (credit 100 * seq) through the Inbox;
    and each seq's (seq, result, credit)."""
    steps, acked = [], {}
    for seq in seqs:
        r = make_result(seq)
        steps += [step("result", lease=r.lease, sealed=r.sealed),
                  step("inbox", payload=make_ack(r, seq, 100 * seq))]
        acked[seq] = (seq, r, 100 * seq)
    return steps, acked


def test_claims_go_in_full_batches_then_the_rest_when_idle_split_at_gaps_and_are_resent_unchanged(
    micropython: str, tmp_path: Path
) -> None:
    first_steps, acked = acked_steps(list(range(1, 8)))
    gap_steps, more = acked_steps([9, 10, 12, 13, 14])  # 8 and 11 never acked
    acked.update(more)
    cases: list[tuple[str | None, dict[str, Any]]] = [
        ("seven", step("claims_state")),
        ("full", step("tick", idle=False)),  # the full runs 1..3 and 4..6
        ("one_left", step("claims_state")),
        ("not_quiet", step("tick", idle=True)),  # the last ack came just now
        ("+1", step("advance", s=1)),
        ("still_not_quiet", step("tick", idle=True)),
        ("+2", step("advance", s=1)),
        ("busy", step("tick", idle=False)),  # quiet, but not idle
        ("rest", step("tick", idle=True)),  # 7..7
        ("nothing_due", step("tick", idle=True)),
        ("reconnect", step("resend_all")),
        ("resent", step("tick", idle=False)),
        ("+59", step("advance", s=59)),
        ("too_early", step("tick", idle=False)),
        ("+60", step("advance", s=1)),
        ("resend_due", step("tick", idle=False)),  # claim_resend_s after the last send
        *((None, s) for s in gap_steps),
        ("reboot", step("restart")),
        ("rebooted", step("claims_state")),
        ("gap_busy", step("tick", idle=False)),  # 9, 10 | 12, 13, 14: only the full run
        ("+62", step("advance", s=2)),
        ("gap_idle", step("tick", idle=True)),
        ("unclaimed", step("unclaimed")),
        ("all_claimed", step("claims_state")),
        ("reboot2", step("restart")),
        ("rebooted2", step("claims_state")),
        ("after_reboot", step("tick", idle=False)),  # every unanswered claim again
    ]
    setup_out, got = run_named(micropython, tmp_path / "state", first_steps, cases,
                               claim_batch=3, claim_quiet_s=2, claim_resend_s=60)

    def claims(*runs: tuple[int, int]) -> list[bytes]:
        return [sealed_claim([acked[s] for s in range(a, b + 1)]) for a, b in runs]

    assert all(o["stats"] == {"acks": 1} for o in setup_out[1::2])
    runs = [[1, 3], [4, 6], [7, 7], [9, 10], [12, 14]]
    assert published(got["full"]) == claims((1, 3), (4, 6))
    assert got["full"]["stats"] == {"claims_made": 2, "claims_sent": 2}
    for name in ("not_quiet", "still_not_quiet", "busy", "nothing_due", "too_early"):
        assert published(got[name]) == [], name
    assert published(got["rest"]) == claims((7, 7))
    assert sorted(published(got["resent"])) == sorted(claims((1, 3), (4, 6), (7, 7)))
    assert sorted(published(got["resend_due"])) == sorted(claims((1, 3), (4, 6), (7, 7)))
    assert got["resend_due"]["stats"] == {"claims_sent": 3}
    # After a reboot: the unanswered claims go again at once, and the acks in none are counted.
    assert got["rebooted"]["ret"] == {"waiting": 5, "pending": runs[:3], "done": False}
    assert sorted(published(got["gap_busy"])) == sorted(claims((1, 3), (4, 6), (7, 7), (12, 14)))
    assert published(got["gap_idle"]) == claims((9, 10))
    assert got["unclaimed"]["ret"] == []
    assert got["seven"]["ret"] == {"waiting": 7, "pending": [], "done": False}
    assert got["one_left"]["ret"] == {"waiting": 1, "pending": runs[:2], "done": False}
    assert got["all_claimed"]["ret"] == {"waiting": 0, "pending": runs, "done": False}
    assert got["rebooted2"]["ret"] == got["all_claimed"]["ret"]
    every = claims((1, 3), (4, 6), (7, 7), (9, 10), (12, 14))
    assert sorted(published(got["after_reboot"])) == sorted(every)

    # Each claim is the device's signature over build_claim's body: one root over the receipt
    # ids of its acks, the last ack's credit.
    for sealed in every:
        body, _, _ = p.open_sealed(sealed, p.MAX_PAYLOAD["claim"], signing.nacl_verify,
                                   DEVICE_PUB, ("claim",))
        run = [acked[s] for s in range(body["first"], body["last"] + 1)]
        assert body["ids"] == [r.receipt_id for _, r, _ in run]
        assert body["root"] == merkle.root(body["ids"])
        assert body["credit"] == run[-1][2] and body["dev"] == DEV and body["at"] == NOW
    assert files_of(tmp_path / "state", "claims") == {
        claim_path(a, b, ".pend"): c
        for (a, b), c in zip([(1, 3), (4, 6), (7, 7), (9, 10), (12, 14)], every, strict=True)}


# -- 3. claim receipts ----------------------------------------------------------------------------


def claimed_steps(runs: list[list[int]]) -> tuple[list[dict[str, Any]],
                                                  dict[int, tuple[int, Result, int]]]:
    """Acks for each run of seqs, each run claimed at once (an idle tick with claim_quiet_s 0)."""
    steps, acked = [], {}
    for seqs in runs:
        more_steps, more = acked_steps(seqs)
        steps += [*more_steps, step("tick", idle=True)]
        acked.update(more)
    return steps, acked


def test_signed_receipts_answer_our_claims_and_bad_foreign_or_mismatched_ones_change_nothing(
    micropython: str, tmp_path: Path
) -> None:
    setup, acked = claimed_steps([[1, 2, 3], [4, 5, 6], [7]])

    def run(a: int, b: int) -> list[tuple[int, Result, int]]:
        return [acked[s] for s in range(a, b + 1)]

    ok13, rej46, ok77 = (receipt(run(1, 3)), receipt(run(4, 6), rejected_by=ClaimedRange(5, 5,
                         bytes(32))), receipt(run(7, 7)))
    other_root = merkle.root([hashlib.sha256(b"not ours").digest()])
    cases: list[tuple[str | None, dict[str, Any]]] = [
        ("ok13", step("inbox", payload=ok13)),
        ("repeat", step("inbox", payload=ok13)),
        ("rej46", step("inbox", payload=rej46)),
        ("bad_sig", step("inbox", payload=receipt(run(7, 7), key=OTHER_KEY))),
        ("flipped", step("inbox", payload=bad_signature(ok77))),
        ("foreign", step("inbox", payload=receipt(run(7, 7), dev=dev_id(7)))),
        ("root", step("inbox", payload=receipt(run(7, 7), root=other_root))),
        ("range", step("inbox", payload=receipt(run(5, 6)))),
        ("resend", step("resend_all")),
        ("tick", step("tick", idle=False)),
        ("waiting_for_7", step("claims_state")),
        ("ok77", step("inbox", payload=ok77)),
        ("answered", step("claims_state")),
        ("resend2", step("resend_all")),
        ("tick2", step("tick", idle=False)),
    ]
    setup_out, got = run_named(micropython, tmp_path / "state", setup, cases, claim_batch=3,
                               claim_quiet_s=0)
    claimed = setup_out[-1]["files"]
    assert [k for k in claimed if k.startswith("claims/")] == sorted(
        [claim_path(1, 3, ".pend"), claim_path(4, 6, ".pend"), claim_path(7, 7, ".pend")])

    assert got["ok13"]["stats"] == {"claim_accepted": 1}
    files = got["ok13"]["files"]
    assert claim_path(1, 3, ".pend") not in files and files[claim_path(1, 3, ".ok")] == sha(ok13)
    assert got["repeat"]["stats"] == {"claim_receipt_unknown": 1}
    assert got["rej46"]["stats"] == {"claim_rejected": 1}
    files = got["rej46"]["files"]
    assert claim_path(4, 6, ".pend") not in files and files[claim_path(4, 6, ".rej")] == sha(rej46)
    refused = {"bad_sig": "inbox_rejected:bad_signature",
               "flipped": "inbox_rejected:bad_signature",
               "foreign": "inbox_rejected:bad_schema",
               "root": "claim_receipt_unknown", "range": "claim_receipt_unknown"}
    for name, counter in refused.items():
        assert got[name]["stats"] == {counter: 1}, name
        assert got[name]["files"] == got["rej46"]["files"], name  # 7..7 still .pend
    for name in ("repeat", "bad_sig", "foreign", "root", "range"):
        assert got[name]["published"] == []
    assert published(got["tick"]) == [sealed_claim(run(7, 7))]  # only the unanswered one
    assert got["ok77"]["stats"] == {"claim_accepted": 1}
    assert got["waiting_for_7"]["ret"] == {"waiting": 0, "pending": [[7, 7]], "done": False}
    assert got["answered"]["ret"] == {"waiting": 0, "pending": [], "done": True}
    assert published(got["tick2"]) == []
    assert files_of(tmp_path / "state", "claims") == {
        claim_path(1, 3, ".ok"): ok13, claim_path(4, 6, ".rej"): rej46,
        claim_path(7, 7, ".ok"): ok77}


# -- 4. settlement proofs -------------------------------------------------------------------------

# Acks 1..10 dated T0 + 100 * seq with credit 10 * seq, but ack 9 rejects its result: its credit
# stays 80, as ack 8's. Claims 1..3 and 7..9 accepted, 4..5 rejected, 6..6 unanswered, 10
# unclaimed. Epochs close at these offsets from T0 (epoch 2 in the second of ack 8).
CREDIT = {seq: 80 if seq == 9 else 10 * seq for seq in range(1, 11)}
STATUS = {seq: "rejected" if seq == 9 else "accepted" for seq in range(1, 11)}
CLOSES = [250, 800, 950, 1100, 1200, 1300, 1400, 1500, 1600]
FLEET_OTHERS = {dev_id(k): 1_000 * k for k in range(1, 6)}


def epochs() -> list[Settlement]:
    """Nine epochs of the fleet and this device (its credit: its last ack by the close), chained,
    closed by the gateway's close_epoch with the gateway key."""
    out: list[Settlement] = []
    for e, close in enumerate(CLOSES, start=1):
        credits = dict(FLEET_OTHERS)
        credits[DEV] = CREDIT[min(close // 100, 10)]
        devices = sorted(credits)
        out.append(close_epoch(devices, [credits[d] for d in devices], epoch=e,
                               closed_at=T0 + close, sign=gw_sign,
                               prev=out[-1].header_hash if out else rewards.ZERO_HASH))
    return out


def test_verified_settlements_are_kept_and_prune_only_the_acks_no_claim_or_dispute_needs(
    micropython: str, tmp_path: Path
) -> None:
    setup: list[dict[str, Any]] = []
    acked: dict[int, tuple[int, Result, int]] = {}
    for seqs in ([1, 2, 3], [4, 5], [6], [7, 8, 9], [10]):
        for seq in seqs:
            r = make_result(seq)
            setup += [step("result", lease=r.lease, sealed=r.sealed),
                      step("inbox", payload=make_ack(r, seq, CREDIT[seq], STATUS[seq]))]
            acked[seq] = (seq, r, CREDIT[seq])
        if seqs != [10]:
            setup.append(step("tick", idle=True))

    def run(a: int, b: int) -> list[tuple[int, Result, int]]:
        return [acked[s] for s in range(a, b + 1)]

    setup += [step("inbox", payload=receipt(run(1, 3))),
              step("inbox", payload=receipt(run(4, 5), rejected_by=ClaimedRange(4, 4,
                                                                               bytes(32)))),
              step("inbox", payload=receipt(run(7, 9)))]
    settled = epochs()
    proof = [s.proof_message(DEV) for s in settled]
    first = cbor2.loads(proof[0])
    messages = [
        ("path", tampered(proof[0], path=flipped(first["path"], 77))),
        ("credit", tampered(proof[0], credit=first["credit"] + 1)),
        ("signature", tampered(proof[0], epoch=bad_signature(first["epoch"]))),
        ("other_gateway", close_epoch([DEV], [20], epoch=1, closed_at=T0 + 250,
                                      prev=rewards.ZERO_HASH,
                                      sign=lambda m: OTHER_KEY.sign(m).signature)
         .proof_message(DEV)),
        ("not_mine", settled[0].proof_message(dev_id(3))),
        *((f"e{i + 1}", m) for i, m in enumerate(proof[:2])),
        ("repeat", proof[0]),
        *((f"e{i + 3}", m) for i, m in enumerate(proof[2:])),
        ("replay_of_the_oldest", proof[0]),  # epoch 1 is no longer kept: still a repeat
    ]
    cases: list[tuple[str | None, dict[str, Any]]] = [
        (name, step("inbox", payload=m)) for name, m in messages]
    setup_out, got = run_named(micropython, tmp_path / "state", setup, cases, claim_batch=3,
                               claim_quiet_s=0)
    before = setup_out[-1]["files"]
    assert sorted(k for k in before if k.startswith("claims/")) == [
        claim_path(1, 3, ".ok"), claim_path(4, 5, ".rej"), claim_path(6, 6, ".pend"),
        claim_path(7, 9, ".ok")]

    def acks_left(files: dict[str, str]) -> list[int]:
        return sorted(int(k[5:15]) for k in files if k.startswith("acks/"))

    def settle_files(files: dict[str, str]) -> list[str]:
        return sorted(k for k in files if k.startswith("settle/"))

    rejected = {"path": "settlement_rejected:bad_proof",
                "credit": "settlement_rejected:bad_proof",
                "signature": "settlement_rejected:bad_signature",
                "other_gateway": "settlement_rejected:bad_signature",
                "not_mine": "settlement_rejected:not_mine"}
    for name, counter in rejected.items():
        assert got[name]["stats"] == {counter: 1}, name
        assert got[name]["files"] == before, name  # nothing stored, nothing pruned
    assert got["repeat"]["stats"] == {"settlement_repeat": 1}
    assert got["repeat"]["files"] == got["e2"]["files"]

    # What each epoch leaves: acks in accepted claims dated by the newest close go, except the
    # best (highest credit, then seq) by each kept close: 2 for epoch 1, 8 for epoch 2 (dated
    # at its close), 9 for epoch 3 (credit 80 as 8). Rejected (4, 5), pending (6) and unclaimed
    # (10) stay. Epoch 9 pushes epoch 1 out: ack 2 is nobody's best, claim 1..3 has no ack left.
    want = {1: [2, 3, 4, 5, 6, 7, 8, 9, 10], **{e: [2, 4, 5, 6, 8, 9, 10] for e in range(2, 9)},
            9: [4, 5, 6, 8, 9, 10]}
    for e in range(1, len(settled) + 1):
        files = got[f"e{e}"]["files"]
        assert got[f"e{e}"]["stats"] == {"settlements": 1}
        assert acks_left(files) == want[e], e
        kept = [f"settle/{k.epoch:010d}-{k.header['closed_at']:010d}.cbor"
                for k in settled[max(0, e - KEEP_SETTLEMENTS):e]]
        assert settle_files(files) == kept, e
        assert files[kept[-1]] == sha(proof[e - 1])
        assert (claim_path(1, 3, ".ok") in files) == (e < 9)
        # A dispute of any kept epoch still has the ack it needs: the best one by its close.
        for k in settled[max(0, e - KEEP_SETTLEMENTS):e]:
            close = k.header["closed_at"]
            assert max((c for s_, _, c in acked.values() if T0 + 100 * s_ <= close),
                       default=None) == max((acked[q][2] for q in want[e]
                                             if T0 + 100 * q <= close), default=None)
    assert got["replay_of_the_oldest"]["stats"] == {"settlement_repeat": 1}
    assert got["replay_of_the_oldest"]["files"] == got["e9"]["files"]
    state = tmp_path / "state"
    assert sorted(files_of(state, "claims")) == [
        claim_path(4, 5, ".rej"), claim_path(6, 6, ".pend"), claim_path(7, 9, ".ok")]
    assert files_of(state, "settle")[f"settle/{9:010d}-{T0 + 1600:010d}.cbor"] == proof[8]
    assert files_of(state, "outbox") == {}  # every result acked, none pending: no note left
    for q in want[9]:  # the kept acks are the gateway's signed acks, intact
        r = acked[q][1]
        path, content = ack_file(r, q, CREDIT[q], make_ack(r, q, CREDIT[q], STATUS[q]))
        assert (state / path).read_bytes() == content


# -- 5. write_file's crash recovery ---------------------------------------------------------------


def test_a_complete_new_file_is_promoted_and_a_tmp_is_dropped_on_read(
    micropython: str, tmp_path: Path
) -> None:
    """write_file: <name>.tmp (maybe half written) -> <name>.new (complete) -> <name>; a crash
    leaves a .tmp, which is dropped, or a .new, which replaces the file."""
    r = make_result(1)
    res = f"outbox/{r.stem}.res"
    steps = [
        step("raw_write", path="numbers.json.new", data=b'{"pull_req": 70}'),  # 0
        step("next_number", name="pull_req"),  # 1: the promoted bound
        step("raw_write", path="numbers.json.tmp", data=b'{"pull_req": 5'),  # 2: a half write
        step("read_file", path="numbers.json"),  # 3
        step("raw_write", path=res + ".new", data=r.sealed),  # 4: crashed in store_result
        step("ack", sealed=make_ack(r, 1, 100)),  # 5: outbox_entry promotes it
        step("read_file", path="absent"),  # 6
    ]
    out = run_board(micropython, tmp_path / "state", steps)
    assert out[0]["files"]["numbers.json.new"] == sha(b'{"pull_req": 70}')
    assert out[1]["ret"] == 70
    assert "numbers.json.new" not in out[1]["files"]
    bound = json.loads((tmp_path / "state" / "numbers.json").read_text())
    assert bound == {"pull_req": 70 + 64}
    assert json.loads(bytes.fromhex(out[3]["ret"])) == bound
    assert "numbers.json.tmp" not in out[3]["files"]
    assert out[3]["files"]["numbers.json"] == out[1]["files"]["numbers.json"]
    assert out[4]["files"][res + ".new"] == sha(r.sealed) and res not in out[4]["files"]
    assert out[5]["ret"] is True
    assert not any(k.startswith("outbox/") for k in out[5]["files"])
    assert out[6]["ret"] is None


def test_a_half_written_first_numbers_file_does_not_stop_the_board(
    micropython: str, tmp_path: Path
) -> None:
    # The first write of numbers.json cut short leaves a lone .tmp: nothing of its block was
    # handed out yet, so starting again from 1 is safe (it is dropped, not promoted).
    steps = [step("raw_write", path="numbers.json.tmp", data=b'{"pull_r'),
             step("next_number", name="pull_req")]
    out = run_board(micropython, tmp_path / "state", steps)
    assert out[1]["ret"] == 1
    assert "numbers.json.tmp" not in out[1]["files"]


def test_a_checkpoint_replaced_when_the_board_died_is_listed_not_lost(
    micropython: str, tmp_path: Path
) -> None:
    # save_checkpoint crashed after removing the old checkpoint: only the complete .new is left;
    # beside another lease's half-written .tmp, which is dropped.
    doc = cbor2.dumps({"lease": b"L" * 40, "started": 1_700_000_000, "state": {"units": 7}},
                      canonical=True)
    lease, other = "ab" * 16, "cd" * 16
    steps = [step("raw_write", path=f"ckpt/{lease}.cbor.new", data=doc),
             step("raw_write", path=f"ckpt/{other}.cbor.tmp", data=doc[:9]),
             step("checkpoints")]
    out = run_board(micropython, tmp_path / "state", steps)
    assert out[2]["ret"] == [[lease, (b"L" * 40).hex(), 1_700_000_000, {"units": 7}]]
    assert sorted(k for k in out[2]["files"] if k.startswith("ckpt/")) == [f"ckpt/{lease}.cbor"]
