/* kn_quant: ggml block layouts and the activation quantizers shared by the
 * reference and the CPU backends (internal to kernels/).
 *
 * Block layouts are ggml's (ggml-common.h) byte for byte, so GGUF tensor data is
 * used in place. Activations are quantized to Q8_0 (for the 32-element weight
 * types) or Q8_K (for the K-quants) exactly as llama.cpp's x86 build does, so our
 * greedy outputs track llama.cpp's. Nothing here allocates. */
#ifndef KN_QUANT_H
#define KN_QUANT_H

#include <stdint.h>

#include "kernels/kn.h"
#include "kernels/kn_half.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KN_QK 32   // elements per block of the 32-element types
#define KN_QK_K 256 // elements per K-quant super-block

typedef struct { uint16_t d; uint8_t qs[16]; } kn_block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[16]; } kn_block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } kn_block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } kn_block_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } kn_block_q8_0;
typedef struct { uint16_t d, s; int8_t qs[32]; } kn_block_q8_1;
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } kn_block_q2_K;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } kn_block_q3_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } kn_block_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } kn_block_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } kn_block_q6_K;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } kn_block_q8_K;

#ifndef __cplusplus // the C build checks the layouts; CUDA (C++) shares them
_Static_assert(sizeof(kn_block_q4_0) == 18, "q4_0");
_Static_assert(sizeof(kn_block_q4_1) == 20, "q4_1");
_Static_assert(sizeof(kn_block_q5_0) == 22, "q5_0");
_Static_assert(sizeof(kn_block_q5_1) == 24, "q5_1");
_Static_assert(sizeof(kn_block_q8_0) == 34, "q8_0");
_Static_assert(sizeof(kn_block_q8_1) == 36, "q8_1");
_Static_assert(sizeof(kn_block_q2_K) == 84, "q2_K");
_Static_assert(sizeof(kn_block_q3_K) == 110, "q3_K");
_Static_assert(sizeof(kn_block_q4_K) == 144, "q4_K");
_Static_assert(sizeof(kn_block_q5_K) == 176, "q5_K");
_Static_assert(sizeof(kn_block_q6_K) == 210, "q6_K");
_Static_assert(sizeof(kn_block_q8_K) == 292, "q8_K");
#endif

/* The activation type a weight type's integer dot product pairs with: KN_Q8_0 for
 * Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, KN_Q8_K for Q4_K/Q5_K/Q6_K, KN_F32 for the float types
 * and for types whose matmul goes through dequantized floats (Q2_K, Q3_K). */
kn_type kn_vec_dot_type(kn_type w);

/* Quantizes n floats (n a multiple of 32) to Q8_0 blocks in dst, as llama.cpp's
 * AVX2 quantize_row_q8_0: d = amax/127 stored as f16, q = rint(x * 127/amax). */
void kn_quantize_row_q8_0(const float *x, kn_block_q8_0 *dst, int64_t n);
/* Quantizes n floats (n a multiple of 256) to Q8_K blocks in dst, as ggml's
 * quantize_row_q8_K_ref (scale from the signed max, -127/max, bsums per 16). */
void kn_quantize_row_q8_K(const float *x, kn_block_q8_K *dst, int64_t n);

/* Unpacks the 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block. */
static inline KN_HD void kn_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

#ifdef __cplusplus
}
#endif

#endif
