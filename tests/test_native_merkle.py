"""Whole RFC 6962 trees in C (native/src/merkle.c via edge_agent.native): every SHA-256 path this
CPU has against the Python twin (gateway.settlement), the portable core (edge_agent.core.merkle)
and RFC 6962's recursive definition; the settlement built either way; bad arguments refused."""

from __future__ import annotations

import hashlib
import random
import sys
from itertools import chain

import pytest
from edge_agent._native_c import ffi, lib
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import native
from edge_agent.core import merkle, rewards
from gateway.settlement import all_paths, leaf_levels
from tests.test_kernel_sha256_search import cpu_has_sha_ni
from tests.test_rewards import dev_id, settle

IMPLS = native.sha256_search_impls()
# Leaf lengths where the padded leaf message (0x00 || leaf || 0x80 || 8-byte length) gains a
# block: 54 | 55, 118 | 119, 182 | 183; from 247 C builds it in more than one 4-block chunk.
BLOCK_EDGES = [0, 1, 2, 31, 32, 53, 54, 55, 63, 64, 65, 80, 117, 118, 119, 182, 183, 246, 247,
               248, 311, 1000]


def packed(n: int, leaf_len: int, seed: int) -> tuple[bytes, list[bytes]]:
    leaves = [random.Random(seed * 7919 + i).randbytes(leaf_len) for i in range(n)]
    return b"".join(leaves), leaves


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """MTH of RFC 6962 section 2.1, recursively: a third implementation, shaped by the split."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + rfc6962_root(leaves[:k]) + rfc6962_root(leaves[k:])).digest()


def rfc6962_path(m: int, leaves: list[bytes]) -> bytes:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1, deepest sibling first."""
    if len(leaves) == 1:
        return b""
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return rfc6962_path(m, leaves[:k]) + rfc6962_root(leaves[k:])
    return rfc6962_path(m - k, leaves[k:]) + rfc6962_root(leaves[:k])


def check_every_implementation(n: int, leaf_len: int, seed: int, rfc: bool = False) -> None:
    """C on every path == the Python twin == the core tree (== RFC 6962's recursion if rfc)."""
    data, leaves = packed(n, leaf_len, seed)
    core = merkle.MerkleTree(leaves)
    levels = merkle.levels([merkle.leaf_hash(x) for x in leaves])
    paths = [b"".join(p) for p in core.proofs()]
    if rfc and n:
        assert levels[-1] == [rfc6962_root(leaves)]
        assert paths == [rfc6962_path(i, leaves) for i in range(n)]
    twin, twin_nodes = leaf_levels(data, leaf_len, n, use_native=False)
    assert (twin, twin_nodes) == (levels, b"")
    assert all_paths(twin) == paths
    for impl in [*IMPLS, "auto"]:
        nodes = native.merkle_tree(data, leaf_len, n, impl)
        assert nodes == b"".join(chain.from_iterable(levels)), impl
        assert native.merkle_split(nodes, n) == levels
        assert native.merkle_levels(data, leaf_len, n, impl) == levels
        assert native.merkle_paths(nodes, n) == paths


def test_this_machine_builds_and_runs_every_path_it_has() -> None:
    assert native.AVAILABLE
    assert IMPLS[0] == "portable"
    assert ("x86-sha-ni" in IMPLS) == cpu_has_sha_ni()


@pytest.mark.parametrize("n", range(71))
def test_every_shape_up_to_70_leaves_is_rfc6962(n: int) -> None:
    check_every_implementation(n, 80, seed=n, rfc=True)


@pytest.mark.parametrize("leaf_len", sorted(set(range(1, 201)) | set(BLOCK_EDGES)))
def test_every_leaf_length(leaf_len: int) -> None:
    for n in (1, 2, 5):
        check_every_implementation(n, leaf_len, seed=leaf_len)


@settings(max_examples=20, deadline=None)
@given(st.integers(71, 3000), st.integers(1, 200), st.integers(0, 2**32))
def test_random_larger_trees(n: int, leaf_len: int, seed: int) -> None:
    check_every_implementation(n, leaf_len, seed)


def test_paths_cross_the_c_calls_chunk_edges() -> None:
    # 2,500 leaves: every path-length run is cut into several C calls of MERKLE_PATHS_CHUNK bytes.
    n = 2 * native.MERKLE_PATHS_CHUNK // (32 * 12) + 123
    data, leaves = packed(n, 16, seed=1)
    nodes = native.merkle_tree(data, 16, n)
    paths = native.merkle_paths(nodes, n)
    root = nodes[-32:]
    assert root == merkle.root(leaves)
    assert [merkle.verify(root, leaves[i], i, n, [p[j : j + 32] for j in range(0, len(p), 32)])
            for i, p in enumerate(paths)] == [True] * n


def test_a_settlement_is_the_same_tree_built_in_c_or_python() -> None:
    rng = random.Random(5)
    credits = {dev_id(k): rng.randrange(2**50) for k in range(1000)}
    s = settle(credits)
    devices = sorted(credits)
    data = b"".join(rewards.leaf(i, d, credits[d]) for i, d in enumerate(devices))
    python_levels, _ = leaf_levels(data, rewards.LEAF_SIZE, len(devices), use_native=False)
    assert s.levels == python_levels
    assert s.nodes == b"".join(chain.from_iterable(python_levels))  # C built it
    assert s.paths() == all_paths(python_levels) == [s.path(i) for i in range(len(devices))]


# --- bad arguments -------------------------------------------------------------------------------
# TypeError / ValueError come from the Python checks: C would answer -1 (RuntimeError) and cffi
# would raise OverflowError for a negative or huge size.

LEAVES = bytes(80 * 3)


@pytest.mark.parametrize(
    ("leaves", "leaf_len", "n", "error"),
    [
        ("abc", 1, 3, TypeError),
        ([b"a"] * 3, 1, 3, TypeError),
        (memoryview(LEAVES), 80, 3, TypeError),
        (LEAVES, 80, 2, ValueError),  # the bytes are 3 leaves, not 2
        (LEAVES, 81, 3, ValueError),
        (LEAVES, -80, -3, ValueError),
        (b"", 2**70, 0, ValueError),  # above size_t: cffi would overflow
        (b"", 0, sys.maxsize + 1, ValueError),
        (LEAVES, 80.0, 3, ValueError),
        (LEAVES, 80, True, ValueError),
    ],
)
def test_merkle_tree_refuses_bad_leaves(leaves: object, leaf_len: object, n: object,
                                        error: type[Exception]) -> None:
    with pytest.raises(error):
        native.merkle_tree(leaves, leaf_len, n)  # type: ignore[arg-type]
    with pytest.raises(error):
        native.merkle_levels(leaves, leaf_len, n)  # type: ignore[arg-type]


def test_an_unknown_sha256_path_is_refused_and_a_missing_one_fails_in_c() -> None:
    with pytest.raises(ValueError, match="unknown"):
        native.merkle_tree(LEAVES, 80, 3, "sha-3")
    missing = [k for k in native.SHA256_IMPLS if k != "auto" and k not in IMPLS]
    assert missing  # x86 has no ARMv8 path (and an ARM machine no SHA-NI)
    for impl in missing:
        with pytest.raises(RuntimeError, match="unavailable"):
            native.merkle_tree(LEAVES, 80, 3, impl)


@pytest.mark.parametrize(
    ("nodes", "n", "error"),
    [
        (bytearray(32 * 6), 3, TypeError),
        (bytes(32 * 5), 3, ValueError),  # 3 leaves have 3 + 2 + 1 nodes
        (bytes(32 * 6), 4, ValueError),
        (bytes(32 * 6), -3, ValueError),
        (b"", None, ValueError),
    ],
)
def test_split_and_paths_refuse_nodes_that_are_not_a_tree(nodes: object, n: object,
                                                           error: type[Exception]) -> None:
    with pytest.raises(error):
        native.merkle_split(nodes, n)  # type: ignore[arg-type]
    with pytest.raises(error):
        native.merkle_paths(nodes, n)  # type: ignore[arg-type]


def test_c_itself_refuses_inconsistent_lengths_and_writes_nothing() -> None:
    leaves = ffi.from_buffer(LEAVES)
    nodes = bytearray(b"\xee" * 32 * 6)
    out = ffi.from_buffer(nodes, require_writable=True)
    assert lib.merkle_tree(leaves, len(LEAVES), 80, 3, out, len(nodes), 0) >= 1
    tree = bytes(nodes)
    nodes[:] = b"\xee" * len(nodes)
    assert lib.merkle_tree(leaves, len(LEAVES) - 1, 80, 3, out, len(nodes), 0) == -1
    assert lib.merkle_tree(leaves, len(LEAVES), 80, 3, out, len(nodes) - 32, 0) == -1
    assert lib.merkle_tree(leaves, len(LEAVES), 80, 3, out, len(nodes), 99) == -1
    assert nodes == b"\xee" * len(nodes)
    # Leaf paths of the 3-leaf tree: 2, 2 and 1 hashes.
    paths = bytearray(32 * 5)
    p = ffi.from_buffer(paths, require_writable=True)
    src = ffi.from_buffer(tree)
    assert lib.merkle_paths(src, len(tree), 3, 0, 3, p, 32 * 5) == 0
    assert lib.merkle_paths(src, len(tree), 3, 2, 1, p, 32) == 0
    for first, count, size in ((0, 3, 32 * 4), (2, 2, 32 * 3), (4, 0, 0), (0, 4, 32 * 5)):
        assert lib.merkle_paths(src, len(tree), 3, first, count, p, size) == -1
    assert lib.merkle_paths(src, len(tree) - 32, 3, 0, 3, p, 32 * 5) == -1
