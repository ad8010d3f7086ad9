"""What the agent's MQTT link (link.py) and its work loop (agent.py) share: the configuration,
the counters, and a paced wait."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import Callable


@dataclasses.dataclass
class AgentConfig:
    kernel_backend: str = "c"
    pull_n: int = 1
    pull_secs: int = 600
    reply_timeout_s: float = 10.0  # wall seconds to wait for leases or a blob part
    chunk_s: float = 0.5  # target wall seconds per chunk (adapted from measured speed)
    chunk_units: int | None = None  # fixed chunk size instead (tests, demos)
    checkpoint_every_s: float = 5.0
    recheck_s: float = 10.0  # device seconds between governor checks while not running
    state_every_s: float = 30.0  # at most one state document per this many wall seconds
    max_outbox: int = 64  # no new pulls while this many results wait for acks
    max_tasks: int | None = None  # exit once this many results are made and acked
    exit_when_idle: bool = False  # exit when the gateway has no work and nothing is pending
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    stable_after_s: float = 30.0  # a connection up this long resets the backoff
    max_queued_incoming: int = 256
    blob_retries: int = 3
    blob_cache_bytes: int = 64 * 1024 * 1024


class Stats:
    """Counters (``counts``), and a way for tests and the swarm to wait for them."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._changed = asyncio.Event()

    def bump(self, key: str, n: int = 1) -> None:
        self.counts[key] += n
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate()`` holds; it is checked after every counter change."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()


async def wait_or_timeout(event: asyncio.Event, wall_s: float) -> None:
    """Wait until ``event`` is set or ``wall_s`` passes (pacing, not synchronisation)."""
    if wall_s <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), wall_s)
