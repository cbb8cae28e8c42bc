/* kn_dequant: the per-block dequantizers, shared by the scalar reference, the CPU
 * backend and the CUDA kernels (compiled as host and device code there), so every
 * backend turns a block into the same floats. Layouts and formulas follow ggml
 * (ggml-common.h, ggml-quants.c); the code is our own. */
#ifndef KN_DEQUANT_H
#define KN_DEQUANT_H

#include <stdint.h>
#include <string.h>

#include "kernels/kn.h"
#include "kernels/kn_half.h"
#include "kernels/kn_quant.h"

static inline KN_HD void kn_dq_q4_0(const kn_block_q4_0 *b, float *y) {
    const float d = kn_f16_to_f32(b->d);
    for (int j = 0; j < 16; j++) {
        y[j] = ((b->qs[j] & 0xF) - 8) * d;
        y[j + 16] = ((b->qs[j] >> 4) - 8) * d;
    }
}

static inline KN_HD void kn_dq_q4_1(const kn_block_q4_1 *b, float *y) {
    const float d = kn_f16_to_f32(b->d), m = kn_f16_to_f32(b->m);
    for (int j = 0; j < 16; j++) {
        y[j] = (b->qs[j] & 0xF) * d + m;
        y[j + 16] = (b->qs[j] >> 4) * d + m;
    }
}

static inline KN_HD void kn_dq_q5_0(const kn_block_q5_0 *b, float *y) {
    const float d = kn_f16_to_f32(b->d);
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    for (int j = 0; j < 16; j++) {
        int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
        y[j] = (((b->qs[j] & 0xF) | (h0 << 4)) - 16) * d;
        y[j + 16] = (((b->qs[j] >> 4) | (h1 << 4)) - 16) * d;
    }
}

static inline KN_HD void kn_dq_q5_1(const kn_block_q5_1 *b, float *y) {
    const float d = kn_f16_to_f32(b->d), m = kn_f16_to_f32(b->m);
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    for (int j = 0; j < 16; j++) {
        int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
        y[j] = ((b->qs[j] & 0xF) | (h0 << 4)) * d + m;
        y[j + 16] = ((b->qs[j] >> 4) | (h1 << 4)) * d + m;
    }
}

static inline KN_HD void kn_dq_q8_0(const kn_block_q8_0 *b, float *y) {
    const float d = kn_f16_to_f32(b->d);
    for (int j = 0; j < 32; j++)
        y[j] = b->qs[j] * d;
}

static inline KN_HD void kn_dq_q2_K(const kn_block_q2_K *b, float *y) {
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

static inline KN_HD void kn_dq_q3_K(const kn_block_q3_K *b, float *y) {
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

static inline KN_HD void kn_dq_q4_K(const kn_block_q4_K *b, float *y) {
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

static inline KN_HD void kn_dq_q5_K(const kn_block_q5_K *b, float *y) {
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

static inline KN_HD void kn_dq_q6_K(const kn_block_q6_K *b, float *y) {
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

static inline KN_HD void kn_dq_q8_K(const kn_block_q8_K *b, float *y) {
    for (int j = 0; j < KN_QK_K; j++)
        y[j] = b->d * b->qs[j];
}

/* One block of a row of type t (a quantized type) into y: 32 or 256 floats. */
static inline KN_HD void kn_dq_block(kn_type t, const uint8_t *s, float *y) {
    switch (t) {
    case KN_Q4_0: kn_dq_q4_0((const kn_block_q4_0 *)s, y); break;
    case KN_Q4_1: kn_dq_q4_1((const kn_block_q4_1 *)s, y); break;
    case KN_Q5_0: kn_dq_q5_0((const kn_block_q5_0 *)s, y); break;
    case KN_Q5_1: kn_dq_q5_1((const kn_block_q5_1 *)s, y); break;
    case KN_Q8_0: kn_dq_q8_0((const kn_block_q8_0 *)s, y); break;
    case KN_Q2_K: kn_dq_q2_K((const kn_block_q2_K *)s, y); break;
    case KN_Q3_K: kn_dq_q3_K((const kn_block_q3_K *)s, y); break;
    case KN_Q4_K: kn_dq_q4_K((const kn_block_q4_K *)s, y); break;
    case KN_Q5_K: kn_dq_q5_K((const kn_block_q5_K *)s, y); break;
    case KN_Q6_K: kn_dq_q6_K((const kn_block_q6_K *)s, y); break;
    case KN_Q8_K: kn_dq_q8_K((const kn_block_q8_K *)s, y); break;
    default: break;
    }
}

#endif
