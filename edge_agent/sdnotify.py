"""systemd's notify protocol (sd_notify(3)) without libsystemd: datagrams to $NOTIFY_SOCKET.

Under the Pi's unit (Type=notify, WatchdogSec=) the agent says READY=1 once it runs and
WATCHDOG=1 from its event loop at half the watchdog interval, so a stalled loop (not just a dead
process) gets the service restarted. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping


def _address(environ: Mapping[str, str]) -> str | None:
    path = environ.get("NOTIFY_SOCKET")
    if not path or path[0] not in "/@":
        return None
    return "\0" + path[1:] if path[0] == "@" else path  # "@": Linux abstract namespace


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one notification; False when not under systemd or the socket is gone."""
    address = _address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_period_s(environ: Mapping[str, str] = os.environ) -> float | None:
    """Half the watchdog interval systemd set for this process, or None without a watchdog."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def keep_alive(environ: Mapping[str, str] = os.environ) -> None:
    """READY=1, then WATCHDOG=1 every half interval until cancelled (then STOPPING=1)."""
    notify("READY=1", environ)
    period = watchdog_period_s(environ)
    try:
        if period is None:
            await asyncio.Event().wait()  # nothing to send until cancelled
        while period is not None:
            await asyncio.sleep(period)  # the period *is* the protocol here, not a sync wait
            notify("WATCHDOG=1", environ)
    finally:
        notify("STOPPING=1", environ)
