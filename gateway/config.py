"""Where the gateway keeps its state, and the service's limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "edge-gateway"


def default_state_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


@dataclass(frozen=True)
class StatePaths:
    """Files in the state directory (the broker's own files are under ``broker/``)."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite3"

    @property
    def key(self) -> Path:
        return self.root / "gateway.key"

    @property
    def passwords(self) -> Path:
        return self.root / "broker" / "passwd"

    @property
    def accounts_lock(self) -> Path:
        return self.root / "broker" / "passwd.lock"

    @property
    def serve_info(self) -> Path:
        """Written by a running ``serve``: its pid, Mosquitto's pid and ports, counters."""
        return self.root / "serve.json"

    def ensure(self) -> StatePaths:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "broker").mkdir(mode=0o700, exist_ok=True)
        return self


@dataclass(frozen=True)
class Bucket:
    """A token bucket: ``burst`` messages at once, then ``per_s`` a second."""

    burst: float
    per_s: float


@dataclass(frozen=True)
class ServiceLimits:
    state: Bucket = Bucket(burst=4, per_s=0.2)  # the agent sends at most one per 30 s
    pull: Bucket = Bucket(burst=8, per_s=2.0)
    blob: Bucket = Bucket(burst=64, per_s=64.0)
    # An honest device claims once per 64 acks (a board 32) or, idle, once no ack came for 1 s
    # (a board 2 s), and re-sends each unanswered claim every 30 s (a board 60 s) and, a board,
    # all of them at each reconnect: well under one a second, in bursts of its pending claims.
    claim: Bucket = Bucket(burst=32, per_s=1.0)
    retry_empty_s: int = 30  # no_work retry hints, seconds
    retry_unfit_s: int = 60
    retry_busy_s: int = 15
    enrol_batch_s: float = 0.02  # gather enrolments for one password-file rewrite and reload
    token_retire_s: float = 2.0  # remove a spent token account after its reply has gone out
    token_prune_every_s: float = 600.0  # look for expired unused tokens this often
    # An expired unused token's account is removed this long after its expiry: no enrolment
    # judged by a worker whose clock is a little behind can still be using it.
    token_prune_grace_s: float = 60.0
    max_enrols_in_flight: int = 256
    incoming_queue: int = 10_000  # MQTT messages waiting for a handler; more are shed
    max_unacked_replies: int = 1000  # replies published whose PUBACK has not come back yet
    expiry_max_wait_s: float = 60.0  # re-read the next deadline at least this often
    snapshot_every_s: float = 5.0  # serve.json counters refresh
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0
