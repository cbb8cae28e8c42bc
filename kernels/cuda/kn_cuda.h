/* kn_cuda.h: what the CUDA backend's translation units share (private to
 * kernels/cuda): the backend struct, the check macros, the device helpers, and the
 * ops each unit implements. kn_cuda.cu holds memory, the small ops and the ops
 * table; kn_cuda_mm.cu the weight ops (matmul, get_rows); kn_cuda_attn.cu the KV
 * cache ops (kv_store, attention); kn_cuda_sample.cu the sample op. */
#ifndef KN_CUDA_H
#define KN_CUDA_H

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/kn.h"
#include "kernels/kn_half.h"

#define KN_CUDA_CHECK(call)                                                                                    \
    do {                                                                                                       \
        cudaError_t e_ = (call);                                                                               \
        if (e_ != cudaSuccess) {                                                                               \
            fprintf(stderr, "kolm: CUDA error at %s:%d: %s: %s\n", __FILE__, __LINE__, #call,                  \
                    cudaGetErrorString(e_));                                                                   \
            abort();                                                                                           \
        }                                                                                                      \
    } while (0)

/* After a kernel launch: the launch itself (bad configuration) is checked here;
 * faults inside the kernel surface at the next synchronizing call. */
#define KN_LAUNCHED() KN_CUDA_CHECK(cudaGetLastError())

/* A backend: one device, one stream (ops run in call order), a workspace that an
 * op may use for its temporaries while it runs (ops on one stream never overlap;
 * an op whose temporaries are larger splits its work to fit), and page-locked
 * staging for uploads: an upload copies its bytes there and queues the DMA, so it
 * returns without waiting; stage_used only goes back to 0 once the stream has
 * drained (a sync, a download, or a full stage). */
typedef struct kn_cuda {
    kn_backend base;
    int device;
    cudaStream_t stream;
    void *work;
    size_t work_bytes;
    unsigned *ticket; // KN_CUDA_TICKETS zeros between ops, after work: an op that splits its
                      // work over CTAs counts them in here (matmul, attention) and leaves zeros
    uint8_t *stage;
    size_t stage_bytes, stage_used;
} kn_cuda;

#define KN_CUDA_WORK_BYTES ((size_t)64 << 20)
#define KN_CUDA_TICKETS ((size_t)1 << 16)
#define KN_CUDA_STAGE_BYTES ((size_t)8 << 20)

static inline kn_cuda *cu(kn_backend *be) {
    return (kn_cuda *)be;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the thread block (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the result. */
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); // part may still be read by a previous call
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    v = lane < n_warp ? part[lane] : 0.0f;
    return warp_sum(v);
}

/* c += a b on the tensor cores, one warp-wide mma.sync.m16n8k16 (bf16 inputs, f32
 * accumulation; sm_80 and later). Lane l = 4g + q holds, packed two bf16 to a word
 * (the lower index in the low half): a = A[g][2q..], A[g + 8][2q..], A[g][2q + 8..],
 * A[g + 8][2q + 8..]; b = B[2q..][g], B[2q + 8..][g]; c = C[g][2q], C[g][2q + 1],
 * C[g + 8][2q], C[g + 8][2q + 1] (A: 16 x 16, B: 16 x 8, C: 16 x 8). */
__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Element i of a KN_F32, KN_F16 or KN_BF16 array (weight row or KV cache) as f32,
 * and the store into one (round to nearest even, kn_half.h). */
__device__ __forceinline__ float load_float(kn_type t, const void *row, int64_t i) {
    if (t == KN_F32)
        return ((const float *)row)[i];
    const uint16_t h = ((const uint16_t *)row)[i];
    return t == KN_F16 ? kn_f16_to_f32(h) : kn_bf16_to_f32(h);
}

/* An E4M3 code's value (kn_fp8.h), exact: every E4M3 value is an f16 (NaN stays NaN). */
__device__ __forceinline__ float e4m3_to_f32(uint32_t code) {
    const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)(code & 0xffu), __NV_E4M3);
    return __half2float(__half(h));
}

/* The two E4M3 codes in the low 16 bits of w (the lower byte first) as f32: one
 * conversion instruction for both (cvt.rn.f16x2.e4m3x2, sm_89 and later). */
__device__ __forceinline__ float2 e4m3x2_to_f32(uint32_t w) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), __NV_E4M3);
    return __half22float2(__half2(h));
}

__device__ __forceinline__ void store_float(kn_type t, void *row, int64_t i, float x) {
    if (t == KN_F32)
        ((float *)row)[i] = x;
    else
        ((uint16_t *)row)[i] = t == KN_F16 ? kn_f32_to_f16(x) : kn_f32_to_bf16(x);
}

/* The ops of the other units. */
void cu_matmul(kn_backend *be, const kn_weight *const *w, int n_w, const float *x, int64_t n_tok,
               float *const *y);
void cu_get_rows(kn_backend *be, const kn_weight *w, const int32_t *ids, int64_t n, float scale, float *y);
void cu_kv_store(kn_backend *be, void *k_cache, void *v_cache, kn_type kv_type, const float *k, const float *v,
                 const int32_t *slots, int64_t n_tok, int64_t row, int head_dim);
void cu_attention(kn_backend *be, const kn_attn_args *a);
void cu_sample(kn_backend *be, float *x, int64_t n_row, int64_t n, const kn_sample_params *p, const int32_t *adj_off,
               const int32_t *adj_id, float *adj_val, const uint32_t *mask, kn_sample_out *out);

#endif
