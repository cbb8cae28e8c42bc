/* kn: the compute backend interface (a C vtable, like ggml's backends).
 *
 * The worker's model code calls every op through a kn_backend. The CPU backend
 * (kernels/cpu) always builds; the CUDA backend (kernels/cuda) builds when nvcc is
 * present. Every backend op has a scalar C reference in kernels/kn_ref.c, and
 * tests/unit/test_kn_ops.c checks every available backend against it.
 *
 * Memory: pointers handed to ops are backend memory (host memory for the CPU
 * backend, device memory for CUDA). Weights are described by kn_weight and are
 * never copied by the ops. Ops never allocate; workspaces are preallocated by the
 * caller through be->ops->alloc at load time.
 *
 * Layouts are row-major; a shape comment reads outermost first. */
#ifndef KN_H
#define KN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus // the CUDA backend is compiled as C++
extern "C" {
#endif

/* Tensor element types, numbered as GGUF/ggml number them so a GGUF type id can be
 * used directly. */
typedef enum kn_type {
    KN_F32 = 0,
    KN_F16 = 1,
    KN_Q4_0 = 2,
    KN_Q4_1 = 3,
    KN_Q5_0 = 6,
    KN_Q5_1 = 7,
    KN_Q8_0 = 8,
    KN_Q8_1 = 9,
    KN_Q2_K = 10,
    KN_Q3_K = 11,
    KN_Q4_K = 12,
    KN_Q5_K = 13,
    KN_Q6_K = 14,
    KN_Q8_K = 15,
    KN_BF16 = 30,
    KN_TYPE_COUNT = 31,
    // Not a GGUF type: OCP FP8 E4M3 records, an f32 scale then codes (value = scale *
    // code; kn_fp8.h): in the KV cache a record per token and head, in a weight a
    // record per row (n_in codes, 4 + n_in bytes: kn_row_bytes), made at load by
    // FP8 weight quantization (wk_model.h).
    KN_E4M3 = 100,
} kn_type;

/* 1 if weights of this type can be loaded and multiplied, else 0. */
int kn_type_supported(kn_type t);
const char *kn_type_name(kn_type t);
/* Elements per block (1 for float types, 32 or 256 for quantized ones); 0 if unknown. */
int64_t kn_type_block_elems(kn_type t);
/* Bytes per block; 0 if unknown. */
size_t kn_type_block_bytes(kn_type t);
/* Bytes of a row of n elements, or 0 if n is not a multiple of the block size or
 * the type is unknown. */
size_t kn_row_bytes(kn_type t, int64_t n);
/* Scalar reference dequantization of one row of n elements (n a block multiple). */
void kn_dequant_row(kn_type t, const void *src, float *dst, int64_t n);

/* A 2-D weight matrix: n_out rows of n_in elements, each row kn_row_bytes(type, n_in)
 * bytes, rows contiguous, and an optional bias: y = W x means y[o] = sum_i W[o][i]
 * * x[i] (+ bias[o], one float add after the sum). */
#define KN_MAX_MM 3 // weights one matmul call takes
typedef struct kn_weight {
    kn_type type;
    int64_t n_in;     // row length (GGUF ne[0])
    int64_t n_out;    // rows (GGUF ne[1])
    const void *data; // [n_out, row_bytes], backend memory
    const float *bias; // [n_out] backend memory, or NULL
} kn_weight;

enum kn_rope_mode {
    KN_ROPE_NORM = 0, // rotate adjacent pairs (x[2i], x[2i+1]) (Llama)
    KN_ROPE_NEOX = 2, // rotate halves (x[i], x[i + n_rot/2]) (Gemma, Qwen2)
};

/* One batched attention call over a paged KV cache, for one layer.
 *
 * The cache of a layer is [n_blocks, block_size, n_kv_head, head_dim] in `kv_type`
 * (KN_F16, KN_BF16 or KN_F32; for KN_E4M3 each [head_dim] is a record with its
 * scale, kn_fp8.h). A sequence's logical position p lives in physical block
 * block_table[seq][p / block_size], slot p % block_size. Query token t belongs to
 * sequence tok_seq[t] at position tok_pos[t] and attends to positions j of its own
 * sequence with j <= tok_pos[t] and, when window > 0, tok_pos[t] - j < window.
 * The caller has already stored the K/V of every token of this batch (kv_store). */
typedef struct kn_attn_args {
    int n_tok;
    int n_head, n_kv_head, head_dim; // n_head % n_kv_head == 0 (GQA)
    float scale;                     // applied to q.k
    float softcap;                   // 0 = none; else s = softcap * tanh(s / softcap)
    int window;                      // 0 = full causal; else sliding window size
    const float *q;                  // [n_tok, n_head, head_dim]
    float *out;                      // [n_tok, n_head, head_dim]
    const void *k_cache;             // [n_blocks, block_size, n_kv_head, head_dim]
    const void *v_cache;             // [n_blocks, block_size, n_kv_head, head_dim]
    kn_type kv_type;
    int block_size;
    const int32_t *tok_seq;          // [n_tok] row of block_tables
    const int32_t *tok_pos;          // [n_tok]
    const int32_t *block_tables;     // [n_seq, max_blocks]
    int max_blocks;
} kn_attn_args;

/* The rope op: q [n_tok, n_head, head_dim] and k [n_tok, n_kv_head, head_dim]; the
 * first n_rot dims of each head rotate at position pos[t] by theta_i = pos *
 * freq_scale * base^(-2i/n_rot) / (freq_factors ? freq_factors[i] : 1), pairs (i,
 * i + n_rot/2) for KN_ROPE_NEOX, else (2i, 2i + 1). q_norm, k_norm: [head_dim]
 * weights of a per-head RMS norm (eps) before the rotation (Gemma 3), or NULL. */
typedef struct kn_rope_args {
    float *q, *k;
    const int32_t *pos;
    int64_t n_tok;
    int n_head, n_kv_head, head_dim;
    const float *q_norm, *k_norm;
    float eps;
    int n_rot;
    float base, freq_scale;
    const float *freq_factors;
    int mode;
} kn_rope_args;

/* One row of the sample op. Of the row's logits a (raw logits x plus the row's
 * adjustments), only the allowed tokens (the mask) take part:
 * - greedy, when temperature <= 0 or top_k == 1: the lowest id of the largest a;
 * - else, with w_i = kn_exp_neg((a_i - max a) * (1 / temperature)) (kn_exp.h; the
 *   best token's w is 1): the tokens kept are those with a_i >= v_k, a_i >= v_p
 *   and w_i >= min_p, where v_k is the top_k-th largest a (ties all kept; -inf
 *   when top_k <= 0 or >= the allowed count) and v_p the largest allowed a_v with
 *   sum(w_i : a_i >= a_v) >= top_p * sum(w) (-inf when top_p >= 1; top_p 0 keeps
 *   the best value's tokens): top-p is taken on the whole distribution, not after
 *   top-k. The draw is the lowest kept id i with sum(w_j : j kept, j <= i) >
 *   u * sum(w_j : j kept) (ids ascending; when rounding leaves none, the last kept
 *   id with w > 0; when every kept w is 0, the greedy choice).
 * A backend may differ from kernels/kn_ref.c in float summation order and in
 * the last bits of exp, so a draw or a threshold within ~1e-5 of a boundary can
 * go the other way; nothing else may differ. */
#define KN_MAX_TOP 20 // top logprobs a row can ask for
typedef struct kn_sample_params {
    float temperature;
    float top_p;   // [0, 1]
    float min_p;   // [0, 1]; 0 = off
    int32_t top_k; // 0 = off
    float u;       // the draw: uniform in [0, 1), from the sequence's generator
    int32_t n_top; // logprobs: -1 none; else the n_top (<= KN_MAX_TOP) most likely too
    int32_t mask;  // this row's bitmask in the op's mask array, or -1: all allowed
} kn_sample_params;

typedef struct kn_sample_out {
    int32_t id;                 // the token (-1 when the mask allows none)
    float logprob;              // n_top >= 0: log-softmax at id of the raw row x (no adjustment, no mask)
    int32_t top_id[KN_MAX_TOP]; // n_top >= 0: the n_top largest raw x, best first, ties to the lower id
    float top_lp[KN_MAX_TOP];   // their log-softmax
} kn_sample_out;

typedef struct kn_backend kn_backend;

typedef struct kn_backend_ops {
    const char *name;
    void (*destroy)(kn_backend *be);

    /* Backend memory. alloc returns NULL on failure; free(NULL) is a no-op. */
    void *(*alloc)(kn_backend *be, size_t bytes);
    void (*free)(kn_backend *be, void *p);
    void (*upload)(kn_backend *be, void *dst, const void *src_host, size_t bytes);
    void (*download)(kn_backend *be, void *dst_host, const void *src, size_t bytes);
    /* Sets `bytes` bytes of backend memory at p to 0 (in op order, like an op). */
    void (*zero)(kn_backend *be, void *p, size_t bytes);
    /* Waits until all queued ops are done (no-op on CPU). */
    void (*sync)(kn_backend *be);

    /* y[j] = x W_j^T for the n_w (1..KN_MAX_MM) weights w[j], which share n_in
     * (the projections that read one activation: q, k and v; gate and up), in one
     * launch where the backend can: y[j][t][o] = sum_i W_j[o][i] * x[t][i] (+ the
     * bias), the bits
     * a call with W_j alone gives. x: [n_tok, n_in] f32, y[j]: [n_tok, w[j]->n_out]
     * f32. */
    void (*matmul)(kn_backend *be, const kn_weight *const *w, int n_w, const float *x, int64_t n_tok,
                   float *const *y);
    /* y[t] = dequant(W[ids[t]]) * scale. y: [n, w->n_in] f32. */
    void (*get_rows)(kn_backend *be, const kn_weight *w, const int32_t *ids, int64_t n, float scale,
                     float *y);
    /* RMS norm of each of n_row rows of length n: y = x / sqrt(mean(x^2) + eps) * w.
     * w: [n] or NULL (no weight). y may equal x. */
    void (*rmsnorm)(kn_backend *be, const float *x, const float *w, int64_t n_row, int64_t n, float eps,
                    float *y);
    /* In place, q's and k's heads (kn_rope_args): each RMS-normed first when its
     * weight is given (as rmsnorm would over head_dim, up to summation order),
     * then rotated. One call for both: the angles are a token's, whatever the head. */
    void (*rope)(kn_backend *be, const kn_rope_args *a);
    /* y = act(g) * u elementwise over n values; act 0 = SiLU, 1 = GELU (tanh approx).
     * y may equal g or u. */
    void (*glu)(kn_backend *be, const float *g, const float *u, int64_t n, int act, float *y);
    /* The residual step after a block, per row of n (n_row rows): x += r', with
     * r' = rmsnorm(r) * r_w when r_w is set (a post-norm: Gemma 3), else r; then,
     * when y is not NULL, y = rmsnorm(x) * w (the next block's pre-norm; w NULL: no
     * weight). Each backend gives the bits its rmsnorm and an add would. y may not
     * alias x or r. */
    void (*add_norm)(kn_backend *be, float *x, const float *r, const float *r_w, const float *w, int64_t n_row,
                     int64_t n, float eps, float *y);
    /* x = cap * tanh(x / cap) over n values, in place (logit soft-capping). */
    void (*softcap)(kn_backend *be, float *x, int64_t n, float cap);
    /* Stores the K and V of n_tok tokens into the paged cache of one layer:
     * token t goes to physical slot slots[t] (= block * block_size + offset); a
     * negative slot stores nothing (a padding token of a fixed-size batch).
     * k, v: [n_tok, row] f32 with row = n_kv_head * head_dim, converted to kv_type. */
    void (*kv_store)(kn_backend *be, void *k_cache, void *v_cache, kn_type kv_type, const float *k,
                     const float *v, const int32_t *slots, int64_t n_tok, int64_t row, int head_dim);
    void (*attention)(kn_backend *be, const kn_attn_args *a);
    /* Picks the next token of each of the n_row rows of logits x ([n_row, n]), as
     * p[r] says (kn_sample_params: the semantics are there), after adding row r's
     * adjustments: x[r][adj_id[j]] += adj_val[j] for j in [adj_off[r],
     * adj_off[r + 1]) (distinct ids within a row; adj_off NULL: none). mask holds
     * the allowed-token bitmasks ([n_mask][(n + 31) / 32] words; bit i % 32 of
     * word i / 32 allows token i), row p[r].mask of it (< 0: every token). x and
     * adj_val are the op's scratch (overwritten). out: [n_row]. */
    void (*sample)(kn_backend *be, float *x, int64_t n_row, int64_t n, const kn_sample_params *p,
                   const int32_t *adj_off, const int32_t *adj_id, float *adj_val, const uint32_t *mask,
                   kn_sample_out *out);
    /* Device memory: free and total bytes. NULL for the host backends. */
    void (*mem_info)(kn_backend *be, size_t *free_bytes, size_t *total_bytes);

    /* Graphs (CUDA graphs; all four NULL on the host backends). Between
     * capture_begin and capture_end the ops are recorded instead of run (no upload,
     * download, zero or sync in between); capture_end returns the recording ready to
     * launch, or NULL if it failed. graph_launch runs it in op order, with the
     * arguments the ops had when recorded (pointers included: it reads whatever
     * those buffers hold at launch). */
    void (*capture_begin)(kn_backend *be);
    void *(*capture_end)(kn_backend *be);
    void (*graph_launch)(kn_backend *be, void *graph);
    void (*graph_free)(kn_backend *be, void *graph);
} kn_backend_ops;

struct kn_backend {
    const kn_backend_ops *ops;
    int n_threads;
};

/* The CPU backend with n_threads threads (0 = number of online CPUs). NULL on
 * failure. Destroy with be->ops->destroy(be). */
kn_backend *kn_cpu_create(int n_threads);

/* The scalar reference backend: single-threaded, plain C, the oracle for every
 * other backend. */
kn_backend *kn_ref_create(void);

#ifdef KOLM_HAVE_CUDA
/* The CUDA backend on device `device`; NULL if unavailable (no device, error). */
kn_backend *kn_cuda_create(int device);
/* CUDA devices visible to this process (CUDA_VISIBLE_DEVICES applies); 0 when
 * there is no driver or no device. */
int kn_cuda_device_count(void);
#endif

#ifdef __cplusplus
}
#endif

#endif
