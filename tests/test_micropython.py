"""The portable core under the real MicroPython interpreter: its own tests, and mpy-cross."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.conftest import ROOT, mpy_suite_summary

MPY_TESTS = sorted(p.stem for p in (ROOT / "tests" / "mpy").glob("test_*.py"))
CORE_MODULES = sorted((ROOT / "edge_agent" / "core").rglob("*.py"))


@pytest.mark.parametrize("module", MPY_TESTS)
def test_core_under_micropython(micropython: str, module: str) -> None:
    last = mpy_suite_summary(micropython, module, "4M")
    passed = int(last.split()[0])
    assert passed > 0 and last.endswith(" 0 failed"), last


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_compiles_with_mpy_cross(
    mpy_cross: str, path: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / (path.stem + ".mpy")
    cmd = [mpy_cross, "-o", str(out), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
