/* kn_cuda_mm.cu: the CUDA backend's weight ops, matmul and get_rows (kn.h).
 *
 * Both dequantize with kernels/kn_dequant.h compiled as device code, the
 * dequantizers the CPU backends use. matmul is a dequantize-and-dot kernel for
 * every weight type (one thread block per output row and tile of tokens). */
#include "kernels/cuda/kn_cuda.h"
#include "kernels/kn_dequant.h"

#define MAX_BLOCK 256 // elements of the largest quantized block (the K-quants)
#define TOK_TILE 4    // tokens per thread block in the dequantize-and-dot matmul
#define THREADS 128

/* y[t][o] for one output row o (blockIdx.x) and TOK_TILE tokens (blockIdx.y). */
static __global__ void k_matmul_dq(kn_type type, const uint8_t *w, size_t row_bytes, int64_t n_in, int block_elems,
                                   size_t block_bytes, const float *x, int64_t n_tok, float *y, int64_t n_out) {
    const int64_t o = blockIdx.x, t0 = (int64_t)blockIdx.y * TOK_TILE;
    const uint8_t *row = w + (size_t)o * row_bytes;
    float acc[TOK_TILE] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (block_elems == 1) { // f32 / f16 / bf16
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

void cu_matmul(kn_backend *be, const kn_weight *w, const float *x, int64_t n_tok, float *y) {
    kn_cuda *c = cu(be);
    if (n_tok <= 0)
        return;
    const int be_elems = (int)kn_type_block_elems(w->type);
    dim3 grid((unsigned)w->n_out, (unsigned)((n_tok + TOK_TILE - 1) / TOK_TILE));
    k_matmul_dq<<<grid, THREADS, 0, c->stream>>>(w->type, (const uint8_t *)w->data, kn_row_bytes(w->type, w->n_in),
                                                w->n_in, be_elems, kn_type_block_bytes(w->type), x, n_tok, y,
                                                w->n_out);
    KN_LAUNCHED();
}

/* ---------------------------------------------------------------- get_rows */

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

void cu_get_rows(kn_backend *be, const kn_weight *w, const int32_t *ids, int64_t n, float scale, float *y) {
    if (n <= 0)
        return;
    k_get_rows<<<(unsigned)n, THREADS, 0, cu(be)->stream>>>(w->type, (const uint8_t *)w->data,
                                                             kn_row_bytes(w->type, w->n_in), w->n_in,
                                                             (int)kn_type_block_elems(w->type),
                                                             kn_type_block_bytes(w->type), ids, scale, y);
    KN_LAUNCHED();
}
