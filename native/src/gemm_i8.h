#ifndef EDGE_GEMM_I8_H
#define EDGE_GEMM_I8_H
/* int8 GEMM with int32 accumulation and fixed-point requantisation (see docs/KERNELS.md).
 * out[i][j] = requant(bias[j] + sum_k a[i][k] * w[j][k]) for `rows` rows of a. */
#include <stdint.h>

enum gemm_i8_impl { GEMM_I8_AUTO = 0, GEMM_I8_SCALAR = 1, GEMM_I8_AVX2 = 2 };

enum gemm_i8_status { GEMM_I8_OK = 0, GEMM_I8_EUNAVAILABLE = -1, GEMM_I8_EARGS = -2 };

/* The implementation GEMM_I8_AUTO picks on this CPU. */
int gemm_i8_best_impl(void);

/* a: rows x k, w: n x k (both row-major int8), bias_le: n int32 little-endian (may be NULL for
 * zeros), out: rows x n. Returns GEMM_I8_OK, GEMM_I8_EUNAVAILABLE (impl not on this CPU/build) or
 * GEMM_I8_EARGS (a bound in docs/KERNELS.md broken: nothing is written). */
int gemm_i8_rows(const int8_t *a, const int8_t *w, const uint8_t *bias_le, uint32_t rows,
                 uint32_t n, uint32_t k, int32_t multiplier, int shift, int out_zero_point,
                 int relu, int8_t *out, int impl);

#endif
