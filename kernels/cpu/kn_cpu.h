/* kn_cpu: the fast CPU backend (thread pool + AVX2 kernels with a portable path).
 *
 * Created by kn_cpu_create() (kernels/kn.h) or kn_cpu_create_ex(). The backend owns
 * a pool of n_threads - 1 worker threads and a scratch buffer for quantized
 * activations; both are freed by be->ops->destroy. Ops are not reentrant: one
 * caller thread at a time per backend.
 *
 * Matmul follows ggml: activation rows are quantized once per call to Q8_0 (for
 * Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights) or Q8_K (Q4_K/Q5_K/Q6_K), then each thread
 * walks its range of output rows once; each weight row is unpacked once per group
 * of up to 4 tokens by the multi-token kernels (kn_cpu_dot.h), so a batch of 8
 * costs far less than 8 single-token calls. Q2_K/Q3_K go through dequantized f32
 * rows. */
#ifndef KN_CPU_H
#define KN_CPU_H

#include <stdint.h>

#include "kernels/kn.h"

enum {
    KN_CPU_NO_SIMD = 1, // use the portable kernels even if AVX2 is available
    KN_CPU_NO_VNNI = 2, // use the AVX2 multi-token kernels even if AVX512-VNNI is available
};

/* kn_cpu_create with flags (KN_CPU_*). n_threads 0 = online CPUs. NULL on failure. */
kn_backend *kn_cpu_create_ex(int n_threads, int flags);

/* Preallocates scratch so that matmuls of up to max_tok tokens with rows of up to
 * max_n_in elements never allocate. Optional: without it the scratch grows on
 * first use (one allocation per new maximum). Returns 0 or -ENOMEM; on failure the
 * backend still works, processing tokens in smaller chunks. */
int kn_cpu_reserve(kn_backend *be, int64_t max_tok, int64_t max_n_in);

/* 0 for the portable path, 1 if the AVX2/FMA/F16C kernels are in use, 2 if the
 * multi-token matmul kernels also use AVX512-VNNI. */
int kn_cpu_simd(const kn_backend *be);

#endif
