/* kn_types: the tensor type table and the scalar dequantizers.
 *
 * Layouts and formulas follow ggml (ggml-common.h, ggml-quants.c); the code is our
 * own. Every function here is pure: no allocation, no state. */
#include <math.h>
#include <string.h>

#include "kernels/kn.h"
#include "kernels/kn_half.h"
#include "kernels/kn_dequant.h"
#include "kernels/kn_fp8.h"
#include "kernels/kn_quant.h"

typedef struct {
    const char *name;
    int64_t block_elems;
    size_t block_bytes;
    int supported; // weights of this type can be loaded and multiplied
} kn_type_info;

static const kn_type_info kn_types[KN_TYPE_COUNT] = {
    [KN_F32] = {"f32", 1, 4, 1},
    [KN_F16] = {"f16", 1, 2, 1},
    [KN_BF16] = {"bf16", 1, 2, 1},
    [KN_Q4_0] = {"q4_0", 32, sizeof(kn_block_q4_0), 1},
    [KN_Q4_1] = {"q4_1", 32, sizeof(kn_block_q4_1), 1},
    [KN_Q5_0] = {"q5_0", 32, sizeof(kn_block_q5_0), 1},
    [KN_Q5_1] = {"q5_1", 32, sizeof(kn_block_q5_1), 1},
    [KN_Q8_0] = {"q8_0", 32, sizeof(kn_block_q8_0), 1},
    [KN_Q8_1] = {"q8_1", 32, sizeof(kn_block_q8_1), 0},
    [KN_Q2_K] = {"q2_K", 256, sizeof(kn_block_q2_K), 1},
    [KN_Q3_K] = {"q3_K", 256, sizeof(kn_block_q3_K), 1},
    [KN_Q4_K] = {"q4_K", 256, sizeof(kn_block_q4_K), 1},
    [KN_Q5_K] = {"q5_K", 256, sizeof(kn_block_q5_K), 1},
    [KN_Q6_K] = {"q6_K", 256, sizeof(kn_block_q6_K), 1},
    [KN_Q8_K] = {"q8_K", 256, sizeof(kn_block_q8_K), 0},
};

static const kn_type_info *kn_info(kn_type t) {
    if ((unsigned)t >= KN_TYPE_COUNT || !kn_types[t].name)
        return NULL;
    return &kn_types[t];
}

int kn_type_supported(kn_type t) {
    if (t == KN_E4M3)
        return 1;
    const kn_type_info *i = kn_info(t);
    return i ? i->supported : 0;
}

const char *kn_type_name(kn_type t) {
    if (t == KN_E4M3)
        return "e4m3";
    const kn_type_info *i = kn_info(t);
    return i ? i->name : "unknown";
}

/* E4M3 is a row record (kn.h): its "blocks" are its codes, one byte each, and
 * kn_row_bytes adds the row's scale. */
int64_t kn_type_block_elems(kn_type t) {
    if (t == KN_E4M3)
        return 1;
    const kn_type_info *i = kn_info(t);
    return i ? i->block_elems : 0;
}

size_t kn_type_block_bytes(kn_type t) {
    if (t == KN_E4M3)
        return 1;
    const kn_type_info *i = kn_info(t);
    return i ? i->block_bytes : 0;
}

size_t kn_row_bytes(kn_type t, int64_t n) {
    if (t == KN_E4M3)
        return n > 0 ? sizeof(float) + (size_t)n : 0;
    const kn_type_info *i = kn_info(t);
    if (!i || n < 0 || n % i->block_elems)
        return 0;
    return (size_t)(n / i->block_elems) * i->block_bytes;
}

kn_type kn_vec_dot_type(kn_type w) {
    switch (w) {
    case KN_Q4_0:
    case KN_Q4_1:
    case KN_Q5_0:
    case KN_Q5_1:
    case KN_Q8_0:
        return KN_Q8_0;
    case KN_Q4_K:
    case KN_Q5_K:
    case KN_Q6_K:
        return KN_Q8_K;
    default:
        return KN_F32;
    }
}

void kn_quantize_row_q8_0(const float *x, kn_block_q8_0 *dst, int64_t n) {
    for (int64_t b = 0; b < n / KN_QK; b++, x += KN_QK) {
        float amax = 0.0f;
        for (int j = 0; j < KN_QK; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax; // fmaxf is a libm call at -O2
        // NOTE: llama.cpp's x86 path multiplies by 127/amax (not 1/d) and rounds
        // ties to even; we do the same so the int8 codes match bit for bit.
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        dst[b].d = kn_f32_to_f16(d);
        for (int j = 0; j < KN_QK; j++)
            dst[b].qs[j] = (int8_t)rintf(x[j] * id);
    }
}

void kn_quantize_row_q8_K(const float *x, kn_block_q8_K *dst, int64_t n) {
    for (int64_t b = 0; b < n / KN_QK_K; b++, x += KN_QK_K) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < KN_QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        kn_block_q8_K *y = &dst[b];
        if (amax == 0.0f) {
            memset(y, 0, sizeof(*y));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < KN_QK_K; j++) {
            int v = (int)rintf(iscale * x[j]);
            y->qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < KN_QK_K / 16; j++) {
            int s = 0;
            for (int i = 0; i < 16; i++)
                s += y->qs[j * 16 + i];
            y->bsums[j] = (int16_t)s;
        }
        y->d = 1.0f / iscale;
    }
}

void kn_dequant_row(kn_type t, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    const size_t bb = kn_type_block_bytes(t);
    const int64_t be = kn_type_block_elems(t);
    if (!bb)
        return;
    switch (t) {
    case KN_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case KN_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = kn_f16_to_f32(h);
        }
        return;
    case KN_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = kn_bf16_to_f32(h);
        }
        return;
    case KN_E4M3: {
        float scale;
        memcpy(&scale, s, sizeof scale);
        for (int64_t i = 0; i < n; i++)
            dst[i] = scale * kn_e4m3_to_f32(s[sizeof(float) + i]);
        return;
    }
    default:
        break;
    }
    for (int64_t b = 0; b < n / be; b++, s += bb, dst += be) {
        if (t == KN_Q8_1) { // Q8_1 is Q8_0 with a sum after the scale
            kn_block_q8_0 tmp;
            memcpy(&tmp.d, s, 2);
            memcpy(tmp.qs, s + 4, 32);
            kn_dq_q8_0(&tmp, dst);
        } else {
            kn_dq_block(t, s, dst);
        }
    }
}
