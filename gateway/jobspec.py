"""Job files: parse and validate a TOML or JSON job into a typed, normalised :class:`JobSpec`.

Every field is checked for type and range here; :func:`gateway.jobs.plan` then checks the tasks
the spec splits into against the kernel registry. Errors are :class:`JobError` whose message
starts with the field, e.g. ``split.points_per_task: must be an int in 1..4294967296, got 0``.
docs/JOBS.md describes the format.
"""

from __future__ import annotations

import json
import pathlib
import struct
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "MAX_JOB_FILE_BYTES",
    "GemmWork",
    "JobError",
    "JobSpec",
    "MlpDigitsWork",
    "MonteCarloPiWork",
    "Sha256SearchWork",
    "Work",
    "load_job",
    "parse_job",
    "parse_job_text",
    "spec_document",
]

MAX_JOB_FILE_BYTES = 4 << 20
MAX_NAME = 64
MAX_PRIORITY = 100
DEFAULT_PRIORITY = 50
MAX_ATTEMPTS = 10
DEFAULT_ATTEMPTS = 3
U64 = (1 << 64) - 1
MAX_DIM = 4096  # gemm_i8's m and n
MAX_K = 65536
MAX_PI_POINTS = 1 << 52
MAX_POINTS_PER_TASK = 1 << 32
MAX_NONCES_PER_TASK = 1 << 32
MAX_PREFIX = 256
MAX_FOUND = 64
HASH_LEN = 32


class JobError(ValueError):
    """A job file, spec, plan or result that cannot be accepted; the message names the field."""


@dataclass(frozen=True)
class MlpDigitsWork:
    """Classify the first ``samples`` held-out digits with the int8 MLP of gateway/data."""

    samples: int | None  # None: all test samples of the model file
    samples_per_task: int


@dataclass(frozen=True)
class GemmWork:
    """One int8 layer ``out = requant(a @ w.T + bias)`` split by rows of ``a``."""

    m: int
    n: int
    k: int
    a: bytes  # m x k int8, row-major
    w: bytes  # n x k int8, row-major
    bias: bytes  # n int32 little-endian
    multiplier: int
    shift: int
    out_zero_point: int
    relu: bool
    rows_per_task: int


@dataclass(frozen=True)
class MonteCarloPiWork:
    seed: int
    points: int
    points_per_task: int


@dataclass(frozen=True)
class Sha256SearchWork:
    prefix: bytes
    start: int
    count: int
    target: bytes  # 32 bytes; a hash qualifies when it is below it (big-endian)
    max_found: int  # per task
    nonces_per_task: int


Work = MlpDigitsWork | GemmWork | MonteCarloPiWork | Sha256SearchWork


@dataclass(frozen=True)
class JobSpec:
    kind: str
    name: str
    priority: int  # higher runs sooner
    max_attempts: int  # leases of one task before the job fails
    work: Work


class _Section:
    """One table of the job document, consumed key by key so leftovers are reported."""

    def __init__(self, doc: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        self.path = path
        if not isinstance(doc, Mapping):
            raise JobError(f"{path or 'job'}: must be a table/object, got {_type(doc)}")
        for key in doc:
            if key not in allowed:
                raise JobError(f"{self.field(str(key))}: unknown field (allowed: "
                               f"{', '.join(allowed)})")
        self.doc = doc

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.doc

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        value = self.doc.get(key, default)
        if value is None:
            raise JobError(f"{self.field(key)}: missing (an int in {lo}..{hi})")
        if type(value) is not int or not lo <= value <= hi:
            raise JobError(f"{self.field(key)}: must be an int in {lo}..{hi}, got {_show(value)}")
        return value

    def optional_int(self, key: str, lo: int, hi: int) -> int | None:
        return self.integer(key, lo, hi) if key in self.doc else None

    def boolean(self, key: str, default: bool) -> bool:
        value = self.doc.get(key, default)
        if type(value) is not bool:
            raise JobError(f"{self.field(key)}: must be true or false, got {_show(value)}")
        return value

    def text(self, key: str, max_len: int, default: str) -> str:
        value = self.doc.get(key, default)
        if not isinstance(value, str) or len(value) > max_len:
            raise JobError(f"{self.field(key)}: must be a string of at most {max_len} "
                           f"characters, got {_show(value)}")
        return value

    def hex(self, key: str, min_len: int, max_len: int) -> bytes:
        value = self.doc.get(key)
        try:
            data = bytes.fromhex(value) if isinstance(value, str) else None
        except ValueError:
            data = None
        if data is None or not min_len <= len(data) <= max_len:
            raise JobError(f"{self.field(key)}: must be a hex string of {min_len}..{max_len} "
                           f"bytes, got {_show(value)}")
        return data

    def int_list(self, key: str, lo: int, hi: int, max_len: int) -> list[int]:
        """A list of 1..max_len ints, each in lo..hi."""
        return _ints(self.field(key), self.doc.get(key), lo, hi, max_len)

    def int_matrix(self, key: str, lo: int, hi: int, max_rows: int, max_cols: int
                   ) -> tuple[int, int, list[int]]:
        """A non-empty rectangular list of rows of ints: (rows, cols, flat values)."""
        value = self.doc.get(key)
        field = self.field(key)
        if not isinstance(value, list) or not 1 <= len(value) <= max_rows:
            raise JobError(f"{field}: must be a list of 1..{max_rows} rows, got {_show(value)}")
        flat = _ints(f"{field}[0]", value[0], lo, hi, max_cols)
        cols = len(flat)
        for r in range(1, len(value)):
            row = _ints(f"{field}[{r}]", value[r], lo, hi, cols)
            if len(row) != cols:
                raise JobError(f"{field}[{r}]: has {len(row)} values, want {cols} like row 0")
            flat.extend(row)
        return len(value), cols, flat


def _ints(field: str, value: object, lo: int, hi: int, max_len: int) -> list[int]:
    if not isinstance(value, list) or not 1 <= len(value) <= max_len:
        raise JobError(f"{field}: must be a list of 1..{max_len} ints, got {_show(value)}")
    for i, v in enumerate(value):
        if type(v) is not int or not lo <= v <= hi:
            raise JobError(f"{field}[{i}]: must be an int in {lo}..{hi}, got {_show(v)}")
    return list(value)


def _type(value: object) -> str:
    return type(value).__name__


def _show(value: object) -> str:
    text = repr(value)
    return f"{text[:40]}... ({_type(value)})" if len(text) > 40 else f"{text} ({_type(value)})"


def _int8_rows(data: bytes, cols: int) -> list[list[int]]:
    signed = struct.unpack(f"{len(data)}b", data)
    return [list(signed[i:i + cols]) for i in range(0, len(signed), cols)]


# --- kinds ------------------------------------------------------------------------------------


def _mlp_digits(params: _Section, split: _Section) -> MlpDigitsWork:
    # The upper bound on samples depends on the model file: checked by plan().
    return MlpDigitsWork(
        samples=params.optional_int("samples", 1, MAX_DIM * MAX_DIM),
        samples_per_task=split.integer("samples_per_task", 1, MAX_DIM),
    )


def _gemm(params: _Section, split: _Section) -> GemmWork:
    m, k, a = params.int_matrix("a", -128, 127, MAX_DIM, MAX_K)
    n, w_cols, w = params.int_matrix("w", -128, 127, MAX_DIM, MAX_K)
    if w_cols != k:
        raise JobError(f"{params.field('w')}: rows have {w_cols} values, want k = {k} "
                       f"(the columns of a)")
    bias = [0] * n
    if params.has("bias"):
        bias = params.int_list("bias", -(1 << 31), (1 << 31) - 1, MAX_DIM)
        if len(bias) != n:
            raise JobError(f"{params.field('bias')}: has {len(bias)} values, want n = {n} "
                           f"(one per row of w)")
    return GemmWork(
        m=m, n=n, k=k,
        a=struct.pack(f"{m * k}b", *a),
        w=struct.pack(f"{n * k}b", *w),
        bias=struct.pack(f"<{n}i", *bias),
        multiplier=params.integer("multiplier", 1, (1 << 31) - 1),
        shift=params.integer("shift", 1, 62),
        out_zero_point=params.integer("out_zero_point", -128, 127, 0),
        relu=params.boolean("relu", False),
        rows_per_task=split.integer("rows_per_task", 1, MAX_DIM),
    )


def _montecarlo_pi(params: _Section, split: _Section) -> MonteCarloPiWork:
    return MonteCarloPiWork(
        seed=params.integer("seed", 0, U64),
        points=params.integer("points", 1, MAX_PI_POINTS),
        points_per_task=split.integer("points_per_task", 1, MAX_POINTS_PER_TASK),
    )


def _exactly_one(section: _Section, a: str, b: str) -> str:
    if section.has(a) == section.has(b):
        raise JobError(f"{section.field(a)} / {section.field(b)}: give exactly one of them")
    return a if section.has(a) else b


def _sha256_search(params: _Section, split: _Section) -> Sha256SearchWork:
    if _exactly_one(params, "prefix", "prefix_hex") == "prefix":
        prefix = params.text("prefix", MAX_PREFIX, "").encode()
        if len(prefix) > MAX_PREFIX:
            raise JobError(f"{params.field('prefix')}: {len(prefix)} UTF-8 bytes, "
                           f"more than {MAX_PREFIX}")
    else:
        prefix = params.hex("prefix_hex", 0, MAX_PREFIX)
    if _exactly_one(params, "target_hex", "zero_bits") == "target_hex":
        target = params.hex("target_hex", HASH_LEN, HASH_LEN)
    else:
        bits = params.integer("zero_bits", 1, 8 * HASH_LEN)
        target = (1 << (8 * HASH_LEN - bits)).to_bytes(HASH_LEN, "big")
    start = params.integer("start", 0, U64, 0)
    count = params.integer("count", 1, U64)
    if start + count - 1 > U64:
        raise JobError(f"{params.field('count')}: the last nonce start + count - 1 = "
                       f"{start + count - 1} is past 2**64 - 1")
    return Sha256SearchWork(
        prefix=prefix, start=start, count=count, target=target,
        max_found=params.integer("max_found", 0, MAX_FOUND, 16),
        nonces_per_task=split.integer("nonces_per_task", 1, MAX_NONCES_PER_TASK),
    )


_Parser = Callable[[_Section, _Section], Work]
_KINDS: dict[str, tuple[_Parser, tuple[str, ...], tuple[str, ...]]] = {
    # kind: (parser, params keys, split keys)
    "mlp_digits": (_mlp_digits, ("samples",), ("samples_per_task",)),
    "gemm": (_gemm, ("a", "w", "bias", "multiplier", "shift", "out_zero_point", "relu"),
             ("rows_per_task",)),
    "montecarlo_pi": (_montecarlo_pi, ("seed", "points"), ("points_per_task",)),
    "sha256_search": (_sha256_search, ("prefix", "prefix_hex", "start", "count", "target_hex",
                                       "zero_bits", "max_found"), ("nonces_per_task",)),
}
KINDS = tuple(_KINDS)
_TOP = ("kind", "name", "priority", "max_attempts", "params", "split")


def parse_job(doc: Mapping[str, Any]) -> JobSpec:
    """Validate a decoded job document (a TOML or JSON table) into a :class:`JobSpec`."""
    top = _Section(doc, "", _TOP)
    kind = doc.get("kind")
    if kind not in _KINDS:
        raise JobError(f"kind: must be one of {', '.join(KINDS)}, got {_show(kind)}")
    parser, params_keys, split_keys = _KINDS[kind]
    for section in ("params", "split"):
        if section not in doc:
            raise JobError(f"{section}: missing table")
    work = parser(_Section(doc["params"], "params", params_keys),
                  _Section(doc["split"], "split", split_keys))
    return JobSpec(
        kind=kind,
        name=top.text("name", MAX_NAME, kind),
        priority=top.integer("priority", 0, MAX_PRIORITY, DEFAULT_PRIORITY),
        max_attempts=top.integer("max_attempts", 1, MAX_ATTEMPTS, DEFAULT_ATTEMPTS),
        work=work,
    )


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JobError(f"{key}: duplicate key")
        out[key] = value
    return out


def _reject_float(text: str) -> Any:
    raise JobError(f"{text}: numbers must be integers")


def parse_job_text(text: str, fmt: str) -> JobSpec:
    """Parse job file contents; ``fmt`` is ``"toml"`` or ``"json"``."""
    if len(text.encode()) > MAX_JOB_FILE_BYTES:
        raise JobError(f"job file: larger than {MAX_JOB_FILE_BYTES} bytes")
    try:
        if fmt == "toml":
            doc = tomllib.loads(text)
        elif fmt == "json":
            doc = json.loads(text, object_pairs_hook=_reject_duplicates,
                             parse_float=_reject_float, parse_constant=_reject_float)
        else:
            raise JobError(f"job file: unknown format {fmt!r} (toml or json)")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise JobError(f"job file: not valid {fmt.upper()}: {exc}") from None
    return parse_job(doc)


def load_job(path: str | pathlib.Path) -> JobSpec:
    """Read a ``.toml`` or ``.json`` job file (at most MAX_JOB_FILE_BYTES)."""
    path = pathlib.Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("toml", "json"):
        raise JobError(f"job file: {path.name} must end in .toml or .json")
    with path.open("rb") as f:
        data = f.read(MAX_JOB_FILE_BYTES + 1)
    if len(data) > MAX_JOB_FILE_BYTES:
        raise JobError(f"job file: larger than {MAX_JOB_FILE_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise JobError(f"job file: not UTF-8: {exc}") from None
    return parse_job_text(text, fmt)


def _work_document(work: Work) -> tuple[dict[str, Any], dict[str, Any]]:
    if isinstance(work, MlpDigitsWork):
        params = {} if work.samples is None else {"samples": work.samples}
        return params, {"samples_per_task": work.samples_per_task}
    if isinstance(work, GemmWork):
        return {
            "a": _int8_rows(work.a, work.k),
            "w": _int8_rows(work.w, work.k),
            "bias": list(struct.unpack(f"<{work.n}i", work.bias)),
            "multiplier": work.multiplier, "shift": work.shift,
            "out_zero_point": work.out_zero_point, "relu": work.relu,
        }, {"rows_per_task": work.rows_per_task}
    if isinstance(work, MonteCarloPiWork):
        return ({"seed": work.seed, "points": work.points},
                {"points_per_task": work.points_per_task})
    return {
        "prefix_hex": work.prefix.hex(), "start": work.start, "count": work.count,
        "target_hex": work.target.hex(), "max_found": work.max_found,
    }, {"nonces_per_task": work.nonces_per_task}


def spec_document(spec: JobSpec) -> dict[str, Any]:
    """The normalised job document (defaults filled; JSON- and canonical-CBOR-able, no floats):
    ``parse_job(spec_document(s)) == s``, so a gateway can store it and re-plan later."""
    params, split = _work_document(spec.work)
    return {"kind": spec.kind, "name": spec.name, "priority": spec.priority,
            "max_attempts": spec.max_attempts, "params": params, "split": split}
