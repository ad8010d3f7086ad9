"""``edge-agent status``: one reading, the governor's decision on it, and why.

``report`` builds a flat JSON-able dict (the ``--json`` output, keys documented in
docs/GOVERNOR.md); ``render`` turns it into a short table for people.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_agent.core.governor import ANDROID_THERMAL_NAMES, Decision, Governor, Settings
from hal.state import PI_NOW_MASK, Backend, DeviceState


def decide_once(state: DeviceState, settings: Settings | None = None) -> Decision:
    """The decision a freshly started governor makes on this state, on the local clock."""
    local = time.localtime()
    return Governor(settings).decide(state, time.monotonic(), local.tm_hour * 60 + local.tm_min)


def throttled(state: DeviceState) -> bool | None:
    """Is firmware or the OS limiting the device now? None when nothing reports it."""
    signals: list[bool] = []
    if state.pi_throttled is not None:
        signals.append(bool(state.pi_throttled & PI_NOW_MASK))
    if state.android_thermal_status is not None:
        signals.append(state.android_thermal_status >= 2)  # MODERATE and above
    return any(signals) if signals else None


def report(backend: Backend, why: str, state: DeviceState, decision: Decision) -> dict[str, Any]:
    zone = state.hottest_zone
    return {
        "backend": backend.name,
        "backend_reason": why,
        "read_at": state.read_at,
        "battery_present": state.battery_present,
        "battery_percent": state.battery_percent,
        "battery_status": state.battery_status,
        "plugged": state.plugged,
        "charging": state.charging,
        "battery_temp_c": None if state.battery_temp_dc is None else state.battery_temp_dc / 10,
        "hottest_zone": None if zone is None else zone.name,
        "hottest_zone_c": None if zone is None else zone.temp_mc / 1000,
        "throttled": throttled(state),
        "pi_throttled": None if state.pi_throttled is None else hex(state.pi_throttled),
        "android_thermal_status": state.android_thermal_status,
        "metered": state.metered,
        "cpu_count": state.cpu_count,
        "problems": list(state.problems),
        **decision.as_dict(),
    }


def _show(value: Any, unit: str = "") -> str:
    if value is None:
        return "[dim]unknown[/dim]"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def render(r: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]backend[/bold] {r['backend']}: {r['backend_reason']}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    battery = _show(r["battery_percent"], " %") if r["battery_present"] else "none (mains)"
    if r["battery_status"]:
        battery += f" ({r['battery_status']})"
    android = r["android_thermal_status"]
    rows = [
        ("battery", battery),
        ("on external power", _show(r["charging"])),
        ("battery temperature", _show(r["battery_temp_c"], " °C")),
        (
            "hottest zone",
            _show(r["hottest_zone_c"], " °C")
            + (f" ({r['hottest_zone']})" if r["hottest_zone"] else ""),
        ),
        ("throttled now", _show(r["throttled"])),
    ]
    if r["pi_throttled"] is not None:
        rows.append(("Pi get_throttled", r["pi_throttled"]))
    if android is not None:
        name = ANDROID_THERMAL_NAMES[android] if 0 <= android < 7 else str(android)
        rows.append(("Android thermal", name))
    rows.append(("metered network", _show(r["metered"])))
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    colour = {"run": "green", "pause": "yellow", "stop": "red"}[r["decision"]]
    head = r["decision"].upper()
    if r["decision"] == "run":
        head += f" {int(r['duty'] * 100 + 0.5)}% on {r['threads']} threads"
    console.print(f"[bold {colour}]{head}[/bold {colour}]  {r['text']}  [dim]({r['reason']})[/dim]")
    for problem in r["problems"]:
        console.print(f"[yellow]problem:[/yellow] {problem}")
