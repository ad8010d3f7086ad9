"""sd_notify over a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from edge_agent import sdnotify


def _listener(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    return sock, path


def test_no_socket_is_a_no_op() -> None:
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.watchdog_period_s({}) is None


def test_ready_watchdog_and_stopping_reach_the_socket(tmp_path: Path) -> None:
    sock, path = _listener(tmp_path)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_period_s(env) == 0.01

    async def run() -> list[bytes]:
        task = asyncio.create_task(sdnotify.keep_alive(env))
        got = [await asyncio.to_thread(sock.recv, 64) for _ in range(3)]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        got.append(sock.recv(64))
        return got

    with sock:
        got = asyncio.run(run())
    assert got == [b"READY=1", b"WATCHDOG=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    env = {"WATCHDOG_USEC": "90000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert sdnotify.watchdog_period_s(env) is None
    assert sdnotify.watchdog_period_s({"WATCHDOG_USEC": "90000000"}) == 45.0
