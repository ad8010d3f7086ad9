"""Trust: which results the gateway believes, and how much checking each device still needs.

Pure policy and its own state (docs/TRUST.md): no MQTT, no SQL. The service calls it at three
moments (a lease slot, a result, a reference computed by the gateway) and persists what it returns:
one :class:`DeviceTrust` row per device, one :class:`TaskCheck` per task under verification (its
columns) plus one verdict per stored result (:class:`Submission`). Random choices come from the
``rng`` given (seeded in tests and benchmarks; ``random.SystemRandom()`` in production, so a device
cannot predict which results get checked).

The combination: BOINC's quorum and adaptive replication (after ``warmup`` consecutive valid
results, check with probability ``warmup / streak``), a floor on that probability (never zero) and
a Beta reputation term (Acurast) that keeps a once-caught device checked more, gateway spot
re-execution with the C kernel (authoritative, collusion-proof) for trusted devices and to settle
any disagreement, Truebit-style canaries with known answers, and strikes that quarantine.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent import kernels
from edge_agent.core import kernels as core_kernels
from edge_agent.core import protocol

# Ack statuses (protocol.ACK_STATUS).
ACCEPTED = "accepted"
PENDING = "pending"
REJECTED = "rejected"

# Ack codes: why a result got its status.
OK = "ok"
VERIFYING = "verifying"  # held pending until a replica or the gateway's own run settles it
INVALID = "invalid"  # verified wrong: no credit
QUARANTINED = "quarantined"  # protocol error code: the device gets no leases and no credit
BAD_UNITS = "bad_units"  # the receipt claims other work units than the gateway computed

# How a task's result is checked (TaskCheck.method).
TRUSTED = "trusted"  # accepted on the device's trust, unverified (a recheck may still verify it)
REPLICA = "replica"  # quorum: the same task on another device (other key, other enrol token)
SPOT = "spot"  # the gateway re-executes it with the C kernel
CANARY = "canary"  # the gateway knew the answer before leasing it

# Verdict of one stored result (Submission.verdict, a column of the results row).
V_PENDING = "pending"
V_UNVERIFIED = "unverified"  # accepted on trust
V_VALID = "valid"
V_INVALID = "invalid"

# TaskCheck.state
OPEN = "open"
SETTLED = "settled"

_ACK_OF = {V_PENDING: PENDING, V_UNVERIFIED: ACCEPTED, V_VALID: ACCEPTED, V_INVALID: REJECTED}


@dataclass(frozen=True)
class TrustConfig:
    warmup: int = 10  # consecutive accepted results before a device is trusted (BOINC: 10)
    verify_floor: float = 0.05  # the probability of checking a result never falls below this
    canary_rate: float = 0.01  # share of lease slots that are canaries, for every device
    max_strikes: int = 2  # invalid results (net of forgiveness) that quarantine a device
    forgive_streak: int = 200  # every this many consecutive accepted results forgive one strike

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.max_strikes < 1 or self.forgive_streak < 1:
            raise ValueError("warmup, max_strikes and forgive_streak must be >= 1")
        if not 0.0 < self.verify_floor <= 1.0 or not 0.0 <= self.canary_rate < 1.0:
            raise ValueError("verify_floor must be in (0, 1] and canary_rate in [0, 1)")


@dataclass
class DeviceTrust:
    """One device's record: plain columns of the devices table."""

    device_id: str
    token_id: str  # the enrol token: replicas never go to two devices enrolled with one token
    valid: int = 0  # results verified correct (the Beta reputation's r)
    invalid: int = 0  # results verified wrong (the Beta reputation's s)
    streak: int = 0  # consecutive accepted results since the last invalid (BOINC consecutive_valid)
    strikes: int = 0  # invalid results not yet forgiven
    quarantined: bool = False

    @property
    def reputation(self) -> float:
        """Beta reputation (r + 1) / (r + s + 2): the expected share of correct results."""
        return (self.valid + 1) / (self.valid + self.invalid + 2)

    def trusted(self, cfg: TrustConfig) -> bool:
        return not self.quarantined and self.strikes == 0 and self.streak >= cfg.warmup


@dataclass
class Submission:
    """One stored result of a task as the trust layer judges it (a column of the results row)."""

    device_id: str
    rhash: bytes
    verdict: str  # V_PENDING, V_UNVERIFIED, V_VALID or V_INVALID


@dataclass
class TaskCheck:
    """The verification of one task: columns ``method``, ``state``, ``reference``,
    ``authoritative``, ``spot_requested`` on the task row; submissions are its result rows."""

    task_id: int
    method: str
    state: str = OPEN
    reference: bytes | None = None  # the hash the task's results are judged against
    authoritative: bool = False  # reference computed by the gateway (spot or canary answer)
    spot_requested: bool = False
    submissions: list[Submission] = field(default_factory=list)

    def submitted_by(self, device_id: str) -> Submission | None:
        return next((s for s in self.submissions if s.device_id == device_id), None)


@dataclass(frozen=True)
class ReplicaRequest:
    """Lease this task once more, to a trusted device outside these keys and enrol tokens."""

    task_id: int
    exclude_devices: frozenset[str]
    exclude_tokens: frozenset[str]


@dataclass(frozen=True)
class Verdict:
    device_id: str
    rhash: bytes
    valid: bool
    credit: bool  # valid and the device is not quarantined: pay its work units


@dataclass(frozen=True)
class Settlement:
    """What a resolved verification changed. Send each verdict's device its final ack; credit
    only ``credit`` verdicts; the task's job output takes ``valid_hash`` (the gateway's own
    result when no device matched it)."""

    task_id: int
    valid_hash: bytes | None  # None when no answer is known yet (a refused claim of units)
    verdicts: tuple[Verdict, ...]
    quarantined: tuple[str, ...] = ()  # newly quarantined: no leases, unsettled credit withheld
    # Devices just found wrong: re-verify (recheck()) their results accepted on trust or by a
    # quorum in jobs not yet assembled, so a wrong answer that slipped through (or that a
    # colluder vouched for) is caught before it is used.
    suspects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The answer to one result: the ack to send now and the verification to schedule."""

    ack: str  # ACCEPTED, PENDING or REJECTED
    code: str
    method: str  # how this task is being verified: TRUSTED, REPLICA, SPOT, CANARY
    replica: ReplicaRequest | None = None
    spot: bool = False  # run the task with the C kernel at the gateway, then on_reference()
    settlement: Settlement | None = None
    reissue: bool = False  # this task still has no usable result: queue it again


class TrustPolicy:
    """The trust state of a gateway: every device's record and every open verification."""

    def __init__(
        self,
        config: TrustConfig | None = None,
        rng: random.Random | None = None,
        devices: Iterable[DeviceTrust] = (),
        checks: Iterable[TaskCheck] = (),
    ) -> None:
        self.config = config or TrustConfig()
        self.rng = rng or random.SystemRandom()
        self.devices: dict[str, DeviceTrust] = {d.device_id: d for d in devices}
        self.checks: dict[int, TaskCheck] = {c.task_id: c for c in checks}
        self._trusted = {d.device_id for d in self.devices.values() if d.trusted(self.config)}

    # --- devices ------------------------------------------------------------------------------

    def load(self, devices: Iterable[DeviceTrust] = (), checks: Iterable[TaskCheck] = ()) -> None:
        """Replace records and checks with their stored versions: where several gateway
        workers share one ledger, the service reloads what a decision reads before making it."""
        for record in devices:
            self.devices[record.device_id] = record
            self._touch(record)
        for check in checks:
            self.checks[check.task_id] = check

    def enrol(self, device_id: str, token_id: str) -> DeviceTrust:
        record = self.devices.setdefault(device_id, DeviceTrust(device_id, token_id))
        self._touch(record)
        return record

    def may_lease(self, device_id: str) -> bool:
        record = self.devices.get(device_id)
        return record is not None and not record.quarantined

    def verify_probability(self, device_id: str) -> float:
        """The chance a result of this device is checked: 1 until it is trusted, then BOINC's
        adaptive rate scaled to start at 1, never below the floor nor below its Beta
        distrust (s + 1) / (r + s + 2)."""
        record = self.devices[device_id]
        cfg = self.config
        if not record.trusted(cfg):
            return 1.0
        adaptive = cfg.warmup / record.streak
        distrust = 1.0 - record.reputation
        return min(1.0, max(cfg.verify_floor, adaptive, distrust))

    # --- canaries -----------------------------------------------------------------------------

    def canary_due(self, device_id: str) -> bool:
        """Should the next lease slot of this device be a canary? Drawn per slot, so a device
        cannot tell from its history which slot is next."""
        return self.may_lease(device_id) and self.rng.random() < self.config.canary_rate

    def register_canary(self, task_id: int, answer_hash: bytes) -> TaskCheck:
        check = TaskCheck(task_id, CANARY, reference=answer_hash, authoritative=True)
        self.checks[task_id] = check
        return check

    # --- replicas -----------------------------------------------------------------------------

    def replica_request(self, task_id: int) -> ReplicaRequest:
        """The constraints on a replica of this task (again, e.g. after its lease expired)."""
        check = self.checks[task_id]
        devices = frozenset(s.device_id for s in check.submissions)
        tokens = frozenset(self.devices[d].token_id for d in devices if d in self.devices)
        return ReplicaRequest(task_id, devices, tokens)

    def may_replicate_to(self, task_id: int, device_id: str) -> bool:
        """May this device take a replica of this task? It must be trusted, and neither it nor
        a device enrolled with its token may have a result of the task. (The scheduler also
        skips devices holding an active lease on the task.)"""
        record = self.devices.get(device_id)
        check = self.checks.get(task_id)
        if record is None or check is None or not record.trusted(self.config):
            return False
        request = self.replica_request(task_id)
        return device_id not in request.exclude_devices and (
            record.token_id not in request.exclude_tokens)

    def _partner_exists(self, request: ReplicaRequest) -> bool:
        return any(d not in request.exclude_devices
                   and self.devices[d].token_id not in request.exclude_tokens
                   for d in self._trusted)

    # --- results ------------------------------------------------------------------------------

    def on_result(
        self, task_id: int, device_id: str, rhash: bytes, claimed_units: int, units: int
    ) -> Decision:
        """Judge a result the ledger has stored (signature and lease binding already checked by
        open_receipt). ``units`` is the gateway's own count for the task, ``claimed_units`` the
        receipt's. The device must be known (enrol() or loaded)."""
        record = self.devices[device_id]
        check = self.checks.get(task_id)
        method = TRUSTED if check is None else check.method
        if record.quarantined:
            # Its lease predates the quarantine. A replica it held must go to someone else.
            again = check is not None and check.method == REPLICA and check.state == OPEN and (
                not check.spot_requested)
            return Decision(REJECTED, QUARANTINED, method, reissue=check is None,
                            replica=self.replica_request(task_id) if again else None)
        earlier = None if check is None else check.submitted_by(device_id)
        if earlier is not None:
            # Two leases of one task to one device (an expired lease re-leased): its first
            # result stands, as the ledger's duplicates do.
            return Decision(_ACK_OF[earlier.verdict], "duplicate", method)
        if claimed_units != units:
            return self._lie_about_units(task_id, record, rhash, check)
        if check is None:
            return self._first_result(task_id, record, rhash)
        sub = Submission(device_id, rhash, V_PENDING)
        check.submissions.append(sub)
        return self._judge_new(check, sub)

    def _first_result(self, task_id: int, record: DeviceTrust, rhash: bytes) -> Decision:
        if self.rng.random() >= self.verify_probability(record.device_id):
            check = TaskCheck(task_id, TRUSTED, SETTLED, reference=rhash,
                              submissions=[Submission(record.device_id, rhash, V_UNVERIFIED)])
            self.checks[task_id] = check
            self._accepted(record)
            return Decision(ACCEPTED, OK, TRUSTED)
        check = TaskCheck(task_id, REPLICA,
                          submissions=[Submission(record.device_id, rhash, V_PENDING)])
        self.checks[task_id] = check
        request = self.replica_request(task_id)
        if not record.trusted(self.config) and self._partner_exists(request):
            return Decision(PENDING, VERIFYING, REPLICA, replica=request)
        # Trusted devices are checked by the gateway itself: a trusted partner could be a
        # colluder, the C kernel cannot. So is a new device while no trusted partner exists.
        check.method = SPOT
        check.spot_requested = True
        return Decision(PENDING, VERIFYING, SPOT, spot=True)

    def _judge_new(self, check: TaskCheck, sub: Submission) -> Decision:
        """A result for a task that already has a check: a canary, a replica, a late result."""
        spot = False
        if check.authoritative:
            settlement: Settlement | None = self._settle(check)
        else:
            settlement, spot = self._quorum(check)
        if settlement is None:
            return Decision(PENDING, VERIFYING, check.method, spot=spot)
        valid = sub.verdict == V_VALID
        return Decision(ACCEPTED if valid else REJECTED, OK if valid else INVALID,
                        check.method, settlement=settlement)

    def _quorum(self, check: TaskCheck) -> tuple[Settlement | None, bool]:
        """Two agreeing results settle a task when one of them comes from a trusted device,
        except for an audit drawn at the floor rate: a trusted partner may be a colluder that
        copies its mate's answer. Any disagreement, or agreement among untrusted devices only,
        goes to the gateway's own run (never punish on a disagreement alone: the trusted side
        could be the liar)."""
        live = [s for s in check.submissions if s.verdict != V_INVALID]
        if len(live) < 2 or check.spot_requested:
            return None, False
        agreed = len({s.rhash for s in live}) == 1
        vouched = any(self.devices[s.device_id].trusted(self.config) for s in live)
        if agreed and vouched and self.rng.random() >= self.config.verify_floor:
            check.reference = live[0].rhash
            return self._settle(check), False
        check.spot_requested = True
        check.state = OPEN
        return None, True

    def on_reference(self, task_id: int, rhash: bytes) -> Settlement:
        """The gateway's own C-kernel result for a task it was asked to spot-check: it is the
        truth every result of the task is judged against, including ones already accepted."""
        check = self.checks[task_id]
        check.reference = rhash
        check.authoritative = True
        check.spot_requested = False
        return self._settle(check)

    def recheck(self, task_id: int) -> bool:
        """Reopen a task whose result was accepted without the gateway's own run (on trust, or
        by a quorum) for a gateway re-execution, after one of its devices was caught cheating.
        True if the caller should run it and call on_reference()."""
        check = self.checks.get(task_id)
        if check is None or check.authoritative or check.spot_requested:
            return False
        check.state = OPEN
        check.spot_requested = True
        return True

    def forget(self, task_id: int) -> None:
        """Drop a settled check from memory (its job is assembled; the rows stay)."""
        check = self.checks.get(task_id)
        if check is not None and check.state == SETTLED:
            del self.checks[task_id]

    # --- outcomes -----------------------------------------------------------------------------

    def _lie_about_units(self, task_id: int, record: DeviceTrust, rhash: bytes,
                         check: TaskCheck | None) -> Decision:
        # An honest agent echoes the lease's units; a different claim is a signed lie about the
        # work done. Credit never comes from the claim, and the lie itself is a strike.
        if check is not None:
            check.submissions.append(Submission(record.device_id, rhash, V_INVALID))
        quarantined = self._invalid(record)
        settlement = Settlement(task_id, None, (Verdict(record.device_id, rhash, False, False),),
                                quarantined, (record.device_id,))
        return Decision(REJECTED, BAD_UNITS, TRUSTED if check is None else check.method,
                        settlement=settlement, reissue=check is None)

    def _settle(self, check: TaskCheck) -> Settlement:
        assert check.reference is not None
        check.state = SETTLED
        verdicts: list[Verdict] = []
        quarantined: list[str] = []
        suspects: list[str] = []
        for sub in check.submissions:
            record = self.devices[sub.device_id]
            valid = sub.rhash == check.reference
            before = sub.verdict
            if valid and before in (V_PENDING, V_UNVERIFIED):
                sub.verdict = V_VALID
                record.valid += 1
                if before == V_PENDING:
                    self._accepted(record)
                self._touch(record)
            elif not valid and before != V_INVALID:
                if before == V_VALID:  # a quorum overturned by the gateway's run: take r back
                    record.valid -= 1
                sub.verdict = V_INVALID
                suspects.append(record.device_id)
                quarantined.extend(self._invalid(record))
            else:
                continue
            verdicts.append(Verdict(sub.device_id, sub.rhash, valid,
                                    valid and not record.quarantined))
        return Settlement(check.task_id, check.reference, tuple(verdicts), tuple(quarantined),
                          tuple(suspects))

    def _accepted(self, record: DeviceTrust) -> None:
        record.streak += 1
        if record.strikes and record.streak % self.config.forgive_streak == 0:
            record.strikes -= 1
        self._touch(record)

    def _invalid(self, record: DeviceTrust) -> tuple[str, ...]:
        """A verified wrong result: reset trust, add a strike; quarantine past the threshold."""
        record.invalid += 1
        record.streak = 0
        record.strikes += 1
        newly = not record.quarantined and record.strikes >= self.config.max_strikes
        record.quarantined = record.quarantined or newly
        self._touch(record)
        return (record.device_id,) if newly else ()

    def _touch(self, record: DeviceTrust) -> None:
        if record.trusted(self.config):
            self._trusted.add(record.device_id)
        else:
            self._trusted.discard(record.device_id)


# --- canaries: real kernels, real parameter distributions, answers from the gateway's C kernel ---


def canary_params(kernel: str, template: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """Params for a canary made from ``template``, the params of a real task of a live job (the
    caller picks one this device has not been leased). Where real tasks draw a parameter
    uniformly (montecarlo_pi seeds are SHA-256 outputs) the canary draws a fresh one, so nobody
    can have its answer; elsewhere (nonce ranges, activation rows) it keeps the real task's
    params verbatim: any change would make it stand out from its job's tasks."""
    params = dict(template)
    if kernel == "montecarlo_pi":
        params["seed"] = rng.getrandbits(64)
    return params


def known_answer(kernel: str, resolved_params: Mapping[str, Any],
                 run: Callable[..., dict[str, Any]] = kernels.run) -> bytes:
    """The result hash of a task computed at the gateway with the C kernel (canary answers,
    spot checks and rechecks)."""
    digest: bytes = protocol.result_hash(run(kernel, dict(resolved_params), backend="c"))
    return digest


def gateway_units(kernel: str, resolved_params: Mapping[str, Any]) -> int:
    """The work units of a task, from its params alone: what credit is paid on, never the
    device's claim."""
    module = core_kernels.get(kernel)
    return int(module.work_units(module.validate(dict(resolved_params))))


# --- receipts: a signed result binds lease, task and device ---------------------------------------


@dataclass(frozen=True)
class LeaseBinding:
    """What the gateway issued: the receipt must name exactly this lease, task and device."""

    lease: bytes
    task: bytes
    device_id: str
    kernel: str


@dataclass(frozen=True)
class Receipt:
    body: Mapping[str, Any]
    body_bytes: bytes
    result: Any
    rhash: bytes


def open_receipt(
    sealed: bytes,
    device_pub: bytes,
    binding: LeaseBinding,
    verify: Callable[[bytes, bytes, bytes], bool],
) -> Receipt:
    """Check a sealed result against the key of the device that sent it and the lease it
    answers. Raises ProtocolError: ``bad_signature`` (signed by another key: someone else's
    receipt replayed), ``not_your_lease`` (a valid receipt for another lease, task or device),
    ``bad_result_hash`` (the attached result is not the one signed), ``bad_result`` (another
    kernel). The receipt's ``units`` is judged by TrustPolicy.on_result: a signed lie is a
    strike, not just a refused message."""
    if protocol.device_id(device_pub) != binding.device_id:
        raise protocol.ProtocolError("not_your_lease", "lease belongs to another device")
    body, body_bytes, result = protocol.open_sealed(
        sealed, protocol.MAX_PAYLOAD["result"], verify, device_pub, ("result",))
    if (body["lease"], body["task"], body["dev"]) != (
            binding.lease, binding.task, binding.device_id):
        raise protocol.ProtocolError("not_your_lease", "receipt is for another lease")
    if result is None or protocol.result_hash(result) != body["rhash"]:
        raise protocol.ProtocolError("bad_result_hash", "result does not match the signed hash")
    if body["kernel"] != binding.kernel:
        raise protocol.ProtocolError("bad_result", "kernel differs from the lease's")
    return Receipt(body, body_bytes, result, body["rhash"])
