"""sha256_search: every C path (portable, SHA-NI) against the Python twin and an independent
hashlib reference; chunking; checkpoints crossing backends; every bad param rejected."""

from __future__ import annotations

import hashlib
import json
import pathlib
import platform
import random
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent import kernels, native
from edge_agent.core.kernels import sha256_search
from edge_agent.kernels import KernelError
from tests.conftest import DATA

MAX_NONCE = 2**64 - 1
IMPLS = native.sha256_search_impls()
VECTORS = DATA / "sha256_search_vectors.json"
# Prefix lengths where the tail changes shape: 47 is the last with one block per nonce, a nonce
# straddles the block edge from 57, 64 folds a whole block into the midstate.
EDGE_LENGTHS = [0, 1, 46, 47, 48, 55, 56, 57, 63, 64, 65, 76, 111, 112, 119, 120, 127, 128, 256]


def cpu_has_sha_ni() -> bool:
    if platform.machine() != "x86_64":
        return False
    return " sha_ni" in pathlib.Path("/proc/cpuinfo").read_text()


def test_this_machine_runs_every_path_it_has() -> None:
    assert IMPLS[0] == "portable"
    # The SHA-NI path must be covered where the CPU has it (the development machine does).
    assert ("x86-sha-ni" in IMPLS) == cpu_has_sha_ni()


def reference(p: dict[str, Any]) -> dict[str, Any]:
    """The documented semantics, hashing each whole message with hashlib: a third implementation."""
    found: list[int] = []
    total = 0
    best = (b"\xff" * 33, 0)  # above any hash, so the first nonce always takes it
    for nonce in range(p["start"], p["start"] + p["count"]):
        h = hashlib.sha256(p["prefix"] + nonce.to_bytes(8, "little")).digest()
        if h < p["target"]:
            total += 1
            found += [nonce][: p["max_found"] - len(found)]
        best = min(best, (h, nonce))
    return {"found": found, "found_total": total, "best_nonce": best[1], "best_hash": best[0]}


def run_c(p: dict[str, Any], impl: str, chunk: int = 0) -> dict[str, Any]:
    v = sha256_search.validate(p)
    state = sha256_search.start(v)
    while state["units"] < v["count"]:
        native.sha256_search_step(v, state, chunk or v["count"], impl)
    result: dict[str, Any] = sha256_search.result(v, state)
    return result


def params(prefix: bytes, start: int, count: int, target: bytes, max_found: int) -> dict[str, Any]:
    return {"prefix": prefix, "start": start, "count": count, "target": target,
            "max_found": max_found}


@st.composite
def search_cases(draw: st.DrawFn, max_count: int = 200) -> dict[str, Any]:
    n = draw(st.one_of(st.sampled_from(EDGE_LENGTHS), st.integers(0, 256)))
    prefix = draw(st.binary(min_size=n, max_size=n))
    count = draw(st.integers(1, max_count))
    start = draw(st.one_of(
        st.integers(0, 3),
        st.integers(MAX_NONCE - count - 3, MAX_NONCE - count + 1),  # ends at 2**64 - 1
        st.integers(2**32 - 5, 2**32),  # crosses the 32-bit word of the nonce
        st.integers(0, MAX_NONCE - count + 1),
    ))
    target = draw(st.one_of(
        st.just(bytes(32)),  # nothing qualifies
        st.just(b"\xff" * 32),  # all but a 2**-256 chance qualify
        st.binary(min_size=1, max_size=1).map(lambda b: b + bytes(31)),  # a fraction qualifies
        st.binary(min_size=32, max_size=32),
    ))
    max_found = draw(st.sampled_from([0, 1, 2, 16, 64]))
    return params(prefix, start, count, target, max_found)


@given(search_cases())
def test_every_path_equals_the_twin_and_the_reference(p: dict[str, Any]) -> None:
    expected = reference(p)
    assert kernels.run("sha256_search", p, backend="python") == expected
    for impl in IMPLS:
        assert run_c(p, impl) == expected, impl


@given(search_cases(max_count=120), st.integers(1, 40), st.sampled_from(["c", "python"]))
def test_chunked_equals_unchunked(p: dict[str, Any], chunk: int, backend: str) -> None:
    whole = kernels.run("sha256_search", p, backend=backend)
    assert kernels.run("sha256_search", p, backend=backend, chunk_units=chunk) == whole


@pytest.mark.parametrize("impl", IMPLS)
def test_paths_agree_on_thousands_of_seeded_cases(impl: str) -> None:
    rng = random.Random(20240601)
    for _ in range(2000):
        n = rng.choice([rng.randint(0, 256), *EDGE_LENGTHS])
        count = rng.randint(1, 64)
        start = rng.choice([0, MAX_NONCE - count + 1, rng.randint(0, MAX_NONCE - count + 1)])
        target = bytes([rng.randint(0, 255)]) + rng.randbytes(31)
        p = params(rng.randbytes(n), start, count, target, rng.choice([0, 1, 64]))
        assert run_c(p, impl, chunk=rng.randint(1, 70)) == kernels.run(
            "sha256_search", p, backend="python"
        ), p


@pytest.mark.parametrize("impl", IMPLS)
def test_every_prefix_length_hashes_like_hashlib(impl: str) -> None:
    # One nonce per length, with target ff..ff: best_hash is the raw hash of that message.
    for n in range(257):
        prefix = bytes(range(n % 251, n % 251 + 1)) * n
        nonce = MAX_NONCE - n
        r = run_c(params(prefix, nonce, 1, b"\xff" * 32, 1), impl)
        assert r["best_hash"] == hashlib.sha256(prefix + struct.pack("<Q", nonce)).digest(), n
        assert r["best_nonce"] == nonce


def test_long_run_in_c_matches_the_twin_at_76_bytes() -> None:
    # The benchmark's shape: a 76-byte prefix (one compression per nonce), 1/16 qualify.
    p = params(bytes(range(76)), 2**40, 100_000, b"\x10" + bytes(31), 64)
    c = kernels.run("sha256_search", p, backend="c", chunk_units=7_777)
    assert c == kernels.run("sha256_search", p, backend="python")
    assert len(c["found"]) == 64 and 5_000 < c["found_total"] < 7_500
    assert c == run_c(p, "portable")


def test_big_range_in_c_is_chunk_independent() -> None:
    p = params(b"edge-grid" * 9, MAX_NONCE - 2**21 + 1, 2**21, b"\x00\x04" + bytes(30), 8)
    whole = kernels.run("sha256_search", p, backend="c")
    assert kernels.run("sha256_search", p, backend="c", chunk_units=99_991) == whole
    # 2**21 nonces at 2**-14 each: about 128 qualify, and the best hash is far below the target.
    assert 64 < whole["found_total"] < 256
    assert whole["found"] == sorted(whole["found"]) and whole["best_hash"][:2] == b"\x00\x00"
    h = hashlib.sha256(p["prefix"] + struct.pack("<Q", whole["best_nonce"])).digest()
    assert h == whole["best_hash"]


def test_ties_keep_the_earliest_nonce() -> None:
    # Real hashes do not collide, so resume from a checkpoint whose best is an earlier nonce (3)
    # with exactly the range's smallest hash: an equal hash later must not replace it.
    p = sha256_search.validate(params(b"tie", 10, 50, bytes(32), 4))
    smallest = reference(p)["best_hash"]
    for step in (sha256_search.step, native.sha256_search_step):
        state = sha256_search.start(p)
        state.update(best_hash=smallest, best_nonce=3)
        step(p, state, 50)
        assert (state["best_hash"], state["best_nonce"]) == (smallest, 3)


@pytest.mark.parametrize(("first", "then"), [("c", "python"), ("python", "c")])
def test_checkpoint_resumes_on_the_other_backend(first: str, then: str) -> None:
    p = params(b"\x07" * 100, 2**63 - 500, 1_000, b"\x30" + bytes(31), 16)
    ex = kernels.Execution("sha256_search", p, backend=first)
    ex.step(417)
    # The checkpoint crosses the wire as canonical CBOR.
    state = cbor2.loads(cbor2.dumps(ex.checkpoint(), canonical=True))
    assert state == ex.checkpoint()
    resumed = kernels.Execution("sha256_search", p, backend=then, state=state)
    while not resumed.done:
        resumed.step(100)
    assert resumed.result() == kernels.run("sha256_search", p, backend="python")


def test_c_refuses_a_state_that_does_not_fit() -> None:
    p = sha256_search.validate(params(b"x", 0, 10, bytes(32), 1))
    state = sha256_search.start(p)
    state["found"] = [1, 2]  # more than max_found: the C guard, not an overflow
    with pytest.raises(RuntimeError, match="sha256_search"):
        native.sha256_search_step(p, state, 10)
    # Oversized buffers are refused by cffi before C runs, never read or written past the end.
    for key, value in (("found", list(range(65))), ("best_hash", bytes(33))):
        with pytest.raises(IndexError):
            native.sha256_search_step(p, {**sha256_search.start(p), key: value}, 10)


def test_default_max_found_and_work_units() -> None:
    v = sha256_search.validate({"prefix": b"", "start": 0, "count": 2**32, "target": bytes(32)})
    assert v["max_found"] == 16
    assert sha256_search.work_units(v) == 2**32


GOOD = params(b"abc", 0, 10, bytes(32), 16)
BAD: list[tuple[dict[str, Any], str]] = [
    ({k: v for k, v in GOOD.items() if k != "prefix"}, "missing param 'prefix'"),
    ({k: v for k, v in GOOD.items() if k != "target"}, "missing param 'target'"),
    ({**GOOD, "nonce": 1}, "unknown param 'nonce'"),
    ({**GOOD, "prefix": "abc"}, "'prefix' must be bytes"),
    ({**GOOD, "prefix": bytearray(b"abc")}, "'prefix' must be bytes"),
    ({**GOOD, "prefix": bytes(257)}, "'prefix' has 257 bytes"),
    ({**GOOD, "start": -1}, "'start'=-1 out of range"),
    ({**GOOD, "start": 2**64}, "'start'=18446744073709551616 out of range"),
    ({**GOOD, "start": True}, "'start' must be an int"),
    ({**GOOD, "start": 1.0}, "'start' must be an int"),
    ({**GOOD, "count": 0}, "'count'=0 out of range"),
    ({**GOOD, "count": 2**32 + 1}, "'count'=4294967297 out of range"),
    ({**GOOD, "count": False}, "'count' must be an int"),
    ({**GOOD, "start": MAX_NONCE, "count": 2}, "passes 2\\*\\*64 - 1"),
    ({**GOOD, "target": bytes(31)}, "'target' has 31 bytes"),
    ({**GOOD, "target": bytes(33)}, "'target' has 33 bytes"),
    ({**GOOD, "target": None}, "missing param 'target'"),
    ({**GOOD, "max_found": 65}, "'max_found'=65 out of range"),
    ({**GOOD, "max_found": -1}, "'max_found'=-1 out of range"),
    ({**GOOD, "max_found": True}, "'max_found' must be an int"),
]


@pytest.mark.parametrize(("bad", "message"), BAD, ids=[m for _, m in BAD])
@pytest.mark.parametrize("backend", ["c", "python"])
def test_bad_params_are_rejected(bad: dict[str, Any], message: str, backend: str) -> None:
    with pytest.raises(KernelError, match=message):
        kernels.run("sha256_search", bad, backend=backend)


def test_params_must_be_a_map() -> None:
    with pytest.raises(KernelError, match="must be a map"):
        sha256_search.validate([("prefix", b"")])


@pytest.mark.parametrize("impl", ["copy", "rehash", "pure"])
def test_python_hashers_agree_with_hashlib(impl: str) -> None:
    rng = random.Random(7)
    for n in [*EDGE_LENGTHS, 200]:
        prefix = rng.randbytes(n)
        digest = sha256_search.hasher(prefix, impl)
        tail = rng.randbytes(8)
        assert digest(tail) == hashlib.sha256(prefix + tail).digest(), n
    with pytest.raises(KernelError, match="unknown hasher"):
        sha256_search.hasher(b"", "md5")


def test_pure_sha256_matches_hashlib() -> None:
    rng = random.Random(3)
    for n in range(0, 300, 7):
        data = rng.randbytes(n)
        assert sha256_search.sha256_pure(data) == hashlib.sha256(data).digest(), n


# --- known-answer vectors shared with the MicroPython test ---------------------------------


def vector_cases() -> list[dict[str, Any]]:
    """Small cases (MicroPython hashes each nonce from scratch) around every edge."""
    rng = random.Random(1)
    cases = [
        params(b"", 0, 3, b"\xff" * 32, 16),
        params(b"", MAX_NONCE - 4, 5, bytes(32), 0),
        params(bytes(range(76)), 2**32 - 20, 40, b"\x20" + bytes(31), 4),
        params(b"\x01" * 47, 2**31 - 6, 12, b"\x80" + bytes(31), 64),
        params(b"\x02" * 48, 2**62, 12, b"\x80" + bytes(31), 1),
        params(b"\x03" * 63, MAX_NONCE - 9, 10, rng.randbytes(32), 2),
        params(b"\x04" * 64, 1, 9, b"\x40" + bytes(31), 3),
        params(bytes(256), 12345, 15, b"\x10" + bytes(31), 16),
    ]
    for n in (55, 56, 57, 119, 120, 200):
        target = bytes([rng.randint(1, 255)]) + rng.randbytes(31)
        start = rng.randint(0, MAX_NONCE - 20)
        cases.append(params(rng.randbytes(n), start, 20, target, rng.choice([0, 1, 5])))
    return cases


def encode_vector(p: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    return {
        "params": {**p, "prefix": p["prefix"].hex(), "target": p["target"].hex()},
        "result": {**r, "best_hash": r["best_hash"].hex()},
    }


def build_vectors() -> list[dict[str, Any]]:
    return [encode_vector(p, kernels.run("sha256_search", p, backend="c")) for p in vector_cases()]


def test_vector_file_matches_the_c_kernel() -> None:
    stored = json.loads(VECTORS.read_text())
    assert stored == build_vectors()
    for v in stored:
        p = {**v["params"], "prefix": bytes.fromhex(v["params"]["prefix"]),
             "target": bytes.fromhex(v["params"]["target"])}
        assert encode_vector(p, reference(p)) == v


if __name__ == "__main__":
    # Regenerate the vectors after a deliberate change of semantics:
    #   .venv/bin/python -m tests.test_kernel_sha256_search
    VECTORS.write_text(json.dumps(build_vectors(), indent=1) + "\n")
