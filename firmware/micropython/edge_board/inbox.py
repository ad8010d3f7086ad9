# The inbox and the two request/reply exchanges, as the CPython agent's edge_agent/link.py does
# them (docs/PROTOCOL.md "Exchanges"): every message is size-checked, decoded with limits and
# validated (acks: the gateway's signature first); a bad one is counted, never raised.
import gc
import hashlib

from edge_agent.core import cbor, ed25519, protocol

INBOX_LIMIT = protocol.MAX_PAYLOAD["inbox"]
# Gateway errors about one of our results that a re-send will not change: stop re-sending it.
FINAL_RESULT_ERRORS = ("lease_expired", "unknown_task", "not_your_lease", "task_already_done",
                       "task_canceled", "bad_result", "bad_result_hash", "bad_schema")


class FetchError(RuntimeError):
    """A blob could not be fetched, or did not match its hash."""


class Inbox:
    """`on_leases(items)` takes the sealed leases of a `leases` reply; `handlers[type] =
    fn(payload)` takes other inbox types (claim receipts, settlements: docs/REWARDS.md)."""

    def __init__(self, link, store, stats, cfg, *, device_id, gateway_pub, on_leases):
        self.link = link
        self.store = store
        self.stats = stats
        self.cfg = cfg
        self.device_id = device_id
        self.gateway_pub = gateway_pub
        self.on_leases = on_leases
        self.on_ack = None  # fn(ack): after an ack is stored
        self.handlers = {}
        self.retry_after_s = 1
        self._pull = None  # [req, outcome]
        self._blob = None  # [req, digest, blob_part body or FetchError]
        link.on_message = self.handle

    def handle(self, payload):
        try:
            retry_on_memory(self._dispatch, payload)
        except protocol.ProtocolError as e:
            self.stats.bump("inbox_rejected:" + e.code)
            print("edge: inbox message rejected: %s" % e)
        except Exception as e:  # MemoryError included: the agent goes on
            self.stats.bump("inbox_rejected:internal")
            print("edge: inbox message broke a handler: %r" % e)
        self.stats.heap()  # the message is still live here

    def _dispatch(self, payload):
        if len(payload) > INBOX_LIMIT:
            raise protocol.ProtocolError("too_large", "%d bytes" % len(payload))
        try:
            envelope = cbor.loads(payload, max_size=INBOX_LIMIT)
        except cbor.CBORError as e:
            raise protocol.ProtocolError("bad_cbor", str(e)) from None
        kind = envelope.get("t") if type(envelope) is dict else None
        extra = self.handlers.get(kind) if type(kind) is str else None
        if extra is not None:
            extra(payload)
            return
        if kind == "ack":
            ack = protocol.open_sealed(payload, INBOX_LIMIT, ed25519.verify, self.gateway_pub,
                                       ("ack",))[0]
            self._on_ack(ack, payload)
            return
        body = protocol.validate(envelope, ("leases", "no_work", "blob_part", "error"))
        del envelope
        if kind == "leases":
            self.on_leases(body["items"])
            self._resolve_pull(body["req"], "leases")
        elif kind == "no_work":
            self.stats.bump("no_work:" + body["code"])
            self.retry_after_s = body["retry"]
            self._resolve_pull(body["req"], "no_work")
        elif kind == "blob_part":
            if self._blob is None or self._blob[0] != body["req"]:
                self.stats.bump("inbox_unexpected:blob_part")
            else:
                self._blob[2] = body
        else:
            self._on_error(body)

    def _resolve_pull(self, req, outcome):
        if self._pull is not None and self._pull[0] == req:
            self._pull[1] = outcome

    def _on_ack(self, ack, sealed):
        if ack["dev"] != self.device_id:
            raise protocol.ProtocolError("not_your_lease", "ack for device %s" % ack["dev"])
        if self.store.store_ack(ack, sealed):
            self.stats.bump("acks")
            print("edge: acked %s %s credit %d" % (ack["status"], hex8(ack["task"]),
                                                   ack["credit"]))
            if self.on_ack is not None:
                self.on_ack(ack)
        else:
            self.stats.bump("ack_unknown")

    def _on_error(self, err):
        code, ref = err["code"], err.get("ref")
        self.stats.bump("gateway_error:" + code)
        print("edge: gateway error %s: %s" % (code, err["msg"]))
        if ref is None:
            return
        if self._blob is not None and self._blob[1] == ref:
            self._blob[2] = FetchError("gateway: %s %s" % (code, err["msg"]))
        if code in FINAL_RESULT_ERRORS and self.store.refuse(ref, code):
            self.stats.bump("results_refused")

    # -- requests --------------------------------------------------------------------------------

    def request_leases(self, kernels):
        """Send a `pull`; the outcome: leases, no_work, timeout or publish_failed."""
        cfg = self.cfg
        req = self.store.next_number("pull_req")
        body = protocol.message("pull", req=req, n=cfg.pull_n, secs=cfg.pull_secs,
                                kernels=kernels)
        self._pull = [req, None]
        try:
            if not self.link.publish("pull", protocol.encode(body)):
                return "publish_failed"
            self.stats.bump("pulls")
            if self.link.wait(cfg.reply_timeout_s, lambda: self._pull[1] is not None):
                return self._pull[1]
            self.stats.bump("pull_timeouts")
            return "timeout"
        finally:
            self._pull = None

    def fetch_blob(self, digest):
        """The blob with this SHA-256: from the cache, else fetched in parts, checked, cached."""
        cached = self.store.get_blob(digest)
        if cached is not None:
            self.stats.bump("blob_cache_hits")
            return cached
        limit = self.cfg.blob_cache_bytes
        hasher = hashlib.sha256()
        parts = []
        offset, total = 0, -1
        while offset != total:
            part = self._blob_part(digest, offset)
            if part["hash"] != digest or part["off"] != offset:
                raise FetchError("blob_part for another hash or offset")
            if total < 0:
                total = part["total"]
                if total > limit:
                    raise FetchError("blob of %d bytes is larger than %d here" % (total, limit))
            if part["total"] != total or (not part["data"] and offset < total):
                raise FetchError("inconsistent blob_part")
            hasher.update(part["data"])
            parts.append(part["data"])
            offset += len(part["data"])
            if offset > total:
                raise FetchError("blob longer than announced")
        if hasher.digest() != digest:
            self.stats.bump("blob_bad_hash")
            raise FetchError("blob does not match its hash")
        blob = b"".join(parts)
        del parts
        self.store.put_blob(digest, blob)
        self.stats.bump("blobs_fetched")
        return blob

    def _blob_part(self, digest, offset):
        cfg = self.cfg
        for _ in range(cfg.blob_retries):
            if not self.link.connected:
                self.link.wait(cfg.reply_timeout_s, lambda: self.link.connected)
            req = self.store.next_number("blob_req")
            get = protocol.message("blob_get", req=req, hash=digest, off=offset,
                                   len=min(cfg.blob_part, protocol.BLOB_PART))
            self._blob = [req, digest, None]
            try:
                if self.link.publish("blob", protocol.encode(get)):
                    self.stats.bump("blob_gets")
                    if self.link.wait(cfg.reply_timeout_s, lambda: self._blob[2] is not None):
                        reply = self._blob[2]
                        if isinstance(reply, FetchError):
                            raise reply
                        return reply
                    self.stats.bump("blob_timeouts")
            finally:
                self._blob = None
        raise FetchError("no blob_part after %d tries" % cfg.blob_retries)


def retry_on_memory(fn, *args):
    """fn(*args), once more after a collection if the heap had no block big enough: the failed
    attempt's half-built objects are garbage once it has unwound (a small heap fragments)."""
    try:
        return fn(*args)
    except MemoryError:
        gc.collect()
        return fn(*args)


def hex8(b):
    """The first 8 bytes as hex: enough to name a task or lease in a log line."""
    return "".join("%02x" % x for x in b[:8])
