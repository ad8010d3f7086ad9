"""``edge-agent status`` through the installed console script, on each backend it can reach here."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "sysfs"
KEYS = {
    "battery_percent",
    "charging",
    "battery_temp_c",
    "hottest_zone_c",
    "throttled",
    "decision",
    "reason",
    "backend",
    "problems",
    "duty",
    "threads",
}


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    script = pathlib.Path(sys.executable).parent / "edge-agent"
    # A PATH without termux-battery-status, so auto-detection looks at the sysfs tree only.
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("TERMUX_VERSION", None)
    proc = subprocess.run(
        [str(script), "status", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def status_json(*args: str) -> dict[str, Any]:
    out = edge_agent(*args, "--json").stdout.strip().splitlines()
    assert len(out) == 1, out
    result: dict[str, Any] = json.loads(out[0])
    assert result.keys() >= KEYS, KEYS - result.keys()
    return result


def test_simulated_phone_json() -> None:
    r = status_json("--hal", "simulated")
    assert r["backend"] == "simulated" and r["backend_reason"] == "chosen with --hal"
    assert r["battery_percent"] == 50 and r["charging"] is True
    assert 25.0 < r["battery_temp_c"] < 40.0
    assert r["throttled"] is False
    assert (r["decision"], r["reason"], r["duty"], r["threads"]) == ("run", "ok", 1.0, 8)


def test_phone_sysfs_tree_auto_detected() -> None:
    r = status_json("--sysfs-root", str(FIXTURES / "android-phone"))
    assert r["backend"] == "sysfs" and r["backend_reason"].startswith("auto-detected: ")
    assert r["battery_percent"] == 57 and r["battery_temp_c"] == 31.2
    assert r["hottest_zone_c"] == 45.6 and r["hottest_zone"] == "cpu-1-0-usr"
    assert r["decision"] == "run" and r["throttled"] is None
    assert any("pa-therm1" in p for p in r["problems"])


def test_pi_under_voltage_stops_and_says_why() -> None:
    r = status_json("--sysfs-root", str(FIXTURES / "rpi4"), "--vcgencmd", "/nonexistent/vcgencmd")
    assert r["backend"] == "mains" and "no battery" in r["backend_reason"]
    assert r["battery_percent"] is None and r["charging"] is True
    assert r["throttled"] is True and r["pi_throttled"] == "0x10001"
    assert (r["decision"], r["reason"], r["threads"]) == ("stop", "pi_undervoltage", 0)
    assert r["text"] == "stopped: Pi under-voltage (0x10001)"


def test_hot_battery_in_a_tree_of_our_own(tmp_path: pathlib.Path) -> None:
    # A minimal phone-like tree with real units: capacity %, temp in tenths, zones in m°C.
    bat = tmp_path / "sys/class/power_supply/battery"
    bat.mkdir(parents=True)
    for name, value in {
        "type": "Battery",
        "present": "1",
        "capacity": "83",
        "status": "Charging",
        "temp": "412",
        "voltage_now": "4200000",
    }.items():
        (bat / name).write_text(value + "\n")
    usb = tmp_path / "sys/class/power_supply/usb"
    usb.mkdir(parents=True)
    (usb / "type").write_text("USB\n")
    (usb / "online").write_text("1\n")
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-0-0-usr\n")
    (zone / "temp").write_text("47300\n")
    r = status_json("--hal", "sysfs", "--sysfs-root", str(tmp_path))
    assert r["battery_percent"] == 83 and r["battery_temp_c"] == 41.2
    assert r["hottest_zone_c"] == 47.3
    assert (r["decision"], r["reason"]) == ("pause", "battery_hot")
    assert r["text"] == "paused: battery 41.2 °C > 40.0 °C"
    human = edge_agent("--hal", "sysfs", "--sysfs-root", str(tmp_path)).stdout
    assert "backend sysfs: chosen with --hal" in human
    assert "41.2 °C" in human and "PAUSE" in human and "paused: battery 41.2 °C > 40.0 °C" in human


def test_human_output_names_the_backend_and_the_decision() -> None:
    out = edge_agent("--hal", "simulated").stdout
    assert "backend simulated: chosen with --hal" in out
    assert "50 % (charging)" in out
    assert "RUN 100% on 8 threads" in out and "running at full speed" in out
