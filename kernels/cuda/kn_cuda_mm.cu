/* kn_cuda_mm.cu: the CUDA backend's weight ops, matmul and get_rows (kn.h).
 *
 * Design note. matmul is one kernel for every weight type: a warp owns R output
 * rows and a tile of up to TT tokens; lane l takes the row's 8-element chunks l,
 * l + 32, l + 64, ... (kn_dq_chunk8 dequantizes one, so a warp reads 256
 * consecutive weights at a time: a K-quant block, 8 blocks of the 32-element
 * types, 512 bytes of f16), multiplies them with each token's 8 activations, and
 * the 32 lane sums are added by a fixed butterfly. The activations stay f32 and
 * the weights are dequantized exactly (this unit is built with --fmad=false, so a
 * weight is the float the CPU backends and the reference get; the dot products use
 * explicit fmaf).
 *
 * Batch invariance: a (row, token) result is the same sequence of operations
 * whatever R, the token tile or n_tok is, so a token's logits do not depend on what
 * else is in the batch (the scheduler relies on it: wk_sched.c). That is why this
 * is not cuBLAS, which picks its kernel and split by shape. Decode (n_tok <= TT)
 * uses R = 1 for more warps in flight; longer batches R = 4, so each activation
 * load serves 4 rows.
 *
 * One call takes up to KN_MAX_MM weights of one input (q, k and v; gate and up):
 * one launch whose grid is the weights' blocks end to end, each block running
 * its weight's rows exactly as a launch of that weight alone would. A small
 * projection (k and v of a GQA model: a few hundred rows) would leave most SMs
 * idle in a launch of its own.
 *
 * get_rows dequantizes a chunk per thread the same way. */
#include <stdint.h>

#include "kernels/cuda/kn_cuda.h"
#include "kernels/kn_dequant.h"

#define WARPS 4 // warps per thread block
#define TT 8    // tokens per warp tile

/* The 8 weights of chunk c (elements [8c, 8c + 8)) of one row. vec: the row is
 * 16-byte aligned and n_in % 8 == 0, so float types are read as 16-byte vectors. */
static __device__ __forceinline__ void load_chunk(kn_type type, const uint8_t *row, int64_t c, int block_elems,
                                                  size_t block_bytes, bool vec, float *wv) {
    if (block_elems > 1) {
        const int64_t e0 = 8 * c;
        kn_dq_chunk8(type, row + (size_t)(e0 / block_elems) * block_bytes, (int)(e0 % block_elems) / 8, wv);
    } else if (vec && type == KN_F32) {
        const float4 a = ((const float4 *)row)[2 * c], b = ((const float4 *)row)[2 * c + 1];
        wv[0] = a.x, wv[1] = a.y, wv[2] = a.z, wv[3] = a.w, wv[4] = b.x, wv[5] = b.y, wv[6] = b.z, wv[7] = b.w;
    } else if (vec) { // f16 / bf16: one 16-byte load
        const uint4 u = ((const uint4 *)row)[c];
        const uint32_t p[4] = {u.x, u.y, u.z, u.w};
        for (int i = 0; i < 4; i++) {
            const uint16_t lo = (uint16_t)(p[i] & 0xffffu), hi = (uint16_t)(p[i] >> 16);
            wv[2 * i] = type == KN_F16 ? kn_f16_to_f32(lo) : kn_bf16_to_f32(lo);
            wv[2 * i + 1] = type == KN_F16 ? kn_f16_to_f32(hi) : kn_bf16_to_f32(hi);
        }
    } else {
        for (int i = 0; i < 8; i++)
            wv[i] = load_float(type, row, 8 * c + i);
    }
}

/* One weight of a matmul call: its rows take thread blocks [blk0, the next
 * part's blk0) of the grid's x. */
typedef struct mm_part {
    kn_type type;
    const uint8_t *w;
    size_t row_bytes, block_bytes;
    int block_elems;
    bool wvec;
    int64_t n_out;
    const float *bias;
    float *y;
    unsigned blk0;
} mm_part;

typedef struct mm_parts {
    mm_part p[KN_MAX_MM];
    int n;
} mm_parts;

/* y[t][o] of the part that owns blockIdx.x, for rows [o0, o0 + R) of warp
 * (blockIdx.x - blk0, threadIdx.x / 32) and tokens [t0, t0 + TT) of blockIdx.y:
 * the same operations for a row whichever part it is in or is alone in a call. */
template <int R>
static __global__ void __launch_bounds__(32 * WARPS, R == 1 ? 8 : 4) // the occupancy of one weight's kernel
    k_matmul(mm_parts ps, int64_t n_in, bool xvec, const float *x, int64_t n_tok) {
    mm_part P = ps.p[0];
#pragma unroll
    for (int j = 1; j < KN_MAX_MM; j++) // static indices: the parts stay in parameter space
        if (j < ps.n && blockIdx.x >= ps.p[j].blk0)
            P = ps.p[j];
    const kn_type type = P.type;
    const uint8_t *w = P.w;
    const size_t row_bytes = P.row_bytes, block_bytes = P.block_bytes;
    const int block_elems = P.block_elems;
    const bool wvec = P.wvec;
    const int64_t n_out = P.n_out;
    const float *bias = P.bias;
    float *y = P.y;
    const int lane = threadIdx.x & 31;
    const int64_t o0 = ((int64_t)(blockIdx.x - P.blk0) * WARPS + (threadIdx.x >> 5)) * R,
                  t0 = (int64_t)blockIdx.y * TT;
    if (o0 >= n_out) // the whole warp: there is no block-wide synchronization below
        return;
    const int nr = (int)min((int64_t)R, n_out - o0), nt = (int)min((int64_t)TT, n_tok - t0);
    const float *xt = x + t0 * n_in;
    float acc[R][TT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int k = 0; k < TT; k++)
            acc[r][k] = 0.0f;
    const int64_t n_chunks = n_in / 8;
    // Decode is bound by weight reads in flight: unrolled, a lane has several chunks' loads out at once.
#pragma unroll(R == 1 ? 4 : 1)
    for (int64_t c = lane; c < n_chunks; c += 32) {
        float wv[R][8];
#pragma unroll
        for (int r = 0; r < R; r++)
            load_chunk(type, w + (size_t)(o0 + min(r, nr - 1)) * row_bytes, c, block_elems, block_bytes, wvec,
                       wv[r]); // rows past n_out repeat the last one; their sums are not stored
#pragma unroll
        for (int k = 0; k < TT; k++) {
            if (k >= nt)
                break;
            float xv[8];
            const float *xp = xt + k * n_in + 8 * c;
            if (xvec) {
                const float4 a = ((const float4 *)xp)[0], b = ((const float4 *)xp)[1];
                xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w, xv[4] = b.x, xv[5] = b.y, xv[6] = b.z,
                xv[7] = b.w;
            } else {
                for (int i = 0; i < 8; i++)
                    xv[i] = xp[i];
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                float s = acc[r][k];
#pragma unroll
                for (int i = 0; i < 8; i++)
                    s = fmaf(wv[r][i], xv[i], s);
                acc[r][k] = s;
            }
        }
    }
    // A float row whose length is not a multiple of 8: its last elements, one per lane.
    const int64_t e = n_chunks * 8 + lane;
    if (e < n_in) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= nr)
                break;
            const float wr = load_float(type, w + (size_t)(o0 + r) * row_bytes, e);
#pragma unroll
            for (int k = 0; k < TT; k++)
                if (k < nt)
                    acc[r][k] = fmaf(wr, xt[k * n_in + e], acc[r][k]);
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int k = 0; k < TT; k++) {
            const float s = warp_sum(acc[r][k]);
            if (lane == 0 && r < nr && k < nt)
                y[(t0 + k) * n_out + o0 + r] = bias ? s + bias[o0 + r] : s;
        }
}

void cu_matmul(kn_backend *be, const kn_weight *const *w, int n_w, const float *x, int64_t n_tok,
               float *const *y) {
    if (n_tok <= 0 || n_w <= 0)
        return;
    const int64_t n_in = w[0]->n_in;
    const int r = n_tok <= TT ? 1 : 4; // rows per warp: decode 1, longer batches 4
    const int rows_per_block = r * WARPS;
    mm_parts ps;
    ps.n = 0;
    unsigned blocks = 0;
    for (int j = 0; j < n_w && j < KN_MAX_MM; j++) {
        const kn_weight *wj = w[j];
        if (wj->n_out <= 0)
            continue;
        mm_part *p = &ps.p[ps.n++];
        p->type = wj->type;
        p->w = (const uint8_t *)wj->data;
        p->row_bytes = kn_row_bytes(wj->type, n_in);
        p->block_bytes = kn_type_block_bytes(wj->type);
        p->block_elems = (int)kn_type_block_elems(wj->type);
        p->wvec = n_in % 8 == 0 && (uintptr_t)wj->data % 16 == 0;
        p->n_out = wj->n_out;
        p->bias = wj->bias;
        p->y = y[j];
        p->blk0 = blocks;
        blocks += (unsigned)((wj->n_out + rows_per_block - 1) / rows_per_block);
    }
    if (!ps.n)
        return;
    for (int j = ps.n; j < KN_MAX_MM; j++)
        ps.p[j] = ps.p[0]; // unused: never chosen (j >= ps.n)
    const bool xvec = n_in % 4 == 0 && (uintptr_t)x % 16 == 0;
    const dim3 grid(blocks, (unsigned)((n_tok + TT - 1) / TT));
    const cudaStream_t st = cu(be)->stream;
    if (r == 1)
        k_matmul<1><<<grid, 32 * WARPS, 0, st>>>(ps, n_in, xvec, x, n_tok);
    else
        k_matmul<4><<<grid, 32 * WARPS, 0, st>>>(ps, n_in, xvec, x, n_tok);
    KN_LAUNCHED();
    if (n_w > KN_MAX_MM) // more weights than one launch takes: the rest in the next
        cu_matmul(be, w + KN_MAX_MM, n_w - KN_MAX_MM, x, n_tok, y + KN_MAX_MM);
}

/* ---------------------------------------------------------------- get_rows */

/* Row ids[blockIdx.x] of w, dequantized and scaled; thread i takes chunks i, i +
 * blockDim.x, ... (float rows element by element). */
static __global__ void k_get_rows(kn_type type, const uint8_t *w, size_t row_bytes, int64_t n_in, int block_elems,
                                  size_t block_bytes, const int32_t *ids, float scale, float *y) {
    const uint8_t *row = w + (size_t)ids[blockIdx.x] * row_bytes;
    float *yr = y + (int64_t)blockIdx.x * n_in;
    if (block_elems == 1) {
        for (int64_t i = threadIdx.x; i < n_in; i += blockDim.x)
            yr[i] = load_float(type, row, i) * scale;
        return;
    }
    for (int64_t c = threadIdx.x; c < n_in / 8; c += blockDim.x) {
        float v[8];
        load_chunk(type, row, c, block_elems, block_bytes, false, v);
        for (int i = 0; i < 8; i++)
            yr[8 * c + i] = v[i] * scale;
    }
}

void cu_get_rows(kn_backend *be, const kn_weight *w, const int32_t *ids, int64_t n, float scale, float *y) {
    if (n <= 0)
        return;
    k_get_rows<<<(unsigned)n, 128, 0, cu(be)->stream>>>(w->type, (const uint8_t *)w->data,
                                                         kn_row_bytes(w->type, w->n_in), w->n_in,
                                                         (int)kn_type_block_elems(w->type),
                                                         kn_type_block_bytes(w->type), ids, scale, y);
    KN_LAUNCHED();
}
