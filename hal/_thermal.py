"""Thermal zones (``/sys/class/thermal/thermal_zone*/{type,temp}``) and temperature sanity.

Zone temperatures are millidegrees Celsius. Real devices have zones whose ``temp`` fails
(EINVAL, EPERM, ENODATA: iwlwifi when the radio is off, disabled Qualcomm sensors) or reads
nonsense (-273000, 0, or a value in whole degrees from a driver that ignores the ABI). Such a
reading is dropped -- never passed on as a real temperature -- and named in ``problems``.
"""

from __future__ import annotations

from pathlib import Path

from hal._read import list_dir, read_attr, read_int_attr
from hal.state import ThermalZone

# Plausible range of a zone on a running device: above -40 °C and below 150 °C (silicon shuts
# down near 110-125 °C). Readings within 1 °C of zero are unused sensors (0) or values that are
# not in millidegrees (e.g. "45"): a powered-on device is never that cold inside.
ZONE_MIN_MC = -40_000
ZONE_MAX_MC = 150_000
ZONE_NEAR_ZERO_MC = 1_000

# Battery ``temp`` (tenths of °C): anything at or below -40.0 °C or at or above 150.0 °C is a
# sentinel (Android sends Integer.MIN_VALUE when the extra is missing) or a broken thermistor.
BATTERY_MIN_DC = -400
BATTERY_MAX_DC = 1_500

# Android's thermal status is not readable here (termux-api has no call for it; sysfs has no
# file for it). The only thermal verdict the platform gives us is battery health "overheat",
# set by the charger when the battery passes its hot limit (charging stops). We report it as
# THERMAL_STATUS_SEVERE (3): conservative -- any governor threshold at or below SEVERE pauses --
# without claiming CRITICAL/EMERGENCY, which mean imminent shutdown.
OVERHEAT_THERMAL_STATUS = 3


def zone_problem(temp_mc: int) -> str | None:
    """Why a zone reading is implausible, or ``None`` when it is usable."""
    if not ZONE_MIN_MC < temp_mc < ZONE_MAX_MC:
        return f"implausible {temp_mc} m°C dropped"
    if -ZONE_NEAR_ZERO_MC < temp_mc < ZONE_NEAR_ZERO_MC:
        return f"implausible {temp_mc} m°C dropped (unused sensor or not millidegrees)"
    return None


def battery_temp_problem(temp_dc: int) -> str | None:
    if not BATTERY_MIN_DC < temp_dc < BATTERY_MAX_DC:
        return f"implausible {temp_dc} tenths of °C dropped"
    return None


def _zone_number(entry: Path) -> tuple[int, str]:
    suffix = entry.name[len("thermal_zone") :]
    return (int(suffix) if suffix.isdigit() else 1 << 30, entry.name)


def read_zones(root: Path, problems: list[str]) -> list[ThermalZone]:
    """Every plausible zone under ``root``/sys/class/thermal, in zone-number order."""
    base = root / "sys" / "class" / "thermal"
    entries = [p for p in list_dir(base, problems, "thermal") if p.name.startswith("thermal_zone")]
    entries.sort(key=_zone_number)
    zones = []
    for entry in entries:
        name = read_attr(entry / "type", problems, f"{entry.name}/type") or entry.name
        label = f"{entry.name} ({name})"
        temp = read_int_attr(entry / "temp", problems, label)
        if temp is None:
            continue
        problem = zone_problem(temp)
        if problem is not None:
            problems.append(f"{label}: {problem}")
            continue
        zones.append(ThermalZone(name=name, temp_mc=temp))
    return zones


def has_zone(root: Path) -> bool:
    base = root / "sys" / "class" / "thermal"
    return any(p.name.startswith("thermal_zone") for p in list_dir(base, [], "thermal"))
