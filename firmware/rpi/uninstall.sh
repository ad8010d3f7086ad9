#!/bin/bash
# Removes the edge-grid agent that install.sh set up.
#
#   sudo ./uninstall.sh           stop and remove the service and /opt/edge-agent; KEEP
#                                 /var/lib/edge-agent (device key, enrolment, unsent results)
#                                 and the edge-agent user, so a reinstall is the same device
#   sudo ./uninstall.sh --purge   also delete /var/lib/edge-agent and the edge-agent user
#
# Safe to run again. EDGE_ROOT, EDGE_SYSTEMCTL and EDGE_USERDEL as for install.sh.
set -euo pipefail

ROOT=${EDGE_ROOT:-}
SYSTEMCTL=${EDGE_SYSTEMCTL:-systemctl}
USERDEL=${EDGE_USERDEL:-userdel}

SERVICE_USER=edge-agent
UNIT=edge-agent.service
OPT_DIR=/opt/edge-agent
STATE_DIR=/var/lib/edge-agent
UNIT_PATH=/etc/systemd/system/$UNIT

say() { printf 'edge-agent uninstall: %s\n' "$*"; }
die() { printf 'edge-agent uninstall: %s\n' "$*" >&2; exit 1; }

PURGE=0
case "${1:-}" in
    --purge) PURGE=1 ;;
    "") ;;
    -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (only --purge)" ;;
esac
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "run it as root: sudo $0 $*"
fi

if $SYSTEMCTL is-enabled --quiet "$UNIT" || $SYSTEMCTL is-active --quiet "$UNIT"; then
    say "stopping and disabling $UNIT (the agent checkpoints its task on the way out)"
    $SYSTEMCTL disable --now --quiet "$UNIT"
fi
if [ -f "$ROOT$UNIT_PATH" ]; then
    rm -f "$ROOT$UNIT_PATH"
    $SYSTEMCTL daemon-reload
    say "removed $UNIT_PATH"
fi
if [ -d "$ROOT$OPT_DIR" ]; then
    rm -rf "$ROOT$OPT_DIR"
    say "removed $OPT_DIR"
fi

if [ "$PURGE" = 1 ]; then
    if [ -d "$ROOT$STATE_DIR" ]; then
        rm -rf "$ROOT$STATE_DIR"
        say "deleted $STATE_DIR: this device's key and enrolment are gone"
    fi
    if grep -qs "^$SERVICE_USER:" "$ROOT/etc/passwd"; then
        $USERDEL "$SERVICE_USER"
        say "removed the user $SERVICE_USER"
    fi
elif [ -d "$ROOT$STATE_DIR" ]; then
    say "kept $STATE_DIR (device key, enrolment, unsent results); --purge deletes it"
fi
say "done"
