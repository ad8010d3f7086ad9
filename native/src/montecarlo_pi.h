#ifndef EDGE_MONTECARLO_PI_H
#define EDGE_MONTECARLO_PI_H
/* Monte Carlo estimate of pi from xoshiro128** points (see docs/KERNELS.md). */
#include <stdint.h>

/* Seed state from a 64-bit seed: two splitmix64 outputs, each split low word first. */
void montecarlo_pi_seed(uint64_t seed, uint32_t state[4]);

/* Draw `points` points (x then y, two outputs each) advancing `state`; return how many fall
 * inside the quarter circle x*x + y*y < 2**64. */
uint64_t montecarlo_pi_run(uint32_t state[4], uint64_t points);

#endif
