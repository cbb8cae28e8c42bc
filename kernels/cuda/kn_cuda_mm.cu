/* kn_cuda_mm.cu: the CUDA backend's weight ops, matmul and get_rows (kn.h).
 *
 * Design note. matmul is one tensor-core kernel for every weight type (mma.sync
 * m16n8k16, bf16 inputs, f32 accumulation). The tokens are the MMA's M side and
 * the weight rows its N side: a warp owns 8·NT rows and 16·MT tokens, and walks
 * the row in 32-element steps. In a step lane (g = lane / 4, q = lane % 4) takes
 * chunk 4·step + q (8 consecutive elements, kn_dq_chunk8 dequantizes it, so the
 * 4 lanes of a group read 32 consecutive weights) of weight row g of each row
 * tile and of tokens g and g + 8 of each token tile; elements 0-3 of the chunk go
 * into the step's first MMA and 4-7 into its second (elements 0-1 of a half at the
 * MMA's k = 2q, 2q + 1, elements 2-3 at k = 2q + 8, 2q + 9: one lane's registers
 * name the same k in A and B, so any assignment of a chunk's elements to k is a
 * dot product; this one needs no shuffles).
 *
 * Precision: weights are dequantized exactly to f32 (as the CPU backends and the
 * reference do), and each f32 value v, weight or activation, is carried as two
 * bf16, hi = bf16(v) and lo = bf16(v - hi), which hold it to 16 significant bits.
 * The step accumulates x_hi·w_hi, x_lo·w_hi and x_hi·w_lo (bf16 products are exact
 * in f32); the dropped x_lo·w_lo and the split's remainder leave a product's
 * relative error near 2^-16: the f32 function up to a few units in the 5th digit,
 * where plain bf16 activations (what vLLM multiplies) lose the 3rd. A BF16 weight
 * is its own hi (lo = 0), so its third MMA is skipped; an F16 weight is exact in
 * hi + lo. This unit is built with --fmad=false, so v - hi and every other float
 * operation here is what it says.
 *
 * Batch invariance: an output (token, row) is the same chain of MMAs, over the
 * same steps in the same order with its elements at the same k, whatever the tile
 * shape, the token's place in its tile or n_tok, so a token's logits do not depend
 * on what else is in the batch (the scheduler relies on it: wk_sched.c; tile
 * padding is zeros for tokens, a repeated row for weights, and never stored). That
 * is why this is not cuBLAS, which picks its kernel and split by shape. Decode
 * (n_tok <= 16) runs 8-row warps, for more warps in flight over the weight bytes;
 * longer batches 32 rows by 32 or 64 tokens, so each load serves more MMAs.
 *
 * K slices: a weight's row is cut into n_slices runs of slice_steps steps,
 * chosen from the weight's shape alone (mm_slices), and an output is the sum, in
 * slice order (P0 + P1, then + P2, ...), of one MMA chain per slice, each from
 * zero. A decode call (n_tok <= 16) runs one warp per (8 rows, slice): each writes
 * its slice's sums to the workspace and the last of a row tile's warps to finish
 * (a ticket per tile, CUDA's threadfence-reduction pattern; the last one puts the
 * ticket back to 0) adds them up in that order. That puts 4096 or more warps on
 * the weight bytes of all but the largest projections, where 8-row warps over whole
 * rows would be a few hundred: batch-1 decode is bound by the bytes in flight.
 * Longer batches, and a decode call whose slices do not fit in the workspace or
 * the tickets, add the same slice sums in the same order in the warp (through
 * shared memory for the 32-row tiles, which have no registers to spare), so where
 * the sum is made changes nothing.
 *
 * One call takes up to KN_MAX_MM weights of one input (q, k and v; gate and up):
 * one launch whose grid is the weights' blocks end to end, each block running
 * its weight's rows exactly as a launch of that weight alone would. A small
 * projection (k and v of a GQA model: a few hundred rows) would leave most SMs
 * idle in a launch of its own.
 *
 * get_rows dequantizes a chunk per thread the same way. */
#include <stdint.h>
#include <string.h>

#include <cuda_bf16.h>

#include "kernels/cuda/kn_cuda.h"
#include "kernels/kn_dequant.h"

#define WARPS 4 // warps per thread block

/* Element i of a float or E4M3 weight row. */
static __device__ __forceinline__ float load_weight(kn_type type, const uint8_t *row, int64_t i) {
    if (type == KN_E4M3)
        return *(const float *)row * e4m3_to_f32(row[sizeof(float) + i]);
    return load_float(type, row, i);
}

/* The 8 weights of chunk c (elements [8c, 8c + 8)) of one row. vec: float types
 * are read as 16-byte vectors (the row is 16-byte aligned, n_in % 8 == 0), an
 * E4M3 row's codes as two words (the record is 4-byte aligned, n_in % 4 == 0). */
static __device__ __forceinline__ void load_chunk(kn_type type, const uint8_t *row, int64_t c, int block_elems,
                                                  size_t block_bytes, bool vec, float *wv) {
    if (type == KN_E4M3) { // a row record: the scale, then the codes (value = scale * code, kn_fp8.h)
        const float scale = *(const float *)row;
        const uint8_t *q = row + sizeof(float) + 8 * c;
        uint32_t u[2];
        if (vec) {
            u[0] = ((const uint32_t *)q)[0], u[1] = ((const uint32_t *)q)[1];
        } else {
            u[0] = q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
            u[1] = q[4] | (uint32_t)q[5] << 8 | (uint32_t)q[6] << 16 | (uint32_t)q[7] << 24;
        }
        for (int i = 0; i < 8; i += 2) {
            const float2 f = e4m3x2_to_f32(u[i >> 2] >> (8 * (i & 3)));
            wv[i] = scale * f.x, wv[i + 1] = scale * f.y;
        }
    } else if (block_elems > 1) {
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
    int slice_steps, n_slices; // mm_slices
    const float *bias;
    float *y;
    float *slice_sum; // a split call: [n_slices][n_tok][n_out] in the workspace
    unsigned blk0;
} mm_part;

typedef struct mm_parts {
    mm_part p[KN_MAX_MM];
    int n;
} mm_parts;

/* v[0..8) as 4 words of bf16 pairs hi (element 2i in the low half of word i) and
 * the remainders lo (module note). */
static __device__ __forceinline__ void split8(const float *v, uint32_t *hi, uint32_t *lo) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
        const float2 hf = __bfloat1622float2(h);
        const __nv_bfloat162 l = __floats2bfloat162_rn(v[2 * i] - hf.x, v[2 * i + 1] - hf.y);
        memcpy(&hi[i], &h, 4);
        memcpy(&lo[i], &l, 4);
    }
}

/* Chunk c of an f32 activation row of n_in elements, zeros past the end. */
static __device__ __forceinline__ void load_x(const float *row, int64_t c, int64_t n_in, bool xvec, float *v) {
    if (xvec && 8 * c + 8 <= n_in) {
        const float4 a = ((const float4 *)row)[2 * c], b = ((const float4 *)row)[2 * c + 1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
        for (int i = 0; i < 8; i++)
            v[i] = 8 * c + i < n_in ? row[8 * c + i] : 0.0f;
    }
}

/* The slices of a weight of n_out rows of n_in (module note): at least
 * MM_MIN_SLICE_STEPS steps each, and as many as give a decode call MM_DECODE_WARPS
 * warps. */
#define MM_DECODE_WARPS 4096
#define MM_MIN_SLICE_STEPS 4

static void mm_slices(int64_t n_in, int64_t n_out, int *slice_steps, int *n_slices) {
    const int64_t steps = (n_in + 31) / 32, tiles = (n_out + 7) / 8;
    int64_t n = (MM_DECODE_WARPS + tiles - 1) / tiles, most = steps / MM_MIN_SLICE_STEPS;
    n = n < most ? n : most;
    n = n > 1 ? n : 1;
    const int64_t per = (steps + n - 1) / n;
    *slice_steps = (int)(per > 0 ? per : 1);
    *n_slices = (int)((steps + *slice_steps - 1) / *slice_steps);
}

/* y[t][o] of the part that owns blockIdx.x for the 8·NT rows of warp
 * (blockIdx.x - blk0, threadIdx.x / 32) and the 16·MT tokens of blockIdx.y (module
 * note): the same operations for an output whichever part, tile or call it is in.
 * gridDim.z > 1 (decode tiles only): blockIdx.z is the slice, ticket the tiles'
 * tickets. */
template <int MT, int NT>
static __global__ void __launch_bounds__(32 * WARPS)
    k_matmul(mm_parts ps, int64_t n_in, bool xvec, const float *x, int64_t n_tok, unsigned *ticket) {
    mm_part P = ps.p[0];
#pragma unroll
    for (int j = 1; j < KN_MAX_MM; j++) // static indices: the parts stay in parameter space
        if (j < ps.n && blockIdx.x >= ps.p[j].blk0)
            P = ps.p[j];
    const int64_t n_out = P.n_out;
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3, warp = threadIdx.x >> 5;
    const int64_t o0 = ((int64_t)(blockIdx.x - P.blk0) * WARPS + warp) * (8 * NT), t0 = (int64_t)blockIdx.y * (16 * MT);
    const bool split = gridDim.z > 1;
    if (o0 >= n_out || (int)blockIdx.z >= P.n_slices) // the whole warp: the MMAs below are warp-wide
        return;
    const bool w_lo = P.type != KN_BF16; // a BF16 weight is exact in hi
    const int64_t n_chunks = (n_in + 7) / 8, full = n_in / 8; // chunks, and those with 8 elements
    const uint8_t *wr[NT]; // this lane's weight rows (past n_out: the last row again, not stored)
#pragma unroll
    for (int n = 0; n < NT; n++)
        wr[n] = P.w + (size_t)min(o0 + 8 * n + g, n_out - 1) * P.row_bytes;
    const float *xr[MT][2]; // this lane's tokens g and g + 8 of each tile (NULL past n_tok: zeros)
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int s = 0; s < 2; s++) {
            const int64_t t = t0 + 16 * m + 8 * s + g;
            xr[m][s] = t < n_tok ? x + t * n_in : NULL;
        }
    // The sum of the slices so far: registers for decode tiles, else shared memory.
    constexpr bool SHARED_SUM = MT * NT > 1;
    __shared__ float shared_sum[SHARED_SUM ? WARPS * MT * NT * 4 * 32 : 1]; // [warp][m][n][i][lane]
    float sum[SHARED_SUM ? 1 : MT][SHARED_SUM ? 1 : NT][4];
    float acc[MT][NT][4];
    const int64_t n_steps = (n_in + 31) / 32;
    const int s0 = split ? (int)blockIdx.z : 0, s1 = split ? s0 + 1 : P.n_slices;
    for (int sl = s0; sl < s1; sl++) {
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    acc[m][n][i] = 0.0f;
        const int64_t step_end = min((int64_t)(sl + 1) * P.slice_steps, n_steps);
#pragma unroll(MT == 1 ? 2 : 1) // decode is bound by weight reads in flight
        for (int64_t step = (int64_t)sl * P.slice_steps; step < step_end; step++) {
            const int64_t c = 4 * step + q;
            uint32_t wh[NT][4], wl[NT][4];
#pragma unroll
            for (int n = 0; n < NT; n++) {
                float v[8];
                if (c < full)
                    load_chunk(P.type, wr[n], c, P.block_elems, P.block_bytes, P.wvec, v);
                else // a float row's last partial chunk, or past its end
                    for (int i = 0; i < 8; i++)
                        v[i] = 8 * c + i < n_in ? load_weight(P.type, wr[n], 8 * c + i) : 0.0f;
                split8(v, wh[n], wl[n]);
            }
            uint32_t xh[MT][2][4], xl[MT][2][4];
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int s = 0; s < 2; s++) {
                    float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                    if (xr[m][s] && c < n_chunks)
                        load_x(xr[m][s], c, n_in, xvec, v);
                    split8(v, xh[m][s], xl[m][s]);
                }
#pragma unroll
            for (int h = 0; h < 2; h++) // the step's two MMAs: chunk elements 4h .. 4h + 3
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    const uint32_t ah[4] = {xh[m][0][2 * h], xh[m][1][2 * h], xh[m][0][2 * h + 1],
                                            xh[m][1][2 * h + 1]};
                    const uint32_t al[4] = {xl[m][0][2 * h], xl[m][1][2 * h], xl[m][0][2 * h + 1],
                                            xl[m][1][2 * h + 1]};
#pragma unroll
                    for (int n = 0; n < NT; n++) {
                        const uint32_t bh[2] = {wh[n][2 * h], wh[n][2 * h + 1]};
                        mma_bf16(acc[m][n], ah, bh);
                        mma_bf16(acc[m][n], al, bh);
                        if (w_lo) {
                            const uint32_t bl[2] = {wl[n][2 * h], wl[n][2 * h + 1]};
                            mma_bf16(acc[m][n], ah, bl);
                        }
                    }
                }
        }
        if (s1 - s0 == 1) // one slice in this warp: acc is the sum (split, or a single-slice weight)
            break;
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    float r;
                    if constexpr (SHARED_SUM) {
                        float &sh = shared_sum[(((warp * MT + m) * NT + n) * 4 + i) * 32 + lane];
                        r = sh = sl == s0 ? acc[m][n][i] : sh + acc[m][n][i];
                    } else {
                        r = sum[m][n][i] = sl == s0 ? acc[m][n][i] : sum[m][n][i] + acc[m][n][i];
                    }
                    if (sl == s1 - 1)
                        acc[m][n][i] = r;
                }
    }
    // acc[m][n]: the sums for tokens g (0, 1) and g + 8 (2, 3) of tile m, rows 2q and
    // 2q + 1 of tile n (a split warp: of its slice)
    if (split) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int64_t t = t0 + 8 * (i >> 1) + g, o = o0 + 2 * q + (i & 1);
            if (t < n_tok && o < n_out)
                P.slice_sum[((int64_t)s0 * n_tok + t) * n_out + o] = acc[0][0][i];
        }
        __threadfence(); // this slice's sums before the ticket
        __syncwarp();
        unsigned *tk = &ticket[(size_t)blockIdx.x * WARPS + warp];
        unsigned got = 0;
        if (lane == 0)
            got = atomicAdd(tk, 1u);
        got = __shfl_sync(0xffffffffu, got, 0);
        if (got != (unsigned)P.n_slices - 1) // not the last of this tile's slices
            return;
        __threadfence(); // the other slices' sums after their tickets
        if (lane == 0)
            *tk = 0; // for the next call
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int64_t t = t0 + 8 * (i >> 1) + g, o = o0 + 2 * q + (i & 1);
            if (t < n_tok && o < n_out) {
                float r = __ldcg(&P.slice_sum[t * n_out + o]);
                for (int sl = 1; sl < P.n_slices; sl++)
                    r = r + __ldcg(&P.slice_sum[((int64_t)sl * n_tok + t) * n_out + o]);
                acc[0][0][i] = r;
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int64_t t = t0 + 16 * m + 8 * (i >> 1) + g, o = o0 + 8 * n + 2 * q + (i & 1);
                if (t < n_tok && o < n_out)
                    P.y[t * n_out + o] = P.bias ? acc[m][n][i] + P.bias[o] : acc[m][n][i];
            }
}

template <int MT, int NT>
static void launch_matmul(const mm_parts &ps, unsigned blocks, unsigned slices, int64_t n_in, bool xvec,
                          const float *x, int64_t n_tok, unsigned *ticket, cudaStream_t st) {
    const dim3 grid(blocks, (unsigned)((n_tok + 16 * MT - 1) / (16 * MT)), slices);
    k_matmul<MT, NT><<<grid, 32 * WARPS, 0, st>>>(ps, n_in, xvec, x, n_tok, ticket);
    KN_LAUNCHED();
}

void cu_matmul(kn_backend *be, const kn_weight *const *w, int n_w, const float *x, int64_t n_tok,
               float *const *y) {
    if (n_tok <= 0 || n_w <= 0)
        return;
    kn_cuda *c = cu(be);
    const int64_t n_in = w[0]->n_in;
    // The tile (module note): MT token tiles of 16 and NT row tiles of 8 per warp.
    const int mt = n_tok <= 16 ? 1 : n_tok <= 32 ? 2 : 4, nt = mt == 1 ? 1 : 4;
    const int rows_per_block = 8 * nt * WARPS;
    mm_parts ps;
    ps.n = 0;
    unsigned blocks = 0;
    int most_slices = 1;
    size_t slice_floats = 0; // a split call's slice sums, all parts
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
        p->wvec = wj->type == KN_E4M3 ? n_in % 4 == 0 && (uintptr_t)wj->data % 4 == 0
                                      : n_in % 8 == 0 && (uintptr_t)wj->data % 16 == 0;
        p->n_out = wj->n_out;
        mm_slices(n_in, wj->n_out, &p->slice_steps, &p->n_slices);
        p->bias = wj->bias;
        p->y = y[j];
        p->slice_sum = (float *)c->work + slice_floats;
        p->blk0 = blocks;
        blocks += (unsigned)((wj->n_out + rows_per_block - 1) / rows_per_block);
        most_slices = p->n_slices > most_slices ? p->n_slices : most_slices;
        slice_floats += (size_t)p->n_slices * (size_t)n_tok * (size_t)wj->n_out;
    }
    if (ps.n) {
        for (int j = ps.n; j < KN_MAX_MM; j++)
            ps.p[j] = ps.p[0]; // unused: never chosen (j >= ps.n)
        const bool xvec = n_in % 4 == 0 && (uintptr_t)x % 16 == 0;
        // Decode splits its slices over warps when their sums and tickets fit (module note).
        const bool split = mt == 1 && most_slices > 1 && slice_floats * sizeof(float) <= c->work_bytes &&
                           (size_t)blocks * WARPS <= KN_CUDA_TICKETS;
        const unsigned slices = split ? (unsigned)most_slices : 1u;
        if (mt == 1)
            launch_matmul<1, 1>(ps, blocks, slices, n_in, xvec, x, n_tok, c->ticket, c->stream);
        else if (mt == 2)
            launch_matmul<2, 4>(ps, blocks, slices, n_in, xvec, x, n_tok, c->ticket, c->stream);
        else
            launch_matmul<4, 4>(ps, blocks, slices, n_in, xvec, x, n_tok, c->ticket, c->stream);
    }
    if (n_w > KN_MAX_MM) // more weights than one launch takes: the rest in the next
        cu_matmul(be, w + KN_MAX_MM, n_w - KN_MAX_MM, x, n_tok, y + KN_MAX_MM);
}

/* ---------------------------------------------------------------- get_rows */

/* Row ids[blockIdx.x] of w, dequantized and scaled; thread i takes chunks i, i +
 * blockDim.x, ... (float and E4M3 rows element by element). */
static __global__ void k_get_rows(kn_type type, const uint8_t *w, size_t row_bytes, int64_t n_in, int block_elems,
                                  size_t block_bytes, const int32_t *ids, float scale, float *y) {
    const uint8_t *row = w + (size_t)ids[blockIdx.x] * row_bytes;
    float *yr = y + (int64_t)blockIdx.x * n_in;
    if (block_elems == 1) {
        for (int64_t i = threadIdx.x; i < n_in; i += blockDim.x)
            yr[i] = load_weight(type, row, i) * scale;
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
