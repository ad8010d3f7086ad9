# edge_agent.core.leases on both interpreters: a lease runs only if the gateway signed it, for
# this device, with a kernel it has, before its deadline and with well-formed blob references;
# each refusal carries its protocol code. Keys and signatures from the core's own Ed25519.
from mpyassert import raises

from edge_agent.core import ed25519, leases, protocol

GATEWAY_SEED = b"\x07" * 32
GATEWAY_PUB = ed25519.publickey(GATEWAY_SEED)
DEV = "0123456789abcdef0123456789abcdef"
NOW = 1700000000
KERNELS = ("montecarlo_pi", "sha256_search")


def sealed_lease(seed=GATEWAY_SEED, **changes):
    fields = {"lease": b"L" * 16, "task": b"T" * 16, "dev": DEV, "kernel": "montecarlo_pi",
              "params": {"seed": 1, "points": 1000}, "units": 1000, "issued": NOW - 10,
              "deadline": NOW + 600, "attempt": 0}
    fields.update(changes)
    body = protocol.message("lease", **fields)
    return bytes(protocol.seal(body, lambda msg: ed25519.sign(seed, msg)))


def check(sealed, now=NOW):
    return leases.check(sealed, GATEWAY_PUB, ed25519.verify, device_id=DEV, now=now,
                        kernels=KERNELS)


def refusal(sealed, now=NOW):
    return raises(protocol.ProtocolError, check, sealed, now).code


def test_a_signed_lease_for_this_device_passes_with_its_body():
    body = check(sealed_lease())
    assert body["task"] == b"T" * 16 and body["deadline"] == NOW + 600


def test_each_refusal_names_its_reason():
    assert refusal(sealed_lease(seed=b"\x08" * 32)) == "bad_signature"
    assert refusal(sealed_lease(dev="f" * 32)) == "not_your_lease"
    assert refusal(sealed_lease(kernel="gemm_i8")) == "unknown_kernel"
    assert refusal(sealed_lease(), now=NOW + 600) == "lease_expired"
    assert refusal(sealed_lease(params={"w": {"blob": b"short"}})) == "bad_params"
    assert check(sealed_lease(params={"w": {"blob": b"\x01" * 32}}))["params"]["w"]["blob"]


class Held:
    def __init__(self, name, deadline):
        self.name = name
        self.deadline = deadline


def test_next_live_takes_held_first_earliest_deadline_and_drops_the_expired_on_the_way():
    held = [Held("h-late", NOW + 90), Held("h-dead", NOW), Held("h-soon", NOW + 30)]
    pending = [Held("p-soon", NOW + 5), Held("p-dead", NOW - 1)]
    dropped = []
    order = []
    while True:
        task = leases.next_live((held, pending), NOW, lambda t: dropped.append(t.name))
        if task is None:
            break
        order.append(task.name)
    assert order == ["h-soon", "h-late", "p-soon"]
    assert dropped == ["h-dead", "p-dead"]
    assert held == [] and pending == []
