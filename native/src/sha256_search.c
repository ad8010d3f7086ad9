/* Proof-of-work search driver: prepares the job once per call, picks a compression path. */
#include "sha256_search.h"

#include <string.h>

#include "sha256_scan.h"

#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
#include <sys/auxv.h>
#ifndef HWCAP_SHA2
#define HWCAP_SHA2 (1 << 6) /* arch/arm64/include/uapi/asm/hwcap.h */
#endif
#endif

#define SHA256_MAX_PREFIX 256
#define SHA256_MAX_FOUND 64

static uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void job_prepare(sha256_job *job, const uint8_t *prefix, size_t prefix_len,
                        const uint8_t *target)
{
    size_t full = prefix_len & ~(size_t)63;
    size_t rem = prefix_len - full;
    uint64_t bits = (uint64_t)(prefix_len + 8) * 8;

    memcpy(job->mid, sha256_iv, sizeof sha256_iv);
    for (size_t i = 0; i < full; i += 64) {
        sha256_compress_portable(job->mid, prefix + i);
    }
    memset(job->tail, 0, sizeof job->tail);
    memcpy(job->tail, prefix + full, rem);
    job->nonce_off = (unsigned)rem;
    job->tail[rem + 8] = 0x80;
    /* 0x80 and the 8-byte length need 9 bytes after the nonce: one block iff rem <= 47. */
    job->nblocks = rem + 8 + 9 <= 64 ? 1 : 2;
    for (int i = 0; i < 8; i++) {
        job->tail[64 * job->nblocks - 1 - i] = (uint8_t)(bits >> (8 * i));
        job->target[i] = load_be32(target + 4 * i);
    }
}

static int shani_available(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
#else
    return 0;
#endif
}

static int armv8_sha2_available(void)
{
#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
    return (getauxval(AT_HWCAP) & HWCAP_SHA2) != 0;
#else
    return 0;
#endif
}

int sha256_search_impl_available(int impl)
{
    switch (impl) {
    case SHA256_IMPL_AUTO:
    case SHA256_IMPL_PORTABLE:
        return 1;
    case SHA256_IMPL_X86_SHANI:
        return shani_available();
    case SHA256_IMPL_ARMV8_SHA2:
        return armv8_sha2_available();
    default:
        return 0;
    }
}

int sha256_pick_impl(int impl)
{
    if (impl != SHA256_IMPL_AUTO) {
        return sha256_search_impl_available(impl) ? impl : -1;
    }
    if (shani_available()) {
        return SHA256_IMPL_X86_SHANI;
    }
    if (armv8_sha2_available()) {
        return SHA256_IMPL_ARMV8_SHA2;
    }
    return SHA256_IMPL_PORTABLE;
}

int sha256_search_run(const uint8_t *prefix, size_t prefix_len, uint64_t first, uint64_t n,
                      const uint8_t *target, uint32_t max_found, uint64_t *found,
                      uint32_t *n_found, uint64_t *found_total, uint8_t *best_hash,
                      uint64_t *best_nonce, int impl)
{
    sha256_job job;
    sha256_tally t;
    int used = sha256_pick_impl(impl);

    if (used < 0 || prefix_len > SHA256_MAX_PREFIX || max_found > SHA256_MAX_FOUND ||
        *n_found > max_found || (n > 0 && first + (n - 1) < first)) {
        return -1;
    }
    if (n == 0) {
        return used;
    }
    job_prepare(&job, prefix, prefix_len, target);
    t.found = found;
    t.n_found = *n_found;
    t.max_found = max_found;
    t.found_total = *found_total;
    for (int i = 0; i < 8; i++) {
        t.best[i] = load_be32(best_hash + 4 * i);
    }
    t.best_nonce = *best_nonce;

    switch (used) {
#if defined(__x86_64__) && defined(__GNUC__)
    case SHA256_IMPL_X86_SHANI:
        sha256_scan_shani(&job, first, n, &t);
        break;
#endif
#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
    case SHA256_IMPL_ARMV8_SHA2:
        sha256_scan_armv8(&job, first, n, &t);
        break;
#endif
    default:
        sha256_scan_portable(&job, first, n, &t);
        break;
    }

    *n_found = t.n_found;
    *found_total = t.found_total;
    for (int i = 0; i < 8; i++) {
        store_be32(best_hash + 4 * i, t.best[i]);
    }
    *best_nonce = t.best_nonce;
    return used;
}
