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

/* The most activation rows one multi-token kernel call handles. */
#define KN_DOTN_MAX 8

/* Multi-token dot: one weight row of n elements against nx (1..KN_DOTN_MAX)
 * quantized activation rows x + t * xs bytes; writes y[t * ys]. Each weight block
 * is unpacked once per call. A token's result is bit-identical to the dot_fn of
 * the same build and does not depend on nx or on the other rows.
 *
 * Activation rows for the Q8_0-paired types (kn_vec_dot_type == KN_Q8_0) use the
 * split layout: the n/32 blocks' 32 int8 codes back to back, then their n/32
 * scales as f32 (KN_DOTN_Q8_ROW bytes per row); with act_xu set the codes are
 * stored offset binary (code ^ 0x80, i.e. code + 128 as a uint8). Rows for the
 * Q8_K-paired types are plain kn_block_q8_K arrays. */
#define KN_KV_NQ 8

#define KN_DOTN_Q8_ROW(n) ((size_t)((n) / 32) * 36)
typedef void (*kn_dotn_fn)(const void *w, const void *x, size_t xs, int nx, int64_t n, float *y, size_t ys);

typedef struct kn_dot_table {
    kn_dot_fn dot[KN_TYPE_COUNT]; // NULL: no direct kernel (use dequant + f32 dot)
    kn_dotn_fn dotn[KN_TYPE_COUNT]; // NULL: call dot once per token
    int act_xu;                     // dotn's Q8_0 activation codes are offset binary
    float (*dot_f32)(const float *a, const float *b, int64_t n);
    /* Attention over cache rows of n elements in kv_type (F16/BF16/F32), for nq
     * query heads sharing one KV head (each cache element loaded and converted once
     * for all of them): out[g] = the dot product of q + g * n and the row k, and
     * acc[g * n + i] += sum_j w[g * ws + j] * v[j][i] over nv cache rows v[j]. */
    void (*dot_kv_n)(const float *q, int nq, const void *k, int kv_type, int64_t n, float *out);
    void (*wsum_kv)(float *acc, int nq, const float *w, size_t ws, const void *const *v, int nv, int kv_type,
                    int64_t n);
    /* y[i] = kn_gelu(g[i]) * u[i] (kn_act.h). */
    void (*geglu)(const float *g, const float *u, int64_t n, float *y);
    /* F32 -> F16 conversion of n values. */
    void (*to_f16)(const float *x, uint16_t *y, int64_t n);
} kn_dot_table;

void kn_dot_table_scalar(kn_dot_table *t);
/* Fills t with the AVX2 kernels; returns 0, or -1 if the CPU lacks AVX2/FMA/F16C
 * (t unchanged). */
int kn_dot_table_avx2(kn_dot_table *t);
/* Replaces t's multi-token kernels with AVX512-VNNI (256-bit vpdpbusd) ones;
 * returns 0, or -1 if the CPU lacks AVX512F/BW/VL/VNNI (t unchanged). Call after
 * kn_dot_table_avx2 succeeded. */
int kn_dot_table_vnni(kn_dot_table *t);

#endif
