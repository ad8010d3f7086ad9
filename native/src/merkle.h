#ifndef EDGE_MERKLE_H
#define EDGE_MERKLE_H
/* A whole RFC 6962 tree over n fixed-length leaves in one call (twin of
 * edge_agent/core/merkle.py: levels(), MerkleTree.proof()).
 *
 *   leaf_hash = SHA-256(0x00 || leaf)        node = SHA-256(0x01 || left || right)
 *
 * Built level by level: neighbours are paired left to right and an odd last node moves up
 * unchanged, which gives RFC 6962's left-balanced shape (split at the largest power of two < n).
 *
 * merkle_tree: leaves = n leaves of leaf_len bytes back to back (leaves_len = n * leaf_len);
 * nodes receives every level's 32-byte hashes, leaf hashes first and the root last
 * (nodes_len = 32 * the total node count: n + ceil(n / 2) + ... + 1; 0 for n = 0).
 * impl: a SHA256_IMPL_* of sha256_search.h (AUTO = the fastest this CPU has). Returns the
 * implementation used, or -1 if the forced one is missing or a length is inconsistent (nothing
 * is written then).
 *
 * merkle_paths: from a merkle_tree output of n leaves, the audit paths of leaves first ..
 * first + count - 1 (each the sibling hashes where its ancestor has one, deepest first) back to
 * back in leaf order; paths_len must be their exact total. Returns 0, or -1 on an inconsistent
 * length or range (nothing is written then). A range lets the caller reuse a cache-sized buffer. */
#include <stddef.h>
#include <stdint.h>

int merkle_tree(const uint8_t *leaves, size_t leaves_len, size_t leaf_len, size_t n,
                uint8_t *nodes, size_t nodes_len, int impl);
int merkle_paths(const uint8_t *nodes, size_t nodes_len, size_t n, size_t first, size_t count,
                 uint8_t *paths, size_t paths_len);
#endif
