/* kn_half: scalar IEEE half (f16) and bfloat16 <-> f32 conversions.
 *
 * Both directions round to nearest, ties to even, like ggml's scalar paths and
 * the F16C instructions; NaN stays NaN (quiet), overflow becomes infinity.
 * Header-only: every function is static inline and allocates nothing. */
#ifndef KN_HALF_H
#define KN_HALF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Host and device code under nvcc (the CUDA kernels share these), plain C otherwise. */
#ifdef __CUDACC__
#define KN_HD __host__ __device__
#else
#define KN_HD
#endif

static inline KN_HD float kn_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline KN_HD uint32_t kn_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline KN_HD float kn_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        // zero or subnormal: man * 2^-24, exact in f32
        float f = (float)man * 0x1p-24f;
        return kn_bits_f32(kn_f32_bits(f) | sign);
    }
    if (exp == 31)
        return kn_bits_f32(sign | 0x7f800000u | (man << 13));
    return kn_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline KN_HD uint16_t kn_f32_to_f16(float f) {
    uint32_t u = kn_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) // NaN: keep it quiet
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) // >= 65520 rounds to infinity
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { // below 2^-14: subnormal half or zero
        // NOTE: scaling by 2^24 is exact; rintf rounds ties to even (default mode).
        float n = rintf(kn_bits_f32(a) * 0x1p24f);
        return (uint16_t)(sign | (uint32_t)n);
    }
    uint32_t h = (a >> 13) - (112u << 10);
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; // a carry into the exponent is the correct result
    return (uint16_t)(sign | h);
}

static inline KN_HD float kn_bf16_to_f32(uint16_t h) {
    return kn_bits_f32((uint32_t)h << 16);
}

static inline KN_HD uint16_t kn_f32_to_bf16(float f) {
    uint32_t u = kn_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 64u); // quiet NaN
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#endif
