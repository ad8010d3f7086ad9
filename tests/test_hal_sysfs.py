"""SysfsBackend on recorded device trees (tests/fixtures/sysfs/<device>) and on broken copies.

The trees are laid out as on the devices (``/sys/class/*`` entries are symlinks into
``/sys/devices``); the only fake is ``usr/bin/vcgencmd``, a script printing what the real tool
prints on that board. Failures are real: a directory where a file should be (EISDIR), a file
the reader may not read (EACCES, with DAC override dropped since tests run as root), garbage,
a missing or non-executable binary, a command that hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hal._cpu import parse_cpu_list
from hal.state import (
    PI_FREQ_CAPPED_NOW,
    PI_NOW_MASK,
    PI_THROTTLED_NOW,
    PI_THROTTLED_OCCURRED,
    PI_UNDERVOLTAGE_NOW,
    PI_UNDERVOLTAGE_OCCURRED,
    DeviceState,
    ThermalZone,
)
from hal.sysfs import MainsBackend, SysfsBackend

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SYSFS = FIXTURES / "sysfs"
ANDROID_POWER = "sys/class/power_supply"
TIMEOUT_MARGIN_S = 1.5  # process start-up and reaping on a loaded 2-core machine


def device_root(name: str) -> Path:
    return SYSFS / name


def copy_device(tmp_path: Path, name: str) -> Path:
    """A writable copy of a fixture tree (symlinks kept as symlinks) to break things in."""
    return Path(shutil.copytree(SYSFS / name, tmp_path / name, symlinks=True))


def write_script(path: Path, body: str, mode: int = 0o755) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return str(path)


def process_is_gone(pid: int) -> bool:
    """Exited, or a zombie waiting for a reaper: either way it runs no more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def read_device(name: str) -> DeviceState:
    """The device's tree with its recorded vcgencmd."""
    root = device_root(name)
    return SysfsBackend(root, vcgencmd=str(root / "usr/bin/vcgencmd")).read()


# --- each device, read correctly ------------------------------------------------------------


def test_rpi4_zone_throttle_bits_load_and_no_battery() -> None:
    root = device_root("rpi4")
    state = SysfsBackend(root, vcgencmd=str(root / "usr/bin/vcgencmd"), clock=lambda: 1234.5).read()
    assert state.source == "sysfs"
    assert state.read_at == 1234.5
    assert state.zones == [ThermalZone("cpu-thermal", 48312)]  # "48312" is 48.312 °C in m°C
    assert state.hottest_zone_mc == 48312
    assert state.pi_throttled == 0x50005
    assert state.pi_throttled & PI_UNDERVOLTAGE_NOW
    assert state.pi_throttled & PI_THROTTLED_NOW
    assert not state.pi_throttled & PI_FREQ_CAPPED_NOW
    assert state.pi_throttled & PI_UNDERVOLTAGE_OCCURRED
    assert state.pi_throttled & PI_THROTTLED_OCCURRED
    assert (state.battery_present, state.battery_percent, state.plugged) == (False, None, None)
    assert (state.cpu_count, state.load_1m, state.metered) == (4, 0.52, None)
    assert state.problems == []


def test_rpi5_throttled_since_boot_only_and_fan_is_not_a_zone() -> None:
    state = read_device("rpi5")
    assert state.pi_throttled == 0x50000
    assert state.pi_throttled & PI_NOW_MASK == 0  # nothing now ...
    assert state.pi_throttled & PI_UNDERVOLTAGE_OCCURRED  # ... but since boot
    assert state.pi_throttled & PI_THROTTLED_OCCURRED
    # cooling_device0 (pwm-fan) sits beside thermal_zone0 in /sys/class/thermal.
    assert state.zones == [ThermalZone("cpu-thermal", 61050)]
    assert (state.cpu_count, state.load_1m) == (4, 3.97)
    assert state.problems == []


def test_android_phone_battery_units_charger_and_zones() -> None:
    state = read_device("android-phone")
    assert state.battery_present
    assert state.battery_percent == 57
    assert state.battery_status == "charging"
    assert state.battery_temp_dc == 312  # "312" tenths: 31.2 °C
    assert state.battery_voltage_uv == 4_123_000
    assert state.battery_current_ua == -1_523_000  # Qualcomm: negative while charging, kept as read
    assert state.plugged == "ac"  # type USB, usb_type [DCP]: a wall charger
    assert state.charging is True
    names = [z.name for z in state.zones]
    assert names == [
        "aoss0-usr", "cpu-0-0-usr", "cpu-0-1-usr", "cpu-1-0-usr",
        "gpuss-0-usr", "xo-therm", "skin-therm", "battery",
    ]  # fmt: skip
    assert state.hottest_zone == ThermalZone("cpu-1-0-usr", 45600)
    assert state.problems == ["thermal_zone8 (pa-therm1): implausible -273000 m°C dropped"]
    assert (state.cpu_count, state.load_1m, state.pi_throttled) == (8, 5.21, None)


def test_laptop_system_battery_not_the_mouse_and_no_vcgencmd() -> None:
    # vcgencmd is not on this machine's PATH: running it on a non-Pi would add a problem.
    state = SysfsBackend(device_root("laptop")).read()
    assert state.battery_percent == 81  # BAT0, not the mouse's 5 %
    assert state.battery_status == "not_charging"  # held at its charge threshold
    assert state.plugged == "ac"
    assert state.battery_voltage_uv == 12_703_000
    assert state.battery_current_ua is None  # this ACPI battery reports power_now only
    assert state.battery_temp_dc is None
    assert state.hottest_zone == ThermalZone("x86_pkg_temp", 52000)
    assert state.pi_throttled is None
    assert state.problems == []


def test_peripheral_battery_alone_is_no_system_battery(tmp_path: Path) -> None:
    root = copy_device(tmp_path, "laptop")
    (root / ANDROID_POWER / "BAT0").unlink()
    state = SysfsBackend(root).read()
    assert (state.battery_present, state.battery_percent) == (False, None)
    assert state.plugged == "ac"


def test_empty_bay_is_not_the_battery(tmp_path: Path) -> None:
    root = copy_device(tmp_path, "laptop")
    (root / ANDROID_POWER / "BAT0" / "present").write_text("0\n")
    assert SysfsBackend(root).read().battery_present is False


@pytest.mark.parametrize(
    ("usb_type", "online", "plugged"),
    [
        ("Unknown SDP CDP [DCP] C PD PD_PPS", "1", "ac"),
        ("Unknown [SDP] CDP DCP", "1", "usb"),  # a computer's port
        ("Unknown SDP CDP DCP C [PD] PD_PPS", "2", "ac"),  # online 2: programmable supply
        ("Unknown [SDP] CDP DCP", "0", "none"),
    ],
)
def test_plugged_from_usb_port_kind(
    tmp_path: Path, usb_type: str, online: str, plugged: str
) -> None:
    root = copy_device(tmp_path, "android-phone")
    usb = root / ANDROID_POWER / "usb"
    (usb / "usb_type").write_text(usb_type + "\n")
    (usb / "online").write_text(online + "\n")
    assert SysfsBackend(root).read().plugged == plugged


def test_wireless_charger_online(tmp_path: Path) -> None:
    root = copy_device(tmp_path, "android-phone")
    (root / ANDROID_POWER / "usb" / "online").write_text("0\n")
    (root / ANDROID_POWER / "wireless" / "online").write_text("1\n")
    assert SysfsBackend(root).read().plugged == "wireless"


def test_battery_overheat_health_is_a_severe_thermal_status(tmp_path: Path) -> None:
    root = copy_device(tmp_path, "android-phone")
    (root / ANDROID_POWER / "battery" / "health").write_text("Overheat\n")
    assert SysfsBackend(root).read().android_thermal_status == 3


def test_mains_backend_reports_ac_without_a_battery() -> None:
    root = device_root("rpi4")
    state = MainsBackend(root, vcgencmd=str(root / "usr/bin/vcgencmd")).read()
    assert (state.source, state.plugged, state.battery_present) == ("mains", "ac", False)
    assert state.charging is True
    assert state.pi_throttled == 0x50005


def test_mains_backend_keeps_a_battery_that_appears() -> None:
    state = MainsBackend(device_root("android-phone")).read()
    assert (state.battery_percent, state.plugged) == (57, "ac")


# --- vcgencmd failures: a problem and the rpi_volt fallback, never an exception -------------


def vcgencmd_absent(tmp_path: Path) -> str:
    return str(tmp_path / "absent")


def vcgencmd_vcio_denied(tmp_path: Path) -> str:
    # What raspberrypi/utils vcgencmd prints when the user is not in group video.
    return write_script(
        tmp_path / "vcgencmd",
        'echo "Can\'t open device file: /dev/vcio"\n'
        'echo "Try creating a device file with: sudo mknod /dev/vcio c 100 0"\nexit 255\n',
    )


def vcgencmd_not_executable(tmp_path: Path) -> str:
    return write_script(tmp_path / "vcgencmd", "echo throttled=0x0\n", mode=0o644)


def vcgencmd_old_firmware_error(tmp_path: Path) -> str:
    return write_script(tmp_path / "vcgencmd", "echo 'VCHI initialization failed'\n")


@pytest.mark.parametrize(
    ("make_vcgencmd", "problem"),
    [
        (vcgencmd_absent, "vcgencmd get_throttled: command not found"),
        (vcgencmd_vcio_denied, "exit status 255: Can't open device file: /dev/vcio"),
        (vcgencmd_not_executable, "cannot run (EACCES"),
        (vcgencmd_old_firmware_error, "unexpected output 'VCHI initialization failed'"),
    ],
    ids=["missing", "vcio-denied", "not-executable", "garbage"],
)
def test_vcgencmd_failure_falls_back_to_rpi_volt(
    tmp_path: Path, make_vcgencmd: Callable[[Path], str], problem: str
) -> None:
    state = SysfsBackend(device_root("rpi4"), vcgencmd=make_vcgencmd(tmp_path)).read()
    assert any(problem in p for p in state.problems), state.problems
    # rpi_volt in0_lcrit_alarm is 1: only the under-voltage bits are known.
    assert state.pi_throttled == PI_UNDERVOLTAGE_NOW | PI_UNDERVOLTAGE_OCCURRED
    assert "pi_throttled: from rpi_volt in0_lcrit_alarm, under-voltage bits only" in state.problems
    assert state.zones == [ThermalZone("cpu-thermal", 48312)]


def test_rpi5_fallback_alarm_clear_is_zero(tmp_path: Path) -> None:
    state = SysfsBackend(device_root("rpi5"), vcgencmd=str(tmp_path / "absent")).read()
    assert state.pi_throttled == 0


def test_hung_vcgencmd_times_out_and_its_process_group_dies(tmp_path: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    # The child sleep holds the output pipe open: killing only the shell would not free it.
    hung = write_script(tmp_path / "vcgencmd", f'sleep 30 &\necho $! > "{pidfile}"\nwait\n')
    started = time.monotonic()
    state = SysfsBackend(device_root("rpi4"), vcgencmd=hung, timeout_s=0.5).read()
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + TIMEOUT_MARGIN_S, elapsed
    assert "vcgencmd get_throttled: timed out after 0.5 s (killed)" in state.problems
    assert state.pi_throttled == PI_UNDERVOLTAGE_NOW | PI_UNDERVOLTAGE_OCCURRED
    assert process_is_gone(int(pidfile.read_text()))


# --- broken sysfs: a named partial state ----------------------------------------------------


def replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("abc\n", "thermal_zone3 (cpu-1-0-usr): not an integer: 'abc'"),
        ("\n", "thermal_zone3 (cpu-1-0-usr): empty"),
        ("0\n", "thermal_zone3 (cpu-1-0-usr): implausible 0 m°C dropped (unused sensor"),
        ("45\n", "thermal_zone3 (cpu-1-0-usr): implausible 45 m°C dropped (unused sensor"),
        ("200000\n", "thermal_zone3 (cpu-1-0-usr): implausible 200000 m°C dropped"),
        (None, "thermal_zone3 (cpu-1-0-usr): unreadable (EISDIR"),
    ],
    ids=["garbage", "empty", "zero", "whole-degrees", "too-hot", "directory"],
)
def test_broken_zone_is_dropped_and_named(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    root = copy_device(tmp_path, "android-phone")
    temp = root / "sys/class/thermal/thermal_zone3/temp"
    if content is None:
        replace_with_directory(temp)
    else:
        temp.write_text(content)
    state = SysfsBackend(root).read()
    assert "cpu-1-0-usr" not in [z.name for z in state.zones]
    assert len(state.zones) == 7
    assert state.hottest_zone == ThermalZone("cpu-0-0-usr", 41300)  # next hottest
    assert any(p.startswith(problem) for p in state.problems), state.problems
    assert state.battery_percent == 57  # the rest of the state is still read


@pytest.mark.parametrize(
    ("attr", "content", "field", "problem"),
    [
        ("capacity", "lots\n", "battery_percent", "power_supply/battery/capacity: not an integer"),
        ("capacity", "150\n", "battery_percent", "power_supply/battery/capacity: implausible 150"),
        ("temp", "-2731\n", "battery_temp_dc", "power_supply/battery/temp: implausible -2731"),
        ("status", "Exploding\n", "battery_status", "power_supply/battery/status: unknown value"),
        ("capacity", None, "battery_percent", "power_supply/battery/capacity: missing"),
        ("voltage_now", "", "battery_voltage_uv", "power_supply/battery/voltage_now: empty"),
    ],
)
def test_broken_battery_attribute_is_none_and_named(
    tmp_path: Path, attr: str, content: str | None, field: str, problem: str
) -> None:
    root = copy_device(tmp_path, "android-phone")
    path = root / ANDROID_POWER / "battery" / attr
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    state = SysfsBackend(root).read()
    assert getattr(state, field) is None
    assert any(p.startswith(problem) for p in state.problems), state.problems
    assert state.battery_present and state.plugged == "ac"


def test_power_supply_class_not_a_directory(tmp_path: Path) -> None:
    root = copy_device(tmp_path, "laptop")
    shutil.rmtree(root / ANDROID_POWER)
    (root / ANDROID_POWER).write_text("")
    state = SysfsBackend(root).read()
    assert (state.battery_present, state.plugged) == (False, None)
    assert any(p.startswith("power_supply: cannot list (ENOTDIR") for p in state.problems)
    assert len(state.zones) == 4


def test_empty_root_is_an_empty_state_not_an_error(tmp_path: Path) -> None:
    state = SysfsBackend(tmp_path).read()
    assert (state.battery_present, state.zones, state.plugged) == (False, [], None)
    assert state.load_1m is None
    assert state.cpu_count == (os.cpu_count() or 1)


# The child reads the tree as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so mode 000
# gives the EACCES a non-root agent meets (a phone's SELinux denial reaches us the same way).
_READ_IN_CHILD = """
import dataclasses, json, sys
from hal.sysfs import SysfsBackend
print(json.dumps(dataclasses.asdict(SysfsBackend(sys.argv[1]).read())))
"""


def read_without_dac_override(root: Path) -> dict[str, Any]:
    argv = [sys.executable, "-c", _READ_IN_CHILD, str(root)]
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=True)
    state: dict[str, Any] = json.loads(done.stdout)
    return state


def test_permission_denied_is_named(tmp_path: Path) -> None:
    root = copy_device(tmp_path, "android-phone")
    (root / ANDROID_POWER / "battery" / "capacity").chmod(0)
    (root / "sys/class/thermal/thermal_zone3/temp").chmod(0)
    state = read_without_dac_override(root)
    assert state["battery_percent"] is None
    assert state["battery_temp_dc"] == 312
    assert "cpu-1-0-usr" not in [z["name"] for z in state["zones"]]
    problems = state["problems"]
    assert any(p.startswith("power_supply/battery/capacity: unreadable (EACCES") for p in problems)
    assert any(p.startswith("thermal_zone3 (cpu-1-0-usr): unreadable (EACCES") for p in problems)


@pytest.mark.parametrize(("text", "count"), [("0", 1), ("0-3", 4), ("0-3,6,8-9", 7)])
def test_cpu_list(text: str, count: int) -> None:
    assert parse_cpu_list(text) == count


def test_malformed_cpu_list_falls_back_to_os_count(tmp_path: Path) -> None:
    root = copy_device(tmp_path, "rpi4")
    (root / "sys/devices/system/cpu/online").write_text("3-1\n")
    state = SysfsBackend(root, vcgencmd=str(root / "usr/bin/vcgencmd")).read()
    assert state.cpu_count == (os.cpu_count() or 1)
    assert "cpu/online: not a cpu list: '3-1'" in state.problems
