"""Broker accounts (device and token) in Mosquitto's password file, shared by ``serve`` and the
CLI: every edit happens under an exclusive lock on ``passwd.lock``, re-reads the file, rewrites it
atomically and makes the running Mosquitto reload before the lock is released, so two writers
never lose each other's accounts and no SIGHUP falls into another one's reload (Mosquitto drops
a SIGHUP that arrives while it is reloading; docs/BROKER.md).

``serve`` reloads through its :class:`gateway.broker.Broker` (which waits for the reload to
finish); another process signals the Mosquitto named in ``serve.json`` and waits until the new
account can log in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.broker import BrokerEndpoint, BrokerError, probe_login
from gateway.config import StatePaths
from gateway.passwords import PasswordFile

log = logging.getLogger(__name__)

Reload = Callable[[], None]
RELOAD_TIMEOUT_S = 10.0
CONNACK_ACCEPTED = 0


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on ``path``, across processes."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class Accounts:
    def __init__(self, paths: StatePaths, reload: Reload | None) -> None:
        """``reload`` makes the running broker re-read the file; None when nothing runs (the
        accounts take effect when it starts) or the broker is external."""
        self._paths = paths
        self._reload = reload

    def apply(self, add: Sequence[tuple[str, str]] = (), remove: Sequence[str] = ()) -> None:
        """Add or replace ``add`` accounts and drop ``remove`` ones in one rewrite and reload."""
        if not add and not remove:
            return
        with locked(self._paths.accounts_lock):
            passwords = PasswordFile(self._paths.passwords)
            passwords.set_many(add)
            for username in remove:
                passwords.remove(username)
            passwords.save()
            if self._reload is not None:
                self._reload()


@dataclass(frozen=True)
class ServeInfo:
    """What a running ``serve`` publishes about itself in ``serve.json``."""

    pid: int
    mosquitto_pid: int | None  # None with an external broker
    device_url: str
    host: str
    port: int
    gateway_url: str
    counters: dict[str, int]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ServeInfo | None:
        """The info of a ``serve`` that is still alive, else None."""
        try:
            info = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return info if _alive(info.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_mosquitto(pid: int) -> bool:
    """Guard against a recycled pid: only ever signal a process that is Mosquitto."""
    try:
        return b"mosquitto" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def signal_reload(info: ServeInfo, probe: BrokerEndpoint) -> None:
    """SIGHUP the Mosquitto of a running ``serve`` and return once ``probe`` (an account the
    new file adds) can log in: Mosquitto is single threaded, so that login proves the reload
    is over. Called under the accounts lock, so no other reload is in progress."""
    pid = info.mosquitto_pid
    if pid is None or not _is_mosquitto(pid):
        raise BrokerError("serve.json names no running Mosquitto to reload")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    delay = 0.005
    while True:
        # The SIGHUP is acted on in Mosquitto's next loop turn: a login answered before that
        # is refused. This bounded retry waits for that turn (there is no other signal of it).
        if probe_login(probe) == CONNACK_ACCEPTED:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"{probe.username} cannot log in {RELOAD_TIMEOUT_S:g} s after reload")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
