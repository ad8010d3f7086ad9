"""A result's shape checked against its task before it is stored: cheap checks (types, lengths,
ranges) that catch a broken or hostile device before its output reaches the job's assembly.
Correctness of the values is the verifier's business (replication, spot checks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HASH_LEN = 32


class ShapeError(ValueError):
    pass


def _keys(result: Mapping[str, Any], want: set[str]) -> None:
    if set(result) != want:
        raise ShapeError(f"result keys {sorted(result)} are not {sorted(want)}")


def _typed(result: Mapping[str, Any], key: str, kind: type) -> Any:
    value = result[key]
    if type(value) is not kind:
        raise ShapeError(f"{key} must be {kind.__name__}")
    return value


def _gemm_i8(params: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    _keys(result, {"out"})
    if len(_typed(result, "out", bytes)) != params["m"] * params["n"]:
        raise ShapeError(f"out must hold m x n = {params['m'] * params['n']} bytes")


def _montecarlo_pi(params: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    _keys(result, {"inside", "points"})
    points, inside = _typed(result, "points", int), _typed(result, "inside", int)
    if points != params["points"] or not 0 <= inside <= points:
        raise ShapeError(f"want points = {params['points']} and 0 <= inside <= points")


def _sha256_search(params: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    _keys(result, {"found", "found_total", "best_hash", "best_nonce"})
    lo, hi = params["start"], params["start"] + params["count"]
    found = _typed(result, "found", list)
    total = _typed(result, "found_total", int)
    if (any(type(n) is not int or not lo <= n < hi for n in found)
            or found != sorted(set(found))
            or not len(found) <= min(total, params.get("max_found", 16)) or total > params["count"]
            or len(_typed(result, "best_hash", bytes)) != HASH_LEN
            or not lo <= _typed(result, "best_nonce", int) < hi):
        raise ShapeError(f"nonces (ascending, unique), counts or best outside {lo}..{hi - 1}")


_CHECKS = {"gemm_i8": _gemm_i8, "montecarlo_pi": _montecarlo_pi,
           "sha256_search": _sha256_search}


def check(kernel: str, params: Mapping[str, Any], result: object) -> None:
    """Raise ShapeError when ``result`` cannot be the kernel's result for ``params`` (the
    task's params as leased; the fields read here are inline, never blob references)."""
    if not isinstance(result, dict):
        raise ShapeError("the result must be a map")
    shape = _CHECKS.get(kernel)
    if shape is None:
        raise ShapeError(f"no result shape known for kernel {kernel}")
    try:
        shape(params, result)
    except (KeyError, TypeError) as exc:
        raise ShapeError(f"malformed: {exc!r}") from None
