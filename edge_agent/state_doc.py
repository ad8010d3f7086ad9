"""The retained ``state`` document: what the device last read and decided, in coarse,
personal-data-free fields, sent when that coarse content changes (and at most once per
``state_every_s``, which the link paces)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from edge_agent.core import protocol
from edge_agent.core.governor import Decision
from edge_agent.status import throttled
from hal.state import DeviceState


def _clamp(value: int | None, lo: int, hi: int) -> int | None:
    return None if value is None else min(max(value, lo), hi)


def state_fields(reading: DeviceState, decision: Decision) -> dict[str, Any]:
    """The coarse, personal-data-free fields of a ``state`` document."""
    return {
        "battery_pct": _clamp(reading.battery_percent, 0, 100),
        "charging": reading.charging,
        "battery_dc": _clamp(reading.battery_temp_dc, 0, 2000),
        "hottest_mc": _clamp(reading.hottest_zone_mc, 0, 200000),
        "throttled": throttled(reading),
        "decision": decision.action,
        "code": decision.reason[:32],
        "why": decision.text[:120],
        "duty_pm": int(decision.duty * 1000 + 0.5),
    }


def state_signature(reading: DeviceState, decision: Decision) -> tuple[Any, ...]:
    """What makes a state document worth sending: whole degrees, 5 % duty steps."""
    f = state_fields(reading, decision)
    return (
        f["battery_pct"],
        f["charging"],
        None if f["battery_dc"] is None else f["battery_dc"] // 10,
        None if f["hottest_mc"] is None else f["hottest_mc"] // 1000,
        f["throttled"],
        f["decision"],
        f["code"],
        f["duty_pm"] // 50,
    )


def offline_document() -> bytes:
    """``state {online: false}``: the last will, and the goodbye on a clean disconnect."""
    return bytes(protocol.encode(protocol.message("state", online=False)))


class StateReport:
    """The latest reading and decision, and whether a document about them is due."""

    def __init__(self) -> None:
        self.reading: DeviceState | None = None
        self.decision: Decision | None = None
        self.dirty = asyncio.Event()  # something worth sending (or a forced send) is waiting
        self.force = False  # send without waiting for the rate limit (on each connect)
        self.sent_at = -float("inf")  # event-loop time of the last document sent
        self._sent_signature: tuple[Any, ...] | None = None

    def note(self, reading: DeviceState, decision: Decision) -> None:
        """Record a governor decision; mark a document due if its coarse content changed."""
        self.reading, self.decision = reading, decision
        if state_signature(reading, decision) != self._sent_signature:
            self.dirty.set()

    def request(self) -> None:
        """Send a document as soon as possible (a new connection needs the retained state)."""
        self.force = True
        self.dirty.set()

    def document(self, seq: int) -> bytes | None:
        """The online document for the latest decision, or None before the first one."""
        reading, decision = self.reading, self.decision
        if reading is None or decision is None:
            return None
        fields = state_fields(reading, decision)
        return bytes(
            protocol.encode(
                protocol.message("state", online=True, seq=seq, at=int(time.time()), **fields)
            )
        )

    def mark_sent(self, at: float) -> None:
        """A document went out at event-loop time ``at``, about the latest decision."""
        self.sent_at = at
        if self.decision is not None and self.reading is not None:
            self._sent_signature = state_signature(self.reading, self.decision)
