"""The Linux sysfs backend: Raspberry Pi, laptops, Android with a readable /sys.

Everything is read under ``root`` (``/`` on a device, a fixture tree in tests), so one code
path serves real hardware and recorded trees. ``read`` never raises: every failed or
implausible reading becomes a named entry of ``DeviceState.problems``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hal._cpu import cpu_count, load_1m
from hal._pi import read_pi_throttled
from hal._supply import read_power
from hal._thermal import read_zones
from hal.state import DeviceState

# vcgencmd answers in ~10 ms; anything near a second means the firmware mailbox is stuck.
DEFAULT_VCGENCMD_TIMEOUT_S = 2.0


class SysfsBackend:
    name = "sysfs"

    def __init__(
        self,
        root: str | Path = "/",
        vcgencmd: str = "vcgencmd",
        timeout_s: float = DEFAULT_VCGENCMD_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.vcgencmd = vcgencmd
        self.timeout_s = timeout_s
        self.clock = clock

    def read(self) -> DeviceState:
        problems: list[str] = []
        state = DeviceState(source=self.name, read_at=self.clock(), problems=problems)
        power = read_power(self.root, problems)
        battery = power.battery
        if battery is not None:
            state.battery_present = True
            state.battery_percent = battery.percent
            state.battery_status = battery.status
            state.battery_temp_dc = battery.temp_dc
            state.battery_voltage_uv = battery.voltage_uv
            state.battery_current_ua = battery.current_ua
            state.android_thermal_status = battery.thermal_status
        state.plugged = power.plugged
        state.zones = read_zones(self.root, problems)
        state.pi_throttled = read_pi_throttled(self.root, self.vcgencmd, self.timeout_s, problems)
        state.cpu_count = cpu_count(self.root, problems)
        state.load_1m = load_1m(self.root, problems)
        # Plain Linux has no honest, cheap metered signal (see docs/HAL.md): unknown.
        state.metered = None
        return state


class MainsBackend(SysfsBackend):
    """A device with no battery (a Pi, a desktop): it runs, so external power feeds it.

    Reads exactly what ``SysfsBackend`` reads, but reports ``plugged="ac"`` while no battery
    is present -- rather than unknown, or "none" from a port that does not carry the feed (a
    board powered through its GPIO header) -- because a battery-less device that is running is
    on external power. If a battery does appear (a UPS HAT driver loaded later), it is reported
    as read and ``plugged`` comes from the supplies as on any sysfs device.
    """

    name = "mains"

    def read(self) -> DeviceState:
        state = super().read()
        if not state.battery_present:
            state.plugged = "ac"
        return state
