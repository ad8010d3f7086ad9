"""``make demo``: a gateway with its own Mosquitto, a swarm of simulated phones and Pis, real jobs.

1. ``edge-gateway serve`` in a temporary state directory (its own Mosquitto on loopback);
2. ``edge-gateway token create`` makes one-time tokens; each simulated device enrols with one;
3. ``edge-gateway submit``: the int8 digits MLP (two stages), Monte Carlo pi, a SHA-256 search;
4. the agents (one event loop, each a full agent with its own key, database and simulated device:
   batteries, chargers and rooms vary; two phones sit on a sunny windowsill and pause for heat;
   some are off their chargers; one is unplugged half-way and plugged in again) work while their
   governors allow; progress bars per job and a live device table show who works and why not;
5. a summary: tasks, devices, each job's output compared with the gateway's own computation.

Ctrl-C stops everything cleanly (agents checkpoint and go offline, then the gateway stops).
``--quick`` runs smaller jobs on fewer devices (the test suite runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import re
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge_agent.agent import Agent
from edge_agent.devices import SimulatedDevice
from edge_agent.identity import StateDir
from edge_agent.runtime import AgentConfig
from edge_agent.swarm import SimSpec, build_agents, device_dirs, enrol_missing
from gateway import jobs
from gateway.config import StatePaths
from gateway.jobflow import JobFlow
from gateway.jobspec import JobSpec, parse_job
from gateway.ledger import Ledger

SPEEDUP = 100.0  # simulated clocks: a governor's 5-minute hold lasts 3 s here
SERVING = re.compile(r"devices connect to (mqtt://[\d.]+:\d+);")
WINDOWSILL_C = 40.0  # room temperature of the phones in the sun: batteries pass the 40 °C limit
REFRESH_S = 0.25
TABLE_ROWS = 14  # device rows on screen: every held-back device, then working ones


@dataclasses.dataclass(frozen=True)
class Size:
    devices: int
    mlp_samples: int
    mlp_per_task: int
    pi_tasks: int
    pi_points_per_task: int
    sha_nonces: int
    sha_per_task: int
    sha_zero_bits: int


FULL = Size(devices=40, mlp_samples=359, mlp_per_task=4, pi_tasks=1500,
            pi_points_per_task=2_000_000, sha_nonces=1 << 25, sha_per_task=1 << 16,
            sha_zero_bits=22)
QUICK = Size(devices=16, mlp_samples=120, mlp_per_task=10, pi_tasks=120,
             pi_points_per_task=1_000_000, sha_nonces=1 << 20, sha_per_task=1 << 15,
             sha_zero_bits=17)


def job_documents(size: Size) -> dict[str, dict[str, Any]]:
    return {
        "digits": {"kind": "mlp_digits", "name": "int8 MLP over the held-out digits",
                   "priority": 60, "params": {"samples": size.mlp_samples},
                   "split": {"samples_per_task": size.mlp_per_task}},
        "pi": {"kind": "montecarlo_pi", "name": "Monte Carlo pi", "priority": 50,
               "params": {"seed": 20240611, "points": size.pi_tasks * size.pi_points_per_task},
               "split": {"points_per_task": size.pi_points_per_task}},
        "sha": {"kind": "sha256_search", "name": "SHA-256 nonce search", "priority": 55,
                "params": {"prefix": "edge-grid demo block", "start": 0,
                           "count": size.sha_nonces, "zero_bits": size.sha_zero_bits},
                "split": {"nonces_per_task": size.sha_per_task}},
    }


def device_mix(seed: int, count: int) -> list[SimSpec]:
    """The swarm's mix (phones on 18 W and 5 W chargers, Pi 4s, a few off their chargers), with
    two phones moved to a sunny windowsill."""
    specs = [SimSpec.for_device(seed, i) for i in range(count)]
    for i in (1, 5):
        specs[i] = dataclasses.replace(specs[i], ambient_c=WINDOWSILL_C, plugged=True)
    return specs


# -- the gateway, through its commands -----------------------------------------------------


async def gateway_cli(state: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, "--state-dir", str(state),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"edge-gateway {args[0]} failed: {err.decode().strip()}")
    return out.decode()


async def start_gateway(state: Path) -> tuple[asyncio.subprocess.Process, str]:
    # Its own session: Ctrl-C reaches the demo only, which stops the agents before the gateway.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--state-dir", str(state),
        "--mqtt-host", "127.0.0.1", "--mqtt-port", "0", "--log-level", "ERROR",
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    found = SERVING.search(line)
    if found is None:
        raise RuntimeError(f"edge-gateway serve did not start: {line!r}")
    return proc, found.group(1)


async def stop_gateway(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 30)


# -- the screen ----------------------------------------------------------------------------


class Screen:
    """Progress bars per job (from the ledger) and the device table (from the agents)."""

    def __init__(self, ledger: Ledger, job_ids: dict[str, int], agents: list[Agent],
                 specs: list[SimSpec]) -> None:
        self.ledger, self.job_ids, self.agents, self.specs = ledger, job_ids, agents, specs
        self.bars = Progress(TextColumn("{task.description:<36}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
                             TimeElapsedColumn())
        self.bar_ids = {name: self.bars.add_task(name, total=1, state="queued")
                        for name in job_ids}
        self.reasons_seen: collections.Counter[str] = collections.Counter()
        self._last: dict[str, str] = {}

    def all_done(self) -> bool:
        return all(self._progress(job).state in ("done", "failed", "canceled")
                   for job in self.job_ids.values())

    def _progress(self, job_id: int) -> Any:
        progress = self.ledger.progress(job_id, time.time())
        assert progress is not None
        return progress

    def render(self) -> Group:
        for name, job_id in self.job_ids.items():
            p = self._progress(job_id)
            info = self.ledger.job(job_id)
            label = f"{info.name if info else name}"
            self.bars.update(self.bar_ids[name], description=label,
                             total=max(1, sum(p.counts.values())), completed=p.counts["done"],
                             state=p.state)
        return Group(self.bars, self._table())

    def _table(self) -> Table:
        """Every device the governor holds back, then working ones up to TABLE_ROWS."""
        table = Table(expand=False, title_justify="left")
        for name, width in (("device", 8), ("simulated as", 12), ("battery", 7),
                            ("decision", 8), ("why", 20), ("tasks", 5)):
            table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=width)
        decisions: collections.Counter[str] = collections.Counter()
        held: list[tuple[Agent, SimSpec]] = []
        working: list[tuple[Agent, SimSpec]] = []
        for agent, spec in zip(self.agents, self.specs, strict=True):
            decision = agent.last_decision
            action = "-" if decision is None else decision.action
            decisions[action] += 1
            if decision is not None and self._last.get(agent.device_id) != decision.reason:
                self._last[agent.device_id] = decision.reason
                if decision.action != "run":
                    self.reasons_seen[f"{decision.action}: {decision.reason}"] += 1
            (working if action == "run" else held).append((agent, spec))
        shown = (held + working)[:max(TABLE_ROWS, len(held))]
        for agent, spec in shown:
            decision, reading = agent.last_decision, agent.report.reading
            action = "-" if decision is None else decision.action
            style = {"run": "green", "pause": "yellow", "stop": "red"}.get(action, "")
            battery = "-" if reading is None or reading.battery_percent is None else \
                f"{reading.battery_percent}%{' charging' if reading.charging else ''}"
            table.add_row(agent.device_id[:8], f"{spec.preset} {spec.ambient_c:.0f} °C",
                          battery, f"[{style}]{action}[/]",
                          "" if decision is None else decision.text[:40],
                          str(agent.tasks_done))
        table.title = f"{len(self.agents)} devices: " + ", ".join(
            f"{n} {action}" for action, n in sorted(decisions.items()))
        if len(shown) < len(self.agents):
            table.caption = f"... and {len(self.agents) - len(shown)} more running"
        return table


# -- running -------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    size: Size
    specs: dict[str, JobSpec]
    job_ids: dict[str, int]
    outputs: dict[str, dict[str, Any] | None]
    tasks: int
    devices_working: int
    devices: int
    reasons_seen: dict[str, int]
    wall_s: float
    interrupted: bool


async def unplug_midway(device: SimulatedDevice, screen: Screen, stop: asyncio.Event) -> None:
    """Unplug one phone once a third of the work is done, plug it back in once two thirds are."""
    for fraction, plugged in ((1 / 3, False), (2 / 3, True)):
        while not stop.is_set() and screen_fraction(screen) < fraction:
            await asyncio.sleep(REFRESH_S)  # pacing of a scripted event
        device.sim.set_plugged(plugged)


def screen_fraction(screen: Screen) -> float:
    done = total = 0
    for job_id in screen.job_ids.values():
        p = screen.ledger.progress(job_id, time.time())
        if p is not None:
            done += p.counts["done"]
            total += sum(p.counts.values())
    return done / max(1, total)


async def run_demo(size: Size, seed: int, base: Path, console: Console) -> Outcome:
    started = time.monotonic()
    state = base / "gateway"
    console.print(f"[bold]edge-grid demo[/] — state in {base}")
    gateway, url = await start_gateway(state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        console.print(f"gateway serving at {url}")
        token_list = (await gateway_cli(state, "token", "create", "--count",
                                        str(size.devices))).split()
        console.print(f"{len(token_list)} one-time enrolment tokens made")
        documents = job_documents(size)
        job_ids: dict[str, int] = {}
        for name, doc in documents.items():
            path = state / f"{name}.json"
            path.write_text(json.dumps(doc))
            job_ids[name] = int((await gateway_cli(state, "submit", str(path))).strip())
        specs = {name: parse_job(doc) for name, doc in documents.items()}
        console.print("jobs submitted: " + ", ".join(
            f"{job_ids[n]} {d['name']}" for n, d in documents.items()))
        states = device_dirs(base / "devices", size.devices)
        with console.status(f"enrolling {size.devices} devices ..."):
            await enrol_missing(states, url, token_list)
        sims = device_mix(seed, size.devices)
        outcome = await _work(size, state, job_ids, specs=specs, states=states, sims=sims,
                              stop=stop, console=console)
    finally:
        await stop_gateway(gateway)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    outcome.wall_s = time.monotonic() - started
    with console.status("checking every output against the gateway's local computation ..."), \
            Ledger.open(StatePaths(state).ledger, time.time()) as ledger:
        flow = JobFlow(ledger, time.time)
        outcome.outputs = {name: flow.output(job_id) for name, job_id in job_ids.items()}
    return outcome


async def _work(size: Size, state: Path, job_ids: dict[str, int], *,
                specs: dict[str, JobSpec], states: list[StateDir], sims: list[SimSpec],
                stop: asyncio.Event, console: Console) -> Outcome:
    config = AgentConfig(state_every_s=1.0)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="kernel") as pool, \
            Ledger.open(StatePaths(state).ledger, time.time()) as ledger:
        agents = build_agents(states, sims, config, speedup=SPEEDUP, executor=pool)
        screen = Screen(ledger, job_ids, agents, sims)
        runners = [asyncio.create_task(agent.run()) for agent in agents]
        unplugged = next(i for i, s in enumerate(sims) if s.preset == "phone" and s.plugged
                         and s.ambient_c < WINDOWSILL_C)
        device = agents[unplugged].device
        assert isinstance(device, SimulatedDevice)
        scripted = asyncio.create_task(unplug_midway(device, screen, stop))
        with Live(screen.render(), console=console, refresh_per_second=4) as live:
            while not stop.is_set() and not screen.all_done():
                await asyncio.wait({asyncio.create_task(stop.wait())}, timeout=REFRESH_S)
                live.update(screen.render())
        interrupted = stop.is_set()
        stop.set()
        scripted.cancel()
        for agent in agents:
            agent.stop()
        await asyncio.gather(*runners, scripted, return_exceptions=True)
        db_counts = ledger.fleet()
        tasks = sum(p.counts["done"] for p in (ledger.progress(j, time.time())
                                                for j in job_ids.values()) if p)
    working = sum(1 for a in agents if a.tasks_done > 0)
    return Outcome(size, specs, job_ids, {}, tasks, working, db_counts["devices"],
                   dict(screen.reasons_seen), 0.0, interrupted)


# -- the summary ---------------------------------------------------------------------------


def summary(outcome: Outcome, console: Console) -> None:
    console.print()
    console.rule("summary")
    if outcome.interrupted:
        console.print("interrupted: everything stopped cleanly")
    console.print(f"tasks: {outcome.tasks} done by {outcome.devices_working} of "
                  f"{outcome.devices} devices in {outcome.wall_s:.0f} s")
    if outcome.reasons_seen:
        console.print("devices held back: " + ", ".join(
            f"{reason} ({n}x)" for reason, n in sorted(outcome.reasons_seen.items())))
    for name, output in outcome.outputs.items():
        if output is None:
            console.print(f"{name}: not finished")
            continue
        same = "yes" if output == jobs.compute_locally(outcome.specs[name]) else "NO"
        if name == "digits":
            console.print(f"digits MLP (int8, distributed): accuracy {output['correct']}/"
                          f"{output['samples']} = {output['accuracy_approx']}; "
                          f"identical to local: {same}")
        elif name == "pi":
            console.print(f"Monte Carlo pi: {output['pi_approx']} from {output['points']:,} "
                          f"points; identical to local: {same}")
        else:
            shown = ", ".join(str(n) for n in output["found"][:8])
            more = " ..." if output["found_total"] > 8 else ""
            console.print(f"SHA-256 search: {output['found_total']} nonces found ({shown}{more})"
                          f", best {output['best_hash'].hex()[:16]}...; identical to local: "
                          f"{same}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller jobs, fewer devices")
    parser.add_argument("--devices", type=int, default=None, help="how many simulated devices")
    parser.add_argument("--seed", type=int, default=7, help="varies batteries, rooms, chargers")
    parser.add_argument("--state-dir", default=None, help="keep the state here (default: a "
                        "temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.devices is not None:
        size = dataclasses.replace(size, devices=max(8, args.devices))
    console = Console()
    with tempfile.TemporaryDirectory(prefix="edge-grid-demo-") as tmp:
        base = Path(args.state_dir) if args.state_dir else Path(tmp)
        outcome = asyncio.run(run_demo(size, args.seed, base, console))
    summary(outcome, console)
    return 130 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
