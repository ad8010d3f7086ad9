"""A physical model of a charging phone or a Raspberry Pi, stepped on a simulated clock.

Battery: energy in Wh, charged CC/CV (constant power into the cell up to ``cv_start_soc``, then
the accepted power falls in proportion to the charge still missing, which gives the exponential
tail of a constant-voltage phase) and terminated below ``termination_c_rate``. The charger feeds
the device's load first; what is left charges the cell, and a charger too weak for the load makes
the battery discharge while plugged in, as it does on real phones.

Heat: two RC nodes. The SoC node takes the idle and compute power; the battery node (the cell and
the chassis around it) takes the cell's charging losses; each has a path to the room and they are
coupled. Work done = duty x time x clock speed, where the speed drops only when firmware throttles
(Pi 4 above 80 °C); compute power scales with the same product, so no efficiency is claimed for
running slower (see docs/SIMULATOR.md: no cited DVFS power curve, so none is modelled).

Every parameter and its source is in docs/SIMULATOR.md. The clock is simulated: ``step`` advances
physics by ``dt_s`` seconds; an 8-hour night takes about 0.2 s of wall time.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, replace

from hal.state import (
    PI_FREQ_CAPPED_NOW,
    PI_FREQ_CAPPED_OCCURRED,
    PI_THROTTLED_NOW,
    PI_THROTTLED_OCCURRED,
    PI_UNDERVOLTAGE_NOW,
    PI_UNDERVOLTAGE_OCCURRED,
    BatteryStatus,
    DeviceState,
    PluggedSource,
    ThermalZone,
)

EPOCH0 = 1_700_000_000.0  # read_at of simulated time 0: any fixed instant keeps runs identical
_PHYSICS_DT_S = 1.0  # sub-step: well under the SoC node's ~30 s time constant (explicit Euler)

# Li-ion open-circuit voltage against state of charge (typical graphite/NMC phone cell, 4.4 V max).
_OCV_POINTS = ((0.0, 3.40), (0.05, 3.60), (0.2, 3.72), (0.5, 3.82), (0.8, 4.05), (1.0, 4.38))

# Pixel thermal HAL VIRTUAL-SKIN thresholds for THERMAL_STATUS LIGHT..SHUTDOWN, °C, with 1.9 °C
# hysteresis (thermal_info_config.json as shipped on Pixels).
_SKIN_THRESHOLDS_C = (39.0, 43.0, 45.0, 47.0, 52.0, 55.0)
_SKIN_HYSTERESIS_C = 1.9


@dataclass(frozen=True)
class DevicePreset:
    name: str
    cpu_count: int
    idle_w: float  # whole device, screen off, no compute
    compute_w: float  # extra power at duty 1 and full clock
    charger_w: float  # adapter output (0: no charger)
    charger_efficiency: float  # adapter output -> device rails (charger IC, cable)
    ambient_c: float
    # Thermal network: SoC <-> battery <-> room, SoC -> room. K/W and J/K.
    r_soc_room: float
    r_soc_batt: float
    r_batt_room: float
    c_soc: float
    c_batt: float
    battery_wh: float | None = None  # None: no battery (a Pi on mains)
    charge_cc_w: float = 0.0  # most power the cell accepts in its constant-current phase
    cv_start_soc: float = 0.85
    termination_c_rate: float = 0.05  # end of charge below this fraction of capacity per hour
    recharge_soc: float = 0.97  # a full battery starts charging again below this
    charge_loss_fraction: float = 0.08  # of the power into the cell, heats the battery node
    discharge_loss_fraction: float = 0.03
    cell_resistance_ohm: float = 0.12
    android: bool = False  # report android_thermal_status from the skin (battery node)
    soc_zone: str = "cpu-thermal"
    throttle_start_c: float | None = None  # firmware starts capping the clock here
    throttle_full_c: float = 85.0
    throttle_min_speed: float = 1.0  # clock fraction when fully throttled


PHONE = DevicePreset(
    name="phone",
    cpu_count=8,
    idle_w=0.7,
    compute_w=4.0,
    charger_w=18.0,
    charger_efficiency=0.9,
    ambient_c=25.0,
    r_soc_room=12.0,
    r_soc_batt=2.5,
    r_batt_room=7.0,
    c_soc=16.0,
    c_batt=150.0,
    battery_wh=17.0,
    charge_cc_w=14.0,
    android=True,
    soc_zone="cpu-0-0-usr",
)

PRESETS: dict[str, DevicePreset] = {
    "phone": PHONE,
    "phone-weak-charger": replace(PHONE, name="phone-weak-charger", charger_w=5.0),
    "pi4": DevicePreset(
        name="pi4",
        cpu_count=4,
        idle_w=2.7,
        compute_w=3.7,
        charger_w=15.3,  # official 5.1 V 3 A USB-C supply
        charger_efficiency=1.0,
        ambient_c=28.0,  # "warm case": official case on a shelf in a warm room
        r_soc_room=60.0,
        r_soc_batt=3.0,  # the "battery" node of a Pi is its board and the air in its case
        r_batt_room=13.5,
        c_soc=15.0,
        c_batt=110.0,
        throttle_start_c=80.0,
        throttle_full_c=85.0,
        throttle_min_speed=0.4,  # 600 MHz of 1500 MHz
    ),
}


def _ocv(soc: float) -> float:
    pts = _OCV_POINTS
    for (s0, v0), (s1, v1) in itertools.pairwise(pts):
        if soc <= s1:
            return v0 + (v1 - v0) * (max(soc, s0) - s0) / (s1 - s0)
    return pts[-1][1]


class SimulatedBackend:
    """A simulated device. ``read`` gives a DeviceState quantised as real drivers report it."""

    name = "simulated"

    def __init__(
        self,
        preset: str | DevicePreset = "phone",
        *,
        soc: float = 0.5,
        ambient_c: float | None = None,
        plugged: bool = True,
        start_minute_of_day: int = 23 * 60,
        seed: int = 0,
        sensor_noise_c: float = 0.05,
    ) -> None:
        self.preset = PRESETS[preset] if isinstance(preset, str) else preset
        p = self.preset
        self.ambient_c = p.ambient_c if ambient_c is None else ambient_c
        self.soc = min(max(soc, 0.0), 1.0) if p.battery_wh else 0.0
        self.plugged = plugged and p.charger_w > 0
        self.start_minute_of_day = start_minute_of_day
        self.rng = random.Random(seed)
        self.sensor_noise_c = sensor_noise_c
        self.t_s = 0.0
        self.full = False  # charge terminated; a fuel gauge then reports 100 %
        self.battery_power_w = 0.0  # into the cell (negative: out of it)
        self.speed = 1.0
        self.undervoltage = False
        self.throttle_history = 0
        # Start in thermal equilibrium at idle with the charger's current state.
        self.soc_c, self.batt_c = self._equilibrium(0.0)
        self.battery_power_w = self._powers(0.0)[2]
        # Totals for benchmarks.
        self.work = 0.0  # full-speed compute seconds
        self.compute_energy_wh = 0.0
        self.charger_energy_wh = 0.0

    # -- physics ---------------------------------------------------------------------------------

    @property
    def minute_of_day(self) -> float:
        return (self.start_minute_of_day + self.t_s / 60.0) % 1440.0

    def accept_w(self) -> float:
        """Most power the cell takes now (CC, then CV taper), 0 once charging has terminated."""
        p = self.preset
        if p.battery_wh is None or self.full:
            return 0.0
        if self.soc < p.cv_start_soc:
            return p.charge_cc_w
        return p.charge_cc_w * (1.0 - self.soc) / (1.0 - p.cv_start_soc)

    def _speed(self) -> float:
        p = self.preset
        if p.throttle_start_c is None or self.soc_c <= p.throttle_start_c:
            return 1.0
        span = p.throttle_full_c - p.throttle_start_c
        frac = min((self.soc_c - p.throttle_start_c) / span, 1.0)
        return 1.0 - frac * (1.0 - p.throttle_min_speed)

    def _powers(self, duty: float) -> tuple[float, float, float]:
        """(SoC heat W, battery-node heat W, power into the cell W) at this instant."""
        p = self.preset
        load = p.idle_w + p.compute_w * duty * self.speed
        rails = p.charger_w * p.charger_efficiency if self.plugged else 0.0
        self.undervoltage = p.battery_wh is None and load > rails
        if p.battery_wh is None:
            return load, 0.0, 0.0
        into_cell = min(self.accept_w(), rails - load)
        if into_cell >= 0:
            batt_heat = p.charge_loss_fraction * into_cell
        else:
            batt_heat = p.discharge_loss_fraction * -into_cell
        return load, batt_heat, into_cell

    def _equilibrium(self, duty: float) -> tuple[float, float]:
        soc_heat, batt_heat, _ = self._powers(duty)
        p = self.preset
        # Two-node steady state: solve the 2x2 conductance system.
        g_sr, g_sb, g_br = 1 / p.r_soc_room, 1 / p.r_soc_batt, 1 / p.r_batt_room
        a11, a12, a21, a22 = g_sr + g_sb, -g_sb, -g_sb, g_sb + g_br
        det = a11 * a22 - a12 * a21
        x = (soc_heat * a22 - a12 * batt_heat) / det
        y = (a11 * batt_heat - a21 * soc_heat) / det
        return self.ambient_c + x, self.ambient_c + y

    def steady_state_c(self, duty: float) -> tuple[float, float]:
        """(SoC, battery) °C this device settles at with the given duty and plug state now."""
        return self._equilibrium(duty)

    def step(self, dt_s: float, duty: float) -> None:
        """Advance the physics by dt_s simulated seconds at compute duty 0..1."""
        if dt_s < 0 or not 0.0 <= duty <= 1.0:
            raise ValueError("need dt_s >= 0 and 0 <= duty <= 1")
        p = self.preset
        remaining = dt_s
        while remaining > 1e-9:
            h = min(_PHYSICS_DT_S, remaining)
            remaining -= h
            self.speed = self._speed()
            if self.speed < 1.0:
                self.throttle_history |= PI_FREQ_CAPPED_OCCURRED | PI_THROTTLED_OCCURRED
            soc_heat, batt_heat, into_cell = self._powers(duty)
            if self.undervoltage:
                self.throttle_history |= PI_UNDERVOLTAGE_OCCURRED
            q_sb = (self.soc_c - self.batt_c) / p.r_soc_batt
            q_sr = (self.soc_c - self.ambient_c) / p.r_soc_room
            q_br = (self.batt_c - self.ambient_c) / p.r_batt_room
            self.soc_c += h * (soc_heat - q_sb - q_sr) / p.c_soc
            self.batt_c += h * (batt_heat + q_sb - q_br) / p.c_batt
            self._charge(h, into_cell)
            self.work += h * duty * self.speed
            self.compute_energy_wh += h * p.compute_w * duty * self.speed / 3600.0
            if self.plugged:
                rails = soc_heat + max(into_cell, 0.0) if p.battery_wh else soc_heat
                self.charger_energy_wh += h * rails / p.charger_efficiency / 3600.0
            self.t_s += h

    def _charge(self, h: float, into_cell: float) -> None:
        p = self.preset
        if p.battery_wh is None:
            return
        self.battery_power_w = into_cell
        self.soc = min(max(self.soc + into_cell * h / 3600.0 / p.battery_wh, 0.0), 1.0)
        if not self.plugged or self.soc < p.recharge_soc:
            self.full = False
        elif not self.full and self.accept_w() < p.termination_c_rate * p.battery_wh:
            # Termination: the fuel gauge learns the cell is full and snaps to 100 %.
            self.full = True
            self.soc = 1.0

    def set_plugged(self, plugged: bool) -> None:
        self.plugged = plugged and self.preset.charger_w > 0

    # -- readings --------------------------------------------------------------------------------

    def _noisy(self, celsius: float) -> float:
        return celsius + self.rng.gauss(0.0, self.sensor_noise_c)

    def skin_status(self) -> int:
        """Android THERMAL_STATUS from the skin (battery node) on Pixel-style thresholds."""
        level = 0
        for i, threshold in enumerate(_SKIN_THRESHOLDS_C):
            if self.batt_c >= threshold:
                level = i + 1
        prev = getattr(self, "_skin_level", 0)
        if level < prev and self.batt_c > _SKIN_THRESHOLDS_C[prev - 1] - _SKIN_HYSTERESIS_C:
            level = prev
        self._skin_level = level
        return level

    def read(self) -> DeviceState:
        p = self.preset
        zones = [ThermalZone(p.soc_zone, round(self._noisy(self.soc_c) * 10) * 100)]
        state = DeviceState(
            source=self.name,
            read_at=EPOCH0 + self.t_s,
            cpu_count=p.cpu_count,
            zones=zones,
            load_1m=None,
            metered=False,
        )
        if p.battery_wh is not None:
            zones.append(ThermalZone("battery", round(self._noisy(self.batt_c) * 10) * 100))
            volts = _ocv(self.soc) + self.battery_power_w / 3.8 * p.cell_resistance_ohm
            state.battery_present = True
            state.battery_percent = 100 if self.full else min(int(self.soc * 100 + 0.5), 99)
            state.battery_status = self._status()
            state.plugged = self._plug_source()
            state.battery_temp_dc = round(self._noisy(self.batt_c) * 10)
            state.battery_voltage_uv = int(volts * 1e6)
            # This simulated driver reports discharge as negative; others do the opposite.
            state.battery_current_ua = int(self.battery_power_w / volts * 1e6)
        if p.android:
            state.android_thermal_status = self.skin_status()
        if p.throttle_start_c is not None:
            now = 0
            if self.speed < 1.0:
                now |= PI_FREQ_CAPPED_NOW | PI_THROTTLED_NOW
            if self.undervoltage:
                now |= PI_UNDERVOLTAGE_NOW
            state.pi_throttled = now | self.throttle_history
        return state

    def _status(self) -> BatteryStatus:
        if not self.plugged:
            return "discharging"
        return "full" if self.full else "charging"

    def _plug_source(self) -> PluggedSource:
        return "ac" if self.plugged else "none"


def charge_time_s(
    preset: str | DevicePreset = "phone", start_soc: float = 0.0, target_pct: int = 100
) -> float:
    """Seconds an idle device takes from start_soc until it reports target_pct (a test probe)."""
    sim = SimulatedBackend(preset, soc=start_soc, sensor_noise_c=0.0)
    limit = 6 * 3600.0
    while sim.t_s < limit:
        pct = sim.read().battery_percent
        if pct is not None and pct >= target_pct:
            return sim.t_s
        sim.step(10.0, 0.0)
    return math.inf
