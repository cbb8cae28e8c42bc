/* kn_cpu_dot_scalar: the portable dot kernels (see kn_cpu_dot.h). Each follows
 * the integer algorithm of the AVX2 kernels: int32 sums per (sub-)block, one
 * float multiply-add per block. */
#include <string.h>

#include "kernels/cpu/kn_cpu_dot.h"
#include "kernels/kn_act.h"
#include "kernels/kn_half.h"
#include "kernels/kn_quant.h"

static float dot_q4_0(const void *vw, const void *vx, int64_t n) {
    const kn_block_q4_0 *w = vw;
    const kn_block_q8_0 *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK; b++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += ((w[b].qs[j] & 0xF) - 8) * x[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
        s += (float)sumi * (kn_f16_to_f32(w[b].d) * kn_f16_to_f32(x[b].d));
    }
    return s;
}

static float dot_q4_1(const void *vw, const void *vx, int64_t n) {
    const kn_block_q4_1 *w = vw;
    const kn_block_q8_0 *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK; b++) {
        int sumi = 0, sumy = 0;
        for (int j = 0; j < 16; j++) {
            sumi += (w[b].qs[j] & 0xF) * x[b].qs[j] + (w[b].qs[j] >> 4) * x[b].qs[j + 16];
            sumy += x[b].qs[j] + x[b].qs[j + 16];
        }
        const float dy = kn_f16_to_f32(x[b].d);
        s += (float)sumi * (kn_f16_to_f32(w[b].d) * dy) + (float)sumy * (kn_f16_to_f32(w[b].m) * dy);
    }
    return s;
}

static float dot_q5_0(const void *vw, const void *vx, int64_t n) {
    const kn_block_q5_0 *w = vw;
    const kn_block_q8_0 *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = ((w[b].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
            int q1 = ((w[b].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += q0 * x[b].qs[j] + q1 * x[b].qs[j + 16];
        }
        s += (float)sumi * (kn_f16_to_f32(w[b].d) * kn_f16_to_f32(x[b].d));
    }
    return s;
}

static float dot_q5_1(const void *vw, const void *vx, int64_t n) {
    const kn_block_q5_1 *w = vw;
    const kn_block_q8_0 *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int sumi = 0, sumy = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (w[b].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            int q1 = (w[b].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            sumi += q0 * x[b].qs[j] + q1 * x[b].qs[j + 16];
            sumy += x[b].qs[j] + x[b].qs[j + 16];
        }
        const float dy = kn_f16_to_f32(x[b].d);
        s += (float)sumi * (kn_f16_to_f32(w[b].d) * dy) + (float)sumy * (kn_f16_to_f32(w[b].m) * dy);
    }
    return s;
}

static float dot_q8_0(const void *vw, const void *vx, int64_t n) {
    const kn_block_q8_0 *w = vw;
    const kn_block_q8_0 *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK; b++) {
        int sumi = 0;
        for (int j = 0; j < 32; j++)
            sumi += w[b].qs[j] * x[b].qs[j];
        s += (float)sumi * (kn_f16_to_f32(w[b].d) * kn_f16_to_f32(x[b].d));
    }
    return s;
}

/* Q4_K/Q5_K share the scale/min layout; hbits = NULL for Q4_K. */
static float dot_k45(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, float dw, float dminw,
                     const kn_block_q8_K *x) {
    int sumi = 0, summ = 0;
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        kn_scale_min_k4(j, scales, &sc, &m);
        summ += m * (x->bsums[2 * j] + x->bsums[2 * j + 1]);
        const uint8_t *q = qs + 32 * (j / 2);
        const int shift = 4 * (j & 1);
        int s = 0;
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 0xF;
            if (qh)
                v |= ((qh[l] >> j) & 1) << 4;
            s += v * x->qs[32 * j + l];
        }
        sumi += sc * s;
    }
    return x->d * (dw * (float)sumi - dminw * (float)summ);
}

static float dot_q4_K(const void *vw, const void *vx, int64_t n) {
    const kn_block_q4_K *w = vw;
    const kn_block_q8_K *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK_K; b++)
        s += dot_k45(w[b].scales, w[b].qs, NULL, kn_f16_to_f32(w[b].d), kn_f16_to_f32(w[b].dmin), &x[b]);
    return s;
}

static float dot_q5_K(const void *vw, const void *vx, int64_t n) {
    const kn_block_q5_K *w = vw;
    const kn_block_q8_K *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK_K; b++)
        s += dot_k45(w[b].scales, w[b].qs, w[b].qh, kn_f16_to_f32(w[b].d), kn_f16_to_f32(w[b].dmin), &x[b]);
    return s;
}

static float dot_q6_K(const void *vw, const void *vx, int64_t n) {
    const kn_block_q6_K *w = vw;
    const kn_block_q8_K *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK_K; b++) {
        const uint8_t *ql = w[b].ql, *qh = w[b].qh;
        const int8_t *sc = w[b].scales, *y = x[b].qs;
        int sumi = 0;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int g = 0; g < 8; g++) { // 8 groups of 16 elements
                const int quarter = g / 2, l0 = 16 * (g & 1);
                int sg = 0;
                for (int l = l0; l < l0 + 16; l++) {
                    const uint8_t lo = quarter & 1 ? ql[l + 32] : ql[l];
                    int q = ((quarter < 2 ? lo & 0xF : lo >> 4) | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
                    sg += q * y[32 * quarter + l];
                }
                sumi += sc[2 * quarter + (g & 1)] * sg;
            }
        }
        s += kn_f16_to_f32(w[b].d) * x[b].d * (float)sumi;
    }
    return s;
}

static float dot_f32w(const void *w, const void *x, int64_t n) {
    const float *a = w, *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static float dot_f16w(const void *w, const void *x, int64_t n) {
    const uint16_t *a = w;
    const float *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += kn_f16_to_f32(a[i]) * b[i];
    return s;
}

static float dot_bf16w(const void *w, const void *x, int64_t n) {
    const uint16_t *a = w;
    const float *b = x;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += kn_bf16_to_f32(a[i]) * b[i];
    return s;
}

static float dot_f32(const float *a, const float *b, int64_t n) {
    return dot_f32w(a, b, n);
}

/* Element i of a KV cache row in kv_type (F16, BF16 or F32) as f32. */
static inline float kv_at(const void *p, int kv_type, int64_t i) {
    if (kv_type == KN_F16)
        return kn_f16_to_f32(((const uint16_t *)p)[i]);
    if (kv_type == KN_BF16)
        return kn_bf16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

static float dot_kv(const float *q, const void *k, int kv_type, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += kv_at(k, kv_type, i) * q[i];
    return s;
}

static void dot_kv_n(const float *q, int nq, const void *k, int kv_type, int64_t n, float *out) {
    for (int g = 0; g < nq; g++)
        out[g] = dot_kv(q + g * n, k, kv_type, n);
}

static void wsum_kv(float *acc, int nq, const float *w, size_t ws, const void *const *v, int nv, int kv_type,
                    int64_t n) {
    for (int g = 0; g < nq; g++)
        for (int64_t i = 0; i < n; i++) {
            float a = acc[g * n + i];
            for (int j = 0; j < nv; j++)
                a += w[g * ws + j] * kv_at(v[j], kv_type, i);
            acc[g * n + i] = a;
        }
}

static void geglu(const float *g, const float *u, int64_t n, float *y) {
    for (int64_t i = 0; i < n; i++)
        y[i] = kn_gelu(g[i]) * u[i];
}

static void to_f16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = kn_f32_to_f16(x[i]);
}

void kn_dot_table_scalar(kn_dot_table *t) {
    memset(t, 0, sizeof(*t));
    t->dot[KN_Q4_0] = dot_q4_0;
    t->dot[KN_Q4_1] = dot_q4_1;
    t->dot[KN_Q5_0] = dot_q5_0;
    t->dot[KN_Q5_1] = dot_q5_1;
    t->dot[KN_Q8_0] = dot_q8_0;
    t->dot[KN_Q4_K] = dot_q4_K;
    t->dot[KN_Q5_K] = dot_q5_K;
    t->dot[KN_Q6_K] = dot_q6_K;
    t->dot[KN_F32] = dot_f32w;
    t->dot[KN_F16] = dot_f16w;
    t->dot[KN_BF16] = dot_bf16w;
    t->dot_f32 = dot_f32;
    t->dot_kv_n = dot_kv_n;
    t->wsum_kv = wsum_kv;
    t->geglu = geglu;
    t->to_f16 = to_f16;
}
