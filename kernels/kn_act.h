/* kn_act: the activation functions shared by the reference and the CPU backends
 * (internal to kernels/), so both compute the same numbers.
 *
 * GELU (tanh approximation) is defined the way llama.cpp's CPU backend computes
 * it: the input is rounded to f16, the result is looked up in a 65536-entry table
 * of f16(gelu(x)) indexed by those f16 bits, and converted back to f32; inputs
 * <= -10 give 0 and inputs >= 10 give x. Matching this (rather than an exact
 * tanh GELU) keeps our Gemma logits within llama.cpp's oracle tolerance. SiLU is
 * exact (x / (1 + expf(-x))), like llama.cpp's. The table is static storage
 * (128 KiB), built once on first use (thread-safe); nothing allocates. */
#ifndef KN_ACT_H
#define KN_ACT_H

#include <math.h>
#include <stdint.h>

#include "kernels/kn_half.h"

/* The GELU table (built on the first call, then returned as is). */
const uint16_t *kn_gelu_table(void);

/* gelu(x) by the definition above; tab = kn_gelu_table(). */
static inline float kn_gelu(const uint16_t *tab, float x) {
    if (x <= -10.0f)
        return 0.0f;
    if (x >= 10.0f)
        return x;
    return kn_f16_to_f32(tab[kn_f32_to_f16(x)]);
}

static inline float kn_silu(float x) {
    return x / (1.0f + expf(-x));
}

#endif
