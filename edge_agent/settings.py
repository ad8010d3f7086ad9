"""The owner's settings: the ``[governor]`` table of ``<state dir>/config.toml``.

Names are those of ``edge_agent.core.governor.Settings``; the times of day are ``"HH:MM"`` local
time. A missing file means the documented defaults (docs/GOVERNOR.md). Example::

    [governor]
    require_charging = true
    window_start_min = "23:00"
    window_end_min = "07:00"
    wake_min = "07:00"
    wake_target_pct = 100
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from edge_agent.core.governor import Settings

CONFIG_NAME = "config.toml"
TIME_SETTINGS = ("window_start_min", "window_end_min", "wake_min")


class SettingsError(ValueError):
    """config.toml cannot be read as governor settings; the message names the file and field."""


def _minute_of_day(name: str, value: str) -> int:
    hours, sep, minutes = value.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise SettingsError(f"governor.{name}: want a time of day as HH:MM, got {value!r}")
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise SettingsError(f"governor.{name}: {value!r} is not a time of day")
    return h * 60 + m


def parse_settings(text: str) -> Settings:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"not TOML: {exc}") from None
    table: dict[str, Any] = dict(document.get("governor", {}))
    for name in TIME_SETTINGS:
        if isinstance(table.get(name), str):
            table[name] = _minute_of_day(name, table[name])
    try:
        return Settings(**table)
    except ValueError as exc:
        raise SettingsError(f"governor: {exc}") from None


def load_settings(state_root: Path) -> Settings:
    """The settings in ``state_root/config.toml``, or the defaults when there is none."""
    path = state_root / CONFIG_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Settings()
    try:
        return parse_settings(text)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None
