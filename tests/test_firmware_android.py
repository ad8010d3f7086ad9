"""firmware/android/setup-termux.sh and the Termux:Boot script it writes, in a throwaway Termux.

HOME and PREFIX are directories in tmp_path. What only a phone has is faked, and every fake
records its calls: `pkg` (answers `list-installed` from what it installed), `pip` (records and
installs an `edge-agent` command), `termux-wake-lock`/`-unlock`, `termux-battery-status` (the
recorded JSON of tests/fixtures/termux) and `sleep` (the boot script's restart pause). The
`edge-agent` that `pip` installs is this repo's real CLI, except where a test needs to see how the
boot script calls `edge-agent run`: there a recording stand-in answers with chosen exit codes.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_firmware_rpi import load_governor_settings, shellcheck, write_fake

REPO = Path(__file__).resolve().parent.parent
ANDROID = REPO / "firmware" / "android"
TERMUX_FIXTURES = REPO / "tests" / "fixtures" / "termux"
PACKAGES = ["python", "python-pip", "clang", "libffi", "libsodium", "termux-api"]
TOKEN = "tok-0123456789abcdef.0123456789abcdef0123456789abcdef.0123456789abcdef"
REAL_AGENT = Path(sys.executable).parent / "edge-agent"
READ_ONLY_CALLS = ("pkg list-installed",)

FAKES = {
    "pkg": """\
        echo "pkg $*" >> "$FAKE_LOG"
        case "$1" in
            list-installed)
                echo "Listing..."
                for p in bash coreutils $(ls "$FAKE_STATE/pkg" 2>/dev/null); do
                    echo "$p/stable,now 1.0 aarch64 [installed]"
                done ;;
            install)
                shift; mkdir -p "$FAKE_STATE/pkg"
                for p in "$@"; do [ "$p" = -y ] || touch "$FAKE_STATE/pkg/$p"; done ;;
            *) echo "fake pkg: unexpected $1" >&2; exit 1 ;;
        esac
        """,
    "pip": """\
        echo "SODIUM_INSTALL=${SODIUM_INSTALL:-} pip $*" >> "$FAKE_LOG"
        printf '#!/bin/sh\\nexec "%s" "$@"\\n' "$FAKE_AGENT" > "$PREFIX/bin/edge-agent"
        chmod 755 "$PREFIX/bin/edge-agent"
        """,
    "termux-wake-lock": 'echo "termux-wake-lock" >> "$FAKE_LOG"\n',
    "termux-wake-unlock": 'echo "termux-wake-unlock" >> "$FAKE_LOG"\n',
    "sleep": 'echo "sleep $*" >> "$FAKE_LOG"\n',
    # The stand-in for `edge-agent` (FAKE_AGENT): each `run` takes the next exit code.
    "recording-agent": """\
        echo "edge-agent $*" >> "$FAKE_LOG"
        case "$1" in
            run)
                [ -z "${FAKE_FIFO:-}" ] || echo "$*" > "$FAKE_FIFO"
                n=$(( $(cat "$FAKE_STATE/runs" 2>/dev/null || echo 0) + 1 ))
                echo "$n" > "$FAKE_STATE/runs"
                exit "$(sed -n "${n}p" "$FAKE_STATE/run-exit-codes" 2>/dev/null || echo 2)" ;;
            status) echo "status: fine" ;;
            *) echo "recording agent: unexpected $1" >&2; exit 99 ;;
        esac
        """,
}


@dataclass
class Phone:
    home: Path
    prefix: Path
    log: Path
    state: Path  # the fakes' own state
    env: dict[str, str]

    @property
    def agent_state(self) -> Path:
        return self.home / ".local/share/edge-agent"

    @property
    def boot_script(self) -> Path:
        return self.home / ".termux/boot/edge-agent"

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def changes(self) -> list[str]:
        return [c for c in self.calls() if not c.startswith(READ_ONLY_CALLS)]

    def setup(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        self.log.unlink(missing_ok=True)
        return subprocess.run(
            ["bash", str(ANDROID / "setup-termux.sh"), *args],
            capture_output=True,
            text=True,
            check=False,
            env={**self.env, **extra_env},
            cwd=self.home,
        )

    def enrolled_earlier(self) -> None:
        self.agent_state.mkdir(parents=True, exist_ok=True)
        (self.agent_state / "credentials.json").write_text("{}\n")
        (self.agent_state / "gateway.pub").write_text("00\n")


@pytest.fixture
def phone(tmp_path: Path) -> Phone:
    home, prefix, state = tmp_path / "home", tmp_path / "usr", tmp_path / "fake-state"
    for d in (home, prefix / "bin", state):
        d.mkdir(parents=True)
    for name, body in FAKES.items():
        write_fake(prefix / "bin", name, body)
    shutil.copy2(TERMUX_FIXTURES / "bin" / "termux-battery-status", prefix / "bin")
    (prefix / "bin" / "sh").symlink_to("/bin/sh")  # Termux has its own $PREFIX/bin/sh
    env = {
        "HOME": str(home),
        "PREFIX": str(prefix),
        "PATH": f"{prefix / 'bin'}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_STATE": str(state),
        "FAKE_AGENT": str(REAL_AGENT),
        "EDGE_TERMUX_BATTERY_JSON": str(TERMUX_FIXTURES / "charging_ac.json"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return Phone(home, prefix, tmp_path / "calls.log", state, env)


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    path = tmp_path / "edge_grid-0.1.0.tar.gz"
    path.write_bytes(os.urandom(2000))
    return path


def test_fresh_setup_installs_everything_once_and_shows_the_battery(
    phone: Phone, sdist: Path
) -> None:
    out = phone.setup("--wheel", str(sdist))
    assert out.returncode == 0, out.stderr
    assert phone.changes()[:3] == [
        "pkg install -y " + " ".join(PACKAGES),
        f"SODIUM_INSTALL=system pip install -q --disable-pip-version-check --no-input {sdist}",
        "SODIUM_INSTALL=system pip install -q --disable-pip-version-check --no-input "
        f"--no-deps --force-reinstall {sdist}",
    ]
    assert phone.agent_state.stat().st_mode & 0o777 == 0o700
    config = phone.agent_state / "config.toml"
    assert config.read_bytes() == (ANDROID / "config.toml").read_bytes()
    assert "not enrolled yet" in out.stdout
    assert "termux-wake-lock" not in phone.calls()  # nothing started before enrolment
    # The real `edge-agent status`, through the termux backend, read the recorded battery.
    assert "57" in out.stdout and "termux" in out.stdout


def test_boot_script_runs_the_agent_on_its_state_dir(phone: Phone, sdist: Path) -> None:
    assert phone.setup("--wheel", str(sdist), "--no-start").returncode == 0
    script = phone.boot_script.read_text()
    assert phone.boot_script.stat().st_mode & 0o777 == 0o700
    assert script.startswith(f"#!{phone.prefix}/bin/sh\n")
    assert f"STATE_DIR='{phone.agent_state}'" in script
    assert f"'{phone.prefix}/bin/edge-agent' run --state-dir \"$STATE_DIR\" --hal termux" in script
    assert shellcheck(phone.boot_script).returncode == 0


def test_second_setup_changes_nothing(phone: Phone, sdist: Path) -> None:
    assert phone.setup("--wheel", str(sdist)).returncode == 0
    before = {p: (p.stat().st_mtime_ns, p.stat().st_mode) for p in phone.home.rglob("*")}
    out = phone.setup("--wheel", str(sdist))
    assert out.returncode == 0, out.stderr
    assert phone.changes() == []
    assert {p: (p.stat().st_mtime_ns, p.stat().st_mode) for p in phone.home.rglob("*")} == before


def test_failed_enrolment_is_reported_by_the_real_agent(phone: Phone, sdist: Path) -> None:
    out = phone.setup("--wheel", str(sdist), "--gateway", "mqtt://127.0.0.1:9", "--token", TOKEN)
    assert out.returncode == 1
    assert "cannot reach the gateway at mqtt://127.0.0.1:9" in out.stderr
    assert "enrolment failed" in out.stderr
    assert not (phone.agent_state / "credentials.json").exists()
    assert phone.boot_script.exists()  # the rest is in place for the retry


def test_enrolled_phone_is_not_enrolled_again_and_the_agent_starts(
    phone: Phone, sdist: Path, tmp_path: Path
) -> None:
    phone.enrolled_earlier()
    fifo = tmp_path / "run.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open before the writer, never blocks
    try:
        env = {"FAKE_AGENT": str(phone.prefix / "bin/recording-agent"), "FAKE_FIFO": str(fifo)}
        out = phone.setup(
            "--wheel", str(sdist), "--gateway", "mqtt://gw:1883", "--token", TOKEN, **env
        )
        assert out.returncode == 0, out.stderr
        assert "already enrolled: the token was not used" in out.stdout
        ready, _, _ = select.select([reader], [], [], 30.0)  # the boot script in the background
        assert ready, "the boot script did not run edge-agent"
        line = os.read(reader, 4096).decode()
    finally:
        os.close(reader)
    assert line == f"run --state-dir {phone.agent_state} --hal termux\n"
    assert not [c for c in phone.calls() if c.startswith("edge-agent init")]


def test_boot_script_holds_a_wake_lock_and_restarts_a_crashed_agent(
    phone: Phone, sdist: Path
) -> None:
    recording = {"FAKE_AGENT": str(phone.prefix / "bin/recording-agent")}
    assert phone.setup("--wheel", str(sdist), "--no-start", **recording).returncode == 0
    (phone.state / "run-exit-codes").write_text("1\n2\n")  # a crash, then "not enrolled"
    phone.log.unlink()
    out = subprocess.run(
        [str(phone.boot_script)], env=phone.env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    run = f"edge-agent run --state-dir {phone.agent_state} --hal termux"
    assert phone.calls() == ["termux-wake-lock", run, "sleep 60", run, "termux-wake-unlock"]
    assert not (phone.agent_state / "agent.pid").exists()
    assert "exited with status 1; restarting" in (phone.agent_state / "agent.log").read_text()


def test_boot_script_does_not_start_a_second_agent(phone: Phone, sdist: Path) -> None:
    assert phone.setup("--wheel", str(sdist), "--no-start").returncode == 0
    (phone.agent_state / "agent.pid").write_text(f"{os.getpid()}\n")  # a live process
    phone.log.unlink()
    out = subprocess.run(
        [str(phone.boot_script)], env=phone.env, capture_output=True, text=True, check=True
    )
    assert "already running" in out.stdout
    assert phone.calls() == []


def test_setup_outside_termux_refuses(phone: Phone, sdist: Path) -> None:
    env = {k: v for k, v in phone.env.items() if k != "PREFIX"}
    out = subprocess.run(
        ["bash", str(ANDROID / "setup-termux.sh"), "--wheel", str(sdist)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1 and "run this inside Termux" in out.stderr
    assert phone.calls() == []


def test_overnight_config_is_valid_governor_settings() -> None:
    settings = load_governor_settings(ANDROID / "config.toml")
    assert settings.require_charging
    assert (settings.window_start_min, settings.window_end_min) == (23 * 60, 7 * 60)
    assert (settings.wake_min, settings.wake_target_pct) == (7 * 60, 100)


def test_setup_script_passes_shellcheck() -> None:
    out = shellcheck(ANDROID / "setup-termux.sh")
    assert out.returncode == 0, out.stdout
