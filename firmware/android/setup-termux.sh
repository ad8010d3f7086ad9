#!/data/data/com.termux/files/usr/bin/bash
# Sets up the edge-grid agent on an Android phone, inside Termux, for overnight work: it computes
# only while charging, between 23:00 and 07:00, and leaves the battery full at 07:00.
#
#   bash setup-termux.sh --wheel edge_grid-X.tar.gz --gateway mqtt://HOST:PORT --token TOKEN
#   options: --source DIR      install from a source tree (default: the one this script is in)
#            --token-file FILE instead of --token
#            --config FILE     owner settings (default: firmware/android/config.toml)
#            --no-start        set up, do not start the agent now
#
# Needs the Termux, Termux:API and Termux:Boot apps (all from F-Droid or all from GitHub).
# Safe to run again: it changes only what differs and never enrols an enrolled phone twice.
# firmware/README.md explains Android's background limits and what to switch off.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# What Termux's Python needs to build cffi and PyNaCl (against Termux's libsodium) and the C
# kernels; termux-api is the command side of the Termux:API app (termux-battery-status).
TERMUX_PACKAGES=(python python-pip clang libffi libsodium termux-api)
STATE_DIR=$HOME/.local/share/edge-agent
BOOT_SCRIPT=$HOME/.termux/boot/edge-agent
STAMP=$HOME/.cache/edge-agent/installed-from

say() { printf 'edge-agent setup: %s\n' "$*"; }
die() { printf 'edge-agent setup: %s\n' "$*" >&2; exit 1; }

WHEEL="" SOURCE="" GATEWAY="" TOKEN="" CONFIG="" START=1
while [ $# -gt 0 ]; do
    case "$1" in
        --wheel) WHEEL=${2:?--wheel needs a file}; shift 2 ;;
        --source) SOURCE=${2:?--source needs a directory}; shift 2 ;;
        --gateway) GATEWAY=${2:?--gateway needs mqtt://HOST:PORT}; shift 2 ;;
        --token) TOKEN=${2:?--token needs a token}; shift 2 ;;
        --token-file) TOKEN=$(head -n 1 "${2:?--token-file needs a file}"); shift 2 ;;
        --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
        --no-start) START=0; shift ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

if [ -z "${PREFIX:-}" ] || ! command -v pkg >/dev/null; then
    die "run this inside Termux (the app from F-Droid or GitHub; the Play Store one is stale)"
fi
[ -n "$WHEEL" ] && [ -n "$SOURCE" ] && die "give --wheel or --source, not both"
[ -z "$WHEEL" ] || [ -f "$WHEEL" ] || die "no such wheel or sdist: $WHEEL"
[ -n "$WHEEL" ] || SOURCE=${SOURCE:-$(cd "$HERE/../.." && pwd)}
[ -z "$SOURCE" ] || [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE has no pyproject.toml"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "no such config file: $CONFIG"
if [ -n "$GATEWAY$TOKEN" ]; then
    [[ $GATEWAY =~ ^mqtt://[A-Za-z0-9._-]+(:[0-9]{1,5})?$ ]] \
        || die "--gateway must look like mqtt://HOST:PORT, got '$GATEWAY'"
    [[ $TOKEN =~ ^[A-Za-z0-9._-]{1,200}$ ]] || die "--token is missing or is not a token"
fi

install_termux_packages() {
    local installed missing=() p
    installed=$(pkg list-installed 2>/dev/null)
    for p in "${TERMUX_PACKAGES[@]}"; do
        grep -q "^$p/" <<<"$installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]}"
    pkg install -y "${missing[@]}"
}

package_identity() {
    if [ -n "$WHEEL" ]; then
        printf 'wheel %s\n' "$(sha256sum < "$WHEEL" | cut -d' ' -f1)"
    else
        printf 'source %s\n' "$(cd "$SOURCE" && find . \( -name .git -o -name .venv -o -name build \
            -o -name '*.egg-info' -o -name __pycache__ -o -name '*.so' \) -prune -o -type f -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
    fi
}

install_agent() {
    local target=${WHEEL:-$SOURCE} identity
    identity=$(package_identity)
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$identity" ] && return
    say "installing the agent from $target (compiles cffi, PyNaCl and the C kernels: minutes)"
    # PyNaCl links Termux's libsodium instead of building its own copy.
    SODIUM_INSTALL=system pip install -q --disable-pip-version-check --no-input "$target"
    SODIUM_INSTALL=system pip install -q --disable-pip-version-check --no-input \
        --no-deps --force-reinstall "$target"
    mkdir -p "$(dirname "$STAMP")"
    printf '%s\n' "$identity" > "$STAMP"
}

write_config() {
    local target=$STATE_DIR/config.toml
    if [ -n "$CONFIG" ]; then
        cmp -s "$CONFIG" "$target" || { cp "$CONFIG" "$target"; say "wrote $target"; }
    elif [ ! -f "$target" ]; then
        cp "$HERE/config.toml" "$target"
        say "wrote $target (overnight defaults)"
    fi
}

# The script Termux:Boot runs after the phone starts; setup starts it now too.
boot_script() {
    cat <<EOF
#!$PREFIX/bin/sh
# Termux:Boot runs this when the phone starts (written by setup-termux.sh; it rewrites it).
# It holds a wake lock, so Android does not suspend the CPU mid-task, and restarts the agent
# after a crash. Exit 0 (stopped) or 2 (not enrolled, unusable state) ends it.
STATE_DIR='$STATE_DIR'
LOG="\$STATE_DIR/agent.log"
PIDFILE="\$STATE_DIR/agent.pid"
if [ -f "\$PIDFILE" ] && kill -0 "\$(cat "\$PIDFILE")" 2>/dev/null; then
    echo "edge-agent is already running (pid \$(cat "\$PIDFILE"))"
    exit 0
fi
echo \$\$ > "\$PIDFILE"
trap 'rm -f "\$PIDFILE"' EXIT
'$PREFIX/bin/termux-wake-lock'
while :; do
    # Keep at most about 2 MB of log.
    if [ -f "\$LOG" ] && [ "\$(wc -c < "\$LOG")" -gt 1048576 ]; then mv "\$LOG" "\$LOG.1"; fi
    '$PREFIX/bin/edge-agent' run --state-dir "\$STATE_DIR" --hal termux >> "\$LOG" 2>&1
    status=\$?
    if [ "\$status" -eq 0 ] || [ "\$status" -eq 2 ]; then break; fi
    echo "edge-agent exited with status \$status; restarting in 60 s" >> "\$LOG"
    sleep 60
done
'$PREFIX/bin/termux-wake-unlock'
EOF
}

write_boot_script() {
    mkdir -p "$(dirname "$BOOT_SCRIPT")"
    if ! cmp -s <(boot_script) "$BOOT_SCRIPT"; then
        boot_script > "$BOOT_SCRIPT"
        say "wrote $BOOT_SCRIPT (Termux:Boot starts it after every boot)"
    fi
    chmod 700 "$BOOT_SCRIPT"
}

enrolled() { [ -f "$STATE_DIR/credentials.json" ] && [ -f "$STATE_DIR/gateway.pub" ]; }

enrol() {
    if enrolled; then
        [ -n "$TOKEN" ] && say "already enrolled: the token was not used (it stays valid)"
        return 0
    fi
    if [ -z "$TOKEN" ]; then
        say "set up, not enrolled yet; enrol with:"
        say "  bash $0 --gateway mqtt://HOST:PORT --token TOKEN"
        return 1
    fi
    say "enrolling with $GATEWAY"
    edge-agent init --gateway "$GATEWAY" --token "$TOKEN" --state-dir "$STATE_DIR" \
        || die "enrolment failed (above: why); fix it and run this again with the same token"
}

install_termux_packages
install_agent
mkdir -p "$STATE_DIR"
chmod 700 "$STATE_DIR"
write_config
write_boot_script
if enrol && [ "$START" = 1 ]; then
    nohup "$BOOT_SCRIPT" > /dev/null 2>&1 &
    say "started; its log: $STATE_DIR/agent.log"
fi
say "what the agent sees now:"
edge-agent status --hal termux || say "termux-battery-status did not answer: is the Termux:API app installed?"
say "done. Now exempt Termux and Termux:API from battery optimisation (firmware/README.md)."
