/* kn_exp: exp for the sampler's probabilities, the same function on every backend
 * (internal to kernels/).
 *
 * NOTE: softmax over a 262k vocabulary on every token must cost a small part of
 * a decode step, so exp runs as a polynomial: 2^f on [-0.5, 0.5], degree 6,
 * relative error < 4e-6 for x in [-87, 0]. Below -87 the term is under 1e-38 of
 * the largest one and counts as 0, so a token at -inf has probability exactly 0.
 * The CPU backend evaluates the same terms 8 lanes at a time (AVX2). */
#ifndef KN_EXP_H
#define KN_EXP_H

#include <math.h>
#include <stdint.h>

#include "kernels/kn_half.h" // KN_HD: the CUDA kernels use it too

#define KN_EXP_LOG2E 1.44269504089f
#define KN_EXP_P6 1.5353362e-4f
#define KN_EXP_P5 1.3398874e-3f
#define KN_EXP_P4 9.6181291e-3f
#define KN_EXP_P3 5.5504109e-2f
#define KN_EXP_P2 2.4022651e-1f
#define KN_EXP_P1 6.9314718e-1f

/* exp(x) for x <= 0 (0 below -87, and for NaN). */
static inline KN_HD float kn_exp_neg(float x) {
    if (!(x >= -87.0f))
        return 0.0f;
    float t = x * KN_EXP_LOG2E;
    float r = rintf(t);
    float f = t - r;
    float p = ((((((KN_EXP_P6 * f + KN_EXP_P5) * f + KN_EXP_P4) * f + KN_EXP_P3) * f + KN_EXP_P2) * f +
                KN_EXP_P1) * f + 1.0f);
    return p * kn_bits_f32((uint32_t)((int32_t)r + 127) << 23);
}

#endif
