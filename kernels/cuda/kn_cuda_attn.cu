/* kn_cuda_attn.cu: the CUDA backend's KV cache ops, kv_store and attention (kn.h).
 *
 * attention is split-KV paged attention (flash-decoding), GQA-grouped:
 *
 *  - k_attn_part: one CTA per (query token, KV head, chunk of up to 8 of that KV
 *    head's query heads, partition of the token's context). Every K/V row of the
 *    partition is read once for all the query heads of the chunk: a warp reads one
 *    row, lane l the head_dim / 32 (rounded up to a power of two) elements from
 *    l * VEC, with the widest load the alignment allows, and converts them to f32
 *    in registers. The partition goes by tiles of TILE positions: scores of the
 *    tile into shared memory, then one softmax step per head over the tile (the
 *    running max, sum and output scale of the online softmax), then the weighted
 *    sum of the tile's V rows; a warp keeps its share of the output in registers
 *    and the warps are added up in a fixed order at the end.
 *  - for a token whose context has more than one partition, each partition's CTA
 *    writes its (max, sum, unnormalized output) to the workspace, and the last of
 *    them to finish (a ticket per token and head chunk, CUDA's threadfence-
 *    reduction pattern; it puts the ticket back to 0) merges them in partition
 *    order (attn_merge). A token with one partition is written directly. No
 *    second kernel: at decode a layer's attention is one launch.
 *
 * Batch invariance (the scheduler's preemption and prefix reuse rely on it): a
 * token's partitions are a function of its own position and the window only
 * (split_ctx), never of n_tok or of the other tokens, and every reduction runs
 * in a fixed order, so a token's result is bit-identical whatever shares the
 * call. The grids depend on the args' fields only (n_tok, heads, max_blocks,
 * block_size, window), never on values in device memory, so a call can be
 * recorded in a CUDA graph: CTAs of partitions beyond a token's context exit.
 *
 * Prefill tokens run through the same kernel, each query token its own CTA row
 * (its neighbours of the same sequence read the same K/V, mostly from L2). A
 * query-tiled prefill kernel (a K/V tile in shared memory for several tokens)
 * would have to keep every token's bits: the same partitions (hence their
 * alignment to absolute positions, shared by the tokens of a sequence), the same
 * tiles, the same positions per warp and the same reduction trees. */
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/kn_cuda.h"
#include "kernels/kn_fp8.h"

/* ---------------------------------------------------------------- kv_store */

// Grid: one thread per element of [n_tok, row], 256 per block.
static __global__ void k_kv_store(void *k_cache, void *v_cache, kn_type kv_type, const float *k, const float *v,
                                  const int32_t *slots, int64_t total, int64_t row) {
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= total)
        return;
    const int64_t t = g / row, i = g % row;
    if (slots[t] < 0) // a padding token stores nothing
        return;
    const int64_t dst = (int64_t)slots[t] * row + i;
    store_float(kv_type, k_cache, dst, k[g]);
    store_float(kv_type, v_cache, dst, v[g]);
}

/* One E4M3 record (kn_fp8.h) written by a warp: lane l takes elements l, l + 32, …
 * The expressions are kn_e4m3_rec_put's, so the bytes are the reference's: the
 * lanes' maxima skip NaN as its comparison does (and fmaxf of the non-NaN lane
 * maxima is the same maximum in any order), the division is IEEE, the code is
 * kn_f32_to_e4m3. */
static __device__ void e4m3_rec_put_warp(void *cache, size_t rec, const float *x, int head_dim, int lane) {
    float amax = 0.0f;
    for (int i = lane; i < head_dim; i += 32)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    amax = warp_max(amax);
    const float scale = amax > 0.0f ? amax / KN_E4M3_MAX : 1.0f;
    uint8_t *p = (uint8_t *)cache + rec * kn_e4m3_rec_bytes(head_dim);
    if (lane == 0)
        memcpy(p, &scale, sizeof scale);
    for (int i = lane; i < head_dim; i += 32)
        p[sizeof(float) + i] = kn_f32_to_e4m3(x[i] / scale);
}

#define STORE_WARPS 4 // records per 128-thread block of k_kv_store_e4m3

/* FP8: a warp per (token, kv head) record, K then V. */
static __global__ void k_kv_store_e4m3(void *k_cache, void *v_cache, const float *k, const float *v,
                                       const int32_t *slots, int64_t n_rec, int n_kv_head, int head_dim) {
    const int64_t r = (int64_t)blockIdx.x * STORE_WARPS + threadIdx.x / 32; // the same in the whole warp
    if (r >= n_rec)
        return;
    const int64_t t = r / n_kv_head, h = r % n_kv_head;
    if (slots[t] < 0) // a padding token stores nothing
        return;
    const size_t rec = (size_t)slots[t] * n_kv_head + (size_t)h;
    e4m3_rec_put_warp(k_cache, rec, k + r * head_dim, head_dim, threadIdx.x & 31);
    e4m3_rec_put_warp(v_cache, rec, v + r * head_dim, head_dim, threadIdx.x & 31);
}

void cu_kv_store(kn_backend *be, void *k_cache, void *v_cache, kn_type kv_type, const float *k, const float *v,
                 const int32_t *slots, int64_t n_tok, int64_t row, int head_dim) {
    const int64_t total = n_tok * row;
    if (total <= 0)
        return;
    if (kv_type == KN_E4M3) {
        const int64_t n_rec = total / head_dim;
        k_kv_store_e4m3<<<(unsigned)((n_rec + STORE_WARPS - 1) / STORE_WARPS), STORE_WARPS * 32, 0,
                          cu(be)->stream>>>(k_cache, v_cache, k, v, slots, n_rec, (int)(row / head_dim), head_dim);
    } else {
        k_kv_store<<<(unsigned)((total + 255) / 256), 256, 0, cu(be)->stream>>>(k_cache, v_cache, kv_type, k, v,
                                                                                 slots, total, row);
    }
    KN_LAUNCHED();
}

/* ---------------------------------------------------------------- attention */

#define NW 4                  // warps per k_attn_part CTA
#define NT (NW * 32)          // its threads
#define TILE 128              // positions per softmax step (scores in shared memory)
#define PER_WARP (TILE / NW)  // positions of a tile per warp
#define MAX_NQ 8              // query heads per CTA (a larger GQA group takes several chunks)
#define MAX_HEAD_DIM 256      // 8 elements per lane
#define PART_MIN 256          // positions per partition, the least (a multiple of TILE)
#define MAX_PARTS 32          // partitions per context, the most (without window misalignment)
#define MAX_SLOTS (MAX_PARTS + 1)

/* The split of a token's context [start, pos]: partitions of len positions at
 * multiples of len (absolute positions, so the tokens of one sequence share
 * partition and tile boundaries), the first one's index and their count. len is
 * PART_MIN until the context would need more than MAX_PARTS partitions, then the
 * least multiple of PART_MIN that keeps MAX_PARTS: a function of the token's own
 * position and the window only. A window can make the first partition start
 * before `start`, hence one partition more than MAX_PARTS. */
struct ctx_split {
    int start, len, first, n;
};

static __device__ __forceinline__ ctx_split split_ctx(int pos, int window) {
    ctx_split c;
    c.start = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    const int n_ctx = pos - c.start + 1;
    c.len = PART_MIN * ((n_ctx + PART_MIN * MAX_PARTS - 1) / (PART_MIN * MAX_PARTS));
    c.first = c.start / c.len;
    c.n = pos / c.len - c.first + 1;
    return c;
}

/* The split of a token at pos; false if pos is outside its block table (the
 * caller's contract: 0 <= pos < max_blocks * block_size; the count then fits the
 * n_slot of max_slots, checked too so that a broken contract cannot write past a
 * token's workspace slots). */
static __device__ __forceinline__ bool token_split(const kn_attn_args &a, int pos, int n_slot, ctx_split *c) {
    if (pos < 0 || (int64_t)pos >= (int64_t)a.max_blocks * a.block_size)
        return false;
    *c = split_ctx(pos, a.window);
    return c->n <= n_slot;
}

/* The most partitions any token of a call can have (split_ctx): its context is at
 * most the block table's span (pos < max_blocks * block_size, the caller's
 * contract) and at most the window. Without a window the count is
 * ceil(n_ctx / len) <= min(MAX_PARTS, ceil(n_ctx / PART_MIN)); a window adds at
 * most one (floor(pos / len) - floor(start / len) <= ceil(n_ctx / len)). */
static int max_slots(const kn_attn_args *a) {
    int64_t span = (int64_t)a->max_blocks * a->block_size;
    if (a->window > 0 && a->window < span)
        span = a->window;
    int64_t n = (span + PART_MIN - 1) / PART_MIN;
    if (n > MAX_PARTS)
        n = MAX_PARTS;
    if (n < 1)
        n = 1;
    return (int)n + (a->window > 0);
}

/* One lane's VEC elements of a cache row as they are stored, loaded with the widest
 * access the alignment allows, and their f32 values. Float rows start at a multiple
 * of head_dim elements (a multiple of VEC) in a 16-byte aligned cache, so a lane's
 * chunk is aligned to its size up to 16 bytes; an E4M3 record is 4-byte aligned
 * (cu_attention requires head_dim % 4 == 0) and its codes follow the f32 scale. */
template <kn_type KV>
struct kv_elem;
template <>
struct kv_elem<KN_F32> {
    static constexpr int bytes = 4, max_align = 16;
};
template <>
struct kv_elem<KN_F16> {
    static constexpr int bytes = 2, max_align = 16;
};
template <>
struct kv_elem<KN_BF16> {
    static constexpr int bytes = 2, max_align = 16;
};
template <>
struct kv_elem<KN_E4M3> {
    static constexpr int bytes = 1, max_align = 4;
};

template <kn_type KV, int VEC>
struct lane_chunk {
    static constexpr int BYTES = VEC * kv_elem<KV>::bytes;
    static constexpr int ALIGN = BYTES < kv_elem<KV>::max_align ? BYTES : kv_elem<KV>::max_align;
    static constexpr int WORDS = (BYTES + 3) / 4;
    uint32_t w[WORDS];

    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < WORDS; i++)
            w[i] = 0;
    }

    __device__ __forceinline__ void load(const uint8_t *p) {
        if constexpr (ALIGN == 16) {
#pragma unroll
            for (int i = 0; i < BYTES / 16; i++) {
                const uint4 x = ((const uint4 *)p)[i];
                w[4 * i] = x.x;
                w[4 * i + 1] = x.y;
                w[4 * i + 2] = x.z;
                w[4 * i + 3] = x.w;
            }
        } else if constexpr (ALIGN == 8) {
            const uint2 x = *(const uint2 *)p;
            w[0] = x.x;
            w[1] = x.y;
        } else if constexpr (ALIGN == 4) {
#pragma unroll
            for (int i = 0; i < WORDS; i++)
                w[i] = ((const uint32_t *)p)[i];
        } else if constexpr (ALIGN == 2) {
            w[0] = *(const uint16_t *)p;
        } else {
            w[0] = *p;
        }
    }

    // The VEC values as f32 (an E4M3 code's value without the record's scale).
    __device__ __forceinline__ void get(float (&x)[VEC]) const {
        if constexpr (KV == KN_E4M3 && VEC >= 2) { // two codes a conversion
#pragma unroll
            for (int e = 0; e < VEC; e += 2) {
                const float2 f = e4m3x2_to_f32(w[e / 4] >> (8 * (e & 3)));
                x[e] = f.x, x[e + 1] = f.y;
            }
        } else {
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                const uint32_t word = w[e * kv_elem<KV>::bytes / 4];
                if constexpr (KV == KN_F32) {
                    x[e] = __uint_as_float(word);
                } else if constexpr (KV == KN_F16) {
                    x[e] = __half2float(__ushort_as_half((unsigned short)(word >> (16 * (e & 1)))));
                } else if constexpr (KV == KN_BF16) {
                    x[e] = __uint_as_float((e & 1) ? word & 0xffff0000u : word << 16);
                } else {
                    x[e] = e4m3_to_f32(word >> (8 * (e & 3)));
                }
            }
        }
    }
};

/* Loads VEC consecutive floats from a VEC-aligned address. */
template <int VEC>
static __device__ __forceinline__ void load_f32(const float *p, float (&x)[VEC]) {
    if constexpr (VEC >= 4) {
#pragma unroll
        for (int i = 0; i < VEC / 4; i++) {
            const float4 v = ((const float4 *)p)[i];
            x[4 * i] = v.x;
            x[4 * i + 1] = v.y;
            x[4 * i + 2] = v.z;
            x[4 * i + 3] = v.w;
        }
    } else if constexpr (VEC == 2) {
        const float2 v = *(const float2 *)p;
        x[0] = v.x;
        x[1] = v.y;
    } else {
        x[0] = *p;
    }
}

/* Warp sums of NQ values at once by reduce-scatter: each halving step keeps half of
 * the values and swaps the other half with the partner lane (NQ - 1 shuffles in
 * all, instead of 5 per value), then a butterfly over the lanes left. Returns, in
 * every lane, the sum over the 32 lanes of value number lane / (32 / NQ). The
 * order of the additions is fixed. */
template <int NQ>
static __device__ __forceinline__ float warp_sum_scatter(float (&v)[NQ], int lane) {
    int o = 16;
#pragma unroll
    for (int n = NQ; n > 1; n >>= 1, o >>= 1) {
        const bool up = lane & o; // the upper lane keeps the upper half
#pragma unroll
        for (int i = 0; i < n / 2; i++) {
            const float send = up ? v[i] : v[i + n / 2], keep = up ? v[i + n / 2] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
        }
    }
    float s = v[0];
#pragma unroll
    for (; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

/* Token t's output for query heads h0 .. h0 + nq - 1 from its n partitions' slots
 * (slot h * n_slot + i of ml and o, as k_attn_part wrote them; read past L1, they
 * come from other SMs): out = sum_i w_i o_i / sum_i w_i l_i with w_i = exp(m_i -
 * max m), the partitions in order. */
template <int NQ>
static __device__ void attn_merge(const kn_attn_args &a, int t, int h0, int nq, const float2 *ml, const float *o,
                                  int n_slot, int n) {
    __shared__ float s_w[NQ][MAX_SLOTS];
    __shared__ float s_inv_l[NQ];
    const int hd = a.head_dim;
    if (threadIdx.x < (unsigned)nq) {
        const int g = (int)threadIdx.x;
        const float2 *mlh = ml + (size_t)(h0 + g) * n_slot;
        float m = -INFINITY, l = 0.0f;
        for (int i = 0; i < n; i++)
            m = fmaxf(m, __ldcg(&mlh[i]).x);
        for (int i = 0; i < n; i++) {
            const float2 x = __ldcg(&mlh[i]);
            s_w[g][i] = expf(x.x - m);
            l += s_w[g][i] * x.y;
        }
        s_inv_l[g] = 1.0f / l;
    }
    __syncthreads();
    for (int j = (int)threadIdx.x; j < nq * hd; j += (int)blockDim.x) {
        const int g = j / hd, d = j % hd;
        const float *oh = o + (size_t)(h0 + g) * n_slot * hd + d;
        float acc = 0.0f;
        for (int i = 0; i < n; i++)
            acc = fmaf(s_w[g][i], __ldcg(&oh[(size_t)i * hd]), acc);
        a.out[((size_t)t * a.n_head + h0 + g) * hd + d] = acc * s_inv_l[g];
    }
}

/* Partition blockIdx.z of token t0 + blockIdx.x's context, for the query heads
 * h0 .. h0 + nq - 1 of KV head kvh (blockIdx.y = kvh * n_hc + chunk). Lane l owns
 * dims [l * VEC, l * VEC + VEC) (lanes past head_dim hold zeros); warp w owns the
 * positions w, w + NW, … of every tile. The heads of a chunk beyond nq (a group
 * that is not a power of two) are computed with a zero query and never written.
 *
 * A token with one partition gets its output here; otherwise the partition's
 * unnormalized output, max and sum go to the workspace slot
 * ((t - t0) * n_head + h) * n_slot + blockIdx.z, and the CTA that takes the
 * last of ticket[(t - t0) * gridDim.y + blockIdx.y] merges the token's slots for
 * its heads (attn_merge). */
// NOTE: a minimum of 1 CTA per SM: given the block size alone, ptxas capped some
// instantiations' registers low enough to spill a few words; with it none spills
// (the largest, 8 x 8 heads of f32, takes about 210 registers).
template <int VEC, int NQ, kn_type KV>
static __global__ void __launch_bounds__(NT, 1)
    k_attn_part(const kn_attn_args a, int t0, int n_slot, float2 *part_ml, float *part_o, unsigned *ticket) {
    constexpr int HPW = (NQ + NW - 1) / NW; // heads whose softmax step a warp does
    // Positions a warp loads before it uses them: at least 64 bytes in flight per
    // lane (an FP8 row of 128 dims is 4 bytes a lane; 4 such rows would leave the
    // SMs waiting on memory). A divisor of PER_WARP.
    constexpr int CHUNK = lane_chunk<KV, VEC>::BYTES, U = CHUNK >= 16 ? 4 : CHUNK >= 8 ? 8 : 16;
    static_assert(PER_WARP % U == 0, "U must divide a warp's positions of a tile");
    __shared__ float s_p[NQ][TILE + 1];     // the tile's scores, then weights (+1: no bank conflicts)
    __shared__ float s_corr[NQ];            // the tile's rescale of what came before
    __shared__ float s_m[NQ], s_l[NQ];      // final max and sum
    __shared__ float s_inv_l[NQ];
    __shared__ float s_red[NW][NQ][32 * VEC];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, hd = a.head_dim;
    const int t = t0 + (int)blockIdx.x, group = a.n_head / a.n_kv_head, n_hc = (group + NQ - 1) / NQ;
    const int kvh = (int)blockIdx.y / n_hc, hc = (int)blockIdx.y % n_hc;
    const int h0 = kvh * group + hc * NQ, nq = group - hc * NQ < NQ ? group - hc * NQ : NQ;
    const int pos = a.tok_pos[t];
    ctx_split c;
    if (!token_split(a, pos, n_slot, &c)) { // outside its block table: NaN
        for (int i = threadIdx.x; blockIdx.z == 0 && i < nq * hd; i += NT)
            a.out[((size_t)t * a.n_head + h0 + i / hd) * hd + i % hd] = NAN;
        return;
    }
    if ((int)blockIdx.z >= c.n)
        return;
    const int p0 = (c.first + (int)blockIdx.z) * c.len;
    const int lo = c.start > p0 ? c.start : p0, hi = pos < p0 + c.len - 1 ? pos : p0 + c.len - 1;
    const int d0 = lane * VEC;
    const bool active = d0 < hd;
    const int32_t *bt = a.block_tables + (size_t)a.tok_seq[t] * a.max_blocks;
    const uint8_t *kc = (const uint8_t *)a.k_cache, *vc = (const uint8_t *)a.v_cache;
    // NOTE: divisions stay out of the loops: IEEE division has a called slow path,
    // and the registers live across a call are spilled around it.
    const float inv_cap = a.softcap > 0.0f ? 1.0f / a.softcap : 0.0f;

    float q[NQ][VEC], acc[NQ][VEC];
#pragma unroll
    for (int g = 0; g < NQ; g++) {
#pragma unroll
        for (int e = 0; e < VEC; e++)
            q[g][e] = acc[g][e] = 0.0f;
        if (g < nq && active)
            load_f32<VEC>(a.q + ((size_t)t * a.n_head + h0 + g) * hd + d0, q[g]);
    }
    float m_run[HPW], l_run[HPW];
#pragma unroll
    for (int k = 0; k < HPW; k++) {
        m_run[k] = -INFINITY;
        l_run[k] = 0.0f;
    }

    // Byte offset of this lane's chunk of position j's row (E4M3: of the record). A
    // block size that is a power of two (the default 16) is a shift: a division by a
    // value known only at run time costs tens of instructions, twice per row.
    const int bs = a.block_size, bs_shift = (bs & (bs - 1)) == 0 ? __ffs(bs) - 1 : -1;
    auto row_off = [&](int j) -> size_t {
        const int blk = bs_shift >= 0 ? j >> bs_shift : j / bs;
        const size_t r = ((size_t)bt[blk] * bs + (j - blk * bs)) * a.n_kv_head + kvh;
        if constexpr (KV == KN_E4M3)
            return r * kn_e4m3_rec_bytes(hd);
        else
            return (r * hd + d0) * kv_elem<KV>::bytes;
    };
    constexpr size_t code_off = KV == KN_E4M3 ? sizeof(float) : 0; // E4M3 codes follow the scale
    // This lane's chunks of the U rows tile0 + warp + NW * (i0 + u) of a cache, and
    // their scales (E4M3; else 1); zero outside [lo, hi].
    auto load_rows = [&](const uint8_t *cache, int tile0, int i0, lane_chunk<KV, VEC> *r, float *sc) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = tile0 + warp + NW * (i0 + u);
            r[u].zero();
            sc[u] = 1.0f;
            if (j >= lo && j <= hi) {
                const size_t off = row_off(j);
                if (active)
                    r[u].load(cache + off + code_off + (KV == KN_E4M3 ? (size_t)d0 : 0));
                if constexpr (KV == KN_E4M3)
                    sc[u] = *(const float *)(cache + off);
            }
        }
    };

    // tiles at multiples of TILE from the partition start; every one meets [lo, hi]
    for (int tile0 = p0 + (lo - p0) / TILE * TILE; tile0 <= hi; tile0 += TILE) {
        // 1. scores of the tile's positions (outside [lo, hi]: -inf)
        for (int i0 = 0; i0 < PER_WARP; i0 += U) {
            lane_chunk<KV, VEC> kr[U];
            float ks[U];
            load_rows(kc, tile0, i0, kr, ks);
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int jl = warp + NW * (i0 + u), j = tile0 + jl;
                if (j < lo || j > hi) { // the same in the whole warp
                    if (lane < NQ)
                        s_p[lane][jl] = -INFINITY;
                    continue;
                }
                float k[VEC], dot[NQ];
                kr[u].get(k);
#pragma unroll
                for (int g = 0; g < NQ; g++) {
                    dot[g] = q[g][0] * k[0];
#pragma unroll
                    for (int e = 1; e < VEC; e++)
                        dot[g] = fmaf(q[g][e], k[e], dot[g]);
                }
                float s = warp_sum_scatter<NQ>(dot, lane);
                if constexpr (KV == KN_E4M3)
                    s *= ks[u];
                s *= a.scale;
                if (a.softcap > 0.0f)
                    s = a.softcap * tanhf(s * inv_cap);
                if ((lane & (32 / NQ - 1)) == 0)
                    s_p[lane / (32 / NQ)][jl] = s;
            }
        }
        __syncthreads();

        // 2. online softmax step per head: new max, weights, sum, rescale
#pragma unroll
        for (int k = 0; k < HPW; k++) {
            const int g = warp + NW * k;
            if (g >= NQ)
                break;
            float x[TILE / 32], mt = -INFINITY;
#pragma unroll
            for (int i = 0; i < TILE / 32; i++) {
                x[i] = s_p[g][lane + 32 * i];
                mt = fmaxf(mt, x[i]);
            }
            const float mn = fmaxf(m_run[k], warp_max(mt)); // finite: the tile has a position
            float sum = 0.0f;
#pragma unroll
            for (int i = 0; i < TILE / 32; i++) {
                x[i] = expf(x[i] - mn);
                s_p[g][lane + 32 * i] = x[i];
                sum += x[i];
            }
            const float corr = expf(m_run[k] - mn); // 0 on the first tile
            l_run[k] = l_run[k] * corr + warp_sum(sum);
            m_run[k] = mn;
            if (lane == 0)
                s_corr[g] = corr;
        }
        __syncthreads();

        // 3. output += weights x V
#pragma unroll
        for (int g = 0; g < NQ; g++) {
            const float corr = s_corr[g];
#pragma unroll
            for (int e = 0; e < VEC; e++)
                acc[g][e] *= corr;
        }
        for (int i0 = 0; i0 < PER_WARP; i0 += U) {
            lane_chunk<KV, VEC> vr[U];
            float vs[U];
            load_rows(vc, tile0, i0, vr, vs);
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int jl = warp + NW * (i0 + u), j = tile0 + jl;
                if (j < lo || j > hi) // masked rows are never read: their slots may hold anything
                    continue;
                float v[VEC];
                vr[u].get(v);
#pragma unroll
                for (int g = 0; g < NQ; g++) {
                    float w = s_p[g][jl];
                    if constexpr (KV == KN_E4M3)
                        w *= vs[u];
#pragma unroll
                    for (int e = 0; e < VEC; e++)
                        acc[g][e] = fmaf(w, v[e], acc[g][e]);
                }
            }
        }
        // NOTE: no barrier before the next tile: in steps 1 and 3 a warp touches only
        // its own positions' columns of s_p, and s_corr is next written after the
        // next tile's first barrier, which every warp reaches after its step 3.
    }

    // the warps' outputs added in warp order; the partition's max and sum
#pragma unroll
    for (int g = 0; g < NQ; g++)
#pragma unroll
        for (int e = 0; e < VEC; e++)
            s_red[warp][g][d0 + e] = acc[g][e];
#pragma unroll
    for (int k = 0; k < HPW; k++)
        if (warp + NW * k < NQ && lane == 0) {
            s_m[warp + NW * k] = m_run[k];
            s_l[warp + NW * k] = l_run[k];
            s_inv_l[warp + NW * k] = 1.0f / l_run[k];
        }
    __syncthreads();
    for (int i = threadIdx.x; i < nq * hd; i += NT) {
        const int g = i / hd, d = i % hd, h = h0 + g;
        float o = s_red[0][g][d];
#pragma unroll
        for (int w = 1; w < NW; w++)
            o += s_red[w][g][d];
        if (c.n == 1) {
            a.out[((size_t)t * a.n_head + h) * hd + d] = o * s_inv_l[g];
        } else {
            const size_t slot = ((size_t)(t - t0) * a.n_head + h) * n_slot + blockIdx.z;
            part_o[slot * hd + d] = o;
            if (d == 0)
                part_ml[slot] = make_float2(s_m[g], s_l[g]);
        }
    }
    if (c.n == 1)
        return;
    __shared__ unsigned s_last;
    __threadfence(); // this partition's slots before the ticket
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned *tk = &ticket[(size_t)(t - t0) * gridDim.y + blockIdx.y];
        s_last = atomicAdd(tk, 1u) == (unsigned)c.n - 1;
        if (s_last)
            *tk = 0; // for the next call
    }
    __syncthreads();
    if (!s_last) // not the last of the token's partitions
        return;
    __threadfence(); // the other partitions' slots after their tickets
    attn_merge<NQ>(a, t, h0, nq, part_ml + (size_t)(t - t0) * a.n_head * n_slot,
                   part_o + (size_t)(t - t0) * a.n_head * n_slot * hd, n_slot, c.n);
}

static void unsupported(const kn_attn_args *a, const char *why) {
    fprintf(stderr, "kolm: CUDA attention: %s (n_head %d, n_kv_head %d, head_dim %d, kv type %s)\n", why, a->n_head,
            a->n_kv_head, a->head_dim, kn_type_name(a->kv_type));
    abort();
}

/* The launches of one group of tokens [t0, t0 + nt). */
struct attn_launch {
    const kn_attn_args *a;
    cudaStream_t stream;
    int t0, nt, n_slot, n_hc;
    float2 *part_ml;
    float *part_o;
    unsigned *ticket;
};

template <int VEC, int NQ, kn_type KV>
static void launch_part(const attn_launch &l) {
    const dim3 grid((unsigned)l.nt, (unsigned)(l.a->n_kv_head * l.n_hc), (unsigned)l.n_slot);
    k_attn_part<VEC, NQ, KV><<<grid, NT, 0, l.stream>>>(*l.a, l.t0, l.n_slot, l.part_ml, l.part_o, l.ticket);
}

template <int VEC, int NQ>
static void launch_part_kv(const attn_launch &l) {
    switch (l.a->kv_type) {
    case KN_F32: launch_part<VEC, NQ, KN_F32>(l); break;
    case KN_F16: launch_part<VEC, NQ, KN_F16>(l); break;
    case KN_BF16: launch_part<VEC, NQ, KN_BF16>(l); break;
    default: launch_part<VEC, NQ, KN_E4M3>(l); break; // checked by cu_attention
    }
}

template <int VEC>
static void launch_part_nq(const attn_launch &l, int nq) {
    switch (nq) {
    case 1: launch_part_kv<VEC, 1>(l); break;
    case 2: launch_part_kv<VEC, 2>(l); break;
    case 4: launch_part_kv<VEC, 4>(l); break;
    default: launch_part_kv<VEC, 8>(l); break;
    }
}

void cu_attention(kn_backend *be, const kn_attn_args *a) {
    kn_cuda *c = cu(be);
    if (a->n_tok <= 0)
        return;
    const int hd = a->head_dim;
    if (a->n_kv_head <= 0 || a->n_head <= 0 || a->n_head % a->n_kv_head)
        unsupported(a, "n_head must be a positive multiple of n_kv_head");
    if (hd <= 0 || hd > MAX_HEAD_DIM)
        unsupported(a, "head_dim must be in 1..256");
    int vec = 1; // elements per lane: head_dim / 32 rounded up to a power of two
    while (vec * 32 < hd)
        vec *= 2;
    if (hd % vec)
        unsupported(a, "head_dim must be a multiple of its elements per lane (head_dim / 32 rounded up to 2^k)");
    if (a->kv_type != KN_F32 && a->kv_type != KN_F16 && a->kv_type != KN_BF16 && a->kv_type != KN_E4M3)
        unsupported(a, "the KV type must be f32, f16, bf16 or e4m3");
    if (a->kv_type == KN_E4M3 && hd % 4)
        unsupported(a, "an e4m3 cache needs head_dim % 4 == 0 (4-byte aligned records)");
    if (((uintptr_t)a->q | (uintptr_t)a->out | (uintptr_t)a->k_cache | (uintptr_t)a->v_cache) % 16)
        unsupported(a, "q, out and the caches must be 16-byte aligned (backend allocations are)");
    const int group = a->n_head / a->n_kv_head;
    int nq = 1; // query heads per CTA: the group rounded up to a power of two, at most MAX_NQ
    while (nq < group && nq < MAX_NQ)
        nq *= 2;
    const int n_hc = (group + nq - 1) / nq;
    if ((int64_t)a->n_kv_head * n_hc > 65535)
        unsupported(a, "too many KV heads for the grid");

    // the partials and tickets of as many tokens as fit per launch
    const int n_slot = max_slots(a);
    int group_tok = a->n_tok;
    if (n_slot > 1) {
        const size_t per_tok = (size_t)a->n_head * n_slot * (sizeof(float2) + (size_t)hd * sizeof(float));
        const size_t tickets = KN_CUDA_TICKETS / ((size_t)a->n_kv_head * n_hc);
        if (per_tok > c->work_bytes || tickets == 0)
            unsupported(a, "the partials or tickets of one token do not fit");
        if ((size_t)group_tok > c->work_bytes / per_tok)
            group_tok = (int)(c->work_bytes / per_tok);
        if ((size_t)group_tok > tickets)
            group_tok = (int)tickets;
    }
    attn_launch l = {a, c->stream, 0, 0, n_slot, n_hc, NULL, NULL, c->ticket};
    if (n_slot > 1) {
        l.part_ml = (float2 *)c->work;
        l.part_o = (float *)(l.part_ml + (size_t)group_tok * a->n_head * n_slot);
    }
    for (l.t0 = 0; l.t0 < a->n_tok; l.t0 += group_tok) {
        l.nt = a->n_tok - l.t0 < group_tok ? a->n_tok - l.t0 : group_tok;
        switch (vec) {
        case 1: launch_part_nq<1>(l, nq); break;
        case 2: launch_part_nq<2>(l, nq); break;
        case 4: launch_part_nq<4>(l, nq); break;
        default: launch_part_nq<8>(l, nq); break;
        }
        KN_LAUNCHED();
    }
}
