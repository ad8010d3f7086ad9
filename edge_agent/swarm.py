"""``edge-agent swarm``: N simulated devices, each a full agent, in one process and one event loop.

Device i lives in ``<base>/dev-<i>`` with its own key, credentials and database; devices not yet
enrolled take the next token of ``--tokens``. Each gets a simulated phone or Pi with its own seed,
battery level, room temperature and charger, stepped ``--speedup`` times faster than the wall
clock. Kernel chunks of all devices share one thread pool with a worker per CPU core.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from edge_agent.agent import Agent, Progress
from edge_agent.devices import SimulatedDevice
from edge_agent.enrol import EnrolError, enrol
from edge_agent.identity import IdentityError, StateDir, default_state_dir
from edge_agent.run_command import config_from_args, run_agents
from edge_agent.runtime import AgentConfig
from hal.simulated import SimulatedBackend

# (preset, room °C offset range, chance of being unplugged): phones on good and weak chargers,
# Pis in warm cases; a few phones are off their charger, so the governor stops them.
MIX: tuple[tuple[str, tuple[float, float], float], ...] = (
    ("phone", (-3.0, 6.0), 0.15),
    ("phone", (-3.0, 6.0), 0.0),
    ("phone-weak-charger", (-2.0, 4.0), 0.0),
    ("pi4", (-6.0, 2.0), 0.0),
)
ENROL_CONCURRENCY = 8


@dataclasses.dataclass(frozen=True)
class SimSpec:
    """One simulated device of the swarm, reproducible from (seed, index)."""

    preset: str
    ambient_c: float
    soc: float
    plugged: bool
    seed: int

    @classmethod
    def for_device(cls, seed: int, index: int) -> SimSpec:
        rng = random.Random(seed * 1_000_003 + index)
        preset, (lo, hi), unplugged = MIX[index % len(MIX)]
        base = SimulatedBackend(preset).ambient_c
        return cls(
            preset=preset,
            ambient_c=round(base + rng.uniform(lo, hi), 1),
            soc=round(rng.uniform(0.25, 0.95), 2),
            plugged=rng.random() >= unplugged,
            seed=rng.randrange(1 << 30),
        )

    def backend(self) -> SimulatedBackend:
        return SimulatedBackend(
            self.preset,
            soc=self.soc,
            ambient_c=self.ambient_c,
            plugged=self.plugged,
            seed=self.seed,
        )


def device_dirs(base: Path, count: int) -> list[StateDir]:
    return [StateDir(base / f"dev-{i:04d}") for i in range(count)]


async def enrol_missing(states: list[StateDir], gateway: str | None, tokens: Iterable[str]) -> int:
    """Enrol every state directory that is not enrolled yet, one token each; returns how many."""
    missing = [s for s in states if not s.enrolled]
    if not missing:
        return 0
    if gateway is None:
        raise EnrolError(f"{len(missing)} devices are not enrolled: give --gateway and --tokens")
    available = [t for t in (line.strip() for line in tokens) if t and not t.startswith("#")]
    if len(available) < len(missing):
        raise EnrolError(f"{len(missing)} devices to enrol but only {len(available)} tokens")
    gate = asyncio.Semaphore(ENROL_CONCURRENCY)

    async def one(state: StateDir, token: str) -> None:
        async with gate:
            await enrol(state, gateway, token)

    await asyncio.gather(*(one(s, t) for s, t in zip(missing, available, strict=False)))
    return len(missing)


class Board:
    """What the progress table shows per device: its latest progress and decision."""

    def __init__(self, agents: list[Agent], specs: list[SimSpec]) -> None:
        self.agents = agents
        self.specs = specs
        self.progress: dict[str, Progress] = {}

    def on_progress(self, progress: Progress) -> None:
        self.progress[progress.device_id] = progress

    def table(self) -> Table:
        table = Table(title="edge-agent swarm", expand=False)
        for name in ("device", "sim", "decision", "task", "done", "acked"):
            table.add_column(name)
        for agent, spec in zip(self.agents, self.specs, strict=True):
            decision = agent.last_decision
            p = self.progress.get(agent.device_id)
            task = (
                f"{p.kernel} {100 * p.done_units // max(1, p.total_units)}%"
                if p is not None and p.done_units < p.total_units
                else "-"
            )
            table.add_row(
                agent.device_id[:8],
                f"{spec.preset} {spec.ambient_c:.0f}°C {'plugged' if spec.plugged else 'battery'}",
                "-" if decision is None else f"{decision.action} ({decision.reason})",
                task,
                str(agent.tasks_done),
                str(agent.stats.counts["acks"]),
            )
        done = sum(a.tasks_done for a in self.agents)
        table.caption = f"{len(self.agents)} devices, {done} tasks done"
        return table


def build_agents(
    states: list[StateDir],
    specs: list[SimSpec],
    config: AgentConfig,
    *,
    speedup: float,
    executor: ThreadPoolExecutor,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[Agent]:
    return [
        Agent(
            state,
            SimulatedDevice(spec.backend(), speedup),
            config=config,
            executor=executor,
            on_progress=on_progress,
        )
        for state, spec in zip(states, specs, strict=True)
    ]


async def run_swarm(
    base: Path,
    count: int,
    config: AgentConfig,
    *,
    speedup: float = 1.0,
    seed: int = 0,
    gateway: str | None = None,
    tokens: Iterable[str] = (),
    console: Console | None = None,
) -> list[Agent]:
    """Enrol what is missing, then run ``count`` agents until they finish or are stopped."""
    states = device_dirs(base, count)
    await enrol_missing(states, gateway, tokens)
    specs = [SimSpec.for_device(seed, i) for i in range(count)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="kernel") as pool:
        board = Board([], specs)
        agents = build_agents(
            states, specs, config, speedup=speedup, executor=pool, on_progress=board.on_progress
        )
        board.agents = agents
        if console is None:
            await run_agents(agents)
            return agents
        with Live(board.table(), console=console, refresh_per_second=4) as live:
            runner = asyncio.create_task(run_agents(agents))
            while not runner.done():
                await asyncio.wait({runner}, timeout=0.25)  # redraw pacing
                live.update(board.table())
            await runner
    return agents


def swarm_main(args: argparse.Namespace) -> int:
    base = Path(args.state_dir) if args.state_dir else default_state_dir() / "swarm"
    tokens: list[str] = []
    if args.tokens:
        tokens = Path(args.tokens).read_text().splitlines()
    console = None if args.no_progress else Console()
    try:
        agents = asyncio.run(
            run_swarm(
                base,
                args.devices,
                config_from_args(args),
                speedup=args.speedup,
                seed=args.seed,
                gateway=args.gateway,
                tokens=tokens,
                console=console,
            )
        )
    except (EnrolError, IdentityError) as exc:
        print(f"edge-agent swarm: {exc}", file=sys.stderr)
        return 2
    total = sum(a.tasks_done for a in agents)
    print(f"{len(agents)} devices, {total} tasks done")
    return 0
