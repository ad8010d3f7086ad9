/* Whole RFC 6962 trees and all their audit paths in C (semantics: merkle.h).
 *
 * Hashing reuses the SHA-256 compression paths of the search kernel (portable, SHA-NI, ARMv8)
 * through their two-stream entry points: the messages of one level all have the same length, so
 * they are hashed in pairs whose blocks go through the SIMD units interleaved. */
#include "merkle.h"

#include <string.h>

#include "sha256_scan.h"
#include "sha256_search.h"

#define HASH 32
#define LEAF_PREFIX 0x00
#define NODE_PREFIX 0x01
/* Blocks of one message built per compress2 call: bounds the scratch, whatever leaf_len is. */
#define CHUNK_BLOCKS 4
/* Keeps 32 * (every path's hashes) inside size_t: at most n * 64 hashes. */
#define MAX_LEAVES (SIZE_MAX >> 12)
#define MAX_LEVELS 65

typedef struct {
    size_t levels;          /* 0 for the empty tree, else 1 + ceil(log2 n) */
    size_t nodes;           /* all levels' hashes */
    size_t size[MAX_LEVELS]; /* hashes in level l (0 = leaves) */
    size_t off[MAX_LEVELS];  /* index of level l's first hash */
} tree_shape;

static void shape_of(size_t n, tree_shape *s)
{
    s->levels = 0;
    s->nodes = 0;
    for (size_t size = n; size > 0; size = size > 1 ? size / 2 + (size & 1) : 0) {
        s->off[s->levels] = s->nodes;
        s->size[s->levels++] = size;
        s->nodes += size;
    }
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Blocks [first, first + count) of the padded message prefix || data[0 .. len): the prefix
 * byte, the data, 0x80, zeros, and the bit length in the last 8 bytes of block total - 1. */
static void fill_blocks(uint8_t *dst, uint8_t prefix, const uint8_t *data, size_t len,
                        size_t first, size_t count, size_t total)
{
    const size_t lo = 64 * first, hi = lo + 64 * count, end = 1 + len;
    const size_t a = lo > 1 ? lo : 1, b = hi < end ? hi : end;

    memset(dst, 0, hi - lo);
    if (lo == 0) {
        dst[0] = prefix;
    }
    if (a < b) {
        memcpy(dst + (a - lo), data + (a - 1), b - a);
    }
    if (end >= lo && end < hi) {
        dst[end - lo] = 0x80;
    }
    if (first + count == total) {
        const uint64_t bits = (uint64_t)end * 8;
        for (int i = 0; i < 8; i++) {
            dst[hi - lo - 1 - i] = (uint8_t)(bits >> (8 * i));
        }
    }
}

/* out[32 i ..] = SHA-256(prefix || data[i len .. (i + 1) len)) for i < count, two at a time. */
static void hash_all(sha256_compress2_fn compress2, uint8_t prefix, const uint8_t *data,
                     size_t len, size_t count, uint8_t *out)
{
    const size_t total = (len + 1 + 9 + 63) / 64; /* + prefix, + 0x80 and the 8-byte length */
    uint8_t bx[64 * CHUNK_BLOCKS], by[64 * CHUNK_BLOCKS];

    for (size_t i = 0; i < count; i += 2) {
        const size_t j = i + 1 < count ? i + 1 : i; /* an odd last message runs in both lanes */
        uint32_t hx[8], hy[8];
        memcpy(hx, sha256_iv, sizeof hx);
        memcpy(hy, sha256_iv, sizeof hy);
        for (size_t b = 0; b < total; b += CHUNK_BLOCKS) {
            const size_t nb = total - b < CHUNK_BLOCKS ? total - b : CHUNK_BLOCKS;
            fill_blocks(bx, prefix, data + i * len, len, b, nb, total);
            fill_blocks(by, prefix, data + j * len, len, b, nb, total);
            compress2(hx, hy, bx, by, nb);
        }
        for (int w = 0; w < 8; w++) {
            store_be32(out + HASH * i + 4 * w, hx[w]);
            store_be32(out + HASH * j + 4 * w, hy[w]);
        }
    }
}

static sha256_compress2_fn compress2_for(int impl)
{
    switch (impl) {
#if defined(__x86_64__) && defined(__GNUC__)
    case SHA256_IMPL_X86_SHANI:
        return sha256_compress2_shani;
#endif
#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
    case SHA256_IMPL_ARMV8_SHA2:
        return sha256_compress2_armv8;
#endif
    default:
        return sha256_compress2_portable;
    }
}

int merkle_tree(const uint8_t *leaves, size_t leaves_len, size_t leaf_len, size_t n,
                uint8_t *nodes, size_t nodes_len, int impl)
{
    tree_shape s;
    const int used = sha256_pick_impl(impl);

    if (used < 0 || n > MAX_LEAVES || (leaf_len && n > SIZE_MAX / leaf_len) ||
        leaves_len != n * leaf_len) {
        return -1;
    }
    shape_of(n, &s);
    if (nodes_len != HASH * s.nodes || (n && (!leaves || !nodes))) {
        return -1;
    }
    const sha256_compress2_fn compress2 = compress2_for(used);
    hash_all(compress2, LEAF_PREFIX, leaves, leaf_len, n, nodes);
    for (size_t l = 0; l + 1 < s.levels; l++) {
        const uint8_t *level = nodes + HASH * s.off[l];
        uint8_t *up = nodes + HASH * s.off[l + 1];
        const size_t pairs = s.size[l] / 2;
        /* Node j's input is hashes 2j and 2j + 1 of the level below: already adjacent. */
        hash_all(compress2, NODE_PREFIX, level, 2 * HASH, pairs, up);
        if (s.size[l] & 1) {
            memcpy(up + HASH * pairs, level + HASH * (s.size[l] - 1), HASH);
        }
    }
    return used;
}

static size_t path_len(const tree_shape *s, size_t i)
{
    size_t hashes = 0;
    for (size_t l = 0; l + 1 < s->levels; l++) {
        hashes += ((i >> l) ^ 1) < s->size[l];
    }
    return hashes;
}

int merkle_paths(const uint8_t *nodes, size_t nodes_len, size_t n, size_t first, size_t count,
                 uint8_t *paths, size_t paths_len)
{
    tree_shape s;
    size_t hashes = 0;

    if (n > MAX_LEAVES || first > n || count > n - first) {
        return -1;
    }
    shape_of(n, &s);
    for (size_t i = first; i < first + count; i++) {
        hashes += path_len(&s, i);
    }
    if (nodes_len != HASH * s.nodes || paths_len != HASH * hashes ||
        (paths_len && (!nodes || !paths))) {
        return -1;
    }
    uint8_t *out = paths;
    for (size_t i = first; i < first + count; i++) {
        for (size_t l = 0; l + 1 < s.levels; l++) {
            const size_t sibling = (i >> l) ^ 1;
            if (sibling < s.size[l]) {
                memcpy(out, nodes + HASH * (s.off[l] + sibling), HASH);
                out += HASH;
            }
        }
    }
    return 0;
}
