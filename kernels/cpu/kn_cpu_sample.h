/* kn_cpu_sample: the CPU backend's sample op, one row at a time (internal to
 * kernels/cpu; kn_cpu.c spreads the rows over its threads). */
#ifndef KN_CPU_SAMPLE_H
#define KN_CPU_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kn.h"

/* Scratch bytes one thread needs for rows of n logits. */
size_t kn_cpu_sample_scratch_bytes(int64_t n);
/* The op on one row x [n] (kn.h): its adjustments aid/aval [na], its mask words
 * mw (NULL: all allowed), into o. scratch: kn_cpu_sample_scratch_bytes(n) bytes,
 * 64-byte aligned. avx2: the backend runs its AVX2 kernels (x86-64 with AVX2 and
 * FMA), else the portable ones. */
void kn_cpu_sample_row(float *x, int64_t n, const kn_sample_params *p, const int32_t *aid, float *aval, int32_t na,
                       const uint32_t *mw, kn_sample_out *o, void *scratch, int avx2);

#endif
