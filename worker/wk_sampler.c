#include "worker/wk_sampler.h"

#include <errno.h>
#include <math.h>
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

int wk_sampler_adjusts(const wk_sampler *s) {
    return s->p.n_bias > 0 || s->count != NULL;
}

int wk_sampler_penalizes(const wk_sampler *s) {
    return s->count != NULL;
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

/* ---- vector math ---- */

/* NOTE: softmax and log-softmax over a 262k vocabulary on every token must not
 * cost more than a small part of a decode step, so exp runs as a polynomial (2^f on [-0.5, 0.5],
 * degree 6, relative error < 4e-6 for x in [-87, 0]; below -87 the term is under
 * 1e-38 of the sum's largest term and counts as 0, so a logit masked to -inf has
 * probability exactly 0) that the AVX2 path evaluates 8
 * lanes at a time. Both paths compute the same terms and sum them in double; they
 * differ only in the order of the additions. */
#define LOG2E 1.44269504089f
#define P6 1.5353362e-4f
#define P5 1.3398874e-3f
#define P4 9.6181291e-3f
#define P3 5.5504109e-2f
#define P2 2.4022651e-1f
#define P1 6.9314718e-1f

static float exp_neg(float x) {
    if (!(x >= -87.0f))
        return 0.0f;
    float t = x * LOG2E;
    float r = nearbyintf(t);
    float f = t - r;
    float p = ((((((P6 * f + P5) * f + P4) * f + P3) * f + P2) * f + P1) * f + 1.0f);
    int32_t e = ((int32_t)r + 127) << 23;
    float sc;
    memcpy(&sc, &e, sizeof sc);
    return p * sc;
}

/* Inserts logit i into the sorted list top[0..*k) of at most kk; returns the new
 * threshold (the smallest kept logit once the list is full, else -inf). */
static float top_insert(const float *l, int32_t *top, int *k, int kk, int32_t i) {
    int j = *k < kk ? (*k)++ : *k - 1;
    while (j > 0 && l[i] > l[top[j - 1]]) {
        top[j] = top[j - 1];
        j--;
    }
    top[j] = i;
    return *k == kk ? l[top[kk - 1]] : -INFINITY;
}

/* The kk (>= 1) largest logits, best first, ties to the lower id. Returns how many. */
static int top_scalar(const float *l, int n, int kk, int32_t *top) {
    int k = 0;
    float thr = -INFINITY;
    for (int i = 0; i < n; i++)
        if (l[i] > thr || k < kk)
            thr = top_insert(l, top, &k, kk, i);
    return k;
}

/* sum of exp((l[i] - mx) * scale), every l[i] <= mx, scale > 0. */
static double sumexp_scalar(const float *l, int n, float mx, float scale) {
    double s = 0;
    for (int i = 0; i < n; i++)
        s += exp_neg((l[i] - mx) * scale);
    return s;
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2,fma"))) static int top_avx2(const float *l, int n, int kk, int32_t *top) {
    int k = 0, i = 0;
    float thr = -INFINITY;
    for (; i < n && k < kk; i++)
        thr = top_insert(l, top, &k, kk, i);
    __m256 vt = _mm256_set1_ps(thr);
    for (; i + 8 <= n; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(l + i), vt, _CMP_GT_OQ));
        if (!mask)
            continue;
        for (int b = 0; b < 8; b++)
            if ((mask >> b & 1) && l[i + b] > thr) // thr may have risen within these 8
                thr = top_insert(l, top, &k, kk, i + b);
        vt = _mm256_set1_ps(thr);
    }
    for (; i < n; i++)
        if (l[i] > thr)
            thr = top_insert(l, top, &k, kk, i);
    return k;
}

__attribute__((target("avx2,fma"))) static double sumexp_avx2(const float *l, int n, float mx, float scale) {
    const __m256 vmx = _mm256_set1_ps(mx), lo = _mm256_set1_ps(-87.0f), l2e = _mm256_set1_ps(LOG2E),
                 vs = _mm256_set1_ps(scale);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(l + i), vmx), vs);
        __m256 keep = _mm256_cmp_ps(x0, lo, _CMP_GE_OQ), x = _mm256_max_ps(x0, lo);
        __m256 t = _mm256_mul_ps(x, l2e);
        __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 f = _mm256_sub_ps(t, r);
        __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(P6), f, _mm256_set1_ps(P5));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P4));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P3));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P2));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(P1));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(127)), 23);
        __m256 v = _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    double d[4];
    _mm256_storeu_pd(d, _mm256_add_pd(acc0, acc1));
    double s = d[0] + d[1] + d[2] + d[3];
    for (; i < n; i++)
        s += exp_neg((l[i] - mx) * scale);
    return s;
}

static int have_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#define PICK(name, ...) (have_avx2() ? name##_avx2(__VA_ARGS__) : name##_scalar(__VA_ARGS__))
#else
#define PICK(name, ...) name##_scalar(__VA_ARGS__)
#endif

/* The id of the largest logit (the lowest such id on ties). */
static int32_t argmax(const float *l, int n) {
    int32_t best = 0;
    PICK(top, l, n, 1, &best);
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

/* Draws an index of logits[0..n) (already adjusted). */
static int32_t pick(wk_sampler *s, const float *logits, int n) {
    if (s->p.temperature <= 0 || s->p.top_k == 1)
        return argmax(logits, n);
    const float inv_t = 1.0f / s->p.temperature;
    const int32_t best = argmax(logits, n);
    const float mx = logits[best];
    double total = PICK(sumexp, logits, n, mx, inv_t);

    if ((s->p.top_k <= 0 || s->p.top_k >= n) && s->p.top_p >= 1.0f) {
        // The full distribution: one draw; find its block by block sums, then
        // the token inside the block.
        enum { BLK = 4096 };
        double r = next_unit(s->rng) * total, acc = 0;
        for (int b = 0; b < n; b += BLK) {
            int m = n - b < BLK ? n - b : BLK;
            double bs = PICK(sumexp, logits + b, m, mx, inv_t);
            if (acc + bs <= r) {
                acc += bs;
                continue;
            }
            int32_t last = best;
            for (int i = b; i < b + m; i++) {
                float e = exp_neg((logits[i] - mx) * inv_t);
                if (e > 0)
                    last = i;
                acc += e;
                if (acc > r)
                    return i;
            }
            return last; // the block's sum and its terms differ in the last bits
        }
        return best;
    }

    // Pop candidates in descending order until top_k or top_p is reached. With
    // top_p < 1 a token whose probability is under (1 - top_p) / n is never
    // reached (all such tokens together hold less than 1 - top_p), so only the
    // tokens above that bound go into the heap.
    int32_t *h = s->heap;
    int m = 0;
    if (s->p.top_p < 1.0f) {
        const float cut = mx + (float)(log(total * (1.0 - s->p.top_p) / n) / inv_t);
        for (int i = 0; i < n; i++)
            if (logits[i] >= cut)
                h[m++] = i;
    } else {
        for (int i = 0; i < n; i++)
            h[m++] = i;
    }
    for (int i = m / 2 - 1; i >= 0; i--)
        sift_down(h, m, i, logits);
    int limit = s->p.top_k > 0 && s->p.top_k < m ? s->p.top_k : m;
    int hn = m, k = 0;
    double cum = 0;
    while (k < limit && hn > 0) {
        int32_t id = h[0];
        h[0] = h[--hn];
        sift_down(h, hn, 0, logits);
        double p = exp_neg((logits[id] - mx) * inv_t) / total;
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

int32_t wk_sampler_sample(wk_sampler *s, float *logits) {
    adjust(s, logits);
    return pick(s, logits, s->n_vocab);
}

int32_t wk_sampler_sample_subset(wk_sampler *s, float *logits, const int32_t *ids, int n, float *vals) {
    adjust(s, logits);
    for (int i = 0; i < n; i++)
        vals[i] = logits[ids[i]];
    return ids[pick(s, vals, n)];
}

float wk_sampler_logprobs(const float *logits, int n_vocab, int32_t id, int n_top, int32_t *top_id, float *top_lp) {
    int32_t best[PROTO_MAX_TOP_LOGPROBS] = {0};
    int kk = n_top > 0 ? n_top : 1; // the best one is the maximum, needed either way
    int k = PICK(top, logits, n_vocab, kk, best);
    const float mx = logits[best[0]];
    const double lse = (double)mx + log(PICK(sumexp, logits, n_vocab, mx, 1.0f));
    for (int i = 0; i < k && i < n_top; i++) {
        top_id[i] = best[i];
        top_lp[i] = (float)((double)logits[best[i]] - lse);
    }
    return (float)((double)logits[id] - lse);
}
