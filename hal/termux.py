"""The Termux backend: an Android phone without root, through the termux-api commands.

``termux-battery-status`` prints the JSON of termux-api's BatteryStatusAPI.java: keys are left
out when Android does not report them; ``temperature`` is °C as a float (stored as tenths,
rounded); ``voltage`` is mV (stored as µV); ``current`` is µA with a device-dependent sign
(stored as read). Thermal zones come from the same sysfs reader as ``SysfsBackend`` (on many
phones /sys/class/thermal is readable without root; where SELinux denies it that is a named
problem). Each command is bounded by ``timeout_s`` and killed past it: termux-api commands hang
when the Termux:API app is missing or asleep.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hal._cpu import cpu_count, load_1m
from hal._run import run_bounded
from hal._thermal import OVERHEAT_THERMAL_STATUS, battery_temp_problem, read_zones
from hal.state import BatteryStatus, DeviceState, PluggedSource

STATUS_BY_TERMUX: dict[str, BatteryStatus] = {
    "CHARGING": "charging",
    "DISCHARGING": "discharging",
    "FULL": "full",
    "NOT_CHARGING": "not_charging",
    "UNKNOWN": "unknown",
}
PLUGGED_BY_TERMUX: dict[str, PluggedSource] = {
    "UNPLUGGED": "none",
    "PLUGGED_AC": "ac",
    "PLUGGED_USB": "usb",
    "PLUGGED_WIRELESS": "wireless",
    "PLUGGED_DOCK": "dock",
}
# Android always reports these; without them the governor cannot judge the battery.
CORE_KEYS = ("percentage", "status", "plugged", "temperature")
# WifiManager's SupplicantState when associated with an access point.
WIFI_CONNECTED = "COMPLETED"


def _json_object(text: str, problems: list[str], label: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        problems.append(f"{label}: output is not JSON: {text.strip()[:60]!r}")
        return None
    if not isinstance(doc, dict):
        problems.append(f"{label}: output is not a JSON object: {text.strip()[:60]!r}")
        return None
    if "API_ERROR" in doc:  # termux-api's way of saying the call failed
        problems.append(f"{label}: API_ERROR {str(doc['API_ERROR'])[:80]!r}")
        return None
    return doc


def _number(doc: dict[str, Any], key: str, problems: list[str], label: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{label}: {key} is not a number: {value!r}")
        return None
    return value


def _integer(doc: dict[str, Any], key: str, problems: list[str], label: str) -> int | None:
    value = _number(doc, key, problems, label)
    if value is not None and not isinstance(value, int):
        problems.append(f"{label}: {key} is not an integer: {value!r}")
        return None
    return value


def _percent(doc: dict[str, Any], problems: list[str], label: str) -> int | None:
    percent = _integer(doc, "percentage", problems, label)
    if percent is None:
        # Older termux-api (and BatteryManager without CAPACITY) give only level/scale.
        level = _integer(doc, "level", problems, label)
        scale = _integer(doc, "scale", problems, label)
        if level is not None and scale:
            percent = level * 100 // scale
    if percent is not None and not 0 <= percent <= 100:
        problems.append(f"{label}: implausible percentage {percent} dropped")
        return None
    return percent


def _enum(
    doc: dict[str, Any], key: str, table: dict[str, Any], problems: list[str], label: str
) -> Any:
    value = doc.get(key)
    if value is None:
        return None
    if value not in table:
        # termux-api prints unknown codes as e.g. "PLUGGED_8" or "9".
        problems.append(f"{label}: unknown {key} {value!r}")
        return None
    return table[value]


def apply_battery_status(text: str, state: DeviceState, label: str) -> None:
    """Fill ``state``'s battery fields from ``termux-battery-status`` output."""
    problems = state.problems
    doc = _json_object(text, problems, label)
    if doc is None:
        return
    state.battery_present = doc.get("present") is not False
    state.battery_percent = _percent(doc, problems, label)
    state.battery_status = _enum(doc, "status", STATUS_BY_TERMUX, problems, label)
    state.plugged = _enum(doc, "plugged", PLUGGED_BY_TERMUX, problems, label)
    celsius = _number(doc, "temperature", problems, label)
    if celsius is not None:
        temp_dc = round(celsius * 10)
        why = battery_temp_problem(temp_dc)
        if why is None:
            state.battery_temp_dc = temp_dc
        else:
            problems.append(f"{label}: temperature {why}")
    millivolts = _integer(doc, "voltage", problems, label)
    state.battery_voltage_uv = None if millivolts is None else millivolts * 1000
    state.battery_current_ua = _integer(doc, "current", problems, label)
    if doc.get("health") == "OVERHEAT":
        state.android_thermal_status = OVERHEAT_THERMAL_STATUS
    missing = [key for key in CORE_KEYS if key not in doc]
    if "percentage" in missing and state.battery_percent is not None:
        missing.remove("percentage")  # recovered from level/scale
    if missing:
        problems.append(f"{label}: missing {', '.join(missing)}")


def metered_from_wifi(text: str, problems: list[str], label: str) -> bool | None:
    """Associated with Wi-Fi: unmetered (Android's default for Wi-Fi); else assume cellular."""
    doc = _json_object(text, problems, label)
    if doc is None:
        return None
    supplicant = doc.get("supplicant_state")
    if not isinstance(supplicant, str):
        problems.append(f"{label}: no supplicant_state")
        return None
    return supplicant != WIFI_CONNECTED


class TermuxBackend:
    name = "termux"

    def __init__(
        self,
        command: str = "termux-battery-status",
        timeout_s: float = 5.0,
        *,
        wifi_command: str | None = "termux-wifi-connectioninfo",
        sysfs_root: str | Path = "/",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self.wifi_command = wifi_command
        self.sysfs_root = Path(sysfs_root)
        self.clock = clock

    def _run(self, command: str, problems: list[str]) -> tuple[str | None, str]:
        label = os.path.basename(command)
        result = run_bounded([command], self.timeout_s, label)
        if result.problem is not None:
            problems.append(result.problem)
        return result.stdout, label

    def read(self) -> DeviceState:
        problems: list[str] = []
        # A phone has a battery: if the command fails the battery is unknown, not absent
        # (absent would read as "on external power" to the governor).
        state = DeviceState(
            source=self.name, read_at=self.clock(), battery_present=True, problems=problems
        )
        output, label = self._run(self.command, problems)
        if output is not None:
            apply_battery_status(output, state, label)
        state.zones = read_zones(self.sysfs_root, problems)
        state.cpu_count = cpu_count(self.sysfs_root, problems)
        state.load_1m = load_1m(self.sysfs_root, problems)
        if self.wifi_command is not None:
            output, label = self._run(self.wifi_command, problems)
            if output is not None:
                state.metered = metered_from_wifi(output, problems, label)
        return state
