# Wire protocol v1: topics, message schemas, size limits and the signed envelope (docs/PROTOCOL.md).
# Portable: the CPython agent, the MicroPython agent and the gateway all speak through this module,
# so what one side accepts the other side produces.
#
# Signing is passed in as functions so each side uses its own implementation of the same bytes:
#   sign(msg) -> 64-byte signature             (pynacl on CPython, core.ed25519 on MicroPython)
#   verify(pub, msg, sig) -> bool

import hashlib

from edge_agent.core import cbor

VERSION = 1
ROOT = "edge/v1"
# Domain separation: a signature made for this protocol means nothing anywhere else.
CONTEXT = b"edge-grid/v1\x00"

DEVICE_KINDS = ("state", "pull", "result", "blob", "claim")
ID_HEX_LEN = 32  # device id: first 16 bytes of SHA-256(public key), lowercase hex
TOKEN_USER_PREFIX = "tok-"
TOKEN_USER_HEX_LEN = 16
BLOB_PART = 32768  # bytes of blob data per blob_part message
MAX_LEASES_PER_PULL = 16
MAX_RESULT_BYTES = 65536
MAX_CLAIM_RECEIPTS = 256  # receipt ids per claim (docs/REWARDS.md)
MAX_PROOF_BYTES = 1024  # a settlement audit path: at most 32 hashes (trees of < 2**32 devices)

# Largest payload accepted per topic kind, checked before any decoding.
MAX_PAYLOAD = {
    "enrol": 1024,
    "enrol_reply": 2048,
    "state": 1024,
    "pull": 512,
    "result": MAX_RESULT_BYTES + 1024,
    "blob": 256,
    "claim": 16384,
    "inbox": 262144,
    "claim_receipt": 1024,
    "epoch": 1024,
    "settlement": 4096,
}

# Stable error codes (the `code` of an `error` message and of ProtocolError).
ERRORS = (
    "bad_cbor",
    "too_large",
    "bad_schema",
    "bad_signature",
    "bad_topic",
    "unknown_device",
    "unknown_task",
    "unknown_blob",
    "not_your_lease",
    "lease_expired",
    "task_already_done",
    "task_canceled",
    "bad_result_hash",
    "duplicate",
    "rate_limited",
    "unknown_kernel",
    "bad_params",
    "bad_result",
    "bad_token",
    "unfit",
    "no_state",
    "too_slow",
    "busy",
    "quarantined",
    "internal",
)


class ProtocolError(ValueError):
    """A message that breaks the protocol. `code` is one of ERRORS."""

    def __init__(self, code, msg):
        super().__init__("%s: %s" % (code, msg))
        self.code = code
        self.msg = msg


# --- identities and topics -----------------------------------------------------------------------


def device_id(pub):
    return _hex(hashlib.sha256(pub).digest()[:16])


def _hex(b):
    return "".join("%02x" % x for x in b)


def _is_hex(s, n):
    if len(s) != n:
        return False
    for c in s:
        if c not in "0123456789abcdef":
            return False
    return True


def is_device_id(s):
    return type(s) is str and _is_hex(s, ID_HEX_LEN)


def is_token_user(s):
    return (
        type(s) is str
        and s.startswith(TOKEN_USER_PREFIX)
        and _is_hex(s[len(TOKEN_USER_PREFIX) :], TOKEN_USER_HEX_LEN)
    )


def device_topic(dev, kind):
    return "%s/dev/%s/%s" % (ROOT, dev, kind)


def inbox_topic(dev):
    return "%s/gw/%s/inbox" % (ROOT, dev)


def enrol_topic(token_user):
    return "%s/enrol/%s/req" % (ROOT, token_user)


def enrol_reply_topic(token_user):
    return "%s/enrol/%s/reply" % (ROOT, token_user)


def parse_topic(topic):
    """(kind, who) of a topic the gateway listens on, or raise ProtocolError("bad_topic").

    The broker's pattern ACLs apply to every account, so a token account could write under
    dev/tok-.../ and a device under enrol/<id>/: the shape of `who` is checked here."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] + "/" + parts[1] == ROOT:
        if parts[2] == "dev" and parts[4] in DEVICE_KINDS and is_device_id(parts[3]):
            return parts[4], parts[3]
        if parts[2] == "enrol" and parts[4] == "req" and is_token_user(parts[3]):
            return "enrol", parts[3]
    raise ProtocolError("bad_topic", "not a gateway topic: %r" % (topic[:120],))


# --- schemas ------------------------------------------------------------------------------
# A field spec is a tuple: ("uint", lo, hi) | ("bytes", min, max) | ("str", max) | ("bool",)
# | ("enum", values) | ("id",) | ("kernel",) | ("map", max_keys) | ("list", item_spec, max_len)
# | ("opt", spec): may be absent or null. Unknown fields are rejected: a v1 peer that needs a new
# field speaks v2.

U32 = ("uint", 0, 0xFFFFFFFF)
U64 = ("uint", 0, 0xFFFFFFFFFFFFFFFF)
TIME = ("uint", 0, 0xFFFFFFFF)  # unix seconds
ID16 = ("bytes", 16, 16)
HASH = ("bytes", 32, 32)
SIG = ("bytes", 64, 64)
KEY = ("bytes", 32, 32)
DECISIONS = ("run", "pause", "stop")
ACK_STATUS = ("accepted", "pending", "rejected")

SCHEMAS = {
    # device -> gateway
    "enrol": {
        "pub": KEY,
        "token": ("bytes", 16, 64),
        "nonce": ID16,
        "at": TIME,
        "platform": ("str", 32),
        "kernels": ("list", ("kernel",), 16),
    },
    "state": {
        "online": ("bool",),
        "seq": ("opt", U32),
        "at": ("opt", TIME),
        "battery_pct": ("opt", ("uint", 0, 100)),
        "charging": ("opt", ("bool",)),
        "battery_dc": ("opt", ("uint", 0, 2000)),  # tenths of °C (>= 0 °C: colder is unfit anyway)
        "hottest_mc": ("opt", ("uint", 0, 200000)),
        "throttled": ("opt", ("bool",)),
        "decision": ("opt", ("enum", DECISIONS)),
        "code": ("opt", ("str", 32)),
        "why": ("opt", ("str", 120)),
        "duty_pm": ("opt", ("uint", 0, 1000)),
    },
    "pull": {
        "req": U32,
        "n": ("uint", 1, MAX_LEASES_PER_PULL),
        "secs": ("uint", 1, 86400),
        "kernels": ("list", ("kernel",), 16),
    },
    "blob_get": {"req": U32, "hash": HASH, "off": U32, "len": ("uint", 1, BLOB_PART)},
    "result": {
        "lease": ID16,
        "task": ID16,
        "dev": ("id",),
        "kernel": ("kernel",),
        "rhash": HASH,
        "units": U64,
        "started": TIME,
        "finished": TIME,
    },
    # gateway -> device
    "enrolled": {"dev": ("id",), "gw_pub": KEY, "sealed": ("bytes", 48, 1024)},
    "lease": {
        "lease": ID16,
        "task": ID16,
        "dev": ("id",),
        "kernel": ("kernel",),
        "params": ("map", 32),
        "units": U64,
        "issued": TIME,
        "deadline": TIME,
        "attempt": ("uint", 0, 255),
    },
    "leases": {"req": U32, "items": ("list", ("bytes", 1, 131072), MAX_LEASES_PER_PULL)},
    "no_work": {"req": U32, "code": ("str", 32), "why": ("str", 120), "retry": ("uint", 1, 86400)},
    "blob_part": {
        "req": U32,
        "hash": HASH,
        "off": U32,
        "total": U32,
        "data": ("bytes", 0, BLOB_PART),
    },
    "ack": {
        "lease": ID16,
        "task": ID16,
        "dev": ("id",),
        "rhash": HASH,
        "status": ("enum", ACK_STATUS),
        "code": ("str", 32),
        "seq": U64,
        "credit": U64,
        "at": TIME,
    },
    "error": {"code": ("enum", ERRORS), "msg": ("str", 200), "ref": ("opt", ("bytes", 0, 32))},
    # rewards (docs/REWARDS.md)
    "claim": {
        "dev": ("id",),
        "first": U64,
        "last": U64,
        "n": ("uint", 1, MAX_CLAIM_RECEIPTS),
        "root": HASH,
        "ids": ("list", HASH, MAX_CLAIM_RECEIPTS),
        "credit": U64,
        "at": TIME,
    },
    "claim_receipt": {
        "dev": ("id",),
        "first": U64,
        "last": U64,
        "root": HASH,
        "credit": U64,
        "status": ("enum", ("accepted", "rejected")),
        "code": ("str", 32),
        "at": TIME,
    },
    "epoch": {
        "epoch": ("uint", 1, 0xFFFFFFFF),
        "n": U32,
        "root": HASH,
        "total": U64,
        "closed_at": TIME,
        "prev": HASH,
    },
    "settlement": {
        "epoch": ("bytes", 1, 1024),
        "dev": ("id",),
        "index": U32,
        "credit": U64,
        "path": ("bytes", 0, MAX_PROOF_BYTES),
    },
}

SIGNED = ("enrol", "enrolled", "lease", "result", "ack", "claim", "claim_receipt", "epoch")


def _bad(msg):
    raise ProtocolError("bad_schema", msg)


def _check(name, spec, v):
    kind = spec[0]
    if kind == "opt":
        if v is not None:
            _check(name, spec[1], v)
    elif kind == "uint":
        if type(v) is not int or v < spec[1] or v > spec[2]:
            _bad("%s: want an int in [%d, %d]" % (name, spec[1], spec[2]))
    elif kind == "bytes":
        if type(v) is not bytes or not spec[1] <= len(v) <= spec[2]:
            _bad("%s: want %d..%d bytes" % (name, spec[1], spec[2]))
    elif kind == "str":
        if type(v) is not str or len(v) > spec[1]:
            _bad("%s: want text of at most %d characters" % (name, spec[1]))
    elif kind == "bool":
        if type(v) is not bool:
            _bad("%s: want a bool" % name)
    elif kind == "enum":
        if v not in spec[1] or type(v) is not type(spec[1][0]):
            _bad("%s: want one of %s" % (name, ", ".join(spec[1])))
    elif kind == "id":
        if not is_device_id(v):
            _bad("%s: want a device id (32 lowercase hex)" % name)
    elif kind == "kernel":
        if type(v) is not str or not 1 <= len(v) <= 32 or not _is_kernel_name(v):
            _bad("%s: want a kernel name" % name)
    elif kind == "map":
        if type(v) is not dict or len(v) > spec[1]:
            _bad("%s: want a map of at most %d entries" % (name, spec[1]))
    elif kind == "list":
        if type(v) is not list or len(v) > spec[2]:
            _bad("%s: want a list of at most %d items" % (name, spec[2]))
        for i, item in enumerate(v):
            _check("%s[%d]" % (name, i), spec[1], item)
    else:
        raise ValueError("unknown spec kind %r" % kind)


def _is_kernel_name(s):
    for c in s:
        if c not in "abcdefghijklmnopqrstuvwxyz0123456789_":
            return False
    return True


def validate(body, expect=None):
    """Check a message map against its schema; return it. Raise ProtocolError("bad_schema")."""
    if type(body) is not dict:
        _bad("message is not a map")
    if body.get("v") != VERSION:
        _bad("unsupported protocol version %r" % (body.get("v"),))
    t = body.get("t")
    schema = SCHEMAS.get(t) if type(t) is str else None
    if schema is None:
        _bad("unknown message type %r" % (t,))
    if expect is not None and t not in expect:
        _bad("unexpected message type %r here" % (t,))
    for k in body:
        if k not in ("v", "t") and k not in schema:
            _bad("%s: unknown field %r" % (t, k))
    for k in schema:
        spec = schema[k]
        if k not in body and spec[0] != "opt":
            _bad("%s: missing field %r" % (t, k))
        _check("%s.%s" % (t, k), spec, body.get(k))
    return body


def message(t, **fields):
    """A validated message map of type t (fields are keyword arguments)."""
    fields["v"] = VERSION
    fields["t"] = t
    return validate(fields)


# --- encoding and the signed envelope -------------------------------------------------------------


def _loads(data, max_size):
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) > max_size:
        raise ProtocolError("too_large", "%d bytes > %d" % (len(data), max_size))
    try:
        return cbor.loads(data, max_size=max_size)
    except cbor.CBORError as e:
        raise ProtocolError("bad_cbor", str(e)) from None


def encode(body):
    """Canonical CBOR of an unsigned message (validated first)."""
    return cbor.dumps(validate(body))


def decode(data, max_size, expect=None):
    """Decode and validate an unsigned message."""
    return validate(_loads(data, max_size), expect)


def seal(body, sign, attachment=None):
    """Sign a message: {"v", "t", "b": canonical body bytes, "s": signature over CONTEXT + b}.

    `attachment` (results only: the result map) travels beside the signed body, bound to it by
    the body's hash of it."""
    b = cbor.dumps(validate(body))
    env = {"v": VERSION, "t": body["t"], "b": b, "s": sign(CONTEXT + b)}
    if attachment is not None:
        env["r"] = attachment
    return cbor.dumps(env)


def open_sealed(data, max_size, verify, pub, expect):
    """Check a sealed message's signature by `pub`, then its body's schema.

    Returns (body, body_bytes, attachment). The signature is checked before the body is
    decoded, so unsigned junk costs one signature check and no parsing beyond the envelope."""
    env = _loads(data, max_size)
    if type(env) is not dict or env.get("v") != VERSION:
        _bad("not a v1 envelope")
    allowed = ("v", "t", "b", "s", "r")
    for k in env:
        if k not in allowed:
            _bad("envelope: unknown field %r" % (k,))
    t, b, s = env.get("t"), env.get("b"), env.get("s")
    if t not in expect or t not in SIGNED:
        _bad("unexpected message type %r here" % (t,))
    if type(b) is not bytes or type(s) is not bytes or len(s) != 64:
        _bad("envelope: b must be bytes and s 64 bytes")
    attachment = env.get("r")
    if attachment is not None and t != "result":
        _bad("envelope: only results carry an attachment")
    if not verify(pub, CONTEXT + b, s):
        raise ProtocolError("bad_signature", "%s signature does not verify" % t)
    body = _loads(b, max_size)
    validate(body, (t,))
    return body, b, attachment


def peek_sealed(data, max_size, expect):
    """The body of a sealed message WITHOUT checking its signature: only to learn who claims to
    have signed it (e.g. an enrol's public key), which open_sealed must then confirm."""
    env = _loads(data, max_size)
    if type(env) is not dict or type(env.get("b")) is not bytes:
        _bad("not a sealed message")
    body = _loads(env["b"], max_size)
    return validate(body, expect)


def result_hash(result):
    """The hash a receipt signs over a result map: SHA-256 of its canonical CBOR."""
    return hashlib.sha256(cbor.dumps(result)).digest()


def receipt_id(body_bytes):
    """A signed body's identity (what claims put in their Merkle trees): SHA-256 of its bytes."""
    return hashlib.sha256(body_bytes).digest()
