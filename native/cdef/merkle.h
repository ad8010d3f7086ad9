int merkle_tree(const uint8_t *leaves, size_t leaves_len, size_t leaf_len, size_t n,
                uint8_t *nodes, size_t nodes_len, int impl);
int merkle_paths(const uint8_t *nodes, size_t nodes_len, size_t n, size_t first, size_t count,
                 uint8_t *paths, size_t paths_len);
