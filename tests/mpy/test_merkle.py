# edge_agent.core.merkle under the real MicroPython interpreter: RFC 6962 known answers, every
# leaf of small trees proves, and tampering or malformed input gives False, never an exception.
# tests/test_merkle.py adds a reference implementation and hypothesis on CPython.
from mpyassert import load_json, raises, unhex

from edge_agent.core import merkle

CT = load_json("tests/data/crypto_vectors.json")["rfc6962"]
CT_LEAVES = [unhex(h) for h in CT["leaves"]]
CT_ROOTS = [unhex(h) for h in CT["roots"]]


def _flip(data, bit):
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def _inserted(path, k, h):
    # (MicroPython has no [*a, b] displays.)
    out = list(path)
    out.insert(k, h)
    return out


def _replaced(path, k, h):
    out = list(path)
    out[k] = h
    return out


def _leaves(n):
    return [b"leaf %d" % i for i in range(n)]


def test_known_roots():
    sha256_of_nothing = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle.root([]) == unhex(sha256_of_nothing)
    for n in range(1, len(CT_LEAVES) + 1):
        assert merkle.root(CT_LEAVES[:n]) == CT_ROOTS[n - 1], n
    assert merkle.leaf_hash(b"") == CT_ROOTS[0]


def test_known_inclusion_proofs():
    for v in CT["inclusion_proofs"]:
        i = v["index"]
        n = v["size"]
        path = [unhex(h) for h in v["path"]]
        assert merkle.proof(CT_LEAVES[:n], i) == path, (i, n)
        assert merkle.verify(CT_ROOTS[n - 1], CT_LEAVES[i], i, n, path), (i, n)


def test_corrupted_known_proofs_fail():
    # The probes transparency-dev/merkle runs against the same vectors.
    some_hash = unhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    empty_root = merkle.root([])
    for v in CT["inclusion_proofs"]:
        i = v["index"]
        n = v["size"]
        path = [unhex(h) for h in v["path"]]
        root = CT_ROOTS[n - 1]
        leaf = CT_LEAVES[i]
        probes = [
            (root, leaf, i - 1, n, path),
            (root, leaf, i + 1, n, path),
            (root, leaf, i ^ 2, n, path),
            (root, leaf, i, n * 2, path),
            (root, leaf, i, n // 2, path),
            (root, b"WrongLeaf", i, n, path),
            (empty_root, leaf, i, n, path),
            (some_hash, leaf, i, n, path),
            (root, leaf, i, n, _inserted(path, len(path), b"")),
            (root, leaf, i, n, _inserted(path, len(path), root)),
            (root, leaf, i, n, _inserted(path, 0, b"")),
            (root, leaf, i, n, _inserted(path, 0, root)),
            (root, leaf, i, n, path[:-1]),
            (root, leaf, i, n, _inserted(path, 1, some_hash)),
        ]
        for k in range(len(path)):
            probes.append((root, leaf, i, n, _replaced(path, k, _flip(path[k], 3))))
        for probe in probes:
            assert merkle.verify(*probe) is False, (i, n, probe)


def test_every_leaf_of_trees_up_to_33_proves():
    for n in range(1, 34):
        leaves = _leaves(n)
        tree = merkle.MerkleTree(leaves)
        root = merkle.root(leaves)
        assert tree.root() == root and len(tree) == n
        proofs = merkle.proofs_all(leaves)
        assert len(proofs) == n
        for i in range(n):
            assert proofs[i] == merkle.proof(leaves, i) == tree.proof(i)
            assert merkle.verify(root, leaves[i], i, n, proofs[i]) is True, (n, i)


def test_tampering_fails_for_every_leaf_of_trees_up_to_33():
    for n in range(1, 34):
        leaves = _leaves(n)
        root = merkle.root(leaves)
        for i in range(n):
            path = merkle.proof(leaves, i)
            leaf = leaves[i]
            bit = (n * 7 + i * 13) % 256  # a different bit for every (n, i)
            assert not merkle.verify(_flip(root, bit), leaf, i, n, path)
            assert not merkle.verify(root, _flip(leaf, bit % (8 * len(leaf))), i, n, path)
            for k in range(len(path)):
                bad = _replaced(path, k, _flip(path[k], bit))
                assert not merkle.verify(root, leaf, i, n, bad), (n, i, k)
            for index_bit in range(6):
                j = i ^ (1 << index_bit)
                assert not merkle.verify(root, leaf, j, n, path), (n, i, j)


def test_malformed_input_is_false_not_an_exception():
    leaves = _leaves(5)
    root = merkle.root(leaves)
    path = merkle.proof(leaves, 2)
    assert merkle.verify(root, leaves[2], 2, 5, path) is True
    bad = [
        (root, leaves[2], 2, 5, None),
        (root, leaves[2], 2, 5, "path"),
        (root, leaves[2], 2, 5, _replaced(path, 1, None)),
        (root, leaves[2], 2, 5, _replaced(path, 1, "x" * 32)),
        (root, leaves[2], 2, 5, _replaced(path, 1, path[1][:31])),
        (root, leaves[2], -1, 5, path),
        (root, leaves[2], 5, 5, path),
        (root, leaves[2], 2, 0, path),
        (root, leaves[2], 2, -5, path),
        (root, leaves[2], "2", 5, path),
        (root, leaves[2], 2, None, path),
        (root, leaves[2], 2.0, 5, path),
        (root, "leaf 2", 2, 5, path),
        (None, leaves[2], 2, 5, path),
        (root[:31], leaves[2], 2, 5, path),
        (root.hex(), leaves[2], 2, 5, path),
    ]
    for args in bad:
        assert merkle.verify(*args) is False, args
    assert merkle.verify(bytearray(root), bytearray(leaves[2]), 2, 5, tuple(path)) is True
    assert merkle.root_from_path(None, 2, 5, path) is None
    assert merkle.root_from_path(merkle.leaf_hash(leaves[2]), 2, 5, path) == root


def test_single_leaf_and_empty_trees():
    assert merkle.proof([b"x"], 0) == []
    assert merkle.verify(merkle.leaf_hash(b"x"), b"x", 0, 1, []) is True
    assert merkle.verify(merkle.root([]), b"", 0, 0, []) is False
    raises(IndexError, merkle.proof, [], 0)
    raises(IndexError, merkle.proof, [b"x"], 1)
    raises(IndexError, merkle.proof, [b"x"], -1)
    assert merkle.proofs_all([]) == []
    assert len(merkle.MerkleTree()) == 0


def test_tree_from_leaf_hashes_equals_tree_from_leaves():
    leaves = _leaves(21)
    tree = merkle.MerkleTree.from_leaf_hashes([merkle.leaf_hash(d) for d in leaves])
    assert tree.root() == merkle.root(leaves)
    assert tree.proofs() == merkle.proofs_all(leaves)
    top = merkle.levels([merkle.leaf_hash(d) for d in leaves])
    assert top[-1] == [tree.root()] and top[0] == [merkle.leaf_hash(d) for d in leaves]
