/* SHA-256 search with the ARMv8 crypto extensions (SHA2 instructions), chosen at run time
 * (getauxval(AT_HWCAP) & HWCAP_SHA2 in sha256_search.c): Raspberry Pi 4 lacks them (Cortex-A72
 * in BCM2711 ships without crypto), Pi 5 and most phones have them. Two nonces side by side,
 * as on x86: sha256h/sha256h2 latency is hidden by a second independent stream. */
#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
#include <arm_neon.h>
#include <string.h>

#include "sha256_scan.h"

#if defined(__clang__)
#define ARMV8_SHA2_TARGET __attribute__((target("sha2")))
#else
#define ARMV8_SHA2_TARGET __attribute__((target("+crypto"))) /* "+sha2" needs gcc >= 13 */
#endif
#define ARMV8_SHA2 ARMV8_SHA2_TARGET __attribute__((always_inline)) static inline

typedef struct {
    uint32x4_t abcd, efgh;
} armv8_state;

ARMV8_SHA2 uint32x4_t load_be_words(const uint8_t *p)
{
    return vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(p)));
}

ARMV8_SHA2 void rounds4x2(armv8_state *x, armv8_state *y, uint32x4_t mx, uint32x4_t my, int i)
{
    uint32x4_t k = vld1q_u32(&sha256_k[4 * i]);
    uint32x4_t tx = vaddq_u32(mx, k), ty = vaddq_u32(my, k);
    uint32x4_t ax = x->abcd, ay = y->abcd;
    x->abcd = vsha256hq_u32(x->abcd, x->efgh, tx);
    y->abcd = vsha256hq_u32(y->abcd, y->efgh, ty);
    x->efgh = vsha256h2q_u32(x->efgh, ax, tx);
    y->efgh = vsha256h2q_u32(y->efgh, ay, ty);
}

/* W[t..t+3] from m0 = W[t-16..], m1 = W[t-12..], m2 = W[t-8..], m3 = W[t-4..]. */
ARMV8_SHA2 uint32x4_t schedule(uint32x4_t m0, uint32x4_t m1, uint32x4_t m2, uint32x4_t m3)
{
    return vsha256su1q_u32(vsha256su0q_u32(m0, m1), m2, m3);
}

ARMV8_SHA2 void compress2(armv8_state *x, armv8_state *y, const uint8_t *bx, const uint8_t *by)
{
    armv8_state x0 = *x, y0 = *y;
    uint32x4_t mx[4], my[4];

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
    x->abcd = vaddq_u32(x->abcd, x0.abcd);
    x->efgh = vaddq_u32(x->efgh, x0.efgh);
    y->abcd = vaddq_u32(y->abcd, y0.abcd);
    y->efgh = vaddq_u32(y->efgh, y0.efgh);
}

ARMV8_SHA2_TARGET void sha256_compress2_armv8(uint32_t sx[8], uint32_t sy[8], const uint8_t *bx,
                                             const uint8_t *by, size_t nblocks)
{
    armv8_state x = {vld1q_u32(sx), vld1q_u32(sx + 4)}, y = {vld1q_u32(sy), vld1q_u32(sy + 4)};
    for (size_t i = 0; i < nblocks; i++) {
        compress2(&x, &y, bx + 64 * i, by + 64 * i);
    }
    vst1q_u32(sx, x.abcd);
    vst1q_u32(sx + 4, x.efgh);
    vst1q_u32(sy, y.abcd);
    vst1q_u32(sy + 4, y.efgh);
}

ARMV8_SHA2 void tally(const sha256_job *job, sha256_tally *t, armv8_state s, uint64_t nonce)
{
    uint32_t h[8];
    if (sha256_may_count(job, t, vgetq_lane_u32(s.abcd, 0))) {
        vst1q_u32(h, s.abcd);
        vst1q_u32(h + 4, s.efgh);
        sha256_tally_add(job, t, h, nonce);
    }
}

ARMV8_SHA2_TARGET void sha256_scan_armv8(const sha256_job *job, uint64_t first, uint64_t n,
                                         sha256_tally *t)
{
    uint8_t tx[128], ty[128];
    const armv8_state mid = {vld1q_u32(job->mid), vld1q_u32(job->mid + 4)};

    memcpy(tx, job->tail, sizeof tx);
    memcpy(ty, job->tail, sizeof ty);
    /* Pairs; an odd last nonce is hashed in both lanes and tallied once. */
    for (uint64_t i = 0; i < n; i += 2) {
        uint64_t nx = first + i, ny = i + 1 < n ? nx + 1 : nx;
        armv8_state x = mid, y = mid;
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
