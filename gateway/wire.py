"""What every handler shares: replies, refusals (the protocol's `error`), rate limits."""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from edge_agent.core import protocol
from gateway.config import Bucket

MAX_ERROR_MSG = 200
MAX_BUCKETS = 100_000  # tracked senders per limiter; the oldest are forgotten beyond this


@dataclass(frozen=True)
class Reply:
    topic: str
    payload: bytes


class Rejection(Exception):
    """A message refused with a protocol error code (one of protocol.ERRORS)."""

    def __init__(self, code: str, msg: str, ref: bytes | None = None) -> None:
        super().__init__(f"{code}: {msg}")
        assert code in protocol.ERRORS, code
        self.code = code
        self.msg = msg
        self.ref = ref


def error_payload(code: str, msg: str, ref: bytes | None = None) -> bytes:
    body = protocol.message("error", code=code, msg=msg[:MAX_ERROR_MSG], ref=ref)
    return bytes(protocol.encode(body))


def encode(t: str, **fields: object) -> bytes:
    return bytes(protocol.encode(protocol.message(t, **fields)))


class RateLimiter:
    """Token buckets per sender; bounded memory (least recently refilled senders go first)."""

    def __init__(self, bucket: Bucket, clock: Callable[[], float]) -> None:
        self._bucket = bucket
        self._clock = clock
        self._state: collections.OrderedDict[Hashable, tuple[float, float]] = (
            collections.OrderedDict())

    def allow(self, who: Hashable) -> bool:
        now = self._clock()
        tokens, at = self._state.pop(who, (self._bucket.burst, now))
        tokens = min(self._bucket.burst, tokens + (now - at) * self._bucket.per_s)
        allowed = tokens >= 1.0
        self._state[who] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._state) > MAX_BUCKETS:
            self._state.popitem(last=False)
        return allowed

    def retry_after(self, who: Hashable) -> int:
        """Whole seconds until ``who`` may send again (at least 1)."""
        tokens, _ = self._state.get(who, (0.0, 0.0))
        return max(1, int((1.0 - tokens) / self._bucket.per_s + 0.999))
