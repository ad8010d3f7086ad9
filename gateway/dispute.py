"""``edge-gateway verify-dispute FILE``: judge a device's underpayment evidence (docs/REWARDS.md).

The evidence file (JSON, written by ``edge-agent earnings --dispute``) holds an epoch header and a
leaf signed into it, and an ack, both signed by one gateway key. It proves underpayment when the
ack, dated at or before the epoch's close, carries more cumulative credit than the settlement
gives the device: the gateway's own signatures contradict each other. The checking itself is the
portable ``edge_agent.core.rewards.check_dispute``, so a device can run the same check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent.core import rewards, signing

__all__ = ["build_parser", "main", "verify_dispute_file"]

EXIT_PROVEN, EXIT_NOT_PROVEN, EXIT_UNREADABLE = 0, 1, 2


def verify_dispute_file(path: Path, gateway_pub: bytes | None = None) -> dict[str, Any]:
    """The verdict on an evidence file (``rewards.check_dispute``'s map). With ``gateway_pub``,
    evidence signed by any other key is not proven (code "wrong_gateway"): anyone can sign a
    contradiction with a key of their own, so a verdict means something only for the key you
    know is the gateway's. OSError or ValueError when the file is not readable JSON."""
    evidence = json.loads(path.read_text())
    verdict: dict[str, Any] = rewards.check_dispute(evidence, signing.verify)
    if gateway_pub is not None and verdict.get("gateway_pub") not in (None, gateway_pub):
        verdict.update(
            proven=False,
            code="wrong_gateway",
            shortfall=0,
            why="the evidence is signed by another gateway key",
        )
    return verdict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-gateway verify-dispute", description=__doc__.splitlines()[0]
    )
    parser.add_argument("file", type=Path, help="evidence file (JSON)")
    parser.add_argument(
        "--gateway-pub", metavar="HEX", help="the gateway's public key (32 bytes as hex) to require"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the verdict (a sentence, then one JSON line). Exit 0 when underpayment is proven,
    1 when it is not (honest settlement, bad or foreign evidence), 2 for an unreadable file."""
    args = build_parser().parse_args(argv)
    try:
        pub = None if args.gateway_pub is None else bytes.fromhex(args.gateway_pub)
        verdict = verify_dispute_file(args.file, pub)
    except (OSError, ValueError) as e:
        print(f"verify-dispute: cannot read {args.file}: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    word = "PROVEN" if verdict["proven"] else "NOT PROVEN"
    print(f"{word} ({verdict['code']}): {verdict['why']}")
    printable = {k: v.hex() if isinstance(v, bytes) else v for k, v in verdict.items()}
    print(json.dumps(printable, sort_keys=True))
    return EXIT_PROVEN if verdict["proven"] else EXIT_NOT_PROVEN


if __name__ == "__main__":
    sys.exit(main())
