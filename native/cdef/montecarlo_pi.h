void montecarlo_pi_seed(uint64_t seed, uint32_t state[4]);
uint64_t montecarlo_pi_run(uint32_t state[4], uint64_t points);
