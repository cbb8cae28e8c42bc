/* kn_cuda_attn.cu: the CUDA backend's KV cache ops, kv_store and attention (kn.h).
 *
 * attention is one warp per (token, head) with an online softmax per lane over the
 * block table. */
#include <math.h>

#include "kernels/cuda/kn_cuda.h"
#include "kernels/kn_fp8.h"

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

void cu_kv_store(kn_backend *be, void *k_cache, void *v_cache, kn_type kv_type, const float *k, const float *v,
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

void cu_attention(kn_backend *be, const kn_attn_args *a) {
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
