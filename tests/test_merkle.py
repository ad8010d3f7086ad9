"""The RFC 6962 Merkle tree of the portable core against a direct transcription of the RFC.

tests/mpy/test_merkle.py checks the known answers (certificate-transparency vectors) and
tampering under MicroPython; this file adds an independent recursive implementation of RFC 6962
section 2.1 to compare with, hypothesis, exhaustive bit flips and a gateway-sized tree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.core import merkle
from tests.conftest import DATA, mpy_suite_summary

CT = json.loads((DATA / "crypto_vectors.json").read_text())["rfc6962"]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def split(n: int) -> int:
    """RFC 6962: the largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def rfc_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 section 2.1 defines it, recursively."""
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return sha256(b"\x00" + leaves[0])
    k = split(len(leaves))
    return sha256(b"\x01" + rfc_root(leaves[:k]) + rfc_root(leaves[k:]))


def rfc_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1."""
    if len(leaves) <= 1:
        return []
    k = split(len(leaves))
    if m < k:
        return [*rfc_path(m, leaves[:k]), rfc_root(leaves[k:])]
    return [*rfc_path(m - k, leaves[k:]), rfc_root(leaves[:k])]


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


leaf_lists = st.lists(st.binary(max_size=40), max_size=80)


def test_reference_reproduces_the_ct_vectors() -> None:
    """The reference below is checked too, so agreeing with it means something."""
    leaves = [bytes.fromhex(h) for h in CT["leaves"]]
    for n in range(1, len(leaves) + 1):
        assert rfc_root(leaves[:n]).hex() == CT["roots"][n - 1]
    for v in CT["inclusion_proofs"]:
        assert [h.hex() for h in rfc_path(v["index"], leaves[: v["size"]])] == v["path"]


def test_roots_and_paths_equal_the_rfc_definition_up_to_70_leaves() -> None:
    for n in range(71):
        leaves = [bytes([n, i]) * (i % 5) for i in range(n)]
        assert merkle.root(leaves) == rfc_root(leaves), n
        assert merkle.proofs_all(leaves) == [rfc_path(i, leaves) for i in range(n)], n


@settings(max_examples=150)
@given(leaf_lists, st.data())
def test_random_trees_equal_the_rfc_definition(leaves: list[bytes], data: st.DataObject) -> None:
    root = merkle.root(leaves)
    assert root == rfc_root(leaves)
    if leaves:
        i = data.draw(st.integers(0, len(leaves) - 1))
        path = merkle.proof(leaves, i)
        assert path == rfc_path(i, leaves)
        assert merkle.verify(root, leaves[i], i, len(leaves), path)


def assert_flips_fail(n: int, bits: range) -> None:
    """For every leaf of an n-leaf tree: flipping any of the given bits of the root or of any proof
    hash fails, as does flipping any bit of the leaf or claiming any other index below 64."""
    leaves = [b"%d" % i for i in range(n)]
    root = merkle.root(leaves)
    for i, path in enumerate(merkle.proofs_all(leaves)):
        assert merkle.verify(root, leaves[i], i, n, path)
        for bit in bits:
            assert not merkle.verify(flip(root, bit), leaves[i], i, n, path)
            for k in range(len(path)):
                bad = [*path[:k], flip(path[k], bit), *path[k + 1 :]]
                assert not merkle.verify(root, leaves[i], i, n, bad)
        for bit in range(8 * len(leaves[i])):
            assert not merkle.verify(root, flip(leaves[i], bit), i, n, path)
        for j in range(64):
            assert j == i or not merkle.verify(root, leaves[i], j, n, path), (n, i, j)


def test_flips_fail_for_every_leaf_up_to_33() -> None:
    """One bit in each byte of every hash (bit 3, all positions are alike to SHA-256)."""
    for n in range(1, 34):
        assert_flips_fail(n, range(3, 256, 8))


def test_every_single_bit_flip_fails_in_trees_of_sizes_1_3_and_13() -> None:
    for n in (1, 3, 13):
        assert_flips_fail(n, range(256))


hashes = st.binary(min_size=32, max_size=32)
garbage = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.binary(max_size=40),
    st.text(max_size=5),
    st.floats(allow_nan=False),
)


@settings(max_examples=300)
@given(
    st.one_of(hashes, garbage),
    st.one_of(st.binary(max_size=8), garbage),
    st.one_of(st.integers(-3, 40), garbage),
    st.one_of(st.integers(-3, 40), garbage),
    st.one_of(st.lists(st.one_of(hashes, garbage), max_size=8), garbage),
)
def test_verify_never_raises(root: Any, leaf: Any, i: Any, n: Any, path: Any) -> None:
    assert merkle.verify(root, leaf, i, n, path) is False


@settings(max_examples=100)
@given(leaf_lists.filter(bool), st.data())
def test_a_proof_moved_elsewhere_fails(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n))
    path = merkle.proof(leaves, i)
    root = merkle.root(leaves)
    # Only a leaf with the same data and the same audit path could take the proof elsewhere.
    same = j == i or (j < n and leaves[j] == leaves[i] and path == merkle.proof(leaves, j))
    assert merkle.verify(root, leaves[i], j, n, path) is same
    grown = [*leaves, b"extra"]
    still_valid = merkle.proof(grown, i) == path
    assert merkle.verify(merkle.root(grown), leaves[i], i, n + 1, path) is still_valid


def test_gateway_sized_tree() -> None:
    """20,000 leaves: the level build, all proofs from one tree, and spot checks against the RFC."""
    n = 20_000
    leaves = [b"device-%05d:credit-%d" % (i, i * 7) for i in range(n)]
    tree = merkle.MerkleTree(leaves)
    proofs = tree.proofs()
    root = tree.root()
    assert root == merkle.root(leaves)
    assert len(proofs) == n
    assert max(len(p) for p in proofs) == 15  # ceil(log2(20000)); the last leaves sit higher
    for i in (0, 1, 12_345, 16_383, 16_384, n - 2, n - 1):
        assert merkle.verify(root, leaves[i], i, n, proofs[i])
    tail = leaves[16_384:]  # the right subtree at the top split, small enough for the reference
    assert proofs[n - 1][:-1] == rfc_path(len(tail) - 1, tail)
    assert proofs[n - 1][-1] == merkle.root(leaves[:16_384])


def test_runs_in_a_128k_micropython_heap(micropython: str) -> None:
    assert mpy_suite_summary(micropython, "test_merkle", "128K") == "8 passed, 0 failed"
