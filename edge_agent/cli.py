"""``edge-agent``: the device side."""

from __future__ import annotations

import argparse
import json
import sys

HAL_KINDS = ("sysfs", "termux", "mains", "simulated")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in [
        ("init", "enrol this device with a gateway"),
        ("run", "pull and run micro-tasks while the device is fit"),
    ]:
        sub.add_parser(name, help=help_text)
    status = sub.add_parser(
        "status", help="read the device, say whether it may compute now and why"
    )
    status.add_argument("--json", action="store_true", help="one JSON object, for machines")
    status.add_argument(
        "--hal",
        choices=HAL_KINDS,
        default=None,
        help="hardware backend (default: auto-detect, and say why)",
    )
    status.add_argument("--sysfs-root", default="/", help="root of /sys and /proc (default /)")
    status.add_argument("--vcgencmd", default="vcgencmd", help="Raspberry Pi vcgencmd command")
    status.add_argument(
        "--termux-command", default="termux-battery-status", help="Termux battery command"
    )
    return parser


def status(args: argparse.Namespace) -> int:
    from edge_agent.status import decide_once, render, report
    from hal.detect import detect, open_backend

    if args.hal is None:
        kind, why = detect(args.sysfs_root)
        why = f"auto-detected: {why}"
    else:
        kind, why = args.hal, "chosen with --hal"
    backend = open_backend(
        kind,
        sysfs_root=args.sysfs_root,
        vcgencmd=args.vcgencmd,
        termux_command=args.termux_command,
    )
    state = backend.read()
    result = report(backend, why, state, decide_once(state))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        from rich.console import Console

        render(result, Console())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "status":
        return status(args)
    print(f"edge-agent {args.command}: not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
