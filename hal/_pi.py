"""Raspberry Pi throttling: ``vcgencmd get_throttled``, else the ``rpi_volt`` hwmon alarm.

``vcgencmd get_throttled`` prints ``throttled=0x50005`` (bits in hal.state PI_*). It needs
/dev/vcio (root:video 0660); without it the tool prints "Can't open device file: /dev/vcio"
and exits 255 (raspberrypi/utils vcgencmd.c). The kernel's raspberrypi-hwmon driver ("rpi_volt")
polls the same firmware mask every 2 s, clearing its sticky bits, and exposes only bit 16 as
``in0_lcrit_alarm``: 1 means under-voltage was seen within the last poll period.
"""

from __future__ import annotations

import re
from pathlib import Path

from hal._read import list_dir, read_attr, read_int_attr
from hal._run import run_bounded
from hal.state import PI_UNDERVOLTAGE_NOW, PI_UNDERVOLTAGE_OCCURRED

_THROTTLED = re.compile(r"throttled=0x([0-9a-fA-F]{1,8})")
_LABEL = "vcgencmd get_throttled"


def pi_model(root: Path, problems: list[str]) -> str | None:
    """The board's model string when it is a Raspberry Pi (device tree), else ``None``."""
    model = read_attr(root / "sys/firmware/devicetree/base/model", problems, "devicetree model")
    return model if model is not None and model.startswith("Raspberry Pi") else None


def rpi_volt_hwmon(root: Path) -> Path | None:
    for entry in list_dir(root / "sys/class/hwmon", [], "hwmon"):
        if read_attr(entry / "name", [], "") == "rpi_volt":
            return entry
    return None


def parse_throttled(output: str) -> int | None:
    match = _THROTTLED.fullmatch(output.strip())
    return None if match is None else int(match.group(1), 16)


def _from_rpi_volt(hwmon: Path, problems: list[str]) -> int | None:
    alarm = read_int_attr(hwmon / "in0_lcrit_alarm", problems, "rpi_volt/in0_lcrit_alarm")
    if alarm is None:
        return None
    problems.append("pi_throttled: from rpi_volt in0_lcrit_alarm, under-voltage bits only")
    return PI_UNDERVOLTAGE_NOW | PI_UNDERVOLTAGE_OCCURRED if alarm else 0


def read_pi_throttled(
    root: Path, vcgencmd: str, timeout_s: float, problems: list[str]
) -> int | None:
    """The get_throttled mask on a Pi (``None`` elsewhere or when nothing could be read)."""
    hwmon = rpi_volt_hwmon(root)
    if pi_model(root, problems) is None and hwmon is None:
        return None
    result = run_bounded([vcgencmd, "get_throttled"], timeout_s, _LABEL)
    if result.stdout is not None:
        mask = parse_throttled(result.stdout)
        if mask is not None:
            return mask
        problems.append(f"{_LABEL}: unexpected output {result.stdout.strip()[:60]!r}")
    elif result.problem is not None:
        problems.append(result.problem)
    return None if hwmon is None else _from_rpi_volt(hwmon, problems)
