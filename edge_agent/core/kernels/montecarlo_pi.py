# Monte Carlo pi: count points (x, y) of uint32 pairs inside the quarter circle
# x*x + y*y < 2**64. Points come from xoshiro128** (Blackman & Vigna), x first then y, seeded by
# two splitmix64 outputs of the 64-bit seed (each split low 32-bit word first). Integer only,
# so inside / points * 4 estimates pi reproducibly. Python twin of native/src/montecarlo_pi.c.
#
# Work units: points. State: units (points done), s (the four xoshiro words), inside.
# MicroPython's small ints are 31-bit: every uint32/uint64 result is masked explicitly.
from edge_agent.core.kernels.base import check_int, check_keys

NAME = "montecarlo_pi"

MAX_SEED = (1 << 64) - 1
MAX_POINTS = 1 << 32

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_CIRCLE = 1 << 64  # inside iff x*x + y*y < 2**64
# MicroPython's range() takes only machine-word ints: loop in blocks no larger than this.
_BLOCK = 1 << 20

_KEYS = ("seed", "points")


def validate(params):
    check_keys(params, _KEYS)
    return {
        "seed": check_int(params, "seed", 0, MAX_SEED),
        "points": check_int(params, "points", 1, MAX_POINTS),
    }


def work_units(params):
    return params["points"]


def seed_state(seed):
    """xoshiro128** state from a 64-bit seed. Never all zero: splitmix64's output mix is a
    bijection and its two inputs differ, so its two outputs cannot both be zero."""
    x = seed
    s = []
    for _ in range(2):
        x = (x + 0x9E3779B97F4A7C15) & _M64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        z ^= z >> 31
        s.append(z & _M32)
        s.append(z >> 32)
    return s


def start(params):
    return {"units": 0, "s": seed_state(params["seed"]), "inside": 0}


def step(params, state, max_units, points_fn=None):
    """Draw the next points (at least one, at most max_units) with
    points_fn(s, n) -> (s, inside): run_points by default, the C backend passes its own."""
    n = min(max(1, max_units), params["points"] - state["units"])
    s, inside = (points_fn or run_points)(state["s"], n)
    state["s"] = s
    state["inside"] += inside
    state["units"] += n
    return n


def result(params, state):
    return {"inside": state["inside"], "points": state["units"]}


def run_points(s, n):
    """Draw n points from state s; return (new state, how many fell inside)."""
    s0, s1, s2, s3 = s
    inside = 0
    while n > 0:
        block = min(n, _BLOCK)
        n -= block
        for _ in range(block):
            # xoshiro128** twice (x, then y), written out: a call per output costs a third.
            r = (s1 * 5) & _M32
            x = ((((r << 7) | (r >> 25)) & _M32) * 9) & _M32
            t = (s1 << 9) & _M32
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 11) | (s3 >> 21)) & _M32
            r = (s1 * 5) & _M32
            y = ((((r << 7) | (r >> 25)) & _M32) * 9) & _M32
            t = (s1 << 9) & _M32
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 11) | (s3 >> 21)) & _M32
            if x * x + y * y < _CIRCLE:
                inside += 1
    return [s0, s1, s2, s3], inside
