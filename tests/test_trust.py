"""The trust policy (gateway/trust.py): verification choices, quorum, canaries, strikes and
quarantine, receipts that cannot be replayed, and the cheating-fleet benchmark."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import nacl.exceptions
import nacl.signing
import pytest

from benchmarks import trust as bench
from edge_agent import kernels
from edge_agent.core import cbor, protocol, signing
from gateway import trust
from gateway.trust import DeviceTrust, TrustConfig, TrustPolicy

CFG = TrustConfig()
UNITS = 1000
GOOD = hashlib.sha256(b"the right answer").digest()
BAD = hashlib.sha256(b"a made-up answer").digest()


def dev(i: int) -> str:
    return f"{i:032x}"


def policy(seed: int = 7, config: TrustConfig = CFG) -> TrustPolicy:
    return TrustPolicy(config, random.Random(seed))


def make_trusted(p: TrustPolicy, device_id: str, token: str, streak: int = 50) -> DeviceTrust:
    """A device with a clean verified history (as if loaded from its row)."""
    record = p.enrol(device_id, token)
    record.valid = record.streak = streak
    p.enrol(device_id, token)  # refreshes the trusted set
    return record


# --- reputation and the verification rate -----------------------------------------------------


def test_beta_reputation_and_trust_follow_verified_outcomes() -> None:
    record = DeviceTrust(dev(1), "tok-1")
    assert record.reputation == 0.5  # (0 + 1) / (0 + 0 + 2): no evidence either way
    record.valid, record.invalid = 8, 0
    assert record.reputation == pytest.approx(0.9)
    record.invalid = 2
    assert record.reputation == pytest.approx(9 / 12)
    record.streak = CFG.warmup
    assert record.trusted(CFG)
    record.strikes = 1
    assert not record.trusted(CFG)  # doubtful until forgiven


def test_verification_is_certain_until_trusted_then_falls_but_never_below_the_floor() -> None:
    p = policy()
    new = p.enrol(dev(1), "tok-1")
    assert p.verify_probability(new.device_id) == 1.0
    trusted = make_trusted(p, dev(2), "tok-2", streak=CFG.warmup)
    assert p.verify_probability(trusted.device_id) == 1.0  # warmup / streak starts at 1
    trusted.streak = 4 * CFG.warmup
    assert p.verify_probability(trusted.device_id) == pytest.approx(0.25)
    trusted.streak, trusted.valid = 10**6, 10**6
    assert p.verify_probability(trusted.device_id) == CFG.verify_floor
    # A device caught once stays more checked: its Beta distrust (s+1)/(r+s+2) outweighs BOINC's.
    trusted.invalid = 100_000
    assert p.verify_probability(trusted.device_id) == pytest.approx(1 - trusted.reputation)


def test_a_trusted_device_is_still_spot_checked_at_the_floor_rate() -> None:
    p = policy(seed=3)
    record = make_trusted(p, dev(1), "tok-1", streak=10**6)
    checked = 0
    for task in range(4000):
        record.streak = 10**6  # hold it at the floor
        decision = p.on_result(task, dev(1), GOOD, UNITS, UNITS)
        if decision.spot:
            checked += 1
            assert decision.ack == trust.PENDING and decision.method == trust.SPOT
            p.on_reference(task, GOOD)
        else:
            assert decision.ack == trust.ACCEPTED and decision.method == trust.TRUSTED
    assert 0.035 < checked / 4000 < 0.065  # 5 % floor, binomial sd 0.34 %


def test_decisions_are_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[str]:
        p = policy(seed)
        make_trusted(p, dev(1), "tok-1", streak=40)
        return [p.on_result(t, dev(1), GOOD, UNITS, UNITS).ack for t in range(200)]

    assert run(11) == run(11)
    assert run(11) != run(12)


# --- replicas and quorum ----------------------------------------------------------------------


def test_new_device_is_verified_by_the_gateway_while_no_trusted_partner_exists() -> None:
    p = policy()
    p.enrol(dev(1), "tok-1")
    p.enrol(dev(2), "tok-2")  # another new device: not good enough to vouch
    decision = p.on_result(1, dev(1), GOOD, UNITS, UNITS)
    assert (decision.ack, decision.method, decision.spot) == (trust.PENDING, trust.SPOT, True)
    settled = p.on_reference(1, GOOD)
    assert settled.verdicts == (trust.Verdict(dev(1), GOOD, True, True),)
    assert p.devices[dev(1)].valid == 1 and p.devices[dev(1)].streak == 1


def test_replicas_never_go_to_the_same_key_or_the_same_enrol_token() -> None:
    p = policy()
    p.enrol(dev(1), "tok-shared")
    make_trusted(p, dev(2), "tok-shared")  # same owner's token: excluded
    make_trusted(p, dev(3), "tok-3")
    p.enrol(dev(4), "tok-4")  # untrusted: may not be the partner
    decision = p.on_result(1, dev(1), GOOD, UNITS, UNITS)
    assert decision.ack == trust.PENDING and decision.method == trust.REPLICA
    assert decision.replica == trust.ReplicaRequest(1, frozenset({dev(1)}),
                                                    frozenset({"tok-shared"}))
    assert [d for d in map(dev, range(1, 5)) if p.may_replicate_to(1, d)] == [dev(3)]


def test_only_same_token_partners_means_the_gateway_checks_it() -> None:
    p = policy()
    p.enrol(dev(1), "tok-shared")
    make_trusted(p, dev(2), "tok-shared")
    assert p.on_result(1, dev(1), GOOD, UNITS, UNITS).method == trust.SPOT


def test_agreeing_replica_from_a_trusted_device_settles_both() -> None:
    p = policy(seed=1)
    p.enrol(dev(1), "tok-1")
    make_trusted(p, dev(2), "tok-2")
    assert p.on_result(5, dev(1), GOOD, UNITS, UNITS).method == trust.REPLICA
    decision = p.on_result(5, dev(2), GOOD, UNITS, UNITS)
    assert decision.ack == trust.ACCEPTED and decision.settlement is not None
    assert {v.device_id: v.credit for v in decision.settlement.verdicts} == {
        dev(1): True, dev(2): True}
    assert decision.settlement.valid_hash == GOOD
    assert p.checks[5].state == trust.SETTLED


def test_a_disagreement_goes_to_the_gateway_and_only_the_liar_pays() -> None:
    # The liar is the *trusted* partner: a disagreement alone must not punish the new device.
    p = policy()
    p.enrol(dev(1), "tok-1")
    liar = make_trusted(p, dev(2), "tok-2")
    p.on_result(5, dev(1), GOOD, UNITS, UNITS)
    decision = p.on_result(5, dev(2), BAD, UNITS, UNITS)
    assert (decision.ack, decision.spot) == (trust.PENDING, True)
    settled = p.on_reference(5, GOOD)
    assert {v.device_id: v.valid for v in settled.verdicts} == {dev(1): True, dev(2): False}
    assert settled.suspects == (dev(2),)
    assert (liar.streak, liar.invalid, liar.strikes) == (0, 1, 1)
    assert p.devices[dev(1)].invalid == 0


def test_agreement_among_untrusted_devices_only_is_not_a_quorum() -> None:
    # Two new colluders returning the same wrong answer: the gateway settles it.
    p = policy()
    p.enrol(dev(1), "tok-1")
    p.enrol(dev(2), "tok-2")
    p.on_result(5, dev(1), BAD, UNITS, UNITS)
    p.checks[5].spot_requested = False  # as if the spot had not been run yet: a late replica
    decision = p.on_result(5, dev(2), BAD, UNITS, UNITS)
    assert decision.spot
    settled = p.on_reference(5, GOOD)
    assert [v.valid for v in settled.verdicts] == [False, False]


def test_a_trusted_colluder_copying_its_mates_answer_is_audited_and_caught() -> None:
    # copy_neighbour at its strongest: the replica lands on a trusted ring mate, who returns
    # the mate's wrong answer. Quorum alone would accept it; the floor-rate audit catches it,
    # and the recheck of what it vouched for recalls the wrong answers that got through.
    p = policy(seed=5)
    colluder = make_trusted(p, dev(2), "tok-2", streak=10**6)
    vouched: list[int] = []
    for task in range(400):
        mate = p.enrol(dev(1000 + task), f"tok-mate-{task}")  # a fresh mate each time
        assert p.on_result(task, mate.device_id, BAD, UNITS, UNITS).replica is not None
        assert p.may_replicate_to(task, dev(2))
        decision = p.on_result(task, dev(2), BAD, UNITS, UNITS)
        if not decision.spot:
            assert decision.ack == trust.ACCEPTED  # the collusion worked this time
            vouched.append(task)
            continue
        assert p.on_reference(task, GOOD).suspects == (mate.device_id, dev(2))
        break
    assert colluder.strikes == 1 and not colluder.trusted(CFG)
    assert len(vouched) < 200  # expected 1 / floor = 20
    assert all(p.recheck(t) for t in vouched)
    for t in vouched:
        p.on_reference(t, GOOD)
    assert colluder.quarantined
    assert all(p.checks[t].reference == GOOD for t in vouched)
    # No longer trusted, it cannot vouch: a new device's result goes to the gateway.
    p.enrol(dev(5000), "tok-5000")
    assert p.on_result(999, dev(5000), BAD, UNITS, UNITS).method == trust.SPOT


def test_a_late_result_is_judged_against_the_settled_answer_for_free() -> None:
    p = policy()
    p.enrol(dev(1), "tok-1")
    p.enrol(dev(2), "tok-2")
    p.on_result(5, dev(1), GOOD, UNITS, UNITS)
    p.on_reference(5, GOOD)
    decision = p.on_result(5, dev(2), BAD, UNITS, UNITS)  # an expired lease's late result
    assert (decision.ack, decision.code) == (trust.REJECTED, trust.INVALID)
    assert p.devices[dev(2)].strikes == 1


# --- canaries -----------------------------------------------------------------------------------


def test_canaries_are_judged_by_their_known_answer_at_once() -> None:
    p = policy()
    p.enrol(dev(1), "tok-1")
    p.register_canary(100, GOOD)
    assert p.on_result(100, dev(1), GOOD, UNITS, UNITS).ack == trust.ACCEPTED
    p.register_canary(101, GOOD)
    decision = p.on_result(101, dev(1), BAD, UNITS, UNITS)
    assert (decision.ack, decision.code, decision.reissue) == (trust.REJECTED, trust.INVALID,
                                                               False)
    assert p.devices[dev(1)].strikes == 1


def test_canary_rate_is_drawn_per_slot() -> None:
    p = policy(seed=2, config=TrustConfig(canary_rate=0.1))
    p.enrol(dev(1), "tok-1")
    due = sum(p.canary_due(dev(1)) for _ in range(5000))
    assert 0.085 < due / 5000 < 0.115


def test_canaries_look_like_real_tasks_and_their_answers_come_from_the_c_kernel() -> None:
    rng = random.Random(4)
    real = {"seed": 123, "points": 5000}
    canary = trust.canary_params("montecarlo_pi", real, rng)
    assert canary.keys() == real.keys() and canary["points"] == real["points"]
    assert canary["seed"] != real["seed"] and 0 <= canary["seed"] < 2**64
    search = {"prefix": b"p", "start": 512, "count": 256, "target": b"\x01" * 32, "max_found": 4}
    assert trust.canary_params("sha256_search", search, rng) == search
    answer = trust.known_answer("montecarlo_pi", canary)
    assert answer == protocol.result_hash(kernels.run("montecarlo_pi", canary, backend="python"))
    assert trust.gateway_units("montecarlo_pi", canary) == 5000


# --- strikes, quarantine, lies about work --------------------------------------------------------


def test_two_strikes_quarantine_and_withhold_unsettled_credit() -> None:
    p = policy()
    p.enrol(dev(1), "tok-1")
    p.on_result(1, dev(1), GOOD, UNITS, UNITS)  # pending, correct: settles later
    p.on_result(2, dev(1), BAD, UNITS, UNITS)
    assert p.on_reference(2, GOOD).quarantined == ()
    p.on_result(3, dev(1), BAD, UNITS, UNITS)
    assert p.on_reference(3, GOOD).quarantined == (dev(1),)
    assert not p.may_lease(dev(1)) and not p.canary_due(dev(1))
    late = p.on_reference(1, GOOD)
    assert late.verdicts == (trust.Verdict(dev(1), GOOD, True, False),)  # valid, no credit
    refused = p.on_result(4, dev(1), GOOD, UNITS, UNITS)
    assert (refused.ack, refused.code, refused.reissue) == (trust.REJECTED, trust.QUARANTINED,
                                                            True)


def test_a_replica_returned_by_a_device_quarantined_meanwhile_is_asked_again() -> None:
    p = policy()
    p.enrol(dev(1), "tok-1")
    holder = make_trusted(p, dev(2), "tok-2")
    make_trusted(p, dev(3), "tok-3")
    assert p.on_result(5, dev(1), GOOD, UNITS, UNITS).replica is not None
    holder.quarantined = True  # caught elsewhere while it held the replica lease
    decision = p.on_result(5, dev(2), GOOD, UNITS, UNITS)
    assert (decision.ack, decision.code, decision.reissue) == (trust.REJECTED, trust.QUARANTINED,
                                                               False)
    assert decision.replica == p.replica_request(5)
    assert p.may_replicate_to(5, dev(3)) and not p.may_replicate_to(5, dev(2))


def test_a_strike_is_forgiven_after_a_long_clean_streak() -> None:
    p = policy(config=TrustConfig(forgive_streak=20))
    make_trusted(p, dev(9), "tok-9")  # the replica partner
    p.enrol(dev(1), "tok-1")
    p.on_result(0, dev(1), BAD, UNITS, UNITS)
    p.on_reference(0, GOOD)
    for task in range(1, 21):
        decision = p.on_result(task, dev(1), GOOD, UNITS, UNITS)
        if decision.replica is not None:
            decision = p.on_result(task, dev(9), GOOD, UNITS, UNITS)
        if decision.spot:  # a new device's own check, or an audit of the quorum
            p.on_reference(task, GOOD)
    record = p.devices[dev(1)]
    assert (record.streak, record.strikes, record.quarantined) == (20, 0, False)


def test_claiming_other_work_units_is_a_strike_and_earns_nothing() -> None:
    p = policy()
    p.enrol(dev(1), "tok-1")
    decision = p.on_result(1, dev(1), GOOD, UNITS * 100, UNITS)
    assert (decision.ack, decision.code, decision.reissue) == (trust.REJECTED, trust.BAD_UNITS,
                                                               True)
    assert decision.settlement is not None
    assert decision.settlement.verdicts[0].credit is False
    assert p.devices[dev(1)].strikes == 1


def test_a_caught_device_has_its_trusted_results_rechecked() -> None:
    p = policy(seed=9)
    make_trusted(p, dev(1), "tok-1", streak=10**6)
    on_trust = [t for t in range(100)
                if p.on_result(t, dev(1), BAD, UNITS, UNITS).method == trust.TRUSTED]
    assert len(on_trust) > 80
    p.register_canary(1000, GOOD)
    caught = p.on_result(1000, dev(1), BAD, UNITS, UNITS)
    assert caught.settlement is not None and caught.settlement.suspects == (dev(1),)
    assert all(p.recheck(t) for t in on_trust)
    settled = p.on_reference(on_trust[0], GOOD)
    assert settled.verdicts == (trust.Verdict(dev(1), BAD, False, False),)
    assert settled.quarantined == (dev(1),)  # second strike
    assert not p.recheck(on_trust[0])  # already verified


def test_state_round_trips_through_plain_rows() -> None:
    p = policy()
    p.enrol(dev(1), "tok-1")
    make_trusted(p, dev(2), "tok-2")
    p.on_result(1, dev(1), GOOD, UNITS, UNITS)
    device_rows = [dataclasses.asdict(d) for d in p.devices.values()]
    check_rows = [dataclasses.asdict(c) for c in p.checks.values()]
    assert cbor.loads(cbor.dumps(device_rows)) == device_rows  # ints, text, bytes, bools only
    assert cbor.loads(cbor.dumps(check_rows)) == check_rows
    restored = TrustPolicy(CFG, random.Random(1), [DeviceTrust(**r) for r in device_rows],
                           [trust.TaskCheck(**{**r, "submissions": [
                               trust.Submission(**s) for s in r["submissions"]]})
                            for r in check_rows])
    assert restored.may_replicate_to(1, dev(2)) and not restored.may_replicate_to(1, dev(1))
    assert restored.on_result(1, dev(2), GOOD, UNITS, UNITS).ack == trust.ACCEPTED


# --- each cheating strategy against a small real fleet -------------------------------------------


@pytest.mark.parametrize("strategy", bench.STRATEGIES)
def test_each_cheat_strategy_is_caught_without_touching_honest_devices(strategy: str) -> None:
    report = bench.simulate(bench.Scale(devices=20, rounds=60), seed=3, mix={strategy: 2})
    row = report["strategies"][strategy]
    assert row["caught"] == 2
    assert row["max_tasks_to_catch"] <= {"always_wrong": 20, "wrong_10pct": 120}.get(
        strategy, 2 * CFG.warmup)
    assert report["honest_false_positives"] == 0
    assert report["wrong_results_accepted"] <= 2


# --- receipts: signature and lease binding stop replays ------------------------------------------


class Signer:
    def __init__(self, seed: bytes) -> None:
        self.key = nacl.signing.SigningKey(seed)
        self.pub = bytes(self.key.verify_key)
        self.device_id = protocol.device_id(self.pub)

    def sign(self, msg: bytes) -> bytes:
        return bytes(self.key.sign(msg).signature)

    def receipt(self, lease: bytes, task: bytes, result: dict[str, int]) -> bytes:
        body = protocol.message("result", lease=lease, task=task, dev=self.device_id,
                                kernel="montecarlo_pi", rhash=protocol.result_hash(result),
                                units=2000, started=1, finished=2)
        return bytes(protocol.seal(body, self.sign, attachment=result))


RESULT = {"inside": 1571, "points": 2000}
L1, L2, T1, T2 = b"\x01" * 16, b"\x02" * 16, b"\x11" * 16, b"\x12" * 16


def binding(device: Signer, lease: bytes, task: bytes) -> trust.LeaseBinding:
    return trust.LeaseBinding(lease, task, device.device_id, "montecarlo_pi")


def test_a_genuine_receipt_opens() -> None:
    b = Signer(b"\x0b" * 32)
    receipt = b.receipt(L1, T1, RESULT)
    opened = trust.open_receipt(receipt, b.pub, binding(b, L1, T1), signing.verify)
    assert opened.result == RESULT and opened.rhash == protocol.result_hash(RESULT)
    assert opened.body["units"] == 2000


def test_another_devices_receipt_presented_by_a_fails_against_as_key() -> None:
    a, b = Signer(b"\x0a" * 32), Signer(b"\x0b" * 32)
    stolen = b.receipt(L1, T1, RESULT)
    with pytest.raises(protocol.ProtocolError) as e:
        trust.open_receipt(stolen, a.pub, binding(a, L1, T1), signing.verify)
    assert e.value.code == "bad_signature"
    with pytest.raises(protocol.ProtocolError) as e:  # A claiming B's lease outright
        trust.open_receipt(stolen, a.pub, binding(b, L1, T1), signing.verify)
    assert e.value.code == "not_your_lease"


def test_a_receipt_for_lease_l1_cannot_complete_lease_l2() -> None:
    b = Signer(b"\x0b" * 32)
    old = b.receipt(L1, T1, RESULT)
    for lease, task in ((L2, T2), (L2, T1), (L1, T2)):
        with pytest.raises(protocol.ProtocolError) as e:
            trust.open_receipt(old, b.pub, binding(b, lease, task), signing.verify)
        assert e.value.code == "not_your_lease"


def test_a_receipt_with_a_swapped_result_fails_its_hash() -> None:
    b = Signer(b"\x0b" * 32)
    env = cbor.loads(b.receipt(L1, T1, RESULT))
    env["r"] = {"inside": 1999, "points": 2000}
    with pytest.raises(protocol.ProtocolError) as e:
        trust.open_receipt(cbor.dumps(env), b.pub, binding(b, L1, T1), signing.verify)
    assert e.value.code == "bad_result_hash"


# --- the benchmark ------------------------------------------------------------------------------


def test_benchmark_prints_the_json_line_with_the_issue_keys(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("cheaters_caught_pct", "median_tasks_to_catch", "wrong_results_accepted",
                "verification_overhead", "honest_false_positives"):
        assert key in last
    assert last["quick"] is True and last["devices"] == 100


def test_benchmark_meets_the_issue_thresholds_at_full_scale() -> None:
    report = bench.simulate(bench.FULL, seed=1)
    assert report["cheaters_caught_pct"] == 100.0
    assert report["always_wrong_max_tasks_to_catch"] <= 20
    assert report["wrong_results_accepted"] <= 0.001 * report["tasks_settled"]
    assert report["honest_false_positives"] == 0
    assert report["verification_overhead"] <= 0.15
