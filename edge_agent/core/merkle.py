"""SHA-256 Merkle trees shaped and hashed as RFC 6962 (Certificate Transparency) section 2.1.

    leaf_hash(data) = SHA-256(0x00 || data)
    node_hash(l, r) = SHA-256(0x01 || l || r)
    root([])        = SHA-256(b"")
    root(leaves)    : for n > 1 leaves, split at k = the largest power of two < n, and hash the
                      roots of leaves[:k] and leaves[k:] with node_hash.

The prefixes keep a leaf from passing for an inner node (no second-preimage trick), and the
shape makes proof() an RFC 6962 audit path: sibling hashes from the leaf up to the root.

verify(root, leaf, i, n, proof) takes the tree size n. (The issue sketched verify(root, leaf, i,
proof).) In an RFC 6962 tree the last leaves of a tree whose size is not a power of two sit
higher up, so which side each proof hash goes on, and how many there are, depends on n as well
as on i. Without n a proof for one (i, n) could be replayed as a proof for another position.
The verifier follows RFC 9162 section 2.1.3.2.

Cost: the RFC's recursive split produces the same tree as a bottom-up build in which each level
pairs neighbours left to right and carries an odd last node up unchanged. That is how levels()
builds it, so root() costs n - 1 node hashes, and a whole MerkleTree(leaves) gives every leaf's
proof from its stored levels in O(log n) each (O(n log n) for proofs_all). For 100,000 devices
the gateway builds one MerkleTree (it keeps about 2n hashes) and asks it for each proof.

Runs on MicroPython: only hashlib.sha256 and plain lists of bytes.
"""

import hashlib

HASH_SIZE = 32
_EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data):
    """SHA-256(0x00 || data): the hash a leaf of data contributes to the tree."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    """SHA-256(0x01 || left || right): the hash of an inner node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def levels(leaf_hashes):
    """Every level of the tree over already-hashed leaves, the leaves first and [root] last.

    Empty input gives [[]] (no levels to speak of; root() handles the empty tree).
    """
    level = list(leaf_hashes)
    out = [level]
    while len(level) > 1:
        up = [node_hash(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])  # an odd last node moves up unchanged (RFC 6962's split)
        out.append(up)
        level = up
    return out


def _path(tree_levels, i):
    """The audit path of leaf i: one sibling per level where leaf i's ancestor has one."""
    path = []
    for level in tree_levels[:-1]:
        sibling = i ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        i >>= 1
    return path


def _check_index(i, n):
    if type(i) is not int or i < 0 or i >= n:
        raise IndexError("leaf index %r out of range for %d leaves" % (i, n))


class MerkleTree:
    """A tree built once over its leaves, giving its root and any leaf's proof.

    MerkleTree(leaves) hashes the leaves; MerkleTree.from_leaf_hashes(hashes) starts from hashes
    made with leaf_hash (e.g. stored beside the data, so they are not recomputed).
    """

    def __init__(self, leaves=()):
        self._levels = levels([leaf_hash(d) for d in leaves])

    @classmethod
    def from_leaf_hashes(cls, hashes):
        tree = cls()
        tree._levels = levels(hashes)
        return tree

    def __len__(self):
        return len(self._levels[0])

    def root(self):
        return self._levels[-1][0] if self._levels[0] else _EMPTY_ROOT

    def proof(self, i):
        """The RFC 6962 audit path of leaf i, deepest sibling first; IndexError if no such leaf."""
        _check_index(i, len(self))
        return _path(self._levels, i)

    def proofs(self):
        """Every leaf's audit path, in leaf order."""
        return [_path(self._levels, i) for i in range(len(self))]


def root(leaves):
    """The RFC 6962 root over a list of leaves (bytes); SHA-256(b"") for no leaves."""
    return MerkleTree(leaves).root()


def proof(leaves, i):
    """The audit path proving leaves[i] (bytes32 list, deepest sibling first)."""
    return MerkleTree(leaves).proof(i)


def proofs_all(leaves):
    """The audit path of every leaf, in leaf order: O(n log n) hashes copied, n - 1 computed."""
    return MerkleTree(leaves).proofs()


def root_from_path(leaf_digest, i, n, path):
    """The root that path proves leaf_digest (a leaf_hash) at index i of n leaves leads to.

    None when the path cannot be an audit path for (i, n): wrong length, elements that are not
    32-byte bytes, i outside [0, n). RFC 9162 section 2.1.3.2, which folds the proof while walking
    i and n - 1.
    """
    if type(i) is not int or type(n) is not int or not 0 <= i < n:
        return None
    if not isinstance(path, (list, tuple)) or not isinstance(leaf_digest, bytes):
        return None
    fn = i
    sn = n - 1
    r = leaf_digest
    for p in path:
        if sn == 0 or not isinstance(p, bytes) or len(p) != HASH_SIZE:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # An ancestor with no right sibling moves up unchanged: skip those levels.
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return r


def verify(root_digest, leaf, i, n, path):
    """True iff path proves that leaf (bytes, not yet hashed) is leaf i of the n-leaf tree with
    root root_digest. Never raises: any malformed argument gives False."""
    if not isinstance(leaf, (bytes, bytearray)) or not isinstance(root_digest, (bytes, bytearray)):
        return False
    return root_from_path(leaf_hash(bytes(leaf)), i, n, path) == root_digest
