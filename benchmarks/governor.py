"""Overnight benchmark: our governor against BOINC's policy on the same simulated devices.

Run from the repository root: ``.venv/bin/python -m benchmarks.governor``. Prints a table, then as
its last line one JSON object {"scenarios": {name: metrics}}.

Both policies drive the very same model (hal.simulated) with the same seed, asked every
DECISION_PERIOD_S simulated seconds. BOINC's Android policy is client/cs_prefs.cpp
check_suspend_processing() with its Android defaults (lib/prefs.cpp): suspend when not on
external power (run_on_batteries false), when the battery is over 40 °C (then hold 300 s,
ANDROID_BATTERY_BACKOFF), and when 0 <= charge < 90 % (hold 300 s too). It is given every core
(max_ncpus_pct 100, not its Android default 50): with 50 % it would do half the work on this
model for a reason that has nothing to do with control. On the Pi (mains, no battery) the
baseline is BOINC's desktop behaviour: it computes all the time and the Pi's firmware throttles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.core.governor import Governor, Settings
from hal.simulated import SimulatedBackend
from hal.state import DeviceState

DECISION_PERIOD_S = 10.0
NIGHT_START_MIN = 23 * 60
NIGHT_HOURS = 8.0
ANDROID_BATTERY_BACKOFF_S = 300.0


class Policy(Protocol):
    name: str

    def duty(self, state: DeviceState, now_s: float, minute_of_day: int) -> float: ...


class OurGovernor:
    name = "governor"

    def __init__(self, settings: Settings | None = None) -> None:
        self.governor = Governor(settings)

    def duty(self, state: DeviceState, now_s: float, minute_of_day: int) -> float:
        d = self.governor.decide(state, now_s, minute_of_day)
        return float(d.duty) if d.computing else 0.0


class BoincAndroid:
    """client/cs_prefs.cpp CLIENT_STATE::check_suspend_processing(), Android branch."""

    name = "boinc"

    def __init__(
        self,
        charge_min_pct: int = 90,
        max_temperature_c: float = 40.0,
        max_ncpus_pct: float = 100.0,
    ) -> None:
        self.charge_min_pct = charge_min_pct
        self.max_temperature_c = max_temperature_c
        self.max_ncpus_pct = max_ncpus_pct
        self.heat_resume_s = 0.0
        self.charge_resume_s = 0.0

    def duty(self, state: DeviceState, now_s: float, minute_of_day: int) -> float:
        if state.charging is False:  # run_on_batteries false
            return 0.0
        if now_s < self.heat_resume_s:
            return 0.0
        temp_c = None if state.battery_temp_dc is None else state.battery_temp_dc / 10.0
        if temp_c is not None and temp_c > self.max_temperature_c:
            self.heat_resume_s = now_s + ANDROID_BATTERY_BACKOFF_S
            return 0.0
        if now_s < self.charge_resume_s:
            return 0.0
        pct = state.battery_percent
        if pct is not None and pct >= 0 and pct < self.charge_min_pct:
            self.charge_resume_s = now_s + ANDROID_BATTERY_BACKOFF_S
            return 0.0
        return self.max_ncpus_pct / 100.0


class BoincDesktop:
    """BOINC on a mains-powered Linux box with default prefs: computes whenever it can."""

    name = "boinc"

    def duty(self, state: DeviceState, now_s: float, minute_of_day: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    preset: str
    ambient_c: float
    start_soc: float = 0.30
    unplug_after_h: float | None = None
    seed: int = 1

    @property
    def has_battery(self) -> bool:
        return self.preset != "pi4"

    def baseline(self) -> Policy:
        return BoincAndroid() if self.has_battery else BoincDesktop()


SCENARIOS = (
    Scenario("normal", "phone", 25.0),
    Scenario("hot-room", "phone", 32.0),
    Scenario("weak-charger", "phone-weak-charger", 25.0),
    Scenario("unplugged-0300", "phone", 25.0, unplug_after_h=4.0),
    Scenario("pi4-warm-case", "pi4", 28.0),
)


@dataclass
class Result:
    work: float = 0.0  # full-speed compute seconds
    peak_battery_c: float = -math.inf
    peak_soc_c: float = -math.inf
    flips: int = 0
    computing_unplugged_s: float = 0.0
    battery_pct_at_wake: int | None = None
    hours: float = NIGHT_HOURS

    def over_limit_c(self, scenario: Scenario, settings: Settings) -> float:
        if scenario.has_battery:
            return self.peak_battery_c - float(settings.battery_max_c)
        return self.peak_soc_c - float(settings.soc_max_c)

    @property
    def flips_per_hour(self) -> float:
        return self.flips / self.hours


def run(
    scenario: Scenario,
    policy: Policy,
    *,
    hours: float = NIGHT_HOURS,
    on_tick: Callable[[SimulatedBackend, float], None] | None = None,
) -> Result:
    """One night of scenario under policy; returns what the benchmark reports."""
    sim = SimulatedBackend(
        scenario.preset,
        soc=scenario.start_soc,
        ambient_c=scenario.ambient_c,
        start_minute_of_day=NIGHT_START_MIN,
        seed=scenario.seed,
    )
    result = Result(hours=hours)
    computing = False
    steps = int(hours * 3600 / DECISION_PERIOD_S)
    for _ in range(steps):
        if scenario.unplug_after_h is not None and sim.t_s >= scenario.unplug_after_h * 3600:
            sim.set_plugged(False)
        duty = policy.duty(sim.read(), sim.t_s, int(sim.minute_of_day))
        if (duty > 0) != computing:
            computing = duty > 0
            result.flips += 1
        if computing and not sim.plugged:
            result.computing_unplugged_s += DECISION_PERIOD_S
        sim.step(DECISION_PERIOD_S, duty)
        result.peak_battery_c = max(result.peak_battery_c, sim.batt_c)
        result.peak_soc_c = max(result.peak_soc_c, sim.soc_c)
        if on_tick is not None:
            on_tick(sim, duty)
    result.work = sim.work
    result.battery_pct_at_wake = sim.read().battery_percent
    return result


def compare(scenario: Scenario, hours: float = NIGHT_HOURS) -> dict[str, Any]:
    settings = Settings()
    ours = run(scenario, OurGovernor(settings), hours=hours)
    base = run(scenario, scenario.baseline(), hours=hours)
    return {
        "work_vs_boinc": round(ours.work / base.work, 3) if base.work > 0 else None,
        "peak_battery_over_limit_c": round(ours.over_limit_c(scenario, settings), 2),
        "flips_per_hour": round(ours.flips_per_hour, 2),
        "minutes_computing_unplugged": round(ours.computing_unplugged_s / 60, 1),
        "battery_pct_at_wake": ours.battery_pct_at_wake,
        "work_hours": round(ours.work / 3600, 2),
        "over_limit_of": "battery" if scenario.has_battery else "soc",
        "boinc": {
            "work_hours": round(base.work / 3600, 2),
            "peak_over_limit_c": round(base.over_limit_c(scenario, settings), 2),
            "flips_per_hour": round(base.flips_per_hour, 2),
            "minutes_computing_unplugged": round(base.computing_unplugged_s / 60, 1),
            "battery_pct_at_wake": base.battery_pct_at_wake,
        },
    }


def _table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Overnight (8 h from 23:00): our governor vs BOINC on the same model")
    for col in (
        "scenario",
        "policy",
        "work h",
        "vs BOINC",
        "peak over limit °C",
        "flips/h",
        "min unplugged",
        "% at wake",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "policy") else "right")
    for name, r in results.items():
        b = r["boinc"]
        ratio = "-" if r["work_vs_boinc"] is None else f"{r['work_vs_boinc']:.2f}x"
        limit = f"({r['over_limit_of']})"
        rows = (
            (name, "governor", r["work_hours"], ratio, r["peak_battery_over_limit_c"], r),
            ("", "boinc", b["work_hours"], "1.00x", b["peak_over_limit_c"], b),
        )
        for label, policy, hours, vs, over, m in rows:
            table.add_row(
                label,
                policy,
                f"{hours:.2f}",
                vs,
                f"{over:+.2f} {limit}",
                f"{m['flips_per_hour']:.1f}",
                f"{m['minutes_computing_unplugged']:.0f}",
                str(m["battery_pct_at_wake"]),
                end_section=policy == "boinc",
            )
    Console(width=120).print(table)


def main() -> None:
    results = {s.name: compare(s) for s in SCENARIOS}
    _table(results)
    print(json.dumps({"scenarios": results}, sort_keys=True))


if __name__ == "__main__":
    main()
