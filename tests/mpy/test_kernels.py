# The gemm_i8 and montecarlo_pi Python twins under MicroPython, against known answers the C
# kernel produced (tests/data/kernel_vectors.json; tests/test_kernels_api.py keeps it in step).
import binascii

from mpyassert import load_json, raises, unhex

from edge_agent.core.kernels import KernelError, gemm_i8, montecarlo_pi
from edge_agent.core.kernels.base import run

VECTORS = load_json("tests/data/kernel_vectors.json")
KERNELS = {"gemm_i8": gemm_i8, "montecarlo_pi": montecarlo_pi}
BYTES_PARAMS = ("a", "w", "bias")


def _params(v):
    p = {}
    for key, value in v["params"].items():
        p[key] = unhex(value) if key in BYTES_PARAMS else value
    return p


def _encode(result):
    out = {}
    for key, value in result.items():
        out[key] = binascii.hexlify(value).decode() if isinstance(value, bytes) else value
    return out


def _check_vectors(name, chunk_units=None):
    count = 0
    for v in VECTORS:
        if v["kernel"] != name:
            continue
        chunk = v["chunk_units"] if chunk_units is None else chunk_units
        got = _encode(run(KERNELS[name], _params(v), chunk))
        assert got == v["result"], "%s %r: %r != %r" % (name, v["params"], got, v["result"])
        count += 1
    assert count >= 4, count


def test_gemm_i8_vectors():
    _check_vectors("gemm_i8")


def test_gemm_i8_vectors_one_row_per_step():
    _check_vectors("gemm_i8", 1)


def test_montecarlo_pi_vectors():
    _check_vectors("montecarlo_pi")


def test_montecarlo_pi_vectors_in_small_chunks():
    _check_vectors("montecarlo_pi", 333)


def test_splitmix64_seeding_known_answer():
    # splitmix64 from seed 0: e220a8397b1dcdaf, 6e789e6aa1b965f4 (low word first).
    assert montecarlo_pi.seed_state(0) == [0x7B1DCDAF, 0xE220A839, 0xA1B965F4, 0x6E789E6A]
    s = montecarlo_pi.seed_state((1 << 64) - 1)
    assert len(s) == 4 and all(0 <= x <= 0xFFFFFFFF for x in s)


def test_requant_floors_negative_big_ints():
    # acc = +-(2**31 - 1 - 16384), the bias bound for k = 1; acc * multiplier is near +-2**62:
    # MicroPython's big-int >> must floor like CPython's (+1.49.. -> 1, -0.49.. -> -1).
    p = {"m": 1, "n": 2, "k": 1, "a": b"\x01", "w": b"\x00\x00",
         "bias": b"\xff\xbf\xff\x7f\x01\x40\x00\x80", "multiplier": 0x7FFFFFFF, "shift": 62}
    assert run(gemm_i8, p)["out"] == b"\x01\xff"


def test_bad_params_raise_kernel_error():
    good = {"m": 1, "n": 1, "k": 2, "a": b"\x01\x02", "w": b"\x03\x04", "multiplier": 1,
            "shift": 1}
    assert run(gemm_i8, good)["out"] == b"\x06"  # (11 + 1) >> 1
    for key, bad in (("m", 0), ("k", True), ("a", b"\x01"), ("shift", 63), ("relu", 0),
                     ("bias", b"\x00"), ("out_zero_point", 128), ("extra", 1)):
        p = dict(good)
        p[key] = bad
        raises(KernelError, gemm_i8.validate, p)
    for p in ({"seed": -1, "points": 1}, {"seed": 1, "points": 0}, {"seed": 1},
              {"seed": 1, "points": 1, "x": 0}, {"seed": False, "points": 1}):
        raises(KernelError, montecarlo_pi.validate, p)
