#!/bin/bash
# Prepares a downloaded Raspberry Pi OS image so that a Pi booted from it installs, enrols and
# starts the edge-grid agent by itself. No root, no mounting: mtools writes into the image file.
#
#   ./flash-prep.sh IMAGE.img --gateway mqtt://HOST:PORT --token TOKEN --wheel edge_grid-X.tar.gz
#   options: --config FILE     owner settings (default: firmware/rpi/config.toml)
#            --vendor-data     leave user-data to Raspberry Pi Imager's own settings (user, Wi-Fi,
#                              SSH): write ours as cloud-init vendor-data instead
#            --os-list FILE    also write a Raspberry Pi Imager OS list for the prepared image
#                              (implies --vendor-data); open it with: rpi-imager --repo FILE
#            --image-url URL   where that OS list says the image is (default: file:// its path)
#
# Then flash IMAGE.img (Imager "Use custom", or dd) and boot: firmware/README.md has the rest.
# Needs: sfdisk (fdisk package), mtools, sha256sum. The image must be decompressed (.img).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUNDLE=edge-agent  # the folder on the boot partition, /boot/firmware/edge-agent on the Pi

say() { printf 'flash-prep: %s\n' "$*"; }
die() { printf 'flash-prep: %s\n' "$*" >&2; exit 1; }

IMAGE="" GATEWAY="" TOKEN="" WHEEL="" CONFIG=$HERE/config.toml SEED=user-data OS_LIST="" URL=""
while [ $# -gt 0 ]; do
    case "$1" in
        --gateway) GATEWAY=${2:?--gateway needs mqtt://HOST:PORT}; shift 2 ;;
        --token) TOKEN=${2:?--token needs a token}; shift 2 ;;
        --wheel) WHEEL=${2:?--wheel needs a file}; shift 2 ;;
        --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
        --vendor-data) SEED=vendor-data; shift ;;
        --os-list) OS_LIST=${2:?--os-list needs a file name}; SEED=vendor-data; shift 2 ;;
        --image-url) URL=${2:?--image-url needs a URL}; shift 2 ;;
        -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) IMAGE=$1; shift ;;
    esac
done

[ -f "$IMAGE" ] || die "give the decompressed Raspberry Pi OS image (.img) to prepare"
[[ $GATEWAY =~ ^mqtt://[A-Za-z0-9._-]+(:[0-9]{1,5})?$ ]] \
    || die "--gateway must look like mqtt://HOST:PORT, got '$GATEWAY'"
[[ $TOKEN =~ ^[A-Za-z0-9._-]{1,200}$ ]] || die "--token is missing or is not a token"
[ -f "$WHEEL" ] || die "--wheel: no such file '$WHEEL' (a wheel for the Pi, or an sdist)"
[ -f "$CONFIG" ] || die "--config: no such file '$CONFIG'"
WHEEL_NAME=$(basename "$WHEEL")
[[ $WHEEL_NAME =~ ^[A-Za-z0-9._+-]+$ ]] || die "rename the wheel: '$WHEEL_NAME' has odd characters"
case "$WHEEL_NAME" in
    *.whl) [[ $WHEEL_NAME =~ -(any|linux_aarch64|manylinux[^-]*aarch64|linux_armv7l)\.whl$ ]] \
        || die "$WHEEL_NAME is not built for a Pi (aarch64): use the sdist (.tar.gz) instead" ;;
    *.tar.gz) ;;
    *) die "--wheel takes a .whl or an sdist .tar.gz, not $WHEEL_NAME" ;;
esac
for tool in sfdisk mcopy mmd mdir sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing: sudo apt-get install fdisk mtools"
done

# Byte offset of the first FAT partition (MBR types b, c, e, 6, ef; GPT basic data or ESP).
fat_offset() {
    sfdisk --dump "$1" | awk '
        /^sector-size:/ { sector = $2 }
        / : start=/ && !found {
            start = ""; type = ""
            n = split($0, field, ",")
            for (i = 1; i <= n; i++) {
                if (field[i] ~ /start=/) { sub(/.*start= */, "", field[i]); start = field[i] }
                if (field[i] ~ /type=/) { sub(/.*type= */, "", field[i]); type = toupper(field[i]) }
            }
            if (type ~ /^(B|C|E|6|EF|EBD0A0A2-B9E5-4433-87C0-68B6B72699C7|C12A7328-F81F-11D2-BA4B-00A0C93EC93B)$/)
                found = start
        }
        END { if (found == "") exit 1; print found * (sector ? sector : 512) }'
}

OFFSET=$(fat_offset "$IMAGE") || die "$IMAGE has no FAT boot partition: is it a Raspberry Pi OS image?"
export MTOOLS_SKIP_CHECK=1  # image partitions rarely have the geometry mtools checks for
FAT="$IMAGE@@$OFFSET"
on_card() { mdir -i "$FAT" -b "::$1" >/dev/null 2>&1; }

if ! on_card meta-data && ! on_card user-data; then
    say "warning: this image has no cloud-init files: Raspberry Pi OS images older than the"
    say "late-2025 trixie ones ignore them; then run install.sh on the Pi (firmware/README.md)"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# user-data with our values; the config goes in as an indented block, line by line.
awk -v gateway="$GATEWAY" -v token="$TOKEN" -v wheel="$WHEEL_NAME" -v config="$CONFIG" '
    /@CONFIG_TOML@/ {
        indent = $0; sub(/@CONFIG_TOML@.*/, "", indent)
        while ((getline line < config) > 0) print (line == "" ? "" : indent line)
        next
    }
    { gsub(/@GATEWAY@/, gateway); gsub(/@TOKEN@/, token); gsub(/@WHEEL@/, wheel); print }
' "$HERE/cloud-init/user-data" > "$WORK/$SEED"

on_card "$BUNDLE" || mmd -i "$FAT" "::$BUNDLE"
mcopy -o -i "$FAT" "$HERE/install.sh" "$HERE/uninstall.sh" "$HERE/edge-agent.service" \
    "$HERE/config.toml" "$WHEEL" "::$BUNDLE/"
mcopy -o -i "$FAT" "$WORK/$SEED" "::$SEED"
if ! on_card meta-data; then
    printf 'instance-id: edge-agent-%s\n' "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
        > "$WORK/meta-data"
    mcopy -o -i "$FAT" "$WORK/meta-data" ::meta-data
fi
say "wrote $SEED and $BUNDLE/ ($WHEEL_NAME) to the boot partition of $IMAGE"

if [ -n "$OS_LIST" ]; then
    size=$(stat -c %s "$IMAGE")
    sha=$(sha256sum < "$IMAGE" | cut -d' ' -f1)
    url=${URL:-file://$(cd "$(dirname "$IMAGE")" && pwd)/$(basename "$IMAGE")}
    # init_format cloudinit-rpi: Imager 2.x offers its settings (user, Wi-Fi, SSH) and writes them
    # as cloud-init user-data, which is why ours went to vendor-data.
    cat > "$OS_LIST" <<JSON
{
  "os_list": [
    {
      "name": "Raspberry Pi OS with edge-grid agent",
      "description": "Raspberry Pi OS that enrols with $GATEWAY and lends idle CPU on first boot",
      "icon": "",
      "url": "$url",
      "extract_size": $size,
      "extract_sha256": "$sha",
      "image_download_size": $size,
      "release_date": "$(date -u +%Y-%m-%d)",
      "init_format": "cloudinit-rpi"
    }
  ]
}
JSON
    say "wrote $OS_LIST: open it with  rpi-imager --repo $OS_LIST"
fi
