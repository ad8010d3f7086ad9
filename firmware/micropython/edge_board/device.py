# What the governor reads, from the readers that need no hardware, and the clocks.
#
# Readers ("hal" in edge.json, key "kind"):
#   board  the board's sensors: hal_board.py (imported only for this kind)
#   file   a JSON file re-read on every reading (tests, or a board whose sensors another
#          program reads): {"battery_pct", "charging", "mcu_c", "battery_dc"}, any may be absent
#   fixed  the values given in edge.json under "values" (same keys)
# A reading never raises: what failed is named in `problems`.
import json
import time

# Ports whose time.time() counts from 2000-01-01 (older ports; the protocol speaks unix seconds).
_EPOCH_2000 = 946684800
EPOCH_OFFSET = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0


class Zone:
    def __init__(self, name, temp_mc):
        self.name = name
        self.temp_mc = temp_mc


class Reading:
    """One reading, shaped like DeviceState for the governor (it reads attributes by name)."""

    def __init__(self, battery_pct=None, charging=None, mcu_mc=None, battery_dc=None,
                 problems=None):
        self.battery_present = battery_pct is not None
        self.battery_percent = battery_pct
        self.charging = charging
        self.battery_status = None
        if charging is not None and battery_pct is not None:
            self.battery_status = "charging" if charging else "discharging"
        self.battery_temp_dc = battery_dc
        self.zones = [] if mcu_mc is None else [Zone("mcu", mcu_mc)]
        self.hottest_zone_mc = mcu_mc
        self.pi_throttled = None
        self.android_thermal_status = None
        self.metered = None
        self.cpu_count = 1
        self.throttled = None  # nothing on a microcontroller reports throttling
        self.problems = problems or []


def _values_reading(values, problems):
    mcu_mc = values.get("mcu_mc")
    if mcu_mc is None and values.get("mcu_c") is not None:
        mcu_mc = int(values["mcu_c"] * 1000)
    return Reading(values.get("battery_pct"), values.get("charging"), mcu_mc,
                   values.get("battery_dc"), problems)


class FixedHal:
    def __init__(self, cfg):
        self.values = cfg.get("values", {})

    def read(self):
        return _values_reading(self.values, [])


class FileHal:
    def __init__(self, cfg):
        self.path = cfg["path"]

    def read(self):
        try:
            with open(self.path) as f:
                values = json.load(f)
        except (OSError, ValueError) as e:
            return Reading(problems=["file: %s" % e])
        return _values_reading(values, [])


def make_hal(cfg):
    kind = cfg.get("kind", "board")
    if kind == "board":
        import hal_board

        return hal_board.BoardHal(cfg)
    if kind == "file":
        return FileHal(cfg)
    if kind == "fixed":
        return FixedHal(cfg)
    raise ValueError("hal.kind must be board, file or fixed, got %r" % (kind,))


# -- clocks --------------------------------------------------------------------------------------


def unix_time():
    return int(time.time()) + EPOCH_OFFSET


class Monotonic:
    """Seconds since start from ticks_ms, which wraps (after ~12 days on 32-bit ports): each
    call adds the difference since the last one, so it never wraps while called at least once
    per wrap period."""

    def __init__(self):
        self._last = time.ticks_ms()
        self._ms = 0

    def seconds(self):
        now = time.ticks_ms()
        self._ms += time.ticks_diff(now, self._last)
        self._last = now
        return self._ms / 1000


def minute_of_day(utc_offset_min):
    return (unix_time() // 60 + utc_offset_min) % 1440
