"""Leases: the task a verified lease becomes, and the check every lease passes first."""

from __future__ import annotations

import dataclasses
from typing import Any

from edge_agent import kernels
from edge_agent.core import leases, signing


@dataclasses.dataclass
class Task:
    """A verified lease, and, once started, its progress."""

    lease: dict[str, Any]
    sealed: bytes
    state: dict[str, Any] | None = None  # kernel checkpoint to resume from
    started: int = 0

    @property
    def lease_id(self) -> bytes:
        lease_id: bytes = self.lease["lease"]
        return lease_id

    @property
    def deadline(self) -> int:
        return int(self.lease["deadline"])


def check_lease(sealed: bytes, gateway_pub: bytes, device_id: str, now: int) -> dict[str, Any]:
    """A lease's body if it may run here (any kernel of the registry), else ProtocolError with
    the reason's code (edge_agent/core/leases.py)."""
    body: dict[str, Any] = leases.check(sealed, gateway_pub, signing.verify,
                                        device_id=device_id, now=now, kernels=kernels.names())
    return body
