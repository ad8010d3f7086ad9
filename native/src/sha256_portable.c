/* Portable SHA-256 compression (FIPS 180-4) and the plain-C search loop. */
#include <string.h>

#include "sha256_scan.h"

const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

const uint32_t sha256_iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))

/* One round with the working variables renamed instead of shifted (8 rounds per cycle). */
#define ROUND(a, b, c, d, e, f, g, h, i)                                  \
    do {                                                                  \
        uint32_t t1 = h + BSIG1(e) + CH(e, f, g) + sha256_k[i] + w[(i) & 15]; \
        d += t1;                                                          \
        h = t1 + BSIG0(a) + MAJ(a, b, c);                                 \
    } while (0)

#define EXPAND(i)                                                                     \
    (w[(i) & 15] += SSIG1(w[((i) - 2) & 15]) + w[((i) - 7) & 15] + SSIG0(w[((i) - 15) & 15]))

void sha256_compress_portable(uint32_t state[8], const uint8_t block[64])
{
    uint32_t w[16];
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];

    for (int i = 0; i < 16; i++) {
        const uint8_t *p = block + 4 * i;
        w[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    }
    for (int i = 0; i < 64; i += 8) {
        if (i >= 16) {
            for (int j = 0; j < 8; j++) {
                EXPAND(i + j);
            }
        }
        ROUND(a, b, c, d, e, f, g, h, i + 0);
        ROUND(h, a, b, c, d, e, f, g, i + 1);
        ROUND(g, h, a, b, c, d, e, f, i + 2);
        ROUND(f, g, h, a, b, c, d, e, i + 3);
        ROUND(e, f, g, h, a, b, c, d, i + 4);
        ROUND(d, e, f, g, h, a, b, c, i + 5);
        ROUND(c, d, e, f, g, h, a, b, i + 6);
        ROUND(b, c, d, e, f, g, h, a, i + 7);
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

void sha256_compress2_portable(uint32_t sx[8], uint32_t sy[8], const uint8_t *bx,
                               const uint8_t *by, size_t nblocks)
{
    for (size_t i = 0; i < nblocks; i++) {
        sha256_compress_portable(sx, bx + 64 * i);
        sha256_compress_portable(sy, by + 64 * i);
    }
}

void sha256_scan_portable(const sha256_job *job, uint64_t first, uint64_t n, sha256_tally *t)
{
    uint8_t tail[128];
    uint32_t h[8];

    memcpy(tail, job->tail, sizeof tail);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t nonce = first + i;
        sha256_put_nonce(tail + job->nonce_off, nonce);
        memcpy(h, job->mid, sizeof h);
        sha256_compress_portable(h, tail);
        if (job->nblocks == 2) {
            sha256_compress_portable(h, tail + 64);
        }
        if (sha256_may_count(job, t, h[0])) {
            sha256_tally_add(job, t, h, nonce);
        }
    }
}
