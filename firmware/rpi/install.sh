#!/bin/bash
# Installs the edge-grid agent on Raspberry Pi OS (Debian bookworm or trixie) as a systemd service.
#
#   sudo ./install.sh --wheel edge_grid-X.tar.gz|.whl --gateway mqtt://HOST:PORT --token TOKEN
#   sudo ./install.sh --source ~/edge-grid ...         (a source tree instead of a wheel or sdist)
#   options: --token-file FILE (instead of --token), --config FILE (owner settings, config.toml),
#            --no-start (install and enrol, do not start: for images built offline)
#
# Safe to run again: each step changes only what differs, and an enrolled device is never enrolled
# again (its key and credentials stay). firmware/README.md explains every step.
#
# For tests and image builds: every path is taken under $EDGE_ROOT (default: /), and the system
# commands can be replaced: EDGE_APT, EDGE_DPKG_QUERY, EDGE_USERADD, EDGE_CHOWN, EDGE_SYSTEMCTL,
# EDGE_RUNUSER (runs a command as the service user), EDGE_PYTHON; EDGE_PIP_ARGS adds pip options.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${EDGE_ROOT:-}
APT=${EDGE_APT:-apt-get}
DPKG_QUERY=${EDGE_DPKG_QUERY:-dpkg-query}
USERADD=${EDGE_USERADD:-useradd}
CHOWN=${EDGE_CHOWN:-chown}
SYSTEMCTL=${EDGE_SYSTEMCTL:-systemctl}
RUNUSER=${EDGE_RUNUSER:-runuser -u edge-agent --}
PYTHON=${EDGE_PYTHON:-python3}
PIP_ARGS=${EDGE_PIP_ARGS:-}

SERVICE_USER=edge-agent
UNIT=edge-agent.service
OPT_DIR=/opt/edge-agent
VENV=$OPT_DIR/venv
STATE_DIR=/var/lib/edge-agent
UNIT_PATH=/etc/systemd/system/$UNIT
# What building the C kernels and the cffi/PyNaCl bindings needs when no wheel fits the Pi.
DEBIAN_PACKAGES=(python3-venv python3-dev gcc libc6-dev libffi-dev)

say() { printf 'edge-agent install: %s\n' "$*"; }
die() { printf 'edge-agent install: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

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
        -h | --help) usage 0 ;;
        *) printf 'edge-agent install: unknown option %s\n\n' "$1" >&2; usage 2 ;;
    esac
done

[ -n "$WHEEL" ] && [ -n "$SOURCE" ] && die "give --wheel or --source, not both"
[ -z "$WHEEL" ] || [ -f "$WHEEL" ] || die "no such wheel or sdist: $WHEEL"
[ -z "$SOURCE" ] || [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE has no pyproject.toml"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "no such config file: $CONFIG"
if [ -n "$GATEWAY$TOKEN" ]; then
    [[ $GATEWAY =~ ^mqtt://[A-Za-z0-9._-]+(:[0-9]{1,5})?$ ]] \
        || die "--gateway must look like mqtt://HOST:PORT, got '$GATEWAY'"
    [[ $TOKEN =~ ^[A-Za-z0-9._-]{1,200}$ ]] || die "--token is missing or is not a token"
fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "run it as root: sudo $0 $*"
fi

CHANGED=0  # something the running agent reads was replaced: restart it

install_debian_packages() {
    local missing=() p
    for p in "${DEBIAN_PACKAGES[@]}"; do
        # shellcheck disable=SC2016  # ${db:...} is dpkg-query's format, not the shell's
        if [ "$($DPKG_QUERY -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]}"
    $APT update -qq
    DEBIAN_FRONTEND=noninteractive $APT install -y -qq --no-install-recommends "${missing[@]}"
}

create_service_user() {
    grep -qs "^$SERVICE_USER:" "$ROOT/etc/passwd" && return
    local groups=()
    # vcgencmd needs /dev/vcio (root:video); the unit adds the group too, this is for `sudo -u`.
    grep -qs '^video:' "$ROOT/etc/group" && groups=(--groups video)
    say "creating system user $SERVICE_USER"
    $USERADD --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin "${groups[@]}" "$SERVICE_USER"
}

create_state_dir() {
    [ -d "$ROOT$STATE_DIR" ] && return
    install -d -m 0700 "$ROOT$STATE_DIR"
    $CHOWN "$SERVICE_USER:$SERVICE_USER" "$ROOT$STATE_DIR"
}

# One line naming what is installed: the sha256 of the wheel, or of every file of the source tree.
package_identity() {
    if [ -n "$WHEEL" ]; then
        printf 'wheel %s\n' "$(sha256sum < "$WHEEL" | cut -d' ' -f1)"
    else
        printf 'source %s\n' "$(cd "$SOURCE" && find . \( -name .git -o -name .venv -o -name build \
            -o -name '*.egg-info' -o -name __pycache__ -o -name '*.so' \) -prune -o -type f -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
    fi
}

install_package() {
    local venv=$ROOT$VENV stamp=$ROOT$OPT_DIR/installed-from target identity
    if [ ! -x "$venv/bin/python" ]; then
        say "creating the virtualenv $VENV"
        $PYTHON -m venv "$venv"
    fi
    if [ -z "$WHEEL$SOURCE" ]; then
        [ -x "$venv/bin/edge-agent" ] || die "nothing installed yet: give --wheel FILE or --source DIR"
        return
    fi
    target=${WHEEL:-$SOURCE}
    identity=$(package_identity)
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$identity" ] && return
    say "installing the agent from $target (the C kernels compile here if no wheel fits)"
    # shellcheck disable=SC2086  # EDGE_PIP_ARGS is a list of options
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input $PIP_ARGS "$target"
    # The same version number with new content (a rebuilt wheel) is not "already satisfied".
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input $PIP_ARGS \
        --no-deps --force-reinstall "$target"
    printf '%s\n' "$identity" > "$stamp"
    CHANGED=1
}

# Copies $1 to $2 (mode $3) unless $2 already has the same bytes; returns 1 when nothing changed.
install_if_changed() {
    cmp -s "$1" "$2" && return 1
    install -m "$3" "$1" "$2"
}

install_unit() {
    install -d -m 0755 "$ROOT$(dirname "$UNIT_PATH")"
    install_if_changed "$HERE/$UNIT" "$ROOT$UNIT_PATH" 0644 || return 0
    say "installed $UNIT_PATH"
    $SYSTEMCTL daemon-reload
    CHANGED=1
}

install_config() {
    local target=$ROOT$STATE_DIR/config.toml
    if [ -n "$CONFIG" ]; then
        install_if_changed "$CONFIG" "$target" 0644 || return 0
    elif [ ! -f "$target" ]; then
        install -m 0644 "$HERE/config.toml" "$target"
    else
        return 0  # the owner's own settings: kept
    fi
    say "wrote $STATE_DIR/config.toml"
    CHANGED=1
}

enrolled() {
    [ -f "$ROOT$STATE_DIR/credentials.json" ] && [ -f "$ROOT$STATE_DIR/gateway.pub" ]
}

enrol() {
    if enrolled; then
        [ -n "$TOKEN" ] && say "already enrolled: the token was not used (it stays valid)"
        return 0
    fi
    if [ -z "$TOKEN" ]; then
        say "installed, not enrolled yet; enrol with:"
        say "  sudo $0 --gateway mqtt://HOST:PORT --token TOKEN"
        return 1
    fi
    say "enrolling with $GATEWAY"
    # shellcheck disable=SC2086  # EDGE_RUNUSER is a command with its options
    $RUNUSER "$ROOT$VENV/bin/edge-agent" init --gateway "$GATEWAY" --token "$TOKEN" \
        --state-dir "$ROOT$STATE_DIR" \
        || die "enrolment failed (above: why); fix it and run this again with the same token"
}

start_service() {
    $SYSTEMCTL is-enabled --quiet "$UNIT" || $SYSTEMCTL enable --quiet "$UNIT"
    [ "$START" = 1 ] || return 0
    # --no-block: cloud-init runs this during boot, when waiting for a start job can deadlock.
    if ! $SYSTEMCTL is-active --quiet "$UNIT"; then
        $SYSTEMCTL start --no-block "$UNIT"
        say "started; follow it with: journalctl -u edge-agent -f"
    elif [ "$CHANGED" = 1 ]; then
        $SYSTEMCTL restart --no-block "$UNIT"
        say "restarted with the new version or settings"
    fi
}

install_debian_packages
create_service_user
create_state_dir
install_package
install_unit
install_config
if enrol; then
    start_service
fi
say "done"
