/* kn_cpu_sample: the sample op on the CPU (kn.h has the definition).
 *
 * Cost per row is a few passes over the logits, never a sort of the vocabulary:
 * - the maximum and the sum of exp run 8 lanes at a time (AVX2, kn_exp.h's
 *   polynomial; sums in double);
 * - a row whose mask allows few tokens is gathered first, so the rest costs only
 *   those tokens;
 * - with top_k, top_p or min_p, only a pool of candidates is sorted: the tokens
 *   above a value under which none can be kept. For top_p that value is where a
 *   token's probability drops under half of (1 - top_p) / n: a token that low
 *   cannot be in the top-p set, since every token after it in descending order is
 *   as low, and together they hold less than 1 - top_p. A top_k cut is then a
 *   selection (quickselect) in the pool;
 * - the draw walks the kept tokens in id order, block by block over the row when
 *   nothing is filtered. */
#include "kernels/cpu/kn_cpu_sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kn_exp.h"

typedef struct {
    float v;
    int32_t i; // index into the row being sampled (the gathered one, when a mask gathered)
} cand;

size_t kn_cpu_sample_scratch_bytes(int64_t n) {
    // gathered values and ids, then the candidate pairs
    return (size_t)n * (sizeof(float) + sizeof(int32_t) + sizeof(cand)) + 128;
}

/* ---- vector math ---- */

/* Inserts l[i] into the sorted list top[0..*k) of at most kk; returns the new
 * threshold (the smallest kept value once the list is full, else -inf). */
static float top_insert(const float *l, int32_t *top, int *k, int kk, int32_t i) {
    int j = *k < kk ? (*k)++ : *k - 1;
    while (j > 0 && l[i] > l[top[j - 1]]) {
        top[j] = top[j - 1];
        j--;
    }
    top[j] = i;
    return *k == kk ? l[top[kk - 1]] : -INFINITY;
}

/* The kk (>= 1) largest values, best first, ties to the lower index. Returns how many. */
static int top_scalar(const float *l, int64_t n, int kk, int32_t *top) {
    int k = 0;
    float thr = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (l[i] > thr || k < kk)
            thr = top_insert(l, top, &k, kk, (int32_t)i);
    return k;
}

/* sum of kn_exp_neg((l[i] - mx) * scale), every l[i] <= mx, scale > 0. */
static double sumexp_scalar(const float *l, int64_t n, float mx, float scale) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += kn_exp_neg((l[i] - mx) * scale);
    return s;
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2,fma"))) static int top_avx2(const float *l, int64_t n, int kk, int32_t *top) {
    int k = 0;
    int64_t i = 0;
    float thr = -INFINITY;
    for (; i < n && k < kk; i++)
        thr = top_insert(l, top, &k, kk, (int32_t)i);
    __m256 vt = _mm256_set1_ps(thr);
    for (; i + 8 <= n; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(l + i), vt, _CMP_GT_OQ));
        if (!mask)
            continue;
        for (int b = 0; b < 8; b++)
            if ((mask >> b & 1) && l[i + b] > thr) // thr may have risen within these 8
                thr = top_insert(l, top, &k, kk, (int32_t)(i + b));
        vt = _mm256_set1_ps(thr);
    }
    for (; i < n; i++)
        if (l[i] > thr)
            thr = top_insert(l, top, &k, kk, (int32_t)i);
    return k;
}

__attribute__((target("avx2,fma"))) static double sumexp_avx2(const float *l, int64_t n, float mx, float scale) {
    const __m256 vmx = _mm256_set1_ps(mx), lo = _mm256_set1_ps(-87.0f), l2e = _mm256_set1_ps(KN_EXP_LOG2E),
                 vs = _mm256_set1_ps(scale);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(l + i), vmx), vs);
        __m256 keep = _mm256_cmp_ps(x0, lo, _CMP_GE_OQ), x = _mm256_max_ps(x0, lo);
        __m256 t = _mm256_mul_ps(x, l2e);
        __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 f = _mm256_sub_ps(t, r);
        __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(KN_EXP_P6), f, _mm256_set1_ps(KN_EXP_P5));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KN_EXP_P4));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KN_EXP_P3));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KN_EXP_P2));
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(KN_EXP_P1));
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
        s += kn_exp_neg((l[i] - mx) * scale);
    return s;
}

/* The AVX2 or the portable kernel, as the backend chose (kn_cpu.c's simd). */
#define PICK(name, ...) (avx2 ? name##_avx2(__VA_ARGS__) : name##_scalar(__VA_ARGS__))
#else
#define PICK(name, ...) ((void)avx2, name##_scalar(__VA_ARGS__))
#endif

/* ---- candidates ---- */

static int cand_order(const void *x, const void *y) { // value descending, index ascending
    const cand *p = x, *q = y;
    if (p->v != q->v)
        return p->v > q->v ? -1 : 1;
    return (p->i > q->i) - (p->i < q->i);
}

static int cand_index_order(const void *x, const void *y) {
    const cand *p = x, *q = y;
    return (p->i > q->i) - (p->i < q->i);
}

/* The k-th largest value (1 <= k <= n) of c[0..n), which it reorders. */
static float kth_largest(cand *c, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        const float pivot = c[lo + (hi - lo) / 2].v;
        int64_t i = lo, j = hi;
        while (i <= j) { // Hoare partition, descending
            while (c[i].v > pivot)
                i++;
            while (c[j].v < pivot)
                j--;
            if (i <= j) {
                cand t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return pivot;
    }
    return c[want].v;
}

/* Draws from v[0..m) (the row, or its gathered tokens) at temperature 1 / inv_t
 * with the filters of p; n_allowed tokens take part. Returns an index of v. */
static int64_t draw(const float *v, int64_t m, int64_t n_allowed, const kn_sample_params *p, float inv_t, cand *c,
                    int avx2) {
    int32_t best = 0;
    PICK(top, v, m, 1, &best);
    const float mx = v[best];
    const int top_k = p->top_k > 0 && p->top_k < n_allowed ? p->top_k : 0;
    if (!top_k && p->top_p >= 1.0f && p->min_p <= 0.0f) {
        // Nothing filtered: one draw over the whole row; find its block by block
        // sums, then the token inside the block.
        enum { BLK = 4096 };
        const double total = PICK(sumexp, v, m, mx, inv_t), r = (double)p->u * total;
        double acc = 0;
        for (int64_t b = 0; b < m; b += BLK) {
            const int64_t len = m - b < BLK ? m - b : BLK;
            const double bs = PICK(sumexp, v + b, len, mx, inv_t);
            if (acc + bs <= r) {
                acc += bs;
                continue;
            }
            int64_t last = best;
            for (int64_t i = b; i < b + len; i++) {
                const float e = kn_exp_neg((v[i] - mx) * inv_t);
                if (e > 0)
                    last = i;
                if ((acc += e) > r)
                    return i;
            }
            return last; // the block's sum and its terms differ in the last bits
        }
        return best;
    }
    // The pool: every token that can be kept (loose: the exact tests follow).
    double total = 0;
    float cut_w = p->min_p > 0.0f ? p->min_p : 0.0f;
    if (p->top_p < 1.0f) {
        total = PICK(sumexp, v, m, mx, inv_t);
        const float cp = (float)(0.5 * (1.0 - (double)p->top_p) * total / (double)n_allowed);
        cut_w = cp > cut_w ? cp : cut_w;
    }
    const float cut_v = cut_w > 0.0f ? mx + (logf(cut_w) - 1e-3f) / inv_t : -INFINITY;
    int64_t nc = 0;
    for (int64_t i = 0; i < m; i++)
        if (v[i] >= cut_v && v[i] > -INFINITY)
            c[nc++] = (cand){v[i], (int32_t)i};
    float tau = -INFINITY;
    if (top_k && nc > top_k) {
        tau = kth_largest(c, nc, top_k);
        int64_t k = 0;
        for (int64_t i = 0; i < nc; i++)
            if (c[i].v >= tau)
                c[k++] = c[i];
        nc = k;
    }
    if (p->top_p < 1.0f) {
        qsort(c, (size_t)nc, sizeof *c, cand_order);
        double cum = 0;
        for (int64_t i = 0; i < nc; i++) {
            cum += kn_exp_neg((c[i].v - mx) * inv_t);
            if ((i == nc - 1 || c[i + 1].v != c[i].v) && cum >= (double)p->top_p * total) {
                tau = c[i].v > tau ? c[i].v : tau;
                break;
            }
        }
    }
    int64_t k = 0;
    for (int64_t i = 0; i < nc; i++)
        if (c[i].v >= tau && kn_exp_neg((c[i].v - mx) * inv_t) >= p->min_p)
            c[k++] = c[i];
    qsort(c, (size_t)k, sizeof *c, cand_index_order);
    double kept = 0;
    for (int64_t i = 0; i < k; i++)
        kept += kn_exp_neg((c[i].v - mx) * inv_t);
    const double r = (double)p->u * kept;
    double acc = 0;
    int64_t last = best;
    for (int64_t i = 0; i < k; i++) {
        const float e = kn_exp_neg((c[i].v - mx) * inv_t);
        if (e > 0)
            last = c[i].i;
        if ((acc += e) > r)
            return c[i].i;
    }
    return last;
}

void kn_cpu_sample_row(float *x, int64_t n, const kn_sample_params *p, const int32_t *aid, float *aval, int32_t na,
                       const uint32_t *mw, kn_sample_out *o, void *scratch, int avx2) {
    float *gv = scratch;
    int32_t *gi = (int32_t *)(gv + n);
    cand *c = (cand *)(((uintptr_t)(gi + n) + 63) & ~(uintptr_t)63);
    double lse = 0;
    if (p->n_top >= 0) {
        int32_t top[KN_MAX_TOP];
        const int kk = p->n_top > 0 ? p->n_top : 1, k = PICK(top, x, n, kk, top);
        const float mx = x[top[0]];
        lse = (double)mx + log(PICK(sumexp, x, n, mx, 1.0f));
        for (int i = 0; i < k && i < p->n_top; i++) {
            o->top_id[i] = top[i];
            o->top_lp[i] = (float)((double)x[top[i]] - lse);
        }
    }
    for (int32_t j = 0; j < na; j++) {
        const float raw = x[aid[j]];
        x[aid[j]] = raw + aval[j];
        aval[j] = raw;
    }
    // The row the draw sees: x itself, with disallowed tokens at -inf when most
    // are allowed, or the allowed tokens gathered when few are.
    const float *v = x;
    const int32_t *ids = NULL;
    int64_t m = n, n_allowed = n;
    if (mw) {
        const int64_t words = (n + 31) / 32;
        n_allowed = 0;
        for (int64_t w = 0; w < words; w++)
            n_allowed += __builtin_popcount(mw[w]);
        o->id = -1;
        if (!n_allowed)
            return;
        if (n_allowed * 2 < n) {
            m = 0;
            for (int64_t w = 0; w < words; w++)
                for (uint32_t bits = mw[w]; bits; bits &= bits - 1) {
                    const int64_t i = w * 32 + __builtin_ctz(bits);
                    gv[m] = x[i];
                    gi[m++] = (int32_t)i;
                }
            v = gv;
            ids = gi;
        } else {
            for (int64_t w = 0; w < words; w++)
                for (uint32_t off = ~mw[w]; off; off &= off - 1) {
                    const int64_t i = w * 32 + __builtin_ctz(off);
                    if (i < n)
                        x[i] = -INFINITY;
                }
        }
    }
    int64_t pick;
    if (p->temperature <= 0.0f || p->top_k == 1) {
        int32_t best = 0;
        PICK(top, v, m, 1, &best);
        pick = best;
        if (!ids && mw && !(mw[pick >> 5] >> (pick & 31) & 1)) // every allowed token at -inf
            for (pick = 0; !(mw[pick >> 5] >> (pick & 31) & 1); pick++)
                ;
    } else {
        pick = draw(v, m, n_allowed, p, 1.0f / p->temperature, c, avx2);
    }
    o->id = ids ? ids[pick] : (int32_t)pick;
    if (p->n_top >= 0) {
        float raw = x[o->id];
        for (int32_t j = 0; j < na; j++)
            if (aid[j] == o->id)
                raw = aval[j];
        o->logprob = (float)((double)raw - lse);
    }
}
