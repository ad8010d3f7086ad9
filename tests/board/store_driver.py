# Runs under the real MicroPython (tests/test_board_store.py): the board's Store, Inbox and
# Claims (firmware/micropython/edge_board) on a real directory, driven by a list of steps made on
# the CPython side. Usage: micropython store_driver.py INPUT.json
#
# INPUT: {"paths": [sys.path entries], "state_dir", "unix_time", "cfg": {Config agent settings},
#         "steps": [{"op": ..., ...}]}
# Output: one last line, "RESULT " + JSON: per step {"ret", "stats" (counters bumped by the step),
# "published" ([kind, hex, stored as claims/*.pend when published]), "files" ({path: sha256})}.
import binascii
import hashlib
import json
import os
import sys

with open(sys.argv[1]) as f:
    INPUT = json.load(f)
for entry in INPUT["paths"]:
    sys.path.insert(0, entry)

from edge_board import device, store  # noqa: E402
from edge_board.agent import Stats  # noqa: E402
from edge_board.claims import Claims  # noqa: E402
from edge_board.config import Config  # noqa: E402
from edge_board.inbox import Inbox  # noqa: E402

from edge_agent.core import ed25519, protocol  # noqa: E402

ROOT = INPUT["state_dir"]
# The wall clock claims are dated with: fixed, so a claim's bytes are reproducible on CPython.
device.unix_time = lambda: INPUT["unix_time"]


def unhex(s):
    return binascii.unhexlify(s)


def hexs(b):
    return binascii.hexlify(b).decode()


def tree():
    """{relative path: sha256 hex} of every file under the state directory."""
    out = {}
    for d in [""] + sorted(os.listdir(ROOT)):  # noqa: RUF005 (MicroPython: no [*x])
        full = ROOT + "/" + d if d else ROOT
        if os.stat(full)[0] & 0x4000 == 0:  # a file at the top
            continue
        for name in os.listdir(full):
            path = full + "/" + name
            if os.stat(path)[0] & 0x4000:
                continue
            with open(path, "rb") as f:
                out[(d + "/" if d else "") + name] = hexs(hashlib.sha256(f.read()).digest())
    return out


class RecordingLink:
    """A stand-in for edge_board.link.Link (not under test here): always connected; each publish
    is recorded with whether the store already held it as a claims/*.pend file at that moment."""

    def __init__(self):
        self.connected = True
        self.on_message = None
        self.sent = []

    def publish(self, kind, payload, retain=False):
        stored = False
        for name in os.listdir(ROOT + "/claims"):
            if name.endswith(".pend"):
                with open(ROOT + "/claims/" + name, "rb") as f:
                    stored = stored or f.read() == payload
        self.sent.append([kind, hexs(payload), stored])
        return True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Board:
    """The store, inbox and claims as the agent wires them (edge_board/agent.py)."""

    def __init__(self, clock):
        cfg = Config({"agent": INPUT["cfg"]})
        self.store = store.Store(ROOT, cfg.blob_cache_bytes)
        seed = self.store.load_seed()
        device_id = protocol.device_id(ed25519.publickey(seed))
        gateway_pub = self.store.load_gateway_key()
        self.stats = Stats()
        self.link = RecordingLink()
        self.inbox = Inbox(self.link, self.store, self.stats, cfg, device_id=device_id,
                           gateway_pub=gateway_pub, on_leases=None)
        self.claims = Claims(self.link, self.store, self.stats, cfg, device_id=device_id,
                             gateway_pub=gateway_pub, sign=lambda m: ed25519.sign(seed, m),
                             clock=clock, wake=lambda: None)
        self.inbox.handlers.update(self.claims.handlers)
        self.inbox.on_ack = lambda ack: self.claims.note_ack()
        self.gateway_pub = gateway_pub


def run(board, clock, step):
    op = step["op"]
    s = board.store
    if op == "result":
        s.store_result(unhex(step["lease"]), unhex(step["sealed"]))
    elif op == "ack":  # straight to Store.store_ack, for its return value
        sealed = unhex(step["sealed"])
        ack = protocol.open_sealed(sealed, protocol.MAX_PAYLOAD["inbox"], ed25519.verify,
                                   board.gateway_pub, ("ack",))[0]
        return s.store_ack(ack, sealed)
    elif op == "inbox":
        board.inbox.handle(unhex(step["payload"]))
    elif op == "tick":
        board.claims.tick(step["idle"])
    elif op == "advance":
        clock.now += step["s"]
    elif op == "resend_all":
        board.claims.resend_all()
    elif op == "claims_state":
        c = board.claims
        return {"waiting": c.waiting, "pending": sorted([list(k) for k in c.pending]),
                "done": c.done()}
    elif op == "unclaimed":
        return [[seq, hexs(rid), credit] for seq, rid, credit in s.unclaimed_acks()]
    elif op == "raw_write":
        with open(ROOT + "/" + step["path"], "wb") as f:
            f.write(unhex(step["data"]))
    elif op == "remove":
        os.remove(ROOT + "/" + step["path"])
    elif op == "read_file":
        data = store.read_file(ROOT + "/" + step["path"])
        return None if data is None else hexs(data)
    elif op == "next_number":
        return s.next_number(step["name"])
    elif op == "checkpoints":
        return [[hexs(lease), hexs(sealed), started, st] for lease, sealed, started, st
                in s.checkpoints()]
    else:
        raise ValueError("unknown op " + repr(op))
    return None


def main():
    clock = Clock()
    board = Board(clock)
    out = []
    for step in INPUT["steps"]:
        if step["op"] == "restart":  # a reboot: everything rebuilt from the files
            board = Board(clock)
            out.append({"ret": None, "stats": {}, "published": [], "files": tree()})
            continue
        before = dict(board.stats.counts)
        board.link.sent = []
        ret = run(board, clock, step)
        bumped = {}
        for key, n in board.stats.counts.items():
            if n != before.get(key, 0):
                bumped[key] = n - before.get(key, 0)
        out.append({"ret": ret, "stats": bumped, "published": board.link.sent,
                    "files": tree()})
    print("RESULT " + json.dumps(out))


main()
