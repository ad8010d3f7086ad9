"""The only door to the C kernels (``edge_agent._native_c``, built by cffi from ``native/``).

Thin binding layer, as PyNaCl's ``nacl.bindings``: each ``<kernel>_step`` takes the kernel's
*validated* params and resumable state (see ``edge_agent.core.kernels.base``), calls C, and updates
the state exactly as the Python twin's ``step`` would. Nothing here validates; callers go through
``edge_agent.kernels``.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Any

from edge_agent.core.kernels import gemm_i8 as core_gemm_i8
from edge_agent.core.kernels import montecarlo_pi as core_montecarlo_pi

try:
    from edge_agent._native_c import ffi, lib
except ImportError:  # pragma: no cover - exercised by tests that hide the module
    ffi = lib = None

#: Must match EDGE_NATIVE_ABI in native/src/abi.h.
ABI = 3

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


# --- merkle ----------------------------------------------------------------------------------
# Whole RFC 6962 trees for the gateway's settlement (native/src/merkle.h). Unlike the kernels'
# steps these take raw buffers straight from gateway code, so every argument is checked here,
# before C runs.

MERKLE_HASH_SIZE = 32


def _merkle_level_sizes(n: int) -> list[int]:
    """Hashes per level of an n-leaf tree, leaves first: each level pairs neighbours and carries
    an odd last node up (``edge_agent.core.merkle.levels``)."""
    sizes = []
    while n:
        sizes.append(n)
        n = (n + 1) // 2 if n > 1 else 0
    return sizes


def _merkle_path_runs(n: int) -> list[tuple[int, int]]:
    """(leaves, hashes in each one's path) in leaf order. RFC 6962 splits n at the largest power
    of two k < n: the first k leaves sit in a perfect subtree (log2 k hashes in it, one for the
    right part's root, one per split above); the rest split again."""
    runs = []
    splits_above = 0
    while n > 1:
        k = 1 << ((n - 1).bit_length() - 1)
        runs.append((k, splits_above + k.bit_length()))
        n -= k
        splits_above += 1
    if n:
        runs.append((1, splits_above))
    return runs


def _merkle_impl(impl: str) -> int:
    if impl not in SHA256_IMPLS:
        raise ValueError(f"merkle: unknown SHA-256 path {impl!r}")
    return SHA256_IMPLS[impl]


def _merkle_check_count(name: str, value: int) -> None:
    if type(value) is not int or not 0 <= value <= sys.maxsize:
        raise ValueError(f"merkle: {name} must be an int in [0, {sys.maxsize}]")


def _merkle_check_nodes(nodes: bytes, n: int) -> list[int]:
    if not isinstance(nodes, bytes):
        raise TypeError("merkle: nodes must be bytes")
    _merkle_check_count("n", n)
    sizes = _merkle_level_sizes(n)
    if len(nodes) != MERKLE_HASH_SIZE * sum(sizes):
        raise ValueError(f"merkle: {len(nodes)} bytes are not the nodes of a {n}-leaf tree")
    return sizes


def merkle_tree(leaves: bytes | bytearray, leaf_len: int, n: int, impl: str = "auto") -> bytes:
    """Every node of the RFC 6962 tree over n leaves of leaf_len bytes each, given back to back,
    hashed in one C call: each level's 32-byte hashes, leaf hashes first, the root last (b"" for
    n = 0). ``impl`` forces a SHA-256 path of SHA256_IMPLS (tests compare them)."""
    if not isinstance(leaves, bytes | bytearray):
        raise TypeError("merkle: leaves must be bytes")
    _merkle_check_count("leaf_len", leaf_len)
    _merkle_check_count("n", n)
    if len(leaves) != leaf_len * n:
        raise ValueError(f"merkle: {len(leaves)} bytes are not {n} leaves of {leaf_len}")
    code = _merkle_impl(impl)
    nodes = bytearray(MERKLE_HASH_SIZE * sum(_merkle_level_sizes(n)))
    used = lib.merkle_tree(
        ffi.from_buffer(leaves), len(leaves), leaf_len, n,
        ffi.from_buffer(nodes, require_writable=True), len(nodes), code,
    )
    if used < 0:
        raise RuntimeError(f"merkle: C path {impl!r} unavailable")
    return bytes(nodes)


def merkle_split(nodes: bytes, n: int) -> list[list[bytes]]:
    """A ``merkle_tree`` output as ``edge_agent.core.merkle.levels`` gives it: a list of 32-byte
    hashes per level, leaves first; [[]] for n = 0."""
    sizes = _merkle_check_nodes(nodes, n)
    hashes = struct.unpack("32s" * sum(sizes), nodes)
    levels, start = [], 0
    for size in sizes:
        levels.append(list(hashes[start : start + size]))
        start += size
    return levels or [[]]


def merkle_levels(
    leaves: bytes | bytearray, leaf_len: int, n: int, impl: str = "auto"
) -> list[list[bytes]]:
    """``edge_agent.core.merkle.levels`` of the leaf hashes of n leaves of leaf_len bytes each,
    given back to back, built in C."""
    return merkle_split(merkle_tree(leaves, leaf_len, n, impl), n)


#: Bytes of paths per C call in merkle_paths: one buffer, reused while it is still in cache.
MERKLE_PATHS_CHUNK = 256 * 1024


def merkle_paths(nodes: bytes, n: int) -> list[bytes]:
    """Every leaf's audit path (its 32-byte hashes concatenated, deepest first, as
    ``MerkleTree.proof``) from a ``merkle_tree`` output of n leaves; [] for n = 0. Copied by C
    a chunk of leaves at a time, each chunk's paths of one length cut by one struct call."""
    _merkle_check_nodes(nodes, n)
    scratch = bytearray(MERKLE_PATHS_CHUNK)
    nodes_c, scratch_c = ffi.from_buffer(nodes), ffi.from_buffer(scratch, require_writable=True)
    paths: list[bytes] = []
    first = 0
    for count, hashes in _merkle_path_runs(n):
        size = MERKLE_HASH_SIZE * hashes
        per_call = max(1, MERKLE_PATHS_CHUNK // size) if size else count
        for start in range(first, first + count, per_call):
            k = min(per_call, first + count - start)
            rc = lib.merkle_paths(nodes_c, len(nodes), n, start, k, scratch_c, k * size)
            if rc != 0:  # pragma: no cover - the checks above leave C nothing to refuse
                raise RuntimeError("merkle: C refused the tree")
            paths += struct.unpack_from(f"{size}s" * k, scratch)
        first += count
    return paths
