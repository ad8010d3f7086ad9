# A lease is checked in full before anything of it runs, on arrival and again when a checkpointed
# task resumes after a restart. One check for the CPython agent (edge_agent/leases.py) and the
# MicroPython board (firmware/micropython/edge_board/agent.py).
from edge_agent.core import blobs, protocol

MAX_LEASE_BYTES = 131072  # an item of `leases` (protocol.SCHEMAS["leases"])


def check(sealed, gateway_pub, verify, *, device_id, now, kernels):
    """A lease's body if it may run here, else ProtocolError with the reason's code.

    Checks, in order: the gateway's signature (`verify(pub, msg, sig)`) and the schema, that it
    is for this device, that its kernel is one of `kernels`, that its deadline (unix seconds) is
    after `now`, and the shape of blob references. The params themselves are validated by the
    kernel once blobs are resolved."""
    body = protocol.open_sealed(sealed, MAX_LEASE_BYTES, verify, gateway_pub, ("lease",))[0]
    if body["dev"] != device_id:
        raise protocol.ProtocolError("not_your_lease", "lease is for device %s" % body["dev"])
    if body["kernel"] not in kernels:
        raise protocol.ProtocolError("unknown_kernel", "no kernel %r here" % body["kernel"])
    if body["deadline"] <= now:
        raise protocol.ProtocolError("lease_expired", "deadline %d has passed" % body["deadline"])
    try:
        blobs.check_refs(body["params"])
    except blobs.BlobError as e:
        raise protocol.ProtocolError("bad_params", str(e)) from None
    return body


def next_live(queues, now, drop):
    """Pop the task to run next: from the first of `queues` that has one alive (held tasks
    before pending ones), the one whose deadline comes first. Each expired task met on the way
    is popped and handed to `drop`. None when no task is left alive."""
    for queue in queues:
        queue.sort(key=lambda t: t.deadline)
        while queue:
            task = queue.pop(0)
            if task.deadline > now:
                return task
            drop(task)
    return None
