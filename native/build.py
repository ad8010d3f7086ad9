"""cffi build script (API mode, out of line) for the C kernels.

Each kernel keeps its C declarations in ``native/cdef/<kernel>.h`` (plain declarations that
cffi's parser reads: no preprocessor) and its implementation in ``native/src/<kernel>.c``.
This script stitches them into one extension module, ``edge_agent._native_c``, which only
``edge_agent.native`` imports.

SIMD is never required: x86-64 paths are picked at run time (``__builtin_cpu_supports`` or
gcc ``target`` attributes), aarch64 gets NEON from the baseline ISA. ``EDGE_NATIVE_CFLAGS``
adds flags at build time (e.g. ``-march=native`` for a machine-local build).
"""

from __future__ import annotations

import os
import pathlib
import platform
import shlex

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CDEF_DIR = HERE / "cdef"
SRC_DIR = HERE / "src"


def _cdefs() -> str:
    return "\n".join(p.read_text() for p in sorted(CDEF_DIR.glob("*.h")))


def _sources() -> list[str]:
    # Relative paths keep absolute build directories out of the generated C file.
    root = HERE.parent
    return [str(p.relative_to(root)) for p in sorted(SRC_DIR.glob("*.c"))]


def _cflags() -> list[str]:
    flags = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-Wall", "-Wextra"]
    flags.append("-Wno-unused-parameter")
    if platform.machine().lower() in {"aarch64", "arm64"}:
        flags.append("-march=armv8-a")
    flags += shlex.split(os.environ.get("EDGE_NATIVE_CFLAGS", ""))
    return flags


ffibuilder = FFI()
ffibuilder.cdef(_cdefs())
ffibuilder.set_source(
    "edge_agent._native_c",
    "\n".join(f'#include "{p.name}"' for p in sorted(SRC_DIR.glob("*.h"))),
    sources=_sources(),
    include_dirs=[str(SRC_DIR.relative_to(HERE.parent))],
    extra_compile_args=_cflags(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
