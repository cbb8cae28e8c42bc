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
    const int e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7)
        v = NAN;
    else if (e == 0)
        v = ldexpf((float)m, -9);
    else
        v = ldexpf((float)(8 + m), e - 10); // (1 + m/8) * 2^(e-7)
    return (b & 0x80) ? -v : v;
}

static inline KN_HD uint8_t kn_f32_to_e4m3(float x) {
    const uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (isnan(a))
        return (uint8_t)(sign | 0x7f);
    if (a >= KN_E4M3_MAX)
        return (uint8_t)(sign | 0x7e);
    int ex;
    (void)frexpf(a, &ex); // a = f * 2^ex, f in [0.5, 1): the exponent is ex - 1
    if (a == 0.0f || ex - 1 < -6) { // subnormal: the code is round(a / 2^-9), 8 is the smallest normal
        return (uint8_t)(sign | (uint8_t)rintf(ldexpf(a, 9)));
    }
    int e = ex - 1;
    int q = (int)rintf(ldexpf(a, 3 - e)); // in [8, 16]
    if (q == 16) {
        q = 8;
        e++;
    }
    int code = ((e + 7) << 3) | (q - 8);
    return (uint8_t)(sign | (code > 0x7e ? 0x7e : code));
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
