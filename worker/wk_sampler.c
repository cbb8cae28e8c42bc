#include "worker/wk_sampler.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform float in [0, 1) (24 bits). */
static float next_unit(uint64_t *s) {
    return (float)(next_u64(s) >> 40) * 0x1.0p-24f;
}

static int by_token(const void *a, const void *b) {
    const proto_bias *x = a, *y = b;
    return (x->token > y->token) - (x->token < y->token);
}

int wk_sampler_init(wk_sampler *s, int n_vocab, const wk_sampler_params *p) {
    memset(s, 0, sizeof *s);
    s->p = *p;
    s->p.bias = NULL;
    s->n_vocab = n_vocab;
    uint64_t seed = p->seed;
    if (!p->has_seed && getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
        seed ^= (uint64_t)(uintptr_t)s;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&seed);
    if (p->n_bias) {
        proto_bias *b = malloc((size_t)p->n_bias * sizeof *b);
        if (!b)
            goto nomem;
        memcpy(b, p->bias, (size_t)p->n_bias * sizeof *b);
        qsort(b, (size_t)p->n_bias, sizeof *b, by_token);
        int n = 0; // one entry per token ("5" and "05" are one token): their biases add up
        for (int i = 0; i < p->n_bias; i++)
            if (n && b[n - 1].token == b[i].token)
                b[n - 1].bias += b[i].bias;
            else
                b[n++] = b[i];
        s->p.bias = b;
        s->p.n_bias = n;
    }
    if (p->presence_penalty != 0 || p->frequency_penalty != 0) {
        s->count = calloc((size_t)n_vocab, sizeof *s->count);
        if (!s->count)
            goto nomem;
    }
    return 0;
nomem:
    wk_sampler_free(s);
    return -ENOMEM;
}

void wk_sampler_free(wk_sampler *s) {
    free((void *)s->p.bias);
    free(s->count);
    free(s->seen);
    s->p.bias = NULL;
    s->count = NULL;
    s->seen = NULL;
    s->n_seen = s->cap_seen = 0;
}

int wk_sampler_accept(wk_sampler *s, int32_t id) {
    if (!s->count || id < 0 || id >= s->n_vocab)
        return 0;
    if (s->count[id] == 0) {
        if (s->n_seen == s->cap_seen) {
            int cap = s->cap_seen ? s->cap_seen * 2 : 64;
            int32_t *p = realloc(s->seen, (size_t)cap * sizeof *p);
            if (!p)
                return -ENOMEM;
            s->seen = p;
            s->cap_seen = cap;
        }
        s->seen[s->n_seen++] = id;
    }
    if (s->count[id] < UINT16_MAX)
        s->count[id]++;
    return 0;
}

int wk_sampler_n_adj(const wk_sampler *s) {
    return s->p.n_bias + s->n_seen;
}

static float penalty(const wk_sampler *s, int32_t id) {
    return s->count && s->count[id] ? s->p.frequency_penalty * (float)s->count[id] + s->p.presence_penalty : 0.0f;
}

int wk_sampler_row(wk_sampler *s, kn_sample_params *row, int32_t *adj_id, float *adj_val) {
    const int greedy = s->p.temperature <= 0 || s->p.top_k == 1;
    row->temperature = s->p.temperature;
    row->top_p = s->p.top_p;
    row->min_p = s->p.min_p;
    row->top_k = s->p.top_k;
    row->u = greedy ? 0.0f : next_unit(s->rng);
    int n = 0;
    for (int i = 0; i < s->p.n_bias; i++) {
        const int32_t id = s->p.bias[i].token;
        adj_id[n] = id;
        adj_val[n++] = s->p.bias[i].bias - penalty(s, id);
    }
    for (int i = 0; i < s->n_seen; i++) {
        const int32_t id = s->seen[i];
        const proto_bias key = {.token = id};
        if (s->p.n_bias && bsearch(&key, s->p.bias, (size_t)s->p.n_bias, sizeof key, by_token))
            continue; // merged into its bias entry
        adj_id[n] = id;
        adj_val[n++] = -penalty(s, id);
    }
    return n;
}
