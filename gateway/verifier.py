"""The trust layer at work: gateway/trust.py's policy applied to the ledger, inside the
scheduler's transactions (docs/TRUST.md, "In the service").

The ledger is the truth, the policy's memory a cache: before each decision the verifier loads,
under the write lock, the rows the decision reads (the task's check and results, the devices
that sent them), lets the policy decide, and writes back what changed in the same transaction;
several gateway workers on one ledger therefore judge consistently. The task's state follows its
check: open -> ``verifying`` (out of the queue, its job not complete), settled -> ``done`` with
the first result that matches the answer (or the gateway's own), no check -> back to the queue.

What a resolved verification means for the other devices of the task (their final acks), for a
quarantined device (pending results voided, leases taken back) and for a suspect (its results
accepted unchecked in open jobs reopened for the gateway's own run) happens here too. The
gateway's own runs and the canary pool are fed by the service (gateway/service.py), off the
event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from edge_agent.core import cbor, protocol
from gateway import trust
from gateway.ledger_trust import CanaryRow, TrustRows
from gateway.ledger_tx import LeaseRow, LedgerTx, ResultRow, TaskFinish, TaskRow
from gateway.trust import TaskCheck, TrustPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifierConfig:
    spot_batch: int = 4  # gateway runs taken from the ledger at a time: the bounded queue
    canary_pool: int = 4  # canaries with precomputed answers kept ready (per worker)
    replica_scan: int = 32  # tasks waiting for a replica looked at per lease slot
    replica_wait_s: float = 300.0  # a replica nobody took by then: the gateway runs the task


@dataclass(frozen=True)
class AckFields:
    """What an ack says about one stored result (docs/PROTOCOL.md ``ack``)."""

    lease_id: bytes
    task: bytes  # the task's wire id
    device_id: str
    result_hash: bytes
    status: str  # accepted, pending or rejected
    code: str
    # The gateway's count of the work: credit = work units x the kernel's rate, for accepted
    # results only, added to the device's cumulative credit by the ledger (set_result_status),
    # which the ack then carries (docs/REWARDS.md; handlers_result.ack_signer).
    work_units: int


AckSigner = Callable[[AckFields, int], bytes]  # (fields, the device's next ack seq) -> sealed


@dataclass(frozen=True)
class Notice:
    """A new ack for a result other than the one being handled: its verification resolved."""

    device_id: str
    ack: bytes


@dataclass(frozen=True)
class Judged:
    """The verifier's answer to one result, and what it changed for others."""

    status: str
    code: str
    notices: tuple[Notice, ...] = ()
    finish: TaskFinish | None = None  # the task became done


def _final(verdict: trust.Verdict, row: ResultRow) -> tuple[str, str]:
    """The ack status of a result once its verdict is in: wrong answers void credit; a valid
    one of a quarantined device earns nothing it was still waiting for (what it was already
    paid for stays paid)."""
    if not verdict.valid:
        return trust.REJECTED, trust.INVALID
    if verdict.credit:
        return trust.ACCEPTED, trust.OK
    if row.status == trust.PENDING:
        return trust.REJECTED, trust.QUARANTINED
    return row.status, row.code or trust.OK


class Verifier:
    def __init__(self, policy: TrustPolicy, config: VerifierConfig | None = None,
                 sign_ack: AckSigner | None = None) -> None:
        self.policy = policy
        self.config = config or VerifierConfig()
        self.sign_ack = sign_ack
        self.wake: Callable[[], None] = lambda: None  # the service: gateway runs are owed
        self.canaries: list[CanaryRow] = []
        self.counters: dict[str, int] = {}
        self._loaded: set[str] = set()

    @classmethod
    def load(cls, rows: TrustRows, config: trust.TrustConfig | None = None,
             verifier_config: VerifierConfig | None = None, rng: Any = None,
             sign_ack: AckSigner | None = None) -> Verifier:
        """A verifier with every device's record from the ledger (open checks are read from
        the ledger when a decision needs them)."""
        return cls(TrustPolicy(config, rng, devices=rows.devices()), verifier_config, sign_ack)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def enrolled(self, device_id: str, token_id: str) -> None:
        self.policy.enrol(device_id, token_id)

    # -- loading and saving the policy's state -----------------------------------------------

    def _load(self, rows: TrustRows, task_id: int, devices: Iterable[str] = ()
              ) -> TaskCheck | None:
        """The task's check and the records of every device it involves, from the ledger."""
        check = rows.check(task_id)
        ids = set(devices) | {s.device_id for s in (check.submissions if check else ())}
        self.policy.checks.pop(task_id, None)
        self.policy.load([r for r in map(rows.device, ids) if r is not None],
                         [check] if check is not None else [])
        self._loaded |= ids
        return check

    def _save(self, rows: TrustRows, check: TaskCheck | None, new_result: int | None) -> None:
        for device_id in self._loaded:
            record = self.policy.devices.get(device_id)
            if record is not None:
                rows.save_device(record)
        if check is not None:
            rows.save_check(check, new_result)

    def _done(self) -> None:
        """Checks live in the ledger between decisions (the policy keeps device records)."""
        self.policy.checks.clear()
        self._loaded.clear()

    # -- leases -------------------------------------------------------------------------------

    def admit(self, tx: LedgerTx, device_id: str) -> bool:
        """May this device lease (it is not quarantined)? Refreshes its record."""
        record = TrustRows(tx.conn).device(device_id)
        if record is None:
            return False
        self.policy.load([record])
        return self.policy.may_lease(device_id)

    def replica_offer(self, tx: LedgerTx, device_id: str, kernels: Collection[str] | None,
                      tried: Collection[int]) -> TaskRow | None:
        """A task waiting for a replica that this (trusted) device may take."""
        record = self.policy.devices.get(device_id)
        if record is None or not record.trusted(self.policy.config):
            return None
        rows = TrustRows(tx.conn)
        try:
            for task in rows.replicas_wanted(self.config.replica_scan):
                if task.id in tried or (kernels is not None and task.kernel not in kernels):
                    continue
                # Never a task this device held a lease on before (as the scheduler's rule):
                # its late first result plus a replica would credit it twice for one task.
                if tx.conn.execute(
                    "SELECT 1 FROM leases WHERE device_id = ? AND task_id = ?",
                    (device_id, task.id),
                ).fetchone():
                    continue
                self._load(rows, task.id)
                if self.policy.may_replicate_to(task.id, device_id):
                    return task
        finally:
            self._done()
        return None

    def canary_offer(self, tx: LedgerTx, device_id: str, kernels: Collection[str] | None
                     ) -> CanaryRow | None:
        """Drawn per lease slot: a ready canary for this device, when one is due."""
        if not self.policy.canary_due(device_id):
            return None
        rows = TrustRows(tx.conn)
        for canary in self.canaries:
            if (kernels is None or canary.kernel in kernels) and rows.canary_fits(canary,
                                                                                  device_id):
                return canary
        self.count("canary_missed")  # none ready: the pool is refilled in the background
        self.wake()
        return None

    def place_canary(self, tx: LedgerTx, canary: CanaryRow, now: float) -> TaskRow:
        self.canaries.remove(canary)
        self.count("canaries_leased")
        self.wake()
        return TrustRows(tx.conn).insert_canary(canary, now)

    # -- results ------------------------------------------------------------------------------

    def judge(self, tx: LedgerTx, lease: LeaseRow, task: TaskRow, result_id: int, *,
              rhash: bytes, claimed_units: int, now: float) -> Judged:
        """Judge a result just stored (as pending) for its lease, and apply the decision."""
        rows = TrustRows(tx.conn)
        device_id = lease.device_id
        try:
            before = self._load(rows, task.id, (device_id,))
            had = before is not None and before.submitted_by(device_id) is not None
            decision = self.policy.on_result(task.id, device_id, rhash, claimed_units,
                                             lease.work_units)
            after = self.policy.checks.get(task.id)
            new = not had and after is not None and after.submitted_by(device_id) is not None
            self._save(rows, after, result_id if new else None)
            tx.set_result_status(tx.result(result_id), lease.work_units, decision.ack,
                                 decision.code)
            notices = self._settled(tx, rows, decision.settlement, result_id, now)
            finish = self._sync(tx, rows, task.id, lease.id, now)
        finally:
            self._done()
        self.count(f"method:{decision.method}")
        if decision.spot:
            self.wake()
        return Judged(decision.ack, decision.code, tuple(notices), finish)

    def on_reference(self, tx: LedgerTx, task_id: int, answer: dict[str, Any], now: float
                     ) -> Judged | None:
        """The gateway's own result of a task it owed a run: settle the task's check. None
        when nothing was owed any more (another worker ran it, the job was canceled)."""
        rows = TrustRows(tx.conn)
        rhash = protocol.result_hash(answer)
        try:
            check = self._load(rows, task_id)
            if (tx.task(task_id).state != "verifying" or check is None
                    or check.state != trust.OPEN or not check.spot_requested):
                return None
            settlement = self.policy.on_reference(task_id, rhash)
            if all(s.rhash != rhash for s in check.submissions):
                rows.store_reference(task_id, rhash, cbor.dumps(answer), now)
            self._save(rows, check, None)
            notices = self._settled(tx, rows, settlement, None, now)
            finish = self._sync(tx, rows, task_id, None, now)
        finally:
            self._done()
        self.count("gateway_runs")
        return Judged(trust.ACCEPTED, trust.OK, tuple(notices), finish)

    def sweep(self, tx: LedgerTx, now: float) -> int:
        """Replicas nobody took within replica_wait_s: the gateway runs those tasks itself."""
        rows = TrustRows(tx.conn)
        moved = 0
        try:
            for task_id in rows.replicas_waiting_since(now - self.config.replica_wait_s, 100):
                check = self._load(rows, task_id)
                if check is not None and self.policy.recheck(task_id):
                    rows.save_check(check, None)
                    tx.want_replica_if_waiting(task_id, now)
                    moved += 1
        finally:
            self._done()
        if moved:
            self.wake()
        return moved

    def _settled(self, tx: LedgerTx, rows: TrustRows, settlement: trust.Settlement | None,
                 handled: int | None, now: float) -> list[Notice]:
        """Apply a resolved verification (docs/TRUST.md, Settlement) to every result but the
        one being handled (its status is the decision's)."""
        if settlement is None:
            return []
        notices: list[Notice] = []
        for verdict in settlement.verdicts:
            row = rows.submission(settlement.task_id, verdict.device_id)
            if row is not None and row.id != handled:
                notices += self._restatus(tx, rows, row, *_final(verdict, row))
        for device_id in settlement.quarantined:
            notices += self._quarantine(tx, rows, device_id, handled, now)
        for device_id in settlement.suspects:
            self._recheck(tx, rows, device_id, now)
        return notices

    def _restatus(self, tx: LedgerTx, rows: TrustRows, row: ResultRow, status: str,
                  code: str) -> list[Notice]:
        if (row.status, row.code) == (status, code):
            return []
        units = rows.work_units(row)
        tx.set_result_status(row, units, status, code)
        sign = self.sign_ack
        if sign is None:
            return []
        fields = AckFields(row.lease_id, rows.wire_id(row.task_id), row.device_id,
                           row.result_hash, status, code, units)
        ack = tx.store_ack(row.id, row.device_id, lambda seq: sign(fields, seq), renew=True)
        return [Notice(row.device_id, ack)]

    def _quarantine(self, tx: LedgerTx, rows: TrustRows, device_id: str, handled: int | None,
                    now: float) -> list[Notice]:
        """No more leases (its active ones are taken back) and no credit still pending."""
        log.warning("device %s quarantined", device_id)
        self.count("quarantined")
        tx.event("quarantined", now, device_id=device_id)
        notices: list[Notice] = []
        for row in rows.results_with_status(device_id, trust.PENDING):
            if row.id != handled:
                notices += self._restatus(tx, rows, row, trust.REJECTED, trust.QUARANTINED)
        for lease in tx.active_leases(device_id=device_id):
            tx.end_lease(lease, "released", now)
        return notices

    def _recheck(self, tx: LedgerTx, rows: TrustRows, device_id: str, now: float) -> None:
        """Reopen, for the gateway's own run, what a device caught cheating had accepted
        without one, while it can still be kept out of its job's output."""
        for task_id in rows.recheck_candidates(device_id):
            check = self._load(rows, task_id)
            if check is not None and self.policy.recheck(task_id):
                rows.save_check(check, None)
                tx.move_task(tx.task(task_id), "verifying", now)
                self.count("rechecks")
                self.wake()

    def _sync(self, tx: LedgerTx, rows: TrustRows, task_id: int, lease_id: bytes | None,
              now: float) -> TaskFinish | None:
        """The task's state follows its check (module docstring)."""
        task = tx.task(task_id)
        if task.state not in ("queued", "leased", "verifying", "done"):
            return None  # failed, or canceled (a job stopped, a canary given back)
        check = self.policy.checks.get(task_id) or rows.check(task_id)
        if check is None:  # a refused first result: the task goes back to the queue
            tx.move_task(task, "leased" if tx.active_leases(task_id=task_id) else "queued", now)
            return None
        if check.state == trust.OPEN:
            tx.move_task(task, "verifying", now)
            tx.want_replica_if_waiting(task_id, now)
            return None
        if task.state == "done" or check.reference is None:
            return None
        output = rows.output_result(task_id, check.reference)
        return tx.finish_task(task, lease_id, output, check.reference, now)

    # -- the gateway's own runs and the canary pool (driven by the service) ------------------

    def spots_owed(self, rows: TrustRows, skip: frozenset[int] = frozenset()) -> list[TaskRow]:
        return rows.spots_owed(self.config.spot_batch, skip)

    def next_canary(self, rows: TrustRows) -> tuple[TaskRow, dict[str, Any]] | None:
        """A template and the params of the next canary to precompute, or None (the pool is
        full, or no job is open). Canaries of jobs that ended are dropped first."""
        self.canaries = [c for c in self.canaries if rows.job_open(c.job_id)]
        if len(self.canaries) >= self.config.canary_pool:
            return None
        template = rows.canary_template(self.policy.rng)
        if template is None:
            return None
        params = trust.canary_params(template.kernel, cbor.loads(template.params_cbor),
                                     self.policy.rng)
        return template, params

    def add_canary(self, template: TaskRow, params: dict[str, Any],
                   answer: dict[str, Any]) -> None:
        self.canaries.append(CanaryRow(
            template.id, template.job_id, template.kernel, cbor.dumps(params),
            template.work_units, protocol.result_hash(answer), cbor.dumps(answer)))
