"""firmware/rpi: the systemd unit, install.sh/uninstall.sh, the cloud-init user-data and flash-prep.

Real tools throughout: shellcheck, systemd-analyze, cloud-init schema, sfdisk, mkfs.vfat, mtools,
a real virtualenv with this repo's wheel pip-installed into a throwaway root. Only what a test
machine cannot have is faked, and every fake records its calls: apt-get/dpkg-query (packages),
useradd/userdel/chown (users of the real system), systemctl (no systemd here) and runuser (the
service user does not exist here; it plays a successful `edge-agent init`, after running the
installed console script for real).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.core.governor import Settings
from edge_agent.settings import parse_settings

REPO = Path(__file__).resolve().parent.parent
RPI = REPO / "firmware" / "rpi"
FIXTURES = REPO / "tests" / "fixtures"
TOKEN = "tok-0123456789abcdef.0123456789abcdef0123456789abcdef.0123456789abcdef"
GATEWAY = "mqtt://gw.example:1883"
PACKAGES = ["python3-venv", "python3-dev", "gcc", "libc6-dev", "libffi-dev"]
#: Calls that only look: everything else a fake records changes the system.
READ_ONLY_CALLS = ("dpkg-query ", "systemctl is-enabled ", "systemctl is-active ")
#: Settings whose TOML value is a local time "HH:MM" (the governor wants minutes of the day).


def load_governor_settings(path: Path) -> Settings:
    """The [governor] table of a config.toml as the governor's Settings (as the agent reads it)."""
    return parse_settings(path.read_text())


def shellcheck(*scripts: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["shellcheck", "--severity=style", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )


def write_fake(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


# --- the unit ------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every key=value of a unit file (keys may repeat), comments dropped."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def verify_problems(unit: Path) -> list[str]:
    """What `systemd-analyze verify` says about the unit (it exits 0 on ignored settings)."""
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [line for line in (out.stdout + out.stderr).splitlines() if unit.name in line]
    if out.returncode != 0:
        problems.append(f"exit status {out.returncode}")
    return problems


def unit_with_real_exec(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at a real executable, as `verify` insists."""
    agent = Path(sys.executable).parent / "edge-agent"
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text.replace("/opt/edge-agent/venv/bin/edge-agent", str(agent)))
    return unit


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = (RPI / "edge-agent.service").read_text()
    assert verify_problems(unit_with_real_exec(tmp_path, text)) == []
    broken = unit_with_real_exec(tmp_path, text.replace("ProtectSystem=strict", "ProtectSystem=x"))
    assert any("protect system" in p for p in verify_problems(broken))


def test_unit_is_a_hardened_guest() -> None:
    s = unit_settings((RPI / "edge-agent.service").read_text())
    (exec_start,) = s["ExecStart"]
    assert exec_start == "/opt/edge-agent/venv/bin/edge-agent run --state-dir /var/lib/edge-agent"
    assert s["User"] == ["edge-agent"] and s["SupplementaryGroups"] == ["video"]
    assert s["StateDirectory"] == ["edge-agent"] and s["StateDirectoryMode"] == ["0700"]
    assert s["Restart"] == ["on-failure"] and s["RestartPreventExitStatus"] == ["2"]
    assert s["StartLimitBurst"] == ["5"] and s["StartLimitIntervalSec"] == ["600"]
    guest = {"Nice": "19", "CPUSchedulingPolicy": "idle", "IOSchedulingClass": "idle"}
    assert {k: s[k][0] for k in guest} == guest
    assert s["MemoryMax"] == ["256M"]
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert s["MemoryDenyWriteExecute"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["DeviceAllow"] == ["/dev/vcio rw"] and s["DevicePolicy"] == ["closed"]
    # Each of these would break the HAL (vcio hidden, video group unmapped, /proc/loadavg hidden).
    for absent in ("PrivateDevices", "PrivateUsers", "ProcSubset"):
        assert absent not in s
    # The agent notifies (edge_agent/sdnotify.py), so systemd can watch its event loop.
    assert (s["Type"], s["NotifyAccess"], s["WatchdogSec"]) == (["notify"], ["main"], ["90"])


def test_unit_exposure_score_is_low(tmp_path: Path) -> None:
    unit = unit_with_real_exec(tmp_path, (RPI / "edge-agent.service").read_text())
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        check=True,
    )
    score = re.search(r"Overall exposure level for edge-agent.service: ([0-9.]+)", out.stdout)
    assert score is not None, out.stdout[-500:]
    assert float(score.group(1)) <= 2.0  # systemd calls <= 2.0 "OK"; stock units score 9.6


# PR_SET_MDWE (Linux 6.3+) is the kernel's own form of MemoryDenyWriteExecute=yes, inherited
# across execve: the child below runs the agent's whole native stack under it.
MDWE_LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
"""
AGENT_STACK = """
import asyncio, mmap, sqlite3
import nacl.signing
from edge_agent import kernels, native
assert native.AVAILABLE, "the C kernels did not load"
task = {"seed": 7, "points": 20000}
assert kernels.run("montecarlo_pi", task, "c") == kernels.run("montecarlo_pi", task, "python")
key = nacl.signing.SigningKey.generate()
key.verify_key.verify(key.sign(b"receipt"))
db = sqlite3.connect(":memory:")
db.execute("create table t (x)")
asyncio.run(asyncio.sleep(0))
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("agent stack ok; W+X refused")
"""


def test_agent_stack_runs_with_memory_deny_write_execute() -> None:
    out = subprocess.run(
        [sys.executable, "-c", MDWE_LAUNCHER, AGENT_STACK],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "agent stack ok; W+X refused"


# --- install.sh / uninstall.sh -------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repo built as a wheel, from a clean copy (no in-place .so, no shared build/)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    for name in ("native", "edge_agent", "hal", "gateway"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(base / "dist"),
            str(src),
        ],
        check=True,
    )
    (built,) = (base / "dist").glob("edge_grid-*.whl")
    return built


FAKES = {
    "apt-get": """\
        echo "apt-get $*" >> "$FAKE_LOG"
        if [ "$1" = install ]; then
            for a in "$@"; do
                case "$a" in -*|install) ;; *) touch "$FAKE_STATE/dpkg-$a" ;; esac
            done
        fi
        """,
    "dpkg-query": """\
        echo "dpkg-query $*" >> "$FAKE_LOG"
        pkg=${!#}
        [ -f "$FAKE_STATE/dpkg-$pkg" ] && { echo installed; exit 0; }
        echo "dpkg-query: no packages found matching $pkg" >&2; exit 1
        """,
    "useradd": """\
        echo "useradd $*" >> "$FAKE_LOG"
        echo "${!#}:x:998:998::/var/lib/edge-agent:/usr/sbin/nologin" >> "$EDGE_ROOT/etc/passwd"
        """,
    "userdel": """\
        echo "userdel $*" >> "$FAKE_LOG"
        sed -i "/^$1:/d" "$EDGE_ROOT/etc/passwd"
        """,
    "chown": 'echo "chown $*" >> "$FAKE_LOG"\n',
    "systemctl": """\
        echo "systemctl $*" >> "$FAKE_LOG"
        now=0; args=()
        for a in "$@"; do
            case "$a" in --now) now=1 ;; --quiet|--no-block) ;; *) args+=("$a") ;; esac
        done
        on() { touch "$FAKE_STATE/$1"; }
        off() { rm -f "$FAKE_STATE/$1"; }
        case "${args[0]}" in
            is-enabled) [ -f "$FAKE_STATE/enabled" ] ;;
            is-active) [ -f "$FAKE_STATE/active" ] ;;
            enable) on enabled; [ $now = 0 ] || on active ;;
            disable) off enabled; [ $now = 0 ] || off active ;;
            start|restart) on active ;;
            daemon-reload) ;;
            *) echo "fake systemctl: unexpected ${args[0]}" >&2; exit 1 ;;
        esac
        """,
    # runuser -u edge-agent -- PROGRAM init --gateway G --token T --state-dir D
    "runuser": """\
        echo "runuser $*" >> "$FAKE_LOG"
        while [ "$1" != -- ]; do shift; done; shift
        "$1" --help > /dev/null || exit 126  # the installed console script, for real
        if [ -n "${FAKE_ENROL_FAIL:-}" ]; then
            echo "edge-agent init: cannot reach the gateway" >&2; exit 2
        fi
        prev=""; for a in "$@"; do [ "$prev" = --state-dir ] && state=$a; prev=$a; done
        echo '{"gateway_url": "mqtt://gw.example:1883"}' > "$state/credentials.json"
        echo 00 > "$state/gateway.pub"
        """,
}


@dataclass
class FakeSystem:
    root: Path
    log: Path
    env: dict[str, str]
    first_calls: list[str] = field(default_factory=list)  # what the first install.sh did

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def changes(self) -> list[str]:
        return [c for c in self.calls() if not c.startswith(READ_ONLY_CALLS)]

    def run(self, script: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        self.log.unlink(missing_ok=True)
        return subprocess.run(
            ["bash", str(RPI / script), *args],
            capture_output=True,
            text=True,
            check=False,
            env={**self.env, **extra_env},
        )

    def install(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        out = self.run("install.sh", *args, **extra_env)
        assert out.returncode == 0, out.stdout + out.stderr
        return out


def fake_system(base: Path) -> FakeSystem:
    root, bin_dir, state = base / "root", base / "bin", base / "state"
    for d in (root / "etc", bin_dir, state):
        d.mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\nvideo:x:44:\n")
    for name, body in FAKES.items():
        write_fake(bin_dir, name, body)
    tool = {
        "apt-get": "APT",
        "dpkg-query": "DPKG_QUERY",
        "useradd": "USERADD",
        "userdel": "USERDEL",
        "chown": "CHOWN",
        "systemctl": "SYSTEMCTL",
    }
    env = {
        **os.environ,
        **{f"EDGE_{var}": str(bin_dir / name) for name, var in tool.items()},
        "EDGE_ROOT": str(root),
        "EDGE_RUNUSER": f"{bin_dir / 'runuser'} -u edge-agent --",
        "EDGE_PYTHON": sys.executable,
        # The wheel's dependencies are not fetched: the tests that run the agent lend it ours.
        "EDGE_PIP_ARGS": "--no-deps --no-index",
        "PYTHONDONTWRITEBYTECODE": "1",
        "FAKE_LOG": str(base / "calls.log"),
        "FAKE_STATE": str(state),
    }
    return FakeSystem(root, base / "calls.log", env)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under root: (mtime_ns, size, mode)."""
    return {
        str(p.relative_to(root)): (st.st_mtime_ns, st.st_size, st.st_mode)
        for p in root.rglob("*")
        for st in [p.lstat()]
    }


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> FakeSystem:
    """A throwaway root after one fresh `install.sh --wheel ... --gateway ... --token ...`."""
    system = fake_system(tmp_path_factory.mktemp("pi"))
    system.install("--wheel", str(wheel), "--gateway", GATEWAY, "--token", TOKEN)
    system.first_calls = system.calls()
    return system


def test_fresh_install_does_each_step_once(installed: FakeSystem, wheel: Path) -> None:
    changes = [c for c in installed.first_calls if not c.startswith(READ_ONLY_CALLS)]
    root = installed.root
    state = root / "var/lib/edge-agent"
    assert changes == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends " + " ".join(PACKAGES),
        "useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home "
        "--shell /usr/sbin/nologin --groups video edge-agent",
        f"chown edge-agent:edge-agent {state}",
        "systemctl daemon-reload",
        f"runuser -u edge-agent -- {root}/opt/edge-agent/venv/bin/edge-agent init "
        f"--gateway {GATEWAY} --token {TOKEN} --state-dir {state}",
        "systemctl enable --quiet edge-agent.service",
        "systemctl start --no-block edge-agent.service",
    ]
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "config.toml").read_bytes() == (RPI / "config.toml").read_bytes()
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_bytes() == (RPI / "edge-agent.service").read_bytes()
    stamp = (root / "opt/edge-agent/installed-from").read_text().split()
    assert stamp[0] == "wheel" and len(stamp[1]) == 64


def test_installed_agent_runs_from_the_venv(installed: FakeSystem) -> None:
    venv = installed.root / "opt/edge-agent/venv"
    # The wheel went in without its dependencies: lend it ours. Our site-packages holds edge_agent
    # only as an editable-install finder, which PYTHONPATH does not load, so edge_agent comes from
    # the venv; cwd is away from the repo so that '' on sys.path is not the source tree.
    deps = next(Path(sys.executable).parent.parent.glob("lib/python3*/site-packages"))
    env = {**installed.env, "PYTHONPATH": str(deps)}
    where = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import edge_agent, edge_agent._native_c as c; print(edge_agent.__file__, c.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=installed.root,
    )
    assert all(p.startswith(str(venv)) for p in where.stdout.split())
    status = subprocess.run(
        [
            str(venv / "bin/edge-agent"),
            "status",
            "--json",
            "--hal",
            "mains",
            "--sysfs-root",
            str(FIXTURES / "sysfs/rpi4"),
            "--vcgencmd",
            "/nonexistent",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    report = json.loads(status.stdout)
    assert report["backend"] == "mains" and report["hottest_zone"] == "cpu-thermal"


def test_second_install_changes_nothing(installed: FakeSystem, wheel: Path) -> None:
    before = snapshot(installed.root)
    out = installed.install("--wheel", str(wheel), "--gateway", GATEWAY, "--token", TOKEN)
    assert installed.changes() == []
    assert snapshot(installed.root) == before
    assert "already enrolled: the token was not used" in out.stdout


def test_new_settings_restart_the_agent(installed: FakeSystem, wheel: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[governor]\nwindow_start_min = "22:30"\nwindow_end_min = "06:00"\n')
    installed.install("--wheel", str(wheel), "--config", str(config))
    assert installed.changes() == ["systemctl restart --no-block edge-agent.service"]
    assert (installed.root / "var/lib/edge-agent/config.toml").read_text() == config.read_text()


def test_uninstall_keeps_the_identity_then_purge_removes_it(installed: FakeSystem) -> None:
    root, state = installed.root, installed.root / "var/lib/edge-agent"
    out = installed.run("uninstall.sh")
    assert out.returncode == 0, out.stderr
    assert installed.changes() == [
        "systemctl disable --now --quiet edge-agent.service",
        "systemctl daemon-reload",
    ]
    assert not (root / "opt/edge-agent").exists()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert (state / "credentials.json").exists() and "kept /var/lib/edge-agent" in out.stdout
    assert installed.run("uninstall.sh").returncode == 0
    assert installed.changes() == []
    assert installed.run("uninstall.sh", "--purge").returncode == 0
    assert installed.changes() == ["userdel edge-agent"]
    assert not state.exists()
    assert "edge-agent:" not in (root / "etc/passwd").read_text()


def test_no_token_installs_without_starting_and_a_failed_enrolment_starts_nothing(
    wheel: Path, tmp_path: Path
) -> None:
    system = fake_system(tmp_path)
    out = system.install("--wheel", str(wheel))
    assert "not enrolled yet" in out.stdout
    assert not [c for c in system.changes() if c.startswith(("runuser", "systemctl enable"))]
    failed = system.run("install.sh", "--gateway", GATEWAY, "--token", TOKEN, FAKE_ENROL_FAIL="1")
    assert failed.returncode == 1
    assert "cannot reach the gateway" in failed.stderr and "enrolment failed" in failed.stderr
    assert [c for c in system.changes() if c.startswith("systemctl")] == []
    system.install("--gateway", GATEWAY, "--token", TOKEN)  # later, the gateway is back
    assert system.changes()[-2:] == [
        "systemctl enable --quiet edge-agent.service",
        "systemctl start --no-block edge-agent.service",
    ]
    assert not [c for c in system.changes() if c.startswith(("apt-get", "useradd"))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gateway", "http://gw:80", "--token", TOKEN], "--gateway must look like mqtt://"),
        (["--gateway", GATEWAY, "--token", "a b"], "is not a token"),
        (["--wheel", "/nonexistent.whl"], "no such wheel"),
        (["--wheel", "/etc/hostname", "--source", "/tmp"], "not both"),
        (["--frobnicate"], "unknown option --frobnicate"),
    ],
)
def test_install_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    system = fake_system(tmp_path)
    out = system.run("install.sh", *args)
    assert out.returncode != 0 and message in out.stderr
    assert system.changes() == []


# --- cloud-init and flash-prep -------------------------------------------------------------------


def cloud_config_errors(path: Path) -> str:
    """'' when `cloud-init schema` (offline: it reads only the file) accepts the file."""
    out = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return "" if out.returncode == 0 and "Valid cloud-config" in out.stdout else out.stderr


def yaml_as_json(path: Path) -> Any:
    """YAML parsed by Debian's python3-yaml (cloud-init's own parser); the venv has none."""
    code = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
    out = subprocess.run(
        ["/usr/bin/python3", "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_user_data_template_passes_cloud_init_schema(tmp_path: Path) -> None:
    template = RPI / "cloud-init" / "user-data"
    assert cloud_config_errors(template) == ""
    broken = tmp_path / "user-data"
    broken.write_text(template.read_text().replace("packages:\n", "packages: 5\nx:\n", 1))
    assert "packages: 5 is not of type 'array'" in cloud_config_errors(broken)


SECTOR = 512
FAT_START = 8192  # sectors, as Raspberry Pi OS images have it
FAT_SECTORS = 131072  # 64 MiB


def pi_os_image(path: Path, *, cloud_init: bool = True) -> Path:
    """A small image laid out as Raspberry Pi OS: MBR, FAT32 boot at 4 MiB, then a Linux root."""
    with path.open("wb") as f:
        f.truncate(96 * 1024 * 1024)
    layout = f"label: dos\nstart={FAT_START}, size={FAT_SECTORS}, type=c\nstart=139264, type=83\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=layout, text=True, check=True)
    subprocess.run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-n",
            "BOOTFS",
            "--offset",
            str(FAT_START),
            str(path),
            str(FAT_SECTORS // 2),
        ],
        capture_output=True,
        check=True,
    )
    with path.open("r+b") as f:  # something in the root partition, to prove it is untouched
        f.seek(139264 * SECTOR)
        f.write(b"ext4 root filesystem" * 100)
    if cloud_init:
        seed = path.parent / "seed"
        seed.mkdir(exist_ok=True)
        (seed / "user-data").write_text("#cloud-config\n# stock, all commented out\n")
        (seed / "meta-data").write_text("instance_id: rpios-image\n")
        mtools("mcopy", path, str(seed / "user-data"), str(seed / "meta-data"), "::")
    return path


def mtools(tool: str, image: Path, *args: str) -> bytes:
    out = subprocess.run(
        [tool, "-i", f"{image}@@{FAT_START * SECTOR}", *args],
        capture_output=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    return out.stdout


def card_file(image: Path, name: str) -> bytes:
    return mtools("mtype", image, f"::{name}")


def outside_fat(image: Path) -> tuple[bytes, bytes]:
    data = image.read_bytes()
    return data[: FAT_START * SECTOR], data[(FAT_START + FAT_SECTORS) * SECTOR :]


def flash_prep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RPI / "flash-prep.sh"), *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    path = tmp_path / "edge_grid-0.1.0.tar.gz"
    path.write_bytes(os.urandom(3000))
    return path


def test_flash_prep_writes_the_boot_partition_and_nothing_else(tmp_path: Path, sdist: Path) -> None:
    image = pi_os_image(tmp_path / "os.img")
    untouched = outside_fat(image)
    out = flash_prep(str(image), "--gateway", GATEWAY, "--token", TOKEN, "--wheel", str(sdist))
    assert out.returncode == 0, out.stderr
    assert outside_fat(image) == untouched
    for name in ("install.sh", "uninstall.sh", "edge-agent.service", "config.toml"):
        assert card_file(image, f"edge-agent/{name}") == (RPI / name).read_bytes()
    assert card_file(image, f"edge-agent/{sdist.name}") == sdist.read_bytes()
    assert card_file(image, "meta-data") == b"instance_id: rpios-image\n"  # Pi OS's own, kept
    user_data = tmp_path / "user-data"
    user_data.write_bytes(card_file(image, "user-data"))
    assert cloud_config_errors(user_data) == ""
    config = yaml_as_json(user_data)
    files = {f["path"]: f for f in config["write_files"]}
    assert files["/var/lib/edge-agent-setup/token"]["content"] == TOKEN
    assert files["/var/lib/edge-agent-setup/token"]["permissions"] == "0600"
    pi_config = files["/var/lib/edge-agent-setup/config.toml"]["content"]
    assert pi_config.rstrip("\n") == (RPI / "config.toml").read_text().rstrip("\n")
    (command,) = config["runcmd"]
    assert command.startswith(
        "bash /boot/firmware/edge-agent/install.sh "
        f'--wheel "/boot/firmware/edge-agent/{sdist.name}" --gateway "{GATEWAY}" '
        "--token-file /var/lib/edge-agent-setup/token"
    )
    assert command.endswith("&& rm -rf /var/lib/edge-agent-setup")
    assert set(config["packages"]) == set(PACKAGES)
    # Run twice: the same card.
    assert (
        flash_prep(
            str(image), "--gateway", GATEWAY, "--token", TOKEN, "--wheel", str(sdist)
        ).returncode
        == 0
    )
    assert card_file(image, "user-data") == user_data.read_bytes()


def test_flash_prep_for_imager_uses_vendor_data_and_writes_an_os_list(
    tmp_path: Path, sdist: Path
) -> None:
    image = pi_os_image(tmp_path / "os.img")
    os_list = tmp_path / "os_list.json"
    out = flash_prep(
        str(image),
        "--gateway",
        GATEWAY,
        "--token",
        TOKEN,
        "--wheel",
        str(sdist),
        "--os-list",
        str(os_list),
    )
    assert out.returncode == 0, out.stderr
    assert card_file(image, "user-data").startswith(b"#cloud-config\n# stock")  # Imager's to write
    vendor_data = tmp_path / "vendor-data"
    vendor_data.write_bytes(card_file(image, "vendor-data"))
    assert cloud_config_errors(vendor_data) == ""
    (entry,) = json.loads(os_list.read_text())["os_list"]
    assert entry["init_format"] == "cloudinit-rpi"
    assert entry["url"] == image.resolve().as_uri()
    digest = subprocess.run(["sha256sum", str(image)], capture_output=True, text=True, check=True)
    assert entry["extract_sha256"] == digest.stdout.split()[0]
    assert entry["extract_size"] == entry["image_download_size"] == image.stat().st_size
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", entry["release_date"])
    required = {
        "name",
        "description",
        "icon",
        "url",
        "extract_size",
        "extract_sha256",
        "image_download_size",
        "release_date",
    }  # rpi-imager's os-list-schema.json
    assert required <= entry.keys()


def test_flash_prep_on_an_image_without_cloud_init_warns_and_seeds_it(
    tmp_path: Path, sdist: Path
) -> None:
    image = pi_os_image(tmp_path / "os.img", cloud_init=False)
    out = flash_prep(str(image), "--gateway", GATEWAY, "--token", TOKEN, "--wheel", str(sdist))
    assert out.returncode == 0, out.stderr
    assert "no cloud-init files" in out.stdout
    assert re.fullmatch(rb"instance-id: edge-agent-[0-9a-f]{16}\n", card_file(image, "meta-data"))


def test_flash_prep_refuses_a_wheel_built_for_a_pc(tmp_path: Path, wheel: Path) -> None:
    image = pi_os_image(tmp_path / "os.img")
    before = image.read_bytes()
    out = flash_prep(str(image), "--gateway", GATEWAY, "--token", TOKEN, "--wheel", str(wheel))
    assert out.returncode == 1 and "not built for a Pi" in out.stderr
    assert image.read_bytes() == before


def test_pi_config_is_valid_governor_settings() -> None:
    settings = load_governor_settings(RPI / "config.toml")
    assert settings.enabled and settings.require_charging
    assert settings.window_start_min is None  # a Pi on mains may work around the clock


def test_shell_scripts_pass_shellcheck() -> None:
    out = shellcheck(*sorted(RPI.glob("*.sh")))
    assert out.returncode == 0, out.stdout
