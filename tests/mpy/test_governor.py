# The governor's rules, runnable under MicroPython (tests/mpy/run.py) and CPython
# (tests/test_governor.py runs every test_* here too). hal is not on the device, so the state is
# a stand-in with plain attributes named as in hal/state.py's DeviceState.
from mpyassert import raises

from edge_agent.core import governor as g


class Zone:
    def __init__(self, name, temp_mc):
        self.name = name
        self.temp_mc = temp_mc


class State:
    """Plain attributes, as a phone on its charger at 30 °C reports them."""

    def __init__(self, **kw):
        self.battery_present = True
        self.battery_percent = 80
        self.battery_status = "charging"
        self.battery_temp_dc = 300
        self.zones = [Zone("cpu-0-0-usr", 35000)]
        self.pi_throttled = None
        self.android_thermal_status = 0
        self.charging = True
        self.metered = False
        self.cpu_count = 8
        for k, v in kw.items():
            setattr(self, k, v)


def pi_state(**kw):
    s = State(
        battery_present=False,
        battery_percent=None,
        battery_status=None,
        battery_temp_dc=None,
        android_thermal_status=None,
        pi_throttled=0,
        cpu_count=4,
        zones=[Zone("cpu-thermal", 55000)],
    )
    for k, v in kw.items():
        setattr(s, k, v)
    return s


NIGHT = 23 * 60 + 30  # 23:30


def run_steady(gov, state, t0, seconds):
    """Ask every 10 s for `seconds` from t0 with the same state; returns the last decision."""
    d = None
    t = t0
    while t < t0 + seconds:
        d = gov.decide(state, t, NIGHT)
        t += 10
    return d, t


def test_cool_device_on_charger_runs_all_threads():
    gov = g.Governor()
    d, _ = run_steady(gov, State(), 0, 300)
    assert d.action == g.RUN and d.reason == g.R_OK, d
    assert d.duty == 1.0 and d.threads == 8
    assert d.text == "running at full speed"


def test_resume_ramps_up_instead_of_jumping():
    gov = g.Governor()
    assert gov.decide(State(), 0, NIGHT).duty == 1.0  # a fresh start runs at once
    assert gov.decide(State(charging=False), 10, NIGHT).action == g.STOP
    d, t = run_steady(gov, State(), 20, 300)  # the dwell, then the first resumed decision
    assert d.action == g.RUN and 0 < d.duty <= 0.1, d
    d, _ = run_steady(gov, State(), t, 200)
    assert d.duty == 1.0, d


def test_unplugged_stops_and_unknown_power_does_not():
    gov = g.Governor()
    d = gov.decide(State(charging=False, battery_status="discharging"), 0, NIGHT)
    assert d.action == g.STOP and d.reason == g.R_NOT_CHARGING and d.duty == 0
    assert (
        g.Governor(g.Settings(require_charging=False))
        .decide(State(charging=False), 0, NIGHT)
        .computing
    )
    # charging None (nothing says either way) is not "unplugged"
    assert g.Governor().decide(State(charging=None), 0, NIGHT).computing


def test_min_battery_has_hysteresis():
    gov = g.Governor()
    d = gov.decide(State(battery_percent=14), 0, NIGHT)
    assert d.action == g.STOP and d.reason == g.R_BATTERY_LOW
    assert d.text == "stopped: battery 14% < 15%", d.text
    d = gov.decide(State(battery_percent=17), 10, NIGHT)
    assert d.reason == g.R_BATTERY_LOW, d
    assert "charging to 20% first" in d.text
    d, _ = run_steady(gov, State(battery_percent=20), 400, 300)
    assert d.computing, d


def test_battery_limit_pauses_with_hysteresis_and_dwell():
    gov = g.Governor()
    run_steady(gov, State(battery_temp_dc=380), 0, 600)
    d = gov.decide(State(battery_temp_dc=412), 600, NIGHT)
    assert d.action == g.PAUSE and d.reason == g.R_BATTERY_HOT
    assert d.text == "paused: battery 41.2 °C > 40.0 °C", d.text
    # below the limit but not yet 2 °C below: still paused
    d = gov.decide(State(battery_temp_dc=390), 610, NIGHT)
    assert d.reason == g.R_BATTERY_HOT and "cooling to 38.0" in d.text, d.text
    # cool again, but pauses last at least min_pause_s
    d = gov.decide(State(battery_temp_dc=370), 620, NIGHT)
    assert d.action == g.PAUSE and d.reason == g.R_DWELL, d
    d, _ = run_steady(gov, State(battery_temp_dc=370), 630, 400)
    assert d.computing, d


def ramp(make_state, start_c, rate_c_per_min, until_c):
    """Decisions while a temperature climbs at a steady rate; returns the last one."""
    gov = g.Governor(g.Settings(wake_min=None))  # the percent stays put: no charge trend here
    t = 0
    d = None
    temp = start_c
    while temp < until_c:
        d = gov.decide(make_state(temp), t, NIGHT)
        t += 10
        temp += rate_c_per_min / 6.0
    return d


def battery_at(celsius):
    return State(battery_temp_dc=int(celsius * 10 + 0.5))


def pi_at(celsius):
    return pi_state(zones=[Zone("cpu-thermal", int(celsius * 1000 + 0.5))])


def test_controller_throttles_a_rising_battery_before_the_limit():
    slow = ramp(battery_at, 30.0, 0.3, 39.6)
    fast = ramp(battery_at, 30.0, 1.2, 39.6)
    assert slow.action == g.RUN and fast.action == g.RUN, (slow, fast)
    # the same temperature, rising faster: less duty, and the text says why
    assert fast.duty < slow.duty < 1.0, (slow, fast)
    assert fast.reason == g.R_THERMAL_CONTROL
    assert fast.text.startswith("throttled to %d%%: battery 39." % int(fast.duty * 100 + 0.5))
    assert "rising 1.2 °C/min" in fast.text, fast.text


def test_soc_zone_limit_and_slope_text():
    d = ramp(pi_at, 60.0, 1.8, 78.0)
    assert d.reason == g.R_THERMAL_CONTROL and d.duty < 0.9, d
    assert "SoC 78.0 °C, rising 1.8 °C/min" in d.text, d.text
    gov = g.Governor()
    d = gov.decide(pi_at(81.0), 0, NIGHT)
    assert d.action == g.PAUSE and d.reason == g.R_SOC_HOT
    assert d.text == "paused: SoC 81.0 °C > 80.0 °C", d.text
    d = gov.decide(pi_at(77.0), 10, NIGHT)
    assert d.reason == g.R_SOC_HOT and "cooling to 75.0" in d.text, d.text


def test_android_moderate_pauses_until_none():
    gov = g.Governor()
    assert gov.decide(State(android_thermal_status=1), 0, NIGHT).computing
    d = gov.decide(State(android_thermal_status=2), 10, NIGHT)
    assert d.action == g.PAUSE and d.reason == g.R_ANDROID_THERMAL
    assert d.text == "paused: Android thermal status MODERATE"
    assert gov.decide(State(android_thermal_status=1), 20, NIGHT).reason == g.R_ANDROID_THERMAL
    assert gov.decide(State(android_thermal_status=0), 30, NIGHT).reason == g.R_DWELL


def test_pi_bits():
    gov = g.Governor()
    d = gov.decide(pi_state(pi_throttled=0x50001), 0, NIGHT)
    assert d.action == g.STOP and d.reason == g.R_PI_UNDERVOLTAGE, d
    d = gov.decide(pi_state(pi_throttled=0x20002), 10, NIGHT)
    assert d.action == g.PAUSE and d.reason == g.R_PI_THROTTLED, d
    # only "has occurred since boot" bits: fine now
    d, _ = run_steady(gov, pi_state(pi_throttled=0x70000), 400, 300)
    assert d.computing and d.threads == 4, d


def test_time_window_crossing_midnight():
    s = g.Settings(window_start_min=23 * 60, window_end_min=7 * 60)
    cases = ((23 * 60, True), (23 * 60 + 59, True), (0, True), (6 * 60 + 59, True))
    cases += ((7 * 60, False), (12 * 60, False), (22 * 60 + 59, False))
    for minute, inside in cases:
        d = g.Governor(s).decide(State(), 0, minute)
        assert d.computing == inside, (minute, d)
        if not inside:
            assert d.reason == g.R_OUTSIDE_WINDOW and "outside 23:00-07:00" in d.text, d.text
    day = g.Settings(window_start_min=9 * 60, window_end_min=17 * 60)
    assert g.Governor(day).decide(State(), 0, 10 * 60).computing
    assert not g.Governor(day).decide(State(), 0, 18 * 60).computing


def test_metered_network():
    d = g.Governor().decide(State(metered=True), 0, NIGHT)
    assert d.action == g.STOP and d.reason == g.R_METERED
    allowed = g.Governor(g.Settings(allow_metered=True))
    assert allowed.decide(State(metered=True), 0, NIGHT).computing


def test_net_discharge_while_plugged_sheds_load_from_the_percent_trend():
    # The current's sign says "charging" but the percent falls: the charger cannot keep up.
    gov = g.Governor(g.Settings(wake_min=None))
    t = 0
    pct = 80
    d = None
    while t < 3 * 3600:
        st = State(battery_percent=pct, battery_current_ua=150000)
        d = gov.decide(st, t, NIGHT)
        t += 10
        if t % 900 == 0 and d.duty > 0.4:
            pct -= 1  # one percent each 15 min while the duty is high
    assert d.reason == g.R_NET_DISCHARGE, d
    assert 0.05 <= d.duty <= 0.4, d
    assert "charger too weak" in d.text


def test_wake_reserve_keeps_charger_headroom():
    # 40 % at 23:30 with wake-up at 07:00 needs ~8 %/h; a flat 2 %/h trend must shed load.
    gov = g.Governor()
    t = 0
    d = None
    while t < 2 * 3600:
        pct = 40 + t // 1800  # 2 % per hour
        d = gov.decide(State(battery_percent=pct), t, (NIGHT + t // 60) % 1440)
        t += 10
    assert d.reason == g.R_WAKE_RESERVE and d.duty < 0.6, d
    assert "95% by 07:00" in d.text, d.text


def test_settings_validation():
    raises(ValueError, g.Settings, no_such_setting=1)
    raises(ValueError, g.Settings, window_start_min=23 * 60)
    raises(ValueError, g.Settings, wake_min=1440)
    raises(ValueError, g.Settings, min_battery_pct=30, min_battery_resume_pct=20)
    assert g.Settings(max_threads=2).as_dict()["max_threads"] == 2


def test_max_threads_and_disabled():
    d, _ = run_steady(g.Governor(g.Settings(max_threads=3)), State(), 0, 300)
    assert d.threads == 3
    d = g.Governor(g.Settings(enabled=False)).decide(State(), 0, NIGHT)
    assert d.action == g.STOP and d.reason == g.R_DISABLED


def test_deterministic():
    def trace():
        gov = g.Governor()
        out = []
        for i in range(200):
            temp = 300 + (i * 7) % 120
            d = gov.decide(State(battery_temp_dc=temp), i * 10, NIGHT)
            out.append((d.action, d.duty, d.reason, d.text))
        return out

    assert trace() == trace()


def test_decision_as_dict():
    d = g.Governor().decide(State(charging=False), 0, NIGHT)
    assert d.as_dict() == {
        "decision": "stop",
        "duty": 0.0,
        "threads": 0,
        "reason": "not_charging",
        "text": "stopped: not on external power",
    }
