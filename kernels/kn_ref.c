/* kn_ref: the scalar reference backend, the oracle for every other backend.
 *
 * Plain C, single-threaded, accumulating in double; clarity over speed. Unlike the
 * fast backends it may allocate scratch inside an op (it never runs in serving). */
#include "kernels/kn_ref.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kn_act.h"
#include "kernels/kn_exp.h"
#include "kernels/kn_fp8.h"
#include "kernels/kn_half.h"
#include "kernels/kn_quant.h"

static void *ref_alloc(kn_backend *be, size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1))
        return NULL;
    return p;
}

static void ref_free(kn_backend *be, void *p) {
    free(p);
}

static void ref_copy(kn_backend *be, void *dst, const void *src, size_t bytes) {
    memcpy(dst, src, bytes);
}

static void ref_zero(kn_backend *be, void *p, size_t bytes) {
    memset(p, 0, bytes);
}

static void ref_sync(kn_backend *be) {
}

static void ref_destroy(kn_backend *be) {
    free(be);
}

static const uint8_t *row_ptr(const kn_weight *w, int64_t r) {
    return (const uint8_t *)w->data + (size_t)r * kn_row_bytes(w->type, w->n_in);
}

/* y = x W^T with x already rounded as the caller wants. */
static int ref_matmul_f(const kn_weight *w, const float *x, int64_t n_tok, float *y) {
    float *wr = malloc((size_t)w->n_in * sizeof(float));
    if (!wr)
        return -ENOMEM;
    for (int64_t o = 0; o < w->n_out; o++) {
        kn_dequant_row(w->type, row_ptr(w, o), wr, w->n_in);
        for (int64_t t = 0; t < n_tok; t++) {
            const float *xt = x + t * w->n_in;
            double s = 0.0;
            for (int64_t i = 0; i < w->n_in; i++)
                s += (double)wr[i] * xt[i];
            y[t * w->n_out + o] = w->bias ? (float)s + w->bias[o] : (float)s;
        }
    }
    free(wr);
    return 0;
}

static void ref_matmul(kn_backend *be, const kn_weight *const *w, int n_w, const float *x, int64_t n_tok,
                       float *const *y) {
    for (int j = 0; j < n_w; j++)
        if (ref_matmul_f(w[j], x, n_tok, y[j]) < 0)
            for (int64_t i = 0; i < n_tok * w[j]->n_out; i++)
                y[j][i] = NAN;
}

int kn_ref_matmul_qact(const kn_weight *w, const float *x, int64_t n_tok, float *y) {
    kn_type vt = kn_vec_dot_type(w->type);
    if (vt == KN_F32)
        return ref_matmul_f(w, x, n_tok, y);
    size_t qb = kn_row_bytes(vt, w->n_in);
    int rc = -ENOMEM;
    float *xq = malloc((size_t)(n_tok * w->n_in) * sizeof(float));
    void *q = malloc(qb);
    if (!xq || !q)
        goto cleanup;
    for (int64_t t = 0; t < n_tok; t++) {
        if (vt == KN_Q8_0)
            kn_quantize_row_q8_0(x + t * w->n_in, q, w->n_in);
        else
            kn_quantize_row_q8_K(x + t * w->n_in, q, w->n_in);
        if (vt == KN_Q8_0) {
            // dequantize with the f16 scale, as the integer dot uses it
            kn_dequant_row(KN_Q8_0, q, xq + t * w->n_in, w->n_in);
        } else {
            kn_dequant_row(KN_Q8_K, q, xq + t * w->n_in, w->n_in);
        }
    }
    rc = ref_matmul_f(w, xq, n_tok, y);
cleanup:
    free(q);
    free(xq);
    return rc;
}

static void ref_get_rows(kn_backend *be, const kn_weight *w, const int32_t *ids, int64_t n, float scale,
                         float *y) {
    for (int64_t t = 0; t < n; t++) {
        float *yt = y + t * w->n_in;
        kn_dequant_row(w->type, row_ptr(w, ids[t]), yt, w->n_in);
        for (int64_t i = 0; i < w->n_in; i++)
            yt[i] *= scale;
    }
}

static void ref_rms_row(const float *x, const float *w, int64_t n, float eps, float *y) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    double inv = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(x[i] * inv * (w ? w[i] : 1.0f));
}

static void ref_rmsnorm(kn_backend *be, const float *x, const float *w, int64_t n_row, int64_t n, float eps,
                        float *y) {
    for (int64_t r = 0; r < n_row; r++)
        ref_rms_row(x + r * n, w, n, eps, y + r * n);
}

static void ref_rope_heads(float *x, const int32_t *pos, int64_t n_tok, int n_head, int head_dim, int n_rot,
                           float base, float freq_scale, const float *freq_factors, int mode) {
    for (int64_t t = 0; t < n_tok; t++) {
        for (int h = 0; h < n_head; h++) {
            float *v = x + (t * n_head + h) * head_dim;
            for (int i = 0; i < n_rot / 2; i++) {
                double theta = (double)pos[t] * freq_scale * pow(base, -2.0 * i / n_rot);
                if (freq_factors)
                    theta /= freq_factors[i];
                double c = cos(theta), s = sin(theta);
                int a = mode == KN_ROPE_NEOX ? i : 2 * i;
                int b = mode == KN_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
                double x0 = v[a], x1 = v[b];
                v[a] = (float)(x0 * c - x1 * s);
                v[b] = (float)(x0 * s + x1 * c);
            }
        }
    }
}

static void ref_rope(kn_backend *be, const kn_rope_args *a) {
    if (a->q_norm)
        ref_rmsnorm(be, a->q, a->q_norm, a->n_tok * a->n_head, a->head_dim, a->eps, a->q);
    if (a->k_norm)
        ref_rmsnorm(be, a->k, a->k_norm, a->n_tok * a->n_kv_head, a->head_dim, a->eps, a->k);
    ref_rope_heads(a->q, a->pos, a->n_tok, a->n_head, a->head_dim, a->n_rot, a->base, a->freq_scale,
                   a->freq_factors, a->mode);
    ref_rope_heads(a->k, a->pos, a->n_tok, a->n_kv_head, a->head_dim, a->n_rot, a->base, a->freq_scale,
                   a->freq_factors, a->mode);
}

/* SiLU exact in double; GELU by the shared f32 definition of kn_act.h. */
static void ref_glu(kn_backend *be, const float *g, const float *u, int64_t n, int act, float *y) {
    for (int64_t i = 0; i < n; i++) {
        if (act == 0) {
            double x = g[i];
            y[i] = (float)(x / (1.0 + exp(-x)) * u[i]);
        } else {
            y[i] = kn_gelu(g[i]) * u[i];
        }
    }
}

static void ref_add_norm(kn_backend *be, float *x, const float *r, const float *r_w, const float *w, int64_t n_row,
                         int64_t n, float eps, float *y) {
    float *t = r_w ? malloc((size_t)n * sizeof *t) : NULL;
    if (r_w && !t)
        return;
    for (int64_t row = 0; row < n_row; row++) {
        float *xr = x + row * n;
        const float *rr = r + row * n;
        if (t) {
            ref_rms_row(rr, r_w, n, eps, t);
            rr = t;
        }
        for (int64_t i = 0; i < n; i++)
            xr[i] += rr[i];
        if (y)
            ref_rms_row(xr, w, n, eps, y + row * n);
    }
    free(t);
}

/* Element idx of a KN_F32, KN_F16 or KN_BF16 cache: stored from / loaded as f32. */
static void kv_put(void *cache, kn_type t, size_t idx, float x) {
    switch (t) {
    case KN_F16: ((uint16_t *)cache)[idx] = kn_f32_to_f16(x); break;
    case KN_BF16: ((uint16_t *)cache)[idx] = kn_f32_to_bf16(x); break;
    default: ((float *)cache)[idx] = x; break;
    }
}

static float kv_load(const void *cache, kn_type t, size_t idx) {
    switch (t) {
    case KN_F16: return kn_f16_to_f32(((const uint16_t *)cache)[idx]);
    case KN_BF16: return kn_bf16_to_f32(((const uint16_t *)cache)[idx]);
    default: return ((const float *)cache)[idx];
    }
}

void kn_ref_kv_store(void *k_cache, void *v_cache, kn_type kv_type, const float *k, const float *v,
                     const int32_t *slots, int64_t n_tok, int64_t row, int head_dim) {
    for (int64_t t = 0; t < n_tok; t++) {
        if (slots[t] < 0)
            continue;
        size_t off = (size_t)slots[t] * (size_t)row;
        if (kv_type == KN_E4M3) {
            const int64_t nh = row / head_dim;
            for (int64_t h = 0; h < nh; h++) {
                kn_e4m3_rec_put(k_cache, (size_t)(slots[t] * nh + h), k + t * row + h * head_dim, head_dim);
                kn_e4m3_rec_put(v_cache, (size_t)(slots[t] * nh + h), v + t * row + h * head_dim, head_dim);
            }
            continue;
        }
        for (int64_t i = 0; i < row; i++) {
            kv_put(k_cache, kv_type, off + (size_t)i, k[t * row + i]);
            kv_put(v_cache, kv_type, off + (size_t)i, v[t * row + i]);
        }
    }
}

static void ref_kv_store(kn_backend *be, void *k_cache, void *v_cache, kn_type kv_type, const float *k,
                         const float *v, const int32_t *slots, int64_t n_tok, int64_t row, int head_dim) {
    kn_ref_kv_store(k_cache, v_cache, kv_type, k, v, slots, n_tok, row, head_dim);
}

/* Element i of kv head kvh at physical slot `slot`. */
static float kv_get(const kn_attn_args *a, const void *cache, size_t slot, int kvh, int i) {
    if (a->kv_type == KN_E4M3)
        return kn_e4m3_rec_get(cache, slot * a->n_kv_head + kvh, a->head_dim, i);
    return kv_load(cache, a->kv_type, (slot * a->n_kv_head + kvh) * a->head_dim + i);
}

/* Gathers each token's K/V position by position through the block table, then
 * runs dense softmax attention in double. */
void kn_ref_attention(const kn_attn_args *a) {
    const int hd = a->head_dim, group = a->n_head / a->n_kv_head;
    int max_pos = 0;
    for (int t = 0; t < a->n_tok; t++)
        if (a->tok_pos[t] > max_pos)
            max_pos = a->tok_pos[t];
    double *s = malloc((size_t)(max_pos + 1) * sizeof(double));
    double *acc = malloc((size_t)hd * sizeof(double));
    if (!s || !acc) {
        for (size_t i = 0; i < (size_t)a->n_tok * a->n_head * hd; i++)
            a->out[i] = NAN;
        goto cleanup;
    }
    for (int t = 0; t < a->n_tok; t++) {
        const int pos = a->tok_pos[t];
        const int32_t *bt = a->block_tables + (size_t)a->tok_seq[t] * a->max_blocks;
        int start = a->window > 0 ? pos - a->window + 1 : 0;
        if (start < 0)
            start = 0;
        for (int h = 0; h < a->n_head; h++) {
            const float *q = a->q + ((size_t)t * a->n_head + h) * hd;
            const int kvh = h / group;
            double mx = -INFINITY;
            for (int j = start; j <= pos; j++) {
                const size_t slot = (size_t)bt[j / a->block_size] * a->block_size + j % a->block_size;
                double d = 0.0;
                for (int i = 0; i < hd; i++)
                    d += (double)q[i] * kv_get(a, a->k_cache, slot, kvh, i);
                d *= a->scale;
                if (a->softcap > 0.0f)
                    d = a->softcap * tanh(d / a->softcap);
                s[j] = d;
                if (d > mx)
                    mx = d;
            }
            double sum = 0.0;
            for (int j = start; j <= pos; j++) {
                s[j] = exp(s[j] - mx);
                sum += s[j];
            }
            for (int i = 0; i < hd; i++)
                acc[i] = 0.0;
            for (int j = start; j <= pos; j++) {
                const size_t slot = (size_t)bt[j / a->block_size] * a->block_size + j % a->block_size;
                for (int i = 0; i < hd; i++)
                    acc[i] += s[j] * kv_get(a, a->v_cache, slot, kvh, i);
            }
            float *o = a->out + ((size_t)t * a->n_head + h) * hd;
            for (int i = 0; i < hd; i++)
                o[i] = (float)(acc[i] / sum);
        }
    }
cleanup:
    free(acc);
    free(s);
}

static void ref_attention(kn_backend *be, const kn_attn_args *a) {
    kn_ref_attention(a);
}

void kn_ref_softcap(float *x, int64_t n, float cap) {
    for (int64_t i = 0; i < n; i++)
        x[i] = cap * tanhf(x[i] / cap);
}

static void ref_softcap(kn_backend *be, float *x, int64_t n, float cap) {
    kn_ref_softcap(x, n, cap);
}

/* ---- sample: kn.h's definitions, literally: the allowed tokens sorted, sums in
 * double ---- */

typedef struct {
    float a;
    int32_t id;
} ref_tok;

static int ref_tok_order(const void *x, const void *y) { // value descending, id ascending
    const ref_tok *p = x, *q = y;
    if (p->a != q->a)
        return p->a > q->a ? -1 : 1;
    return (p->id > q->id) - (p->id < q->id);
}

/* Row r of the op; tok and wk are [n] scratch. */
static void ref_sample_row(float *x, int64_t n, const kn_sample_params *p, const int32_t *aid, float *aval,
                           int32_t na, const uint32_t *mw, kn_sample_out *o, ref_tok *tok, float *wk) {
    double lse = 0.0;
    if (p->n_top >= 0) {
        double mx = -INFINITY, s = 0.0;
        for (int64_t i = 0; i < n; i++)
            mx = x[i] > mx ? x[i] : mx;
        for (int64_t i = 0; i < n; i++)
            s += exp(x[i] - mx);
        lse = mx + log(s);
        for (int64_t i = 0; i < n; i++)
            tok[i] = (ref_tok){x[i], (int32_t)i};
        qsort(tok, (size_t)n, sizeof *tok, ref_tok_order);
        for (int k = 0; k < p->n_top && k < n; k++) {
            o->top_id[k] = tok[k].id;
            o->top_lp[k] = (float)(tok[k].a - lse);
        }
    }
    for (int32_t j = 0; j < na; j++) {
        const float raw = x[aid[j]];
        x[aid[j]] = raw + aval[j];
        aval[j] = raw;
    }
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (!mw || (mw[i >> 5] >> (i & 31) & 1))
            tok[m++] = (ref_tok){x[i], (int32_t)i};
    o->id = -1;
    if (m == 0)
        return;
    qsort(tok, (size_t)m, sizeof *tok, ref_tok_order);
    if (p->temperature <= 0.0f || p->top_k == 1) {
        o->id = tok[0].id;
    } else {
        const float mx = tok[0].a, inv_t = 1.0f / p->temperature;
        double total = 0.0;
        for (int64_t i = 0; i < m; i++)
            total += kn_exp_neg((tok[i].a - mx) * inv_t);
        float tau = -INFINITY;
        if (p->top_k > 0 && p->top_k < m)
            tau = tok[p->top_k - 1].a;
        if (p->top_p < 1.0f) {
            double cum = 0.0;
            for (int64_t i = 0; i < m; i++) {
                cum += kn_exp_neg((tok[i].a - mx) * inv_t);
                if ((i == m - 1 || tok[i + 1].a != tok[i].a) && cum >= (double)p->top_p * total) {
                    tau = tok[i].a > tau ? tok[i].a : tau;
                    break;
                }
            }
        }
        for (int64_t i = 0; i < n; i++)
            wk[i] = -1.0f; // not kept
        for (int64_t i = 0; i < m; i++) {
            const float w = kn_exp_neg((tok[i].a - mx) * inv_t);
            if (tok[i].a >= tau && w >= p->min_p)
                wk[tok[i].id] = w;
        }
        double kept = 0.0;
        for (int64_t i = 0; i < n; i++)
            kept += wk[i] > 0.0f ? wk[i] : 0.0f;
        const double r = (double)p->u * kept;
        double cum = 0.0;
        for (int64_t i = 0; i < n && o->id < 0; i++)
            if (wk[i] >= 0.0f && (cum += wk[i]) > r)
                o->id = (int32_t)i;
        for (int64_t i = n - 1; i >= 0 && o->id < 0; i--)
            if (wk[i] > 0.0f)
                o->id = (int32_t)i;
        if (o->id < 0) // every kept w is 0 (every allowed logit at -inf)
            o->id = tok[0].id;
    }
    if (p->n_top >= 0) {
        float raw = x[o->id];
        for (int32_t j = 0; j < na; j++)
            if (aid[j] == o->id)
                raw = aval[j];
        o->logprob = (float)(raw - lse);
    }
}

static void ref_sample(kn_backend *be, float *x, int64_t n_row, int64_t n, const kn_sample_params *p,
                       const int32_t *adj_off, const int32_t *adj_id, float *adj_val, const uint32_t *mask,
                       kn_sample_out *out) {
    ref_tok *tok = malloc((size_t)n * sizeof *tok);
    float *wk = malloc((size_t)n * sizeof *wk);
    for (int64_t r = 0; r < n_row; r++) {
        if (!tok || !wk) {
            out[r].id = -1;
            continue;
        }
        const int32_t a0 = adj_off ? adj_off[r] : 0, na = adj_off ? adj_off[r + 1] - a0 : 0;
        const uint32_t *mw = p[r].mask >= 0 ? mask + (size_t)p[r].mask * (size_t)((n + 31) / 32) : NULL;
        ref_sample_row(x + r * n, n, &p[r], na ? adj_id + a0 : NULL, na ? adj_val + a0 : NULL, na, mw, &out[r], tok,
                       wk);
    }
    free(tok);
    free(wk);
}

static const kn_backend_ops ref_ops = {
    .name = "ref",
    .destroy = ref_destroy,
    .alloc = ref_alloc,
    .free = ref_free,
    .upload = ref_copy,
    .download = ref_copy,
    .zero = ref_zero,
    .sync = ref_sync,
    .matmul = ref_matmul,
    .get_rows = ref_get_rows,
    .rmsnorm = ref_rmsnorm,
    .rope = ref_rope,
    .glu = ref_glu,
    .add_norm = ref_add_norm,
    .kv_store = ref_kv_store,
    .attention = ref_attention,
    .softcap = ref_softcap,
    .sample = ref_sample,
};

kn_backend *kn_ref_create(void) {
    kn_backend *be = calloc(1, sizeof(*be));
    if (!be)
        return NULL;
    be->ops = &ref_ops;
    be->n_threads = 1;
    return be;
}
