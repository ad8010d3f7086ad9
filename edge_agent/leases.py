"""Leases: a lease is checked in full before anything of it runs, on arrival and again when a
checkpointed task resumes after a restart."""

from __future__ import annotations

import dataclasses
from typing import Any

from edge_agent import kernels
from edge_agent.core import blobs, protocol, signing

MAX_LEASE_BYTES = 131072  # an item of `leases` (protocol.SCHEMAS["leases"])


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
    """A lease's body if it may run here, else ProtocolError with the reason's code.

    Checks, in order: the gateway's signature and the schema, that it is for this device, that
    its kernel is in the registry, that its deadline has not passed, and the shape of blob
    references. The params themselves are validated by the kernel once blobs are resolved."""
    body: dict[str, Any]
    body, _, _ = protocol.open_sealed(
        sealed, MAX_LEASE_BYTES, signing.verify, gateway_pub, ("lease",)
    )
    if body["dev"] != device_id:
        raise protocol.ProtocolError("not_your_lease", f"lease is for device {body['dev']}")
    if body["kernel"] not in kernels.names():
        raise protocol.ProtocolError("unknown_kernel", f"no kernel {body['kernel']!r} here")
    if body["deadline"] <= now:
        raise protocol.ProtocolError("lease_expired", f"deadline {body['deadline']} has passed")
    try:
        blobs.check_refs(body["params"])
    except blobs.BlobError as exc:
        raise protocol.ProtocolError("bad_params", str(exc)) from None
    return body
