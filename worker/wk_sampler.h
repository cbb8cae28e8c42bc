/* wk_sampler: turns one row of logits into the next token for one sequence.
 *
 * Greedy when temperature == 0 (ties go to the lowest id); otherwise softmax at
 * the temperature, restricted to the top_k most likely tokens (0 = all) and to the
 * smallest set whose probability reaches top_p, then one draw from a seeded
 * xoshiro256** generator: the same seed and logits give the same token. The
 * candidate selection is a heap over the vocabulary (O(V + k log V)), never a
 * full sort. All scratch is allocated by wk_sampler_init.
 *
 * Before selection the logits are adjusted in place: logit_bias values are added,
 * and every token already in this sequence's output is lowered by
 * frequency_penalty * count + presence_penalty (OpenAI's definition; the prompt is
 * not counted). Log-probabilities (wk_sampler_logprobs) are taken from the logits
 * as the model produced them, before any adjustment, like vLLM's default. */
#ifndef WK_SAMPLER_H
#define WK_SAMPLER_H

#include <stdint.h>

#include "proto/proto.h"

typedef struct wk_sampler_params {
    float temperature, top_p;
    int top_k;
    float presence_penalty, frequency_penalty;
    const proto_bias *bias; // [n_bias], copied by init; out-of-vocabulary ids must be refused before
    int n_bias;
    int has_seed;
    uint64_t seed;
} wk_sampler_params;

typedef struct wk_sampler {
    wk_sampler_params p; // p.bias points at the sampler's own copy
    int n_vocab;
    uint64_t rng[4];
    int32_t *heap;   // [n_vocab] scratch
    float *prob;     // [n_vocab] scratch
    uint16_t *count; // [n_vocab] output counts (only with a penalty)
    int32_t *seen;   // [n_seen] distinct output tokens (only with a penalty)
    int n_seen, cap_seen;
} wk_sampler;

/* Initializes s; seeds from p->seed when has_seed, else from the OS. 0 or -ENOMEM.
 * Release with wk_sampler_free. */
int wk_sampler_init(wk_sampler *s, int n_vocab, const wk_sampler_params *p);
void wk_sampler_free(wk_sampler *s); // zeroed or freed sampler is a no-op

/* Picks the next token from logits [n_vocab], which it adjusts in place (bias and
 * penalties). */
int32_t wk_sampler_sample(wk_sampler *s, float *logits);
/* The same draw restricted to the tokens ids[0..n) (ascending, n >= 1): as if
 * every other logit were -inf, at the cost of the n tokens only. vals [n] is the
 * caller's scratch. */
int32_t wk_sampler_sample_subset(wk_sampler *s, float *logits, const int32_t *ids, int n, float *vals);
/* 1 when wk_sampler_sample changes the logits it is given (bias or penalties). */
int wk_sampler_adjusts(const wk_sampler *s);
/* 1 when it applies presence or frequency penalties. */
int wk_sampler_penalizes(const wk_sampler *s);
/* Counts an output token for the penalties. 0 or -ENOMEM. */
int wk_sampler_accept(wk_sampler *s, int32_t id);

/* Log-softmax of logits [n_vocab]: returns log p(id), and fills top_id/top_lp [n_top]
 * (n_top <= PROTO_MAX_TOP_LOGPROBS) with the n_top most likely tokens, best first
 * (ties to the lower id). */
float wk_sampler_logprobs(const float *logits, int n_vocab, int32_t id, int n_top, int32_t *top_id, float *top_lp);

#endif
