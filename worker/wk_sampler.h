/* wk_sampler: one sequence's sampling state, turned into a row of the backend's
 * sample op (kn.h) at every step.
 *
 * The op does the sampling itself (greedy, temperature, top_k, top_p, min_p, the
 * grammar mask, logprobs); the sampler holds what lives across steps: the
 * parameters, a seeded xoshiro256** generator that gives each sampled token its
 * uniform draw (the same seed and logits give the same tokens), and the output
 * counts behind the penalties. Each step's adjustments are one entry per token:
 * its logit_bias value plus, for a token already in this sequence's output,
 * -(frequency_penalty * count + presence_penalty) (OpenAI's definition; the
 * prompt is not counted). Logprobs are the model's, before any adjustment, like
 * vLLM's default. */
#ifndef WK_SAMPLER_H
#define WK_SAMPLER_H

#include <stdint.h>

#include "kernels/kn.h"
#include "proto/proto.h"

typedef struct wk_sampler_params {
    float temperature, top_p, min_p;
    int top_k;
    float presence_penalty, frequency_penalty;
    const proto_bias *bias; // [n_bias], copied by init (a token listed twice gets both); out-of-vocabulary ids must be refused before
    int n_bias;
    int has_seed;
    uint64_t seed;
} wk_sampler_params;

typedef struct wk_sampler {
    wk_sampler_params p; // p.bias points at the sampler's own copy, sorted by token
    int n_vocab;
    uint64_t rng[4];
    uint16_t *count; // [n_vocab] output counts (only with a penalty)
    int32_t *seen;   // [n_seen] distinct output tokens (only with a penalty)
    int n_seen, cap_seen;
} wk_sampler;

/* Initializes s; seeds from p->seed when has_seed, else from the OS. 0 or -ENOMEM.
 * Release with wk_sampler_free. */
int wk_sampler_init(wk_sampler *s, int n_vocab, const wk_sampler_params *p);
void wk_sampler_free(wk_sampler *s); // zeroed or freed sampler is a no-op

/* The next step's row: *row's sampling fields (a draw from the generator when
 * the row samples; n_top and mask are left to the caller), and the row's
 * adjustments into adj_id/adj_val, whose count it returns: at most
 * wk_sampler_n_adj(s). */
int wk_sampler_row(wk_sampler *s, kn_sample_params *row, int32_t *adj_id, float *adj_val);
int wk_sampler_n_adj(const wk_sampler *s);
/* Counts an output token for the penalties. 0 or -ENOMEM. */
int wk_sampler_accept(wk_sampler *s, int32_t id);

#endif
