"""SHA-512 (FIPS 180-4) in portable Python, for interpreters whose hashlib lacks it.

MicroPython's unix port ships hashlib with sha256/sha1/md5 only, but Ed25519 is defined over
SHA-512. ``sha512`` is ``hashlib.sha512`` where that exists (CPython: C speed) and the pure class
``SHA512`` otherwise; both have the hashlib interface used here: ``sha512(data=b"")``,
``.update(data)``, ``.digest()`` (which does not end the object: more updates may follow, as with
hashlib).

Each 64-bit word is kept as two 32-bit halves (high, low) and sums carry from the low half to the
high one. On a 64-bit MicroPython port every intermediate value then stays a small int (62 bits:
no shift here goes past bit 61) and a block allocates nothing (the schedule is one list, made at
import): 64-bit words were big ints there, and their garbage fragmented a small heap until the
schedule's 1 KB list could not be placed. It is ~4x faster too. On 32-bit ports (31-bit small
ints) most halves are big ints either way, of half the digits.
"""

import struct

try:
    import hashlib
except ImportError:  # a MicroPython build without hashlib: the pure class below still works
    hashlib = None

# Round constants: first 64 bits of the fractional parts of the cube roots of the first 80 primes,
# as (high, low) 32-bit halves.
_K = (
    0x428a2f98, 0xd728ae22, 0x71374491, 0x23ef65cd, 0xb5c0fbcf, 0xec4d3b2f, 0xe9b5dba5, 0x8189dbbc,
    0x3956c25b, 0xf348b538, 0x59f111f1, 0xb605d019, 0x923f82a4, 0xaf194f9b, 0xab1c5ed5, 0xda6d8118,
    0xd807aa98, 0xa3030242, 0x12835b01, 0x45706fbe, 0x243185be, 0x4ee4b28c, 0x550c7dc3, 0xd5ffb4e2,
    0x72be5d74, 0xf27b896f, 0x80deb1fe, 0x3b1696b1, 0x9bdc06a7, 0x25c71235, 0xc19bf174, 0xcf692694,
    0xe49b69c1, 0x9ef14ad2, 0xefbe4786, 0x384f25e3, 0x0fc19dc6, 0x8b8cd5b5, 0x240ca1cc, 0x77ac9c65,
    0x2de92c6f, 0x592b0275, 0x4a7484aa, 0x6ea6e483, 0x5cb0a9dc, 0xbd41fbd4, 0x76f988da, 0x831153b5,
    0x983e5152, 0xee66dfab, 0xa831c66d, 0x2db43210, 0xb00327c8, 0x98fb213f, 0xbf597fc7, 0xbeef0ee4,
    0xc6e00bf3, 0x3da88fc2, 0xd5a79147, 0x930aa725, 0x06ca6351, 0xe003826f, 0x14292967, 0x0a0e6e70,
    0x27b70a85, 0x46d22ffc, 0x2e1b2138, 0x5c26c926, 0x4d2c6dfc, 0x5ac42aed, 0x53380d13, 0x9d95b3df,
    0x650a7354, 0x8baf63de, 0x766a0abb, 0x3c77b2a8, 0x81c2c92e, 0x47edaee6, 0x92722c85, 0x1482353b,
    0xa2bfe8a1, 0x4cf10364, 0xa81a664b, 0xbc423001, 0xc24b8b70, 0xd0f89791, 0xc76c51a3, 0x0654be30,
    0xd192e819, 0xd6ef5218, 0xd6990624, 0x5565a910, 0xf40e3585, 0x5771202a, 0x106aa070, 0x32bbd1b8,
    0x19a4c116, 0xb8d2d0c8, 0x1e376c08, 0x5141ab53, 0x2748774c, 0xdf8eeb99, 0x34b0bcb5, 0xe19b48a8,
    0x391c0cb3, 0xc5c95a63, 0x4ed8aa4a, 0xe3418acb, 0x5b9cca4f, 0x7763e373, 0x682e6ff3, 0xd6b2b8a3,
    0x748f82ee, 0x5defb2fc, 0x78a5636f, 0x43172f60, 0x84c87814, 0xa1f0ab72, 0x8cc70208, 0x1a6439ec,
    0x90befffa, 0x23631e28, 0xa4506ceb, 0xde82bde9, 0xbef9a3f7, 0xb2c67915, 0xc67178f2, 0xe372532b,
    0xca273ece, 0xea26619c, 0xd186b8c7, 0x21c0c207, 0xeada7dd6, 0xcde0eb1e, 0xf57d4f7f, 0xee6ed178,
    0x06f067aa, 0x72176fba, 0x0a637dc5, 0xa2c898a6, 0x113f9804, 0xbef90dae, 0x1b710b35, 0x131c471b,
    0x28db77f5, 0x23047d84, 0x32caab7b, 0x40c72493, 0x3c9ebe0a, 0x15c9bebc, 0x431d67c4, 0x9c100d4c,
    0x4cc5d4be, 0xcb3e42b6, 0x597f299c, 0xfc657e2a, 0x5fcb6fab, 0x3ad6faec, 0x6c44198c, 0x4a475817,
)

# Initial state: first 64 bits of the fractional parts of the square roots of the first 8 primes,
# as (high, low) 32-bit halves.
_H0 = (
    0x6a09e667, 0xf3bcc908, 0xbb67ae85, 0x84caa73b, 0x3c6ef372, 0xfe94f82b, 0xa54ff53a, 0x5f1d36f1,
    0x510e527f, 0xade682d1, 0x9b05688c, 0x2b3e6c1f, 0x1f83d9ab, 0xfb41bd6b, 0x5be0cd19, 0x137e2179,
)

_M = 0xFFFFFFFF
_BLOCK = 128
# The message schedule: w[2t], w[2t + 1] hold the high and low halves of word t. Allocated once,
# while the heap is still whole: a fresh 1.3 KB list per block did not always find a hole in a
# heap fragmented by Ed25519's big ints. _compress never yields, so one list serves every object.
_W = [0] * 160


def _compress(state, block, offset):
    """The state (16 halves) after one 128-byte block read from block[offset:offset + 128].

    Rotations are written out on the halves; a right rotation by 32 + n swaps them first. The
    bits a left shift pushes above bit 31 are dropped by one mask per value, not per term, and
    carries are added once per sum. Function calls cost too much here."""
    m = _M
    w = _W
    w[:32] = struct.unpack_from(">32I", block, offset)
    for i in range(32, 160, 2):
        xh = w[i - 30]  # w[t - 15]
        xl = w[i - 29]
        yh = w[i - 4]  # w[t - 2]
        yl = w[i - 3]
        # s0 = rotr 1 ^ rotr 8 ^ shr 7; s1 = rotr 19 ^ rotr 61 ^ shr 6
        s0h = ((xh >> 1) | ((xl & 1) << 31)) ^ ((xh >> 8) | (xl << 24)) ^ (xh >> 7)
        s0l = ((xl >> 1) | ((xh & 1) << 31)) ^ ((xl >> 8) | (xh << 24)) ^ ((xl >> 7) | (xh << 25))
        s1h = ((yh >> 19) | (yl << 13)) ^ ((yl >> 29) | (yh << 3)) ^ (yh >> 6)
        s1l = ((yl >> 19) | (yh << 13)) ^ ((yh >> 29) | (yl << 3)) ^ ((yl >> 6) | (yh << 26))
        lo = w[i - 31] + w[i - 13] + (s0l & m) + (s1l & m)
        w[i] = (w[i - 32] + w[i - 14] + (s0h & m) + (s1h & m) + (lo >> 32)) & m
        w[i + 1] = lo & m
    ah, al, bh, bl, ch, cl, dh, dl, eh, el, fh, fl, gh, gl, hh, hl = state
    k = _K
    for i in range(0, 160, 2):
        # S1 = rotr 14 ^ rotr 18 ^ rotr 41; ch = g ^ (e & (f ^ g))
        s1h = ((eh >> 14) | (el << 18)) ^ ((eh >> 18) | (el << 14)) ^ ((el >> 9) | (eh << 23))
        s1l = ((el >> 14) | (eh << 18)) ^ ((el >> 18) | (eh << 14)) ^ ((eh >> 9) | (el << 23))
        t1l = hl + (s1l & m) + (gl ^ (el & (fl ^ gl))) + k[i + 1] + w[i + 1]
        t1h = hh + (s1h & m) + (gh ^ (eh & (fh ^ gh))) + k[i] + w[i]
        # S0 = rotr 28 ^ rotr 34 ^ rotr 39; maj = (a & b) | (c & (a | b))
        s0h = ((ah >> 28) | (al << 4)) ^ ((al >> 2) | (ah << 30)) ^ ((al >> 7) | (ah << 25))
        s0l = ((al >> 28) | (ah << 4)) ^ ((ah >> 2) | (al << 30)) ^ ((ah >> 7) | (al << 25))
        t2l = (s0l & m) + ((al & bl) | (cl & (al | bl)))
        t2h = (s0h & m) + ((ah & bh) | (ch & (ah | bh)))
        hh = gh
        hl = gl
        gh = fh
        gl = fl
        fh = eh
        fl = el
        el = dl + t1l
        eh = (dh + t1h + (el >> 32)) & m
        el &= m
        dh = ch
        dl = cl
        ch = bh
        cl = bl
        bh = ah
        bl = al
        al = t1l + t2l
        ah = (t1h + t2h + (al >> 32)) & m
        al &= m
    out = []
    for i, v in enumerate((ah, al, bh, bl, ch, cl, dh, dl, eh, el, fh, fl, gh, gl, hh, hl)):
        out.append(state[i] + v)
    for i in range(14, -1, -2):  # the carry out of each low half, then mask
        out[i] = (out[i] + (out[i + 1] >> 32)) & m
        out[i + 1] &= m
    return out


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
        # 0x80, zeros up to 112 mod 128, then the length in bits as a 128-bit big-endian number
        # (bytes < 2**61 here: its top 64 bits are zero).
        length = struct.pack(">QII", 0, n >> 29, (n << 3) & _M)
        tail = self._pending + b"\x80" + bytes((111 - n) % _BLOCK) + length
        state = self._state
        for offset in range(0, len(tail), _BLOCK):
            state = _compress(state, tail, offset)
        return struct.pack(">16I", *state)


sha512 = getattr(hashlib, "sha512", None) or SHA512
