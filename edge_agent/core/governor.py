# The governor: may this device compute now, how hard, and why not.
#
# Runs on CPython and MicroPython: no typing, no dataclasses. It reads a device state by attribute
# name only (the contract is hal/state.py's DeviceState, which MicroPython does not have):
# battery_present, battery_percent, battery_status, battery_temp_dc (tenths of °C), zones (objects
# with .name and .temp_mc), pi_throttled, android_thermal_status, charging, metered, cpu_count.
# A missing attribute counts as "not known".
#
# It takes the clock explicitly, so it is deterministic: decide(state, now_s, minute_of_day) with
# now_s a monotonic seconds count (slopes, dwell times) and minute_of_day the owner's local clock
# 0..1439 (time windows, wake-up time). It is stateful: hysteresis on every limit, a least-squares
# slope of each temperature, a PI controller on temperature that works on the temperature predicted
# a little ahead (so a fast rise cuts the duty before the limit), a charge-trend controller that
# sheds load when the charger cannot keep up or the battery would not be full by wake-up, and a
# minimum pause before resuming so the device does not flap.
#
# Defaults and their sources are in docs/GOVERNOR.md.

RUN = "run"
PAUSE = "pause"  # hold the task in memory: expected to resume within minutes (heat, dwell)
STOP = "stop"  # checkpoint and release the task: not expected to resume soon (unplugged, window)

# Reason codes: stable strings for machines; the decision's text is for people.
R_OK = "ok"
R_THERMAL_CONTROL = "thermal_control"
R_BATTERY_HOT = "battery_hot"
R_SOC_HOT = "soc_hot"
R_ANDROID_THERMAL = "android_thermal"
R_PI_UNDERVOLTAGE = "pi_undervoltage"
R_PI_THROTTLED = "pi_throttled"
R_NOT_CHARGING = "not_charging"
R_BATTERY_LOW = "battery_low"
R_NET_DISCHARGE = "net_discharge"
R_WAKE_RESERVE = "wake_reserve"
R_OUTSIDE_WINDOW = "outside_window"
R_METERED = "metered"
R_DWELL = "dwell"
R_DISABLED = "disabled"
R_NO_CPU = "no_cpu"

ANDROID_THERMAL_NAMES = ("none", "light", "moderate", "severe", "critical", "emergency", "shutdown")

_PI_UNDERVOLTAGE_NOW = 0x1
_PI_LIMITING_NOW = 0x2 | 0x4 | 0x8  # frequency capped, throttled, soft temperature limit


class Settings:
    """The owner's settings. Every field has a default; pass overrides as keyword arguments."""

    _DEFAULTS = (
        ("enabled", True),
        ("require_charging", True),
        # AOSP's low-battery warning level; resume 5 points higher so one percent does not flap.
        ("min_battery_pct", 15),
        ("min_battery_resume_pct", 20),
        # BOINC's Android default battery_max_temperature (lib/prefs.cpp).
        ("battery_max_c", 40.0),
        ("battery_resume_margin_c", 2.0),
        # Raspberry Pi 4 firmware starts capping the ARM clock near 80 °C.
        ("soc_max_c", 80.0),
        ("soc_resume_margin_c", 5.0),
        # The controller aims this far below each limit.
        ("battery_setpoint_margin_c", 0.3),
        ("soc_setpoint_margin_c", 1.5),
        # android.os.PowerManager.THERMAL_STATUS_MODERATE: the OS itself asks apps to cut load.
        ("android_thermal_max", 2),
        ("allow_metered", False),
        ("window_start_min", None),  # e.g. 23 * 60; None with window_end_min: any time
        ("window_end_min", None),  # e.g. 7 * 60; a window may cross midnight
        ("wake_min", 7 * 60),  # None: no wake-up deadline
        ("wake_target_pct", 95),
        ("max_threads", None),  # None: every CPU
        ("min_pause_s", 300.0),  # shortest pause before resuming (BOINC holds 300 s too)
        ("min_duty", 0.05),  # below this the controller pauses instead of trickling
        ("slope_window_s", 180.0),
        ("predict_s", 60.0),  # look-ahead of the temperature the controller works on
        ("kp_per_c", 0.15),
        ("ki_per_c_s", 0.0002),
        ("ki_hot_factor", 4.0),
        ("max_rise_per_s", 0.005),  # duty 0 -> 1 in 200 s at the fastest
        ("max_rise_first_s", 10.0),
        ("charge_window_s", 1800.0),
        ("charge_adjust_s", 1200.0),
    )

    def __init__(self, **overrides):
        for name, value in self._DEFAULTS:
            setattr(self, name, value)
        for name, value in overrides.items():
            if not hasattr(self, name):
                raise ValueError("unknown setting %r" % name)
            setattr(self, name, value)
        self.validate()

    def validate(self):
        for name in ("window_start_min", "window_end_min", "wake_min"):
            v = getattr(self, name)
            if v is not None and (type(v) is not int or v < 0 or v >= 1440):
                raise ValueError("%s must be a minute of the day 0..1439 or None" % name)
        if (self.window_start_min is None) != (self.window_end_min is None):
            raise ValueError("window_start_min and window_end_min go together")
        if not 0 <= self.min_battery_pct <= self.min_battery_resume_pct <= 100:
            raise ValueError("need 0 <= min_battery_pct <= min_battery_resume_pct <= 100")
        if not 0 < self.min_duty < 1:
            raise ValueError("min_duty must be in (0, 1)")

    def as_dict(self):
        return dict((name, getattr(self, name)) for name, _ in self._DEFAULTS)


class Decision:
    """What to do now: action run/pause/stop, duty 0..1, threads, reason code, one line of text."""

    def __init__(self, action, duty, threads, reason, text):
        self.action = action
        self.duty = duty
        self.threads = threads
        self.reason = reason
        self.text = text

    @property
    def computing(self):
        return self.action == RUN and self.duty > 0

    def as_dict(self):
        return {
            "decision": self.action,
            "duty": self.duty,
            "threads": self.threads,
            "reason": self.reason,
            "text": self.text,
        }

    def __repr__(self):
        return "Decision(%s, duty=%.2f, threads=%d, %s: %s)" % (
            self.action,
            self.duty,
            self.threads,
            self.reason,
            self.text,
        )


class SlopeEstimator:
    """Least-squares slope (units per second) of the samples inside a sliding time window."""

    def __init__(self, window_s):
        self.window_s = window_s
        self.samples = []

    def add(self, t, value):
        if self.samples and t <= self.samples[-1][0]:
            self.samples = []  # the clock went backwards: old samples mean nothing now
        self.samples.append((t, value))
        while self.samples and self.samples[0][0] < t - self.window_s:
            self.samples.pop(0)

    def span_s(self):
        if len(self.samples) < 2:
            return 0.0
        return self.samples[-1][0] - self.samples[0][0]

    def slope(self):
        n = len(self.samples)
        if n < 3:
            return 0.0
        t0 = self.samples[0][0]
        mt = mv = 0.0
        for t, v in self.samples:
            mt += t - t0
            mv += v
        mt /= n
        mv /= n
        num = den = 0.0
        for t, v in self.samples:
            dt = t - t0 - mt
            num += dt * (v - mv)
            den += dt * dt
        return num / den if den > 0 else 0.0

    def reset(self):
        self.samples = []


class ThermalLoop:
    """PI control of duty on one temperature; the P term acts on the temperature predicted
    predict_s ahead from its slope (so a fast rise cuts the duty before the limit), the I term on
    the measured error, four times faster when too hot than when too cool. The duty rises no
    faster than max_rise_per_s, so a resume ramps up instead of jumping."""

    def __init__(self, label, settings, window_s):
        self.label = label
        self.settings = settings
        self.slope = SlopeEstimator(window_s)
        self.integral = 1.0  # start wide open: a cold device should run at once
        self.last_t = None
        self.last_u = 1.0  # no ramp on a fresh start; relax() makes every resume ramp

    def update(self, now_s, temp_c, setpoint_c):
        s = self.settings
        self.slope.add(now_s, temp_c)
        dt = 0.0 if self.last_t is None else max(0.0, min(now_s - self.last_t, 60.0))
        self.last_t = now_s
        slope = self.slope.slope()
        error = setpoint_c - temp_c
        ki = s.ki_per_c_s * (s.ki_hot_factor if error < 0 else 1.0)
        self.integral = _clamp(self.integral + ki * error * dt, 0.0, 1.0)
        # Only a rise is predicted ahead: a falling temperature must not excuse a hot one.
        predicted_error = error - max(slope, 0.0) * s.predict_s
        u = _clamp(self.integral + s.kp_per_c * predicted_error, 0.0, 1.0)
        u = min(u, self.last_u + s.max_rise_per_s * max(dt, s.max_rise_first_s))
        self.last_u = u
        return u

    def slope_c_per_min(self):
        return self.slope.slope() * 60.0

    def relax(self):
        # While the device is held paused this loop must not wind up or down, and its duty
        # starts again from zero.
        self.last_t = None
        self.last_u = 0.0

    def back_off(self):
        # This loop's limit was crossed: the duty it allowed was too high.
        self.integral *= 0.5


class Governor:
    def __init__(self, settings=None):
        self.settings = settings if settings is not None else Settings()
        s = self.settings
        self.battery_loop = ThermalLoop("battery", s, s.slope_window_s)
        self.soc_loop = ThermalLoop("SoC", s, s.slope_window_s)
        self.charge = SlopeEstimator(s.charge_window_s)  # percent per second while plugged
        self.charge_cap = 1.0
        self.charge_cap_reason = None
        self.charge_cap_at = None
        self.battery_hot = False
        self.soc_hot = False
        self.battery_low = False
        self.android_hot = False
        self.pi_limited = False
        self.computing = False
        self.last_switch_s = None
        self.last = None

    # -- the one public step -------------------------------------------------------------------

    def decide(self, state, now_s, minute_of_day):
        d = self._decide(state, now_s, minute_of_day)
        if d.computing != self.computing:
            self.computing = d.computing
            self.last_switch_s = now_s
        self.last = d
        return d

    # -- the rules, safest first -----------------------------------------------------------------

    def _decide(self, state, now_s, minute_of_day):
        s = self.settings
        threads = self._threads(state)
        if not s.enabled:
            return self._hold(STOP, R_DISABLED, "stopped: disabled by the owner")
        if threads < 1:
            return self._hold(STOP, R_NO_CPU, "stopped: no CPU allowed")
        if not self._in_window(minute_of_day):
            return self._hold(
                STOP,
                R_OUTSIDE_WINDOW,
                "stopped: %s is outside %s-%s"
                % (_hhmm(minute_of_day), _hhmm(s.window_start_min), _hhmm(s.window_end_min)),
            )
        metered = _attr(state, "metered")
        if metered and not s.allow_metered:
            return self._hold(STOP, R_METERED, "stopped: network is metered")

        pi = _attr(state, "pi_throttled")
        if pi is not None and pi & _PI_UNDERVOLTAGE_NOW:
            return self._hold(STOP, R_PI_UNDERVOLTAGE, "stopped: Pi under-voltage (0x%x)" % pi)

        charging = _attr(state, "charging")
        if s.require_charging and charging is False:
            return self._hold(STOP, R_NOT_CHARGING, "stopped: not on external power")

        pct = _attr(state, "battery_percent")
        has_battery = bool(_attr(state, "battery_present")) and pct is not None
        if has_battery:
            self._track_charge(now_s, pct, charging)
            if pct < s.min_battery_pct or (self.battery_low and pct < s.min_battery_resume_pct):
                self.battery_low = True
                if pct < s.min_battery_pct:
                    text = "stopped: battery %d%% < %d%%" % (pct, s.min_battery_pct)
                else:
                    text = "stopped: battery %d%%, charging to %d%% first" % (
                        pct,
                        s.min_battery_resume_pct,
                    )
                return self._hold(STOP, R_BATTERY_LOW, text)
            self.battery_low = False

        android = _attr(state, "android_thermal_status")
        if android is not None:
            if android >= s.android_thermal_max or (self.android_hot and android >= 1):
                # Resume only once the OS is back to NONE: LIGHT right after MODERATE is a
                # device still near its limit.
                if not self.android_hot:
                    self.battery_loop.back_off()
                    self.soc_loop.back_off()
                self.android_hot = True
                return self._hold(
                    PAUSE,
                    R_ANDROID_THERMAL,
                    "paused: Android thermal status %s" % _android_name(android),
                )
            self.android_hot = False
        if pi is not None and pi & _PI_LIMITING_NOW:
            if not self.pi_limited:
                self.soc_loop.back_off()
            self.pi_limited = True
            return self._hold(
                PAUSE, R_PI_THROTTLED, "paused: Pi firmware is throttling (0x%x)" % pi
            )
        self.pi_limited = False

        # Hard limits with hysteresis: pause above the limit until well below it.
        batt_c = _battery_c(state)
        if batt_c is not None:
            limit = s.battery_max_c
            if batt_c > limit or (self.battery_hot and batt_c > limit - s.battery_resume_margin_c):
                if not self.battery_hot:
                    self.battery_loop.back_off()
                self.battery_hot = True
                return self._hold(
                    PAUSE,
                    R_BATTERY_HOT,
                    "paused: battery %.1f °C > %.1f °C" % (batt_c, limit)
                    if batt_c > limit
                    else "paused: battery %.1f °C, cooling to %.1f °C"
                    % (batt_c, limit - s.battery_resume_margin_c),
                )
            self.battery_hot = False
        soc_c = _hottest_zone_c(state)
        if soc_c is not None:
            limit = s.soc_max_c
            if soc_c > limit or (self.soc_hot and soc_c > limit - s.soc_resume_margin_c):
                if not self.soc_hot:
                    self.soc_loop.back_off()
                self.soc_hot = True
                return self._hold(
                    PAUSE,
                    R_SOC_HOT,
                    "paused: SoC %.1f °C > %.1f °C" % (soc_c, limit)
                    if soc_c > limit
                    else "paused: SoC %.1f °C, cooling to %.1f °C"
                    % (soc_c, limit - s.soc_resume_margin_c),
                )
            self.soc_hot = False

        # Continuous control: the tightest of the thermal loops and the charge cap sets the duty.
        duty, reason, why = 1.0, R_OK, None
        if batt_c is not None:
            u = self.battery_loop.update(
                now_s, batt_c, s.battery_max_c - s.battery_setpoint_margin_c
            )
            if u < duty:
                duty, reason, why = u, R_THERMAL_CONTROL, _thermal_why(self.battery_loop, batt_c)
        else:
            self.battery_loop.relax()
        if soc_c is not None:
            u = self.soc_loop.update(now_s, soc_c, s.soc_max_c - s.soc_setpoint_margin_c)
            if u < duty:
                duty, reason, why = u, R_THERMAL_CONTROL, _thermal_why(self.soc_loop, soc_c)
        else:
            self.soc_loop.relax()
        if has_battery and charging is not False:
            cap = self._charge_cap(now_s, pct, minute_of_day)
            if cap < duty:
                duty, reason, why = cap, self.charge_cap_reason, self._charge_why(pct)

        if duty < s.min_duty:
            return self._hold(PAUSE, reason, "paused: " + why)
        if not self.computing and self.last_switch_s is not None:
            waited = now_s - self.last_switch_s
            if waited < s.min_pause_s:
                return self._hold(
                    PAUSE,
                    R_DWELL,
                    "paused: resuming in %d s (pauses last at least %d s)"
                    % (int(s.min_pause_s - waited + 0.999), int(s.min_pause_s)),
                )
        duty = _round_duty(duty)
        if why is None:
            text = "running at full speed"
        else:
            text = "throttled to %d%%: %s" % (int(duty * 100 + 0.5), why)
        return Decision(RUN, duty, threads, reason, text)

    # -- helpers ---------------------------------------------------------------------------------

    def _hold(self, action, reason, text):
        self.battery_loop.relax()
        self.soc_loop.relax()
        return Decision(action, 0.0, 0, reason, text)

    def _threads(self, state):
        n = _attr(state, "cpu_count") or 1
        if self.settings.max_threads is not None:
            n = min(n, self.settings.max_threads)
        return n

    def _in_window(self, minute):
        start, end = self.settings.window_start_min, self.settings.window_end_min
        if start is None or start == end:
            return True
        if start < end:
            return start <= minute < end
        return minute >= start or minute < end  # crosses midnight

    def _charge_why(self, pct):
        if self.charge_cap_reason == R_NET_DISCHARGE:
            return "plugged in but battery falling at %d%%: charger too weak" % pct
        return "charger headroom kept for %d%% by %s (now %d%%)" % (
            self.settings.wake_target_pct,
            _hhmm(self.settings.wake_min),
            pct,
        )

    def _track_charge(self, now_s, pct, charging):
        if charging is False:
            self.charge.reset()
            self.charge_cap_at = None
            return
        self.charge.add(now_s, pct)

    def _charge_cap(self, now_s, pct, minute_of_day):
        """Cap on duty from the observed charge rate while plugged (percent per hour)."""
        s = self.settings
        if self.charge_cap_at is None:
            self.charge_cap_at = now_s
        # Judge only a trend seen entirely at the current cap, over enough time to see whole
        # percents move.
        if (
            now_s - self.charge_cap_at < s.charge_adjust_s
            or self.charge.span_s() < s.charge_adjust_s
        ):
            return self.charge_cap
        rate = self._charge_rate_since(self.charge_cap_at)
        need = self._needed_rate(pct, minute_of_day)
        if rate < 0.0 and pct < 100:
            self.charge_cap = _shed(self.charge_cap)
            self.charge_cap_reason = R_NET_DISCHARGE
        elif need > 0.0 and rate < 1.1 * need + 0.5:
            self.charge_cap = _shed(self.charge_cap)
            self.charge_cap_reason = R_WAKE_RESERVE
        elif rate > 1.5 * need + 2.0 or pct >= 100:
            self.charge_cap = min(1.0, self.charge_cap + 0.15)
        else:
            return self.charge_cap
        self.charge_cap_at = now_s
        return self.charge_cap

    def _charge_rate_since(self, since_s):
        pts = [p for p in self.charge.samples if p[0] >= since_s]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return 0.0
        est = SlopeEstimator(1e12)
        for t, v in pts:
            est.add(t, v)
        return est.slope() * 3600.0

    def _needed_rate(self, pct, minute_of_day):
        """Percent per hour still needed to reach the wake target, with half an hour to spare."""
        s = self.settings
        if s.wake_min is None or pct >= s.wake_target_pct:
            return 0.0
        hours = ((s.wake_min - minute_of_day) % 1440) / 60.0 - 0.5
        return (s.wake_target_pct - pct) / max(hours, 0.25)


# -- module helpers ------------------------------------------------------------------------------


def _attr(obj, name):
    return getattr(obj, name, None)


def _clamp(x, lo, hi):
    return lo if x < lo else hi if x > hi else x


def _round_duty(duty):
    return int(duty * 100 + 0.5) / 100.0


def _shed(cap):
    return max(0.0, cap * 0.7 - 0.02)


def _battery_c(state):
    dc = _attr(state, "battery_temp_dc")
    return None if dc is None else dc / 10.0


def _hottest_zone_c(state):
    zones = _attr(state, "zones") or ()
    hottest = None
    for z in zones:
        if hottest is None or z.temp_mc > hottest:
            hottest = z.temp_mc
    return None if hottest is None else hottest / 1000.0


def _thermal_why(loop, temp_c):
    slope = loop.slope_c_per_min()
    return "%s %.1f °C, %s %.1f °C/min" % (
        loop.label,
        temp_c,
        "rising" if slope >= 0 else "falling",
        abs(slope),
    )


def _android_name(status):
    if 0 <= status < len(ANDROID_THERMAL_NAMES):
        return ANDROID_THERMAL_NAMES[status].upper()
    return str(status)


def _hhmm(minute):
    if minute is None:
        return "--:--"
    minute = int(minute) % 1440
    return "%02d:%02d" % (minute // 60, minute % 60)
