"""edge_agent.kernels: backend choice, fallback to the Python twins, checkpoint/resume across
backends, validation before any C runs, and the known-answer vectors MicroPython checks.

Regenerate tests/data/kernel_vectors.json (after a deliberate semantic change only) with
``.venv/bin/python -m tests.test_kernels_api``.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from typing import Any

import cbor2
import pytest

from edge_agent import kernels, native
from edge_agent.kernels import Execution, KernelError
from tests.conftest import DATA, ROOT
from tests.test_kernel_gemm_i8 import int8_operands

VECTORS = DATA / "kernel_vectors.json"
# Which params of each kernel are bytes (hex strings in the JSON file).
BYTES_PARAMS = {"gemm_i8": ("a", "w", "bias"), "montecarlo_pi": ()}


def gemm_case(seed: int, m: int, n: int, k: int, **extra: Any) -> dict[str, Any]:
    rng = random.Random(seed)
    return {
        **int8_operands(rng, m, n, k, 30000),
        "multiplier": rng.randint(1 << 20, 1 << 21),
        "shift": 30,
        **extra,
    }


def vector_params() -> list[tuple[str, dict[str, Any], int]]:
    """(kernel, params, chunk_units) of every known-answer vector: small enough for MicroPython,
    covering the AVX2 tails (k % 16, odd rows, n % 4), relu, zero points and both rounding signs."""
    return [
        ("gemm_i8", gemm_case(1, 1, 1, 1), 0),
        ("gemm_i8", gemm_case(2, 3, 5, 17), 85),
        ("gemm_i8", gemm_case(3, 4, 8, 64, relu=True, out_zero_point=-5), 0),
        ("gemm_i8", gemm_case(4, 5, 7, 33, out_zero_point=100), 300),
        ("gemm_i8", gemm_case(5, 2, 9, 48, relu=True, out_zero_point=-128), 1),
        ("gemm_i8", {"m": 1, "n": 2, "k": 16, "a": b"\x80" * 16, "w": b"\x80" * 16 + b"\x7f" * 16,
                     "bias": struct.pack("<2i", 2**31 - 1 - 16 * 16384, -(2**31 - 1) + 16 * 16384),
                     "multiplier": 2**31 - 1, "shift": 62}, 0),
        ("montecarlo_pi", {"seed": 0, "points": 1}, 0),
        ("montecarlo_pi", {"seed": 1, "points": 1000}, 0),
        ("montecarlo_pi", {"seed": 2**64 - 1, "points": 3000}, 777),
        ("montecarlo_pi", {"seed": 0x0123456789ABCDEF, "points": 5000}, 0),
    ]


def encode(kernel: str, params: dict[str, Any]) -> dict[str, Any]:
    return {k: v.hex() if k in BYTES_PARAMS[kernel] else v for k, v in params.items()}


def decode(kernel: str, params: dict[str, Any]) -> dict[str, Any]:
    return {k: bytes.fromhex(v) if k in BYTES_PARAMS[kernel] else v for k, v in params.items()}


def encode_result(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in result.items()}


def make_vectors() -> list[dict[str, Any]]:
    return [
        {"kernel": name, "params": encode(name, p), "chunk_units": chunk,
         "result": encode_result(kernels.run(name, p, backend="c"))}
        for name, p, chunk in vector_params()
    ]


def test_vectors_file_still_matches_the_c_kernel() -> None:
    vectors = json.loads(VECTORS.read_text())
    assert [v["kernel"] for v in vectors] == [name for name, _, _ in vector_params()]
    for v in vectors:
        result = kernels.run(v["kernel"], decode(v["kernel"], v["params"]), backend="c")
        assert encode_result(result) == v["result"], v["params"]


def test_names_and_unknown_kernel_or_backend() -> None:
    assert {"gemm_i8", "montecarlo_pi", "sha256_search"} <= set(kernels.names())
    with pytest.raises(KernelError, match="unknown kernel 'matmul'"):
        kernels.run("matmul", {})
    with pytest.raises(KernelError, match="unknown backend 'gpu'"):
        kernels.run("montecarlo_pi", {"seed": 1, "points": 5}, backend="gpu")


class _NoC:
    """Stands in for the C library: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"C was called ({name})")


def test_python_backend_never_touches_c(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = kernels.run("montecarlo_pi", {"seed": 1, "points": 50}, backend="c")
    monkeypatch.setattr(native, "lib", _NoC())
    assert kernels.run("montecarlo_pi", {"seed": 1, "points": 50}, backend="python") == expected
    with pytest.raises(AssertionError, match="C was called"):
        kernels.run("montecarlo_pi", {"seed": 1, "points": 50}, backend="c")


def test_falls_back_to_python_when_c_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    p = gemm_case(7, 3, 4, 20)
    expected = kernels.run("gemm_i8", p, backend="c")
    monkeypatch.setattr(native, "AVAILABLE", False)
    ex = Execution("gemm_i8", p, backend="c")
    assert ex.backend == "python"
    assert kernels.run("gemm_i8", p, backend="c") == expected


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("gemm_i8", gemm_case(1, 2, 2, 2) | {"k": 3}),
        ("gemm_i8", gemm_case(1, 2, 2, 2) | {"shift": 0}),
        ("gemm_i8", gemm_case(1, 2, 2, 2) | {"relu": "yes"}),
        ("montecarlo_pi", {"seed": -5, "points": 10}),
        ("montecarlo_pi", {"seed": 5, "points": 10, "extra": 1}),
        ("montecarlo_pi", [("seed", 1)]),
    ],
)
def test_bad_params_fail_before_any_c_runs(
    monkeypatch: pytest.MonkeyPatch, name: str, params: Any
) -> None:
    monkeypatch.setattr(native, "lib", _NoC())
    with pytest.raises(KernelError):
        kernels.run(name, params, backend="c")


CHECKPOINT_CASES = [
    ("gemm_i8", gemm_case(8, 9, 6, 40, relu=True), 6 * 40 * 2),
    ("montecarlo_pi", {"seed": 99, "points": 5000}, 1234),
]


@pytest.mark.parametrize(("name", "params", "chunk"), CHECKPOINT_CASES)
@pytest.mark.parametrize(("first", "second"), [("c", "python"), ("python", "c")])
def test_checkpoint_resumes_on_the_other_backend(
    name: str, params: dict[str, Any], chunk: int, first: str, second: str
) -> None:
    expected = kernels.run(name, params, backend="c")
    ex = Execution(name, params, backend=first)
    ex.step(chunk)
    assert 0 < ex.done_units < ex.total_units
    with pytest.raises(KernelError, match="units done"):
        ex.result()
    # A checkpoint survives canonical CBOR (what is stored and signed) unchanged.
    blob = cbor2.dumps(ex.checkpoint(), canonical=True)
    resumed = Execution(name, params, backend=second, state=cbor2.loads(blob))
    assert resumed.checkpoint() == ex.checkpoint()
    while not resumed.done:
        resumed.step(chunk)
    assert resumed.result() == expected


@pytest.mark.parametrize(("name", "params", "chunk"), CHECKPOINT_CASES)
def test_both_backends_write_identical_checkpoints(
    name: str, params: dict[str, Any], chunk: int
) -> None:
    runs = [Execution(name, params, backend=b) for b in ("c", "python")]
    while not runs[0].done:
        assert runs[0].step(chunk) == runs[1].step(chunk)
        assert runs[0].checkpoint() == runs[1].checkpoint()
    assert runs[1].done


@pytest.mark.parametrize(
    "state", [{}, {"units": -1}, {"units": 10**9}, {"units": True}, [("units", 0)]]
)
def test_foreign_checkpoint_is_refused(state: Any) -> None:
    with pytest.raises(KernelError, match="checkpoint state does not belong"):
        Execution("montecarlo_pi", {"seed": 1, "points": 100}, state=state)


def test_benchmark_quick_run_ends_with_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernels", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["kernels"]) == {"gemm_i8", "montecarlo_pi", "sha256_search"}
    for name, r in report["kernels"].items():
        assert set(r) == {"c_ops_s", "py_ops_s", "vs_python", "reference", "vs_reference"}, name
        assert r["c_ops_s"] > 0 and r["py_ops_s"] > 0 and r["vs_reference"] > 0, name
        assert r["vs_python"] == pytest.approx(r["c_ops_s"] / r["py_ops_s"], rel=0.01), name
    assert "OpenBLAS" in report["kernels"]["gemm_i8"]["reference"]
    assert report["env"]["quick"] is True
    assert "C kernels vs Python twins" in proc.stdout


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(make_vectors(), indent=1) + "\n")
    print(f"wrote {VECTORS}")
