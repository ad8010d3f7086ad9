"""The MicroPython board agent's heap and speed on the unix port, against references measured in
the same run.

Run from the repository root: ``.venv/bin/python -m benchmarks.board [--repeats R]``. Prints one
JSON object as its last line:

- image_bytes: the ROMFS image of what manifest.py freezes (firmware/micropython/build.py).
- code_heap_romfs / code_heap_files: heap the agent's modules hold once imported (main.py's
  imports plus core.rewards, what a claim adds), from the ROMFS image mapped outside the heap
  (firmware/micropython/run_unix.py, as a board's ROM partition) and from .mpy files on the
  filesystem (bytecode loaded into the heap); files_vs_romfs is their ratio.
- montecarlo_pts_s / sha256_hashes_s: the kernels' Python twins on MicroPython (from the ROMFS
  image), and *_vs_c: that speed over the C kernel's on CPython in the same run (one core).
- sign_ms, verify_ms: the core's Ed25519 on MicroPython (what each result and each lease, ack or
  receipt costs the board); *_vs_pynacl: those times over pynacl's (libsodium) in the same run.
Medians over ``--repeats`` runs. The unix port is 64-bit: a 32-bit board's objects are about half
the size, and a microcontroller is far slower than this machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import nacl.signing

from edge_agent import kernels

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware" / "micropython"
MICROPYTHON = Path(sys.executable).parent / "micropython"
HEAP = "512K"  # room to measure: the agent's own test runs it in 128K
MC_POINTS = 200_000
SHA_NONCES = 20_000
MODULES = ("edge_agent.core.ed25519", "edge_agent.core.governor", "edge_agent.core.protocol",
           "edge_board.store", "edge_board.inbox", "edge_board.link", "edge_board.claims",
           "edge_board.agent", "edge_agent.core.rewards")
SHA_PARAMS = {"prefix": b"edge-grid bench", "start": 0, "count": SHA_NONCES,
              "target": b"\x00\x0f" + b"\xff" * 30, "max_found": 8}

# Runs on MicroPython; prints one JSON line.
PROBE = """
import gc, json, sys, time
gc.collect()
before = gc.mem_alloc()
for name in %(modules)r:
    __import__(name)
    gc.collect()
out = {"code_heap": gc.mem_alloc() - before}
from edge_agent.core import ed25519
from edge_agent.core import kernels as registry

def timed(fn):
    t = time.ticks_us()
    fn()
    return time.ticks_diff(time.ticks_us(), t) / 1e6

def run_kernel(name, params, units):
    k = registry.get(name)
    p = k.validate(params)
    st = k.start(p)
    return timed(lambda: k.step(p, st, units))

mc = {"seed": 1, "points": %(mc)d}
sha = %(sha)r
out["montecarlo_s"] = run_kernel("montecarlo_pi", mc, %(mc)d)
out["sha256_s"] = run_kernel("sha256_search", sha, %(nonces)d)
seed = b"\\x07" * 32
pub = ed25519.publickey(seed)
msg = b"m" * 200
sig = ed25519.sign(seed, msg)
out["sign_s"] = timed(lambda: ed25519.sign(seed, msg))
out["verify_s"] = timed(lambda: ed25519.verify(pub, msg, sig))
print("PROBE " + json.dumps(out))
"""


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("board_build", FIRMWARE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe(cmd: list[str], cwd: Path) -> dict[str, float]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"probe failed: {proc.stdout}{proc.stderr}")
    result: dict[str, float] = json.loads(lines[-1][6:])
    return result


def c_seconds(name: str, params: dict[str, Any]) -> float:
    started = time.perf_counter()
    kernels.run(name, params, backend="c")
    return time.perf_counter() - started


def pynacl_seconds() -> tuple[float, float]:
    key = nacl.signing.SigningKey(b"\x07" * 32)
    msg = b"m" * 200
    started = time.perf_counter()
    sig = key.sign(msg).signature
    signed = time.perf_counter()
    key.verify_key.verify(msg, sig)
    return signed - started, time.perf_counter() - signed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    build = load_build()
    script = PROBE % {"modules": MODULES, "mc": MC_POINTS, "sha": SHA_PARAMS,
                      "nonces": SHA_NONCES}
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tree = work / "mpy"
        build.build_tree(tree)
        image = work / "edge.romfs"
        image.write_bytes(build.romfs_image(tree))
        (work / "probe.py").write_text(script)
        (tree / "probe.py").write_text(script)
        for _ in range(args.repeats):
            rom = probe([sys.executable, str(FIRMWARE / "run_unix.py"), str(image), HEAP,
                         "probe.py"], work)
            files = probe([str(MICROPYTHON), "-X", f"heapsize={HEAP}", "probe.py"], tree)
            c_mc = c_seconds("montecarlo_pi", {"seed": 1, "points": MC_POINTS})
            c_sha = c_seconds("sha256_search", SHA_PARAMS)
            nacl_sign, nacl_verify = pynacl_seconds()
            for key, value in (
                ("code_heap_romfs", rom["code_heap"]), ("code_heap_files", files["code_heap"]),
                ("files_vs_romfs", files["code_heap"] / rom["code_heap"]),
                ("montecarlo_pts_s", MC_POINTS / rom["montecarlo_s"]),
                ("montecarlo_vs_c", c_mc / rom["montecarlo_s"]),
                ("sha256_hashes_s", SHA_NONCES / rom["sha256_s"]),
                ("sha256_vs_c", c_sha / rom["sha256_s"]),
                ("sign_ms", 1000 * rom["sign_s"]), ("verify_ms", 1000 * rom["verify_s"]),
                ("sign_vs_pynacl", rom["sign_s"] / nacl_sign),
                ("verify_vs_pynacl", rom["verify_s"] / nacl_verify),
            ):
                runs.setdefault(key, []).append(value)
        report: dict[str, Any] = {"image_bytes": image.stat().st_size, "heap": HEAP,
                                  "repeats": args.repeats}
    for key, values in runs.items():
        median = statistics.median(values)
        report[key] = round(median, 4)
    print(f"board code in the heap: {report['code_heap_romfs']:.0f} B from ROMFS, "
          f"{report['code_heap_files']:.0f} B from .mpy files; twins vs C: montecarlo "
          f"{report['montecarlo_vs_c']:.4f}, sha256 {report['sha256_vs_c']:.4f}; "
          f"Ed25519 sign {report['sign_ms']:.1f} ms, verify {report['verify_ms']:.1f} ms")
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
