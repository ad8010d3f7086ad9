"""The simulated device against the published figures it cites (docs/SIMULATOR.md)."""

from __future__ import annotations

import pytest

from hal.simulated import PRESETS, SimulatedBackend, charge_time_s
from hal.state import PI_FREQ_CAPPED_NOW, PI_THROTTLED_NOW, PI_UNDERVOLTAGE_NOW

MIN = 60.0


def test_default_is_a_phone_on_its_charger() -> None:
    state = SimulatedBackend().read()
    assert state.source == "simulated" and state.battery_present
    assert state.charging is True and state.battery_status == "charging"
    assert state.cpu_count == 8 and state.android_thermal_status == 0
    assert {z.name for z in state.zones} == {"cpu-0-0-usr", "battery"}


def test_phone_charge_curve_matches_published_18w_phones() -> None:
    # Pixel 5 (15.7 Wh, 18 W): 0-100 % in 87 min, i.e. ~94 min for 17 Wh; Pixel 6 Pro (19.4 Wh):
    # 111 min, 50 % in ~30 min; Pixel 2 on 18 W: 79 % at 60 min, then a slow tail.
    full = charge_time_s("phone", 0.0, 100) / MIN
    half = charge_time_s("phone", 0.0, 50) / MIN
    eighty = charge_time_s("phone", 0.0, 80) / MIN
    assert 80 <= full <= 115, full
    assert 25 <= half <= 45, half
    assert eighty <= 65, eighty
    # CC/CV: the last 20 % takes far longer per percent than the first 80 %
    assert (full - eighty) / 20 > 2 * eighty / 80


def test_weak_charger_is_slow_and_cannot_carry_full_load() -> None:
    hours = charge_time_s("phone-weak-charger", 0.0, 100) / 3600
    assert 3.5 <= hours <= 5.0, hours  # 17 Wh / (5 W x 0.9 - 0.7 W idle) = 4.5 h
    sim = SimulatedBackend("phone-weak-charger", soc=0.6, sensor_noise_c=0.0)
    before = sim.soc
    sim.step(3600, 1.0)
    after = sim.read()
    assert after.battery_status == "charging" and after.charging  # plugged in...
    assert sim.soc < before  # ...and still losing charge at full load
    assert after.battery_percent is not None and after.battery_percent < 60


def test_phone_thermal_resistance_and_time_constant() -> None:
    # 4-6 °C per watt from SoC power to the room; the body's time constant minutes, not seconds.
    sim = SimulatedBackend("phone", soc=1.0, plugged=False, ambient_c=25.0)
    soc0, batt0 = sim.steady_state_c(0.0)
    soc1, batt1 = sim.steady_state_c(1.0)
    per_watt = (soc1 - soc0) / PRESETS["phone"].compute_w
    assert 4.0 <= per_watt <= 6.0, per_watt
    assert 40.0 <= batt1 <= 46.0, batt1  # full load is more than a 40 °C limit allows
    sim.step(12 * MIN, 1.0)
    rise = (sim.batt_c - batt0) / (batt1 - batt0)
    assert 0.5 <= rise <= 0.8, rise  # ~one time constant of the body after 12 min


def test_pi4_in_official_case_matches_published_temperatures() -> None:
    # Idle 56 °C at 21 °C room in the official case (martinrowan.co.uk, 2020 firmware).
    sim = SimulatedBackend("pi4", ambient_c=21.0, sensor_noise_c=0.0)
    idle_soc, _ = sim.steady_state_c(0.0)
    assert 53.0 <= idle_soc <= 59.0, idle_soc
    assert sim.read().zones[0].temp_mc == pytest.approx(idle_soc * 1000, abs=100)
    # Sustained full load throttles near 80-85 °C (Raspberry Pi documentation).
    sim.step(2 * 3600, 1.0)
    state = sim.read()
    assert 80.0 <= sim.soc_c <= 85.0, sim.soc_c
    assert state.pi_throttled is not None
    assert state.pi_throttled & (PI_FREQ_CAPPED_NOW | PI_THROTTLED_NOW)
    assert not state.pi_throttled & PI_UNDERVOLTAGE_NOW
    assert 0.4 <= sim.speed < 1.0
    assert state.battery_present is False and state.charging is True


def test_work_and_energy_accounting() -> None:
    sim = SimulatedBackend("phone", soc=1.0, ambient_c=20.0)
    sim.step(100.0, 0.5)
    assert sim.work == pytest.approx(50.0)
    assert sim.compute_energy_wh == pytest.approx(4.0 * 0.5 * 100 / 3600)
    assert sim.t_s == pytest.approx(100.0)
    with pytest.raises(ValueError):
        sim.step(1.0, 1.5)


def test_readings_are_quantised_like_drivers() -> None:
    sim = SimulatedBackend("phone", soc=0.423)
    state = sim.read()
    assert state.battery_percent == 42
    assert isinstance(state.battery_temp_dc, int)
    assert all(z.temp_mc % 100 == 0 for z in state.zones)
    assert state.battery_voltage_uv is not None and 3_600_000 < state.battery_voltage_uv < 4_400_000
    assert state.battery_current_ua is not None and state.battery_current_ua > 0


def test_unplugging_shows_in_the_reading() -> None:
    sim = SimulatedBackend("phone", soc=0.8)
    sim.step(4 * 3600, 0.0)
    assert sim.read().battery_percent == 100 and sim.read().battery_status == "full"
    sim.set_plugged(False)
    sim.step(600, 0.0)
    state = sim.read()
    assert state.plugged == "none" and state.charging is False
    assert state.battery_status == "discharging"
    assert state.battery_current_ua is not None and state.battery_current_ua < 0


def test_seeded_and_deterministic() -> None:
    def readings(seed: int) -> list[int | None]:
        sim = SimulatedBackend("phone", seed=seed)
        out = []
        for _ in range(50):
            sim.step(10.0, 0.7)
            out.append(sim.read().battery_temp_dc)
        return out

    assert readings(1) == readings(1)
    assert readings(1) != readings(2)


def test_clock_is_simulated() -> None:
    sim = SimulatedBackend(start_minute_of_day=23 * 60)
    sim.step(4 * 3600, 0.0)
    assert sim.minute_of_day == pytest.approx(3 * 60)
    assert sim.read().read_at - SimulatedBackend().read().read_at == pytest.approx(4 * 3600)


def test_android_thermal_status_follows_the_skin() -> None:
    sim = SimulatedBackend("phone", soc=1.0, ambient_c=35.0)
    sim.step(3600, 1.0)
    assert (sim.read().android_thermal_status or 0) >= 2  # MODERATE past 43 °C skin
