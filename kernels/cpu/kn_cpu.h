/* kn_cpu: the fast CPU backend (thread pool + AVX2 kernels with a portable path).
 *
 * Created by kn_cpu_create() (kernels/kn.h). The backend owns a pool of
 * n_threads - 1 worker threads and a scratch arena for quantized activations;
 * both are freed by be->ops->destroy. Ops are not reentrant: one caller thread at
 * a time per backend. */
#ifndef KN_CPU_H
#define KN_CPU_H

#include <stdint.h>

#include "kernels/kn.h"

/* Preallocates scratch so that matmuls of up to max_tok tokens with rows of up to
 * max_n_in elements never allocate. Optional: without it scratch grows on first
 * use. Returns 0 or -ENOMEM (the backend still works, in smaller token chunks). */
int kn_cpu_reserve(kn_backend *be, int64_t max_tok, int64_t max_n_in);

/* 1 if the AVX2/FMA/F16C kernels are in use, 0 for the portable path. */
int kn_cpu_simd(const kn_backend *be);

#endif
