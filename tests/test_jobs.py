"""Operators' jobs: parsing and every validation error, deterministic plans whose tasks the
kernel registry accepts, blobs, distributed execution (both backends, shuffled, stage by stage)
equal to compute_locally, the int8 digits MLP, pi and sha256 search outputs, and the data file
rebuilt bit for bit by its training script."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import itertools
import json
import math
import random
import struct
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import cbor2
import pytest

from edge_agent import kernels
from edge_agent.core import cbor
from edge_agent.core import kernels as registry
from gateway import jobs
from gateway.jobs import JobError
from gateway.jobspec import (
    MAX_JOB_FILE_BYTES,
    GemmWork,
    JobSpec,
    MlpDigitsWork,
    Sha256SearchWork,
    load_job,
    parse_job,
    parse_job_text,
    spec_document,
)
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples" / "jobs").glob("*.*"))
DELETE = object()
W = TypeVar("W")

MLP = {"kind": "mlp_digits", "params": {}, "split": {"samples_per_task": 40}}
GEMM = {
    "kind": "gemm",
    "params": {"a": [[1, 2, 3], [4, 5, 6], [-7, 8, 9], [127, -128, 0], [3, 3, 3]],
               "w": [[1, -1, 2], [0, 5, -5]], "bias": [10, -1000],
               "multiplier": 1 << 30, "shift": 32, "out_zero_point": -3, "relu": True},
    "split": {"rows_per_task": 2},
}
PI = {"kind": "montecarlo_pi", "params": {"seed": 7, "points": 200_000},
      "split": {"points_per_task": 30_000}}
SHA = {"kind": "sha256_search",
       "params": {"prefix": "block 42", "start": 1000, "count": 200_000, "zero_bits": 12,
                  "max_found": 64},
       "split": {"nonces_per_task": 7_000}}


def edit(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of ``doc`` with the dotted ``path`` set to ``value`` (or removed: DELETE)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = out
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return out


def spec(doc: dict[str, Any], path: str = "", value: object = None) -> JobSpec:
    return parse_job(edit(doc, path, value) if path else doc)


def work_of(s: JobSpec, kind: type[W]) -> W:
    assert isinstance(s.work, kind)
    return s.work


def run_distributed(s: JobSpec, backend: str, seed: int) -> dict[str, Any]:
    """What the grid does: each stage's tasks run one by one in a shuffled order, each on its
    own with its blobs resolved; the next stage is planned from the previous one's results."""
    plan = jobs.plan(s)
    rng = random.Random(seed)
    results: list[list[dict[str, Any]]] = []
    for stage in plan.stages:
        tasks = stage.tasks if stage.tasks is not None else jobs.next_stage(
            s, stage.index, results[-1])
        assert len(tasks) == stage.task_count
        order = list(tasks)
        rng.shuffle(order)
        done: dict[int, dict[str, Any]] = {}
        for task in order:
            wire = cbor.loads(cbor.dumps(task.params))  # what the ledger stores and a lease carries
            done[task.index] = kernels.run(task.kernel, jobs.resolve(wire, plan.blobs), backend)
        results.append([done[i] for i in range(len(tasks))])
    return jobs.assemble(s, results)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_files_parse_plan_and_round_trip(path: Path, tmp_path: Path) -> None:
    s = load_job(path)
    document = spec_document(s)
    assert parse_job(document) == s
    assert cbor.loads(cbor.dumps(document)) == document  # storable as canonical CBOR
    as_json = tmp_path / "job.json"
    as_json.write_text(json.dumps(document))
    assert load_job(as_json) == s
    plan = jobs.plan(s)
    assert plan.task_count >= 2
    assert plan.stages[0].tasks is not None and len(plan.stages[0].tasks) > 0


def test_defaults_are_filled() -> None:
    s = spec(MLP)
    assert (s.name, s.priority, s.max_attempts) == ("mlp_digits", 50, 3)
    assert s.work == MlpDigitsWork(samples=None, samples_per_task=40)
    sha = work_of(spec(SHA), Sha256SearchWork)
    assert sha.target == (1 << 244).to_bytes(32, "big")
    assert sha.prefix == b"block 42"
    assert work_of(spec(GEMM, "params.bias", DELETE), GemmWork).bias == bytes(8)


@pytest.mark.parametrize(
    ("doc", "path", "value", "message"),
    [
        (MLP, "kind", DELETE, "kind: must be one of"),
        (MLP, "kind", "bitcoin", "kind: must be one of"),
        (MLP, "colour", "red", "colour: unknown field"),
        (MLP, "params", DELETE, "params: missing table"),
        (MLP, "split", [1], "split: must be a table"),
        (MLP, "params.layers", 3, "params.layers: unknown field"),
        (MLP, "split.rows_per_task", 3, "split.rows_per_task: unknown field"),
        (MLP, "split.samples_per_task", DELETE, "split.samples_per_task: missing"),
        (MLP, "split.samples_per_task", 0, "split.samples_per_task: must be an int in 1..4096"),
        (MLP, "split.samples_per_task", True, "split.samples_per_task: must be an int"),
        (MLP, "split.samples_per_task", "40", "split.samples_per_task: must be an int"),
        (MLP, "params.samples", 0, "params.samples: must be an int"),
        (MLP, "name", 5, "name: must be a string"),
        (MLP, "name", "x" * 65, "name: must be a string of at most 64"),
        (MLP, "priority", 101, "priority: must be an int in 0..100"),
        (MLP, "priority", -1, "priority: must be an int in 0..100"),
        (MLP, "max_attempts", 0, "max_attempts: must be an int in 1..10"),
        (MLP, "max_attempts", 11, "max_attempts: must be an int in 1..10"),
        (GEMM, "params.a", DELETE, "params.a: must be a list of 1..4096 rows"),
        (GEMM, "params.a", [], "params.a: must be a list of 1..4096 rows"),
        (GEMM, "params.a", [[]], "params.a[0]: must be a list of 1..65536 ints"),
        (GEMM, "params.a", [[1, 2, 3], [4, 5]], "params.a[1]: has 2 values, want 3"),
        (GEMM, "params.a", [[1, 2, 3], 4], "params.a[1]: must be a list"),
        (GEMM, "params.a", [[1, 2, 128]], "params.a[0][2]: must be an int in -128..127"),
        (GEMM, "params.a", [[1, 2, False]], "params.a[0][2]: must be an int"),
        (GEMM, "params.w", [[1, 2]], "params.w: rows have 2 values, want k = 3"),
        (GEMM, "params.w", [[1, -129, 2]], "params.w[0][1]: must be an int in -128..127"),
        (GEMM, "params.bias", [1], "params.bias: has 1 values, want n = 2"),
        (GEMM, "params.bias", [1, 1 << 31], "params.bias[1]: must be an int in"),
        (GEMM, "params.multiplier", 0, "params.multiplier: must be an int in 1..2147483647"),
        (GEMM, "params.shift", 63, "params.shift: must be an int in 1..62"),
        (GEMM, "params.out_zero_point", 128, "params.out_zero_point: must be an int in -128"),
        (GEMM, "params.relu", 1, "params.relu: must be true or false"),
        (GEMM, "split.rows_per_task", 4097, "split.rows_per_task: must be an int in 1..4096"),
        (PI, "params.seed", -1, "params.seed: must be an int in 0..18446744073709551615"),
        (PI, "params.seed", 1 << 64, "params.seed: must be an int in 0.."),
        (PI, "params.points", 0, "params.points: must be an int in 1.."),
        (PI, "params.points", (1 << 52) + 1, "params.points: must be an int in 1.."),
        (PI, "split.points_per_task", (1 << 32) + 1, "split.points_per_task: must be an int"),
        (SHA, "params.prefix", DELETE, "params.prefix / params.prefix_hex: give exactly one"),
        (SHA, "params.prefix_hex", "00", "params.prefix / params.prefix_hex: give exactly one"),
        (SHA, "params.prefix", "x" * 257, "params.prefix: must be a string of at most 256"),
        (SHA, "params.prefix", "é" * 200, "params.prefix: 400 UTF-8 bytes, more than 256"),
        (SHA, "params.target_hex", "00" * 32, "params.target_hex / params.zero_bits: give"),
        (SHA, "params.zero_bits", DELETE, "params.target_hex / params.zero_bits: give"),
        (SHA, "params.zero_bits", 0, "params.zero_bits: must be an int in 1..256"),
        (SHA, "params.zero_bits", 257, "params.zero_bits: must be an int in 1..256"),
        (SHA, "params.count", DELETE, "params.count: missing"),
        (SHA, "params.start", (1 << 64) - 5, "params.count: the last nonce start + count - 1"),
        (SHA, "params.max_found", 65, "params.max_found: must be an int in 0..64"),
        (SHA, "split.nonces_per_task", 0, "split.nonces_per_task: must be an int in 1.."),
    ],
)
def test_each_invalid_field_is_named(doc: dict[str, Any], path: str, value: object,
                                     message: str) -> None:
    with pytest.raises(JobError) as err:
        spec(doc, path, value)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("prefix_hex", "zz", "params.prefix_hex: must be a hex string of 0..256 bytes"),
     ("prefix_hex", "00" * 257, "params.prefix_hex: must be a hex string of 0..256 bytes"),
     ("target_hex", "00" * 31, "params.target_hex: must be a hex string of 32..32 bytes"),
     ("target_hex", 5, "params.target_hex: must be a hex string")],
)
def test_hex_fields(field: str, value: object, message: str) -> None:
    doc = edit(edit(SHA, "params.prefix", DELETE), "params.zero_bits", DELETE)
    doc["params"].update({"prefix_hex": "ab01", "target_hex": "00ff" + "00" * 30, field: value})
    with pytest.raises(JobError, match=f"^{message.replace('.', '[.]')}"):
        parse_job(doc)
    good = edit(edit(SHA, "params.prefix", DELETE), "params.zero_bits", DELETE)
    good["params"].update({"prefix_hex": "AB01", "target_hex": "00ff" + "00" * 30})
    assert work_of(parse_job(good), Sha256SearchWork).prefix == b"\xab\x01"


def test_job_document_must_be_a_table() -> None:
    with pytest.raises(JobError, match=r"^job: must be a table"):
        parse_job([MLP])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("job.yaml", b"kind: gemm", "job file: job.yaml must end in .toml or .json"),
        ("job.toml", b"kind = ", "job file: not valid TOML"),
        ("job.json", b"{\"kind\": ", "job file: not valid JSON"),
        ("job.json", b"{\"kind\": \"gemm\", \"kind\": \"gemm\"}", "kind: duplicate key"),
        ("job.json", json.dumps(edit(PI, "params.points", 1.5)).encode(),
         "1.5: numbers must be integers"),
        ("job.json", json.dumps(edit(PI, "params.points", 1e9)).encode(),
         "1000000000.0: numbers must be integers"),
        ("job.json", b"{\"x\": NaN}", "NaN: numbers must be integers"),
        ("job.toml", b"kind = \"montecarlo_pi\"\n[params]\nseed = 1\npoints = 1.0\n"
                     b"[split]\npoints_per_task = 1\n", "params.points: must be an int"),
        ("job.json", b"[1, 2]", "job: must be a table/object, got list"),
        ("job.json", b"\xff\xfe", "job file: not UTF-8"),
        ("job.json", b" " * (MAX_JOB_FILE_BYTES + 1), "job file: larger than"),
    ],
)
def test_job_file_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(JobError) as err:
        load_job(path)
    assert str(err.value).startswith(message), str(err.value)


def test_text_parser_checks_format_and_size() -> None:
    with pytest.raises(JobError, match="unknown format 'yaml'"):
        parse_job_text("kind: gemm", "yaml")
    with pytest.raises(JobError, match="larger than"):
        parse_job_text(" " * (MAX_JOB_FILE_BYTES + 1), "toml")


# --- planning ---------------------------------------------------------------------------------


def _plan_bytes(plan: jobs.JobPlan) -> bytes:
    tasks = [[t.stage, t.index, t.kernel, t.params, t.work_units]
             for stage in plan.stages for t in stage.tasks or ()]
    counts = [[st.index, st.kernel, st.task_count] for st in plan.stages]
    return bytes(cbor.dumps([tasks, counts, plan.blobs]))


@pytest.mark.parametrize("doc", [MLP, GEMM, PI, SHA], ids=lambda d: d["kind"])
def test_plans_are_deterministic_and_valid_for_the_kernels(doc: dict[str, Any]) -> None:
    s = spec(doc)
    plan = jobs.plan(s)
    assert _plan_bytes(plan) == _plan_bytes(jobs.plan(parse_job(spec_document(s))))
    for digest, data in plan.blobs.items():
        assert hashlib.sha256(data).digest() == digest
    for task in plan.stages[0].tasks or ():
        kernel = registry.get(task.kernel)
        checked = kernel.validate(jobs.resolve(task.params, plan.blobs))
        assert kernel.work_units(checked) == task.work_units
        # The ledger stores params as canonical CBOR: cbor2 and the portable codec agree.
        assert cbor2.dumps(task.params, canonical=True) == cbor.dumps(task.params)


def test_split_covers_the_work_exactly_once() -> None:
    sha = jobs.plan(spec(SHA)).stages[0].tasks or ()
    ranges = [(t.params["start"], t.params["count"]) for t in sha]
    assert ranges[0][0] == 1000 and ranges[-1][1] == 200_000 - 28 * 7_000
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(ranges))
    pi = jobs.plan(spec(PI)).stages[0].tasks or ()
    assert sum(t.params["points"] for t in pi) == 200_000 and len(pi) == 7
    seeds = [t.params["seed"] for t in pi]
    digest = hashlib.sha256(jobs.MONTECARLO_SEED_DOMAIN + struct.pack("<QQ", 7, 3)).digest()
    assert seeds[3] == int.from_bytes(digest[:8], "little")
    assert len(set(seeds)) == len(seeds)
    assert seeds != [t.params["seed"] for t in jobs.plan(spec(PI, "params.seed", 8)).stages[0]
                     .tasks or ()]


def test_mlp_plan_shares_weights_as_blobs() -> None:
    plan = jobs.plan(spec(MLP))
    model = jobs.load_model()
    assert [st.task_count for st in plan.stages] == [9, 9] and plan.stages[1].tasks is None
    assert set(plan.blobs) == {hashlib.sha256(layer.w).digest() for layer in model.layers}
    first = plan.stages[0].tasks or ()
    assert {t.params["w"]["blob"] for t in first} == {hashlib.sha256(model.layers[0].w).digest()}
    assert [t.params["m"] for t in first] == [40] * 8 + [39]
    assert first[1].params["a"] == model.test_inputs[40 * 64:80 * 64]


def test_resolve_checks_blobs() -> None:
    data = b"weights" * 10
    blobs: dict[bytes, bytes] = {}
    ref = jobs.blob_ref(data, blobs)
    params = {"w": ref, "a": b"\x01", "meta": {"blob": b"x", "other": 1}}
    assert jobs.resolve(params, blobs) == {"w": data, "a": b"\x01", "meta": params["meta"]}
    with pytest.raises(JobError, match=r"^params\.w: blob [0-9a-f]{64} is not available"):
        jobs.resolve(params, {})
    tampered = {ref["blob"]: data + b"!"}
    with pytest.raises(JobError, match=r"^params\.w: blob .* does not match its hash"):
        jobs.resolve(params, tampered)
    assert jobs.resolve(params, tampered, verify=False)["w"] == data + b"!"
    with pytest.raises(JobError, match=r"^params\.w: blob 5 is not available"):
        jobs.resolve({"w": {"blob": 5}}, blobs)


@pytest.mark.parametrize(
    ("doc", "path", "value", "message"),
    [
        (PI, "split.points_per_task", 3, "split.points_per_task: the job would have 66667 tasks"),
        (SHA, "split.nonces_per_task", 1, "split.nonces_per_task: the job would have 200000"),
        (MLP, "params.samples", 360, "params.samples: must be at most 359"),
    ],
)
def test_plan_rejects_jobs_past_the_bounds(doc: dict[str, Any], path: str, value: object,
                                           message: str) -> None:
    with pytest.raises(JobError) as err:
        jobs.plan(spec(doc, path, value))
    assert str(err.value).startswith(message), str(err.value)


def test_plan_rejects_tasks_too_big_for_a_lease() -> None:
    doc = edit(edit(GEMM, "params.a", [[1] * 300] * 200), "params.w", [[1] * 300] * 2)
    s = spec(doc, "split.rows_per_task", 200)  # a: 60000 bytes in one task
    with pytest.raises(JobError, match=r"^split\.rows_per_task: task 0/0 has 60120 bytes"):
        jobs.plan(s)
    assert jobs.plan(spec(doc, "split.rows_per_task", 100)).task_count == 2


def test_plan_rejects_tasks_the_kernel_refuses() -> None:
    k = 40_000  # k * 16384 + |bias| must stay inside the int32 accumulator
    doc = edit(edit(edit(GEMM, "params.a", [[1] * k]), "params.w", [[1] * k]),
               "params.bias", [(1 << 31) - 1])
    with pytest.raises(JobError, match=r"^params: task 0/0 is refused by kernel gemm_i8: k=40000"):
        jobs.plan(parse_job(doc))


# --- results and stages -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", kernels.BACKENDS)
@pytest.mark.parametrize("doc", [MLP, GEMM, PI, SHA], ids=lambda d: d["kind"])
def test_distributed_results_equal_compute_locally(doc: dict[str, Any], backend: str) -> None:
    s = spec(doc)
    assert run_distributed(s, backend, seed=len(backend)) == jobs.compute_locally(s)


@pytest.mark.parametrize(("doc", "field"), [(MLP, "samples_per_task"), (GEMM, "rows_per_task"),
                                            (SHA, "nonces_per_task")])
def test_output_does_not_depend_on_the_split(doc: dict[str, Any], field: str) -> None:
    reference = jobs.compute_locally(spec(doc))
    for per_task in (1, 3, 7):
        bigger = per_task * (10_000 if field == "nonces_per_task" else 1)
        assert jobs.compute_locally(spec(doc, f"split.{field}", bigger)) == reference


def test_next_stage_checks_the_previous_results() -> None:
    s = spec(MLP, "params.samples", 50)  # batches of 40 and 10
    first = jobs.plan(s).stages[0].tasks or ()
    outs = [kernels.run(t.kernel, jobs.resolve(t.params, jobs.plan(s).blobs)) for t in first]
    second = jobs.next_stage(s, 1, outs)
    assert [t.params["a"] for t in second] == [o["out"] for o in outs]
    assert [t.params["k"] for t in second] == [32, 32]
    cases = [
        (1, outs[:1], "results[0]: want 2 task results, got 1"),
        (1, [outs[0], {"out": outs[1]["out"][:-1]}], "results[0][1].out: 319 bytes, want 10 x 32"),
        (1, [outs[0], {"out": "text"}], "results[0][1].out: must be bytes, got str"),
        (1, [outs[0], None], "results[0][1].out: must be bytes, got NoneType"),
        (2, outs, "stage 2: a mlp_digits job has stages 0..1"),
        (0, outs, "stage 0: a mlp_digits job has stages 0..1"),
    ]
    for stage, previous, message in cases:
        with pytest.raises(JobError) as err:
            jobs.next_stage(s, stage, previous)  # type: ignore[arg-type]
        assert str(err.value).startswith(message), str(err.value)
    with pytest.raises(JobError, match=r"^stage 1: a montecarlo_pi job has one stage"):
        jobs.next_stage(spec(PI), 1, [])


def test_assemble_checks_results() -> None:
    pi = spec(PI, "params.points", 10)  # tasks of 10 points... one task
    good = [[{"inside": 8, "points": 10}]]
    assert jobs.assemble(pi, good)["pi_num"] == 32
    sha = spec(SHA, "params.count", 10)
    result = {"found": [1003], "found_total": 1, "best_hash": bytes(32), "best_nonce": 1003}
    assert jobs.assemble(sha, [[result]])["found"] == [1003]
    cases: list[tuple[JobSpec, Any, str]] = [
        (pi, [], "results[0]: missing (got 0 stages)"),
        (pi, [[]], "results[0]: want 1 task results, got 0"),
        (pi, [[{"inside": 11, "points": 10}]], "results[0][0]: want 10 points and 0..10 inside"),
        (pi, [[{"inside": 1, "points": 9}]], "results[0][0]: want 10 points"),
        (pi, [[{"inside": True, "points": 10}]], "results[0][0].inside: must be int, got bool"),
        (sha, [[{**result, "found": [999]}]], "results[0][0]: nonces (ascending, unique), counts"),
        (sha, [[{**result, "found_total": 0}]], "results[0][0]: nonces (ascending, unique)"),
        (sha, [[{**result, "found": [1003, 1003], "found_total": 2}]], "results[0][0]: nonces"),
        (sha, [[{**result, "best_nonce": 1010}]], "results[0][0]: nonces (ascending, unique)"),
        (sha, [[{**result, "best_hash": b"\x00"}]], "results[0][0]: nonces (ascending, unique)"),
        (sha, [[{**result, "found": (1003,)}]], "results[0][0].found: must be list, got tuple"),
        (spec(MLP), [[]], "results[0]: want 9 task results, got 0"),
        (spec(GEMM), [[{"out": b""}] * 3], "results[0][0].out: 0 bytes, want 2 x 2"),
    ]
    for s, results, message in cases:
        with pytest.raises(JobError) as err:
            jobs.assemble(s, results)
        assert str(err.value).startswith(message), str(err.value)


def test_mlp_predictions_are_argmax_with_ties_to_the_lowest_index() -> None:
    s = spec(MLP, "params.samples", 3)
    logits = bytes([5, 5, 0, 0, 0, 0, 0, 0, 0, 0,
                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 3, 0x80, 3,
                    0xFF, 0xFE, 0xFF, 0xFD, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80])  # int8: -1, -2..
    out = jobs.assemble(s, [[{"out": bytes(3 * 32)}], [{"out": logits}]])
    assert out["predictions"] == [0, 7, 0]
    labels = list(jobs.load_model().test_labels[:3])
    assert out["correct"] == sum(p == y for p, y in zip([0, 7, 0], labels, strict=True))


# --- the digits MLP, pi and sha256 ------------------------------------------------------------


def test_mlp_int8_accuracy_matches_the_data_file() -> None:
    model = jobs.load_model()
    out = jobs.compute_locally(spec(MLP))
    assert out["samples"] == model.test_count == 359
    assert out["correct"] == model.int8_correct
    assert out["correct"] >= 0.90 * model.test_count
    assert abs(model.float_correct - model.int8_correct) <= 0.02 * model.test_count
    assert out["accuracy_approx"] == f"{model.int8_correct / model.test_count:.4f}"


@pytest.fixture(scope="module")
def training_script() -> Iterator[ModuleType]:
    """scripts/train_digits_mlp.py as a module (scripts/ is not a package)."""
    name = "train_digits_mlp"
    module_spec = importlib.util.spec_from_file_location(
        name, ROOT / "scripts" / "train_digits_mlp.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        module_spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def test_data_file_is_rebuilt_bit_for_bit_by_the_training_script(
        training_script: ModuleType) -> None:
    began = time.perf_counter()
    rebuilt = cbor.dumps(training_script.build_document())
    assert time.perf_counter() - began < 10
    assert rebuilt == jobs.MODEL_PATH.read_bytes()


def test_fixed_point_multiplier(training_script: ModuleType) -> None:
    for scale in (1.0, 0.5, 0.0123, 3e-9, 0.9999999999):
        multiplier, shift = training_script.fixed_point(scale)
        assert 1 << 30 <= multiplier < 1 << 31
        assert abs(multiplier / 2**shift - scale) <= scale * 2**-30


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "unreadable: format is not"),
        (lambda d: d["layers"][1].update(k=31), "layer 1 takes 31 inputs"),
        (lambda d: d["layers"][0].update(bias=b"\x00"), "layer 0: param 'bias' has 1 bytes"),
        (lambda d: d.update(classes=9), "the last layer gives 10 outputs for 9 classes"),
        (lambda d: d.update(test_labels=d["test_labels"][:-1]), "test inputs or labels"),
        (lambda d: d.pop("layers"), "unreadable: 'layers'"),
    ],
)
def test_model_file_is_checked(tmp_path: Path, change: Any, message: str) -> None:
    doc = cbor.loads(jobs.MODEL_PATH.read_bytes(), max_size=1 << 20)
    change(doc)
    path = tmp_path / "model.cbor"
    path.write_bytes(cbor.dumps(doc))
    with pytest.raises(JobError, match=f"^model file {path}: {message}"):
        jobs.load_model(path)


def test_pi_estimate_is_within_four_sigma() -> None:
    points = 1 << 24
    out = jobs.compute_locally(spec(PI, "params.points", points))
    estimate = Fraction(out["pi_num"], out["pi_den"])
    assert out["pi_num"] == 4 * out["inside"] and out["pi_den"] == points
    p = math.pi / 4
    sigma = 4 * math.sqrt(p * (1 - p) / points)
    assert abs(float(estimate) - math.pi) < 4 * sigma
    assert out["pi_approx"] == f"{float(estimate):.9f}"


def test_sha256_job_finds_what_one_big_search_finds() -> None:
    s = spec(SHA)
    out = jobs.compute_locally(s)
    target = work_of(s, Sha256SearchWork).target
    whole = kernels.run("sha256_search", {
        "prefix": b"block 42", "start": 1000, "count": 200_000, "target": target,
        "max_found": 64})
    assert 20 <= out["found_total"] <= 64 and out["found_complete"]
    assert out["found"] == whole["found"] and out["found_total"] == whole["found_total"]
    assert (out["best_hash"], out["best_nonce"]) == (whole["best_hash"], whole["best_nonce"])
    for nonce in out["found"]:
        digest = hashlib.sha256(b"block 42" + struct.pack("<Q", nonce)).digest()
        assert digest < target


def test_sha256_job_reports_truncated_found_lists() -> None:
    full = jobs.compute_locally(spec(SHA))
    out = jobs.compute_locally(spec(SHA, "params.max_found", 1))
    assert not out["found_complete"] and out["found_total"] == full["found_total"]
    first_per_task: dict[int, int] = {}
    for nonce in full["found"]:
        first_per_task.setdefault((nonce - 1000) // 7000, nonce)
    assert out["found"] == sorted(first_per_task.values())
    assert len(out["found"]) < len(full["found"])
