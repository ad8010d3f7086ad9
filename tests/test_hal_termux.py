"""TermuxBackend on recorded termux-api answers (tests/fixtures/termux/*.json).

The fake ``termux-battery-status`` / ``termux-wifi-connectioninfo`` in tests/fixtures/termux/bin
print the recording named by an environment variable, as the real commands print the
Termux:API app's answer. Thermal zones, CPU count and load come from the Android phone's sysfs
tree. Failure modes are real processes: one that hangs, one that fails, one that prints junk.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hal.state import DeviceState, ThermalZone
from hal.termux import TermuxBackend
from tests.test_hal_sysfs import FIXTURES, SYSFS, TIMEOUT_MARGIN_S, process_is_gone, write_script

TERMUX = FIXTURES / "termux"
BATTERY_COMMAND = str(TERMUX / "bin/termux-battery-status")
WIFI_COMMAND = str(TERMUX / "bin/termux-wifi-connectioninfo")
PHONE = SYSFS / "android-phone"
BROKEN_ZONE = "thermal_zone8 (pa-therm1): implausible -273000 m°C dropped"


def read(
    monkeypatch: pytest.MonkeyPatch,
    recording: str,
    wifi: str = "wifi_connected.json",
    command: str = BATTERY_COMMAND,
    timeout_s: float = 5.0,
) -> DeviceState:
    monkeypatch.setenv("EDGE_TERMUX_BATTERY_JSON", str(TERMUX / recording))
    monkeypatch.setenv("EDGE_TERMUX_WIFI_JSON", str(TERMUX / wifi))
    backend = TermuxBackend(command, timeout_s, wifi_command=WIFI_COMMAND, sysfs_root=PHONE)
    return backend.read()


def test_charging_on_ac(monkeypatch: pytest.MonkeyPatch) -> None:
    state = read(monkeypatch, "charging_ac.json")
    assert state.source == "termux"
    assert (state.battery_present, state.battery_percent) == (True, 57)
    assert (state.battery_status, state.plugged, state.charging) == ("charging", "ac", True)
    assert state.battery_temp_dc == 312  # 31.2 °C
    assert state.battery_voltage_uv == 4_123_000  # 4123 mV
    assert state.battery_current_ua == -1_523_000  # this phone's sign for charging, kept
    assert state.android_thermal_status is None  # health GOOD says nothing about the skin
    assert state.metered is False  # associated with Wi-Fi
    assert state.hottest_zone == ThermalZone("cpu-1-0-usr", 45600)
    assert (state.cpu_count, state.load_1m) == (8, 5.21)
    assert state.problems == [BROKEN_ZONE]


def test_discharging_float_temperature_rounds_to_tenths(monkeypatch: pytest.MonkeyPatch) -> None:
    state = read(monkeypatch, "discharging.json", wifi="wifi_disconnected.json")
    assert state.battery_temp_dc == 299  # 29.899999618530273 °C (older termux-api)
    assert (state.battery_status, state.plugged, state.charging) == ("discharging", "none", False)
    assert state.battery_current_ua == 369_000  # positive while discharging on this one
    assert state.battery_percent == 67
    assert state.metered is True  # not on Wi-Fi: assume cellular


def test_full_on_wireless(monkeypatch: pytest.MonkeyPatch) -> None:
    state = read(monkeypatch, "full_wireless.json")
    assert (state.battery_status, state.plugged, state.battery_percent) == ("full", "wireless", 100)
    assert state.battery_temp_dc == 335


def test_missing_keys_give_none_and_one_named_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    state = read(monkeypatch, "keys_missing.json")
    assert state.battery_percent == 43  # from level/scale when percentage is absent
    assert (state.battery_temp_dc, state.battery_current_ua) == (None, None)
    assert state.battery_voltage_uv == 4_012_000
    assert (state.battery_status, state.plugged) == ("charging", "usb")
    assert state.problems == ["termux-battery-status: missing temperature", BROKEN_ZONE]


def test_overheat_is_a_severe_thermal_status(monkeypatch: pytest.MonkeyPatch) -> None:
    state = read(monkeypatch, "overheat.json")
    assert state.android_thermal_status == 3  # THERMAL_STATUS_SEVERE
    assert (state.battery_status, state.battery_temp_dc) == ("not_charging", 523)


def test_hung_command_is_killed_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pidfile = tmp_path / "termux-api.pid"
    # As when the Termux:API app is missing: the script's termux-api child never answers.
    hung = write_script(
        tmp_path / "termux-battery-status", f'sleep 30 &\necho $! > "{pidfile}"\nwait\n'
    )
    started = time.monotonic()
    state = read(monkeypatch, "charging_ac.json", command=hung, timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + TIMEOUT_MARGIN_S, elapsed
    assert "termux-battery-status: timed out after 0.5 s (killed)" in state.problems
    assert process_is_gone(int(pidfile.read_text()))
    # A phone's battery is unknown, not absent: absent would read as "on external power".
    assert (state.battery_present, state.battery_percent, state.charging) == (True, None, None)
    assert len(state.zones) == 8  # the rest is still read
    assert state.metered is False


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("echo 'termux-api: connection refused' >&2\nexit 1\n", "exit status 1: termux-api"),
        ("echo 'Error: not a json'\n", "output is not JSON: 'Error: not a json'"),
        ("echo '[1, 2]'\n", "output is not a JSON object"),
        ('echo \'{"API_ERROR": "No battery"}\'\n', "API_ERROR 'No battery'"),
        ('echo \'{"percentage": "57"}\'\n', "percentage is not a number"),
        ('echo \'{"percentage": 57.5}\'\n', "percentage is not an integer"),
        ('echo \'{"percentage": 157}\'\n', "implausible percentage 157"),
        ('echo \'{"plugged": "PLUGGED_8"}\'\n', "unknown plugged 'PLUGGED_8'"),
        ('echo \'{"temperature": -214748364.8}\'\n', "temperature implausible -2147483648"),
    ],
    ids=[
        "exit-1", "not-json", "not-object", "api-error", "string", "float",
        "over-100", "unknown-plug", "min-int",
    ],
)  # fmt: skip
def test_broken_output_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str, problem: str
) -> None:
    command = write_script(tmp_path / "termux-battery-status", body)
    state = read(monkeypatch, "charging_ac.json", command=command)
    assert any(p.startswith("termux-battery-status: " + problem) for p in state.problems), (
        state.problems
    )
    assert state.battery_percent is None
    assert state.plugged is None
    assert state.battery_temp_dc is None


def test_missing_command_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = read(monkeypatch, "charging_ac.json", command=str(tmp_path / "termux-battery-status"))
    assert state.problems[0].startswith("termux-battery-status: command not found")


def test_wifi_api_error_leaves_metered_unknown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "wifi.json").write_text('{"API_ERROR": "No current connection"}\n')
    state = read(monkeypatch, "charging_ac.json", wifi=str(tmp_path / "wifi.json"))
    assert state.metered is None
    assert "termux-wifi-connectioninfo: API_ERROR 'No current connection'" in state.problems


def test_without_wifi_command_metered_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_TERMUX_BATTERY_JSON", str(TERMUX / "charging_ac.json"))
    state = TermuxBackend(BATTERY_COMMAND, wifi_command=None, sysfs_root=PHONE).read()
    assert (state.metered, state.battery_percent) == (None, 57)
    assert state.problems == [BROKEN_ZONE]
