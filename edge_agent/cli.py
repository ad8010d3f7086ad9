"""``edge-agent``: the device side."""

from __future__ import annotations

import argparse
import json
import sys

HAL_KINDS = ("sysfs", "termux", "mains", "simulated")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_init(sub)
    _add_run(sub)
    _add_swarm(sub)
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
    _add_state_dir(status, "where config.toml (the owner's settings) is")
    earnings = sub.add_parser(
        "earnings", help="credit per epoch, proofs checked offline, claims (docs/REWARDS.md)"
    )
    earnings.add_argument("--json", action="store_true", help="one JSON object, for machines")
    earnings.add_argument(
        "--dispute",
        action="store_true",
        help="write an evidence file for each epoch that pays less than the gateway acked",
    )
    earnings.add_argument(
        "--out", default=None, help="where --dispute writes evidence (default: the state dir)"
    )
    _add_state_dir(earnings, "the enrolled state directory")
    return parser


def _add_state_dir(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--state-dir",
        default=None,
        help=f"{what} (default: the user data dir of edge-agent, e.g. ~/.local/share/edge-agent)",
    )


def _add_init(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="enrol this device with a gateway")
    p.add_argument("--gateway", required=True, help="the gateway's broker, mqtt://host:port")
    p.add_argument("--token", required=True, help="one-time token from `edge-gateway token`")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the gateway")
    _add_state_dir(p, "where the key and credentials go")


def _add_work_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel-backend", choices=("c", "python"), default="c")
    p.add_argument("--speedup", type=float, default=1.0, help="simulated devices only: clock x")
    p.add_argument("--max-tasks", type=int, default=None, help="exit after N acked results")
    p.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit when idle (the gateway has no work, or the governor stopped the device) "
        "and every result is acked",
    )
    p.add_argument("--state-every", type=float, default=30.0, help="min seconds between states")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO")


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="pull and run micro-tasks while the device is fit")
    _add_state_dir(p, "the enrolled state directory")
    p.add_argument("--hal", choices=HAL_KINDS, default=None, help="default: auto-detect")
    p.add_argument("--sysfs-root", default="/", help="root of /sys and /proc (default /)")
    p.add_argument("--vcgencmd", default="vcgencmd", help="Raspberry Pi vcgencmd command")
    p.add_argument("--termux-command", default="termux-battery-status")
    _add_work_options(p)


def _add_swarm(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("swarm", help="N simulated devices in one process")
    p.add_argument("--devices", type=int, required=True, help="how many devices")
    p.add_argument("--hal", choices=("simulated",), default="simulated")
    p.add_argument("--gateway", default=None, help="mqtt://host:port, to enrol new devices")
    p.add_argument("--tokens", default=None, help="file of one-time tokens, one per line")
    p.add_argument("--seed", type=int, default=0, help="varies presets, rooms and batteries")
    p.add_argument("--no-progress", action="store_true", help="no live progress table")
    _add_state_dir(p, "base directory; device i lives in <dir>/dev-<i>")
    _add_work_options(p)


def init(args: argparse.Namespace) -> int:
    import asyncio

    from edge_agent.enrol import EnrolError, enrol
    from edge_agent.identity import StateDir

    state = StateDir(args.state_dir)
    try:
        identity, creds = asyncio.run(
            enrol(state, args.gateway, args.token, timeout_s=args.timeout)
        )
    except EnrolError as exc:
        print(f"edge-agent init: {exc}", file=sys.stderr)
        return 2
    print(f"enrolled as {identity.device_id} with {creds.gateway_url}; state in {state.root}")
    return 0


def _logging(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run(args: argparse.Namespace) -> int:
    from edge_agent.run_command import run_main

    _logging(args)
    return run_main(args)


def swarm(args: argparse.Namespace) -> int:
    from edge_agent.swarm import swarm_main

    _logging(args)
    return swarm_main(args)


def status(args: argparse.Namespace) -> int:
    from edge_agent.identity import StateDir
    from edge_agent.settings import SettingsError, load_settings
    from edge_agent.status import decide_once, render, report
    from hal.detect import detect, open_backend

    try:
        settings = load_settings(StateDir(args.state_dir).root)
    except SettingsError as exc:
        print(f"edge-agent status: {exc}", file=sys.stderr)
        return 2
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
    result = report(backend, why, state, decide_once(state, settings))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        from rich.console import Console

        render(result, Console())
    return 0


def earnings(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from edge_agent.earnings import earnings_report, render, write_disputes
    from edge_agent.identity import IdentityError, StateDir

    state = StateDir(args.state_dir)
    try:
        if args.dispute:
            written = write_disputes(state, Path(args.out) if args.out else state.root)
            for epoch, path in written:
                verdict = f"evidence written to {path}" if path else "nothing to dispute"
                print(f"epoch {epoch}: {verdict}")
            if not written:
                print("no verified settlement yet: nothing to dispute")
            return 0
        report = earnings_report(state)
    except IdentityError as exc:
        print(f"edge-agent earnings: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        render(report, Console())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    commands = {"status": status, "init": init, "run": run, "swarm": swarm, "earnings": earnings}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
