"""Train the digits MLP (64 -> 32 -> 10), quantize it to int8, write gateway/data/digits_mlp.cbor.

    .venv/bin/python scripts/train_digits_mlp.py            # (re)write the data file
    .venv/bin/python scripts/train_digits_mlp.py --check    # exit 1 unless the file is up to date

Deterministic: fixed seeds, float64 full-batch Adam (no minibatch shuffling), numpy's legacy
RandomState stream (frozen by NEP 19), so the same numpy build gives the same bytes.

Quantization (docs/JOBS.md has the derivation), per layer, for the gemm_i8 kernel:
- inputs: digits pixels are integers 0..16; the float model sees x = pixel / 16, the int8 model
  the pixel itself (scale 1/16, zero point 0): exact.
- weights: symmetric per-tensor, s_w = max|W| / 127, q_w = clip(rint(W / s_w), -127, 127).
- hidden activations: asymmetric, zero point -128, s_h = max h over the training set / 255, so
  ReLU's [0, max] uses all 256 int8 codes; the kernel's relu clamp to [out_zero_point, 127] is
  exactly ReLU. The next layer has no input zero point, so it is folded into that layer's bias:
  sum_k q_w (q_a - z_a) = sum_k q_w q_a - z_a * sum_k q_w.
- logits: symmetric, zero point 0, s_out = max |logit| over the training set / 127.
- bias: int32, q_b = rint(b / (s_in * s_w)) (- z_in * row sums of q_w).
- requantization: S = s_in * s_w / s_out = multiplier * 2**-shift with multiplier in
  [2**30, 2**31), the kernel computing floor((acc * multiplier + 2**(shift-1)) / 2**shift).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from edge_agent import kernels  # noqa: E402
from edge_agent.core import cbor  # noqa: E402

OUT = ROOT / "gateway" / "data" / "digits_mlp.cbor"
FORMAT = "edge-grid/digits-mlp/1"
SEED = 20240611
HIDDEN = 32
CLASSES = 10
PIXEL_MAX = 16
TEST_FRACTION = 0.2
STEPS = 600
LEARNING_RATE = 0.01
WEIGHT_DECAY = 1e-4
HIDDEN_ZERO_POINT = -128

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    x_train: Ints  # pixels 0..16, one row per sample
    y_train: Ints
    x_test: Ints
    y_test: Ints


@dataclass(frozen=True)
class FloatMLP:
    w1: Floats  # HIDDEN x 64 (out_features x in_features, like the kernel's w)
    b1: Floats
    w2: Floats  # CLASSES x HIDDEN
    b2: Floats

    def hidden(self, x: Floats) -> Floats:
        out: Floats = np.maximum(x @ self.w1.T + self.b1, 0.0)
        return out

    def logits(self, x: Floats) -> Floats:
        out: Floats = self.hidden(x) @ self.w2.T + self.b2
        return out


def load_split(seed: int = SEED) -> Split:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.int64)
    y = np.asarray(digits.target, dtype=np.int64)
    if x.min() < 0 or x.max() > PIXEL_MAX:
        raise SystemExit("digits pixels outside 0..16: the exact int8 input mapping needs them")
    order = np.random.RandomState(seed).permutation(len(x))
    n_test = round(len(x) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test])


def train(split: Split, seed: int = SEED) -> FloatMLP:
    """Full-batch Adam on softmax cross-entropy with a little L2, in float64."""
    rng = np.random.RandomState(seed + 1)
    x = split.x_train / PIXEL_MAX
    onehot = np.eye(CLASSES)[split.y_train]
    k = x.shape[1]
    params = [
        rng.normal(0.0, math.sqrt(2.0 / k), (HIDDEN, k)),
        np.zeros(HIDDEN),
        rng.normal(0.0, math.sqrt(1.0 / HIDDEN), (CLASSES, HIDDEN)),
        np.zeros(CLASSES),
    ]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, STEPS + 1):
        w1, b1, w2, b2 = params
        pre = x @ w1.T + b1
        h = np.maximum(pre, 0.0)
        z = h @ w2.T + b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        dz = (p - onehot) / len(x)
        dh = (dz @ w2) * (pre > 0)
        grads = [dh.T @ x + WEIGHT_DECAY * w1, dh.sum(0), dz.T @ h + WEIGHT_DECAY * w2, dz.sum(0)]
        for i, g in enumerate(grads):
            moments[i] = beta1 * moments[i] + (1 - beta1) * g
            squares[i] = beta2 * squares[i] + (1 - beta2) * g * g
            step = LEARNING_RATE * (moments[i] / (1 - beta1**t))
            params[i] = params[i] - step / (np.sqrt(squares[i] / (1 - beta2**t)) + eps)
    return FloatMLP(*params)


def fixed_point(scale: float) -> tuple[int, int]:
    """(multiplier, shift) with multiplier * 2**-shift ~= scale and 2**30 <= multiplier < 2**31."""
    if not scale > 0:
        raise SystemExit(f"requantization scale {scale} is not positive")
    mantissa, exponent = math.frexp(scale)  # scale = mantissa * 2**exponent, 0.5 <= mantissa < 1
    multiplier = round(mantissa * (1 << 31))
    shift = 31 - exponent
    if multiplier == 1 << 31:  # mantissa rounded up to 1.0
        multiplier >>= 1
        shift -= 1
    if not 1 <= shift <= 62:
        raise SystemExit(f"requantization scale {scale} needs shift {shift}, outside 1..62")
    return multiplier, shift


def symmetric_int8(w: Floats) -> tuple[Ints, float]:
    scale = float(np.abs(w).max()) / 127
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int64), scale


def int32_le(values: Ints) -> bytes:
    if values.min() < -(1 << 31) or values.max() >= 1 << 31:
        raise SystemExit("a quantized bias does not fit int32")
    return values.astype("<i4").tobytes()


def quantize_layer(
    w: Floats, b: Floats, *, in_scale: float, in_zero_point: int, out_scale: float,
    out_zero_point: int, relu: bool,
) -> dict[str, Any]:
    """One gemm_i8 layer (the kernel's param names) computing W x + b from int8 inputs."""
    q_w, w_scale = symmetric_int8(w)
    q_b = np.rint(b / (in_scale * w_scale)).astype(np.int64) - in_zero_point * q_w.sum(axis=1)
    multiplier, shift = fixed_point(in_scale * w_scale / out_scale)
    n, k = q_w.shape
    return {
        "n": int(n), "k": int(k), "w": q_w.astype(np.int8).tobytes(), "bias": int32_le(q_b),
        "multiplier": multiplier, "shift": shift, "out_zero_point": out_zero_point, "relu": relu,
    }


def quantize(model: FloatMLP, split: Split) -> list[dict[str, Any]]:
    x_train = split.x_train / PIXEL_MAX
    hidden_scale = float(model.hidden(x_train).max()) / 255
    logit_scale = float(np.abs(model.logits(x_train)).max()) / 127
    layer1 = quantize_layer(model.w1, model.b1, in_scale=1 / PIXEL_MAX, in_zero_point=0,
                            out_scale=hidden_scale, out_zero_point=HIDDEN_ZERO_POINT, relu=True)
    layer2 = quantize_layer(model.w2, model.b2, in_scale=hidden_scale,
                            in_zero_point=HIDDEN_ZERO_POINT, out_scale=logit_scale,
                            out_zero_point=0, relu=False)
    return [layer1, layer2]


def int8_logits(layers: list[dict[str, Any]], inputs: bytes, samples: int) -> bytes:
    """The int8 pipeline through the real kernel registry (C backend)."""
    a = inputs
    for layer in layers:
        a = kernels.run("gemm_i8", {**layer, "m": samples, "a": a})["out"]
    return a


def argmax_int8(logits: bytes, classes: int) -> list[int]:
    """Per row, the index of the largest signed logit; ties go to the lowest index."""
    signed = np.frombuffer(logits, dtype=np.int8).reshape(-1, classes)
    return [int(i) for i in signed.argmax(axis=1)]  # numpy's argmax picks the first maximum


def build_document(seed: int = SEED) -> dict[str, Any]:
    split = load_split(seed)
    model = train(split, seed)
    layers = quantize(model, split)
    inputs = split.x_test.astype(np.int8).tobytes()
    labels = [int(v) for v in split.y_test]
    float_pred = model.logits(split.x_test / PIXEL_MAX).argmax(axis=1)
    int8_pred = argmax_int8(int8_logits(layers, inputs, len(labels)), CLASSES)
    return {
        "format": FORMAT,
        "seed": seed,
        "input_k": int(split.x_test.shape[1]),
        "classes": CLASSES,
        "layers": layers,
        "train_count": len(split.y_train),
        "test_count": len(labels),
        "test_inputs": inputs,
        "test_labels": bytes(labels),
        "float_correct": int((float_pred == split.y_test).sum()),
        "int8_correct": sum(p == y for p, y in zip(int8_pred, labels, strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    doc = build_document()
    data = cbor.dumps(doc)
    count = doc["test_count"]
    print(f"float accuracy {doc['float_correct']}/{count} = {doc['float_correct'] / count:.4f}; "
          f"int8 accuracy {doc['int8_correct']}/{count} = {doc['int8_correct'] / count:.4f}; "
          f"{len(data)} bytes")
    if args.check:
        same = args.out.exists() and args.out.read_bytes() == data
        print(f"{args.out}: {'up to date' if same else 'DIFFERS'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
