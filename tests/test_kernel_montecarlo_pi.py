"""montecarlo_pi: C against the pure-Python twin, known answers for the seeding, the exact
inside boundary, chunking, and every bound rejected with KernelError."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import kernels, native
from edge_agent.core.kernels import montecarlo_pi
from edge_agent.kernels import KernelError

M32 = 0xFFFFFFFF
seeds = st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))


def test_seeding_matches_splitmix64_known_answers() -> None:
    # splitmix64 from 0 gives e220a8397b1dcdaf, 6e789e6aa1b965f4 (Vigna's reference code).
    expected = [0x7B1DCDAF, 0xE220A839, 0xA1B965F4, 0x6E789E6A]
    assert montecarlo_pi.seed_state(0) == expected
    assert native.montecarlo_pi_seed_state(0) == expected


@settings(max_examples=300)
@given(seeds)
def test_c_seeding_equals_python(seed: int) -> None:
    state = montecarlo_pi.seed_state(seed)
    assert native.montecarlo_pi_seed_state(seed) == state
    assert any(state) and all(0 <= s <= M32 for s in state)


@settings(max_examples=800)
@given(seeds, st.integers(1, 3000))
def test_c_equals_python_twin(seed: int, points: int) -> None:
    p = {"seed": seed, "points": points}
    c = kernels.run("montecarlo_pi", p, backend="c")
    assert c == kernels.run("montecarlo_pi", p, backend="python")
    assert c["points"] == points and 0 <= c["inside"] <= points


@settings(max_examples=150)
@given(seeds, st.integers(1, 2000), st.data())
def test_chunked_equals_unchunked(seed: int, points: int, data: st.DataObject) -> None:
    p = {"seed": seed, "points": points}
    whole = kernels.run("montecarlo_pi", p, backend="c")
    chunk = data.draw(st.integers(1, points))
    for backend in ("c", "python"):
        assert kernels.run("montecarlo_pi", p, backend=backend, chunk_units=chunk) == whole


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & M32


def _output_preimage(out: int) -> int:
    """The s1 for which xoshiro128** outputs ``out``: rotl(s1 * 5, 7) * 9 inverted mod 2**32."""
    return (_rotl(out * pow(9, -1, 2**32) & M32, 25) * pow(5, -1, 2**32)) & M32


def state_drawing(x: int, y: int) -> list[int]:
    """A state whose first point is (x, y). The output depends on s1 only, and the next s1 is
    s1 ^ s2 ^ s0, so s0 = 0 and s2 = s1 ^ s1' give the second output."""
    s1 = _output_preimage(x)
    return [0, s1, s1 ^ _output_preimage(y), 1]


@pytest.mark.parametrize(
    ("x", "y", "inside"),
    # (2**32-1)**2 = 2**64 - 2**33 + 1, so y*y must stay below 2**33 - 1: 92681**2 does,
    # 92682**2 does not. A wrapping uint64 sum or a float compare would get these wrong.
    [(M32, 92681, 1), (M32, 92682, 0), (92681, M32, 1), (92682, M32, 0), (M32, M32, 0), (0, 0, 1)],
)
def test_inside_boundary_is_exact(x: int, y: int, inside: int) -> None:
    state = state_drawing(x, y)
    assert (x * x + y * y < 2**64) == bool(inside)
    for step in (montecarlo_pi.run_points, native._montecarlo_pi_points):
        assert step(state, 1)[1] == inside


def test_estimate_converges_to_pi() -> None:
    points = 20_000_000
    result = kernels.run("montecarlo_pi", {"seed": 2024, "points": points}, backend="c")
    # Standard error of 4 * inside / points is 4 * sqrt(p(1-p)/N) ~ 0.00037: allow 5 of them.
    assert abs(4 * result["inside"] / points - math.pi) < 0.002


BAD_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({"seed": -1}, "'seed'=-1 out of range"),
    ({"seed": 2**64}, "out of range"),
    ({"seed": True}, "'seed' must be an int"),
    ({"seed": "1"}, "'seed' must be an int"),
    ({"points": 0}, "'points'=0 out of range"),
    ({"points": 2**32 + 1}, "out of range"),
    ({"points": 10.0}, "'points' must be an int"),
    ({"points": None}, "missing param 'points'"),
    ({"radius": 1}, "unknown param 'radius'"),
]


@pytest.mark.parametrize(("change", "message"), BAD_PARAMS)
def test_bad_params_are_rejected(change: dict[str, Any], message: str) -> None:
    with pytest.raises(KernelError, match=message):
        kernels.run("montecarlo_pi", {"seed": 1, "points": 10} | change)


@pytest.mark.parametrize("missing", ["seed", "points"])
def test_required_params(missing: str) -> None:
    p = {"seed": 1, "points": 10}
    del p[missing]
    with pytest.raises(KernelError, match=f"missing param '{missing}'"):
        montecarlo_pi.validate(p)
