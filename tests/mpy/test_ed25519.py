# edge_agent.core.ed25519 and .sha512 under the real MicroPython interpreter: its hashlib has no
# sha512, so the pure SHA-512 is what runs here. Comparisons with pynacl/hashlib are in
# tests/test_ed25519.py (CPython).
import hashlib

from mpyassert import load_json, raises, unhex

from edge_agent.core import ed25519, sha512

VECTORS = load_json("tests/data/crypto_vectors.json")


def _flip(data, bit):
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_sha512_is_pure_where_hashlib_lacks_it():
    if hasattr(hashlib, "sha512"):
        assert sha512.sha512 is hashlib.sha512
    else:
        assert sha512.sha512 is sha512.SHA512


def test_sha512_known_answers():
    for v in VECTORS["sha512"]:
        assert sha512.SHA512(unhex(v["message"])).digest() == unhex(v["digest"]), v["message"]


def test_sha512_updates_in_pieces_equal_one_shot():
    message = bytes(range(256)) + bytes(range(45))
    want = sha512.SHA512(message).digest()
    for step in (1, 7, 111, 128, 129, 300):
        h = sha512.SHA512()
        for start in range(0, len(message), step):
            h.update(message[start : start + step])
        assert h.digest() == want, step


def test_sha512_digest_does_not_end_the_object():
    h = sha512.SHA512(b"ab")
    first = h.digest()
    assert h.digest() == first
    h.update(b"c")
    assert h.digest() == sha512.SHA512(b"abc").digest() != first


def test_rfc8032_vectors():
    for v in VECTORS["ed25519"]:
        seed = unhex(v["secret_key"])
        pub = unhex(v["public_key"])
        msg = unhex(v["message"])
        sig = unhex(v["signature"])
        assert ed25519.publickey(seed) == pub, v["name"]
        assert ed25519.sign(seed, msg) == sig, v["name"]
        assert ed25519.verify(pub, msg, sig) is True, v["name"]


def test_flipped_bits_are_rejected():
    v = VECTORS["ed25519"][2]  # TEST 3: a 2-byte message
    pub = unhex(v["public_key"])
    msg = unhex(v["message"])
    sig = unhex(v["signature"])
    # Every 5th bit (odd step: all bit positions within a byte get hit) keeps this under a few s.
    for bit in range(0, 512, 5):
        assert ed25519.verify(pub, msg, _flip(sig, bit)) is False, ("sig", bit)
    for bit in range(0, 256, 5):
        assert ed25519.verify(_flip(pub, bit), msg, sig) is False, ("pub", bit)
    for bit in range(16):
        assert ed25519.verify(pub, _flip(msg, bit), sig) is False, ("msg", bit)


def test_sign_verify_round_trip_and_bytearray_inputs():
    for i in range(3):
        seed = bytes([i * 31 + j for j in range(32)])
        msg = (b"claim %d" % i) * (i * 50)
        sig = ed25519.sign(seed, msg)
        pub = ed25519.publickey(seed)
        assert ed25519.verify(pub, msg, sig)
        assert ed25519.verify(bytearray(pub), bytearray(msg), bytearray(sig))
        assert ed25519.sign(bytearray(seed), bytearray(msg)) == sig
        assert not ed25519.verify(pub, msg + b"!", sig)


def test_bad_lengths_are_false_and_bad_types_raise():
    v = VECTORS["ed25519"][0]
    pub = unhex(v["public_key"])
    sig = unhex(v["signature"])
    assert ed25519.verify(pub[:31], b"", sig) is False
    assert ed25519.verify(pub + b"\x00", b"", sig) is False
    assert ed25519.verify(pub, b"", sig[:63]) is False
    assert ed25519.verify(pub, b"", sig + b"\x00") is False
    assert ed25519.verify(b"", b"", b"") is False
    raises(ValueError, ed25519.verify, "not bytes", b"", sig)
    raises(ValueError, ed25519.verify, pub, None, sig)
    raises(ValueError, ed25519.sign, bytes(31), b"")
    raises(ValueError, ed25519.sign, bytes(32), "text")
    raises(ValueError, ed25519.publickey, bytes(33))


def test_non_canonical_s_is_rejected():
    v = VECTORS["ed25519"][1]
    pub = unhex(v["public_key"])
    msg = unhex(v["message"])
    sig = unhex(v["signature"])
    s = int.from_bytes(sig[32:], "little")
    # S + L names the same scalar: the equation still holds, only the S < L rule rejects it.
    assert ed25519.verify(pub, msg, sig[:32] + (s + ed25519._L).to_bytes(32, "little")) is False


def test_small_order_public_keys_and_r_are_rejected():
    v = VECTORS["ed25519"][0]
    pub = unhex(v["public_key"])
    sig = unhex(v["signature"])
    for y in ed25519._SMALL_ORDER_Y:
        for sign_bit in (0, 1 << 255):
            enc = (y | sign_bit).to_bytes(32, "little")
            assert ed25519.verify(enc, b"", sig) is False
            assert ed25519.verify(pub, b"", enc + sig[32:]) is False
