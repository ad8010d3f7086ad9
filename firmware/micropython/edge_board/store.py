# The board's durable state, in plain files under the state directory (no SQLite here):
#
#   device.key, gateway.pub, credentials.json   enrolment (provision.py; the CPython agent's format)
#   outbox/<lease>.res      a sealed result, written BEFORE it is published; .ref once refused
#   acks/<seq>-<lease>.ack  the gateway's signed ack (kept: claims are built from them)
#   ckpt/<lease>.cbor       a started task: sealed lease, start time, kernel state
#   blobs/<n>-<hash>        fetched blobs, checked; least recently used evicted over the cap
#   numbers.json            request numbers and the state seq: never reused after a restart
#
# Every file is replaced by writing <name>.tmp, removing the old file and renaming (FAT cannot
# rename over a file). A crash between the two leaves only the .tmp, which is complete: reads
# promote it. A .tmp beside its file is a half write and is dropped.
import binascii
import json
import os

from edge_agent.core import cbor, protocol

_NUMBER_BLOCK = 64  # numbers reserved per write of numbers.json (flash wear)
_DIRS = ("outbox", "acks", "ckpt", "blobs")


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
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    _remove(path)
    os.rename(tmp, path)
    _sync()


def read_file(path):
    """The file's bytes (recovering an interrupted replace), or None."""
    tmp = path + ".tmp"
    if _exists(tmp):
        if _exists(path):
            _remove(tmp)
        else:
            os.rename(tmp, path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


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
        return [n for n in os.listdir(self._path(d)) if not n.endswith(".tmp")]

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
        """Keep a verified ack and clear its outbox entry if lease, task and rhash match one.
        False when no result of ours waits for it (a repeat, or not ours)."""
        sealed = self.outbox_entry(ack["lease"])
        if sealed is None:
            return False
        body = protocol.peek_sealed(sealed, protocol.MAX_PAYLOAD["result"], ("result",))
        if body["task"] != ack["task"] or body["rhash"] != ack["rhash"]:
            return False
        name = "%010d-%s.ack" % (ack["seq"], hexs(ack["lease"]))
        write_file(self._path("acks", name), sealed_ack)
        _remove(self._path("outbox", hexs(ack["lease"]) + ".res"))
        return True

    def acks(self):
        """Sealed acks in seq order (what a claim is built from, docs/REWARDS.md)."""
        for name in sorted(self._names("acks")):
            yield read_file(self._path("acks", name))

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
        if _exists(self._path("outbox", h + ".res")) or _exists(self._path("outbox", h + ".ref")):
            return True
        for name in self._names("acks"):
            if name[11:43] == h:
                return True
        return False

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
