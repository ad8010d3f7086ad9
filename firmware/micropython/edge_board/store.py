# The board's durable state, in plain files under the state directory (no SQLite here):
#
#   device.key, gateway.pub, credentials.json   enrolment (provision.py; the CPython agent's format)
#   outbox/<lease>.res      a sealed result, written BEFORE it is published; .ref once refused;
#                           .pnd once acked "pending" (what its final ack is matched with)
#   acks/<seq>-<lease>.ack  receipt id, credit and time (struct ACK_HEAD), then the gateway's
#                           signed ack. Pruned when a settlement is kept (prune_acks)
#   claims/<first>-<last>.pend|.ok|.rej   a sealed claim until answered, then the receipt
#   settle/<epoch>-<closed_at>.cbor   verified settlement proofs, the newest KEEP_SETTLEMENTS
#   ckpt/<lease>.cbor       a started task: sealed lease, start time, kernel state
#   blobs/<n>-<hash>        fetched blobs, checked; least recently used evicted over the cap
#   numbers.json            request numbers and the state seq: never reused after a restart
#
# Every file is replaced by writing <name>.tmp, renaming it <name>.new (complete from then on),
# removing the old file and renaming .new into place (FAT cannot rename over a file). After a
# crash a .tmp may be half written and is dropped; a .new is complete and replaces the file.
# Reads and listings recover first (recover()), so no state is lost or half read.
import binascii
import hashlib
import json
import os
import struct

from edge_agent.core import cbor, protocol

_NUMBER_BLOCK = 64  # numbers reserved per write of numbers.json (flash wear)
_DIRS = ("outbox", "acks", "ckpt", "blobs", "claims", "settle")
ACK_HEAD = ">32sQI"  # an ack file starts with receipt id, cumulative credit, ack time
ACK_HEAD_SIZE = struct.calcsize(ACK_HEAD)
PENDING_NOTE = ">32s16s32s"  # receipt id, task, rhash of a result acked "pending"
KEEP_SETTLEMENTS = 8


def hexs(b):
    return binascii.hexlify(b).decode()


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
        return True
    except OSError:
        return False


def _sync():
    if hasattr(os, "sync"):
        os.sync()


def write_file(path, data):
    tmp, new = path + ".tmp", path + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
    _remove(new)  # an older complete version: this one is newer
    os.rename(tmp, new)
    _remove(path)
    os.rename(new, path)
    _sync()


def recover(path):
    """Finish or undo an interrupted write_file of `path`."""
    _remove(path + ".tmp")
    if _exists(path + ".new"):
        _remove(path)
        os.rename(path + ".new", path)


def read_file(path):
    """The file's bytes (after recovering an interrupted write), or None."""
    recover(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _within(n, ranges):
    for first, last in ranges:
        if first <= n <= last:
            return True
    return False


class EnrolmentError(RuntimeError):
    pass


class Store:
    def __init__(self, root, blob_cache_bytes):
        self.root = root
        self.blob_cache_bytes = blob_cache_bytes
        for d in ("",) + _DIRS:
            path = self._path(d).rstrip("/")
            if not _exists(path):
                os.mkdir(path)
        self._numbers = {}  # name -> [next, reserved bound]

    def _path(self, *parts):
        return "/".join((self.root,) + parts)

    def _names(self, d):
        """The files of a directory, after recovering interrupted writes."""
        names = os.listdir(self._path(d))
        for n in names:
            if n[-4:] in (".tmp", ".new"):
                recover(self._path(d, n[:-4]))
        return [n for n in os.listdir(self._path(d)) if n[-4:] not in (".tmp", ".new")]

    # -- enrolment (read only) -------------------------------------------------------------------

    def _text(self, name):
        data = read_file(self._path(name))
        if data is None:
            raise EnrolmentError("no %s in %s: provision the board (firmware/README.md)"
                                 % (name, self.root))
        return data.decode().strip()

    def load_seed(self):
        seed = binascii.unhexlify(self._text("device.key"))
        if len(seed) != 32:
            raise EnrolmentError("device.key must hold a 32-byte hex seed")
        return seed

    def load_gateway_key(self):
        pub = binascii.unhexlify(self._text("gateway.pub"))
        if len(pub) != 32:
            raise EnrolmentError("gateway.pub must hold a 32-byte hex key")
        return pub

    def load_credentials(self):
        creds = json.loads(self._text("credentials.json"))
        for key in ("gateway_url", "username", "password"):
            if type(creds.get(key)) is not str:
                raise EnrolmentError("credentials.json lacks %s" % key)
        return creds

    # -- numbers ---------------------------------------------------------------------------------

    def next_number(self, name):
        """A request number (or state seq) never handed out before, even across restarts."""
        if not self._numbers:
            saved = read_file(self._path("numbers.json"))
            for key, bound in (json.loads(saved) if saved else {}).items():
                self._numbers[key] = [bound, bound]
        slot = self._numbers.setdefault(name, [1, 1])
        if slot[0] >= slot[1]:
            slot[1] = slot[0] + _NUMBER_BLOCK
            bounds = dict((k, v[1]) for k, v in self._numbers.items())
            write_file(self._path("numbers.json"), json.dumps(bounds).encode())
        slot[0] += 1
        return (slot[0] - 1) & 0xFFFFFFFF

    # -- outbox and acks -------------------------------------------------------------------------

    def store_result(self, lease_id, sealed):
        """The sealed result, durably, and its checkpoint gone: before any publish."""
        write_file(self._path("outbox", hexs(lease_id) + ".res"), sealed)
        self.drop_checkpoint(lease_id)

    def unacked(self):
        """Lease ids whose result waits for an ack (refused ones are not re-sent)."""
        return [binascii.unhexlify(n[:-4]) for n in self._names("outbox") if n.endswith(".res")]

    def outbox_entry(self, lease_id):
        return read_file(self._path("outbox", hexs(lease_id) + ".res"))

    def store_ack(self, ack, sealed_ack):
        """Keep a verified ack and clear its outbox entry if lease, task and rhash match a result
        of ours. A "pending" ack leaves a .pnd note (receipt id, task, rhash) for the final ack
        that follows. True for a new ack; False for a repeat (which still finishes what a crash
        left half done) or when no result of ours is acked by it."""
        h = hexs(ack["lease"])
        ack_path = self._path("acks", "%010d-%s.ack" % (ack["seq"], h))
        note_path = self._path("outbox", h + ".pnd")
        sealed = self.outbox_entry(ack["lease"])
        if sealed is not None:
            body_bytes = cbor.loads(sealed, protocol.MAX_PAYLOAD["result"])["b"]  # ours
            body = cbor.loads(body_bytes)
            note = struct.pack(PENDING_NOTE, hashlib.sha256(body_bytes).digest(), body["task"],
                               body["rhash"])  # the receipt id: protocol.receipt_id
        else:
            note = read_file(note_path)
            if note is None:
                return False
        rid, task, rhash = struct.unpack(PENDING_NOTE, note)
        if task != ack["task"] or rhash != ack["rhash"]:
            return False
        fresh = not _exists(ack_path)
        if fresh:
            write_file(ack_path, struct.pack(ACK_HEAD, rid, ack["credit"], ack["at"]) + sealed_ack)
        if ack["status"] != "pending":
            _remove(note_path)
        elif sealed is not None:
            write_file(note_path, note)
        _remove(self._path("outbox", h + ".res"))
        return fresh

    def _ack_heads(self):
        """(seq, receipt id, credit, at, file name) of every kept ack, in seq order. A file that
        does not parse (damaged) is dropped, with a line on the console."""
        heads = []
        for name in sorted(self._names("acks")):
            try:
                with open(self._path("acks", name), "rb") as f:
                    rid, credit, at = struct.unpack(ACK_HEAD, f.read(ACK_HEAD_SIZE))
                heads.append((int(name[:10]), rid, credit, at, name))
            except (ValueError, OSError) as e:
                print("edge: dropped a damaged ack file %s: %r" % (name, e))
                _remove(self._path("acks", name))
        return heads

    def unclaimed_acks(self):
        """(seq, receipt id, credit) of every kept ack that no claim covers, in seq order."""
        ranges = [(first, last) for first, last, _ in self.claim_files()]
        return [(h[0], h[1], h[2]) for h in self._ack_heads() if not _within(h[0], ranges)]

    def refuse(self, lease_id, code):
        """The gateway will never accept this result: stop re-sending it (kept, renamed)."""
        src = self._path("outbox", hexs(lease_id) + ".res")
        if not _exists(src):
            return False
        write_file(self._path("outbox", hexs(lease_id) + ".ref"), code.encode())
        _remove(src)
        return True

    def knows_lease(self, lease_id):
        h = hexs(lease_id)
        if _exists(self._path("ckpt", h + ".cbor")):
            return True
        for end in (".res", ".ref", ".pnd"):
            if _exists(self._path("outbox", h + end)):
                return True
        for name in self._names("acks"):
            if name[11:43] == h:
                return True
        return False

    # -- claims and settlements ------------------------------------------------------------------

    def claim_files(self):
        """(first, last, ending) of every claim: .pend until answered, then .ok or .rej."""
        out = []
        for name in self._names("claims"):
            stem, dot, end = name.partition(".")
            try:
                out.append((int(stem[:10]), int(stem[11:]), dot + end))
            except ValueError:
                print("edge: ignored a stray file claims/%s" % name)
        return out

    def _claim_path(self, first, last, ending):
        return self._path("claims", "%010d-%010d%s" % (first, last, ending))

    def add_claim(self, first, last, sealed):
        write_file(self._claim_path(first, last, ".pend"), sealed)

    def pending_claim(self, first, last):
        return read_file(self._claim_path(first, last, ".pend"))

    def answer_claim(self, first, last, root, status, receipt):
        """Keep the receipt of our pending claim first..last with this root (.ok or .rej).
        False if no such claim waits (a repeat, not ours)."""
        sealed = self.pending_claim(first, last)
        if sealed is None:
            return False
        claim = protocol.peek_sealed(sealed, protocol.MAX_PAYLOAD["claim"], ("claim",))
        if claim["root"] != root:
            return False
        ending = ".ok" if status == "accepted" else ".rej"
        write_file(self._claim_path(first, last, ending), receipt)
        _remove(self._claim_path(first, last, ".pend"))
        return True

    def store_settlement(self, epoch, closed_at, message):
        """Keep a verified proof, one per epoch, the newest KEEP_SETTLEMENTS, and prune the acks
        it makes needless; False if this epoch's is kept already."""
        kept = [int(n[:10]) for n in self._names("settle")]
        if epoch in kept or (len(kept) >= KEEP_SETTLEMENTS and epoch < min(kept)):
            return False  # kept, or older than every kept one: a replay
        write_file(self._path("settle", "%010d-%010d.cbor" % (epoch, closed_at)), message)
        names = sorted(self._names("settle"))
        for name in names[:-KEEP_SETTLEMENTS]:
            _remove(self._path("settle", name))
        self.prune_acks([int(n[11:21]) for n in names[-KEEP_SETTLEMENTS:]])
        return True

    def prune_acks(self, closings):
        """Drop the acks no claim or dispute needs any more (rewards.needless_acks, the CPython
        agent's rule: in an accepted claim, acked by the newest kept close, and not the best
        ack by any kept close), then the accepted claims none of whose acks is left (their seqs
        never come back)."""
        from edge_agent.core.rewards import needless_acks

        accepted = [(f, l) for f, l, end in self.claim_files() if end == ".ok"]
        heads = self._ack_heads()
        doomed = set(needless_acks([(h[0], h[2], h[3], _within(h[0], accepted))
                                    for h in heads], closings))
        left = []
        for h in heads:
            if h[0] in doomed:
                _remove(self._path("acks", h[4]))
            else:
                left.append(h[0])
        for first, last in accepted:
            if not [seq for seq in left if first <= seq <= last]:
                _remove(self._claim_path(first, last, ".ok"))

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, lease_id, sealed_lease, started, state):
        doc = {"lease": sealed_lease, "started": started, "state": state}
        write_file(self._path("ckpt", hexs(lease_id) + ".cbor"), cbor.dumps(doc))

    def checkpoints(self):
        """(lease id, sealed lease, started, kernel state) of every checkpointed task."""
        for name in self._names("ckpt"):
            data = read_file(self._path("ckpt", name))
            try:
                doc = cbor.loads(data)
                yield binascii.unhexlify(name[:-5]), doc["lease"], doc["started"], doc["state"]
            except (ValueError, KeyError, TypeError):
                _remove(self._path("ckpt", name))  # damaged: the lease will expire and re-queue

    def drop_checkpoint(self, lease_id):
        _remove(self._path("ckpt", hexs(lease_id) + ".cbor"))

    # -- blob cache ------------------------------------------------------------------------------

    def _blob_files(self):
        """{hash hex: (stamp, file name)}"""
        found = {}
        for name in self._names("blobs"):
            stamp, _, h = name.partition("-")
            found[h] = (int(stamp), name)
        return found

    def get_blob(self, digest):
        entry = self._blob_files().get(hexs(digest))
        if entry is None:
            return None
        data = read_file(self._path("blobs", entry[1]))
        fresh = "%010d-%s" % (self.next_number("blob_stamp"), hexs(digest))
        os.rename(self._path("blobs", entry[1]), self._path("blobs", fresh))  # most recent now
        return data

    def put_blob(self, digest, data):
        if len(data) > self.blob_cache_bytes:
            return
        files = self._blob_files()
        sizes = [(files[h][0], files[h][1]) for h in files]
        sizes.sort()
        total = len(data)
        for _, name in sizes:
            total += os.stat(self._path("blobs", name))[6]
        while sizes and total > self.blob_cache_bytes:
            _, name = sizes.pop(0)
            total -= os.stat(self._path("blobs", name))[6]
            _remove(self._path("blobs", name))
        name = "%010d-%s" % (self.next_number("blob_stamp"), hexs(digest))
        write_file(self._path("blobs", name), data)
