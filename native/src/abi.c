#include "abi.h"

int edge_native_abi(void) { return EDGE_NATIVE_ABI; }

const char *edge_native_features(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    static char buf[64];
    buf[0] = '\0';
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        __builtin_strcat(buf, "avx2,");
    }
    if (__builtin_cpu_supports("avx512vnni")) {
        __builtin_strcat(buf, "avx512vnni,");
    }
    if (__builtin_cpu_supports("sha")) {
        __builtin_strcat(buf, "sha-ni,");
    }
    return buf;
#elif defined(__aarch64__)
    return "neon,";
#else
    return "";
#endif
}
