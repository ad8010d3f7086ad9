#ifndef EDGE_SHA256_SEARCH_H
#define EDGE_SHA256_SEARCH_H
/* Proof-of-work search (twin of edge_agent/core/kernels/sha256_search.py).
 *
 * For each nonce in [first, first + n): h = SHA-256(prefix || nonce as 8 bytes little-endian).
 * h < target (bytewise, i.e. big-endian 256-bit numbers) counts in *found_total and, while
 * *n_found < max_found, is appended to found[]. h < best_hash (strictly: earliest wins ties)
 * replaces best_hash / best_nonce. All of found/n_found/found_total/best_* are in-out, so a
 * search runs in chunks and resumes from a checkpoint.
 *
 * impl: SHA256_IMPL_AUTO picks the fastest path this CPU has; the others force one (tests).
 * Returns the implementation used, or -1 if the forced one is missing or the args are bad
 * (prefix_len > 256, max_found > 64, *n_found > max_found). */
#include <stddef.h>
#include <stdint.h>

enum {
    SHA256_IMPL_AUTO = 0,
    SHA256_IMPL_PORTABLE = 1,
    SHA256_IMPL_X86_SHANI = 2,
    SHA256_IMPL_ARMV8_SHA2 = 3,
};

int sha256_search_run(const uint8_t *prefix, size_t prefix_len, uint64_t first, uint64_t n,
                      const uint8_t *target, uint32_t max_found, uint64_t *found,
                      uint32_t *n_found, uint64_t *found_total, uint8_t *best_hash,
                      uint64_t *best_nonce, int impl);
/* 1 if `impl` can run on this CPU (SHA256_IMPL_AUTO and _PORTABLE always can). */
int sha256_search_impl_available(int impl);
#endif
