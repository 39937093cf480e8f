/* splitmix: SplitMix64 (Steele, Lea, Flood 2014), the random-number primitive behind the
 * host-side streams: weight initialisation, the sampler's permutation, the synthetic tasks
 * and token sampling. Pure functions of their input, so every stream can be keyed by
 * (seed, index) and reproduced on any rank. The CPU dropout kernel keeps its own inline copy
 * (kernels/ does not depend on train/). */
#ifndef CTUNE_SPLITMIX_H
#define CTUNE_SPLITMIX_H

#include <stdint.h>

/* The SplitMix64 output for state x: x + the golden gamma, then the finaliser. A bijection. */
uint64_t splitmix64(uint64_t x);
/* The sequential generator: returns splitmix64(*state) and advances *state by the gamma. */
uint64_t splitmix64_next(uint64_t *state);

#endif
