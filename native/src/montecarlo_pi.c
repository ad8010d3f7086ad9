/* Monte Carlo pi: xoshiro128** (Blackman & Vigna, prng.di.unimi.it) seeded by splitmix64.
 * Integer-only, so the Python twin reproduces it bit for bit. */
#include "montecarlo_pi.h"

static inline uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static inline uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* splitmix64's output mix is a bijection and its two inputs differ, so the two outputs are never
 * both zero: the xoshiro state is never all zero and needs no special case. */
void montecarlo_pi_seed(uint64_t seed, uint32_t state[4])
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i += 2) {
        uint64_t z = splitmix64_next(&x);
        state[i] = (uint32_t)z;
        state[i + 1] = (uint32_t)(z >> 32);
    }
}

uint64_t montecarlo_pi_run(uint32_t state[4], uint64_t points)
{
    uint32_t s0 = state[0], s1 = state[1], s2 = state[2], s3 = state[3];
    uint64_t inside = 0;
/* One xoshiro128** output into `out`, advancing s0..s3 (kept in registers). */
#define XOSHIRO128SS(out)                 \
    do {                                  \
        (out) = rotl32(s1 * 5u, 7) * 9u;  \
        const uint32_t t = s1 << 9;       \
        s2 ^= s0;                         \
        s3 ^= s1;                         \
        s1 ^= s2;                         \
        s0 ^= s3;                         \
        s2 ^= t;                          \
        s3 = rotl32(s3, 11);              \
    } while (0)
    for (uint64_t p = 0; p < points; p++) {
        uint32_t x, y;
        XOSHIRO128SS(x);
        XOSHIRO128SS(y);
        const uint64_t xx = (uint64_t)x * x;
        /* xx, yy < 2**64 each: the sum wraps exactly when the true sum is >= 2**64. */
        inside += xx + (uint64_t)y * y >= xx;
    }
#undef XOSHIRO128SS
    state[0] = s0;
    state[1] = s1;
    state[2] = s2;
    state[3] = s3;
    return inside;
}
