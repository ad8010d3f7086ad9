"""Linux power supplies (``/sys/class/power_supply/*``, kernel ABI sysfs-class-power).

Units are the kernel's: ``capacity`` %, ``temp`` tenths of °C, ``voltage_now`` µV,
``current_now`` µA (sign differs between drivers: ACPI laptops report discharge as positive,
Qualcomm phones report charge as negative -- stored as read, never interpreted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hal._read import list_dir, read_attr, read_int_attr
from hal._thermal import OVERHEAT_THERMAL_STATUS, battery_temp_problem
from hal.state import BatteryStatus, PluggedSource

STATUS_BY_SYSFS: dict[str, BatteryStatus] = {
    "Charging": "charging",
    "Discharging": "discharging",
    "Full": "full",
    "Not charging": "not_charging",
    "Unknown": "unknown",
}

# External supplies by `type`, as Android's healthd classifies them (system/core healthd
# BatteryMonitor.cpp supplyTypeMap): wall-charger flavours of USB count as AC. "Wipower" is
# Qualcomm's wireless type.
PLUGGED_BY_TYPE: dict[str, PluggedSource] = {
    "Mains": "ac",
    "UPS": "ac",
    "USB_DCP": "ac",
    "USB_CDP": "ac",
    "USB_ACA": "ac",
    "USB_C": "ac",
    "USB_PD": "ac",
    "USB_HVDCP": "ac",
    "USB_HVDCP_3": "ac",
    "BrickID": "ac",
    "USB": "usb",
    "USB_PD_DRP": "usb",
    "Wireless": "wireless",
    "Wipower": "wireless",
}
# A `type` "USB" supply names the attached port in `usb_type`, the active one in brackets
# ("Unknown SDP CDP [DCP] PD"): a dedicated/charging port or PD source is a wall charger.
AC_USB_TYPES = frozenset({"DCP", "CDP", "ACA", "C", "PD", "PD_PPS", "BrickID"})
# When several supplies are online at once, report the strongest.
PLUGGED_PRIORITY: tuple[PluggedSource, ...] = ("ac", "usb", "wireless", "dock")
OVERHEAT_HEALTH = frozenset({"Overheat", "Hot"})


@dataclass
class BatteryReading:
    name: str
    percent: int | None = None
    status: BatteryStatus | None = None
    temp_dc: int | None = None
    voltage_uv: int | None = None
    current_ua: int | None = None
    thermal_status: int | None = None  # OVERHEAT_THERMAL_STATUS when health says overheat


@dataclass
class PowerReading:
    battery: BatteryReading | None
    plugged: PluggedSource | None


def _supplies(root: Path, problems: list[str]) -> list[tuple[Path, str]]:
    base = root / "sys" / "class" / "power_supply"
    found = []
    for entry in list_dir(base, problems, "power_supply"):
        kind = read_attr(entry / "type", problems, f"power_supply/{entry.name}/type")
        if kind is not None:
            found.append((entry, kind))
    return found


def _is_system_battery(entry: Path, kind: str) -> bool:
    # scope "Device": the battery of a peripheral (HID mouse, game pad, stylus), not ours.
    return kind == "Battery" and read_attr(entry / "scope", [], "") != "Device"


def _is_present(entry: Path) -> bool:
    # `present` 0 is an empty bay (a laptop's removed second battery); absent means present.
    return read_attr(entry / "present", [], "") != "0"


def _present_system_batteries(supplies: list[tuple[Path, str]]) -> list[Path]:
    return [e for e, kind in supplies if _is_system_battery(e, kind) and _is_present(e)]


def system_batteries(root: Path, problems: list[str]) -> list[Path]:
    """Present system batteries, by name (BAT0 before BAT1)."""
    return _present_system_batteries(_supplies(root, problems))


def _plugged_kind(entry: Path, kind: str) -> PluggedSource | None:
    plugged = PLUGGED_BY_TYPE.get(kind)
    if plugged == "usb" and kind == "USB":
        usb_type = read_attr(entry / "usb_type", [], "") or ""
        active = [w[1:-1] for w in usb_type.split() if w.startswith("[") and w.endswith("]")]
        if active and active[0] in AC_USB_TYPES:
            return "ac"
    return plugged


def _plugged(supplies: list[tuple[Path, str]], problems: list[str]) -> PluggedSource | None:
    """The strongest online external supply; "none" when all read offline; None: no supply."""
    online: set[PluggedSource] = set()
    readable = False
    for entry, kind in supplies:
        plugged = _plugged_kind(entry, kind)
        if plugged is None:
            continue
        value = read_int_attr(entry / "online", problems, f"power_supply/{entry.name}/online")
        if value is None:
            continue
        readable = True
        if value != 0:  # 1 online, 2 online programmable (ABI)
            online.add(plugged)
    for plugged in PLUGGED_PRIORITY:
        if plugged in online:
            return plugged
    return "none" if readable else None


def _read_battery(entry: Path, problems: list[str]) -> BatteryReading:
    label = f"power_supply/{entry.name}"
    reading = BatteryReading(name=entry.name)
    # The governor cannot judge a battery without these two: their absence is a problem.
    problems.extend(
        f"{label}/{core}: missing" for core in ("capacity", "status") if not (entry / core).exists()
    )

    capacity = read_int_attr(entry / "capacity", problems, f"{label}/capacity")
    if capacity is not None and not 0 <= capacity <= 100:
        problems.append(f"{label}/capacity: implausible {capacity} % dropped")
        capacity = None
    reading.percent = capacity

    status = read_attr(entry / "status", problems, f"{label}/status")
    if status is not None:
        reading.status = STATUS_BY_SYSFS.get(status)
        if reading.status is None:
            problems.append(f"{label}/status: unknown value {status!r}")

    temp = read_int_attr(entry / "temp", problems, f"{label}/temp")
    if temp is not None and (why := battery_temp_problem(temp)) is not None:
        problems.append(f"{label}/temp: {why}")
        temp = None
    reading.temp_dc = temp

    reading.voltage_uv = read_int_attr(entry / "voltage_now", problems, f"{label}/voltage_now")
    reading.current_ua = read_int_attr(entry / "current_now", problems, f"{label}/current_now")
    if read_attr(entry / "health", problems, f"{label}/health") in OVERHEAT_HEALTH:
        reading.thermal_status = OVERHEAT_THERMAL_STATUS
    return reading


def read_power(root: Path, problems: list[str]) -> PowerReading:
    supplies = _supplies(root, problems)
    batteries = _present_system_batteries(supplies)
    # Several system batteries (a laptop with two bays) report the first; see docs/HAL.md.
    battery = _read_battery(batteries[0], problems) if batteries else None
    return PowerReading(battery=battery, plugged=_plugged(supplies, problems))
