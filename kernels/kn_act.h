/* kn_act: the activation functions shared by the reference and the CPU backends
 * (internal to kernels/), so both compute the same numbers.
 *
 * NOTE: GELU is the tanh approximation evaluated in f32:
 * 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))). llama.cpp's older f16
 * lookup-table GELU was tried here and moved our Gemma 3 logits further from
 * llama-cpp-python 0.3.36 (the oracle: top-1 agreement 103/109 positions against
 * 108/109 with this formula), so the formula is the definition. SiLU is exact
 * (x / (1 + expf(-x))), like llama.cpp's. */
#ifndef KN_ACT_H
#define KN_ACT_H

#include <math.h>

#include "kernels/kn_half.h" // KN_HD: the CUDA kernels use these too

static inline KN_HD float kn_gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(0.79788456080286535588f * x * (1.0f + 0.044715f * x * x)));
}

static inline KN_HD float kn_silu(float x) {
    return x / (1.0f + expf(-x));
}

#endif
