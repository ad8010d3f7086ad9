"""Backend detection on the recorded device trees, and open_backend's kinds."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal.detect import detect, open_backend
from hal.state import DeviceState
from hal.sysfs import MainsBackend, SysfsBackend
from hal.termux import TermuxBackend
from tests.test_hal_sysfs import SYSFS, copy_device

TERMUX_BIN = Path(__file__).resolve().parent / "fixtures/termux/bin"
PLAIN_ENV = {"PATH": "/usr/bin:/bin"}


def test_termux_version_wins() -> None:
    kind, why = detect(SYSFS / "laptop", environ={"TERMUX_VERSION": "0.118.1", **PLAIN_ENV})
    assert (kind, why) == ("termux", "TERMUX_VERSION=0.118.1 is set")


def test_termux_command_on_path() -> None:
    kind, why = detect(SYSFS / "laptop", environ={"PATH": f"/usr/bin:{TERMUX_BIN}"})
    assert kind == "termux"
    assert why == f"termux-battery-status is on PATH at {TERMUX_BIN / 'termux-battery-status'}"


@pytest.mark.parametrize(
    ("device", "kind", "why"),
    [
        ("android-phone", "sysfs", "system battery battery under "),
        ("laptop", "sysfs", "system battery BAT0 under "),
        ("rpi4", "mains", "no battery; thermal zones readable: mains powered"),
        ("rpi5", "mains", "no battery; thermal zones readable: mains powered"),
    ],
)
def test_device_trees(device: str, kind: str, why: str) -> None:
    found_kind, found_why = detect(SYSFS / device, environ=PLAIN_ENV)
    assert found_kind == kind
    assert found_why.startswith(why)


def test_peripheral_battery_does_not_make_a_battery_device(tmp_path: Path) -> None:
    root = copy_device(tmp_path, "laptop")
    (root / "sys/class/power_supply/BAT0").unlink()
    assert detect(root, environ=PLAIN_ENV)[0] == "mains"


def test_nothing_readable_is_mains_with_only_load(tmp_path: Path) -> None:
    kind, why = detect(tmp_path, environ=PLAIN_ENV)
    assert (kind, why) == (
        "mains",
        "no battery and no thermal zone: mains powered, only load is known",
    )


def test_open_detected_pi_reads_as_mains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TERMUX_VERSION", raising=False)
    monkeypatch.setenv("PATH", PLAIN_ENV["PATH"])
    root = SYSFS / "rpi4"
    backend = open_backend(sysfs_root=root, vcgencmd=str(root / "usr/bin/vcgencmd"))
    assert isinstance(backend, MainsBackend)
    state = backend.read()
    assert (state.source, state.plugged, state.pi_throttled) == ("mains", "ac", 0x50005)


def test_open_each_kind() -> None:
    termux = open_backend("termux", termux_command="/x/termux-battery-status", timeout_s=3.0)
    assert isinstance(termux, TermuxBackend)
    assert (termux.name, termux.command, termux.timeout_s) == (
        "termux",
        "/x/termux-battery-status",
        3.0,
    )
    sysfs = open_backend("sysfs", sysfs_root=SYSFS / "laptop", timeout_s=30.0)
    assert isinstance(sysfs, SysfsBackend)
    assert (sysfs.name, sysfs.timeout_s) == ("sysfs", 2.0)  # vcgencmd kept short
    assert sysfs.read().battery_percent == 81
    assert open_backend("mains").name == "mains"


def test_open_simulated() -> None:
    backend = open_backend("simulated")
    assert backend.name == "simulated"
    assert isinstance(backend.read(), DeviceState)


def test_unknown_kind_names_the_choices() -> None:
    with pytest.raises(
        ValueError,
        match="unknown backend kind 'pisugar': choose one of mains, simulated, sysfs, termux",
    ):
        open_backend("pisugar")
