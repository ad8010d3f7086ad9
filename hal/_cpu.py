"""CPU count (``/sys/devices/system/cpu/online``) and load (``/proc/loadavg``) under a root."""

from __future__ import annotations

import os
from pathlib import Path

from hal._read import read_attr


def parse_cpu_list(text: str) -> int:
    """Number of CPUs in a kernel cpu list such as ``0-3,6,8-9``; ValueError when malformed."""
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(part)
        count += high - low + 1
    return count


def cpu_count(root: Path, problems: list[str]) -> int:
    """Online CPUs (phones take big cores offline), else the interpreter's count."""
    text = read_attr(root / "sys/devices/system/cpu/online", problems, "cpu/online")
    if text is not None:
        try:
            return parse_cpu_list(text)
        except ValueError:
            problems.append(f"cpu/online: not a cpu list: {text[:40]!r}")
    return os.cpu_count() or 1


def load_1m(root: Path, problems: list[str]) -> float | None:
    text = read_attr(root / "proc/loadavg", problems, "loadavg")
    if text is None:
        return None
    try:
        return float(text.split()[0])
    except ValueError:
        problems.append(f"loadavg: not a load average: {text[:40]!r}")
        return None
