"""``edge-gateway`` as an operator runs it: ``serve`` in its own process with its own Mosquitto,
``token create`` while it runs, a device enrolling with that token, ``submit``, ``job --json``,
``status --json``, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from edge_agent.core import protocol
from gateway import jobs
from gateway.accounts import ServeInfo
from gateway.config import StatePaths
from gateway.jobspec import load_job
from gateway.keys import GatewayKey
from tests.mqtt_fixtures import WAIT_S, mqtt_client
from tests.test_gateway_service import Device, Peer

ROOT = Path(__file__).resolve().parent.parent
GEMM_JOB = ROOT / "examples" / "jobs" / "gemm_small.json"
TOKEN = re.compile(r"tok-[0-9a-f]{16}\.[0-9a-f]{32}\.[0-9a-f]{16}")
SERVING = re.compile(r"devices connect to mqtt://([\d.]+):(\d+);")


async def cli(state: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, "--state-dir", str(state),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(WAIT_S * 3):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ok(state: Path, *args: str) -> str:
    code, out, err = await cli(state, *args)
    assert code == 0, err
    return out


async def work_until_done(device: Device, state: Path, job_id: str) -> dict[str, Any]:
    while True:
        report: dict[str, Any] = json.loads(await ok(state, "job", job_id, "--json"))
        if report["state"] == "done":
            return report
        reply = await device.pull(n=4)
        assert reply["t"] == "leases", reply
        for lease in device.leases(reply):
            ack = await device.submit(lease, await device.run(lease))
            assert ack["status"] == "accepted"


def test_serve_tokens_submit_job_status_and_a_clean_stop(tmp_path: Path) -> None:
    state = tmp_path / "gw"

    async def main() -> None:
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--state-dir", str(state),
            "--mqtt-host", "127.0.0.1", "--mqtt-port", "0", "--log-level", "WARNING",
            stdout=asyncio.subprocess.PIPE)
        assert serve.stdout is not None
        try:
            async with asyncio.timeout(WAIT_S):
                line = (await serve.stdout.readline()).decode()
            found = SERVING.search(line)
            assert found, line
            host, port = found.group(1), int(found.group(2))
            key = GatewayKey.load_or_create(StatePaths(state).key)
            assert (StatePaths(state).key.stat().st_mode & 0o777) == 0o600

            tokens = (await ok(state, "token", "create", "--count", "2")).split()
            assert len(tokens) == 2 and all(TOKEN.fullmatch(t) for t in tokens)
            assert {t.rsplit(".", 1)[1] for t in tokens} == {key.fingerprint.hex()}
            peer = Peer()
            await peer.enrol(host, port, tokens[0])  # the running Mosquitto took the token
            assert peer.gw_pub == key.pub

            code, _, err = await cli(state, "submit", str(ROOT / "pyproject.toml"))
            assert code == 2 and "build-system: unknown field" in err
            job_id = (await ok(state, "submit", str(GEMM_JOB))).strip()
            assert job_id == "1"
            endpoint = peer.endpoint_at(host, port)
            async with mqtt_client(endpoint) as client:
                await client.subscribe(protocol.inbox_topic(peer.dev), qos=1)
                device = Device(peer, client)
                await device.state()
                report = await work_until_done(device, state, job_id)
            assert report["percent"] == 100.0 and report["counts"]["done"] == 2
            assert report["output"]["out"] == jobs.compute_locally(load_job(GEMM_JOB))["out"].hex()
            assert "done, 100.0%" in await ok(state, "job", job_id)

            status = json.loads(await ok(state, "status", "--json"))
            assert status["serving"] and status["fleet"]["devices"] == 1
            info = ServeInfo.load(StatePaths(state).serve_info)
            assert info is not None and info.mosquitto_pid is not None
        finally:
            serve.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S * 2):
                assert await serve.wait() == 0
        assert not StatePaths(state).serve_info.exists()
        assert not Path(f"/proc/{info.mosquitto_pid}").exists()  # its Mosquitto stopped too
        assert os.path.exists(StatePaths(state).ledger)

    asyncio.run(main())
