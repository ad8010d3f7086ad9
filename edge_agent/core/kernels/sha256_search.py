# Proof-of-work search: which nonces in [start, start + count) give
# SHA-256(prefix || nonce as 8 bytes little-endian) < target (both compared as big-endian
# 256-bit numbers, i.e. bytewise)? Python twin of native/src/sha256_search.c, bit for bit.
#
# State: units (nonces done), found (the first max_found qualifying nonces, ascending),
# found_total, best_hash / best_nonce (smallest hash so far, earliest on ties). Before any
# nonce is done best is (ff..ff, start): a first hash equal to ff..ff keeps it, which is
# exactly "earliest on ties", so no special case for "nothing yet".
import struct

from edge_agent.core.kernels.base import KernelError, check_bytes, check_int, check_keys

try:
    import hashlib

    _HASHLIB_SHA256 = hashlib.sha256
except (ImportError, AttributeError):  # pragma: no cover - ports built without hashlib
    _HASHLIB_SHA256 = None

NAME = "sha256_search"

MAX_PREFIX = 256
MAX_COUNT = 1 << 32
MAX_FOUND = 64
DEFAULT_MAX_FOUND = 16
MAX_NONCE = (1 << 64) - 1
HASH_LEN = 32
WORST_HASH = b"\xff" * HASH_LEN

_KEYS = ("prefix", "start", "count", "target", "max_found")


def validate(params):
    check_keys(params, _KEYS)
    prefix = check_bytes(params, "prefix", 0, MAX_PREFIX)
    start = check_int(params, "start", 0, MAX_NONCE)
    count = check_int(params, "count", 1, MAX_COUNT)
    if start + count - 1 > MAX_NONCE:
        raise KernelError("last nonce start + count - 1 = %d passes 2**64 - 1"
                          % (start + count - 1))
    target = check_bytes(params, "target", HASH_LEN, HASH_LEN)
    max_found = check_int(params, "max_found", 0, MAX_FOUND, DEFAULT_MAX_FOUND)
    return {"prefix": prefix, "start": start, "count": count, "target": target,
            "max_found": max_found}


def work_units(params):
    return params["count"]


def start(params):
    return {"units": 0, "found": [], "found_total": 0, "best_hash": WORST_HASH,
            "best_nonce": params["start"]}


def step(params, state, max_units):
    n = min(max(1, max_units), params["count"] - state["units"])
    scan(hasher(params["prefix"]), params, state, n)
    return n


def result(params, state):
    return {"found": list(state["found"]), "found_total": state["found_total"],
            "best_nonce": state["best_nonce"], "best_hash": state["best_hash"]}


def scan(digest, params, state, n):
    """Advance ``state`` by ``n`` nonces, hashing with ``digest(nonce_bytes)``."""
    target = params["target"]
    max_found = params["max_found"]
    found = state["found"]
    found_total = state["found_total"]
    best_hash = state["best_hash"]
    best_nonce = state["best_nonce"]
    pack = struct.pack
    # A while loop, not range(): MicroPython's range() takes only machine-word ints.
    nonce = params["start"] + state["units"]
    end = nonce + n
    while nonce < end:
        h = digest(pack("<Q", nonce))
        if h < target:
            found_total += 1
            if len(found) < max_found:
                found.append(nonce)
        if h < best_hash:
            best_hash = h
            best_nonce = nonce
        nonce += 1
    state["units"] += n
    state["found_total"] = found_total
    state["best_hash"] = best_hash
    state["best_nonce"] = best_nonce


def hasher(prefix, impl=None):
    """A function nonce_bytes -> SHA-256(prefix || nonce_bytes).

    impl: None picks the fastest available; "copy" (hashlib midstate, CPython), "rehash"
    (hashlib, no .copy(): MicroPython), "pure" (no hashlib: this module's own SHA-256)."""
    if impl is None:
        if _HASHLIB_SHA256 is None:
            impl = "pure"
        else:
            impl = "copy" if hasattr(_HASHLIB_SHA256(), "copy") else "rehash"
    if impl == "copy":
        mid = _HASHLIB_SHA256(prefix)

        def digest(tail):
            h = mid.copy()
            h.update(tail)
            return h.digest()

    elif impl == "rehash":
        sha256 = _HASHLIB_SHA256

        def digest(tail):
            return sha256(prefix + tail).digest()

    elif impl == "pure":
        mid, full = _midstate(prefix)
        rest = prefix[full:]

        def digest(tail):
            return _finish(mid, rest + tail, full)

    else:
        raise KernelError("unknown hasher %r" % (impl,))
    return digest


# --- pure-Python SHA-256 (FIPS 180-4), for ports without hashlib.sha256 -------------------

_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
       0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)

_K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)

_M32 = 0xFFFFFFFF


def _rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & _M32


def _compress(h, block):
    """One SHA-256 compression of a 64-byte block into the 8-word state list ``h``."""
    w = list(struct.unpack(">16I", block))
    for t in range(16, 64):
        a = w[t - 15]
        b = w[t - 2]
        s0 = _rotr(a, 7) ^ _rotr(a, 18) ^ (a >> 3)
        s1 = _rotr(b, 17) ^ _rotr(b, 19) ^ (b >> 10)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M32)
    a, b, c, d, e, f, g, hh = h
    for t in range(64):
        t1 = (hh + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g))
              + _K[t] + w[t]) & _M32
        t2 = ((_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) & _M32
        hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M32, c, b, a, (t1 + t2) & _M32
    for i, v in enumerate((a, b, c, d, e, f, g, hh)):
        h[i] = (h[i] + v) & _M32


def _finish(mid, tail, done_len):
    """SHA-256 digest of a message whose first ``done_len`` bytes (a multiple of 64) gave
    state ``mid`` and whose remaining bytes are ``tail``."""
    h = list(mid)
    bits = (done_len + len(tail)) * 8
    pad = b"\x80" + bytes((55 - len(tail)) % 64)
    tail = tail + pad + struct.pack(">Q", bits)
    for i in range(0, len(tail), 64):
        _compress(h, tail[i:i + 64])
    return struct.pack(">8I", *h)


def _midstate(data):
    """State after the full 64-byte blocks of ``data``, and how many bytes those were."""
    full = len(data) & ~63
    h = list(_IV)
    for i in range(0, full, 64):
        _compress(h, data[i:i + 64])
    return h, full


def sha256_pure(data):
    """SHA-256 of ``data`` without hashlib (what the "pure" hasher computes)."""
    mid, full = _midstate(data)
    return _finish(mid, data[full:], full)
