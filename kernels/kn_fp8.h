/* kn_fp8: scalar OCP FP8 E4M3 (e4m3fn) <-> f32, the storage type of the FP8 KV
 * cache, shared by the reference and the CUDA kernels (host and device code).
 *
 * E4M3: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; S.1111.111
 * is NaN; the largest finite value is 448, the smallest normal 2^-6, subnormals
 * m * 2^-9. f32 -> E4M3 rounds to nearest, ties to even, and saturates: anything
 * beyond 448 in magnitude, infinities included, becomes +-448 (CUDA's
 * __NV_SATFINITE conversion); NaN becomes 0x7f with the sign of the input. */
#ifndef KN_FP8_H
#define KN_FP8_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kn_half.h" // KN_HD

#define KN_E4M3_MAX 448.0f

static inline KN_HD float kn_e4m3_to_f32(uint8_t b) {
    const uint32_t e = (b >> 3) & 15u, m = b & 7u;
    float v;
    if (e == 0) {
        v = (float)m * 0x1p-9f; // subnormal: exact
    } else {
        const uint32_t u = e == 15 && m == 7 ? 0x7fc00000u : (e + 120u) << 23 | m << 20; // NaN, or 1.m * 2^(e-7)
        memcpy(&v, &u, sizeof v);
    }
    return (b & 0x80) ? -v : v;
}

/* Bit arithmetic on the f32 (no libm, no branches a compiler cannot turn into
 * selects): a normal result keeps the exponent and the top 3 mantissa bits,
 * rounded to nearest even on the 20 bits below them (a carry moves into the
 * exponent); below 2^-6 the code is round(a / 2^-9), which the FPU's own
 * round-to-nearest-even does in a + 2^14 (whose ulp is 2^-9). */
static inline KN_HD uint8_t kn_f32_to_e4m3(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) // NaN
        return (uint8_t)(sign | 0x7f);
    if (u >= 0x43e00000u) // 448 and beyond, infinity included: saturate
        return (uint8_t)(sign | 0x7e);
    if (u < 0x3c800000u) { // below 2^-6: subnormal, 8 (2^-6) when it rounds up
        float a, f;
        memcpy(&a, &u, sizeof a);
        f = a + 16384.0f;
        uint32_t v;
        memcpy(&v, &f, sizeof v);
        return (uint8_t)(sign | (v - 0x46800000u)); // 0x46800000: 16384.0f
    }
    u += 0x7ffffu + ((u >> 20) & 1u);
    return (uint8_t)(sign | ((u >> 20) - (120u << 3))); // f32 bias 127 -> E4M3 bias 7, in units of 8 codes
}

/* The FP8 KV cache layout: every (slot, kv head) is one record, a f32 scale then
 * head_dim E4M3 codes (value = scale * code), so the scale is per token and head:
 * amax / 448 of that head's values. Record r of a cache starts at byte
 * r * kn_e4m3_rec_bytes(head_dim), r = slot * n_kv_head + kv_head. */
static inline KN_HD size_t kn_e4m3_rec_bytes(int head_dim) {
    return sizeof(float) + (size_t)head_dim;
}

static inline KN_HD void kn_e4m3_rec_put(void *cache, size_t rec, const float *x, int head_dim) {
    uint8_t *p = (uint8_t *)cache + rec * kn_e4m3_rec_bytes(head_dim);
    float amax = 0.0f;
    for (int i = 0; i < head_dim; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float scale = amax > 0.0f ? amax / KN_E4M3_MAX : 1.0f;
    memcpy(p, &scale, sizeof scale);
    for (int i = 0; i < head_dim; i++)
        p[sizeof(float) + i] = kn_f32_to_e4m3(x[i] / scale);
}

static inline KN_HD float kn_e4m3_rec_get(const void *cache, size_t rec, int head_dim, int i) {
    const uint8_t *p = (const uint8_t *)cache + rec * kn_e4m3_rec_bytes(head_dim);
    float scale;
    memcpy(&scale, p, sizeof scale);
    return scale * kn_e4m3_to_f32(p[sizeof(float) + i]);
}

#endif
