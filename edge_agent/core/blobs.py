# Content-addressed operands: a task's large params (e.g. a layer's weights, shared by every task
# of the layer) travel once as blobs and are referenced as {"blob": sha256(bytes)}. The gateway
# makes references, the agent fetches and caches the bytes, and both substitute them with
# resolve() before a kernel validates the params. Portable (MicroPython agents fetch blobs too).

import hashlib


class BlobError(ValueError):
    """A referenced blob is missing or its bytes do not match its hash."""


def is_ref(value):
    return type(value) is dict and len(value) == 1 and "blob" in value


def check_refs(params):
    """Raise BlobError unless every dict-valued param is a well-formed reference: exactly
    {"blob": <32-byte SHA-256>}. A device checks this before it fetches or runs anything."""
    for key in params:
        value = params[key]
        if isinstance(value, dict) and not (is_ref(value) and _is_digest(value["blob"])):
            raise BlobError("params.%s: bad blob reference" % key)


def refs(params):
    """The hashes of the blobs `params` references, in key order."""
    return [params[k]["blob"] for k in sorted(params) if is_ref(params[k])]


def resolve(params, blobs, verify=True):
    """A copy of `params` with each {"blob": h} replaced by blobs[h].

    The bytes are checked against their hash so a corrupted cache cannot feed a kernel; verify=False
    is for a caller that has just computed the hashes itself."""
    out = dict(params)
    for key in params:
        value = params[key]
        if not is_ref(value):
            continue
        digest = value["blob"]
        data = blobs.get(digest) if _is_digest(digest) else None
        if data is None:
            raise BlobError("params.%s: blob %s is not available" % (key, _hex(digest)))
        if verify and hashlib.sha256(data).digest() != digest:
            raise BlobError("params.%s: blob %s does not match its hash" % (key, _hex(digest)))
        out[key] = data
    return out


def _is_digest(value):
    return type(value) is bytes and len(value) == 32


def _hex(b):
    if type(b) is not bytes:
        return repr(b)
    return "".join("%02x" % x for x in b)
