# int8 GEMM with int32 accumulation and fixed-point requantisation: one quantized Linear layer,
#   out[i][j] = requant(bias[j] + sum_x a[i][x] * w[j][x])
#   requant(acc) = clamp(floor((acc * multiplier + 2**(shift-1)) / 2**shift) + out_zero_point)
# clamped to [-128, 127], or to [out_zero_point, 127] with relu. a is m x k (activations), w is
# n x k (weights, out_features x in_features), both row-major int8; out is m x n int8, so layers
# chain: one layer's out is the next layer's a. Python twin of native/src/gemm_i8.c, bit for bit.
#
# Work units: m * n * k multiply-accumulates. Chunks are whole rows of out.
# State: units, out (a list with one bytes object of whole output rows per step).
import struct

from edge_agent.core.kernels.base import (
    KernelError,
    check_bool,
    check_bytes,
    check_int,
    check_keys,
)

NAME = "gemm_i8"

MAX_DIM = 4096  # m and n
MAX_K = 65536
MAX_MACS = 1 << 31  # m * n * k
MAX_OPERAND = 1 << 24  # bytes of a, and of w
MAX_ABS_PRODUCT = 128 * 128  # the largest |a * w| for int8 a, w
ACC_MAX = (1 << 31) - 1  # the int32 accumulator
MAX_SHIFT = 62  # |acc * multiplier| < 2**62, + 2**61 rounding: still inside int64

_KEYS = ("m", "n", "k", "a", "w", "bias", "multiplier", "shift", "out_zero_point", "relu")


def validate(params):
    check_keys(params, _KEYS)
    m = check_int(params, "m", 1, MAX_DIM)
    n = check_int(params, "n", 1, MAX_DIM)
    k = check_int(params, "k", 1, MAX_K)
    if m * n * k > MAX_MACS:
        raise KernelError("m*n*k = %d multiply-accumulates, more than %d" % (m * n * k, MAX_MACS))
    if max(m, n) * k > MAX_OPERAND:
        raise KernelError("an operand of %d bytes is larger than %d" % (max(m, n) * k, MAX_OPERAND))
    a = check_bytes(params, "a", m * k, m * k)
    w = check_bytes(params, "w", n * k, n * k)
    bias = check_bytes(params, "bias", 4 * n, 4 * n, bytes(4 * n))
    max_abs_bias = max([abs(b) for b in _biases(bias, n)])
    if k * MAX_ABS_PRODUCT + max_abs_bias > ACC_MAX:
        raise KernelError(
            "k=%d with |bias| up to %d could overflow the int32 accumulator "
            "(need k*16384 + max|bias| <= 2**31-1)" % (k, max_abs_bias)
        )
    return {
        "m": m,
        "n": n,
        "k": k,
        "a": a,
        "w": w,
        "bias": bias,
        "multiplier": check_int(params, "multiplier", 1, ACC_MAX),
        "shift": check_int(params, "shift", 1, MAX_SHIFT),
        "out_zero_point": check_int(params, "out_zero_point", -128, 127, 0),
        "relu": check_bool(params, "relu", False),
    }


def work_units(params):
    return params["m"] * params["n"] * params["k"]


def start(params):
    return {"units": 0, "out": []}


def step(params, state, max_units, rows_fn=None):
    """Compute the next whole rows (at least one, at most max_units worth) with
    rows_fn(params, first_row, row_count) -> bytes: this module's compute_rows by default, the
    C backend passes its own."""
    per_row = params["n"] * params["k"]
    row = state["units"] // per_row
    rows = min(params["m"] - row, max(1, max_units // per_row))
    state["out"].append((rows_fn or compute_rows)(params, row, rows))
    state["units"] += rows * per_row
    return rows * per_row


def result(params, state):
    out = b"".join(state["out"])
    want = params["m"] * params["n"]
    if len(out) != want:
        raise KernelError("state holds %d output bytes, want %d" % (len(out), want))
    return {"out": out}


def _biases(bias, n):
    return struct.unpack("<%di" % n, bias)


def _int8_rows(data, count, k):
    fmt = "%db" % k
    return [struct.unpack(fmt, data[r * k:(r + 1) * k]) for r in range(count)]


def compute_rows(params, row, rows):
    """Output rows [row, row + rows) as bytes."""
    n = params["n"]
    k = params["k"]
    w_rows = _int8_rows(params["w"], n, k)
    biases = _biases(params["bias"], n)
    multiplier = params["multiplier"]
    shift = params["shift"]
    rounding = 1 << (shift - 1)
    zero_point = params["out_zero_point"]
    lo = zero_point if params["relu"] else -128
    a = params["a"][row * k:(row + rows) * k]
    out = bytearray(rows * n)
    o = 0
    for a_row in _int8_rows(a, rows, k):
        for j in range(n):
            acc = biases[j]
            for x, y in zip(a_row, w_rows[j]):  # noqa: B905 - MicroPython's zip has no strict=
                acc += x * y
            # Python's >> floors for negative numbers too, which is the semantics C reproduces.
            v = ((acc * multiplier + rounding) >> shift) + zero_point
            if v < lo:
                v = lo
            elif v > 127:
                v = 127
            out[o] = v & 0xFF
            o += 1
    return bytes(out)
