/* SHA-256 search with the x86 SHA extensions (SHA-NI), chosen at run time.
 *
 * Two nonces are hashed side by side: sha256rnds2 has a multi-cycle latency and each round
 * pair depends on the previous one, so a second independent stream fills the gaps. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <string.h>

#include "sha256_scan.h"

#define SHANI __attribute__((target("sha,sse4.1"), always_inline)) static inline

typedef struct {
    __m128i abef, cdgh;
} shani_state;

SHANI __m128i load_be_words(const uint8_t *p)
{
    const __m128i bswap32 = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    return _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)p), bswap32);
}

/* a,b,c,d,e,f,g,h (memory order) -> the ABEF / CDGH register pair sha256rnds2 works on. */
SHANI shani_state shani_from_words(const uint32_t w[8])
{
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)w), 0xB1); /* CDAB */
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(w + 4)), 0x1B);
    shani_state s = {_mm_alignr_epi8(dcba, efgh, 8), _mm_blend_epi16(efgh, dcba, 0xF0)};
    return s;
}

SHANI void shani_to_words(shani_state s, uint32_t w[8])
{
    __m128i feba = _mm_shuffle_epi32(s.abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(s.cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)w, _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)(w + 4), _mm_alignr_epi8(dchg, feba, 8));
}

/* Four rounds of two independent streams, interleaved instruction by instruction. */
SHANI void rounds4x2(shani_state *x, shani_state *y, __m128i mx, __m128i my, int i)
{
    __m128i k = _mm_loadu_si128((const __m128i *)&sha256_k[4 * i]);
    __m128i tx = _mm_add_epi32(mx, k);
    __m128i ty = _mm_add_epi32(my, k);
    x->cdgh = _mm_sha256rnds2_epu32(x->cdgh, x->abef, tx);
    y->cdgh = _mm_sha256rnds2_epu32(y->cdgh, y->abef, ty);
    x->abef = _mm_sha256rnds2_epu32(x->abef, x->cdgh, _mm_shuffle_epi32(tx, 0x0E));
    y->abef = _mm_sha256rnds2_epu32(y->abef, y->cdgh, _mm_shuffle_epi32(ty, 0x0E));
}

/* W[t..t+3] from m0 = W[t-16..], m1 = W[t-12..], m2 = W[t-8..], m3 = W[t-4..]. */
SHANI __m128i schedule(__m128i m0, __m128i m1, __m128i m2, __m128i m3)
{
    __m128i v = _mm_add_epi32(_mm_sha256msg1_epu32(m0, m1), _mm_alignr_epi8(m3, m2, 4));
    return _mm_sha256msg2_epu32(v, m3);
}

/* One block into each of two states. */
SHANI void compress2(shani_state *x, shani_state *y, const uint8_t *bx, const uint8_t *by)
{
    shani_state x0 = *x, y0 = *y;
    __m128i mx[4], my[4];

    for (int j = 0; j < 4; j++) {
        mx[j] = load_be_words(bx + 16 * j);
        my[j] = load_be_words(by + 16 * j);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) {
        if (i >= 4) {
            mx[i & 3] = schedule(mx[i & 3], mx[(i + 1) & 3], mx[(i + 2) & 3], mx[(i + 3) & 3]);
            my[i & 3] = schedule(my[i & 3], my[(i + 1) & 3], my[(i + 2) & 3], my[(i + 3) & 3]);
        }
        rounds4x2(x, y, mx[i & 3], my[i & 3], i);
    }
    x->abef = _mm_add_epi32(x->abef, x0.abef);
    x->cdgh = _mm_add_epi32(x->cdgh, x0.cdgh);
    y->abef = _mm_add_epi32(y->abef, y0.abef);
    y->cdgh = _mm_add_epi32(y->cdgh, y0.cdgh);
}

__attribute__((target("sha,sse4.1"))) void sha256_compress2_shani(uint32_t sx[8], uint32_t sy[8],
                                                                   const uint8_t *bx,
                                                                   const uint8_t *by,
                                                                   size_t nblocks)
{
    shani_state x = shani_from_words(sx), y = shani_from_words(sy);
    for (size_t i = 0; i < nblocks; i++) {
        compress2(&x, &y, bx + 64 * i, by + 64 * i);
    }
    shani_to_words(x, sx);
    shani_to_words(y, sy);
}

SHANI void tally(const sha256_job *job, sha256_tally *t, shani_state s, uint64_t nonce)
{
    uint32_t h[8];
    /* A is the top lane of ABEF: reject on it before unshuffling the whole hash. */
    if (sha256_may_count(job, t, (uint32_t)_mm_extract_epi32(s.abef, 3))) {
        shani_to_words(s, h);
        sha256_tally_add(job, t, h, nonce);
    }
}

__attribute__((target("sha,sse4.1"))) void sha256_scan_shani(const sha256_job *job,
                                                              uint64_t first, uint64_t n,
                                                              sha256_tally *t)
{
    uint8_t tx[128], ty[128];
    const shani_state mid = shani_from_words(job->mid);

    memcpy(tx, job->tail, sizeof tx);
    memcpy(ty, job->tail, sizeof ty);
    /* Pairs; an odd last nonce is hashed twice in both lanes and tallied once. */
    for (uint64_t i = 0; i < n; i += 2) {
        uint64_t nx = first + i, ny = i + 1 < n ? nx + 1 : nx;
        shani_state x = mid, y = mid;
        sha256_put_nonce(tx + job->nonce_off, nx);
        sha256_put_nonce(ty + job->nonce_off, ny);
        compress2(&x, &y, tx, ty);
        if (job->nblocks == 2) {
            compress2(&x, &y, tx + 64, ty + 64);
        }
        tally(job, t, x, nx);
        if (ny != nx) {
            tally(job, t, y, ny);
        }
    }
}
#endif
