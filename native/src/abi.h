#ifndef EDGE_ABI_H
#define EDGE_ABI_H
/* Bumped whenever a kernel's C signature or semantics change, so a stale build is refused. */
#define EDGE_NATIVE_ABI 3
int edge_native_abi(void);
/* Comma-separated names of the SIMD paths this build can take on this CPU (for status/benchmarks). */
const char *edge_native_features(void);
#endif
