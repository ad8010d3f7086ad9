"""``edge-gateway``: the operator side. Every command takes ``--state-dir`` (default: the
platform's user data directory for edge-gateway)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from edge_agent.core import rewards
from gateway import dispute
from gateway.accounts import ServeInfo
from gateway.broker import Broker, BrokerEndpoint, BrokerError
from gateway.config import StatePaths, default_state_dir
from gateway.epochs import (
    EpochError,
    mark_published,
    owed_proofs,
    settle_epoch,
    settlements_dir,
    write_missing_files,
)
from gateway.jobflow import JobFlow
from gateway.jobspec import JobError, load_job
from gateway.keys import GatewayKey
from gateway.ledger import Ledger
from gateway.passwords import GATEWAY_USERNAME
from gateway.service import MQTT_LOG, GatewayService
from gateway.tokens import DEFAULT_TTL_S, create_tokens
from gateway.wire import Reply

EXIT_USAGE = 2


def _paths(args: argparse.Namespace) -> StatePaths:
    return StatePaths(Path(args.state_dir)).ensure()


def _external_broker(url: str) -> BrokerEndpoint:
    """``mqtt://user:pass@host:port`` -> the gateway's endpoint on an external broker."""
    parts = urlsplit(url)
    if parts.username is None or parts.password is None:
        raise ValueError("--broker needs credentials: mqtt://user:password@host:port")
    bare = f"{parts.scheme}://{parts.hostname}:{parts.port or 1883}"
    return BrokerEndpoint.from_url(bare, parts.username, parts.password)


# -- serve ------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    paths = _paths(args)
    key = GatewayKey.load_or_create(paths.key)
    broker: Broker | None = None
    if args.broker:
        endpoint = _external_broker(args.broker)
        devices_url = endpoint.url
    else:
        broker = Broker(paths.root, port=args.mqtt_port, host=args.mqtt_host)
        await asyncio.to_thread(broker.start)
        endpoint = broker.gateway_endpoint()
        devices_url = broker.url
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        service = GatewayService(paths, endpoint, broker=broker, worker=args.worker)

        async def announce() -> None:
            await service.ready.wait()
            print(f"edge-gateway serving: devices connect to {devices_url}; gateway key "
                  f"fingerprint {key.fingerprint.hex()}; state in {paths.root}", flush=True)

        announcing = asyncio.create_task(announce())
        await service.run(stop)
        announcing.cancel()
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.stop)
    return 0


# -- tokens, jobs, status ---------------------------------------------------------------------


def _token_create(args: argparse.Namespace) -> int:
    paths = _paths(args)
    key = GatewayKey.load_or_create(paths.key)
    with Ledger.open(paths.ledger, time.time()) as ledger:
        tokens, live = create_tokens(ledger, key, paths, count=args.count,
                                     ttl_s=args.ttl_hours * 3600.0, now=time.time())
    for token in tokens:
        print(token)
    if not live:
        print("note: no running `edge-gateway serve` here; the tokens work once it starts",
              file=sys.stderr)
    return 0


def _submit(args: argparse.Namespace) -> int:
    paths = _paths(args)
    try:
        spec = load_job(args.jobfile)
        with Ledger.open(paths.ledger, time.time()) as ledger:
            job_id = JobFlow(ledger, time.time).submit(spec)
    except (JobError, OSError) as exc:
        print(f"edge-gateway submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(job_id)
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _describe_output(output: dict[str, Any]) -> list[str]:
    kind = output.get("kind")
    if kind == "mlp_digits":
        shown = " ".join(str(p) for p in output["predictions"][:20])
        return [f"accuracy {output['correct']}/{output['samples']} = {output['accuracy_approx']}",
                f"predictions: {shown}{' ...' if output['samples'] > 20 else ''}"]
    if kind == "montecarlo_pi":
        return [f"pi ~ {output['pi_approx']} ({output['inside']} of {output['points']} points "
                "inside the quarter circle)"]
    if kind == "sha256_search":
        nonces = ", ".join(str(n) for n in output["found"][:20])
        return [f"found {output['found_total']} nonces: {nonces}",
                f"best nonce {output['best_nonce']}: {output['best_hash'].hex()}"]
    return [f"output {output['m']} x {output['n']} int8: {output['out'].hex()[:64]}..."]


def _job(args: argparse.Namespace) -> int:
    paths = _paths(args)
    with Ledger.open(paths.ledger, time.time()) as ledger:
        try:
            report = JobFlow(ledger, time.time).report(args.id)
        except LookupError as exc:
            print(f"edge-gateway job: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(_jsonable(report), sort_keys=True))
        return 0
    counts = ", ".join(f"{n} {state}" for state, n in report["counts"].items() if n)
    eta = "" if report["eta_s"] is None or report["state"] != "running" else \
        f", ETA {report['eta_s']:.0f} s"
    print(f"job {report['id']} ({report['name']}, {report['kind']}): {report['state']}, "
          f"{report['percent']:.1f}% ({counts}){eta}")
    if report["output"] is not None:
        for line in _describe_output(report["output"]):
            print("  " + line)
    return 0


def _status(args: argparse.Namespace) -> int:
    paths = _paths(args)
    with Ledger.open(paths.ledger, time.time()) as ledger:
        fleet = ledger.fleet()
    info = ServeInfo.load(paths.serve_info)
    status = {"serving": info is not None, "devices_url": info.device_url if info else None,
              "fleet": fleet, "counters": info.counters if info else {}}
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    print(f"serve: {'running at ' + info.device_url if info else 'not running'}")
    print("fleet: " + ", ".join(f"{k} {v}" for k, v in fleet.items()))
    if info and info.counters:
        print("counters: " + ", ".join(f"{k} {v}" for k, v in sorted(info.counters.items())))
    return 0


# -- settle -----------------------------------------------------------------------------------

PUBLISH_WINDOW = 1000  # proofs in flight (QoS 1, awaiting PUBACK) while publishing


async def _publish_as_gateway(paths: StatePaths, info: ServeInfo, replies: list[Reply]) -> None:
    """Publish on the running serve's broker as the gateway account (its gateway listener);
    returns once the broker has every message (PUBACK): it queues them for offline devices."""
    password = (paths.root / "broker" / "gateway.password").read_text().strip()
    endpoint = BrokerEndpoint.from_url(info.gateway_url, GATEWAY_USERNAME, password)
    async with aiomqtt.Client(endpoint.host, endpoint.port, username=endpoint.username,
                              password=endpoint.password, timeout=30.0,
                              identifier=f"edge-gateway-settle-{os.getpid()}",
                              logger=MQTT_LOG) as client:
        for start in range(0, len(replies), PUBLISH_WINDOW):
            await asyncio.gather(*(client.publish(r.topic, r.payload, qos=1)
                                   for r in replies[start:start + PUBLISH_WINDOW]))


def _settle(args: argparse.Namespace) -> int:
    paths = _paths(args)
    key = GatewayKey.load_or_create(paths.key)
    out = Path(args.out) if args.out else settlements_dir(paths)
    with Ledger.open(paths.ledger, time.time()) as ledger:
        try:
            settled = settle_epoch(ledger, key, time.time)
        except EpochError as exc:
            print(f"edge-gateway settle: {exc}", file=sys.stderr)
            return 1
        started = time.perf_counter()
        write_missing_files(ledger, out, key.pub)
        write_s = time.perf_counter() - started
        info = ServeInfo.load(paths.serve_info)
        sent, publish_s = 0, 0.0
        if info is not None:  # else the service sends them when it next connects
            started = time.perf_counter()
            epochs, replies = owed_proofs(ledger)
            asyncio.run(_publish_as_gateway(paths, info, replies))
            mark_published(ledger, epochs, time.time())
            sent, publish_s = len(replies), time.perf_counter() - started
    s = settled.settlement
    stem = out / f"epoch-{s.epoch:06d}"
    report = {"epoch": s.epoch, "devices": s.header["n"], "total": s.header["total"],
              "closed_at": s.header["closed_at"], "root": s.root.hex(),
              "header_hash": s.header_hash.hex(), "files": [str(stem) + ".json",
                                                            str(stem) + ".cbor"],
              "proofs_sent": sent, "close_s": round(settled.close_s, 4),
              "write_s": round(write_s, 4), "publish_s": round(publish_s, 4)}
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(f"epoch {s.epoch} closed at {s.header['closed_at']}: {s.header['n']} devices, "
          f"{s.header['total'] / rewards.MICRO:,.6f} credits, root {s.root.hex()}")
    print(f"  files: {stem}.json, {stem}.cbor")
    proofs = f"sent to {sent} devices" if info else "owed (no serve runs: it sends them)"
    print(f"  proofs: {proofs}; close {settled.close_s:.3f} s, write {write_s:.3f} s, "
          f"publish {publish_s:.3f} s")
    return 0


def _verify_dispute(args: argparse.Namespace) -> int:
    argv = [args.file] + ([] if args.gateway_pub is None else ["--gateway-pub", args.gateway_pub])
    return dispute.main(argv)


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=str(default_state_dir()),
                        help="ledger, gateway key and broker files (default: %(default)s)")
    parser = argparse.ArgumentParser(prog="edge-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the gateway (and its broker)")
    serve.add_argument("--mqtt-host", default="0.0.0.0",
                       help="address of the device listener (default: %(default)s)")
    serve.add_argument("--mqtt-port", type=int, default=1883,
                       help="port of the device listener, 0 for any (default: %(default)s)")
    serve.add_argument("--broker", metavar="URL",
                       help="use an external broker, mqtt://user:pass@host:port, instead of "
                            "starting Mosquitto")
    serve.add_argument("--worker", default="1",
                       help="this worker's name (MQTT client id edge-gateway-NAME)")
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(run=lambda a: asyncio.run(_serve(a)))

    token = sub.add_parser("token", help="enrolment tokens")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token_sub.add_parser("create", parents=[common], help="print one-time tokens")
    create.add_argument("--count", type=int, default=1)
    create.add_argument("--ttl-hours", type=float, default=DEFAULT_TTL_S / 3600.0)
    create.set_defaults(run=_token_create)

    submit = sub.add_parser("submit", parents=[common], help="submit a job file (TOML or JSON)")
    submit.add_argument("jobfile")
    submit.set_defaults(run=_submit)

    job = sub.add_parser("job", parents=[common], help="a job's progress and output")
    job.add_argument("id", type=int)
    job.add_argument("--json", action="store_true")
    job.set_defaults(run=_job)

    status = sub.add_parser("status", parents=[common], help="devices, queue, counters")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status)

    settle = sub.add_parser("settle", parents=[common],
                            help="close an epoch: sign the credit root, write files, send proofs")
    settle.add_argument("--out", metavar="DIR",
                        help="where the settlement files go (default: STATE_DIR/settlements)")
    settle.add_argument("--json", action="store_true", help="one JSON object, for machines")
    settle.set_defaults(run=_settle)

    verify = sub.add_parser("verify-dispute", help="judge a device's underpayment evidence")
    verify.add_argument("file", help="evidence file (JSON) from `edge-agent earnings --dispute`")
    verify.add_argument("--gateway-pub", metavar="HEX",
                        help="the gateway's public key (32 bytes as hex) to require")
    verify.set_defaults(run=_verify_dispute)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=getattr(args, "log_level", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.run(args)
    except (BrokerError, ValueError) as exc:
        print(f"edge-gateway {args.command}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
