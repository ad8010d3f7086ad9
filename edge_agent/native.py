"""The only door to the C kernels (``edge_agent._native_c``, built by cffi from ``native/``).

Thin binding layer, as PyNaCl's ``nacl.bindings``: each ``<kernel>_step`` takes the kernel's
*validated* params and resumable state (see ``edge_agent.core.kernels.base``), calls C, and updates
the state exactly as the Python twin's ``step`` would. Nothing here validates; callers go through
``edge_agent.kernels``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from edge_agent._native_c import ffi, lib
except ImportError:  # pragma: no cover - exercised by tests that hide the module
    ffi = lib = None

#: Must match EDGE_NATIVE_ABI in native/src/abi.h.
ABI = 1

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


# --- montecarlo_pi ---------------------------------------------------------------------------


# --- sha256_search ---------------------------------------------------------------------------


STEPS: dict[str, Step] = {}
