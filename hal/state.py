"""One read of a device's state, in the units the hardware reports them.

Native units are kept (tenths of °C for batteries as sysfs gives them, millidegrees for thermal
zones, µV, µA, percent) so nothing is lost or rounded before the governor sees it. ``None`` means
"not known on this device", never zero. ``problems`` names every reading that failed, so a
partial state says why it is partial.

The governor in ``edge_agent.core`` reads these attributes by name (it must also run on
MicroPython, where this module does not exist), so the names here are a contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

BatteryStatus = Literal["charging", "discharging", "full", "not_charging", "unknown"]
PluggedSource = Literal["ac", "usb", "wireless", "dock", "none"]

# Raspberry Pi `vcgencmd get_throttled` bits (raspberrypi.com documentation, get_throttled).
PI_UNDERVOLTAGE_NOW = 1 << 0
PI_FREQ_CAPPED_NOW = 1 << 1
PI_THROTTLED_NOW = 1 << 2
PI_SOFT_TEMP_LIMIT_NOW = 1 << 3
PI_UNDERVOLTAGE_OCCURRED = 1 << 16
PI_FREQ_CAPPED_OCCURRED = 1 << 17
PI_THROTTLED_OCCURRED = 1 << 18
PI_SOFT_TEMP_LIMIT_OCCURRED = 1 << 19
PI_NOW_MASK = 0xF

# android.os.PowerManager.THERMAL_STATUS_*
ANDROID_THERMAL_NAMES = ("none", "light", "moderate", "severe", "critical", "emergency", "shutdown")


@dataclass(frozen=True)
class ThermalZone:
    name: str  # the zone's `type` (free text: cpu-thermal, battery, skin-therm, ...)
    temp_mc: int  # millidegrees Celsius


@dataclass
class DeviceState:
    source: str  # backend that produced it: "sysfs", "termux", "simulated", "mains"
    read_at: float  # time.time() of the read
    battery_present: bool = False
    battery_percent: int | None = None  # 0..100
    battery_status: BatteryStatus | None = None
    plugged: PluggedSource | None = None
    battery_temp_dc: int | None = None  # tenths of °C
    battery_voltage_uv: int | None = None
    battery_current_ua: int | None = None  # sign differs between drivers: never trust it alone
    zones: list[ThermalZone] = field(default_factory=list)
    pi_throttled: int | None = None  # raw get_throttled mask, see PI_* bits
    android_thermal_status: int | None = None  # 0..6, see ANDROID_THERMAL_NAMES
    cpu_count: int = 1
    load_1m: float | None = None
    metered: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def hottest_zone(self) -> ThermalZone | None:
        return max(self.zones, key=lambda z: z.temp_mc, default=None)

    @property
    def hottest_zone_mc(self) -> int | None:
        z = self.hottest_zone
        return None if z is None else z.temp_mc

    @property
    def charging(self) -> bool | None:
        """Is external power feeding the device? ``None`` when nothing says either way."""
        if self.plugged is not None:
            return self.plugged != "none"
        if self.battery_status in ("charging", "full"):
            return True
        if self.battery_status == "discharging":
            return False
        return None if self.battery_present else True


class Backend(Protocol):
    """A source of device states. ``read`` never raises: failures land in ``problems``."""

    name: str

    def read(self) -> DeviceState: ...
