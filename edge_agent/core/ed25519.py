"""Ed25519 signatures (RFC 8032, pure Ed25519: no prehash, no context) in portable Python.

    publickey(seed32) -> bytes32
    sign(seed32, msg) -> bytes64
    verify(pub32, msg, sig64) -> bool

For devices running MicroPython; on CPython the agent signs with pynacl (libsodium). Signing is
deterministic, so both give the same bytes for the same seed and message, and each accepts the
other's signatures (tests/test_ed25519.py checks all of it against pynacl).

Verification makes libsodium's decisions (the ref10 code in pynacl; checked against the installed
pynacl by tests/test_ed25519.py, including crafted edge cases):
  - False unless len(pub) == 32 and len(sig) == 64 (pub, msg, sig must be bytes or bytearray;
    other types raise ValueError);
  - False if S >= L (no malleable scalars);
  - False if A (pub) is not canonical (y >= p), not on the curve, or of small order (order dividing
    8: its y is one of the 5 values in _SMALL_ORDER_Y);
  - False if R has small order (same test on its y);
  - True iff encode([S]B - [k]A) == R byte for byte, k = SHA-512(R || A || msg) mod L. This is the
    cofactorless equation [S]B = R + [k]A, and comparing encodings also rejects non-canonical R.
libsodium 1.0.19+ switched to a cofactored check (R - ([S]B - [k]A) of small order); the pynacl
this project runs accepts an honest signature under a key with a torsion component only when
k = 0 mod 8, which is the cofactorless rule, so that is what is implemented (a test pins it: if a
pynacl upgrade changes the rule, it fails). The two rules agree on every signature an honest
signer makes.

Speed: field elements are Python ints reduced mod p after each product (one big-int multiply and
one modulo; MicroPython's mpz does both in C), points are in extended twisted Edwards coordinates
(X:Y:Z:T) with the a = -1 formulas (dbl-2008-hwcd, add-2008-hwcd-3 of the Explicit-Formulas
Database), scalars go through a 3-bit fixed window, and verify runs both of its scalars in one
Straus pass (shared doublings). Tables are 8 points, nothing bigger is precomputed: for a small
heap, where each 255-bit int is ~80 bytes of scattered blocks, a 4-bit window's 16-point tables
cost 5 KB resident (the base point's) plus 5 KB per verify (the key's), for ~5% of the speed.
Medians on the 2-vCPU build machine: MicroPython 1.29 unix port (.mpy) sign 12 ms, verify 9 ms;
CPython sign 4.6 ms, verify 3.1 ms (pynacl: 0.05 and 0.06 ms). With the pure SHA-512, the two
modules take 17 KB of heap once imported from .mpy; sign and verify run in a 28 KB heap.

Not constant time: big-int arithmetic in an interpreter leaks timing whatever the code does. A
device signs a handful of messages per batch over the network, so the exposure is a remote timing
attack across many signatures; use pynacl where available (CPython) and keep this for MicroPython.
"""

from edge_agent.core.sha512 import sha512

_P = (1 << 255) - 19  # the field prime
_L = (1 << 252) + 27742317777372353535851937790883648493  # order of the base point
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555  # -121665/121666
_D2 = _D * 2 % _P
# 2^((p-1)/4), a square root of -1
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_Y_MASK = (1 << 255) - 1

# y coordinates (mod p) of the 8 points of order dividing 8: 1 (identity), p-1 (order 2), 0 (the two
# of order 4) and +-c (the four of order 8). Rejected as public keys and as R, as libsodium does.
_SMALL_ORDER_Y = (
    0,
    1,
    _P - 1,
    2707385501144840649318225287225658788936804267575313519463743609750303402022,
    55188659117513257062467267217118295137698188065244968500265048394206261417927,
)

_IDENTITY = (0, 1, 1, 0)


def _double3(p):
    """[8]p. Doubling never reads T, so only the last of the three doublings computes it."""
    x, y, z = p[0], p[1], p[2]
    for _ in range(3):
        a = x * x % _P
        b = y * y % _P
        c = 2 * z * z % _P
        h = a + b
        s = x + y
        e = h - s * s % _P
        g = a - b
        f = c + g
        x = e * f % _P
        y = g * h % _P
        z = f * g % _P
    return (x, y, z, e * h % _P)


def _cached(p):
    """p in the form _add takes as its second operand: (Y+X, Y-X, 2d*T, 2Z)."""
    x, y, z, t = p
    return ((y + x) % _P, (y - x) % _P, t * _D2 % _P, 2 * z % _P)


def _add(p, q):
    """p + q, p extended, q cached (_cached)."""
    x1, y1, z1, t1 = p
    yplusx, yminusx, t2d, z2 = q
    a = (y1 - x1) * yminusx % _P
    b = (y1 + x1) * yplusx % _P
    c = t1 * t2d % _P
    d = z1 * z2 % _P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _negate(p):
    x, y, z, t = p
    return ((-x) % _P, y, z, (-t) % _P)


def _window_table(p):
    """[0]p .. [7]p, cached, for the 3-bit fixed window. Each multiple is converted as it is
    made, so only the table and one point are alive."""
    step = _cached(p)
    table = [_cached(_IDENTITY), step]
    q = p
    for _ in range(6):
        q = _add(q, step)
        table.append(_cached(q))
    return table


def _scalarmult(table, n):
    """[n]P for 0 <= n < 2^256, table = _window_table(P); 3 bits a step, most significant first
    (bit 255 alone, then 85 windows of 3)."""
    q = _IDENTITY
    for shift in range(255, -1, -3):
        q = _double3(q)
        d = (n >> shift) & 7
        if d:
            q = _add(q, table[d])
    return q


def _double_scalarmult(table1, n1, table2, n2):
    """[n1]P1 + [n2]P2 with one shared chain of doublings (Straus)."""
    q = _IDENTITY
    for shift in range(255, -1, -3):
        q = _double3(q)
        d1 = (n1 >> shift) & 7
        if d1:
            q = _add(q, table1[d1])
        d2 = (n2 >> shift) & 7
        if d2:
            q = _add(q, table2[d2])
    return q


def _encode(p):
    x, y, z, _ = p
    zinv = pow(z, _P - 2, _P)
    x = x * zinv % _P
    y = y * zinv % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(s):
    """The point encoded by 32 bytes s (RFC 8032 5.1.3), or None when y >= p or not on the curve."""
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= _Y_MASK
    if y >= _P:
        return None
    yy = y * y % _P
    u = (yy - 1) % _P
    v = (_D * yy + 1) % _P
    # x = sqrt(u/v) = u v^3 (u v^7)^((p-5)/8), up to a factor sqrt(-1).
    v3 = v * v % _P * v % _P
    x = u * v3 % _P * pow(u * v3 % _P * v3 % _P * v % _P, (_P - 5) // 8, _P) % _P
    vxx = v * x % _P * x % _P
    if vxx != u:
        if vxx != _P - u:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if (x & 1) != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _hash_scalar(*parts):
    """SHA-512 of the concatenated parts, read little-endian, mod L."""
    h = sha512()
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "little") % _L


def _check_bytes(value, length, name):
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError("%s must be bytes, not %s" % (name, type(value).__name__))
    if length is not None and len(value) != length:
        raise ValueError("%s must be %d bytes, not %d" % (name, length, len(value)))


def _expand(seed):
    """The secret scalar a (clamped) and the nonce prefix of a 32-byte seed (RFC 8032 5.1.5)."""
    _check_bytes(seed, 32, "seed")
    h = sha512(bytes(seed)).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    return a, h[32:]


_B = _decode((4 * pow(5, _P - 2, _P) % _P).to_bytes(32, "little"))  # RFC 8032: y = 4/5, x even
_B_TABLE = _window_table(_B)


def publickey(seed):
    """The 32-byte public key of a 32-byte seed (what pynacl calls the private key's seed)."""
    a, _ = _expand(seed)
    return _encode(_scalarmult(_B_TABLE, a))


def sign(seed, msg):
    """The 64-byte signature R || S of msg (bytes) under the key made from the 32-byte seed."""
    _check_bytes(msg, None, "msg")
    a, prefix = _expand(seed)
    pub = _encode(_scalarmult(_B_TABLE, a))
    r = _hash_scalar(prefix, msg)
    r_enc = _encode(_scalarmult(_B_TABLE, r))
    s = (r + _hash_scalar(r_enc, pub, msg) * a) % _L
    return r_enc + s.to_bytes(32, "little")


def _has_small_order(s):
    """True iff the 32-byte encoding s names a point of order dividing 8 (whatever its sign bit)."""
    return (int.from_bytes(s, "little") & _Y_MASK) in _SMALL_ORDER_Y


def verify(pub, msg, sig):
    """True iff sig is a valid signature of msg under pub; False for any bad key or signature."""
    _check_bytes(pub, None, "pub")
    _check_bytes(msg, None, "msg")
    _check_bytes(sig, None, "sig")
    if len(pub) != 32 or len(sig) != 64:
        return False
    r_enc = bytes(sig[:32])
    s = int.from_bytes(sig[32:], "little")
    if s >= _L or _has_small_order(r_enc) or _has_small_order(pub):
        return False
    a = _decode(pub)
    if a is None:
        return False
    k = _hash_scalar(r_enc, pub, msg)
    return _encode(_double_scalarmult(_B_TABLE, s, _window_table(_negate(a)), k)) == r_enc
