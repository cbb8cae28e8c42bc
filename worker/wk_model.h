/* wk_model: model weights and the forward pass over a batch of tokens from many
 * sequences (continuous batching), reading and writing the paged KV cache.
 *
 * Architectures: gemma3, qwen2, llama. Weights stay in the GGUF mapping (CPU) or
 * are uploaded once (GPU). wk_model_reserve preallocates every activation buffer
 * for a maximum batch size; wk_model_forward never allocates. */
#ifndef WK_MODEL_H
#define WK_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kn.h"
#include "worker/wk_gguf.h"
#include "worker/wk_kv.h"

typedef enum wk_arch {
    WK_ARCH_GEMMA3 = 1,
    WK_ARCH_QWEN2 = 2,
    WK_ARCH_LLAMA = 3,
} wk_arch;

typedef struct wk_hparams {
    wk_arch arch;
    char arch_name[16];
    int n_vocab;
    int n_ctx_train; // context length the model was trained with
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    float norm_eps;
    float rope_base;     // global layers
    float rope_base_swa; // sliding-window layers (gemma3)
    float rope_freq_scale;
    int n_rot;
    int sliding_window;  // 0 = none
} wk_hparams;

/* One forward step. Token t of the batch is tokens[t] at position pos[t] of the
 * sequence whose block table is row seq[t] of block_tables; its K/V go to that
 * sequence's slot for pos[t] (the block must already be allocated). Logits are
 * produced for the n_logits token indices in logit_rows, in that order; the last
 * n_sample of them are sampled on the backend (kn.h's sample op, sample[i] for
 * the i-th of them) and only the tokens come out, into sampled. Their
 * adjustments are entries [adj_off[i], adj_off[i + 1]) of adj_id/adj_val (at
 * most one entry per token within a row, so at most n_vocab; adj_off NULL: none),
 * their masks the n_mask rows of masks. */
typedef struct wk_batch {
    int n_tok;
    const int32_t *tokens;       // [n_tok]
    const int32_t *pos;          // [n_tok]
    const int32_t *seq;          // [n_tok]
    const int32_t *block_tables; // [n_seq, max_blocks]
    int n_seq;
    int max_blocks;
    const int32_t *logit_rows;   // [n_logits]
    int n_logits;
    int n_sample;                   // <= n_logits
    const kn_sample_params *sample; // [n_sample]; .mask < n_mask
    const int32_t *adj_off;         // [n_sample + 1] or NULL
    const int32_t *adj_id;          // [adj_off[n_sample]]
    const float *adj_val;           // [adj_off[n_sample]]
    const uint32_t *masks;          // [n_mask, (n_vocab + 31) / 32]
    int n_mask;                     // <= n_sample
    kn_sample_out *sampled;         // [n_sample], written by wk_model_forward
} wk_batch;

typedef struct wk_model wk_model;

/* Weight quantization at load (kolm-worker --quantization). */
typedef enum wk_quant {
    WK_QUANT_NONE = 0,
    /* Each layer projection (q, k, v, o, gate, up, down) stored as F32, F16 or BF16
     * becomes E4M3 with a scale per output row (kn.h; amax / 448 of the row): half
     * the bytes of BF16 to read per token. The embeddings and the LM head keep their
     * type, and so do weights the GGUF already quantizes (Q4_K, Q8_0, ...). */
    WK_QUANT_FP8 = 1,
} wk_quant;

/* Binds the weights of g (which must outlive the model) on backend be, quantized
 * as quant says. 0 or a negative errno with err naming the problem (unknown arch,
 * missing tensor, unsupported type, shape mismatch). */
int wk_model_load(const wk_gguf *g, kn_backend *be, wk_quant quant, wk_model **out, char *err, size_t errlen);
/* The layer projections wk_model_load quantized to FP8 (0 without WK_QUANT_FP8),
 * and all of them. */
void wk_model_quantized(const wk_model *m, int *n_fp8, int *n_proj);
void wk_model_free(wk_model *m); // NULL is a no-op
const wk_hparams *wk_model_hparams(const wk_model *m);

/* Preallocates activations for batches of up to max_tokens tokens, max_logits
 * logit rows and max_seq sequences with up to max_blocks blocks each. 0 or -ENOMEM. */
int wk_model_reserve(wk_model *m, int max_tokens, int max_logits, int max_seq, int max_blocks);
/* The backend bytes wk_model_reserve allocates for these bounds (to size what is
 * left for the KV cache before reserving). */
size_t wk_model_reserve_bytes(wk_model *m, int max_tokens, int max_logits, int max_seq, int max_blocks);

/* How batches in which every token wants logits (decode steps) run (wk_model.c's
 * design note): WK_EXEC_GRAPHS (the default) pads them to a fixed shape and
 * replays a graph recorded on the shape's first step, on backends with graphs (the
 * others run every batch op by op); WK_EXEC_PADDED pads them the same way but runs
 * op by op (it tests the padding on any backend); WK_EXEC_EAGER runs every batch as
 * it is. Changing the mode drops the recorded graphs. */
typedef enum wk_exec_mode { WK_EXEC_GRAPHS, WK_EXEC_PADDED, WK_EXEC_EAGER } wk_exec_mode;
#define WK_MAX_GRAPHS 64 // recorded shapes kept; the oldest is dropped past that
void wk_model_set_exec(wk_model *m, wk_exec_mode mode);

/* Runs the batch. logits: [n_logits - n_sample, n_vocab] host memory, written by
 * the call.
 * 0, or -EINVAL (batch over the reserved sizes or a position past the cache). */
int wk_model_forward(wk_model *m, wk_kv *kv, const wk_batch *b, float *logits);

#endif
