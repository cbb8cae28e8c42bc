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

/* Elements [8c, 8c + 8) of one block of type t (a quantized type) into y: the
 * floats kn_dq_block gives them, by the same expressions (chunks of 8 never straddle
 * a scale group). The CUDA matmul dequantizes a chunk per lane, so a warp reads a
 * row's blocks together; test_kn_ops holds this to kn_dq_block on every type. */
static inline KN_HD void kn_dq_chunk8(kn_type t, const uint8_t *s, int c, float *y) {
    const int e0 = 8 * c;
    switch (t) {
    case KN_Q4_0:
    case KN_Q4_1:
    case KN_Q5_0:
    case KN_Q5_1: { // element e: nibble e of the low halves of qs (e < 16), then of the high halves
        const int one = t == KN_Q4_1 || t == KN_Q5_1, five = t == KN_Q5_0 || t == KN_Q5_1;
        const uint8_t *p = s + 2 + 2 * one; // after d (and m)
        uint32_t qh = 0;
        if (five) {
            memcpy(&qh, p, 4);
            p += 4;
        }
        uint16_t hd, hm = 0;
        memcpy(&hd, s, 2);
        if (one)
            memcpy(&hm, s + 2, 2);
        const float d = kn_f16_to_f32(hd), m = kn_f16_to_f32(hm);
        for (int i = 0; i < 8; i++) {
            const int e = e0 + i;
            int q = e < 16 ? (p[e] & 0xF) : (p[e - 16] >> 4);
            if (five)
                q |= (int)((qh >> e) & 1) << 4;
            y[i] = one ? q * d + m : (q - (five ? 16 : 8)) * d;
        }
        break;
    }
    case KN_Q8_0: {
        const kn_block_q8_0 *b = (const kn_block_q8_0 *)s;
        const float d = kn_f16_to_f32(b->d);
        for (int i = 0; i < 8; i++)
            y[i] = b->qs[e0 + i] * d;
        break;
    }
    case KN_Q2_K: { // 16 elements per scale: group e / 16, 2-bit field (e % 128) / 32 of byte 32 (e / 128) + e % 32
        const kn_block_q2_K *b = (const kn_block_q2_K *)s;
        const float d = kn_f16_to_f32(b->d), dmin = kn_f16_to_f32(b->dmin);
        const uint8_t sc = b->scales[e0 / 16];
        const float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
        const int shift = (e0 % 128) / 32 * 2;
        const uint8_t *q = b->qs + 32 * (e0 / 128) + e0 % 32;
        for (int i = 0; i < 8; i++)
            y[i] = dl * ((q[i] >> shift) & 3) - ml;
        break;
    }
    case KN_Q3_K: {
        const kn_block_q3_K *b = (const kn_block_q3_K *)s;
        const float d_all = kn_f16_to_f32(b->d);
        const int j = e0 / 16;
        const int lo = j < 8 ? (b->scales[j] & 0xF) : (b->scales[j - 8] >> 4);
        const int hi = (b->scales[8 + (j % 4)] >> (2 * (j / 4))) & 3;
        const float dl = d_all * (int8_t)((lo | (hi << 4)) - 32);
        const int shift = (e0 % 128) / 32 * 2;
        const uint8_t m = (uint8_t)(1u << (e0 / 32));
        const uint8_t *q = b->qs + 32 * (e0 / 128);
        for (int i = 0; i < 8; i++) {
            const int k = (e0 + i) % 32;
            const int v = ((q[k] >> shift) & 3) - ((b->hmask[k] & m) ? 0 : 4);
            y[i] = dl * v;
        }
        break;
    }
    case KN_Q4_K:
    case KN_Q5_K: { // sub-block e / 32: low nibbles of bytes 32 (e / 64) + e % 32 when even, high when odd
        const int five = t == KN_Q5_K;
        const uint16_t *dd = (const uint16_t *)s;
        const uint8_t *scales = s + 4, *qh = s + 16, *qs = s + 16 + 32 * five;
        const float d = kn_f16_to_f32(dd[0]), dmin = kn_f16_to_f32(dd[1]);
        const int sub = e0 / 32;
        uint8_t sc, m;
        kn_scale_min_k4(sub, scales, &sc, &m);
        const float d1 = d * sc, m1 = dmin * m;
        const uint8_t *q = qs + 32 * (e0 / 64);
        for (int i = 0; i < 8; i++) {
            const int l = (e0 + i) % 32;
            int v = sub & 1 ? q[l] >> 4 : q[l] & 0xF;
            if (five)
                v += (qh[l] & (1u << sub)) ? 16 : 0;
            y[i] = d1 * v - m1;
        }
        break;
    }
    case KN_Q6_K: { // per 128: quarter r = (e % 128) / 32 takes ql[l + 32 (r & 1)]'s nibble r / 2 and qh[l]'s bits 2r
        const kn_block_q6_K *b = (const kn_block_q6_K *)s;
        const float d = kn_f16_to_f32(b->d);
        const int n = e0 / 128, r = (e0 % 128) / 32;
        const uint8_t *ql = b->ql + 64 * n + 32 * (r & 1), *qh = b->qh + 32 * n;
        const int8_t *sc = b->scales + 8 * n;
        for (int i = 0; i < 8; i++) {
            const int l = (e0 + i) % 32;
            const int q = ((r < 2 ? ql[l] & 0xF : ql[l] >> 4) | (((qh[l] >> (2 * r)) & 3) << 4)) - 32;
            y[i] = d * sc[l / 16 + 2 * r] * q;
        }
        break;
    }
    case KN_Q8_K: {
        const kn_block_q8_K *b = (const kn_block_q8_K *)s;
        for (int i = 0; i < 8; i++)
            y[i] = b->d * b->qs[e0 + i];
        break;
    }
    default: break;
    }
}

#endif
