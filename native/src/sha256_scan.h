#ifndef EDGE_SHA256_SCAN_H
#define EDGE_SHA256_SCAN_H
/* Internals shared by the SHA-256 search paths (portable, x86 SHA-NI, ARMv8 SHA2). */
#include <stddef.h>
#include <stdint.h>

/* One search call, prepared once: the prefix's full 64-byte blocks are folded into `mid`;
 * `tail` holds the prefix remainder, an 8-byte nonce slot at `nonce_off`, the 0x80 pad and
 * the bit length, in `nblocks` (1 or 2) blocks. Only the nonce slot changes per nonce. */
typedef struct {
    uint32_t mid[8];
    uint8_t tail[128];
    unsigned nonce_off;
    unsigned nblocks;
    uint32_t target[8]; /* big-endian words, so word-wise < is bytewise < */
} sha256_job;

/* The running answer (the kernel's resumable state, unpacked). */
typedef struct {
    uint64_t *found;
    uint32_t n_found;
    uint32_t max_found;
    uint64_t found_total;
    uint32_t best[8];
    uint64_t best_nonce;
} sha256_tally;

extern const uint32_t sha256_k[64];
extern const uint32_t sha256_iv[8];

static inline void sha256_put_nonce(uint8_t *p, uint64_t nonce)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(nonce >> (8 * i));
    }
}

static inline int sha256_words_lt(const uint32_t *a, const uint32_t *b)
{
    for (int i = 0; i < 8; i++) {
        if (a[i] != b[i]) {
            return a[i] < b[i];
        }
    }
    return 0;
}

/* Cheapest rejection first: most hashes lose on the first word against both bounds. */
static inline int sha256_may_count(const sha256_job *job, const sha256_tally *t, uint32_t h0)
{
    return h0 <= job->target[0] || h0 <= t->best[0];
}

static inline void sha256_tally_add(const sha256_job *job, sha256_tally *t, const uint32_t *h,
                                    uint64_t nonce)
{
    if (sha256_words_lt(h, job->target)) {
        t->found_total++;
        if (t->n_found < t->max_found) {
            t->found[t->n_found++] = nonce;
        }
    }
    if (sha256_words_lt(h, t->best)) {
        for (int i = 0; i < 8; i++) {
            t->best[i] = h[i];
        }
        t->best_nonce = nonce;
    }
}

/* The SHA256_IMPL_* that `impl` runs as: the fastest this CPU has for AUTO, -1 if a forced one
 * is missing. */
int sha256_pick_impl(int impl);

/* Each path hashes nonces first .. first + n - 1 (n >= 1, no wrap) into the tally. */
void sha256_scan_portable(const sha256_job *job, uint64_t first, uint64_t n, sha256_tally *t);
void sha256_compress_portable(uint32_t state[8], const uint8_t block[64]);

/* Two independent messages at once, for callers hashing many (merkle.c): `nblocks` consecutive
 * 64-byte blocks at bx into sx and at by into sy (states as words a..h). The SIMD paths run the
 * two streams interleaved, as the search does. */
typedef void (*sha256_compress2_fn)(uint32_t sx[8], uint32_t sy[8], const uint8_t *bx,
                                    const uint8_t *by, size_t nblocks);
void sha256_compress2_portable(uint32_t sx[8], uint32_t sy[8], const uint8_t *bx,
                               const uint8_t *by, size_t nblocks);
#if defined(__x86_64__) && defined(__GNUC__)
void sha256_scan_shani(const sha256_job *job, uint64_t first, uint64_t n, sha256_tally *t);
void sha256_compress2_shani(uint32_t sx[8], uint32_t sy[8], const uint8_t *bx, const uint8_t *by,
                            size_t nblocks);
#endif
#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
void sha256_scan_armv8(const sha256_job *job, uint64_t first, uint64_t n, sha256_tally *t);
void sha256_compress2_armv8(uint32_t sx[8], uint32_t sy[8], const uint8_t *bx, const uint8_t *by,
                            size_t nblocks);
#endif
#endif
