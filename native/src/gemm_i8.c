/* int8 GEMM, int32 accumulation, fixed-point requantisation. Semantics: docs/KERNELS.md.
 *
 * Two implementations give identical bytes: a portable scalar one (auto-vectorised by the
 * compiler: SSE2 on x86-64, NEON on aarch64) and an AVX2 micro-kernel picked at run time on
 * x86-64. Both compute exact int32 dot products (bounds guarantee no overflow) and share the
 * requantisation code, so they can only differ by a bug; the tests compare them.
 */
#include "gemm_i8.h"

#include <stddef.h>
#include <string.h>

#define MAX_DIM 4096u
#define MAX_K 65536u
#define MAX_ABS_PRODUCT 16384 /* |(-128) * (-128)|: the largest |a * w| */
/* Keep each block of w rows within ~L2 so it is reused across all rows of a. */
#define W_BLOCK_BYTES (192u * 1024u)

typedef struct {
    const int8_t *a, *w;
    int8_t *out;
    uint32_t rows, n, k;
    int32_t bias[MAX_DIM];
    int64_t multiplier, round;
    int shift, zero_point, lo;
} gemm_job;

/* floor(v / 2**shift) without relying on >> of a negative value (implementation-defined in C):
 * for v < 0, ~v = -v-1 >= 0 and floor(v / 2**s) = ~((~v) >> s). Compilers emit one sar. */
static inline int64_t floor_shift(int64_t v, int shift)
{
    return v >= 0 ? v >> shift : ~((~v) >> shift);
}

static inline int8_t requant(const gemm_job *g, int32_t acc)
{
    int64_t v = floor_shift((int64_t)acc * g->multiplier + g->round, g->shift) + g->zero_point;
    if (v < g->lo) {
        v = g->lo;
    }
    if (v > 127) {
        v = 127;
    }
    return (int8_t)v;
}

/* Rows of w per block: a multiple of 4 (the AVX2 micro-kernel's width), at least 4. */
static uint32_t w_block_rows(uint32_t k)
{
    uint32_t rows = (W_BLOCK_BYTES / k) & ~3u;
    return rows < 4 ? 4 : rows;
}

/* Portable path: one row of a against 4 rows of w at a time, so each a byte loaded serves 4
 * dot products; the compiler vectorises the inner loop (SSE2 pmaddwd, NEON smlal). */
static void gemm_scalar(const gemm_job *g)
{
    const uint32_t k = g->k, n = g->n, nb = w_block_rows(k);
    for (uint32_t j0 = 0; j0 < n; j0 += nb) {
        const uint32_t j1 = n - j0 < nb ? n : j0 + nb;
        for (uint32_t i = 0; i < g->rows; i++) {
            const int8_t *ar = g->a + (size_t)i * k;
            int8_t *o = g->out + (size_t)i * n;
            uint32_t j = j0;
            for (; j + 4 <= j1; j += 4) {
                const int8_t *w0 = g->w + (size_t)j * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
                int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                for (uint32_t x = 0; x < k; x++) {
                    const int32_t av = ar[x];
                    s0 += av * w0[x];
                    s1 += av * w1[x];
                    s2 += av * w2[x];
                    s3 += av * w3[x];
                }
                o[j] = requant(g, s0 + g->bias[j]);
                o[j + 1] = requant(g, s1 + g->bias[j + 1]);
                o[j + 2] = requant(g, s2 + g->bias[j + 2]);
                o[j + 3] = requant(g, s3 + g->bias[j + 3]);
            }
            for (; j < j1; j++) {
                const int8_t *wr = g->w + (size_t)j * k;
                int32_t acc = 0;
                for (uint32_t x = 0; x < k; x++) {
                    acc += (int32_t)ar[x] * (int32_t)wr[x];
                }
                o[j] = requant(g, acc + g->bias[j]);
            }
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#define AVX2_FN __attribute__((target("avx2")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2")))

/* Rows of a and of w per micro-kernel: 2 x 4 = 8 accumulators + 2 a + 4 w ymm registers, no
 * spills; measured faster here than 3 x 4 (16 registers, spills) and 1 x 4 or 4 x 4. */
#define MR 2
#define NR 4

/* 16 int8 -> 16 int16 (vpmovsxbw); vpmaddwd then multiplies int16 pairs exactly into int32:
 * |a0*w0 + a1*w1| <= 32768, so nothing saturates (unlike vpmaddubsw). */
AVX2_INLINE __m256i load_i8x16(const int8_t *p)
{
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
}

/* The last k % 16 bytes, zero-padded: zero products add nothing. */
AVX2_INLINE __m256i load_i8_tail(const int8_t *p, uint32_t len)
{
    int8_t buf[16] = {0};
    memcpy(buf, p, len);
    return load_i8x16(buf);
}

/* Sum the 8 lanes of each of 4 accumulators: lane c of the result is the total of v[c]. */
AVX2_INLINE __m128i hsum4(__m256i v0, __m256i v1, __m256i v2, __m256i v3)
{
    __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

/* acc[r][c] += a[i+r][x:x+len] . w[j+c][x:x+len]; len is 16 (constant-folded) or the tail. */
AVX2_INLINE void madd_block(__m256i acc[MR][NR], const int8_t *ar, const int8_t *wr, uint32_t k,
                            uint32_t x, uint32_t len, const int mr, const int nr)
{
    __m256i av[MR];
    for (int r = 0; r < mr; r++) {
        const int8_t *p = ar + (size_t)r * k + x;
        av[r] = len == 16 ? load_i8x16(p) : load_i8_tail(p, len);
    }
    for (int c = 0; c < nr; c++) {
        const int8_t *p = wr + (size_t)c * k + x;
        const __m256i wv = len == 16 ? load_i8x16(p) : load_i8_tail(p, len);
        for (int r = 0; r < mr; r++) {
            acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(av[r], wv));
        }
    }
}

/* mr rows of a (from i) against nr rows of w (from j), each a full k-long dot product, then
 * requantised into out. mr and nr are compile-time constants at every call site, so the
 * accumulator array lives in registers. */
AVX2_INLINE void micro_avx2(const gemm_job *g, uint32_t i, uint32_t j, const int mr, const int nr)
{
    const uint32_t k = g->k, k16 = k & ~15u;
    const int8_t *ar = g->a + (size_t)i * k, *wr = g->w + (size_t)j * k;
    __m256i acc[MR][NR];
    for (int r = 0; r < mr; r++) {
        for (int c = 0; c < nr; c++) {
            acc[r][c] = _mm256_setzero_si256();
        }
    }
    for (uint32_t x = 0; x < k16; x += 16) {
        madd_block(acc, ar, wr, k, x, 16, mr, nr);
    }
    if (k16 < k) {
        madd_block(acc, ar, wr, k, k16, k - k16, mr, nr);
    }
    for (int r = 0; r < mr; r++) {
        int8_t *o = g->out + (size_t)(i + r) * g->n + j;
        if (nr == NR) {
            int32_t sums[NR];
            _mm_storeu_si128((__m128i *)sums, hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
            for (int c = 0; c < NR; c++) {
                o[c] = requant(g, sums[c] + g->bias[j + c]);
            }
        } else {
            for (int c = 0; c < nr; c++) {
                __m128i s = hsum4(acc[r][c], acc[r][c], acc[r][c], acc[r][c]);
                o[c] = requant(g, _mm_cvtsi128_si32(s) + g->bias[j + c]);
            }
        }
    }
}

/* One block of mr rows of a against w rows [j0, j1). */
AVX2_INLINE void rows_avx2(const gemm_job *g, uint32_t i, uint32_t j0, uint32_t j1, const int mr)
{
    uint32_t j = j0;
    for (; j + NR <= j1; j += NR) {
        micro_avx2(g, i, j, mr, NR);
    }
    for (; j < j1; j++) {
        micro_avx2(g, i, j, mr, 1);
    }
}

static AVX2_FN void gemm_avx2(const gemm_job *g)
{
    const uint32_t nb = w_block_rows(g->k);
    for (uint32_t j0 = 0; j0 < g->n; j0 += nb) {
        const uint32_t j1 = g->n - j0 < nb ? g->n : j0 + nb;
        uint32_t i = 0;
        for (; i + MR <= g->rows; i += MR) {
            rows_avx2(g, i, j0, j1, MR);
        }
        if (i < g->rows) {
            rows_avx2(g, i, j0, j1, 1);
        }
    }
}

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
#define HAVE_AVX2_PATH 0
static int cpu_has_avx2(void) { return 0; }
#endif

int gemm_i8_best_impl(void)
{
    return cpu_has_avx2() ? GEMM_I8_AVX2 : GEMM_I8_SCALAR;
}

static int32_t read_i32_le(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return (int32_t)u; /* two's complement on every target gcc supports */
}

/* Fill the job's bias and check every bound from docs/KERNELS.md; nonzero if one is broken. */
static int prepare(gemm_job *g, const uint8_t *bias_le, int32_t multiplier, int shift,
                   int out_zero_point, int relu)
{
    if (!g->a || !g->w || !g->out || g->rows > MAX_DIM || g->n < 1 || g->n > MAX_DIM ||
        g->k < 1 || g->k > MAX_K || multiplier < 1 || shift < 1 || shift > 62 ||
        out_zero_point < -128 || out_zero_point > 127) {
        return 1;
    }
    int64_t max_abs_bias = 0;
    for (uint32_t j = 0; j < g->n; j++) {
        g->bias[j] = bias_le ? read_i32_le(bias_le + 4 * (size_t)j) : 0;
        int64_t b = g->bias[j] < 0 ? -(int64_t)g->bias[j] : g->bias[j];
        max_abs_bias = b > max_abs_bias ? b : max_abs_bias;
    }
    if ((int64_t)g->k * MAX_ABS_PRODUCT + max_abs_bias > INT32_MAX) {
        return 1; /* the int32 accumulator could overflow */
    }
    g->multiplier = multiplier;
    g->shift = shift;
    g->round = (int64_t)1 << (shift - 1);
    g->zero_point = out_zero_point;
    g->lo = relu ? out_zero_point : -128;
    return 0;
}

int gemm_i8_rows(const int8_t *a, const int8_t *w, const uint8_t *bias_le, uint32_t rows,
                 uint32_t n, uint32_t k, int32_t multiplier, int shift, int out_zero_point,
                 int relu, int8_t *out, int impl)
{
    gemm_job local, *g = &local; /* 16 KiB of bias table: fine on any thread stack */
    g->a = a;
    g->w = w;
    g->out = out;
    g->rows = rows;
    g->n = n;
    g->k = k;
    if (prepare(g, bias_le, multiplier, shift, out_zero_point, relu)) {
        return GEMM_I8_EARGS;
    }
    if (impl == GEMM_I8_AUTO) {
        impl = gemm_i8_best_impl();
    }
    if (impl == GEMM_I8_SCALAR) {
        gemm_scalar(g);
        return GEMM_I8_OK;
    }
#if HAVE_AVX2_PATH
    if (impl == GEMM_I8_AVX2 && cpu_has_avx2()) {
        gemm_avx2(g);
        return GEMM_I8_OK;
    }
#endif
    return GEMM_I8_EUNAVAILABLE;
}
