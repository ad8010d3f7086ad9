"""The governor: its rules (shared with MicroPython), on real DeviceStates, and over whole
simulated nights against BOINC's policy (the benchmark's claims, as assertions)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.governor import SCENARIOS, BoincAndroid, OurGovernor, Scenario, compare, run
from edge_agent.core import governor as g
from hal.simulated import SimulatedBackend
from hal.state import DeviceState, ThermalZone
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "mpy"))  # mpyassert, as tests/mpy/run.py arranges
# Imported by name so mypy does not type-check MicroPython test code.
rules = importlib.import_module("tests.mpy.test_governor")

RULES = sorted(name for name in dir(rules) if name.startswith("test_"))


@pytest.mark.parametrize("name", RULES)
def test_rule_shared_with_micropython(name: str) -> None:
    rule: Callable[[], None] = getattr(rules, name)
    rule()


def test_reads_the_real_device_state_contract() -> None:
    state = DeviceState(
        source="sysfs",
        read_at=0.0,
        battery_present=True,
        battery_percent=60,
        battery_status="charging",
        plugged="usb",
        battery_temp_dc=412,
        zones=[ThermalZone("cpu-0-0-usr", 52000)],
        cpu_count=8,
    )
    d = g.Governor().decide(state, 0.0, 0)
    assert (d.action, d.reason, d.text) == (
        g.PAUSE,
        g.R_BATTERY_HOT,
        "paused: battery 41.2 °C > 40.0 °C",
    )
    unplugged = DeviceState(source="sysfs", read_at=0.0, battery_present=True, plugged="none")
    assert g.Governor().decide(unplugged, 0.0, 0).reason == g.R_NOT_CHARGING


NIGHTS = {s.name: compare(s) for s in SCENARIOS}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_night_is_safe_and_calm(scenario: Scenario) -> None:
    r: dict[str, Any] = NIGHTS[scenario.name]
    assert r["peak_battery_over_limit_c"] <= 0.5, r
    assert r["flips_per_hour"] <= 6, r
    assert r["minutes_computing_unplugged"] == 0, r
    if scenario.has_battery and scenario.unplug_after_h is None:
        # the charger can fill it overnight: the owner wakes to a charged phone
        assert r["battery_pct_at_wake"] >= 95, r


def test_normal_night_beats_boinc_by_control() -> None:
    r = NIGHTS["normal"]
    assert r["work_vs_boinc"] >= 1.15, r
    # BOINC's on/off policy flaps on this model; ours does not
    assert r["boinc"]["flips_per_hour"] > 4 * r["flips_per_hour"], r


def test_boinc_baseline_is_faithful() -> None:
    # It never computes below 90 %, holds 300 s after each suspend, and flaps in a hot room.
    sim = SimulatedBackend("phone", soc=0.5)
    boinc = BoincAndroid()
    assert boinc.duty(sim.read(), 0.0, 0) == 0.0
    assert boinc.charge_resume_s == 300.0
    hot = NIGHTS["hot-room"]["boinc"]
    assert hot["flips_per_hour"] >= 10, hot


def test_unplugged_at_three_stops_at_once() -> None:
    scenario = next(s for s in SCENARIOS if s.unplug_after_h is not None)
    seen: list[tuple[bool, float]] = []
    run(scenario, OurGovernor(), on_tick=lambda sim, duty: seen.append((sim.plugged, duty)))
    unplugged = [duty for plugged, duty in seen if not plugged]
    assert unplugged and max(unplugged) == 0.0
    assert any(duty > 0 for plugged, duty in seen if plugged)
