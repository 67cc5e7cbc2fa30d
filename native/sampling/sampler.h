/* sampler.h — internal pieces of the sampler (the public API is in qrt_tokenizer.h).
 *
 * The random stream is PCG32 (O'Neill, pcg-random.org, XSH-RR 64/32), seeded from the user's seed, so a
 * given seed reproduces the same tokens on every platform.
 */
#ifndef QRT_SAMPLER_H
#define QRT_SAMPLER_H
#include <stdint.h>

#include "qrt.h"

typedef struct {
    uint64_t state, inc;
} pcg32;

void pcg32_seed(pcg32 *rng, uint64_t seed);
uint32_t pcg32_next(pcg32 *rng);
/* Uniform in [0, 1) with 53 random bits. */
double pcg32_uniform(pcg32 *rng);

/* One candidate token during sampling. */
typedef struct {
    float logit;
    float weight; /* exp(logit - max logit), where top-p needs it */
    int32_t id;
} sampler_candidate;

/* Reorder c[0..n) so that its k best (highest logit, then lowest id) come first, in no particular order. */
void sampler_select_top(sampler_candidate *c, int32_t n, int32_t k);

#endif
