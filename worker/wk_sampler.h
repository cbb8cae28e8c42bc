/* wk_sampler: turns one row of logits into the next token for one sequence.
 *
 * Greedy when temperature == 0 (ties go to the lowest id); otherwise softmax at
 * the temperature, restricted to the top_k most likely tokens (0 = all) and to the
 * smallest set whose probability reaches top_p, then one draw from a seeded
 * xoshiro256** generator: the same seed and logits give the same token. The
 * candidate selection is a heap over the vocabulary (O(V + k log V)), never a
 * full sort. All scratch is allocated by wk_sampler_init. */
#ifndef WK_SAMPLER_H
#define WK_SAMPLER_H

#include <stdint.h>

typedef struct wk_sampler {
    float temperature;
    float top_p;
    int top_k;
    int n_vocab;
    uint64_t rng[4];
    int32_t *heap; // [n_vocab] scratch
    float *prob;   // [n_vocab] scratch
} wk_sampler;

/* Initializes s; seeds from `seed` when has_seed, else from the OS. 0 or -ENOMEM.
 * Release with wk_sampler_free. */
int wk_sampler_init(wk_sampler *s, int n_vocab, float temperature, float top_p, int top_k, int has_seed,
                    uint64_t seed);
void wk_sampler_free(wk_sampler *s); // zeroed or freed sampler is a no-op

/* Picks the next token from logits [n_vocab]. */
int32_t wk_sampler_sample(wk_sampler *s, const float *logits);

#endif
