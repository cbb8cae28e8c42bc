#include "worker/wk_sampler.h"

#include <errno.h>
#include <math.h>
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

/* Uniform double in [0, 1). */
static double next_unit(uint64_t *s) {
    return (double)(next_u64(s) >> 11) * 0x1.0p-53;
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
    if (p->temperature > 0) {
        s->heap = malloc((size_t)n_vocab * sizeof *s->heap);
        s->prob = malloc((size_t)n_vocab * sizeof *s->prob);
        if (!s->heap || !s->prob)
            goto nomem;
    }
    if (p->n_bias) {
        proto_bias *b = malloc((size_t)p->n_bias * sizeof *b);
        if (!b)
            goto nomem;
        memcpy(b, p->bias, (size_t)p->n_bias * sizeof *b);
        s->p.bias = b;
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
    free(s->heap);
    free(s->prob);
    free((void *)s->p.bias);
    free(s->count);
    free(s->seen);
    s->heap = NULL;
    s->prob = NULL;
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

/* Bias and penalties, in place. */
static void adjust(const wk_sampler *s, float *logits) {
    for (int i = 0; i < s->p.n_bias; i++)
        logits[s->p.bias[i].token] += s->p.bias[i].bias;
    for (int i = 0; i < s->n_seen; i++) {
        int32_t id = s->seen[i];
        logits[id] -= s->p.frequency_penalty * (float)s->count[id] + s->p.presence_penalty;
    }
}

static int32_t argmax(const float *l, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best])
            best = i;
    return best;
}

/* Max-heap of ids ordered by logit (lower id first on ties). */
static int before(const float *l, int32_t a, int32_t b) {
    return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static void sift_down(int32_t *h, int n, int i, const float *l) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && before(l, h[c + 1], h[c]))
            c++;
        if (!before(l, h[c], h[i]))
            return;
        int32_t t = h[c];
        h[c] = h[i];
        h[i] = t;
        i = c;
    }
}

int32_t wk_sampler_sample(wk_sampler *s, float *logits) {
    const int n = s->n_vocab;
    adjust(s, logits);
    if (s->p.temperature <= 0 || s->p.top_k == 1)
        return argmax(logits, n);
    const double inv_t = 1.0 / s->p.temperature;
    const float mx = logits[argmax(logits, n)];
    double total = 0;
    for (int i = 0; i < n; i++)
        total += exp((double)(logits[i] - mx) * inv_t);

    if ((s->p.top_k <= 0 || s->p.top_k >= n) && s->p.top_p >= 1.0f) {
        // The full distribution: one draw, one scan.
        double r = next_unit(s->rng) * total, acc = 0;
        for (int i = 0; i < n; i++) {
            acc += exp((double)(logits[i] - mx) * inv_t);
            if (acc > r)
                return i;
        }
        return argmax(logits, n);
    }

    // Pop candidates in descending order until top_k or top_p is reached.
    int32_t *h = s->heap;
    for (int i = 0; i < n; i++)
        h[i] = i;
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_down(h, n, i, logits);
    int limit = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : n;
    int hn = n, k = 0;
    double cum = 0;
    while (k < limit && hn > 0) {
        int32_t id = h[0];
        h[0] = h[--hn];
        sift_down(h, hn, 0, logits);
        double p = exp((double)(logits[id] - mx) * inv_t) / total;
        s->prob[k] = (float)p;
        h[n - 1 - k] = id; // popped ids collect at the tail of the array
        k++;
        cum += p;
        if (cum >= s->p.top_p)
            break;
    }
    double r = next_unit(s->rng) * cum, acc = 0;
    for (int i = 0; i < k; i++) {
        acc += s->prob[i];
        if (acc > r)
            return h[n - 1 - i];
    }
    return h[n - 1 - (k - 1)];
}

float wk_sampler_logprobs(const float *logits, int n_vocab, int32_t id, int n_top, int32_t *top_id, float *top_lp) {
    const float mx = logits[argmax(logits, n_vocab)];
    double total = 0;
    for (int i = 0; i < n_vocab; i++)
        total += exp((double)(logits[i] - mx));
    const double lse = (double)mx + log(total);
    // Top n_top by insertion into a short sorted list (n_top <= 20).
    int k = 0;
    for (int i = 0; i < n_vocab && n_top > 0; i++) {
        float l = logits[i];
        if (k == n_top && l <= logits[top_id[k - 1]])
            continue;
        int j = k < n_top ? k++ : k - 1;
        while (j > 0 && l > logits[top_id[j - 1]]) {
            top_id[j] = top_id[j - 1];
            j--;
        }
        top_id[j] = i;
    }
    for (int i = 0; i < k; i++)
        top_lp[i] = (float)((double)logits[top_id[i]] - lse);
    return (float)((double)logits[id] - lse);
}
