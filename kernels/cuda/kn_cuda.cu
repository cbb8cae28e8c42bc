/* kn_cuda: the CUDA backend behind kn.h.
 *
 * Design note. This is the first, correctness-first slice: every op of the
 * interface, on one stream, with the same dequantizers as the CPU backends
 * (kernels/kn_dequant.h compiled as device code) and the same activation
 * formulas, so tests/unit/test_kn_ops.c can hold it to the scalar reference.
 * matmul goes through cuBLAS for f32 weights and through a dequantize-and-dot
 * kernel for the others (one thread block per output row and tile of tokens);
 * attention is one warp per (token, head) with an online softmax per lane over the
 * block table. The fast paths (cuBLASLt GEMMs on dequantized tiles for prefill,
 * FP8 KV, split-KV decode, CUDA graphs) come on top of this, measured on a GPU.
 *
 * Every CUDA and cuBLAS call is checked; a failure is a bug or a dead device, so
 * it is logged with its place and the worker aborts (the gateway respawns it). */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/kn.h"
#include "kernels/kn_act.h"
#include "kernels/kn_dequant.h"
#include "kernels/kn_fp8.h"
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

#define KN_CUBLAS_CHECK(call)                                                                                  \
    do {                                                                                                       \
        cublasStatus_t s_ = (call);                                                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                     \
            fprintf(stderr, "kolm: cuBLAS error at %s:%d: %s: status %d\n", __FILE__, __LINE__, #call,         \
                    (int)s_);                                                                                  \
            abort();                                                                                           \
        }                                                                                                      \
    } while (0)

/* After a kernel launch: the launch itself (bad configuration) is checked here;
 * faults inside the kernel surface at the next synchronizing call. */
#define KN_LAUNCHED() KN_CUDA_CHECK(cudaGetLastError())

typedef struct kn_cuda {
    kn_backend base;
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
} kn_cuda;

static kn_cuda *cu(kn_backend *be) {
    return (kn_cuda *)be;
}

#define MAX_BLOCK 256 // elements of the largest quantized block (the K-quants)
#define TOK_TILE 4    // tokens per thread block in the dequantize-and-dot matmul
#define THREADS 128

static __device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the thread block (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the result. */
static __device__ float block_sum(float v) {
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

/* Element i of a KN_F32, KN_F16 or KN_BF16 array (weight row or KV cache) as f32,
 * and the store into one (round to nearest even, kn_half.h). */
static __device__ float load_float(kn_type t, const void *row, int64_t i) {
    if (t == KN_F32)
        return ((const float *)row)[i];
    const uint16_t h = ((const uint16_t *)row)[i];
    return t == KN_F16 ? kn_f16_to_f32(h) : kn_bf16_to_f32(h);
}

static __device__ void store_float(kn_type t, void *row, int64_t i, float x) {
    if (t == KN_F32)
        ((float *)row)[i] = x;
    else
        ((uint16_t *)row)[i] = t == KN_F16 ? kn_f32_to_f16(x) : kn_f32_to_bf16(x);
}

/* ---------------------------------------------------------------- memory */

static void *cu_alloc(kn_backend *be, size_t bytes) {
    void *p = NULL;
    KN_CUDA_CHECK(cudaSetDevice(cu(be)->device));
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError(); // an out-of-memory is the caller's to handle, not sticky
        return NULL;
    }
    return p;
}

static void cu_free(kn_backend *be, void *p) {
    if (p)
        KN_CUDA_CHECK(cudaFree(p));
}

static void cu_upload(kn_backend *be, void *dst, const void *src, size_t bytes) {
    KN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu(be)->stream));
    KN_CUDA_CHECK(cudaStreamSynchronize(cu(be)->stream)); // the host buffer may go away on return
}

static void cu_download(kn_backend *be, void *dst, const void *src, size_t bytes) {
    KN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu(be)->stream));
    KN_CUDA_CHECK(cudaStreamSynchronize(cu(be)->stream));
}

static void cu_sync(kn_backend *be) {
    KN_CUDA_CHECK(cudaStreamSynchronize(cu(be)->stream));
}

static void cu_destroy(kn_backend *be) {
    kn_cuda *c = cu(be);
    KN_CUBLAS_CHECK(cublasDestroy(c->blas));
    KN_CUDA_CHECK(cudaStreamDestroy(c->stream));
    free(c);
}

/* ---------------------------------------------------------------- matmul */

/* y[t][o] for one output row o (blockIdx.x) and TOK_TILE tokens (blockIdx.y). */
static __global__ void k_matmul_dq(kn_type type, const uint8_t *w, size_t row_bytes, int64_t n_in, int block_elems,
                                   size_t block_bytes, const float *x, int64_t n_tok, float *y, int64_t n_out) {
    const int64_t o = blockIdx.x, t0 = (int64_t)blockIdx.y * TOK_TILE;
    const uint8_t *row = w + (size_t)o * row_bytes;
    float acc[TOK_TILE] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (block_elems == 1) { // f16 / bf16
        for (int64_t i = threadIdx.x; i < n_in; i += blockDim.x) {
            const float wi = load_float(type, row, i);
            for (int k = 0; k < TOK_TILE && t0 + k < n_tok; k++)
                acc[k] += wi * x[(t0 + k) * n_in + i];
        }
    } else {
        float buf[MAX_BLOCK];
        for (int64_t b = threadIdx.x; b < n_in / block_elems; b += blockDim.x) {
            kn_dq_block(type, row + (size_t)b * block_bytes, buf);
            for (int k = 0; k < TOK_TILE && t0 + k < n_tok; k++) {
                const float *xt = x + (t0 + k) * n_in + b * block_elems;
                float s = 0.0f;
                for (int i = 0; i < block_elems; i++)
                    s += buf[i] * xt[i];
                acc[k] += s;
            }
        }
    }
    for (int k = 0; k < TOK_TILE; k++) {
        const float s = block_sum(acc[k]);
        if (threadIdx.x == 0 && t0 + k < n_tok)
            y[(t0 + k) * n_out + o] = s;
    }
}

static void cu_matmul(kn_backend *be, const kn_weight *w, const float *x, int64_t n_tok, float *y) {
    kn_cuda *c = cu(be);
    if (n_tok <= 0)
        return;
    if (w->type == KN_F32) { // row-major y = x W^T is column-major y^T = W x^T
        const float one = 1.0f, zero = 0.0f;
        KN_CUBLAS_CHECK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->n_out, (int)n_tok, (int)w->n_in, &one,
                                    (const float *)w->data, (int)w->n_in, x, (int)w->n_in, &zero, y, (int)w->n_out));
        return;
    }
    const int be_elems = (int)kn_type_block_elems(w->type);
    dim3 grid((unsigned)w->n_out, (unsigned)((n_tok + TOK_TILE - 1) / TOK_TILE));
    k_matmul_dq<<<grid, THREADS, 0, c->stream>>>(w->type, (const uint8_t *)w->data, kn_row_bytes(w->type, w->n_in),
                                                w->n_in, be_elems, kn_type_block_bytes(w->type), x, n_tok, y,
                                                w->n_out);
    KN_LAUNCHED();
}

/* ---------------------------------------------------------------- rows, norms, elementwise */

static __global__ void k_get_rows(kn_type type, const uint8_t *w, size_t row_bytes, int64_t n_in, int block_elems,
                                  size_t block_bytes, const int32_t *ids, float scale, float *y) {
    const uint8_t *row = w + (size_t)ids[blockIdx.x] * row_bytes;
    float *yr = y + (int64_t)blockIdx.x * n_in;
    if (block_elems == 1) {
        for (int64_t i = threadIdx.x; i < n_in; i += blockDim.x)
            yr[i] = load_float(type, row, i) * scale;
        return;
    }
    float buf[MAX_BLOCK];
    for (int64_t b = threadIdx.x; b < n_in / block_elems; b += blockDim.x) {
        kn_dq_block(type, row + (size_t)b * block_bytes, buf);
        for (int i = 0; i < block_elems; i++)
            yr[b * block_elems + i] = buf[i] * scale;
    }
}

static void cu_get_rows(kn_backend *be, const kn_weight *w, const int32_t *ids, int64_t n, float scale, float *y) {
    if (n <= 0)
        return;
    k_get_rows<<<(unsigned)n, THREADS, 0, cu(be)->stream>>>(w->type, (const uint8_t *)w->data,
                                                             kn_row_bytes(w->type, w->n_in), w->n_in,
                                                             (int)kn_type_block_elems(w->type),
                                                             kn_type_block_bytes(w->type), ids, scale, y);
    KN_LAUNCHED();
}

static __global__ void k_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y) {
    const float *xr = x + (int64_t)blockIdx.x * n;
    float *yr = y + (int64_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        ss += xr[i] * xr[i];
    const float inv = rsqrtf(block_sum(ss) / (float)n + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = xr[i] * inv * (w ? w[i] : 1.0f);
}

static void cu_rmsnorm(kn_backend *be, const float *x, const float *w, int64_t n_row, int64_t n, float eps,
                       float *y) {
    if (n_row <= 0)
        return;
    k_rmsnorm<<<(unsigned)n_row, 256, 0, cu(be)->stream>>>(x, w, n, eps, y);
    KN_LAUNCHED();
}

/* One thread per rotated pair; theta in double, as the reference computes it. */
static __global__ void k_rope(float *x, const int32_t *pos, int64_t n_pairs, int n_head, int head_dim, int n_rot,
                              float base, float freq_scale, const float *freq_factors, int mode) {
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_pairs)
        return;
    const int half = n_rot / 2, i = (int)(g % half);
    const int64_t th = g / half, t = th / n_head;
    float *v = x + th * head_dim;
    double theta = (double)pos[t] * freq_scale * pow((double)base, -2.0 * i / n_rot);
    if (freq_factors)
        theta /= freq_factors[i];
    double s, c;
    sincos(theta, &s, &c);
    const int a = mode == KN_ROPE_NEOX ? i : 2 * i, b = mode == KN_ROPE_NEOX ? i + half : 2 * i + 1;
    const double x0 = v[a], x1 = v[b];
    v[a] = (float)(x0 * c - x1 * s);
    v[b] = (float)(x0 * s + x1 * c);
}

static void cu_rope(kn_backend *be, float *x, const int32_t *pos, int64_t n_tok, int n_head, int head_dim, int n_rot,
                    float base, float freq_scale, const float *freq_factors, int mode) {
    const int64_t n_pairs = n_tok * n_head * (n_rot / 2);
    if (n_pairs <= 0)
        return;
    k_rope<<<(unsigned)((n_pairs + 255) / 256), 256, 0, cu(be)->stream>>>(x, pos, n_pairs, n_head, head_dim, n_rot,
                                                                           base, freq_scale, freq_factors, mode);
    KN_LAUNCHED();
}

static __global__ void k_glu(const float *g, const float *u, int64_t n, int act, float *y) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = (act == 0 ? kn_silu(g[i]) : kn_gelu(g[i])) * u[i];
}

static void cu_glu(kn_backend *be, const float *g, const float *u, int64_t n, int act, float *y) {
    if (n <= 0)
        return;
    k_glu<<<(unsigned)((n + 255) / 256), 256, 0, cu(be)->stream>>>(g, u, n, act, y);
    KN_LAUNCHED();
}

static __global__ void k_add(const float *a, const float *b, int64_t n, float *y) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = a[i] + b[i];
}

static void cu_add(kn_backend *be, const float *a, const float *b, int64_t n, float *y) {
    if (n <= 0)
        return;
    k_add<<<(unsigned)((n + 255) / 256), 256, 0, cu(be)->stream>>>(a, b, n, y);
    KN_LAUNCHED();
}

static __global__ void k_add_bias(const float *x, const float *bias, int64_t total, int64_t n, float *y) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total)
        y[i] = x[i] + bias[i % n];
}

static void cu_add_bias(kn_backend *be, const float *x, const float *bias, int64_t n_row, int64_t n, float *y) {
    const int64_t total = n_row * n;
    if (total <= 0)
        return;
    k_add_bias<<<(unsigned)((total + 255) / 256), 256, 0, cu(be)->stream>>>(x, bias, total, n, y);
    KN_LAUNCHED();
}

/* ---------------------------------------------------------------- KV cache and attention */

// Grid: one thread per element of [n_tok, row], 256 per block.
static __global__ void k_kv_store(void *k_cache, void *v_cache, kn_type kv_type, const float *k, const float *v,
                                  const int32_t *slots, int64_t total, int64_t row) {
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= total)
        return;
    const int64_t t = g / row, i = g % row;
    const int64_t dst = (int64_t)slots[t] * row + i;
    store_float(kv_type, k_cache, dst, k[g]);
    store_float(kv_type, v_cache, dst, v[g]);
}

/* FP8: one thread per (token, kv head) record (scale from the head's amax). */
static __global__ void k_kv_store_e4m3(void *k_cache, void *v_cache, const float *k, const float *v,
                                       const int32_t *slots, int64_t n_rec, int n_kv_head, int head_dim) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_rec)
        return;
    const int64_t t = r / n_kv_head, h = r % n_kv_head;
    const size_t rec = (size_t)slots[t] * n_kv_head + (size_t)h;
    kn_e4m3_rec_put(k_cache, rec, k + r * head_dim, head_dim);
    kn_e4m3_rec_put(v_cache, rec, v + r * head_dim, head_dim);
}

static void cu_kv_store(kn_backend *be, void *k_cache, void *v_cache, kn_type kv_type, const float *k, const float *v,
                        const int32_t *slots, int64_t n_tok, int64_t row, int head_dim) {
    const int64_t total = n_tok * row;
    if (total <= 0)
        return;
    if (kv_type == KN_E4M3) {
        const int64_t n_rec = total / head_dim;
        k_kv_store_e4m3<<<(unsigned)((n_rec + 127) / 128), 128, 0, cu(be)->stream>>>(
            k_cache, v_cache, k, v, slots, n_rec, (int)(row / head_dim), head_dim);
    } else {
        k_kv_store<<<(unsigned)((total + 255) / 256), 256, 0, cu(be)->stream>>>(k_cache, v_cache, kv_type, k, v,
                                                                                 slots, total, row);
    }
    KN_LAUNCHED();
}

/* Element i of kv head kvh at physical slot `slot`. */
static __device__ float kv_get(const kn_attn_args &a, const void *cache, size_t slot, int kvh, int i) {
    if (a.kv_type == KN_E4M3)
        return kn_e4m3_rec_get(cache, slot * a.n_kv_head + kvh, a.head_dim, i);
    const size_t idx = slot * a.n_kv_head * a.head_dim + (size_t)kvh * a.head_dim + i;
    return load_float(a.kv_type, cache, (int64_t)idx);
}

#define MAX_HEAD_DIM 256

/* One warp per (token, head): lane l takes positions start + l, start + l + 32, …
 * with its own running max, sum and weighted V (online softmax); the lanes are then
 * merged. */
static __global__ void k_attention(kn_attn_args a) {
    const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x, hd = a.head_dim;
    const int kvh = h / (a.n_head / a.n_kv_head), pos = a.tok_pos[t];
    const int32_t *bt = a.block_tables + (size_t)a.tok_seq[t] * a.max_blocks;
    const float *q = a.q + ((size_t)t * a.n_head + h) * hd;
    int start = a.window > 0 ? pos - a.window + 1 : 0;
    if (start < 0)
        start = 0;
    float m = -INFINITY, l = 0.0f, acc[MAX_HEAD_DIM];
    for (int i = 0; i < hd; i++)
        acc[i] = 0.0f;
    for (int j = start + lane; j <= pos; j += 32) {
        const size_t slot = (size_t)bt[j / a.block_size] * a.block_size + j % a.block_size;
        float s = 0.0f;
        for (int i = 0; i < hd; i++)
            s += q[i] * kv_get(a, a.k_cache, slot, kvh, i);
        s *= a.scale;
        if (a.softcap > 0.0f)
            s = a.softcap * tanhf(s / a.softcap);
        const float mn = fmaxf(m, s), old = m == -INFINITY ? 0.0f : expf(m - mn), p = expf(s - mn);
        for (int i = 0; i < hd; i++)
            acc[i] = acc[i] * old + p * kv_get(a, a.v_cache, slot, kvh, i);
        l = l * old + p;
        m = mn;
    }
    const float mt = warp_max(m);
    const float f = m == -INFINITY ? 0.0f : expf(m - mt);
    const float lt = warp_sum(l * f);
    float *o = a.out + ((size_t)t * a.n_head + h) * hd;
    for (int i = 0; i < hd; i++) {
        const float v = warp_sum(acc[i] * f);
        if (lane == 0)
            o[i] = v / lt;
    }
}

static void cu_attention(kn_backend *be, const kn_attn_args *a) {
    if (a->n_tok <= 0)
        return;
    if (a->head_dim > MAX_HEAD_DIM) {
        fprintf(stderr, "kolm: CUDA attention supports head_dim up to %d, not %d\n", MAX_HEAD_DIM, a->head_dim);
        abort();
    }
    dim3 grid((unsigned)a->n_tok, (unsigned)a->n_head);
    k_attention<<<grid, 32, 0, cu(be)->stream>>>(*a);
    KN_LAUNCHED();
}

/* ---------------------------------------------------------------- backend */

static void cu_mem_info(kn_backend *be, size_t *free_bytes, size_t *total_bytes) {
    KN_CUDA_CHECK(cudaSetDevice(cu(be)->device));
    KN_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

static const kn_backend_ops cuda_ops = {
    "cuda",      cu_destroy,  cu_alloc,   cu_free, cu_upload,   cu_download, cu_sync,      cu_matmul,
    cu_get_rows, cu_rmsnorm,  cu_rope,    cu_glu,  cu_add,      cu_add_bias, cu_kv_store,  cu_attention,
    cu_mem_info,
};

extern "C" int kn_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" kn_backend *kn_cuda_create(int device) {
    if (device < 0 || device >= kn_cuda_device_count())
        return NULL;
    kn_cuda *c = (kn_cuda *)calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->device = device;
    if (cudaSetDevice(device) != cudaSuccess || cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess) {
        (void)cudaGetLastError();
        free(c);
        return NULL;
    }
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(c->stream);
        free(c);
        return NULL;
    }
    KN_CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    c->base.ops = &cuda_ops;
    c->base.n_threads = 1;
    return &c->base;
}
