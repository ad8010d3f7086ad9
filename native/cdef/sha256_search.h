int sha256_search_run(const uint8_t *prefix, size_t prefix_len, uint64_t first, uint64_t n,
                      const uint8_t *target, uint32_t max_found, uint64_t *found,
                      uint32_t *n_found, uint64_t *found_total, uint8_t *best_hash,
                      uint64_t *best_nonce, int impl);
int sha256_search_impl_available(int impl);
