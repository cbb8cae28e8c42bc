/* kn_types: the tensor type table and the scalar dequantizers.
 *
 * Layouts and formulas follow ggml (ggml-common.h, ggml-quants.c); the code is our
 * own. Every function here is pure: no allocation, no state. */
#include <math.h>
#include <string.h>

#include "kernels/kn.h"
#include "kernels/kn_half.h"
#include "kernels/kn_quant.h"

typedef struct {
    const char *name;
    int64_t block_elems;
    size_t block_bytes;
    int supported; // weights of this type can be loaded and multiplied
} kn_type_info;

static const kn_type_info kn_types[KN_TYPE_COUNT] = {
    [KN_F32] = {"f32", 1, 4, 1},
    [KN_F16] = {"f16", 1, 2, 1},
    [KN_BF16] = {"bf16", 1, 2, 1},
    [KN_Q4_0] = {"q4_0", 32, sizeof(kn_block_q4_0), 1},
    [KN_Q4_1] = {"q4_1", 32, sizeof(kn_block_q4_1), 1},
    [KN_Q5_0] = {"q5_0", 32, sizeof(kn_block_q5_0), 1},
    [KN_Q5_1] = {"q5_1", 32, sizeof(kn_block_q5_1), 1},
    [KN_Q8_0] = {"q8_0", 32, sizeof(kn_block_q8_0), 1},
    [KN_Q8_1] = {"q8_1", 32, sizeof(kn_block_q8_1), 0},
    [KN_Q2_K] = {"q2_K", 256, sizeof(kn_block_q2_K), 1},
    [KN_Q3_K] = {"q3_K", 256, sizeof(kn_block_q3_K), 1},
    [KN_Q4_K] = {"q4_K", 256, sizeof(kn_block_q4_K), 1},
    [KN_Q5_K] = {"q5_K", 256, sizeof(kn_block_q5_K), 1},
    [KN_Q6_K] = {"q6_K", 256, sizeof(kn_block_q6_K), 1},
    [KN_Q8_K] = {"q8_K", 256, sizeof(kn_block_q8_K), 0},
};

static const kn_type_info *kn_info(kn_type t) {
    if ((unsigned)t >= KN_TYPE_COUNT || !kn_types[t].name)
        return NULL;
    return &kn_types[t];
}

int kn_type_supported(kn_type t) {
    const kn_type_info *i = kn_info(t);
    return i ? i->supported : 0;
}

const char *kn_type_name(kn_type t) {
    const kn_type_info *i = kn_info(t);
    return i ? i->name : "unknown";
}

int64_t kn_type_block_elems(kn_type t) {
    const kn_type_info *i = kn_info(t);
    return i ? i->block_elems : 0;
}

size_t kn_type_block_bytes(kn_type t) {
    const kn_type_info *i = kn_info(t);
    return i ? i->block_bytes : 0;
}

size_t kn_row_bytes(kn_type t, int64_t n) {
    const kn_type_info *i = kn_info(t);
    if (!i || n < 0 || n % i->block_elems)
        return 0;
    return (size_t)(n / i->block_elems) * i->block_bytes;
}

kn_type kn_vec_dot_type(kn_type w) {
    switch (w) {
    case KN_Q4_0:
    case KN_Q4_1:
    case KN_Q5_0:
    case KN_Q5_1:
    case KN_Q8_0:
        return KN_Q8_0;
    case KN_Q4_K:
    case KN_Q5_K:
    case KN_Q6_K:
        return KN_Q8_K;
    default:
        return KN_F32;
    }
}

void kn_quantize_row_q8_0(const float *x, kn_block_q8_0 *dst, int64_t n) {
    for (int64_t b = 0; b < n / KN_QK; b++, x += KN_QK) {
        float amax = 0.0f;
        for (int j = 0; j < KN_QK; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax; // fmaxf is a libm call at -O2
        // NOTE: llama.cpp's x86 path multiplies by 127/amax (not 1/d) and rounds
        // ties to even; we do the same so the int8 codes match bit for bit.
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        dst[b].d = kn_f32_to_f16(d);
        for (int j = 0; j < KN_QK; j++)
            dst[b].qs[j] = (int8_t)rintf(x[j] * id);
    }
}

void kn_quantize_row_q8_K(const float *x, kn_block_q8_K *dst, int64_t n) {
    for (int64_t b = 0; b < n / KN_QK_K; b++, x += KN_QK_K) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < KN_QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        kn_block_q8_K *y = &dst[b];
        if (amax == 0.0f) {
            memset(y, 0, sizeof(*y));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < KN_QK_K; j++) {
            int v = (int)rintf(iscale * x[j]);
            y->qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < KN_QK_K / 16; j++) {
            int s = 0;
            for (int i = 0; i < 16; i++)
                s += y->qs[j * 16 + i];
            y->bsums[j] = (int16_t)s;
        }
        y->d = 1.0f / iscale;
    }
}

static void dq_q4_0(const kn_block_q4_0 *b, float *y) {
    const float d = kn_f16_to_f32(b->d);
    for (int j = 0; j < 16; j++) {
        y[j] = ((b->qs[j] & 0xF) - 8) * d;
        y[j + 16] = ((b->qs[j] >> 4) - 8) * d;
    }
}

static void dq_q4_1(const kn_block_q4_1 *b, float *y) {
    const float d = kn_f16_to_f32(b->d), m = kn_f16_to_f32(b->m);
    for (int j = 0; j < 16; j++) {
        y[j] = (b->qs[j] & 0xF) * d + m;
        y[j + 16] = (b->qs[j] >> 4) * d + m;
    }
}

static void dq_q5_0(const kn_block_q5_0 *b, float *y) {
    const float d = kn_f16_to_f32(b->d);
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    for (int j = 0; j < 16; j++) {
        int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
        y[j] = (((b->qs[j] & 0xF) | (h0 << 4)) - 16) * d;
        y[j + 16] = (((b->qs[j] >> 4) | (h1 << 4)) - 16) * d;
    }
}

static void dq_q5_1(const kn_block_q5_1 *b, float *y) {
    const float d = kn_f16_to_f32(b->d), m = kn_f16_to_f32(b->m);
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    for (int j = 0; j < 16; j++) {
        int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
        y[j] = ((b->qs[j] & 0xF) | (h0 << 4)) * d + m;
        y[j + 16] = ((b->qs[j] >> 4) | (h1 << 4)) * d + m;
    }
}

static void dq_q8_0(const kn_block_q8_0 *b, float *y) {
    const float d = kn_f16_to_f32(b->d);
    for (int j = 0; j < 32; j++)
        y[j] = b->qs[j] * d;
}

static void dq_q2_K(const kn_block_q2_K *b, float *y) {
    const float d = kn_f16_to_f32(b->d), dmin = kn_f16_to_f32(b->dmin);
    const uint8_t *q = b->qs;
    int is = 0;
    for (int n = 0; n < KN_QK_K; n += 128, q += 32) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                uint8_t sc = b->scales[is++];
                float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
            }
        }
    }
}

static void dq_q3_K(const kn_block_q3_K *b, float *y) {
    const float d_all = kn_f16_to_f32(b->d);
    // 16 6-bit scales: low 4 bits in scales[0..7] nibbles, high 2 bits in scales[8..11]
    int8_t sc[16];
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (b->scales[j] & 0xF) : (b->scales[j - 8] >> 4);
        int hi = (b->scales[8 + (j % 4)] >> (2 * (j / 4))) & 3;
        sc[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
    const uint8_t *q = b->qs;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < KN_QK_K; n += 128, q += 32) {
        for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
            for (int half = 0; half < 2; half++) {
                float dl = d_all * sc[is++];
                for (int l = 0; l < 16; l++) {
                    int k = l + 16 * half;
                    int v = ((q[k] >> shift) & 3) - ((b->hmask[k] & m) ? 0 : 4);
                    *y++ = dl * v;
                }
            }
        }
    }
}

static void dq_q4_K(const kn_block_q4_K *b, float *y) {
    const float d = kn_f16_to_f32(b->d), dmin = kn_f16_to_f32(b->dmin);
    const uint8_t *q = b->qs;
    for (int j = 0; j < 4; j++, q += 32) {
        uint8_t sc, m;
        kn_scale_min_k4(2 * j, b->scales, &sc, &m);
        float d1 = d * sc, m1 = dmin * m;
        kn_scale_min_k4(2 * j + 1, b->scales, &sc, &m);
        float d2 = d * sc, m2 = dmin * m;
        for (int l = 0; l < 32; l++)
            *y++ = d1 * (q[l] & 0xF) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * (q[l] >> 4) - m2;
    }
}

static void dq_q5_K(const kn_block_q5_K *b, float *y) {
    const float d = kn_f16_to_f32(b->d), dmin = kn_f16_to_f32(b->dmin);
    const uint8_t *ql = b->qs;
    for (int j = 0; j < 4; j++, ql += 32) {
        uint8_t sc, m;
        kn_scale_min_k4(2 * j, b->scales, &sc, &m);
        float d1 = d * sc, m1 = dmin * m;
        kn_scale_min_k4(2 * j + 1, b->scales, &sc, &m);
        float d2 = d * sc, m2 = dmin * m;
        uint8_t u1 = (uint8_t)(1u << (2 * j)), u2 = (uint8_t)(2u << (2 * j));
        for (int l = 0; l < 32; l++)
            *y++ = d1 * ((ql[l] & 0xF) + ((b->qh[l] & u1) ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * ((ql[l] >> 4) + ((b->qh[l] & u2) ? 16 : 0)) - m2;
    }
}

static void dq_q6_K(const kn_block_q6_K *b, float *y) {
    const float d = kn_f16_to_f32(b->d);
    const uint8_t *ql = b->ql, *qh = b->qh;
    const int8_t *sc = b->scales;
    for (int n = 0; n < KN_QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * sc[is + 0] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
        }
    }
}

static void dq_q8_K(const kn_block_q8_K *b, float *y) {
    for (int j = 0; j < KN_QK_K; j++)
        y[j] = b->d * b->qs[j];
}

void kn_dequant_row(kn_type t, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    const size_t bb = kn_type_block_bytes(t);
    const int64_t be = kn_type_block_elems(t);
    if (!bb)
        return;
    switch (t) {
    case KN_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case KN_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = kn_f16_to_f32(h);
        }
        return;
    case KN_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = kn_bf16_to_f32(h);
        }
        return;
    default:
        break;
    }
    for (int64_t b = 0; b < n / be; b++, s += bb, dst += be) {
        switch (t) {
        case KN_Q4_0: dq_q4_0((const void *)s, dst); break;
        case KN_Q4_1: dq_q4_1((const void *)s, dst); break;
        case KN_Q5_0: dq_q5_0((const void *)s, dst); break;
        case KN_Q5_1: dq_q5_1((const void *)s, dst); break;
        case KN_Q8_0: dq_q8_0((const void *)s, dst); break;
        case KN_Q8_1: {
            kn_block_q8_0 tmp;
            memcpy(&tmp.d, s, 2);
            memcpy(tmp.qs, s + 4, 32);
            dq_q8_0(&tmp, dst);
            break;
        }
        case KN_Q2_K: dq_q2_K((const void *)s, dst); break;
        case KN_Q3_K: dq_q3_K((const void *)s, dst); break;
        case KN_Q4_K: dq_q4_K((const void *)s, dst); break;
        case KN_Q5_K: dq_q5_K((const void *)s, dst); break;
        case KN_Q6_K: dq_q6_K((const void *)s, dst); break;
        case KN_Q8_K: dq_q8_K((const void *)s, dst); break;
        default: return;
        }
    }
}
