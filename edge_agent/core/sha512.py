"""SHA-512 (FIPS 180-4) in portable Python, for interpreters whose hashlib lacks it.

MicroPython's unix port ships hashlib with sha256/sha1/md5 only, but Ed25519 is defined over
SHA-512. ``sha512`` is ``hashlib.sha512`` where that exists (CPython: C speed) and the pure class
``SHA512`` otherwise; both have the hashlib interface used here: ``sha512(data=b"")``,
``.update(data)``, ``.digest()`` (which does not end the object: more updates may follow, as with
hashlib).

Words are plain Python ints masked to 64 bits. On MicroPython that makes them big ints (small ints
are 63-bit on 64-bit ports, 31-bit on 32-bit ones); splitting words into 32-bit halves was not worth
its complexity: a block costs 0.5-1 ms under the unix port here, and Ed25519 hashes a few blocks
per operation against 15-20 ms of curve arithmetic.
"""

import struct

try:
    import hashlib
except ImportError:  # a MicroPython build without hashlib: the pure class below still works
    hashlib = None

# Round constants: first 64 bits of the fractional parts of the cube roots of the first 80 primes.
_K = (
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
)

# Initial state: first 64 bits of the fractional parts of the square roots of the first 8 primes.
_H0 = (
    0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
    0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
)

_MASK = 0xFFFFFFFFFFFFFFFF
_BLOCK = 128


def _compress(state, block, offset):
    """Return the state after one 128-byte block read from block[offset:offset + 128]."""
    # Rotations are written out (x >> n | x << 64 - n) and masked once per sum, not per term:
    # the bits above 64 are garbage that the final mask drops. Function calls cost too much here.
    m = _MASK
    w = list(struct.unpack_from(">16Q", block, offset))
    for t in range(16, 80):
        x = w[t - 15]
        y = w[t - 2]
        s0 = ((x >> 1) | (x << 63)) ^ ((x >> 8) | (x << 56)) ^ (x >> 7)
        s1 = ((y >> 19) | (y << 45)) ^ ((y >> 61) | (y << 3)) ^ (y >> 6)
        w.append((w[t - 16] + w[t - 7] + (s0 & m) + (s1 & m)) & m)
    a, b, c, d, e, f, g, h = state
    k = _K
    for t in range(80):
        s1 = ((e >> 14) | (e << 50)) ^ ((e >> 18) | (e << 46)) ^ ((e >> 41) | (e << 23))
        t1 = h + (s1 & m) + (g ^ (e & (f ^ g))) + k[t] + w[t]
        s0 = ((a >> 28) | (a << 36)) ^ ((a >> 34) | (a << 30)) ^ ((a >> 39) | (a << 25))
        t2 = (s0 & m) + ((a & b) | (c & (a | b)))
        h = g
        g = f
        f = e
        e = (d + t1) & m
        d = c
        c = b
        b = a
        a = (t1 + t2) & m
    return (
        (state[0] + a) & m,
        (state[1] + b) & m,
        (state[2] + c) & m,
        (state[3] + d) & m,
        (state[4] + e) & m,
        (state[5] + f) & m,
        (state[6] + g) & m,
        (state[7] + h) & m,
    )


class SHA512:
    """Pure-Python SHA-512 with the part of the hashlib interface the core uses."""

    digest_size = 64
    block_size = _BLOCK

    def __init__(self, data=b""):
        self._state = _H0
        self._pending = b""  # fewer than 128 bytes not yet compressed
        self._length = 0  # bytes hashed so far, for the padding
        if data:
            self.update(data)

    def update(self, data):
        data = bytes(data)
        self._length += len(data)
        if self._pending:
            data = self._pending + data
        full = len(data) - len(data) % _BLOCK
        state = self._state
        for offset in range(0, full, _BLOCK):
            state = _compress(state, data, offset)
        self._state = state
        self._pending = data[full:]

    def digest(self):
        n = self._length
        # 0x80, zeros up to 112 mod 128, then the length in bits as a 128-bit big-endian number.
        length = struct.pack(">QQ", n >> 61, (n << 3) & _MASK)
        tail = self._pending + b"\x80" + bytes((111 - n) % _BLOCK) + length
        state = self._state
        for offset in range(0, len(tail), _BLOCK):
            state = _compress(state, tail, offset)
        return struct.pack(">8Q", *state)


sha512 = getattr(hashlib, "sha512", None) or SHA512
