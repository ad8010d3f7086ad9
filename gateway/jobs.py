"""Operators' jobs: split a :class:`JobSpec` into micro-tasks for the kernel registry, and
assemble the tasks' results into the job's output.

- :func:`plan` gives the stages and the first stage's task params (a deterministic function of
  the spec); later stages, whose inputs are the previous stage's outputs, come from
  :func:`next_stage`. Every task's params pass the kernel's ``validate``.
- Operands shared by every task of a stage (a layer's weights) travel once, as content-addressed
  blobs: params hold ``{"blob": sha256(bytes)}`` and :func:`resolve` puts the bytes back.
- :func:`assemble` checks each result's shape and builds the output (canonical-CBOR-able: ints,
  bytes, lists, strings; the ``*_approx`` strings are for display only).
- :func:`compute_locally` runs the same plan on the gateway: the reference distributed results
  must equal exactly.

docs/JOBS.md explains the format, splitting and the MLP's quantization.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from edge_agent import kernels
from edge_agent.core import blobs as core_blobs
from edge_agent.core import cbor
from edge_agent.core import kernels as registry
from gateway.jobspec import (
    GemmWork,
    JobError,
    JobSpec,
    MlpDigitsWork,
    MonteCarloPiWork,
    Sha256SearchWork,
)

__all__ = [
    "MAX_TASKS",
    "MAX_TASK_PARAMS_BYTES",
    "MODEL_PATH",
    "DigitsModel",
    "JobError",
    "JobPlan",
    "Layer",
    "Stage",
    "Task",
    "assemble",
    "blob_ref",
    "compute_locally",
    "load_model",
    "montecarlo_seed",
    "next_stage",
    "plan",
    "resolve",
]

MODEL_PATH = pathlib.Path(__file__).resolve().parent / "data" / "digits_mlp.cbor"
MODEL_FORMAT = "edge-grid/digits-mlp/1"
MAX_MODEL_BYTES = 1 << 20
MAX_TASKS = 1 << 16  # per job, all stages
# One task's params (blobs referenced, not inlined) must fit a lease message, which devices decode
# with the portable codec's default 64 KiB limit: leave 16 KiB for the envelope and signature.
MAX_TASK_PARAMS_BYTES = cbor.MAX_SIZE - (16 << 10)
MONTECARLO_SEED_DOMAIN = b"edge-grid/montecarlo_pi/seed/v1\x00"
GEMM = "gemm_i8"

# The split field a too-big or too-many-tasks error points at, per kind.
_SPLIT_FIELD = {
    "mlp_digits": "split.samples_per_task",
    "gemm": "split.rows_per_task",
    "montecarlo_pi": "split.points_per_task",
    "sha256_search": "split.nonces_per_task",
}


# --- plan structures --------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    stage: int
    index: int
    kernel: str
    params: dict[str, Any]  # canonical-CBOR-able; shared operands as {"blob": sha256}
    work_units: int


@dataclass(frozen=True)
class Stage:
    index: int
    kernel: str
    task_count: int
    # None when the params depend on the previous stage's results: see next_stage(). Task i of
    # such a stage needs only result i of the previous one.
    tasks: tuple[Task, ...] | None


@dataclass(frozen=True)
class JobPlan:
    spec: JobSpec
    stages: tuple[Stage, ...]
    blobs: dict[bytes, bytes]  # sha256(data) -> data, every blob any stage references

    @property
    def task_count(self) -> int:
        return sum(stage.task_count for stage in self.stages)


# --- blobs ------------------------------------------------------------------------------------


def blob_ref(data: bytes, blobs: dict[bytes, bytes]) -> dict[str, bytes]:
    """Register ``data`` in ``blobs`` and return the params value that references it."""
    digest = hashlib.sha256(data).digest()
    blobs[digest] = data
    return {"blob": digest}


def resolve(params: Mapping[str, Any], blobs: Mapping[bytes, bytes], *, verify: bool = True
            ) -> dict[str, Any]:
    """``params`` with each ``{"blob": hash}`` replaced by its bytes (edge_agent.core.blobs)."""
    try:
        resolved: dict[str, Any] = core_blobs.resolve(dict(params), blobs, verify)
    except core_blobs.BlobError as e:
        raise JobError(str(e)) from None
    return resolved


# --- the digits model -------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One gemm_i8 layer: every param but the rows (m) and the activations (a)."""

    n: int
    k: int
    w: bytes
    bias: bytes
    multiplier: int
    shift: int
    out_zero_point: int
    relu: bool

    def params(self, rows: int, a: bytes, w: object) -> dict[str, Any]:
        return {"m": rows, "n": self.n, "k": self.k, "a": a, "w": w, "bias": self.bias,
                "multiplier": self.multiplier, "shift": self.shift,
                "out_zero_point": self.out_zero_point, "relu": self.relu}


@dataclass(frozen=True)
class DigitsModel:
    layers: tuple[Layer, ...]
    input_k: int
    classes: int
    test_count: int
    test_inputs: bytes  # test_count x input_k int8 (pixels 0..16)
    test_labels: bytes  # test_count class indices
    float_correct: int  # of the float model on the test set, for reference
    int8_correct: int  # of this int8 pipeline, as the training script measured it


_LAYER_KEYS = ("n", "k", "w", "bias", "multiplier", "shift", "out_zero_point", "relu")


@functools.cache
def load_model(path: pathlib.Path = MODEL_PATH) -> DigitsModel:
    """The int8 MLP written by scripts/train_digits_mlp.py, checked layer by layer."""

    def fail(why: str) -> JobError:
        return JobError(f"model file {path}: {why}")

    try:
        doc = cbor.loads(path.read_bytes(), max_size=MAX_MODEL_BYTES)
        if doc.get("format") != MODEL_FORMAT:
            raise TypeError(f"format is not {MODEL_FORMAT!r}")
        layers = tuple(Layer(**{key: raw[key] for key in _LAYER_KEYS}) for raw in doc["layers"])
        model = DigitsModel(
            layers=layers, input_k=doc["input_k"], classes=doc["classes"],
            test_count=doc["test_count"], test_inputs=doc["test_inputs"],
            test_labels=doc["test_labels"], float_correct=doc["float_correct"],
            int8_correct=doc["int8_correct"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise fail(f"unreadable: {exc}") from None
    width = model.input_k
    for i, layer in enumerate(layers):
        if layer.k != width:
            raise fail(f"layer {i} takes {layer.k} inputs, the previous gives {width}")
        try:
            registry.get(GEMM).validate(layer.params(1, bytes(layer.k), layer.w))
        except registry.KernelError as exc:
            raise fail(f"layer {i}: {exc}") from None
        width = layer.n
    if width != model.classes or not layers:
        raise fail(f"the last layer gives {width} outputs for {model.classes} classes")
    if (len(model.test_inputs) != model.test_count * model.input_k
            or len(model.test_labels) != model.test_count
            or any(label >= model.classes for label in model.test_labels)):
        raise fail("test inputs or labels do not match test_count")
    return model


# --- splitting --------------------------------------------------------------------------------


def _spans(total: int, per_task: int) -> list[tuple[int, int]]:
    """[(offset, count)] covering 0..total in pieces of per_task, the last one shorter."""
    return [(first, min(per_task, total - first)) for first in range(0, total, per_task)]


def _check_task_count(spec: JobSpec, count: int) -> None:
    if count > MAX_TASKS:
        raise JobError(f"{_SPLIT_FIELD[spec.kind]}: the job would have {count} tasks, more than "
                       f"{MAX_TASKS}; give each task more work")


def _task(spec: JobSpec, stage: int, index: int, kernel: str, params: dict[str, Any], *,
          blobs: Mapping[bytes, bytes]) -> Task:
    """A task whose params are checked by the kernel's own validate and fit a lease.
    ``blobs`` were made by the caller from the bytes at hand: no need to hash them again."""
    size = len(cbor.dumps(params))
    if size > MAX_TASK_PARAMS_BYTES:
        raise JobError(f"{_SPLIT_FIELD[spec.kind]}: task {stage}/{index} has {size} bytes of "
                       f"params, more than {MAX_TASK_PARAMS_BYTES}; give each task less work")
    module = registry.get(kernel)
    try:
        units = module.work_units(module.validate(resolve(params, blobs, verify=False)))
    except registry.KernelError as exc:
        raise JobError(f"params: task {stage}/{index} is refused by kernel {kernel}: "
                       f"{exc}") from None
    return Task(stage, index, kernel, params, units)


def _layer_job(spec: JobSpec) -> tuple[tuple[Layer, ...], bytes, int, int]:
    """(layers, input rows as bytes, rows, rows per task) of an mlp_digits or gemm job."""
    work = spec.work
    if isinstance(work, GemmWork):
        layer = Layer(work.n, work.k, work.w, work.bias, work.multiplier, work.shift,
                      work.out_zero_point, work.relu)
        return (layer,), work.a, work.m, work.rows_per_task
    if not isinstance(work, MlpDigitsWork):
        raise TypeError(f"not a layer job: {spec.kind}")
    model = load_model()
    samples = model.test_count if work.samples is None else work.samples
    if samples > model.test_count:
        raise JobError(f"params.samples: must be at most {model.test_count} (the model file's "
                       f"test samples), got {samples}")
    return model.layers, model.test_inputs[:samples * model.input_k], samples, \
        work.samples_per_task


def _layer_tasks(spec: JobSpec, stage: int, inputs: Sequence[bytes]) -> tuple[Task, ...]:
    """Stage ``stage`` of a layer job: one task per batch, ``inputs[i]`` the batch's rows."""
    layers, _, rows, per_task = _layer_job(spec)
    layer = layers[stage]
    blobs: dict[bytes, bytes] = {}
    w = blob_ref(layer.w, blobs)
    return tuple(
        _task(spec, stage, i, GEMM, layer.params(count, a, w), blobs=blobs)
        for i, ((_, count), a) in enumerate(zip(_spans(rows, per_task), inputs, strict=True)))


def _plan_layers(spec: JobSpec) -> JobPlan:
    layers, inputs, rows, per_task = _layer_job(spec)
    spans = _spans(rows, per_task)
    _check_task_count(spec, len(spans) * len(layers))
    k = layers[0].k
    first = _layer_tasks(spec, 0, [inputs[o * k:(o + c) * k] for o, c in spans])
    blobs: dict[bytes, bytes] = {}
    for layer in layers:
        blob_ref(layer.w, blobs)
    stages = [Stage(0, GEMM, len(first), first)]
    stages += [Stage(s, GEMM, len(spans), None) for s in range(1, len(layers))]
    return JobPlan(spec, tuple(stages), blobs)


def montecarlo_seed(job_seed: int, index: int) -> int:
    """Task ``index``'s seed: the first 8 bytes (little-endian) of
    SHA-256(domain || job seed as u64 LE || index as u64 LE)."""
    digest = hashlib.sha256(MONTECARLO_SEED_DOMAIN + struct.pack("<QQ", job_seed, index))
    return int(struct.unpack("<Q", digest.digest()[:8])[0])


def _plan_montecarlo(spec: JobSpec, work: MonteCarloPiWork) -> JobPlan:
    spans = _spans(work.points, work.points_per_task)
    _check_task_count(spec, len(spans))
    tasks = tuple(
        _task(spec, 0, i, "montecarlo_pi",
              {"seed": montecarlo_seed(work.seed, i), "points": count}, blobs={})
        for i, (_, count) in enumerate(spans))
    return JobPlan(spec, (Stage(0, "montecarlo_pi", len(tasks), tasks),), {})


def _plan_sha256(spec: JobSpec, work: Sha256SearchWork) -> JobPlan:
    spans = _spans(work.count, work.nonces_per_task)
    _check_task_count(spec, len(spans))
    tasks = tuple(
        _task(spec, 0, i, "sha256_search",
              {"prefix": work.prefix, "start": work.start + offset, "count": count,
               "target": work.target, "max_found": work.max_found}, blobs={})
        for i, (offset, count) in enumerate(spans))
    return JobPlan(spec, (Stage(0, "sha256_search", len(tasks), tasks),), {})


def plan(spec: JobSpec) -> JobPlan:
    """Split ``spec`` into stages of kernel tasks; raises JobError when a task would break a
    kernel bound or the job has more than MAX_TASKS tasks."""
    work = spec.work
    if isinstance(work, MonteCarloPiWork):
        return _plan_montecarlo(spec, work)
    if isinstance(work, Sha256SearchWork):
        return _plan_sha256(spec, work)
    return _plan_layers(spec)


# --- results ----------------------------------------------------------------------------------


def _field(results: Sequence[Mapping[str, Any]], stage: int, index: int, key: str,
           kind: type) -> Any:
    result = results[index]
    value = result.get(key) if isinstance(result, Mapping) else None
    if type(value) is not kind:
        raise JobError(f"results[{stage}][{index}].{key}: must be {kind.__name__}, "
                       f"got {type(value).__name__}")
    return value


def _counted(stage: int, results: Sequence[Mapping[str, Any]], count: int
             ) -> Sequence[Mapping[str, Any]]:
    if len(results) != count:
        raise JobError(f"results[{stage}]: want {count} task results, got {len(results)}")
    return results


def _stage_results(results: Sequence[Sequence[Mapping[str, Any]]], stage: int, count: int
                   ) -> Sequence[Mapping[str, Any]]:
    if len(results) <= stage:
        raise JobError(f"results[{stage}]: missing (got {len(results)} stages)")
    return _counted(stage, results[stage], count)


def _layer_outputs(spec: JobSpec, stage: int, results: Sequence[Mapping[str, Any]]
                   ) -> list[bytes]:
    """Each batch's ``out`` of layer ``stage``, checked against the batch's shape."""
    layers, _, rows, per_task = _layer_job(spec)
    spans = _spans(rows, per_task)
    _counted(stage, results, len(spans))
    outs = []
    for i, (_, count) in enumerate(spans):
        out = _field(results, stage, i, "out", bytes)
        if len(out) != count * layers[stage].n:
            raise JobError(f"results[{stage}][{i}].out: {len(out)} bytes, want "
                           f"{count} x {layers[stage].n}")
        outs.append(out)
    return outs


def next_stage(spec: JobSpec, stage: int, previous: Sequence[Mapping[str, Any]]
               ) -> tuple[Task, ...]:
    """The tasks of ``stage`` (>= 1) of a multi-stage job, given the results of ``stage - 1``
    in task order: task i's input rows are result i's output rows."""
    if not isinstance(spec.work, (MlpDigitsWork, GemmWork)):
        raise JobError(f"stage {stage}: a {spec.kind} job has one stage")
    layers = _layer_job(spec)[0]
    if not 1 <= stage < len(layers):
        raise JobError(f"stage {stage}: a {spec.kind} job has stages 0..{len(layers) - 1}, "
                       f"and stage 0 comes from plan()")
    return _layer_tasks(spec, stage, _layer_outputs(spec, stage - 1, previous))


def _argmax_int8(row: bytes) -> int:
    """The index of the largest signed value; ties go to the lowest index."""
    values = struct.unpack(f"{len(row)}b", row)
    return values.index(max(values))


def _approx(value: Fraction, digits: int) -> str:
    """A display string of ``value`` rounded to ``digits`` decimals, from exact integers."""
    scaled = round(value * 10**digits)
    return f"{scaled // 10**digits}.{scaled % 10**digits:0{digits}d}"


def _assemble_layers(spec: JobSpec, results: Sequence[Sequence[Mapping[str, Any]]]
                     ) -> dict[str, Any]:
    layers, _, rows, per_task = _layer_job(spec)
    batches = len(_spans(rows, per_task))
    last = len(layers) - 1
    for stage in range(last):  # intermediate stages must be complete, though only the last counts
        _stage_results(results, stage, batches)
    out = b"".join(_layer_outputs(spec, last, _stage_results(results, last, batches)))
    if isinstance(spec.work, GemmWork):
        return {"kind": spec.kind, "m": rows, "n": layers[last].n, "out": out}
    classes = layers[last].n
    labels = load_model().test_labels[:rows]
    predictions = [_argmax_int8(out[i:i + classes]) for i in range(0, len(out), classes)]
    correct = sum(p == y for p, y in zip(predictions, labels, strict=True))
    return {"kind": spec.kind, "samples": rows, "logits": out, "predictions": predictions,
            "correct": correct, "accuracy_approx": _approx(Fraction(correct, rows), 4)}


def _assemble_montecarlo(spec: JobSpec, work: MonteCarloPiWork,
                         results: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    spans = _spans(work.points, work.points_per_task)
    done = _stage_results(results, 0, len(spans))
    inside = 0
    for i, (_, count) in enumerate(spans):
        task_inside = _field(done, 0, i, "inside", int)
        if _field(done, 0, i, "points", int) != count or not 0 <= task_inside <= count:
            raise JobError(f"results[0][{i}]: want {count} points and 0..{count} inside")
        inside += task_inside
    return {"kind": spec.kind, "inside": inside, "points": work.points, "pi_num": 4 * inside,
            "pi_den": work.points, "pi_approx": _approx(Fraction(4 * inside, work.points), 9)}


def _assemble_sha256(spec: JobSpec, work: Sha256SearchWork,
                     results: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    spans = _spans(work.count, work.nonces_per_task)
    done = _stage_results(results, 0, len(spans))
    found: list[int] = []
    found_total = 0
    complete = True
    best: tuple[bytes, int] | None = None
    for i, (offset, count) in enumerate(spans):
        lo, hi = work.start + offset, work.start + offset + count
        nonces = _field(done, 0, i, "found", list)
        total = _field(done, 0, i, "found_total", int)
        best_hash = _field(done, 0, i, "best_hash", bytes)
        best_nonce = _field(done, 0, i, "best_nonce", int)
        if (any(type(v) is not int or not lo <= v < hi for v in nonces)
                or nonces != sorted(set(nonces))
                or not len(nonces) <= min(total, work.max_found) or total > count
                or len(best_hash) != 32 or not lo <= best_nonce < hi):
            raise JobError(f"results[0][{i}]: nonces (ascending, unique), counts or best "
                           f"outside task range {lo}..{hi - 1}")
        found += nonces
        found_total += total
        complete = complete and len(nonces) == total
        if best is None or (best_hash, best_nonce) < best:
            best = (best_hash, best_nonce)
    assert best is not None  # a job has at least one task
    return {"kind": spec.kind, "found": sorted(found), "found_total": found_total,
            "found_complete": complete, "best_hash": best[0], "best_nonce": best[1]}


def assemble(spec: JobSpec, stage_results: Sequence[Sequence[Mapping[str, Any]]]
             ) -> dict[str, Any]:
    """The job's output from every stage's results, each stage's in task order.

    mlp_digits: int8 logits, predicted classes (argmax, ties to the lowest index), correct count;
    gemm: the m x n int8 output; montecarlo_pi: inside/points and pi as the exact rational
    pi_num/pi_den; sha256_search: every found nonce sorted, and the job's best (hash, nonce)."""
    work = spec.work
    if isinstance(work, MonteCarloPiWork):
        return _assemble_montecarlo(spec, work, stage_results)
    if isinstance(work, Sha256SearchWork):
        return _assemble_sha256(spec, work, stage_results)
    return _assemble_layers(spec, stage_results)


def compute_locally(spec: JobSpec, backend: str = "c") -> dict[str, Any]:
    """Run the whole plan here, stage by stage, through the kernel registry: the reference."""
    job = plan(spec)
    results: list[list[dict[str, Any]]] = []
    for stage in job.stages:
        tasks = stage.tasks if stage.tasks is not None else next_stage(
            spec, stage.index, results[-1])
        results.append([kernels.run(t.kernel, resolve(t.params, job.blobs), backend)
                        for t in tasks])
    return assemble(spec, results)
