# The board's settings: edge.json (written by provision.py) over these defaults. Unknown keys
# are errors, so a typo never silently leaves a default in place.
import json

from edge_agent.core.protocol import MAX_CLAIM_RECEIPTS

AGENT_DEFAULTS = (
    ("state_dir", "/edge"),  # device.key, gateway.pub, credentials.json and the durable store
    ("gateway_url", None),  # override credentials.json's URL (the board may see another address)
    ("kernels", None),  # None: every kernel of the registry; a small heap may want fewer
    ("pull_n", 1),
    ("pull_secs", 600),
    ("reply_timeout_s", 10),  # to wait for leases or a blob part
    ("chunk_ms", 500),  # target time per kernel chunk (the governor is asked between chunks)
    ("checkpoint_every_s", 60),  # flash wears: less often than the CPython agent's 5 s
    ("recheck_s", 10),  # between governor checks while not running
    ("state_every_s", 30),  # at most one state document per this many seconds
    ("max_outbox", 16),  # no new pulls while this many results wait for acks
    ("max_tasks", None),  # exit once this many results are made and acked
    ("exit_when_idle", False),  # exit once the gateway has no work and nothing is pending
    ("blob_part", 4096),  # bytes per blob_get: small parts fit a small heap
    ("blob_retries", 3),
    ("blob_cache_bytes", 65536),
    ("keepalive_s", 60),
    ("io_timeout_s", 10),  # any blocking socket operation: a dead link shows up within this
    ("backoff_initial_s", 0.5),
    ("backoff_max_s", 60),
    ("stable_after_s", 30),  # a connection up this long resets the backoff
    ("utc_offset_min", 0),  # the owner's time zone, for the governor's windows
    ("max_inbox_queue", 16),
    ("claim_batch", 32),  # acks per claim (the protocol allows 256: each id is heap here)
    ("claim_quiet_s", 2),  # an idle board claims once no ack came for this long
    ("claim_resend_s", 60),  # an unanswered claim is sent again after this long
)


class Config:
    def __init__(self, doc):
        agent = doc.get("agent", {})
        for name, default in AGENT_DEFAULTS:
            setattr(self, name, agent.get(name, default))
        known = [name for name, _ in AGENT_DEFAULTS]
        for name in agent:
            if name not in known:
                raise ValueError("edge.json agent.%s: unknown setting" % name)
        for name in doc:
            if name not in ("agent", "hal", "governor", "wifi", "ntp"):
                raise ValueError("edge.json: unknown section %r" % name)
        batch = self.claim_batch
        if type(batch) is not int or not 1 <= batch <= MAX_CLAIM_RECEIPTS:
            raise ValueError("edge.json agent.claim_batch: 1 to %d acks" % MAX_CLAIM_RECEIPTS)
        for name in ("claim_quiet_s", "claim_resend_s"):
            value = getattr(self, name)
            if type(value) not in (int, float) or value < 0:
                raise ValueError("edge.json agent.%s: seconds, 0 or more" % name)
        self.hal = doc.get("hal", {"kind": "board"})
        self.governor = doc.get("governor", {})
        self.network = {"wifi": doc.get("wifi"), "ntp": doc.get("ntp", False)}


def load(path):
    with open(path) as f:
        return Config(json.load(f))
