"""The retained ``state`` document: what the device last read and decided, in coarse,
personal-data-free fields, sent when that coarse content changes (and at most once per
``state_every_s``, which the link paces)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from edge_agent.core import statedoc
from edge_agent.core.governor import Decision
from edge_agent.status import throttled
from hal.state import DeviceState


def state_fields(reading: DeviceState, decision: Decision) -> dict[str, Any]:
    """The coarse, personal-data-free fields of a ``state`` document."""
    fields: dict[str, Any] = statedoc.fields(reading, decision, throttled(reading))
    return fields


def offline_document() -> bytes:
    """``state {online: false}``: the last will, and the goodbye on a clean disconnect."""
    return bytes(statedoc.offline())


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
        if statedoc.signature(state_fields(reading, decision)) != self._sent_signature:
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
        return bytes(statedoc.online(state_fields(reading, decision), seq, int(time.time())))

    def mark_sent(self, at: float) -> None:
        """A document went out at event-loop time ``at``, about the latest decision."""
        self.sent_at = at
        if self.decision is not None and self.reading is not None:
            self._sent_signature = statedoc.signature(state_fields(self.reading, self.decision))
