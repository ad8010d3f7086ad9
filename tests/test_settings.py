"""The owner's config.toml becomes governor settings, with clear errors naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.settings import SettingsError, load_settings, parse_settings


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path).as_dict() == parse_settings("").as_dict()


def test_times_of_day_and_values(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[governor]\nwindow_start_min = "23:00"\nwindow_end_min = "07:30"\n'
        'wake_min = "06:45"\nbattery_max_c = 38.0\nrequire_charging = false\n'
    )
    s = load_settings(tmp_path)
    assert (s.window_start_min, s.window_end_min, s.wake_min) == (1380, 450, 405)
    assert s.battery_max_c == 38.0 and s.require_charging is False


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[governor]\nwake_min = "7am"', "governor.wake_min: want a time of day as HH:MM"),
        ('[governor]\nwake_min = "24:00"', "'24:00' is not a time of day"),
        ("[governor]\nno_such = 1", "unknown setting 'no_such'"),
        ('[governor]\nwindow_start_min = "23:00"', "go together"),
        ("[governor\n", "not TOML"),
    ],
)
def test_bad_settings_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(SettingsError, match=needle) as e:
        load_settings(tmp_path)
    assert str(tmp_path / "config.toml") in str(e.value)


def test_status_uses_the_owners_settings(tmp_path: Path) -> None:
    # A window that excludes every minute but one: the decision must say so.
    (tmp_path / "config.toml").write_text(
        '[governor]\nwindow_start_min = "00:00"\nwindow_end_min = "00:01"\n'
        "require_charging = false\n"
    )
    cmd = [sys.executable, "-m", "edge_agent.cli", "status", "--hal", "simulated", "--json"]
    out = subprocess.run(
        [*cmd, "--state-dir", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out)
    assert report["reason"] == "outside_window", report
    bad = tmp_path / "config.toml"
    bad.write_text('[governor]\nwake_min = "soon"')
    proc = subprocess.run(
        [*cmd, "--state-dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2 and "wake_min" in proc.stderr
