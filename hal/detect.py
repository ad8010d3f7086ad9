"""Which backend fits this device, and opening it.

Rules, first match wins (each answer says why):
1. ``termux``: ``TERMUX_VERSION`` is set (Termux exports it in every shell) or
   ``termux-battery-status`` is on PATH. Checked first: on Android, /sys/class/power_supply is
   usually hidden from apps by SELinux, so sysfs would wrongly look battery-less.
2. ``sysfs``: a present system battery under ``<root>/sys/class/power_supply`` (a laptop, a
   rooted phone, a Pi with a UPS HAT whose driver exposes a battery).
3. ``mains``: no battery. The device is running, so it is on external power: the same sysfs
   reader (thermal zones, Pi throttling, load) with ``plugged="ac"``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from hal._supply import system_batteries
from hal._thermal import has_zone
from hal.state import Backend
from hal.sysfs import DEFAULT_VCGENCMD_TIMEOUT_S, MainsBackend, SysfsBackend
from hal.termux import TermuxBackend

KINDS = ("mains", "simulated", "sysfs", "termux")
TERMUX_COMMAND = "termux-battery-status"


def detect(
    sysfs_root: str | Path = "/", *, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """``(kind, why)`` for this device; ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    if "TERMUX_VERSION" in env:
        return "termux", f"TERMUX_VERSION={env['TERMUX_VERSION']} is set"
    found = shutil.which(TERMUX_COMMAND, path=env.get("PATH", os.defpath))
    if found is not None:
        return "termux", f"{TERMUX_COMMAND} is on PATH at {found}"
    root = Path(sysfs_root)
    batteries = system_batteries(root, [])
    if batteries:
        return (
            "sysfs",
            f"system battery {batteries[0].name} under {root / 'sys/class/power_supply'}",
        )
    if has_zone(root):
        return "mains", "no battery; thermal zones readable: mains powered"
    return "mains", "no battery and no thermal zone: mains powered, only load is known"


def open_backend(
    kind: str | None = None,
    *,
    sysfs_root: str | Path = "/",
    vcgencmd: str = "vcgencmd",
    termux_command: str = TERMUX_COMMAND,
    timeout_s: float = 5.0,
) -> Backend:
    """A backend of ``kind`` (detected when ``None``); ValueError for an unknown kind.

    ``timeout_s`` bounds every command a backend runs; vcgencmd, which answers in milliseconds,
    is held to at most ``DEFAULT_VCGENCMD_TIMEOUT_S`` of it.
    """
    if kind is None:
        kind, _ = detect(sysfs_root)
    vcgencmd_timeout_s = min(timeout_s, DEFAULT_VCGENCMD_TIMEOUT_S)
    if kind == "termux":
        return TermuxBackend(termux_command, timeout_s, sysfs_root=sysfs_root)
    if kind == "sysfs":
        return SysfsBackend(sysfs_root, vcgencmd, vcgencmd_timeout_s)
    if kind == "mains":
        return MainsBackend(sysfs_root, vcgencmd, vcgencmd_timeout_s)
    if kind == "simulated":
        from hal.simulated import SimulatedBackend  # only when asked: no simulation on a device

        return SimulatedBackend()
    raise ValueError(f"unknown backend kind {kind!r}: choose one of {', '.join(KINDS)}")
