"""Cheating-fleet benchmark: the trust policy (gateway/trust.py) against 100 simulated devices.

Run from the repository root: ``.venv/bin/python -m benchmarks.trust [--quick]``. Prints a table
per strategy, then as its last line one JSON object with cheaters_caught_pct,
median_tasks_to_catch, wrong_results_accepted, verification_overhead, honest_false_positives
(and the details they come from).

In process, no MQTT: every round each device that may lease takes one task (an open replica it
may take, else a canary when the policy draws one, else the next task of the live jobs), answers
it, and the policy judges the answer; then the gateway runs its spot checks with the C kernel.
Tasks are real: jobs planned by gateway.jobs (montecarlo_pi, sha256_search, gemm_i8, small), and
honest devices compute them with edge_agent.kernels. A job's output is frozen when all its tasks
are settled; a wrong answer that reached a frozen output can no longer be recalled.

Cheaters (10 % of the fleet, seeded), each strategy the strongest version modelled here:
- always_wrong: a random result of the right shape for every task.
- wrong_10pct: computes honestly, but 10 % of its answers are random.
- copy_neighbour: a ring of colluders (every copy_neighbour device). Honest for its first
  ``warmup`` tasks, to earn trust; then computes nothing: when a ring mate has already answered the
  same task (it holds a replica of a mate's task) it returns the mate's answer, so the two agree;
  otherwise the ring's latest answer to another task of the same kernel.
- replay_old: honest for its first ``warmup`` tasks, then resubmits its own old valid results of
  other tasks of the same kernel. (Replaying another device's *signed receipt* is refused by the
  signature and lease binding: tests/test_trust.py.)

Executions: useful = one per real task; extra = replicas, gateway spot runs (checks, disagreement
arbitration, rechecks), canaries (the device's run and the gateway's precomputed answer), and
re-runs of tasks whose answer was refused. "Once trust has built up" is the second half of the
rounds: extra executions in those rounds over the real tasks first leased in them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_agent import kernels, native
from edge_agent.core import protocol
from gateway import jobs, jobspec
from gateway.trust import (
    SETTLED,
    Decision,
    Settlement,
    TrustConfig,
    TrustPolicy,
    canary_params,
    known_answer,
)

HONEST = "honest"
STRATEGIES = ("always_wrong", "wrong_10pct", "copy_neighbour", "replay_old")
# Ten cheaters in the hundred devices: the mix of strategies.
CHEATER_MIX = {"always_wrong": 3, "wrong_10pct": 3, "copy_neighbour": 2, "replay_old": 2}
WRONG_RATE = 0.10  # wrong_10pct
LIVE_JOBS = 3  # jobs leased from at the same time
TASKS_PER_JOB = 300


@dataclass(frozen=True)
class Scale:
    devices: int
    rounds: int


FULL = Scale(devices=100, rounds=240)
QUICK = Scale(devices=100, rounds=80)


@dataclass
class SimTask:
    task_id: int
    job: int | None  # None for a canary
    kernel: str
    params: dict[str, Any]  # resolved (blobs substituted)
    units: int
    first_round: int = -1

    _truth: dict[str, Any] | None = None

    def truth(self) -> dict[str, Any]:
        """The correct result, for the referee only (not counted as an execution)."""
        if self._truth is None:
            self._truth = kernels.run(self.kernel, self.params, backend="c")
        return self._truth


@dataclass
class SimJob:
    job_id: int
    task_ids: list[int]
    frozen: bool = False


@dataclass
class Ring:
    """What colluding copy_neighbour devices share: answers by task, latest answer by kernel."""

    by_task: dict[int, dict[str, Any]] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    collusions: int = 0  # answers copied from a mate's answer to the very same task


@dataclass
class SimDevice:
    device_id: str
    token_id: str
    strategy: str
    rng: random.Random
    submitted: int = 0
    caught_after: int | None = None  # results submitted when it was quarantined
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def random_result(kernel: str, params: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A made-up result with the right shape (what a device that computes nothing returns)."""
    if kernel == "montecarlo_pi":
        return {"inside": rng.randrange(params["points"] + 1), "points": params["points"]}
    if kernel == "sha256_search":
        return {"found": [], "found_total": 0,
                "best_nonce": params["start"] + rng.randrange(params["count"]),
                "best_hash": rng.randbytes(32)}
    return {"out": rng.randbytes(params["m"] * params["n"])}


def answer(dev: SimDevice, task: SimTask, ring: Ring, warmup: int) -> dict[str, Any]:
    """The result a device returns for a task, by its strategy."""
    honest = dev.strategy == HONEST or (
        dev.strategy in ("copy_neighbour", "replay_old") and dev.submitted < warmup)
    if dev.strategy == "always_wrong":
        return random_result(task.kernel, task.params, dev.rng)
    if dev.strategy == "wrong_10pct" and dev.rng.random() < WRONG_RATE:
        return random_result(task.kernel, task.params, dev.rng)
    if honest or dev.strategy == "wrong_10pct":
        result = kernels.run(task.kernel, task.params, backend="c")
    elif dev.strategy == "replay_old":
        result = dev.rng.choice(dev.history.get(task.kernel) or
                                [random_result(task.kernel, task.params, dev.rng)])
    elif task.task_id in ring.by_task:
        ring.collusions += 1
        result = ring.by_task[task.task_id]
    else:
        result = ring.latest.get(task.kernel) or random_result(task.kernel, task.params, dev.rng)
    if dev.strategy == "copy_neighbour":
        ring.by_task[task.task_id] = result
        ring.latest[task.kernel] = result
    if honest:
        dev.history.setdefault(task.kernel, []).append(result)
    return result


def job_document(kind: str, index: int, rng: random.Random) -> dict[str, Any]:
    """A small job of each kind, so thousands of tasks run in seconds."""
    n = TASKS_PER_JOB
    if kind == "montecarlo_pi":
        return {"kind": kind, "params": {"seed": rng.getrandbits(64), "points": 2000 * n},
                "split": {"points_per_task": 2000}}
    if kind == "sha256_search":
        return {"kind": kind, "params": {"prefix": f"trust bench {index}", "start": 0,
                                         "count": 256 * n, "zero_bits": 8, "max_found": 4},
                "split": {"nonces_per_task": 256}}
    k = 16
    return {"kind": "gemm", "params": {
        "a": [[rng.randrange(-128, 128) for _ in range(k)] for _ in range(4 * n)],
        "w": [[rng.randrange(-128, 128) for _ in range(k)] for _ in range(8)],
        "multiplier": 1 << 30, "shift": 36}, "split": {"rows_per_task": 4}}


class Fleet:
    def __init__(self, scale: Scale, seed: int, config: TrustConfig,
                 mix: dict[str, int] | None = None) -> None:
        self.scale = scale
        self.config = config
        self.rng = random.Random(seed)
        self.policy = TrustPolicy(config, random.Random(seed + 1))
        self.devices = self._make_devices(scale.devices, seed, mix or CHEATER_MIX)
        self.ring = Ring()
        self.tasks: dict[int, SimTask] = {}
        self.jobs: list[SimJob] = []
        self.queue: deque[int] = deque()
        self.replicas: list[int] = []
        self.spots: deque[int] = deque()
        self.answered: dict[str, list[int]] = {}  # device -> tasks it returned a result for
        self.outputs: dict[int, bytes] = {}  # task -> the hash frozen into its job's output
        self.answered_by: dict[int, tuple[str, ...]] = {}  # task -> devices that gave that hash
        self.round = 0
        self.executions = [0, 0]  # per half of the run
        self.gateway_runs = 0

    def _make_devices(self, count: int, seed: int, mix: dict[str, int]
                      ) -> dict[str, SimDevice]:
        """``mix``: how many devices of each cheating strategy; the rest are honest."""
        strategies = [s for s, k in mix.items() for _ in range(k)]
        strategies += [HONEST] * (count - len(strategies))
        self.rng.shuffle(strategies)
        devices = {}
        for i, strategy in enumerate(strategies):
            dev = SimDevice(f"{i:032x}", f"tok-{i:016x}", strategy, random.Random(seed * 1000 + i))
            devices[dev.device_id] = dev
            self.policy.enrol(dev.device_id, dev.token_id)
        return devices

    # --- work supply --------------------------------------------------------------------------

    def _new_task(self, job: int | None, kernel: str, params: dict[str, Any], units: int) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = SimTask(task_id, job, kernel, params, units)
        return task_id

    def _add_job(self) -> None:
        kinds = ("montecarlo_pi", "sha256_search", "gemm")
        index = len(self.jobs)
        plan = jobs.plan(jobspec.parse_job(job_document(kinds[index % 3], index, self.rng)))
        ids = [self._new_task(index, t.kernel, jobs.resolve(t.params, plan.blobs), t.work_units)
               for t in plan.stages[0].tasks or ()]
        self.jobs.append(SimJob(index, ids))
        self.queue.extend(ids)

    def _next_task(self, dev: SimDevice) -> int:
        for i, task_id in enumerate(self.replicas):
            if self.policy.may_replicate_to(task_id, dev.device_id):
                return self.replicas.pop(i)
        if self.policy.canary_due(dev.device_id):
            return self._canary()
        while len(self.queue) < self.scale.devices or sum(
                not j.frozen for j in self.jobs) < LIVE_JOBS:
            self._add_job()
        return self.queue.popleft()

    def _canary(self) -> int:
        live = [j for j in self.jobs if not j.frozen]
        template = self.tasks[self.rng.choice(self.rng.choice(live).task_ids)]
        params = canary_params(template.kernel, template.params, self.rng)
        task_id = self._new_task(None, template.kernel, params, template.units)
        self.policy.register_canary(task_id, self._gateway_run(task_id))
        return task_id

    def _gateway_run(self, task_id: int) -> bytes:
        task = self.tasks[task_id]
        self._count_execution()
        self.gateway_runs += 1
        return known_answer(task.kernel, task.params)

    def _count_execution(self) -> None:
        self.executions[self.round * 2 >= self.scale.rounds] += 1

    # --- one round ----------------------------------------------------------------------------

    def step(self) -> None:
        order = list(self.devices.values())
        self.rng.shuffle(order)
        for dev in order:
            if not self.policy.may_lease(dev.device_id):
                continue
            task = self.tasks[self._next_task(dev)]
            if task.first_round < 0:
                task.first_round = self.round
            result = answer(dev, task, self.ring, self.config.warmup)
            dev.submitted += 1
            self._count_execution()
            decision = self.policy.on_result(task.task_id, dev.device_id,
                                             protocol.result_hash(result), task.units, task.units)
            self._apply(decision, task.task_id, dev)
        while self.spots:
            task_id = self.spots.popleft()
            self._settled(self.policy.on_reference(task_id, self._gateway_run(task_id)))
        self._freeze_jobs()
        self.round += 1

    def _apply(self, decision: Decision, task_id: int, dev: SimDevice) -> None:
        self.answered.setdefault(dev.device_id, []).append(task_id)
        if decision.replica is not None:
            self.replicas.append(task_id)
        if decision.spot:
            self.spots.append(task_id)
        if decision.settlement is not None:
            self._settled(decision.settlement)
        if decision.reissue and self.tasks[task_id].job is not None:
            self.queue.appendleft(task_id)

    def _settled(self, settlement: Settlement) -> None:
        for device_id in settlement.quarantined:
            dev = self.devices[device_id]
            dev.caught_after = dev.submitted
        for device_id in settlement.suspects:
            for task_id in self.answered.pop(device_id, []):
                if self.policy.recheck(task_id):  # accepted unchecked, job not yet frozen
                    self.spots.append(task_id)

    def _freeze_jobs(self) -> None:
        for job in self.jobs:
            if not job.frozen and all(self._settled_hash(t) is not None for t in job.task_ids):
                job.frozen = True
                for task_id in job.task_ids:
                    self._record_output(task_id)
                    self.policy.forget(task_id)

    def _record_output(self, task_id: int) -> None:
        check = self.policy.checks[task_id]
        assert check.reference is not None
        self.outputs[task_id] = check.reference
        self.answered_by[task_id] = tuple(
            s.device_id for s in check.submissions if s.rhash == check.reference)

    def _settled_hash(self, task_id: int) -> bytes | None:
        check = self.policy.checks.get(task_id)
        if check is None or check.state != SETTLED:
            return None
        return check.reference

    # --- the report ---------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        for task_id, task in self.tasks.items():
            if task.job is not None and task_id not in self.outputs and (
                    self._settled_hash(task_id) is not None):
                self._record_output(task_id)
        outputs = self.outputs
        wrong = [t for t, h in outputs.items()
                 if h != protocol.result_hash(self.tasks[t].truth())]
        wrong_by = [self.devices[d].strategy for t in wrong for d in self.answered_by[t]]
        real = [t for t in self.tasks.values() if t.job is not None and t.first_round >= 0]
        half = self.scale.rounds / 2
        useful = [sum(t.first_round < half for t in real), sum(t.first_round >= half for t in real)]
        cheaters = [d for d in self.devices.values() if d.strategy != HONEST]
        caught = [d.caught_after for d in cheaters if d.caught_after is not None]
        per_strategy = {}
        for strategy in (*STRATEGIES, HONEST):
            devs = [d for d in self.devices.values() if d.strategy == strategy]
            catches = [d.caught_after for d in devs if d.caught_after is not None]
            per_strategy[strategy] = {
                "devices": len(devs), "caught": len(catches),
                "median_tasks_to_catch": statistics.median(catches) if catches else None,
                "max_tasks_to_catch": max(catches) if catches else None,
                "results": sum(d.submitted for d in devs),
                "wrong_accepted": wrong_by.count(strategy),
            }
        return {
            "cheaters_caught_pct": round(100.0 * len(caught) / len(cheaters), 2),
            "median_tasks_to_catch": statistics.median(caught) if caught else None,
            "wrong_results_accepted": len(wrong),
            "wrong_results_accepted_pct": round(100.0 * len(wrong) / max(1, len(outputs)), 4),
            "verification_overhead": round(self.executions[1] / max(1, useful[1]) - 1.0, 4),
            "verification_overhead_whole_run": round(sum(self.executions) / max(1, len(real))
                                                     - 1.0, 4),
            "honest_false_positives": per_strategy[HONEST]["caught"],
            "always_wrong_max_tasks_to_catch": per_strategy["always_wrong"]["max_tasks_to_catch"],
            "tasks_settled": len(outputs),
            "gateway_runs": self.gateway_runs,
            "ring_collusions": self.ring.collusions,
            "strategies": per_strategy,
        }


def simulate(scale: Scale, seed: int = 1, config: TrustConfig | None = None,
             mix: dict[str, int] | None = None) -> dict[str, Any]:
    """Run the fleet for ``scale.rounds`` rounds; ``mix`` defaults to CHEATER_MIX (10 %)."""
    fleet = Fleet(scale, seed, config or TrustConfig(), mix)
    for _ in range(scale.rounds):
        fleet.step()
    return fleet.report()


def render(report: dict[str, Any], scale: Scale, seconds: float) -> None:
    console = Console(width=140)
    table = Table(title=f"Trust policy vs a cheating fleet ({scale.devices} devices, "
                        f"{scale.rounds} rounds, {report['tasks_settled']} tasks settled)")
    for col in ("strategy", "devices", "caught", "median tasks to catch", "max tasks to catch",
                "results submitted", "wrong accepted"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, row in report["strategies"].items():
        table.add_row(name, str(row["devices"]), str(row["caught"]),
                      str(row["median_tasks_to_catch"] or "-"),
                      str(row["max_tasks_to_catch"] or "-"), str(row["results"]),
                      str(row["wrong_accepted"]))
    console.print(table)
    console.print(
        f"wrong results in job outputs: {report['wrong_results_accepted']} "
        f"({report['wrong_results_accepted_pct']} %); ring answers copied from a mate on the "
        f"same task: {report['ring_collusions']}\n"
        f"verification overhead: {100 * report['verification_overhead']:.1f} % in the second "
        f"half, {100 * report['verification_overhead_whole_run']:.1f} % over the whole run "
        f"({report['gateway_runs']} gateway runs); {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not native.AVAILABLE:
        print("C kernels are not built: run `make native`", file=sys.stderr)
        return 1
    scale = QUICK if args.quick else FULL
    started = time.perf_counter()
    report = simulate(scale, args.seed)
    render(report, scale, time.perf_counter() - started)
    summary = {k: v for k, v in report.items() if k != "strategies"}
    summary.update(quick=args.quick, seed=args.seed, devices=scale.devices, rounds=scale.rounds)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
