/* kn_cpu_dot: per-type row dot products of the CPU backend (internal).
 *
 * A quantized weight row (n elements) is dotted with an activation row already
 * quantized to kn_vec_dot_type() (Q8_0 / Q8_K), or, for float weight types, with
 * the f32 activation row. Two implementations of the same algorithm: portable C
 * (kn_cpu_dot_scalar.c) and AVX2/FMA/F16C (kn_cpu_dot_avx2.c, chosen at runtime).
 * Integer sums inside a block are exact, so the two differ only in the order of
 * the float accumulation across blocks. */
#ifndef KN_CPU_DOT_H
#define KN_CPU_DOT_H

#include <stdint.h>

#include "kernels/kn.h"

/* w: one weight row of n elements; x: the activation row (quantized or f32). */
typedef float (*kn_dot_fn)(const void *w, const void *x, int64_t n);

typedef struct kn_dot_table {
    kn_dot_fn dot[KN_TYPE_COUNT]; // NULL: no direct kernel (use dequant + f32 dot)
    float (*dot_f32)(const float *a, const float *b, int64_t n);
    /* Attention helpers over one cache row of n elements in kv_type (F16/F32). */
    float (*dot_kv)(const float *q, const void *k, int kv_type, int64_t n);
    /* acc[i] = acc[i] * a + b * v[i] */
    void (*axpby_kv)(float *acc, float a, float b, const void *v, int kv_type, int64_t n);
    /* F32 -> F16 conversion of n values. */
    void (*to_f16)(const float *x, uint16_t *y, int64_t n);
} kn_dot_table;

void kn_dot_table_scalar(kn_dot_table *t);
/* Fills t with the AVX2 kernels; returns 0, or -1 if the CPU lacks AVX2/FMA/F16C
 * (t unchanged). */
int kn_dot_table_avx2(kn_dot_table *t);

#endif
