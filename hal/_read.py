"""Reading one sysfs/procfs attribute without ever raising.

A missing file means "this device does not have it" and is silent (``None``). Every other
failure -- permission denied, EINVAL/ENODATA from a driver, a directory where a file should be,
an empty or non-numeric value -- is appended to ``problems`` as ``"<label>: <what>"`` and also
gives ``None``, so a backend builds a partial state that says why it is partial.
"""

from __future__ import annotations

import errno
from pathlib import Path

# sysfs attributes are one short line; a bounded read keeps a misbehaving driver cheap.
_MAX_ATTR_BYTES = 4096


def os_error_name(exc: OSError) -> str:
    """``EACCES``, ``EINVAL``... (the errno name, which is what driver documentation uses)."""
    code = exc.errno
    name = errno.errorcode.get(code, f"errno {code}") if code is not None else type(exc).__name__
    return f"{name} {exc.strerror or exc}"


def read_attr(path: Path, problems: list[str], label: str) -> str | None:
    """The attribute's text without the trailing newline/NUL, or ``None``."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_ATTR_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.append(f"{label}: unreadable ({os_error_name(exc)})")
        return None
    # Device-tree strings end in NUL; sysfs values end in a newline.
    text = raw.decode("utf-8", "replace").rstrip("\x00").strip()
    if not text:
        problems.append(f"{label}: empty")
        return None
    return text


def parse_int(text: str, problems: list[str], label: str) -> int | None:
    try:
        return int(text, 10)
    except ValueError:
        problems.append(f"{label}: not an integer: {text[:40]!r}")
        return None


def read_int_attr(path: Path, problems: list[str], label: str) -> int | None:
    text = read_attr(path, problems, label)
    return None if text is None else parse_int(text, problems, label)


def list_dir(path: Path, problems: list[str], label: str) -> list[Path]:
    """Entries of a sysfs class directory, sorted by name; a missing directory is empty."""
    try:
        return sorted(path.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(f"{label}: cannot list ({os_error_name(exc)})")
        return []
