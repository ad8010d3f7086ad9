"""Kernel throughput: each C kernel against its Python twin and against an outside reference.

Run from the repository root: ``.venv/bin/python -m benchmarks.kernels [--quick]``. Prints a table,
then as its last line one JSON object {"kernels": {name: {c_ops_s, py_ops_s, vs_python,
reference, vs_reference}}, "env": {...}}.

Every figure is the median of several runs, on one thread, measured in this process so ratios
compare like with like on a noisy shared machine. Python twins run on smaller inputs than C
(their ops/s barely depends on size: per-op interpreter cost dominates), so the run stays short.

Ops per kernel: gemm_i8 2*M*N*K (a multiply and an add per MAC, as BLAS counts FLOPs);
sha256_search 64 bytes per nonce (one compression after the prefix's midstate, so ops/s is
bytes/s); montecarlo_pi one point.

numpy's OpenBLAS is pinned to one thread, and OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on some
machines here to dodge old OpenBLAS bugs; they slow a current one) are dropped for this process
only, before numpy loads; the JSON names the BLAS core that ran.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import pathlib
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from edge_agent import kernels, native

#: Environment numpy must load under for a fair single-thread reference.
NUMPY_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NUMPY_ENV_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

#: Ratios this project promises (docs/KERNELS.md).
TARGETS: dict[str, dict[str, float | None]] = {
    "gemm_i8": {"vs_python": 500.0, "vs_reference": 0.25},
    "sha256_search": {"vs_python": None, "vs_reference": 0.8},
    "montecarlo_pi": {"vs_python": 100.0, "vs_reference": 100.0},
}

Sizes = dict[str, Any]
FULL: Sizes = {
    "repeats": 5,
    "gemm_c": (1024, 1024, 1024),
    "gemm_py": (16, 32, 128),
    "sha_c": 2_000_000,
    "sha_py": 20_000,
    "hashlib_mib": 64,
    "pi_c": 50_000_000,
    "pi_py": 200_000,
}
QUICK: Sizes = {
    "repeats": 3,
    "gemm_c": (128, 128, 256),
    "gemm_py": (4, 8, 64),
    "sha_c": 100_000,
    "sha_py": 1_000,
    "hashlib_mib": 4,
    "pi_c": 2_000_000,
    "pi_py": 10_000,
}


def prepare_numpy_env() -> None:
    """Set NUMPY_ENV before numpy loads; re-exec if it already loaded under another one."""
    wanted = dict(os.environ) | NUMPY_ENV
    for name in NUMPY_ENV_DROP:
        wanted.pop(name, None)
    if wanted == dict(os.environ):
        return
    if "numpy" in sys.modules:
        argv = [sys.executable, "-m", "benchmarks.kernels", *sys.argv[1:]]
        os.execve(sys.executable, argv, wanted)
    for name in NUMPY_ENV_DROP:
        os.environ.pop(name, None)
    os.environ.update(NUMPY_ENV)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm caches and lazy initialisation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ops_per_second(ops: float, fn: Callable[[], object], repeats: int) -> float:
    return ops / median_seconds(fn, repeats)


def gemm_params(m: int, n: int, k: int) -> dict[str, Any]:
    rng = random.Random(m * n * k)
    return {"m": m, "n": n, "k": k, "a": rng.randbytes(m * k), "w": rng.randbytes(n * k),
            "bias": struct.pack(f"<{n}i", *(rng.randint(-9999, 9999) for _ in range(n))),
            "multiplier": 1 << 20, "shift": 32, "relu": True}


Task = tuple[dict[str, Any], float]  # params, ops they take


def c_and_twin(name: str, c_task: Task, py_task: Task, repeats: int) -> tuple[float, float]:
    """ops/s of the C kernel and of its Python twin, each on its own task."""

    def rate(task: Task, backend: str) -> float:
        params, ops = task
        return ops_per_second(ops, lambda: kernels.run(name, params, backend=backend), repeats)

    return rate(c_task, "c"), rate(py_task, "python")


def bench_gemm(sizes: Sizes) -> tuple[float, float, float, str]:
    import numpy as np

    m, n, k = sizes["gemm_c"]
    pm, pn, pk = sizes["gemm_py"]
    r = sizes["repeats"]
    c, py = c_and_twin("gemm_i8", (gemm_params(m, n, k), 2 * m * n * k),
                       (gemm_params(pm, pn, pk), 2 * pm * pn * pk), r)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    ref = ops_per_second(2 * m * n * k, lambda: a @ b, r)
    return c, py, ref, f"numpy float32 matmul ({blas_description()})"


def sha_params(count: int) -> dict[str, Any]:
    # 76-byte prefix: the 12-byte remainder, the nonce, 0x80 and the length fit one block, so each
    # nonce costs one compression after the midstate.
    target = b"\x00\x00\x00\x0f" + b"\xff" * 28
    return {"prefix": bytes(range(76)), "start": 0, "count": count, "target": target}


def bench_sha(sizes: Sizes) -> tuple[float, float, float, str]:
    r = sizes["repeats"]
    c, py = c_and_twin("sha256_search", (sha_params(sizes["sha_c"]), 64 * sizes["sha_c"]),
                       (sha_params(sizes["sha_py"]), 64 * sizes["sha_py"]), r)
    buf = bytes(1 << 20)
    mib = sizes["hashlib_mib"]

    def hash_buffers() -> None:
        for _ in range(mib):
            hashlib.sha256(buf).digest()

    ref = ops_per_second(mib << 20, hash_buffers, r)
    return c, py, ref, "hashlib.sha256 on 1 MiB buffers"


def bench_pi(sizes: Sizes) -> tuple[float, float, float, str]:
    r = sizes["repeats"]
    c, py = c_and_twin("montecarlo_pi", ({"seed": 1, "points": sizes["pi_c"]}, sizes["pi_c"]),
                       ({"seed": 1, "points": sizes["pi_py"]}, sizes["pi_py"]), r)
    return c, py, py, "its Python twin"


def _openblas() -> ctypes.CDLL | None:
    import numpy as np

    libs = pathlib.Path(np.__file__).parent.parent / "numpy.libs"
    for path in sorted(libs.glob("lib*openblas*.so*")):
        return ctypes.CDLL(str(path))  # numpy already loaded it: this is the same handle
    return None


def blas_description() -> str:
    """Which BLAS numpy runs, its CPU kernel ("core") and thread count, as far as it says."""
    blas = _openblas()
    if blas is None:
        return "BLAS not OpenBLAS (core unknown)"
    for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "")):
        corename = getattr(blas, f"{prefix}get_corename{suffix}", None)
        threads = getattr(blas, f"{prefix}get_num_threads{suffix}", None)
        if corename is not None and threads is not None:
            corename.restype = ctypes.c_char_p
            return f"OpenBLAS {corename().decode()} core, {threads()} thread(s)"
    return "OpenBLAS (core unknown)"


BENCHES = {"gemm_i8": bench_gemm, "sha256_search": bench_sha, "montecarlo_pi": bench_pi}


def measure(sizes: Sizes) -> dict[str, dict[str, Any]]:
    out = {}
    for name, bench in BENCHES.items():
        c, py, ref, what = bench(sizes)
        out[name] = {"c_ops_s": round(c), "py_ops_s": round(py), "vs_python": round(c / py, 2),
                     "reference": what, "vs_reference": round(c / ref, 3)}
    return out


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} "


def _verdict(value: float, target: float | None) -> str:
    if target is None:
        return f"{value:,.2f}"
    mark = "[green]ok[/]" if value >= target else "[red]below[/]"
    return f"{value:,.2f} (>= {target:g} {mark})"


def render(results: dict[str, dict[str, Any]], env: dict[str, Any]) -> None:
    console = Console(width=160)
    table = Table(title="C kernels vs Python twins and references (one thread, medians)")
    for col in ("kernel", "C ops/s", "Python ops/s", "C / Python", "C / reference", "reference"):
        table.add_column(col, justify="left" if col in ("kernel", "reference") else "right")
    for name, r in results.items():
        t = TARGETS[name]
        table.add_row(name, _si(r["c_ops_s"]), _si(r["py_ops_s"]),
                      _verdict(r["vs_python"], t["vs_python"]),
                      _verdict(r["vs_reference"], t["vs_reference"]), r["reference"])
    console.print(table)
    console.print(f"C features: {', '.join(env['features']) or 'none'}; "
                  f"gemm_i8 path {env['gemm_i8_impl']}; sizes: {env['sizes']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    prepare_numpy_env()
    if not native.AVAILABLE:
        print("C kernels are not built: run `make native`", file=sys.stderr)
        return 1
    sizes = QUICK if args.quick else FULL
    results = measure(sizes)
    impls = native.gemm_i8_impls()
    env = {"quick": args.quick, "features": native.features(),
           "gemm_i8_impl": impls[-1] if impls else "none",
           "sizes": {k: v for k, v in sizes.items() if k != "repeats"}}
    render(results, env)
    print(json.dumps({"kernels": results, "env": env}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
