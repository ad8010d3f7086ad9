enum gemm_i8_impl { GEMM_I8_AUTO = 0, GEMM_I8_SCALAR = 1, GEMM_I8_AVX2 = 2 };
enum gemm_i8_status { GEMM_I8_OK = 0, GEMM_I8_EUNAVAILABLE = -1, GEMM_I8_EARGS = -2 };
int gemm_i8_best_impl(void);
int gemm_i8_rows(const int8_t *a, const int8_t *w, const uint8_t *bias_le, uint32_t rows,
                 uint32_t n, uint32_t k, int32_t multiplier, int shift, int out_zero_point,
                 int relu, int8_t *out, int impl);
