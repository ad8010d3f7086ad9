"""gemm_i8: the C paths (scalar and AVX2) against the pure-Python twin and an independent numpy
int64 reference; chunking; every bound rejected with KernelError."""

from __future__ import annotations

import random
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import kernels, native
from edge_agent.core.kernels import gemm_i8
from edge_agent.kernels import KernelError

INT32_MAX = 2**31 - 1
IMPLS = native.gemm_i8_impls()


def test_this_machine_has_both_paths() -> None:
    # The AVX2 path must be covered where it exists (the development machine and CI have it).
    assert IMPLS == ["scalar", "avx2"]


def int8_bytes(values: list[int]) -> bytes:
    return struct.pack(f"{len(values)}b", *values)


def numpy_reference(p: dict[str, Any]) -> bytes:
    """gemm_i8's documented semantics in numpy int64: an independent third implementation."""
    a = np.frombuffer(p["a"], dtype=np.int8).astype(np.int64).reshape(p["m"], p["k"])
    w = np.frombuffer(p["w"], dtype=np.int8).astype(np.int64).reshape(p["n"], p["k"])
    bias = np.frombuffer(p["bias"], dtype="<i4").astype(np.int64)
    acc = a @ w.T + bias
    shift = p["shift"]
    # Python ints: acc * multiplier may pass 2**62; floor division is the floor shift.
    flat = [(int(v) * p["multiplier"] + (1 << (shift - 1))) >> shift for v in acc.ravel()]
    lo = p["out_zero_point"] if p["relu"] else -128
    out = np.clip(np.array(flat, dtype=object) + p["out_zero_point"], lo, 127)
    return np.array(out, dtype=np.int64).astype(np.int8).tobytes()


def c_rows(p: dict[str, Any], impl: str) -> bytes:
    v = gemm_i8.validate(p)
    return native.gemm_i8_rows(v, 0, v["m"], impl)


@st.composite
def gemm_cases(draw: st.DrawFn, max_m: int = 5, max_n: int = 9, max_k: int = 70) -> dict[str, Any]:
    m = draw(st.integers(1, max_m))
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, max_k))
    # Operands drawn from a seeded Random: hypothesis-built lists of this size are slow to draw.
    rng = draw(st.randoms(use_true_random=False))
    values = draw(st.sampled_from([[-128, 127], [-128, 127, -1, 0, 1], list(range(-128, 128))]))
    a = [rng.choice(values) for _ in range(m * k)]
    w = [rng.choice(values) for _ in range(n * k)]
    bias_bound = INT32_MAX - k * gemm_i8.MAX_ABS_PRODUCT
    bias_value = st.one_of(
        st.sampled_from([0, bias_bound, -bias_bound, 1, -1]),
        st.integers(-4 * 128 * 128, 4 * 128 * 128),
        st.integers(-bias_bound, bias_bound),
    )
    bias = draw(st.lists(bias_value, min_size=n, max_size=n))
    shift = draw(st.integers(1, gemm_i8.MAX_SHIFT))
    # Mostly a realistic scale (outputs spread over int8 rather than all saturated), sometimes any.
    useful = max(1, min(INT32_MAX, (1 << shift) // (k * 128)))
    multiplier = draw(
        st.one_of(st.integers(1, useful), st.integers(1, INT32_MAX), st.just(INT32_MAX))
    )
    return {
        "m": m,
        "n": n,
        "k": k,
        "a": int8_bytes(a),
        "w": int8_bytes(w),
        "bias": struct.pack(f"<{n}i", *bias),
        "multiplier": multiplier,
        "shift": shift,
        "out_zero_point": draw(st.integers(-128, 127)),
        "relu": draw(st.booleans()),
    }


@settings(max_examples=1000)
@given(gemm_cases())
def test_c_paths_equal_python_twin(p: dict[str, Any]) -> None:
    expected = kernels.run("gemm_i8", p, backend="python")["out"]
    assert len(expected) == p["m"] * p["n"]
    assert kernels.run("gemm_i8", p, backend="c")["out"] == expected
    for impl in IMPLS:
        assert c_rows(p, impl) == expected


@settings(max_examples=150)
@given(gemm_cases(), st.data())
def test_chunked_equals_unchunked(p: dict[str, Any], data: st.DataObject) -> None:
    whole = kernels.run("gemm_i8", p, backend="c")
    chunk = data.draw(st.integers(1, p["m"] * p["n"] * p["k"]))
    for backend in ("c", "python"):
        assert kernels.run("gemm_i8", p, backend=backend, chunk_units=chunk) == whole


def int8_operands(rng: random.Random, m: int, n: int, k: int, bias_bound: int) -> dict[str, Any]:
    """The shape, random int8 a (m x k) and w (n x k), and n int32 biases within +-bias_bound."""
    return {
        "m": m,
        "n": n,
        "k": k,
        "a": rng.randbytes(m * k),
        "w": rng.randbytes(n * k),
        "bias": struct.pack(f"<{n}i", *(rng.randint(-bias_bound, bias_bound) for _ in range(n))),
    }


def random_case(rng: random.Random, m: int, n: int, k: int, relu: bool = False) -> dict[str, Any]:
    """Random int8 operands, with bias and scale sized so outputs spread over int8."""
    spread = int(74 * 74 * k**0.5)  # about the standard deviation of a random int8 dot product
    return {
        **int8_operands(rng, m, n, k, spread),
        "multiplier": (1 << 32) * 25 // spread + rng.randint(0, 1000),
        "shift": 32,
        "out_zero_point": rng.randint(-10, 10),
        "relu": relu,
    }


# Shapes around the AVX2 micro-kernel's edges (2 rows x 4 columns x 16 bytes of k), and k large
# enough that w is split into several cache blocks (n > 192 KiB / k rows per block).
@pytest.mark.parametrize(
    ("m", "n", "k"),
    [(1, 1, 1), (2, 4, 16), (3, 5, 15), (3, 7, 17), (5, 9, 33), (4, 65, 64), (7, 13, 100),
     (2, 3, 1000), (3, 150, 4100), (1, 130, 9000)],
)
def test_c_paths_equal_numpy_reference(m: int, n: int, k: int) -> None:
    rng = random.Random(m * 7919 + n * 31 + k)
    p = gemm_i8.validate(random_case(rng, m, n, k, relu=k % 2 == 0))
    expected = numpy_reference(p)
    assert len(set(expected)) > min(10, len(expected) // 2)  # so a wrong sum would show
    for impl in IMPLS:
        assert c_rows(p, impl) == expected


def test_largest_accumulator_is_exact() -> None:
    # k = 65536 products of (-128)(-128) = 2**30, plus the largest bias allowed: INT32_MAX.
    k = gemm_i8.MAX_K
    bound = INT32_MAX - k * gemm_i8.MAX_ABS_PRODUCT
    p = {"m": 1, "n": 2, "k": k, "a": b"\x80" * k, "w": b"\x80" * k + b"\x7f" * k,
         "bias": struct.pack("<2i", bound, -bound), "multiplier": 1, "shift": 24}
    expected = numpy_reference(gemm_i8.validate(p))
    assert expected == int8_bytes([127, max(-128, (-(k * 16256) - bound + (1 << 23)) >> 24)])
    assert kernels.run("gemm_i8", p, backend="python")["out"] == expected
    for impl in IMPLS:
        assert c_rows(p, impl) == expected
    p["bias"] = struct.pack("<2i", bound + 1, 0)
    with pytest.raises(KernelError, match="overflow the int32 accumulator"):
        gemm_i8.validate(p)


def test_requant_rounds_half_up_and_floors_negatives() -> None:
    # acc = bias (zero input): (acc + 2) >> 2 rounds .5 up, towards +inf, for negatives too.
    accs = [-7, -6, -5, -2, -1, 0, 1, 2, 5, 6]
    p = {"m": 1, "n": len(accs), "k": 1, "a": b"\x00", "w": bytes(len(accs)),
         "bias": struct.pack(f"<{len(accs)}i", *accs), "multiplier": 1, "shift": 2}
    expected = int8_bytes([-2, -1, -1, 0, 0, 0, 0, 1, 1, 2])
    assert kernels.run("gemm_i8", p, backend="python")["out"] == expected
    for impl in IMPLS:
        assert c_rows(p, impl) == expected


def test_layers_chain_like_an_mlp() -> None:
    # A 2-layer int8 MLP: layer 1's output rows are layer 2's activations, on both backends.
    rng = random.Random(5)
    layer1 = random_case(rng, 8, 32, 64, relu=True)
    outs = []
    for backend in ("c", "python"):
        hidden = kernels.run("gemm_i8", layer1, backend=backend)["out"]
        layer2 = random_case(random.Random(6), 8, 10, 32) | {"a": hidden}
        outs.append(kernels.run("gemm_i8", layer2, backend=backend)["out"])
    assert outs[0] == outs[1]
    assert len(outs[0]) == 80


def valid_params() -> dict[str, Any]:
    return random_case(random.Random(1), 2, 3, 4)


BAD_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({"m": 0}, "'m'=0 out of range"),
    ({"m": 4097}, "out of range"),
    ({"n": -1}, "'n'=-1 out of range"),
    ({"k": 65537}, "'k'=65537 out of range"),
    ({"m": True}, "'m' must be an int"),
    ({"k": 4.0}, "'k' must be an int"),
    ({"relu": 1}, "'relu' must be a bool"),
    ({"a": b"\x00" * 7}, "'a' has 7 bytes"),
    ({"a": bytearray(8)}, "'a' must be bytes"),
    ({"w": b"\x00" * 13}, "'w' has 13 bytes"),
    ({"w": "x" * 12}, "'w' must be bytes"),
    ({"bias": b"\x00" * 11}, "'bias' has 11 bytes"),
    ({"bias": None}, "missing param 'bias'"),
    ({"multiplier": 0}, "'multiplier'=0 out of range"),
    ({"multiplier": 2**31}, "out of range"),
    ({"shift": 0}, "'shift'=0 out of range"),
    ({"shift": 63}, "'shift'=63 out of range"),
    ({"out_zero_point": 128}, "'out_zero_point'=128 out of range"),
    ({"out_zero_point": -129}, "out of range"),
    ({"out_zero_point": False}, "must be an int"),
    ({"transpose": True}, "unknown param 'transpose'"),
    ({"m": 4096, "n": 4096, "k": 129}, "multiply-accumulates"),
    ({"m": 1, "n": 1, "k": 65536, "a": b"", "w": b""}, "'a' has 0 bytes"),
    ({"m": 300, "n": 1, "k": 65536}, "operand of"),
]


@pytest.mark.parametrize(("change", "message"), BAD_PARAMS)
def test_bad_params_are_rejected(change: dict[str, Any], message: str) -> None:
    with pytest.raises(KernelError, match=message):
        kernels.run("gemm_i8", valid_params() | change)


@pytest.mark.parametrize("missing", ["m", "n", "k", "a", "w", "multiplier", "shift"])
def test_required_params(missing: str) -> None:
    p = valid_params()
    del p[missing]
    with pytest.raises(KernelError, match=f"missing param '{missing}'"):
        gemm_i8.validate(p)


def test_defaults_are_zero_bias_zero_point_no_relu() -> None:
    p = valid_params()
    explicit = p | {"bias": bytes(12), "out_zero_point": 0, "relu": False}
    for key in ("bias", "out_zero_point", "relu"):
        del p[key]
    assert gemm_i8.validate(p) == gemm_i8.validate(explicit)


def test_c_refuses_bounds_even_without_validation() -> None:
    # The C entry point checks the same bounds itself, so a caller that skips validate() gets
    # an error, not an overflowing accumulator.
    p = gemm_i8.validate(valid_params()) | {"bias": struct.pack("<3i", INT32_MAX, 0, 0)}
    for impl in IMPLS:
        with pytest.raises(RuntimeError, match="refused"):
            native.gemm_i8_rows(p, 0, 2, impl)


def test_result_rejects_a_state_with_missing_rows() -> None:
    p = gemm_i8.validate(valid_params())
    with pytest.raises(KernelError, match="state holds 3 output bytes, want 6"):
        gemm_i8.result(p, {"units": 24, "out": [b"\x00" * 3]})
