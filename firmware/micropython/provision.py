"""Provision a MicroPython board on a host (CPython): enrol a key for it, write what it needs.

MicroPython has no X25519 or XSalsa20-Poly1305, so the board cannot open the sealed box its MQTT
credentials come in. This script enrols on the host instead, with the same code as
``edge-agent init`` (edge_agent.enrol), announcing the board's platform, and writes a folder to
copy onto the board with mpremote (firmware/README.md, "MicroPython"):

    OUT/edge/device.key         the board's Ed25519 seed (hex, 0600)
    OUT/edge/gateway.pub        the gateway's key, checked against the token's fingerprint
    OUT/edge/credentials.json   gateway URL, MQTT username (= device id) and password
    OUT/edge.json               the agent's settings: HAL preset, state dir, Wi-Fi (0600)

Everything after enrolment (state, pulls, leases, blobs, results, acks) runs on the board. The
key exists on the host until the folder is deleted: delete it once copied.

    python firmware/micropython/provision.py --gateway mqtt://HOST:1883 --token TOKEN \\
        --board pico-w --wifi-ssid NET --wifi-password PASS --out board-1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent import enrol
from edge_agent.identity import Credentials, GatewayAddress, StateDir, write_private

# Per board: the MicroPython port (the enrol message's platform) and the HAL section of edge.json
# (firmware/micropython/hal_board.py says what each key means).
BOARDS: dict[str, tuple[str, dict[str, Any]]] = {
    # Raspberry Pi Pico W on a LiPo: VSYS/3 on GP29, VBUS sense on GP24, RP2040 sensor.
    "pico-w": ("rp2", {"kind": "board", "battery_adc": 29, "battery_divider_pm": 3000,
                       "vbus_pin": 24, "mcu_temp": "rp2"}),
    # ESP32-S2/S3/C3 on USB power: no battery, esp32.mcu_temperature().
    "esp32": ("esp32", {"kind": "board", "charging": True, "mcu_temp": "esp32"}),
    # The unix port: fixed readings (a mains-powered host, cool).
    "unix": ("unix", {"kind": "fixed", "values": {"charging": True, "mcu_c": 40}}),
}


def board_settings(board: str, state_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """The edge.json document for a board preset."""
    doc: dict[str, Any] = {"agent": {"state_dir": state_dir}, "hal": BOARDS[board][1]}
    if args.board_gateway:
        doc["agent"]["gateway_url"] = GatewayAddress.parse(args.board_gateway).url
    if args.wifi_ssid:
        doc["wifi"] = {"ssid": args.wifi_ssid, "password": args.wifi_password or ""}
        doc["ntp"] = True
    return doc


async def enrol_board(state: StateDir, gateway_url: str, token_text: str, platform: str,
                      timeout_s: float) -> Credentials:
    """``edge_agent.enrol.enrol`` with the board's platform in the enrol message."""
    if state.enrolled:
        raise enrol.EnrolError(f"{state.root} already holds an enrolled board; use another --out")
    _, credentials = await enrol.enrol(
        state, gateway_url, token_text, timeout_s=timeout_s, platform=f"micropython-{platform}"
    )
    return credentials


def mpremote_commands(out: Path, board_state_dir: str) -> list[str]:
    here = Path(__file__).resolve().parent
    files = " ".join(f"{out / 'edge' / n}" for n in ("device.key", "gateway.pub",
                                                      "credentials.json"))
    return [
        f"mpremote mkdir :{board_state_dir}",
        f"mpremote cp {files} :{board_state_dir}/",
        f"mpremote cp {out / 'edge.json'} :edge.json",
        f"mpremote cp {here / 'main.py'} :main.py",
        "mpremote reset",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provision.py", description=__doc__.split("\n")[0])
    parser.add_argument("--gateway", required=True, help="mqtt://host:port as this host sees it")
    parser.add_argument("--token", required=True, help="from `edge-gateway token create`")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (new)")
    parser.add_argument("--board", choices=sorted(BOARDS), default="pico-w")
    parser.add_argument("--board-gateway", help="mqtt://host:port as the board sees it")
    parser.add_argument("--board-state-dir", default="/edge",
                        help="where the files go on the board (default %(default)s)")
    parser.add_argument("--wifi-ssid")
    parser.add_argument("--wifi-password")
    parser.add_argument("--timeout", type=float, default=enrol.DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)
    out: Path = args.out
    try:
        creds = asyncio.run(enrol_board(StateDir(out / "edge"), args.gateway, args.token,
                                        BOARDS[args.board][0], args.timeout))
    except (enrol.EnrolError, ValueError) as exc:
        print(f"provision.py: {exc}", file=sys.stderr)
        return 2
    settings = board_settings(args.board, args.board_state_dir, args)
    write_private(out / "edge.json", (json.dumps(settings, indent=1) + "\n").encode())
    print(f"enrolled board {creds.username}; the agent's code goes on once per board (ROMFS:"
          f" python {Path(__file__).parent / 'build.py'} --romfs edge.romfs && mpremote romfs"
          " deploy edge.romfs; other ways: firmware/README.md); then copy its files with:")
    for line in mpremote_commands(out, args.board_state_dir):
        print("  " + line)
    print(f"then delete {out}: it holds the board's key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
