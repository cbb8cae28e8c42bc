/* kn_cpu_dot_avx2: AVX2/FMA/F16C dot kernels (see kn_cpu_dot.h).
 *
 * Compiled for avx2,fma,f16c via the target pragma below and installed only when
 * __builtin_cpu_supports reports all three. The int8 products use the usual
 * sign trick: maddubs(|w|, sign(x, w)) gives exact pairwise int16 sums (no
 * saturation: |w| <= 128 and |x| <= 127 for our quantized activations). */
#if defined(__x86_64__) || defined(__i386__)

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/kn_cpu_dot.h"
#include "kernels/kn_act.h"
#include "kernels/kn_half.h"
#include "kernels/kn_quant.h"

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static inline float h2f(uint16_t h) {
    return _cvtsh_ss(h);
}

/* 8 int32 pair-sums of signed a * signed b (32 lanes each). */
static inline __m256i dot_i8(__m256i a, __m256i b) {
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* 16 nibbles per byte -> 32 bytes: elements 0..15 low nibbles, 16..31 high. */
static inline __m256i nibbles32(const uint8_t *q) {
    __m128i v = _mm_loadu_si128((const __m128i *)q);
    __m128i m = _mm_set1_epi8(0xF);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

/* The 32 bits of qh -> 0x10 in byte j where bit j is set. */
static inline __m256i hbits32(const uint8_t *qh) {
    uint32_t b;
    memcpy(&b, qh, 4);
    const __m256i sel = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)b), sel);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

static float dot_q8_0(const void *vw, const void *vx, int64_t n) {
    const kn_block_q8_0 *w = vw;
    const kn_block_q8_0 *x = vx;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / KN_QK; b++) {
        __m256i qw = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i qx = _mm256_loadu_si256((const __m256i *)x[b].qs);
        __m256 d = _mm256_set1_ps(h2f(w[b].d) * h2f(x[b].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(qw, qx)), acc);
    }
    return hsum8(acc);
}

static float dot_q4_0(const void *vw, const void *vx, int64_t n) {
    const kn_block_q4_0 *w = vw;
    const kn_block_q8_0 *x = vx;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / KN_QK; b++) {
        __m256i qw = _mm256_sub_epi8(nibbles32(w[b].qs), _mm256_set1_epi8(8));
        __m256i qx = _mm256_loadu_si256((const __m256i *)x[b].qs);
        __m256 d = _mm256_set1_ps(h2f(w[b].d) * h2f(x[b].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(qw, qx)), acc);
    }
    return hsum8(acc);
}

static float dot_q5_0(const void *vw, const void *vx, int64_t n) {
    const kn_block_q5_0 *w = vw;
    const kn_block_q8_0 *x = vx;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / KN_QK; b++) {
        __m256i qw = _mm256_or_si256(nibbles32(w[b].qs), hbits32(w[b].qh));
        qw = _mm256_sub_epi8(qw, _mm256_set1_epi8(16));
        __m256i qx = _mm256_loadu_si256((const __m256i *)x[b].qs);
        __m256 d = _mm256_set1_ps(h2f(w[b].d) * h2f(x[b].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(qw, qx)), acc);
    }
    return hsum8(acc);
}

/* Unsigned weights (q4_1, q5_1): sum q*x and sum x in one pass. */
static inline void dot_u8(__m256i qw, __m256i qx, __m256i *sq, __m256i *sx) {
    const __m256i one16 = _mm256_set1_epi16(1);
    *sq = _mm256_madd_epi16(_mm256_maddubs_epi16(qw, qx), one16);
    *sx = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), qx), one16);
}

static float dot_q4_1(const void *vw, const void *vx, int64_t n) {
    const kn_block_q4_1 *w = vw;
    const kn_block_q8_0 *x = vx;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / KN_QK; b++) {
        __m256i sq, sx;
        dot_u8(nibbles32(w[b].qs), _mm256_loadu_si256((const __m256i *)x[b].qs), &sq, &sx);
        const float dy = h2f(x[b].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].d) * dy), _mm256_cvtepi32_ps(sq), acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].m) * dy), _mm256_cvtepi32_ps(sx), acc);
    }
    return hsum8(acc);
}

static float dot_q5_1(const void *vw, const void *vx, int64_t n) {
    const kn_block_q5_1 *w = vw;
    const kn_block_q8_0 *x = vx;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / KN_QK; b++) {
        __m256i sq, sx;
        __m256i qw = _mm256_or_si256(nibbles32(w[b].qs), hbits32(w[b].qh));
        dot_u8(qw, _mm256_loadu_si256((const __m256i *)x[b].qs), &sq, &sx);
        const float dy = h2f(x[b].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].d) * dy), _mm256_cvtepi32_ps(sq), acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].m) * dy), _mm256_cvtepi32_ps(sx), acc);
    }
    return hsum8(acc);
}

/* Q4_K/Q5_K super-block: qh = NULL for Q4_K. */
static inline float dot_k45(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, float dw, float dminw,
                            const kn_block_q8_K *x) {
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; j++)
        kn_scale_min_k4(j, scales, &sc[j], &mn[j]);
    int summ = 0;
    for (int j = 0; j < 8; j++)
        summ += mn[j] * (x->bsums[2 * j] + x->bsums[2 * j + 1]);
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256i hb = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
        __m256i lo = _mm256_and_si256(q, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (qh) {
            const __m256i one = _mm256_set1_epi8(1);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one), 4));
            hi = _mm256_or_si256(hi,
                                 _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one), 4));
        }
        __m256i y0 = _mm256_loadu_si256((const __m256i *)(x->qs + 64 * j));
        __m256i y1 = _mm256_loadu_si256((const __m256i *)(x->qs + 64 * j + 32));
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), _mm256_set1_epi16(sc[2 * j]));
        __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), _mm256_set1_epi16(sc[2 * j + 1]));
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
    }
    return x->d * (dw * (float)hsum8i(sumi) - dminw * (float)summ);
}

static float dot_q4_K(const void *vw, const void *vx, int64_t n) {
    const kn_block_q4_K *w = vw;
    const kn_block_q8_K *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK_K; b++)
        s += dot_k45(w[b].scales, w[b].qs, NULL, h2f(w[b].d), h2f(w[b].dmin), &x[b]);
    return s;
}

static float dot_q5_K(const void *vw, const void *vx, int64_t n) {
    const kn_block_q5_K *w = vw;
    const kn_block_q8_K *x = vx;
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK_K; b++)
        s += dot_k45(w[b].scales, w[b].qs, w[b].qh, h2f(w[b].d), h2f(w[b].dmin), &x[b]);
    return s;
}

static float dot_q6_K(const void *vw, const void *vx, int64_t n) {
    const kn_block_q6_K *w = vw;
    const kn_block_q8_K *x = vx;
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(3);
    float s = 0.0f;
    for (int64_t b = 0; b < n / KN_QK_K; b++) {
        const uint8_t *ql = w[b].ql, *qh = w[b].qh;
        const int8_t *sc = w[b].scales, *y = x[b].qs;
        __m256i sumi = _mm256_setzero_si256();
        int corr = 0; // sum over groups of sc * 32 * sum(y): removes the +32 offset
        for (int g = 0; g < 16; g++)
            corr += sc[g] * x[b].bsums[g];
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i hh = _mm256_loadu_si256((const __m256i *)qh);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hh, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hh, 6), m3), 4));
            for (int k = 0; k < 4; k++) {
                __m256i yk = _mm256_loadu_si256((const __m256i *)(y + 32 * k));
                __m256i p = _mm256_maddubs_epi16(q[k], yk); // 0..63 * int8: no saturation
                __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
            }
        }
        s += h2f(w[b].d) * x[b].d * (float)(hsum8i(sumi) - 32 * corr);
    }
    return s;
}

static float dot_f32(const float *a, const float *b, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static float dot_f32w(const void *w, const void *x, int64_t n) {
    return dot_f32(w, x, n);
}

static inline __m256 load_h8(const uint16_t *h) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

static inline __m256 load_bf8(const uint16_t *h) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)h));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static float dot_f16w(const void *w, const void *x, int64_t n) {
    const uint16_t *a = w;
    const float *b = x;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(load_h8(a + i), _mm256_loadu_ps(b + i), a0);
        a1 = _mm256_fmadd_ps(load_h8(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++)
        s += h2f(a[i]) * b[i];
    return s;
}

static float dot_bf16w(const void *w, const void *x, int64_t n) {
    const uint16_t *a = w;
    const float *b = x;
    __m256 a0 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(load_bf8(a + i), _mm256_loadu_ps(b + i), a0);
    float s = hsum8(a0);
    for (; i < n; i++)
        s += kn_bf16_to_f32(a[i]) * b[i];
    return s;
}

/* 8 elements of a KV cache row in kv_type (F16, BF16 or F32) from element i, as
 * f32; kv_at is one element. The kernels below take kv_type as a constant of an
 * always-inlined body, so each type gets its own branch-free loop. */
static inline __attribute__((always_inline)) __m256 load_kv8(const void *p, int kv_type, int64_t i) {
    if (kv_type == KN_F16)
        return load_h8((const uint16_t *)p + i);
    if (kv_type == KN_BF16)
        return load_bf8((const uint16_t *)p + i);
    return _mm256_loadu_ps((const float *)p + i);
}

static inline __attribute__((always_inline)) float kv_at(const void *p, int kv_type, int64_t i) {
    if (kv_type == KN_F16)
        return h2f(((const uint16_t *)p)[i]);
    if (kv_type == KN_BF16)
        return kn_bf16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

/* Runs `call` with T a constant equal to kv_type (KN_F16, KN_BF16, else KN_F32). */
#define KV_DISPATCH(kv_type, call)                                                                             \
    do {                                                                                                       \
        switch (kv_type) {                                                                                     \
        case KN_F16: { const int T = KN_F16; call; } break;                                                    \
        case KN_BF16: { const int T = KN_BF16; call; } break;                                                  \
        default: { const int T = KN_F32; call; } break;                                                        \
        }                                                                                                      \
    } while (0)

/* dot_kv_n: the lane accumulation of dot_f16w / dot_f32 (two
 * accumulators over 16-element steps, scalar tail), per head; nq and kv_type
 * constant in the always-inlined body so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void dot_kv_t(const float *q, const int nq, const void *k,
                                                           const int kv_type, int64_t n, float *out) {
    __m256 a0[4], a1[4];
    _Pragma("GCC unroll 4") for (int g = 0; g < nq; g++) a0[g] = a1[g] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 k0 = load_kv8(k, kv_type, i), k1 = load_kv8(k, kv_type, i + 8);
        _Pragma("GCC unroll 4") for (int g = 0; g < nq; g++) {
            a0[g] = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + g * n + i), a0[g]);
            a1[g] = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + g * n + i + 8), a1[g]);
        }
    }
    _Pragma("GCC unroll 4") for (int g = 0; g < nq; g++) {
        float s = hsum8(_mm256_add_ps(a0[g], a1[g]));
        for (int64_t j = i; j < n; j++)
            s += kv_at(k, kv_type, j) * q[g * n + j];
        out[g] = s;
    }
}

static inline __attribute__((always_inline)) void dot_kv_nt(const float *q, int nq, const void *k,
                                                            const int kv_type, int64_t n, float *out) {
    for (; nq > 0; nq -= 4, q += 4 * n, out += 4) {
        switch (nq) {
        case 1: dot_kv_t(q, 1, k, kv_type, n, out); break;
        case 2: dot_kv_t(q, 2, k, kv_type, n, out); break;
        case 3: dot_kv_t(q, 3, k, kv_type, n, out); break;
        default: dot_kv_t(q, 4, k, kv_type, n, out); break;
        }
    }
}

static void dot_kv_n(const float *q, int nq, const void *k, int kv_type, int64_t n, float *out) {
    KV_DISPATCH(kv_type, dot_kv_nt(q, nq, k, T, n, out));
}

/* wsum_kv for nq heads: 16 elements at a time, the accumulators of all heads in
 * registers across the rows; nq and kv_type constant as in dot_kv_t. */
static inline __attribute__((always_inline)) void wsum_kv_t(float *acc, const int nq, const float *w, size_t ws,
                                                            const void *const *v, int nv, const int kv_type,
                                                            int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a0[4], a1[4];
        _Pragma("GCC unroll 4") for (int g = 0; g < nq; g++) {
            a0[g] = _mm256_loadu_ps(acc + g * n + i);
            a1[g] = _mm256_loadu_ps(acc + g * n + i + 8);
        }
        for (int j = 0; j < nv; j++) {
            const __m256 v0 = load_kv8(v[j], kv_type, i), v1 = load_kv8(v[j], kv_type, i + 8);
            _Pragma("GCC unroll 4") for (int g = 0; g < nq; g++) {
                const __m256 wj = _mm256_broadcast_ss(w + g * ws + j);
                a0[g] = _mm256_fmadd_ps(wj, v0, a0[g]);
                a1[g] = _mm256_fmadd_ps(wj, v1, a1[g]);
            }
        }
        _Pragma("GCC unroll 4") for (int g = 0; g < nq; g++) {
            _mm256_storeu_ps(acc + g * n + i, a0[g]);
            _mm256_storeu_ps(acc + g * n + i + 8, a1[g]);
        }
    }
    for (; i < n; i++)
        for (int g = 0; g < nq; g++)
            for (int j = 0; j < nv; j++)
                acc[g * n + i] += w[g * ws + j] * kv_at(v[j], kv_type, i);
}

static inline __attribute__((always_inline)) void wsum_kv_nt(float *acc, int nq, const float *w, size_t ws,
                                                             const void *const *v, int nv, const int kv_type,
                                                             int64_t n) {
    for (; nq > 0; nq -= 4, acc += 4 * n, w += 4 * ws) {
        switch (nq) {
        case 1: wsum_kv_t(acc, 1, w, ws, v, nv, kv_type, n); break;
        case 2: wsum_kv_t(acc, 2, w, ws, v, nv, kv_type, n); break;
        case 3: wsum_kv_t(acc, 3, w, ws, v, nv, kv_type, n); break;
        default: wsum_kv_t(acc, 4, w, ws, v, nv, kv_type, n); break;
        }
    }
}

static void wsum_kv(float *acc, int nq, const float *w, size_t ws, const void *const *v, int nv, int kv_type,
                    int64_t n) {
    KV_DISPATCH(kv_type, wsum_kv_nt(acc, nq, w, ws, v, nv, T, n));
}

/* kn_gelu(g) * u (tanhf has no vector form here; the FFN's GELU is a small
 * fraction of a step next to its matmuls). */
static void geglu(const float *g, const float *u, int64_t n, float *y) {
    for (int64_t i = 0; i < n; i++)
        y[i] = kn_gelu(g[i]) * u[i];
}

static void to_f16(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = kn_f32_to_f16(x[i]);
}

#define KN_MM(name) name##_avx2
#define KN_DOT_I8(a, b) _mm256_madd_epi16(_mm256_maddubs_epi16((a), (b)), _mm256_set1_epi16(1))
#include "kernels/cpu/kn_cpu_mm_x86.inc"

#pragma GCC pop_options

int kn_dot_table_avx2(kn_dot_table *t) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
        return -1;
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
    fill_avx2(t);
    return 0;
}

#else

#include "kernels/cpu/kn_cpu_dot.h"

int kn_dot_table_avx2(kn_dot_table *t) {
    return -1;
}

#endif
