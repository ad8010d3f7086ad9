int edge_native_abi(void);
const char *edge_native_features(void);
