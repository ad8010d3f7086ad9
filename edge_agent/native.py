"""The only door to the C kernels (``edge_agent._native_c``, built by cffi from ``native/``).

Thin binding layer, as PyNaCl's ``nacl.bindings``: each ``<kernel>_step`` takes the kernel's
*validated* params and resumable state (see ``edge_agent.core.kernels.base``), calls C, and updates
the state exactly as the Python twin's ``step`` would. Nothing here validates; callers go through
``edge_agent.kernels``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_agent.core.kernels import gemm_i8 as core_gemm_i8
from edge_agent.core.kernels import montecarlo_pi as core_montecarlo_pi

try:
    from edge_agent._native_c import ffi, lib
except ImportError:  # pragma: no cover - exercised by tests that hide the module
    ffi = lib = None

#: Must match EDGE_NATIVE_ABI in native/src/abi.h.
ABI = 2

AVAILABLE: bool = lib is not None and lib.edge_native_abi() == ABI

Params = dict[str, Any]
State = dict[str, Any]
Step = Callable[[Params, State, int], int]


def features() -> list[str]:
    """SIMD paths the C kernels can take on this CPU."""
    if not AVAILABLE:
        return []
    return [f for f in ffi.string(lib.edge_native_features()).decode().split(",") if f]


# --- gemm_i8 ---------------------------------------------------------------------------------

#: Paths of native/src/gemm_i8.h (enum gemm_i8_impl); "auto" picks the fastest this CPU has.
GEMM_I8_IMPLS: dict[str, int] = {"auto": 0, "scalar": 1, "avx2": 2}


def gemm_i8_impls() -> list[str]:
    """The gemm_i8 paths this CPU can run (besides "auto"), slowest first."""
    if not AVAILABLE:
        return []
    best = lib.gemm_i8_best_impl()
    return [k for k, v in GEMM_I8_IMPLS.items() if v and v <= best]


def gemm_i8_rows(params: Params, row: int, rows: int, impl: str = "auto") -> bytes:
    """Output rows [row, row + rows) of a validated ``gemm_i8`` task, computed in C."""
    n, k = params["n"], params["k"]
    out = bytearray(rows * n)
    rc = lib.gemm_i8_rows(
        ffi.from_buffer("int8_t[]", params["a"]) + row * k,
        ffi.from_buffer("int8_t[]", params["w"]),
        ffi.from_buffer("uint8_t[]", params["bias"]),
        rows, n, k, params["multiplier"], params["shift"], params["out_zero_point"],
        int(params["relu"]), ffi.from_buffer("int8_t[]", out, require_writable=True),
        GEMM_I8_IMPLS[impl],
    )
    if rc != 0:
        raise RuntimeError(f"gemm_i8: C path {impl!r} refused (status {rc})")
    return bytes(out)


def gemm_i8_step(params: Params, state: State, max_units: int, impl: str = "auto") -> int:
    """``gemm_i8`` step in C; ``impl`` forces one path (tests compare them)."""
    def rows_in_c(p: Params, row: int, rows: int) -> bytes:
        return gemm_i8_rows(p, row, rows, impl)

    return int(core_gemm_i8.step(params, state, max_units, rows_in_c))


# --- montecarlo_pi ---------------------------------------------------------------------------


def montecarlo_pi_seed_state(seed: int) -> list[int]:
    """The xoshiro128** state C derives from ``seed`` (tests compare it with the twin's)."""
    s = ffi.new("uint32_t[4]")
    lib.montecarlo_pi_seed(seed, s)
    return list(s)


def _montecarlo_pi_points(s: list[int], n: int) -> tuple[list[int], int]:
    state = ffi.new("uint32_t[4]", s)
    inside = lib.montecarlo_pi_run(state, n)
    return list(state), int(inside)


def montecarlo_pi_step(params: Params, state: State, max_units: int) -> int:
    return int(core_montecarlo_pi.step(params, state, max_units, _montecarlo_pi_points))


# --- sha256_search ---------------------------------------------------------------------------

#: Compression paths of native/src/sha256_search.h (SHA256_IMPL_*); "auto" picks the fastest.
SHA256_IMPLS: dict[str, int] = {"auto": 0, "portable": 1, "x86-sha-ni": 2, "armv8-sha2": 3}


def sha256_search_impls() -> list[str]:
    """The sha256_search compression paths this CPU can run (besides "auto")."""
    if not AVAILABLE:
        return []
    return [k for k, v in SHA256_IMPLS.items() if v and lib.sha256_search_impl_available(v)]


def sha256_search_step(params: Params, state: State, max_units: int, impl: str = "auto") -> int:
    """``sha256_search`` step in C; ``impl`` forces one compression path (tests compare them)."""
    remaining: int = params["count"] - state["units"]
    n = min(max(1, max_units), remaining)
    prefix = params["prefix"]
    found = ffi.new("uint64_t[64]", state["found"])
    n_found = ffi.new("uint32_t *", len(state["found"]))
    found_total = ffi.new("uint64_t *", state["found_total"])
    # From a list, not memmove: cffi then bounds-checks a malformed checkpoint's hash.
    best_hash = ffi.new("uint8_t[32]", list(state["best_hash"]))
    best_nonce = ffi.new("uint64_t *", state["best_nonce"])
    used = lib.sha256_search_run(
        ffi.from_buffer(prefix), len(prefix), params["start"] + state["units"], n,
        ffi.from_buffer(params["target"]), params["max_found"], found, n_found, found_total,
        best_hash, best_nonce, SHA256_IMPLS[impl],
    )
    if used < 0:
        raise RuntimeError(f"sha256_search: C path {impl!r} unavailable or bad state")
    state["units"] += n
    state["found"] = list(found[0 : n_found[0]])
    state["found_total"] = int(found_total[0])
    state["best_hash"] = bytes(ffi.buffer(best_hash))
    state["best_nonce"] = int(best_nonce[0])
    return n


STEPS: dict[str, Step] = {
    "gemm_i8": gemm_i8_step,
    "montecarlo_pi": montecarlo_pi_step,
    "sha256_search": sha256_search_step,
}
