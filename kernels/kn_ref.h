/* kn_ref: helpers of the scalar reference backend that tests use beyond the
 * kn_backend vtable (internal to kernels/ and its tests). */
#ifndef KN_REF_H
#define KN_REF_H

#include "kernels/kn.h"

/* The matmul reference with llama.cpp's activation quantization: each row of x is
 * quantized to kn_vec_dot_type(w->type) (Q8_0 or Q8_K; F32 = no quantization),
 * dequantized back, and dotted in double with the dequantized weight rows. A fast
 * backend using the integer algorithm differs from this only by float summation
 * order. x: [n_tok, w->n_in] host f32, y: [n_tok, w->n_out] host f32.
 * Allocates and frees its own scratch; returns 0 or -ENOMEM. */
int kn_ref_matmul_qact(const kn_weight *w, const float *x, int64_t n_tok, float *y);

/* The reference's kv_store and attention on host memory (the CPU backend runs the
 * FP8 KV cache through these: correct, not fast). */
void kn_ref_kv_store(void *k_cache, void *v_cache, kn_type kv_type, const float *k, const float *v,
                     const int32_t *slots, int64_t n_tok, int64_t row, int head_dim);
void kn_ref_attention(const kn_attn_args *a);
/* The reference softcap on host memory (the CPU backend's too). */
void kn_ref_softcap(float *x, int64_t n, float cap);

#endif
