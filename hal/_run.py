"""Running a device tool (vcgencmd, termux-*) with a hard time bound, never raising.

The tools we call are known to hang: ``termux-battery-status`` blocks forever when the
Termux:API app is missing or asleep (termux/termux-api#267, #558, #861), and vcgencmd talks to
firmware through /dev/vcio. The command runs in its own session so that on timeout the whole
process group is killed -- ``termux-battery-status`` is a shell script whose ``termux-api``
child would otherwise outlive it and pile up, one per read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from hal._read import os_error_name

# Output of these tools is a line or a small JSON object; more is a broken tool.
_MAX_OUTPUT_CHARS = 65536
# After a kill: how long to wait for the pipes to close before abandoning them.
_REAP_S = 1.0


@dataclass(frozen=True)
class CommandResult:
    stdout: str | None  # None when the command did not finish successfully
    problem: str | None  # why, named for DeviceState.problems


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:120] if lines else ""


def _kill_group(proc: subprocess.Popen[str]) -> None:
    # ProcessLookupError: the group ended between the timeout and the kill.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_bounded(argv: Sequence[str], timeout_s: float, label: str) -> CommandResult:
    """Run ``argv``; its stdout on exit status 0, else a problem ``"<label>: <what>"``."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError:
        return CommandResult(None, f"{label}: command not found ({argv[0]})")
    except OSError as exc:  # EACCES: not executable; ENOEXEC: not a program
        return CommandResult(None, f"{label}: cannot run ({os_error_name(exc)})")
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            # Every writer of the pipes was in the group and is dead now, so this returns at
            # once -- unless a descendant left the group: then closing the pipes abandons it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=_REAP_S)
            return CommandResult(None, f"{label}: timed out after {timeout_s:g} s (killed)")
    if proc.returncode != 0:
        said = _first_line(out) or _first_line(err) or "no output"
        return CommandResult(None, f"{label}: exit status {proc.returncode}: {said}")
    if len(out) > _MAX_OUTPUT_CHARS:
        return CommandResult(None, f"{label}: output too long ({len(out)} chars)")
    return CommandResult(out, None)
