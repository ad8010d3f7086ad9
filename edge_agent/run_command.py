"""``edge-agent run``: one agent on the detected (or simulated) device, until it is done or a
signal stops it; run_agents is shared with ``edge-agent swarm``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from edge_agent import sdnotify
from edge_agent.agent import Agent
from edge_agent.core.governor import Governor
from edge_agent.devices import device_for
from edge_agent.identity import IdentityError, StateDir
from edge_agent.runtime import AgentConfig
from edge_agent.settings import SettingsError, load_settings


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        kernel_backend=args.kernel_backend,
        max_tasks=args.max_tasks,
        exit_when_idle=args.exit_when_idle,
        state_every_s=args.state_every,
    )


async def run_agents(agents: list[Agent]) -> None:
    """Run agents until they finish; SIGINT/SIGTERM stop them cleanly (checkpoint, offline)."""
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for agent in agents:
            agent.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all)
    watchdog = asyncio.create_task(sdnotify.keep_alive())
    try:
        await asyncio.gather(*(agent.run() for agent in agents))
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_main(args: argparse.Namespace) -> int:
    from hal.detect import open_backend

    backend = open_backend(
        args.hal,
        sysfs_root=args.sysfs_root,
        vcgencmd=args.vcgencmd,
        termux_command=args.termux_command,
    )

    state_dir = StateDir(args.state_dir)

    async def main() -> Agent:
        governor = Governor(load_settings(state_dir.root))
        device = device_for(backend, args.speedup)
        agent = Agent(state_dir, device, config=config, governor=governor)
        await run_agents([agent])
        return agent

    config = config_from_args(args)
    try:
        agent = asyncio.run(main())
    except (IdentityError, SettingsError) as exc:
        print(f"edge-agent run: {exc}", file=sys.stderr)
        return 2
    counts = dict(sorted(agent.stats.counts.items()))
    print(f"{agent.device_id}: {agent.tasks_done} tasks done; {counts}")
    return 0
