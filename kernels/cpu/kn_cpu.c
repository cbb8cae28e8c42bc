/* kn_cpu: the CPU backend ops (see kn_cpu.h).
 *
 * Every op packs its arguments into a small context on the caller's stack and
 * runs it on the pool; each thread takes a contiguous share [ith*n/nth,
 * (ith+1)*n/nth) of the op's natural work items (token-head pairs, rows,
 * elements), except matmul, whose threads claim chunks of output rows from an
 * atomic counter. Ops too small to amortize the hand-off run on the caller. */
#include "kernels/cpu/kn_cpu.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/kn_cpu_dot.h"
#include "kernels/cpu/kn_cpu_sample.h"
#include "kernels/cpu/kn_pool.h"
#include "kernels/kn_act.h"
#include "kernels/kn_half.h"
#include "kernels/kn_quant.h"
#include "kernels/kn_ref.h"

#define KN_CPU_MIN_ACT (4u << 20)   // initial activation scratch bytes
#define KN_CPU_CHUNK_BYTES (32u << 10) // weight bytes per row chunk (L1/L2 sized)
#define KN_CPU_MAX_HEAD_DIM 1024
#define KN_CPU_SMALL 8192 // elementwise ops below this many values run inline

typedef struct kn_cpu {
    kn_backend base;
    kn_pool *pool;
    kn_dot_table dt;
    int simd;
    uint8_t *act; // quantized activations [n_tok, row bytes]
    size_t act_cap;
    float *deq; // per-thread dequantized weight row [n_threads, deq_cap]
    size_t deq_cap;
    uint8_t *smp; // per-thread sample scratch, smp_cap bytes in all
    size_t smp_cap;
} kn_cpu;

static inline void split(int64_t n, int ith, int nth, int64_t *a, int64_t *b) {
    *a = n * ith / nth;
    *b = n * (ith + 1) / nth;
}

static void *aligned_buf(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1))
        return NULL;
    return p;
}

/* Grows the activation scratch to at least `bytes`; 0 or -ENOMEM (old kept). */
static int grow_act(kn_cpu *c, size_t bytes) {
    if (bytes <= c->act_cap)
        return 0;
    uint8_t *p = aligned_buf(bytes);
    if (!p)
        return -ENOMEM;
    free(c->act);
    c->act = p;
    c->act_cap = bytes;
    return 0;
}

static int grow_deq(kn_cpu *c, size_t n) {
    if (n <= c->deq_cap)
        return 0;
    float *p = aligned_buf(n * sizeof(float) * (size_t)c->base.n_threads);
    if (!p)
        return -ENOMEM;
    free(c->deq);
    c->deq = p;
    c->deq_cap = n;
    return 0;
}

static void run(kn_cpu *c, kn_pool_fn fn, void *ctx, int64_t work) {
    if (work < KN_CPU_SMALL || c->base.n_threads == 1)
        fn(ctx, 0, 1);
    else
        kn_pool_run(c->pool, fn, ctx);
}

/* ---- memory ---- */

static void *cpu_alloc(kn_backend *be, size_t bytes) {
    return aligned_buf(bytes);
}

static void cpu_free(kn_backend *be, void *p) {
    free(p);
}

static void cpu_copy(kn_backend *be, void *dst, const void *src, size_t bytes) {
    memcpy(dst, src, bytes);
}

static void cpu_zero(kn_backend *be, void *p, size_t bytes) {
    memset(p, 0, bytes);
}

static void cpu_sync(kn_backend *be) {
}

/* ---- matmul ---- */

typedef struct {
    kn_cpu *c;
    const kn_weight *w;
    const float *x; // [n_tok, n_in]
    int64_t n_tok;
    float *y; // [n_tok, n_out]
    kn_type vt;
    size_t xrow; // bytes per activation row as the dot kernel reads it
    int split;   // Q8_0 activations in dotn's split layout (kn_cpu_dot.h)
    atomic_llong next; // next unclaimed output row (threads claim chunks dynamically)
} mm_ctx;

/* Quantizes a row of n floats to Q8_0 in the split layout of kn_cpu_dot.h: the
 * same codes and scales as kn_quantize_row_q8_0, codes ^ 0x80 when xu. */
static void quantize_split(const float *x, uint8_t *dst, int64_t n, int xu) {
    const int64_t nb = n / KN_QK;
    float *d = (float *)(dst + (size_t)32 * nb);
    for (int64_t b = 0; b < nb; b++) {
        kn_block_q8_0 blk;
        kn_quantize_row_q8_0(x + b * KN_QK, &blk, KN_QK);
        uint8_t *q = dst + 32 * b;
        for (int j = 0; j < 32; j++)
            q[j] = (uint8_t)blk.qs[j] ^ (xu ? 0x80u : 0u);
        d[b] = kn_f16_to_f32(blk.d);
    }
}

static void mm_quantize(void *vctx, int ith, int nth) {
    mm_ctx *m = vctx;
    int64_t t0, t1;
    split(m->n_tok, ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        void *dst = m->c->act + (size_t)t * m->xrow;
        if (m->split)
            quantize_split(m->x + t * m->w->n_in, dst, m->w->n_in, m->c->dt.act_xu);
        else if (m->vt == KN_Q8_0)
            kn_quantize_row_q8_0(m->x + t * m->w->n_in, dst, m->w->n_in);
        else
            kn_quantize_row_q8_K(m->x + t * m->w->n_in, dst, m->w->n_in);
    }
}

/* The table's kernels for a weight type; E4M3 (not a GGUF type, past the tables)
 * has none: it is dequantized a row at a time. */
static kn_dot_fn dot_of(const kn_cpu *c, kn_type t) {
    return t < KN_TYPE_COUNT ? c->dt.dot[t] : NULL;
}

static kn_dotn_fn dotn_of(const kn_cpu *c, kn_type t) {
    return t < KN_TYPE_COUNT ? c->dt.dotn[t] : NULL;
}

static void mm_rows(void *vctx, int ith, int nth) {
    mm_ctx *m = vctx;
    const kn_weight *w = m->w;
    const size_t wrow = kn_row_bytes(w->type, w->n_in);
    const uint8_t *xb = m->vt == KN_F32 ? (const uint8_t *)m->x : m->c->act;
    kn_dot_fn dot = dot_of(m->c, w->type);
    kn_dotn_fn dotn = dotn_of(m->c, w->type);
    float *deq = m->c->deq ? m->c->deq + (size_t)ith * m->c->deq_cap : NULL;
    int64_t chunk = (int64_t)(KN_CPU_CHUNK_BYTES / (wrow ? wrow : 1));
    // big matrices: fewer, longer claims keep each thread's weight stream sequential
    if (chunk < w->n_out / (16 * nth))
        chunk = w->n_out / (16 * nth);
    if (chunk < 1)
        chunk = 1;
    // NOTE: rows are claimed chunk by chunk, not split statically: on a shared
    // machine one thread is often descheduled and the other picks up its share.
    for (;;) {
        const int64_t rc = atomic_fetch_add_explicit(&m->next, chunk, memory_order_relaxed);
        if (rc >= w->n_out)
            break;
        const int64_t re = rc + chunk < w->n_out ? rc + chunk : w->n_out;
        if (dotn) {
            for (int64_t r = rc; r < re; r++) {
                const uint8_t *wr = (const uint8_t *)w->data + (size_t)r * wrow;
                for (int64_t t = 0; t < m->n_tok; t += KN_DOTN_MAX) {
                    const int nx = m->n_tok - t < KN_DOTN_MAX ? (int)(m->n_tok - t) : KN_DOTN_MAX;
                    dotn(wr, xb + (size_t)t * m->xrow, m->xrow, nx, w->n_in, m->y + t * w->n_out + r,
                         (size_t)w->n_out);
                }
            }
        } else if (dot) {
            for (int64_t t = 0; t < m->n_tok; t++) {
                const void *xt = xb + (size_t)t * m->xrow;
                float *yt = m->y + t * w->n_out;
                for (int64_t r = rc; r < re; r++)
                    yt[r] = dot((const uint8_t *)w->data + (size_t)r * wrow, xt, w->n_in);
            }
        } else {
            for (int64_t r = rc; r < re; r++) {
                kn_dequant_row(w->type, (const uint8_t *)w->data + (size_t)r * wrow, deq, w->n_in);
                for (int64_t t = 0; t < m->n_tok; t++)
                    m->y[t * w->n_out + r] = m->c->dt.dot_f32(deq, m->x + t * w->n_in, w->n_in);
            }
        }
    }
}

static void matmul_one(kn_cpu *c, const kn_weight *w, const float *x, int64_t n_tok, float *y) {
    mm_ctx m = {.c = c, .w = w, .vt = kn_vec_dot_type(w->type)};
    if (!dot_of(c, w->type) && grow_deq(c, (size_t)w->n_in) < 0) {
        for (int64_t i = 0; i < n_tok * w->n_out; i++)
            y[i] = NAN;
        return;
    }
    m.split = m.vt == KN_Q8_0 && dotn_of(c, w->type);
    m.xrow = m.vt == KN_F32 ? (size_t)w->n_in * sizeof(float)
             : m.split      ? KN_DOTN_Q8_ROW(w->n_in)
                            : kn_row_bytes(m.vt, w->n_in);
    int64_t step = n_tok;
    if (m.vt != KN_F32) {
        // NOTE: if growing fails, fall back to as many tokens as the scratch holds.
        if (grow_act(c, (size_t)n_tok * m.xrow) < 0)
            step = (int64_t)(c->act_cap / m.xrow);
        if (step < 1) {
            for (int64_t i = 0; i < n_tok * w->n_out; i++)
                y[i] = NAN;
            return;
        }
    }
    const int64_t work = w->n_out * w->n_in;
    for (int64_t t = 0; t < n_tok; t += step) {
        m.x = x + t * w->n_in;
        m.y = y + t * w->n_out;
        m.n_tok = n_tok - t < step ? n_tok - t : step;
        if (m.vt != KN_F32)
            run(c, mm_quantize, &m, m.n_tok * w->n_in);
        atomic_store_explicit(&m.next, 0, memory_order_relaxed);
        run(c, mm_rows, &m, work);
    }
    if (w->bias) // a pass of its own: a few adds per output, next to the dot products
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t o = 0; o < w->n_out; o++)
                y[t * w->n_out + o] += w->bias[o];
}

/* NOTE: one weight after the other; each quantizes x for itself (the cost of
 * that is a small part of a weight's, even at decode). */
static void cpu_matmul(kn_backend *be, const kn_weight *const *w, int n_w, const float *x, int64_t n_tok,
                       float *const *y) {
    for (int j = 0; j < n_w; j++)
        matmul_one((kn_cpu *)be, w[j], x, n_tok, y[j]);
}

/* ---- get_rows ---- */

typedef struct {
    const kn_weight *w;
    const int32_t *ids;
    int64_t n;
    float scale;
    float *y;
} gr_ctx;

static void gr_run(void *vctx, int ith, int nth) {
    gr_ctx *g = vctx;
    const size_t wrow = kn_row_bytes(g->w->type, g->w->n_in);
    int64_t a, b;
    split(g->n, ith, nth, &a, &b);
    for (int64_t t = a; t < b; t++) {
        float *yt = g->y + t * g->w->n_in;
        if (g->ids[t] < 0 || g->ids[t] >= g->w->n_out) { // caller bug: don't read out of bounds
            memset(yt, 0, (size_t)g->w->n_in * sizeof(float));
            continue;
        }
        kn_dequant_row(g->w->type, (const uint8_t *)g->w->data + (size_t)g->ids[t] * wrow, yt, g->w->n_in);
        for (int64_t i = 0; i < g->w->n_in; i++)
            yt[i] *= g->scale;
    }
}

static void cpu_get_rows(kn_backend *be, const kn_weight *w, const int32_t *ids, int64_t n, float scale, float *y) {
    gr_ctx g = {w, ids, n, scale, y};
    run((kn_cpu *)be, gr_run, &g, n * w->n_in);
}

/* ---- rmsnorm ---- */

typedef struct {
    const float *x, *w;
    int64_t n_row, n;
    float eps;
    float *y;
} rms_ctx;

static void rms_row(const float *x, const float *w, int64_t n, float eps, float *y) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)(x[i] * x[i]);
    const float s = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    if (w)
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] * s * w[i];
    else
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] * s;
}

static void rms_run(void *vctx, int ith, int nth) {
    rms_ctx *r = vctx;
    int64_t a, b;
    split(r->n_row, ith, nth, &a, &b);
    for (int64_t row = a; row < b; row++)
        rms_row(r->x + row * r->n, r->w, r->n, r->eps, r->y + row * r->n);
}

static void cpu_rmsnorm(kn_backend *be, const float *x, const float *w, int64_t n_row, int64_t n, float eps,
                        float *y) {
    rms_ctx r = {x, w, n_row, n, eps, y};
    run((kn_cpu *)be, rms_run, &r, n_row * n);
}

/* ---- add_norm: a row per thread at a time; a post-normed r goes through the
 * thread's dequantization row (no op runs meanwhile) ---- */

typedef struct {
    kn_cpu *c;
    float *x;
    const float *r, *r_w, *w;
    int64_t n_row, n;
    float eps;
    float *y;
} add_norm_ctx;

static void add_norm_run(void *vctx, int ith, int nth) {
    add_norm_ctx *a = vctx;
    int64_t r0, r1;
    split(a->n_row, ith, nth, &r0, &r1);
    float *t = a->c->deq + (size_t)ith * a->c->deq_cap;
    for (int64_t row = r0; row < r1; row++) {
        float *x = a->x + row * a->n;
        const float *r = a->r + row * a->n;
        if (a->r_w) {
            rms_row(r, a->r_w, a->n, a->eps, t);
            r = t;
        }
        for (int64_t i = 0; i < a->n; i++)
            x[i] = x[i] + r[i];
        if (a->y)
            rms_row(x, a->w, a->n, a->eps, a->y + row * a->n);
    }
}

static void cpu_add_norm(kn_backend *be, float *x, const float *r, const float *r_w, const float *w, int64_t n_row,
                         int64_t n, float eps, float *y) {
    kn_cpu *c = (kn_cpu *)be;
    if (r_w && grow_deq(c, (size_t)n) < 0) {
        for (int64_t i = 0; i < n_row * n; i++) // loud, like a matmul that cannot run
            x[i] = NAN;
        return;
    }
    add_norm_ctx a = {c, x, r, r_w, w, n_row, n, eps, y};
    run(c, add_norm_run, &a, n_row * n * 4);
}

/* ---- rope ---- */

static void rope_run(void *vctx, int ith, int nth) {
    const kn_rope_args *r = vctx;
    float cs[KN_CPU_MAX_HEAD_DIM / 2], sn[KN_CPU_MAX_HEAD_DIM / 2];
    const int half = r->n_rot / 2;
    int64_t a, b;
    split(r->n_tok, ith, nth, &a, &b);
    for (int64_t t = a; t < b; t++) {
        for (int i = 0; i < half; i++) {
            // NOTE: angles in double; a float theta loses ~1e-4 rad at positions ~4k.
            double th = (double)r->pos[t] * r->freq_scale * pow(r->base, -2.0 * i / r->n_rot);
            if (r->freq_factors)
                th /= r->freq_factors[i];
            cs[i] = (float)cos(th);
            sn[i] = (float)sin(th);
        }
        for (int h = 0; h < r->n_head + r->n_kv_head; h++) { // q's heads, then k's
            float *v = h < r->n_head ? r->q + (t * r->n_head + h) * r->head_dim
                                     : r->k + (t * r->n_kv_head + h - r->n_head) * r->head_dim;
            for (int i = 0; i < half; i++) {
                const int p = r->mode == KN_ROPE_NEOX ? i : 2 * i;
                const int q = r->mode == KN_ROPE_NEOX ? i + half : 2 * i + 1;
                const float x0 = v[p], x1 = v[q];
                v[p] = x0 * cs[i] - x1 * sn[i];
                v[q] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
}

static void cpu_rope(kn_backend *be, const kn_rope_args *a) {
    if (a->n_rot > KN_CPU_MAX_HEAD_DIM || a->n_rot > a->head_dim)
        return; // unsupported shape; the model loader rejects it first
    if (a->q_norm)
        cpu_rmsnorm(be, a->q, a->q_norm, a->n_tok * a->n_head, a->head_dim, a->eps, a->q);
    if (a->k_norm)
        cpu_rmsnorm(be, a->k, a->k_norm, a->n_tok * a->n_kv_head, a->head_dim, a->eps, a->k);
    run((kn_cpu *)be, rope_run, (void *)a, a->n_tok * (a->n_head + a->n_kv_head) * a->head_dim * 4);
}

/* ---- elementwise ---- */

typedef struct {
    const float *a, *b;
    int64_t n, n_row;
    int act;
    kn_cpu *c;
    float *y;
} ew_ctx;

static void glu_run(void *vctx, int ith, int nth) {
    ew_ctx *e = vctx;
    int64_t a, b;
    split(e->n, ith, nth, &a, &b);
    if (e->act == 0) {
        for (int64_t i = a; i < b; i++)
            e->y[i] = kn_silu(e->a[i]) * e->b[i];
    } else {
        e->c->dt.geglu(e->a + a, e->b + a, b - a, e->y + a);
    }
}

static void cpu_glu(kn_backend *be, const float *g, const float *u, int64_t n, int act, float *y) {
    ew_ctx e = {.a = g, .b = u, .n = n, .act = act, .c = (kn_cpu *)be, .y = y};
    run((kn_cpu *)be, glu_run, &e, n * 8);
}

/* ---- paged KV ---- */

static void cpu_kv_store(kn_backend *be, void *k_cache, void *v_cache, kn_type kv_type, const float *k,
                         const float *v, const int32_t *slots, int64_t n_tok, int64_t row, int head_dim) {
    kn_cpu *c = (kn_cpu *)be;
    if (kv_type == KN_E4M3) { // the FP8 cache is a GPU format; on CPU the reference runs it
        kn_ref_kv_store(k_cache, v_cache, kv_type, k, v, slots, n_tok, row, head_dim);
        return;
    }
    for (int64_t t = 0; t < n_tok; t++) {
        if (slots[t] < 0)
            continue;
        const size_t off = (size_t)slots[t] * (size_t)row;
        if (kv_type == KN_F16) {
            c->dt.to_f16(k + t * row, (uint16_t *)k_cache + off, row);
            c->dt.to_f16(v + t * row, (uint16_t *)v_cache + off, row);
        } else if (kv_type == KN_BF16) { // scalar: a store is one row per token, attention reads the context
            for (int64_t i = 0; i < row; i++) {
                ((uint16_t *)k_cache)[off + i] = kn_f32_to_bf16(k[t * row + i]);
                ((uint16_t *)v_cache)[off + i] = kn_f32_to_bf16(v[t * row + i]);
            }
        } else {
            memcpy((float *)k_cache + off, k + t * row, (size_t)row * sizeof(float));
            memcpy((float *)v_cache + off, v + t * row, (size_t)row * sizeof(float));
        }
    }
}

typedef struct {
    kn_cpu *c;
    const kn_attn_args *a;
    int hchunk; // query heads of one KV group handled per work item (<= KN_KV_NQ)
    int n_hc;   // chunks per KV group
} attn_ctx;

#define KN_ATT_TILE 64 // positions per softmax tile

/* One work item = (token, KV head, chunk of that KV head's query heads): each
 * cached K/V row is read (and converted) once for all heads of the chunk. The
 * positions go in tiles: scores of the tile, then a per-head running max/sum
 * (flash-attention style: acc rescaled once per tile when the max grows), then
 * one weighted sum of the tile's V rows with the accumulators in registers. */
static void attn_run(void *vctx, int ith, int nth) {
    const attn_ctx *x = vctx;
    const kn_attn_args *a = x->a;
    const kn_dot_table *dt = &x->c->dt;
    const int hd = a->head_dim, group = a->n_head / a->n_kv_head;
    const size_t esz = kn_type_block_bytes(a->kv_type); // F32, F16, BF16: one element per block
    const size_t row = (size_t)a->n_kv_head * hd;
    float acc[KN_KV_NQ * KN_CPU_MAX_HEAD_DIM];
    float sc[KN_KV_NQ * KN_ATT_TILE], m[KN_KV_NQ], l[KN_KV_NQ], s[KN_KV_NQ];
    const void *vr[KN_ATT_TILE];
    int64_t p0, p1;
    split((int64_t)a->n_tok * a->n_kv_head * x->n_hc, ith, nth, &p0, &p1);
    for (int64_t p = p0; p < p1; p++) {
        const int t = (int)(p / ((int64_t)a->n_kv_head * x->n_hc));
        const int kvh = (int)(p / x->n_hc % a->n_kv_head), hc = (int)(p % x->n_hc);
        const int h0 = kvh * group + hc * x->hchunk;
        const int nq = group - hc * x->hchunk < x->hchunk ? group - hc * x->hchunk : x->hchunk;
        const int pos = a->tok_pos[t];
        const int32_t *bt = a->block_tables + (size_t)a->tok_seq[t] * a->max_blocks;
        const float *q = a->q + ((size_t)t * a->n_head + h0) * hd;
        float *out = a->out + ((size_t)t * a->n_head + h0) * hd;
        int start = a->window > 0 ? pos - a->window + 1 : 0;
        if (start < 0)
            start = 0;
        for (int g = 0; g < nq; g++) {
            m[g] = -INFINITY;
            l[g] = 0.0f;
        }
        memset(acc, 0, (size_t)nq * hd * sizeof(float));
        for (int j0 = start; j0 <= pos; j0 += KN_ATT_TILE) {
            const int nj = pos - j0 + 1 < KN_ATT_TILE ? pos - j0 + 1 : KN_ATT_TILE;
            for (int jj = 0; jj < nj; jj++) {
                const int j = j0 + jj;
                const size_t idx =
                    ((size_t)bt[j / a->block_size] * a->block_size + j % a->block_size) * row + (size_t)kvh * hd;
                vr[jj] = (const uint8_t *)a->v_cache + idx * esz;
                dt->dot_kv_n(q, nq, (const uint8_t *)a->k_cache + idx * esz, a->kv_type, hd, s);
                for (int g = 0; g < nq; g++) {
                    float sg = s[g] * a->scale;
                    if (a->softcap > 0.0f)
                        sg = a->softcap * tanhf(sg / a->softcap);
                    sc[g * KN_ATT_TILE + jj] = sg;
                }
            }
            for (int g = 0; g < nq; g++) {
                float *sg = sc + g * KN_ATT_TILE;
                float mt = m[g];
                for (int jj = 0; jj < nj; jj++)
                    mt = sg[jj] > mt ? sg[jj] : mt;
                if (mt > m[g]) { // rescale what came before (nothing on the first tile)
                    const float r = expf(m[g] - mt);
                    l[g] *= r;
                    for (int i = 0; i < hd; i++)
                        acc[(size_t)g * hd + i] *= r;
                    m[g] = mt;
                }
                for (int jj = 0; jj < nj; jj++) {
                    sg[jj] = expf(sg[jj] - mt);
                    l[g] += sg[jj];
                }
            }
            dt->wsum_kv(acc, nq, sc, KN_ATT_TILE, vr, nj, a->kv_type, hd);
        }
        for (int g = 0; g < nq; g++) {
            const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;
            for (int i = 0; i < hd; i++)
                out[(size_t)g * hd + i] = acc[(size_t)g * hd + i] * inv;
        }
    }
}

static void cpu_attention(kn_backend *be, const kn_attn_args *a) {
    kn_cpu *c = (kn_cpu *)be;
    if (a->kv_type == KN_E4M3) {
        kn_ref_attention(a);
        return;
    }
    if (a->head_dim > KN_CPU_MAX_HEAD_DIM || a->n_kv_head <= 0 || a->n_head % a->n_kv_head) {
        for (size_t i = 0; i < (size_t)a->n_tok * a->n_head * a->head_dim; i++)
            a->out[i] = NAN;
        return;
    }
    const int group = a->n_head / a->n_kv_head;
    const int64_t items = (int64_t)a->n_tok * a->n_kv_head;
    // whole groups per item unless that leaves threads idle (single-token decode)
    int hchunk = group < KN_KV_NQ ? group : KN_KV_NQ;
    while (hchunk > 1 && items * ((group + hchunk - 1) / hchunk) < c->base.n_threads)
        hchunk = (hchunk + 1) / 2;
    attn_ctx x = {c, a, hchunk, (group + hchunk - 1) / hchunk};
    // work estimate: pairs * head_dim * an average context guess
    run(c, attn_run, &x, (int64_t)a->n_tok * a->n_head * a->head_dim * 64);
}

/* ---- lifetime ---- */

static void cpu_destroy(kn_backend *be) {
    kn_cpu *c = (kn_cpu *)be;
    if (!c)
        return;
    kn_pool_destroy(c->pool);
    free(c->deq);
    free(c->act);
    free(c->smp);
    free(c);
}

static void cpu_softcap(kn_backend *be, float *x, int64_t n, float cap) {
    kn_ref_softcap(x, n, cap);
}

/* ---- sample: a row per thread at a time (kn_cpu_sample.c) ---- */

typedef struct {
    kn_cpu *c;
    float *x;
    int64_t n_row, n;
    const kn_sample_params *p;
    const int32_t *adj_off, *adj_id;
    float *adj_val;
    const uint32_t *mask;
    kn_sample_out *out;
    size_t scratch;
} smp_ctx;

static void smp_run(void *vctx, int ith, int nth) {
    smp_ctx *s = vctx;
    int64_t r0, r1;
    split(s->n_row, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int32_t a0 = s->adj_off ? s->adj_off[r] : 0, na = s->adj_off ? s->adj_off[r + 1] - a0 : 0;
        const kn_sample_params *p = &s->p[r];
        const uint32_t *mw = p->mask >= 0 ? s->mask + (size_t)p->mask * (size_t)((s->n + 31) / 32) : NULL;
        kn_cpu_sample_row(s->x + r * s->n, s->n, p, na ? s->adj_id + a0 : NULL, na ? s->adj_val + a0 : NULL, na,
                          mw, &s->out[r], s->c->smp + (size_t)ith * s->scratch, s->c->simd > 0);
    }
}

static void cpu_sample(kn_backend *be, float *x, int64_t n_row, int64_t n, const kn_sample_params *p,
                       const int32_t *adj_off, const int32_t *adj_id, float *adj_val, const uint32_t *mask,
                       kn_sample_out *out) {
    kn_cpu *c = (kn_cpu *)be;
    const size_t each = (kn_cpu_sample_scratch_bytes(n) + 63) & ~(size_t)63;
    if (each * (size_t)c->base.n_threads > c->smp_cap) {
        uint8_t *q = aligned_buf(each * (size_t)c->base.n_threads);
        if (!q) {
            for (int64_t r = 0; r < n_row; r++)
                out[r].id = -1; // the caller reports it
            return;
        }
        free(c->smp);
        c->smp = q;
        c->smp_cap = each * (size_t)c->base.n_threads;
    }
    smp_ctx s = {c, x, n_row, n, p, adj_off, adj_id, adj_val, mask, out, each};
    if (n_row > 1)
        run(c, smp_run, &s, n_row * n);
    else
        smp_run(&s, 0, 1);
}

static const kn_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .matmul = cpu_matmul,
    .get_rows = cpu_get_rows,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .glu = cpu_glu,
    .add_norm = cpu_add_norm,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .softcap = cpu_softcap,
    .sample = cpu_sample,
};

kn_backend *kn_cpu_create_ex(int n_threads, int flags) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    kn_cpu *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->base.ops = &cpu_ops;
    c->base.n_threads = n_threads;
    kn_dot_table_scalar(&c->dt);
    if (!(flags & KN_CPU_NO_SIMD) && kn_dot_table_avx2(&c->dt) == 0) {
        c->simd = 1;
        if (!(flags & KN_CPU_NO_VNNI) && kn_dot_table_vnni(&c->dt) == 0)
            c->simd = 2;
    }
    c->pool = kn_pool_create(n_threads);
    if (!c->pool || grow_act(c, KN_CPU_MIN_ACT) < 0)
        goto fail;
    return &c->base;
fail:
    cpu_destroy(&c->base);
    return NULL;
}

kn_backend *kn_cpu_create(int n_threads) {
    return kn_cpu_create_ex(n_threads, 0);
}

int kn_cpu_reserve(kn_backend *be, int64_t max_tok, int64_t max_n_in) {
    kn_cpu *c = (kn_cpu *)be;
    // split Q8_0 rows are the largest quantized activation rows (36 bytes per 32).
    size_t need = (size_t)max_tok * KN_DOTN_Q8_ROW(max_n_in + 31);
    size_t needk = (size_t)max_tok * (size_t)((max_n_in + 255) / 256) * sizeof(kn_block_q8_K);
    if (grow_act(c, need > needk ? need : needk) < 0)
        return -ENOMEM;
    return grow_deq(c, (size_t)max_n_in);
}

int kn_cpu_simd(const kn_backend *be) {
    return ((const kn_cpu *)be)->simd;
}
