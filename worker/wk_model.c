/* wk_model: weight binding and the batched forward pass (see wk_model.h).
 *
 * Design note. The three supported architectures share one decoder-layer shape:
 *
 *   h = rmsnorm(x) * attn_norm
 *   q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)   (one matmul call, the biases in it)
 *   [gemma3] q, k = per-head rmsnorm(q) * q_norm, per-head rmsnorm(k) * k_norm
 *   q, k = rope(q, k)            NEOX (gemma3, qwen2) or NORM (llama) pairs
 *   store k, v in the paged cache; a = paged attention(q)
 *   o = a Wo;  [gemma3] o = rmsnorm(o) * post_attention_norm
 *   x = x + o
 *   h = rmsnorm(x) * ffn_norm
 *   f = (act(h Wgate) * h Wup) Wdown   act = GELU-tanh (gemma3) or SiLU
 *   [gemma3] f = rmsnorm(f) * post_ffw_norm
 *   x = x + f
 *
 * so an architecture is a handful of flags (which tensors exist, rope mode,
 * activation, embedding scale, attention scale, per-layer rope base and window),
 * not separate code. Gemma 3 follows llama.cpp's gemma3 graph: embeddings scaled
 * by sqrt(n_embd); GGUF norm weights already carry Gemma's "+1"; every 6th layer
 * (il % 6 == 5) is global with rope.freq_base, the others use a sliding window of
 * attention.sliding_window positions and rope base 10000; q is scaled by
 * 1/sqrt(head_dim) (1/sqrt(n_embd/n_head) for the 62-layer 27B).
 *
 * Every token of the batch goes through each weight in one matmul call. Only the
 * rows named in logit_rows get the final norm and the LM head. All activations
 * live in one backend allocation made by wk_model_reserve and carved into named
 * buffers; the forward pass allocates nothing. On host backends (cpu, ref) the
 * weights are used in place in the GGUF mapping; otherwise each is uploaded once.
 *
 * Fixed-shape batches (WK_EXEC_GRAPHS): a batch in which every token wants logits
 * (decode steps, speculative verification) is padded to a power-of-two token count
 * and its block tables to a power-of-two width, so one recorded graph of the whole
 * step (kn.h's capture ops, CUDA graphs) replays every later step of that shape with
 * one launch instead of hundreds. The batch itself lives in device buffers that the
 * graph reads, refreshed by uploads before each launch. Padding tokens are token 0
 * at position 0 of sequence 0 with a negative cache slot (kv_store skips them), and
 * their logits are never downloaded; because the kernels are batch-invariant, the
 * real tokens' results are the same as without padding. WK_EXEC_PADDED runs the same
 * padded batch op by op, so the padding is tested on backends without graphs. */
#include "worker/wk_model.h"
#include "common/cm_log.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/kn_cpu.h"
#include "kernels/cpu/kn_pool.h"
#include "kernels/kn_fp8.h"
#include "proto/proto.h"

typedef struct wk_layer {
    const float *attn_norm, *ffn_norm;          // [n_embd]
    const float *post_attn_norm, *post_ffw_norm; // [n_embd] or NULL
    const float *q_norm, *k_norm;               // [head_dim] or NULL
    kn_weight wq, wk, wv, wo; // wq, wk, wv with their biases (Qwen2), else none
    kn_weight gate, up, down;
    float rope_base, rope_scale;
    int window; // 0 = full causal
} wk_layer;

struct wk_model {
    const wk_gguf *g;
    kn_backend *be;
    int host; // weights used in place (host-memory backend)
    wk_hparams hp;

    kn_weight tok_embd, output;
    const float *output_norm; // [n_embd]
    const float *rope_freqs;  // [n_rot/2] or NULL
    wk_layer *layers;         // [n_layer]

    float embd_scale, attn_scale, final_softcap;
    int rope_mode, act;

    void **owned; // backend allocations made at load (uploaded weights)
    int n_owned, cap_owned;
    wk_quant quant;
    int n_fp8, n_proj; // layer projections quantized to FP8 at load, and all of them

    // wk_model_reserve
    int max_tokens, max_logits, max_seq, max_blocks;
    void *arena;
    float *x, *h, *q, *k, *v, *att, *o, *fg, *fu; // activations, [max_tokens, ...]
    float *xl, *logits;                          // [max_logits, n_embd], [max_logits, n_vocab]
    int32_t *d_tok, *d_pos, *d_seq, *d_slot, *d_rows, *d_bt; // backend copies of the batch, in this
                                                             // order in the arena (one upload)
    kn_sample_params *d_smp;                                 // [max_logits] sampled rows (wk_batch)
    kn_sample_out *d_smp_out;                                // [max_logits]
    int32_t *d_adj_off, *d_adj_id;                           // their adjustments: adj_cap entries
    float *d_adj_val;
    uint32_t *d_masks;                                       // [max_logits, mask_words]
    uint8_t *h_batch; // host staging of a batch: the bytes from d_tok to the end of d_bt, as there
    int32_t *h_slot;  // d_slot's place in h_batch
    int32_t *h_adj_off; // [max_logits + 1] host

    wk_exec_mode exec;
    struct wk_graph {
        int n_tok, max_blocks;
        const wk_kv *kv;
        void *graph;
    } graphs[WK_MAX_GRAPHS];
    int n_graphs;
};


static int own(wk_model *m, void *p) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **n = realloc(m->owned, (size_t)cap * sizeof(void *));
        if (!n)
            return -ENOMEM;
        m->owned = n;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return 0;
}

/* Copies host bytes into a new backend allocation owned by the model. */
static const void *to_backend(wk_model *m, const void *src, size_t bytes) {
    void *p = m->be->ops->alloc(m->be, bytes);
    if (!p)
        return NULL;
    if (own(m, p) < 0) {
        m->be->ops->free(m->be, p);
        return NULL;
    }
    m->be->ops->upload(m->be, p, src, bytes);
    return p;
}

/* ---- hparams ---------------------------------------------------------------- */

static int key_i64(const wk_gguf *g, const char *arch, const char *suffix, int64_t *out, int required, char *err,
                   size_t errlen) {
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    int rc = wk_gguf_get_i64(g, key, out);
    if (rc == -ENOENT && !required)
        return 1;
    if (rc < 0)
        cm_set_err(err, errlen, "metadata %s: %s", key, rc == -ENOENT ? "missing" : "wrong type or out of range");
    return rc;
}

static int key_f32(const wk_gguf *g, const char *arch, const char *suffix, float *out, int required, char *err,
                   size_t errlen) {
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    int rc = wk_gguf_get_f32(g, key, out);
    if (rc == -ENOENT && !required)
        return 1;
    if (rc < 0)
        cm_set_err(err, errlen, "metadata %s: %s", key, rc == -ENOENT ? "missing" : "wrong type");
    return rc;
}

static int positive_int(int64_t v, const char *what, int *out, char *err, size_t errlen) {
    if (v <= 0 || v > (1 << 24)) {
        cm_set_err(err, errlen, "metadata %s = %lld is out of range", what, (long long)v);
        return -EINVAL;
    }
    *out = (int)v;
    return 0;
}

static int load_hparams(wk_model *m, char *err, size_t errlen) {
    const wk_gguf *g = m->g;
    wk_hparams *hp = &m->hp;
    const char *s;
    size_t len;
    int rc;
    if (wk_gguf_get_str(g, "general.architecture", &s, &len) < 0) {
        cm_set_err(err, errlen, "metadata general.architecture missing");
        return -EINVAL;
    }
    if (len == 6 && !memcmp(s, "gemma3", 6))
        hp->arch = WK_ARCH_GEMMA3;
    else if (len == 5 && !memcmp(s, "qwen2", 5))
        hp->arch = WK_ARCH_QWEN2;
    else if (len == 5 && !memcmp(s, "llama", 5))
        hp->arch = WK_ARCH_LLAMA;
    else {
        cm_set_err(err, errlen, "unsupported architecture '%.*s' (supported: gemma3, qwen2, llama)",
                (int)(len > 64 ? 64 : len), s);
        return -ENOTSUP;
    }
    memcpy(hp->arch_name, s, len);
    hp->arch_name[len] = '\0';
    const char *a = hp->arch_name;

    int64_t v;
    if ((rc = key_i64(g, a, "embedding_length", &v, 1, err, errlen)) < 0 ||
        (rc = positive_int(v, "embedding_length", &hp->n_embd, err, errlen)) < 0)
        return rc;
    if ((rc = key_i64(g, a, "block_count", &v, 1, err, errlen)) < 0 ||
        (rc = positive_int(v, "block_count", &hp->n_layer, err, errlen)) < 0)
        return rc;
    if ((rc = key_i64(g, a, "feed_forward_length", &v, 1, err, errlen)) < 0 ||
        (rc = positive_int(v, "feed_forward_length", &hp->n_ff, err, errlen)) < 0)
        return rc;
    if ((rc = key_i64(g, a, "attention.head_count", &v, 1, err, errlen)) < 0 ||
        (rc = positive_int(v, "attention.head_count", &hp->n_head, err, errlen)) < 0)
        return rc;
    hp->n_head_kv = hp->n_head;
    if ((rc = key_i64(g, a, "attention.head_count_kv", &v, 0, err, errlen)) < 0)
        return rc;
    if (rc == 0 && (rc = positive_int(v, "attention.head_count_kv", &hp->n_head_kv, err, errlen)) < 0)
        return rc;
    if (hp->n_head % hp->n_head_kv) {
        cm_set_err(err, errlen, "attention.head_count %d is not a multiple of head_count_kv %d", hp->n_head,
                hp->n_head_kv);
        return -EINVAL;
    }
    hp->head_dim = hp->n_embd / hp->n_head;
    if ((rc = key_i64(g, a, "attention.key_length", &v, 0, err, errlen)) < 0)
        return rc;
    if (rc == 0 && (rc = positive_int(v, "attention.key_length", &hp->head_dim, err, errlen)) < 0)
        return rc;
    if ((rc = key_i64(g, a, "attention.value_length", &v, 0, err, errlen)) < 0)
        return rc;
    if (rc == 0 && v != hp->head_dim) {
        cm_set_err(err, errlen, "attention.value_length %lld != key_length %d is not supported", (long long)v,
                hp->head_dim);
        return -ENOTSUP;
    }
    hp->n_ctx_train = 0;
    if ((rc = key_i64(g, a, "context_length", &v, 0, err, errlen)) < 0)
        return rc;
    if (rc == 0 && (rc = positive_int(v, "context_length", &hp->n_ctx_train, err, errlen)) < 0)
        return rc;
    if ((rc = key_f32(g, a, "attention.layer_norm_rms_epsilon", &hp->norm_eps, 1, err, errlen)) < 0)
        return rc;
    hp->rope_base = 10000.0f;
    if ((rc = key_f32(g, a, "rope.freq_base", &hp->rope_base, 0, err, errlen)) < 0)
        return rc;
    hp->rope_base_swa = hp->arch == WK_ARCH_GEMMA3 ? 10000.0f : hp->rope_base;
    hp->n_rot = hp->head_dim;
    if ((rc = key_i64(g, a, "rope.dimension_count", &v, 0, err, errlen)) < 0)
        return rc;
    if (rc == 0 && (rc = positive_int(v, "rope.dimension_count", &hp->n_rot, err, errlen)) < 0)
        return rc;
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2) {
        cm_set_err(err, errlen, "rope.dimension_count %d is odd or exceeds head dim %d", hp->n_rot, hp->head_dim);
        return -EINVAL;
    }

    // rope scaling: none or linear (factor f => positions scaled by 1/f)
    hp->rope_freq_scale = 1.0f;
    char key[128];
    snprintf(key, sizeof(key), "%s.rope.scaling.type", a);
    rc = wk_gguf_get_str(g, key, &s, &len);
    if (rc == 0 && !(len == 4 && !memcmp(s, "none", 4))) {
        if (!(len == 6 && !memcmp(s, "linear", 6))) {
            cm_set_err(err, errlen, "%s '%.*s' is not supported (none, linear)", key, (int)(len > 32 ? 32 : len), s);
            return -ENOTSUP;
        }
        float factor = 1.0f;
        if ((rc = key_f32(g, a, "rope.scaling.factor", &factor, 1, err, errlen)) < 0)
            return rc;
        if (!(factor > 0.0f)) {
            cm_set_err(err, errlen, "%s.rope.scaling.factor %g is not positive", a, (double)factor);
            return -EINVAL;
        }
        hp->rope_freq_scale = 1.0f / factor;
    } else if (rc == 0 || rc == -ENOENT) {
        // no scaling type: a bare factor is still honored as linear (older converters)
        float factor = 0.0f;
        if ((rc = key_f32(g, a, "rope.scale_linear", &factor, 0, err, errlen)) < 0)
            return rc;
        if (rc == 0 && factor > 0.0f)
            hp->rope_freq_scale = 1.0f / factor;
    }

    hp->sliding_window = 0;
    if (hp->arch == WK_ARCH_GEMMA3) {
        if ((rc = key_i64(g, a, "attention.sliding_window", &v, 1, err, errlen)) < 0 ||
            (rc = positive_int(v, "attention.sliding_window", &hp->sliding_window, err, errlen)) < 0)
            return rc;
    }

    m->final_softcap = 0.0f;
    if ((rc = key_f32(g, a, "final_logit_softcapping", &m->final_softcap, 0, err, errlen)) < 0)
        return rc;
    return 0;
}

/* ---- weights ---------------------------------------------------------------- */

/* A float matrix as E4M3 records (kn_fp8.h: an f32 scale per row), thread ith of
 * nth (kn_pool) taking rows [n_out * ith / nth, n_out * (ith + 1) / nth). */
typedef struct fp8_job {
    kn_type type;
    const uint8_t *src;
    uint8_t *dst;
    float *rows; // [nth][n_in]: each thread's dequantized row
    int64_t n_in, n_out;
} fp8_job;

static void fp8_rows_run(void *ctx, int ith, int nth) {
    const fp8_job *j = ctx;
    const size_t rb = kn_row_bytes(j->type, j->n_in);
    float *row = j->rows + (size_t)ith * (size_t)j->n_in;
    for (int64_t o = j->n_out * ith / nth; o < j->n_out * (ith + 1) / nth; o++) {
        kn_dequant_row(j->type, j->src + (size_t)o * rb, row, j->n_in);
        kn_e4m3_rec_put(j->dst, (size_t)o, row, (int)j->n_in); // record o: bytes [o * qb, (o + 1) * qb)
    }
}

/* w = the float matrix t as E4M3 rows (WK_QUANT_FP8), in a new backend allocation.
 * The rows are split over the online CPUs (an 8B model's projections are 7e9
 * weights at about 3 ns each); without a pool they run in this thread. */
static int bind_fp8(wk_model *m, const wk_gguf_tensor *t, const char *name, kn_weight *w, char *err, size_t errlen) {
    enum { MAX_THREADS = 32, MIN_ROWS = 64 };
    const size_t qb = kn_row_bytes(KN_E4M3, w->n_in);
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t n = cpus < MAX_THREADS ? cpus : MAX_THREADS;
    if (n > w->n_out / MIN_ROWS)
        n = w->n_out / MIN_ROWS;
    kn_pool *pool = n > 1 ? kn_pool_create((int)n) : NULL;
    const int nth = pool ? kn_pool_size(pool) : 1;
    fp8_job job = {.type = t->type, .src = t->data, .dst = malloc(qb * (size_t)w->n_out),
                   .rows = malloc((size_t)nth * (size_t)w->n_in * sizeof(float)), .n_in = w->n_in,
                   .n_out = w->n_out};
    const int ok = job.dst && job.rows;
    if (ok && pool)
        kn_pool_run(pool, fp8_rows_run, &job);
    else if (ok)
        fp8_rows_run(&job, 0, 1);
    kn_pool_destroy(pool);
    w->type = KN_E4M3;
    w->data = ok ? to_backend(m, job.dst, qb * (size_t)w->n_out) : NULL;
    free(job.dst);
    free(job.rows);
    if (!w->data) {
        cm_set_err(err, errlen, "out of memory for the FP8 copy of %s", name);
        return -ENOMEM;
    }
    return 0;
}

/* Binds a 2-D weight [n_out rows of n_in]; fp8: a layer projection, quantized to
 * FP8 under WK_QUANT_FP8 when it is a float matrix. Returns 0, 1 (absent and
 * optional) or a negative errno with err naming the tensor. */
static int bind_matrix(wk_model *m, const char *name, int64_t n_in, int64_t n_out, int required, int fp8,
                       kn_weight *w, char *err, size_t errlen) {
    const wk_gguf_tensor *t = wk_gguf_tensor_get(m->g, name);
    if (!t) {
        if (!required)
            return 1;
        cm_set_err(err, errlen, "missing tensor %s", name);
        return -EINVAL;
    }
    if (t->n_dims > 2 || t->ne[0] != n_in || t->ne[1] != n_out || t->ne[2] != 1 || t->ne[3] != 1) {
        cm_set_err(err, errlen, "tensor %s has shape [%lld, %lld], expected [%lld, %lld]", name, (long long)t->ne[0],
                (long long)t->ne[1], (long long)n_in, (long long)n_out);
        return -EINVAL;
    }
    size_t rb = kn_row_bytes(t->type, n_in);
    if (!kn_type_supported(t->type) || !rb) {
        cm_set_err(err, errlen, "tensor %s has unsupported type %s", name, kn_type_name(t->type));
        return -ENOTSUP;
    }
    if (t->size < rb * (size_t)n_out) {
        cm_set_err(err, errlen, "tensor %s is truncated", name);
        return -EINVAL;
    }
    w->type = t->type;
    w->n_in = n_in;
    w->n_out = n_out;
    m->n_proj += fp8;
    if (fp8 && m->quant == WK_QUANT_FP8 && (t->type == KN_F32 || t->type == KN_F16 || t->type == KN_BF16) &&
        n_in <= INT32_MAX) {
        m->n_fp8++;
        return bind_fp8(m, t, name, w, err, errlen);
    }
    w->data = m->host ? t->data : to_backend(m, t->data, rb * (size_t)n_out);
    if (!w->data) {
        cm_set_err(err, errlen, "out of backend memory for %s", name);
        return -ENOMEM;
    }
    return 0;
}

/* Binds a 1-D vector of n floats (dequantized to f32 if stored otherwise).
 * Returns 0, 1 (absent and optional) or a negative errno. */
static int bind_vector(wk_model *m, const char *name, int64_t n, int required, const float **out, char *err,
                       size_t errlen) {
    const wk_gguf_tensor *t = wk_gguf_tensor_get(m->g, name);
    *out = NULL;
    if (!t) {
        if (!required)
            return 1;
        cm_set_err(err, errlen, "missing tensor %s", name);
        return -EINVAL;
    }
    if (t->n_dims != 1 || t->ne[0] != n) {
        cm_set_err(err, errlen, "tensor %s has shape [%lld, %lld], expected [%lld]", name, (long long)t->ne[0],
                (long long)t->ne[1], (long long)n);
        return -EINVAL;
    }
    size_t rb = kn_row_bytes(t->type, n);
    if (!rb || t->size < rb || (t->type != KN_F32 && t->type != KN_F16 && t->type != KN_BF16)) {
        cm_set_err(err, errlen, "tensor %s has unsupported type %s for a vector", name, kn_type_name(t->type));
        return -ENOTSUP;
    }
    if (t->type == KN_F32 && m->host && ((uintptr_t)t->data % sizeof(float)) == 0) {
        *out = t->data;
        return 0;
    }
    float *tmp = malloc((size_t)n * sizeof(float));
    if (!tmp) {
        cm_set_err(err, errlen, "out of memory for %s", name);
        return -ENOMEM;
    }
    kn_dequant_row(t->type, t->data, tmp, n);
    *out = to_backend(m, tmp, (size_t)n * sizeof(float));
    free(tmp);
    if (!*out) {
        cm_set_err(err, errlen, "out of backend memory for %s", name);
        return -ENOMEM;
    }
    return 0;
}

static int bind_layer(wk_model *m, int il, char *err, size_t errlen) {
    const wk_hparams *hp = &m->hp;
    wk_layer *L = &m->layers[il];
    const int64_t E = hp->n_embd, QD = (int64_t)hp->n_head * hp->head_dim;
    const int64_t KD = (int64_t)hp->n_head_kv * hp->head_dim;
    const int gemma = hp->arch == WK_ARCH_GEMMA3;
    char n[96];
    int rc;
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d.%s", il, s), n)
    if ((rc = bind_vector(m, NAME("attn_norm.weight"), E, 1, &L->attn_norm, err, errlen)) < 0 ||
        (rc = bind_vector(m, NAME("ffn_norm.weight"), E, 1, &L->ffn_norm, err, errlen)) < 0 ||
        (rc = bind_matrix(m, NAME("attn_q.weight"), E, QD, 1, 1, &L->wq, err, errlen)) < 0 ||
        (rc = bind_matrix(m, NAME("attn_k.weight"), E, KD, 1, 1, &L->wk, err, errlen)) < 0 ||
        (rc = bind_matrix(m, NAME("attn_v.weight"), E, KD, 1, 1, &L->wv, err, errlen)) < 0 ||
        (rc = bind_matrix(m, NAME("attn_output.weight"), QD, E, 1, 1, &L->wo, err, errlen)) < 0 ||
        (rc = bind_matrix(m, NAME("ffn_gate.weight"), E, hp->n_ff, 1, 1, &L->gate, err, errlen)) < 0 ||
        (rc = bind_matrix(m, NAME("ffn_up.weight"), E, hp->n_ff, 1, 1, &L->up, err, errlen)) < 0 ||
        (rc = bind_matrix(m, NAME("ffn_down.weight"), hp->n_ff, E, 1, 1, &L->down, err, errlen)) < 0 ||
        (rc = bind_vector(m, NAME("attn_q.bias"), QD, 0, &L->wq.bias, err, errlen)) < 0 ||
        (rc = bind_vector(m, NAME("attn_k.bias"), KD, 0, &L->wk.bias, err, errlen)) < 0 ||
        (rc = bind_vector(m, NAME("attn_v.bias"), KD, 0, &L->wv.bias, err, errlen)) < 0 ||
        (rc = bind_vector(m, NAME("attn_q_norm.weight"), hp->head_dim, gemma, &L->q_norm, err, errlen)) < 0 ||
        (rc = bind_vector(m, NAME("attn_k_norm.weight"), hp->head_dim, gemma, &L->k_norm, err, errlen)) < 0 ||
        (rc = bind_vector(m, NAME("post_attention_norm.weight"), E, gemma, &L->post_attn_norm, err, errlen)) < 0 ||
        (rc = bind_vector(m, NAME("post_ffw_norm.weight"), E, gemma, &L->post_ffw_norm, err, errlen)) < 0)
        return rc;
#undef NAME
    if (hp->arch == WK_ARCH_QWEN2 && (!L->wq.bias || !L->wk.bias || !L->wv.bias)) {
        cm_set_err(err, errlen, "qwen2 layer %d lacks attn_q/k/v.bias", il);
        return -EINVAL;
    }
    // gemma3: 5 sliding-window layers, then 1 global (llama.cpp set_swa_pattern(6))
    int swa = gemma && (il % 6) < 5;
    L->window = swa ? hp->sliding_window : 0;
    L->rope_base = swa ? hp->rope_base_swa : hp->rope_base;
    L->rope_scale = swa ? 1.0f : hp->rope_freq_scale;
    return 0;
}

/* Binds g's weights on be. On success *out owns everything but g. */
int wk_model_load(const wk_gguf *g, kn_backend *be, wk_quant quant, wk_model **out, char *err, size_t errlen) {
    int rc;
    *out = NULL;
    cm_set_err(err, errlen, "no error");
    wk_model *m = calloc(1, sizeof(*m));
    if (!m) {
        cm_set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    m->g = g;
    m->be = be;
    m->quant = quant;
    m->host = !strcmp(be->ops->name, "cpu") || !strcmp(be->ops->name, "ref");
    if ((rc = load_hparams(m, err, errlen)) < 0)
        goto fail;
    wk_hparams *hp = &m->hp;

    const wk_gguf_tensor *te = wk_gguf_tensor_get(g, "token_embd.weight");
    if (!te) {
        cm_set_err(err, errlen, "missing tensor token_embd.weight");
        rc = -EINVAL;
        goto fail;
    }
    if (te->n_dims != 2 || te->ne[0] != hp->n_embd || te->ne[1] <= 0 || te->ne[1] > INT32_MAX) {
        cm_set_err(err, errlen, "tensor token_embd.weight has shape [%lld, %lld], expected [%d, n_vocab]",
                (long long)te->ne[0], (long long)te->ne[1], hp->n_embd);
        rc = -EINVAL;
        goto fail;
    }
    hp->n_vocab = (int)te->ne[1];
    if ((rc = bind_matrix(m, "token_embd.weight", hp->n_embd, hp->n_vocab, 1, 0, &m->tok_embd, err, errlen)) < 0)
        goto fail;
    rc = bind_matrix(m, "output.weight", hp->n_embd, hp->n_vocab, 0, 0, &m->output, err, errlen);
    if (rc < 0)
        goto fail;
    if (rc == 1)
        m->output = m->tok_embd; // tied embeddings
    if ((rc = bind_vector(m, "output_norm.weight", hp->n_embd, 1, &m->output_norm, err, errlen)) < 0)
        goto fail;
    if ((rc = bind_vector(m, "rope_freqs.weight", hp->n_rot / 2, 0, &m->rope_freqs, err, errlen)) < 0)
        goto fail;
    m->layers = calloc((size_t)hp->n_layer, sizeof(wk_layer));
    if (!m->layers) {
        cm_set_err(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    for (int il = 0; il < hp->n_layer; il++)
        if ((rc = bind_layer(m, il, err, errlen)) < 0)
            goto fail;

    m->embd_scale = hp->arch == WK_ARCH_GEMMA3 ? sqrtf((float)hp->n_embd) : 1.0f;
    m->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    if (hp->arch == WK_ARCH_GEMMA3 && hp->n_layer == 62) // gemma 3 27B: query_pre_attn_scalar = n_embd / n_head
        m->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
    m->rope_mode = hp->arch == WK_ARCH_LLAMA ? KN_ROPE_NORM : KN_ROPE_NEOX;
    m->act = hp->arch == WK_ARCH_GEMMA3 ? 1 : 0;
    *out = m;
    cm_set_err(err, errlen, "ok");
    return 0;
fail:
    wk_model_free(m);
    return rc;
}

void wk_model_quantized(const wk_model *m, int *n_fp8, int *n_proj) {
    *n_fp8 = m->n_fp8;
    *n_proj = m->n_proj;
}

static void drop_graphs(wk_model *m) {
    for (int i = 0; i < m->n_graphs; i++)
        m->be->ops->graph_free(m->be, m->graphs[i].graph);
    m->n_graphs = 0;
}

void wk_model_set_exec(wk_model *m, wk_exec_mode mode) {
    drop_graphs(m);
    m->exec = mode;
}

/* Frees the model, its uploaded weights and its activations; g is untouched. */
void wk_model_free(wk_model *m) {
    if (!m)
        return;
    drop_graphs(m);
    for (int i = 0; i < m->n_owned; i++)
        m->be->ops->free(m->be, m->owned[i]);
    free(m->owned);
    if (m->arena)
        m->be->ops->free(m->be, m->arena);
    free(m->h_batch);
    free(m->h_adj_off);
    free(m->layers);
    free(m);
}

const wk_hparams *wk_model_hparams(const wk_model *m) {
    return &m->hp;
}

/* ---- activations ------------------------------------------------------------ */

static size_t align64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

typedef struct arena_part {
    void **dst;
    size_t bytes;
} arena_part;

/* Adjustment entries the backend holds for one sample op: every row's logit
 * bias and a whole vocabulary more, so that any single row fits (one entry per
 * token; wk_model_forward splits the rows when they hold more). */
static size_t adj_cap(const wk_model *m, int max_logits) {
    return (size_t)max_logits * PROTO_MAX_BIAS + (size_t)m->hp.n_vocab;
}

static size_t mask_words(const wk_model *m) {
    return ((size_t)m->hp.n_vocab + 31) / 32;
}

/* The activation buffers of wk_model_reserve, in arena order; their count. */
static size_t arena_parts(wk_model *m, int max_tokens, int max_logits, int max_seq, int max_blocks,
                          arena_part parts[23]) {
    const wk_hparams *hp = &m->hp;
    const size_t T = (size_t)max_tokens, L = (size_t)max_logits, F = sizeof(float), I = sizeof(int32_t);
    const size_t E = (size_t)hp->n_embd, QD = (size_t)hp->n_head * hp->head_dim;
    const size_t KD = (size_t)hp->n_head_kv * hp->head_dim, FF = (size_t)hp->n_ff;
    const arena_part all[] = {
        {(void **)&m->x, T * E * F},     {(void **)&m->h, T * E * F},
        {(void **)&m->q, T * QD * F},    {(void **)&m->k, T * KD * F},
        {(void **)&m->v, T * KD * F},    {(void **)&m->att, T * QD * F},
        {(void **)&m->o, T * E * F},     {(void **)&m->fg, T * FF * F},
        {(void **)&m->fu, T * FF * F},   {(void **)&m->xl, L * E * F},
        {(void **)&m->logits, L * (size_t)hp->n_vocab * F},
        {(void **)&m->d_tok, T * I},     {(void **)&m->d_pos, T * I},
        {(void **)&m->d_seq, T * I},     {(void **)&m->d_slot, T * I},
        {(void **)&m->d_rows, L * I},    {(void **)&m->d_bt, (size_t)max_seq * (size_t)max_blocks * I},
        {(void **)&m->d_smp, L * sizeof(kn_sample_params)},
        {(void **)&m->d_smp_out, L * sizeof(kn_sample_out)},
        {(void **)&m->d_adj_off, (L + 1) * I},
        {(void **)&m->d_adj_id, adj_cap(m, max_logits) * I},
        {(void **)&m->d_adj_val, adj_cap(m, max_logits) * F},
        {(void **)&m->d_masks, L * mask_words(m) * sizeof(uint32_t)},
    };
    _Static_assert(sizeof all / sizeof all[0] == 23, "arena_parts' array size");
    memcpy(parts, all, sizeof all);
    return sizeof all / sizeof all[0];
}

static size_t arena_bytes(const arena_part *parts, size_t n_parts) {
    size_t total = 0;
    for (size_t i = 0; i < n_parts; i++)
        total += align64(parts[i].bytes);
    return total;
}

size_t wk_model_reserve_bytes(wk_model *m, int max_tokens, int max_logits, int max_seq, int max_blocks) {
    arena_part parts[23];
    return arena_bytes(parts, arena_parts(m, max_tokens, max_logits, max_seq, max_blocks, parts));
}

/* The batch buffers d_tok .. d_bt lie in that order in the arena and go up in
 * one upload: the bytes from d_tok to the end of n_bt block-table entries. */
static size_t batch_end(const wk_model *m, int64_t n_bt) {
    return (size_t)((const char *)(m->d_bt + n_bt) - (const char *)m->d_tok);
}

/* Where device batch buffer d is in the host staging h_batch. */
static int32_t *batch_host(const wk_model *m, const int32_t *d) {
    return (int32_t *)(m->h_batch + ((const char *)d - (const char *)m->d_tok));
}

/* Replaces any earlier reservation. The arena is one backend allocation. */
int wk_model_reserve(wk_model *m, int max_tokens, int max_logits, int max_seq, int max_blocks) {
    const wk_hparams *hp = &m->hp;
    if (max_tokens <= 0 || max_logits <= 0 || max_seq <= 0 || max_blocks <= 0)
        return -EINVAL;
    drop_graphs(m); // they point into the arena
    if (m->arena)
        m->be->ops->free(m->be, m->arena);
    m->arena = NULL;
    free(m->h_batch);
    free(m->h_adj_off);
    m->h_batch = NULL;
    m->h_slot = m->h_adj_off = NULL;
    m->max_tokens = m->max_logits = m->max_seq = m->max_blocks = 0;

    const size_t E = (size_t)hp->n_embd, QD = (size_t)hp->n_head * hp->head_dim, I = sizeof(int32_t);
    arena_part parts[23];
    const size_t n_parts = arena_parts(m, max_tokens, max_logits, max_seq, max_blocks, parts);
    m->arena = m->be->ops->alloc(m->be, arena_bytes(parts, n_parts));
    size_t off = 0;
    for (size_t i = 0; m->arena && i < n_parts; i++) {
        *parts[i].dst = (char *)m->arena + off;
        off += align64(parts[i].bytes);
    }
    const size_t batch_bytes = m->arena ? batch_end(m, max_seq * max_blocks) : 0;
    m->h_batch = malloc(batch_bytes ? batch_bytes : 1);
    m->h_adj_off = malloc(((size_t)max_logits + 1) * I);
    if (!m->arena || !m->h_batch || !m->h_adj_off) {
        if (m->arena)
            m->be->ops->free(m->be, m->arena);
        m->arena = NULL;
        free(m->h_batch);
        free(m->h_adj_off);
        m->h_batch = NULL;
        m->h_adj_off = NULL;
        return -ENOMEM;
    }
    m->h_slot = batch_host(m, m->d_slot);
    if (!strcmp(m->be->ops->name, "cpu")) {
        size_t max_in = (size_t)hp->n_ff > QD ? (size_t)hp->n_ff : QD;
        if (E > max_in)
            max_in = E;
        (void)kn_cpu_reserve(m->be, max_tokens, (int64_t)max_in); // optional: failure only means smaller chunks
    }
    m->max_tokens = max_tokens;
    m->max_logits = max_logits;
    m->max_seq = max_seq;
    m->max_blocks = max_blocks;
    return 0;
}

/* ---- forward ---------------------------------------------------------------- */

/* Checks the batch against the reservation, the vocabulary and the cache, and
 * computes each token's physical cache slot into m->h_slot. */
static int check_batch(wk_model *m, wk_kv *kv, const wk_batch *b) {
    const int bs = wk_kv_block_size(kv), nb = wk_kv_n_blocks(kv);
    if (b->n_tok <= 0 || b->n_tok > m->max_tokens || b->n_logits < 0 || b->n_logits > m->max_logits ||
        b->n_seq <= 0 || b->n_seq > m->max_seq || b->max_blocks <= 0 || b->max_blocks > m->max_blocks ||
        (int64_t)b->n_seq * b->max_blocks > (int64_t)m->max_seq * m->max_blocks)
        return -EINVAL;
    if (!b->tokens || !b->pos || !b->seq || !b->block_tables || (b->n_logits && !b->logit_rows))
        return -EINVAL;
    if (wk_kv_k(kv, m->hp.n_layer - 1) == NULL)
        return -EINVAL;
    for (int t = 0; t < b->n_tok; t++) {
        int32_t tok = b->tokens[t], pos = b->pos[t], s = b->seq[t];
        if (tok < 0 || tok >= m->hp.n_vocab || pos < 0 || s < 0 || s >= b->n_seq)
            return -EINVAL;
        if (pos / bs >= b->max_blocks)
            return -EINVAL;
        const int32_t *bt = b->block_tables + (size_t)s * b->max_blocks;
        for (int j = 0; j <= pos / bs; j++) // every block attention will read
            if (bt[j] < 0 || bt[j] >= nb)
                return -EINVAL;
        m->h_slot[t] = bt[pos / bs] * bs + pos % bs;
    }
    for (int i = 0; i < b->n_logits; i++)
        if (b->logit_rows[i] < 0 || b->logit_rows[i] >= b->n_tok)
            return -EINVAL;
    if (b->n_sample < 0 || b->n_sample > b->n_logits || (b->n_sample && (!b->sample || !b->sampled)))
        return -EINVAL;
    if (b->n_mask < 0 || b->n_mask > b->n_sample || (b->n_mask && !b->masks))
        return -EINVAL;
    for (int i = 0; i < b->n_sample; i++) {
        const kn_sample_params *p = &b->sample[i];
        if (p->mask >= b->n_mask || p->n_top > KN_MAX_TOP || !(p->u >= 0.0f && p->u < 1.0f))
            return -EINVAL;
    }
    if (b->n_sample && b->adj_off) {
        if (b->adj_off[0] != 0)
            return -EINVAL;
        for (int i = 0; i < b->n_sample; i++)
            if (b->adj_off[i + 1] < b->adj_off[i] || b->adj_off[i + 1] - b->adj_off[i] > m->hp.n_vocab)
                return -EINVAL;
        if (b->adj_off[b->n_sample] && (!b->adj_id || !b->adj_val))
            return -EINVAL;
        for (int32_t i = 0; i < b->adj_off[b->n_sample]; i++)
            if (b->adj_id[i] < 0 || b->adj_id[i] >= m->hp.n_vocab)
                return -EINVAL;
    }
    return 0;
}

/* y = x W^T, W alone (kn.h's matmul takes several weights of one input). */
static void matmul1(wk_model *m, const kn_weight *w, const float *x, int64_t n_tok, float *y) {
    m->be->ops->matmul(m->be, &w, 1, x, n_tok, &y);
}

/* One decoder layer over the n_tok tokens in the device batch buffers, whose block
 * tables are max_blocks wide. */
static void forward_layer(wk_model *m, wk_kv *kv, int il, int n_tok, int max_blocks) {
    kn_backend *be = m->be;
    const kn_backend_ops *op = be->ops;
    const wk_hparams *hp = &m->hp;
    const wk_layer *L = &m->layers[il];
    const int64_t T = n_tok, E = hp->n_embd, hd = hp->head_dim;
    const int64_t KD = (int64_t)hp->n_head_kv * hd;

    // attention block (m->h: x under this layer's attn_norm, from the step before)
    const kn_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
    float *qkv_out[3] = {m->q, m->k, m->v};
    op->matmul(be, qkv, 3, m->h, T, qkv_out);
    const kn_rope_args rope = {.q = m->q,
                               .k = m->k,
                               .pos = m->d_pos,
                               .n_tok = T,
                               .n_head = hp->n_head,
                               .n_kv_head = hp->n_head_kv,
                               .head_dim = (int)hd,
                               .q_norm = L->q_norm, // Gemma 3's per-head norms, else NULL
                               .k_norm = L->k_norm,
                               .eps = hp->norm_eps,
                               .n_rot = hp->n_rot,
                               .base = L->rope_base,
                               .freq_scale = L->rope_scale,
                               .freq_factors = m->rope_freqs,
                               .mode = m->rope_mode};
    op->rope(be, &rope);
    void *kc = wk_kv_k(kv, il), *vc = wk_kv_v(kv, il);
    op->kv_store(be, kc, vc, wk_kv_type(kv), m->k, m->v, m->d_slot, T, KD, hp->head_dim);
    kn_attn_args a = {
        .n_tok = (int)T,
        .n_head = hp->n_head,
        .n_kv_head = hp->n_head_kv,
        .head_dim = (int)hd,
        .scale = m->attn_scale,
        .softcap = 0.0f,
        .window = L->window,
        .q = m->q,
        .out = m->att,
        .k_cache = kc,
        .v_cache = vc,
        .kv_type = wk_kv_type(kv),
        .block_size = wk_kv_block_size(kv),
        .tok_seq = m->d_seq,
        .tok_pos = m->d_pos,
        .block_tables = m->d_bt,
        .max_blocks = max_blocks,
    };
    op->attention(be, &a);
    matmul1(m, &L->wo, m->att, T, m->o);
    op->add_norm(be, m->x, m->o, L->post_attn_norm, L->ffn_norm, T, E, hp->norm_eps, m->h);

    // feed-forward block; the next layer's attn_norm (none after the last layer:
    // the output norm runs on the logit rows only)
    const kn_weight *gate_up[2] = {&L->gate, &L->up};
    float *gate_up_out[2] = {m->fg, m->fu};
    op->matmul(be, gate_up, 2, m->h, T, gate_up_out);
    op->glu(be, m->fg, m->fu, T * hp->n_ff, m->act, m->fg);
    matmul1(m, &L->down, m->fg, T, m->o);
    const int last = il + 1 == hp->n_layer;
    op->add_norm(be, m->x, m->o, L->post_ffw_norm, last ? NULL : m->layers[il + 1].attn_norm, T, E, hp->norm_eps,
                 last ? NULL : m->h);
}

/* The whole step over the device batch buffers: embeddings, the layers, and the
 * final norm and LM head on n_logits rows (none when 0). Only launches ops, so it
 * can be recorded as a graph. */
static void forward_ops(wk_model *m, wk_kv *kv, int n_tok, int max_blocks, int n_logits) {
    kn_backend *be = m->be;
    const kn_backend_ops *op = be->ops;
    const wk_hparams *hp = &m->hp;
    op->get_rows(be, &m->tok_embd, m->d_tok, n_tok, m->embd_scale, m->x);
    op->rmsnorm(be, m->x, m->layers[0].attn_norm, n_tok, hp->n_embd, hp->norm_eps, m->h);
    for (int il = 0; il < hp->n_layer; il++)
        forward_layer(m, kv, il, n_tok, max_blocks);
    if (!n_logits)
        return;
    kn_weight xw = {.type = KN_F32, .n_in = hp->n_embd, .n_out = n_tok, .data = m->x};
    op->get_rows(be, &xw, m->d_rows, n_logits, 1.0f, m->xl);
    op->rmsnorm(be, m->xl, m->output_norm, n_logits, hp->n_embd, hp->norm_eps, m->xl);
    matmul1(m, &m->output, m->xl, n_logits, m->logits);
    if (m->final_softcap > 0.0f)
        op->softcap(be, m->logits, (int64_t)n_logits * hp->n_vocab, m->final_softcap);
}

static int pow2_at_least(int n) {
    int p = 1;
    while (p < n)
        p *= 2;
    return p;
}

/* The padded shape of b when it runs as a fixed-shape batch (design note): 1 with
 * *n_tok and *max_blocks set, or 0 when it runs as it is. */
static int fixed_shape(const wk_model *m, const wk_batch *b, int *n_tok, int *max_blocks) {
    if (m->exec == WK_EXEC_EAGER || (m->exec == WK_EXEC_GRAPHS && !m->be->ops->capture_begin))
        return 0;
    if (b->n_logits != b->n_tok) // the graph computes logits for every row, in logit_rows' order
        return 0;
    *n_tok = pow2_at_least(b->n_tok);
    *max_blocks = pow2_at_least(b->max_blocks);
    if (*max_blocks > m->max_blocks)
        *max_blocks = m->max_blocks;
    return *n_tok <= m->max_tokens && *n_tok <= m->max_logits;
}

/* Uploads b with its tokens padded to n_tok (>= b->n_tok; padding tokens as in the
 * design note, each with a logit row after b's) and its block tables widened to
 * max_blocks (>= b->max_blocks). */
static void upload_batch(wk_model *m, const wk_batch *b, int n_tok, int max_blocks) {
    const size_t T = (size_t)n_tok, I = sizeof(int32_t), n = (size_t)b->n_tok, nl = (size_t)b->n_logits;
    int32_t *tok = batch_host(m, m->d_tok), *pos = batch_host(m, m->d_pos), *seq = batch_host(m, m->d_seq);
    int32_t *rows = batch_host(m, m->d_rows), *bt = batch_host(m, m->d_bt);
    memcpy(tok, b->tokens, n * I);
    memcpy(pos, b->pos, n * I);
    memcpy(seq, b->seq, n * I);
    memcpy(rows, b->logit_rows, nl * I); // (h_slot: check_batch wrote the real tokens')
    for (size_t t = n; t < T; t++) {
        tok[t] = pos[t] = seq[t] = 0;
        m->h_slot[t] = -1;
        rows[nl + t - n] = (int32_t)t;
    }
    for (int s = 0; s < b->n_seq; s++) {
        int32_t *row = bt + (size_t)s * (size_t)max_blocks;
        memcpy(row, b->block_tables + (size_t)s * (size_t)b->max_blocks, (size_t)b->max_blocks * I);
        for (int j = b->max_blocks; j < max_blocks; j++)
            row[j] = -1; // past every position of the batch: never read
    }
    // one upload; the unused ends of the buffers go along (a few KiB at most)
    m->be->ops->upload(m->be, m->d_tok, m->h_batch, batch_end(m, (int64_t)b->n_seq * max_blocks));
}

/* Runs the uploaded padded batch: from its graph (recorded now if this is the
 * shape's first step), or op by op. */
static void run_fixed(wk_model *m, wk_kv *kv, int n_tok, int max_blocks) {
    kn_backend *be = m->be;
    if (m->exec != WK_EXEC_GRAPHS) {
        forward_ops(m, kv, n_tok, max_blocks, n_tok);
        return;
    }
    for (int i = 0; i < m->n_graphs; i++) {
        const struct wk_graph *g = &m->graphs[i];
        if (g->n_tok == n_tok && g->max_blocks == max_blocks && g->kv == kv) {
            be->ops->graph_launch(be, g->graph);
            return;
        }
    }
    be->ops->capture_begin(be);
    forward_ops(m, kv, n_tok, max_blocks, n_tok);
    void *graph = be->ops->capture_end(be);
    if (!graph) { // a bug (an op that cannot be recorded): say so, and run this step op by op
        cm_error("model: recording the %d-token step as a graph failed; running op by op from now on",
                     n_tok);
        m->exec = WK_EXEC_PADDED;
        forward_ops(m, kv, n_tok, max_blocks, n_tok);
        return;
    }
    if (m->n_graphs == WK_MAX_GRAPHS) { // every shape seen so far is in use: the oldest goes
        be->ops->graph_free(be, m->graphs[0].graph);
        memmove(m->graphs, m->graphs + 1, (WK_MAX_GRAPHS - 1) * sizeof m->graphs[0]);
        m->n_graphs--;
    }
    m->graphs[m->n_graphs++] = (struct wk_graph){n_tok, max_blocks, kv, graph};
    be->ops->graph_launch(be, graph);
}

/* The sample op over b's sampled rows, whose logits are x: in as few calls as
 * the backend's adjustment buffer allows (one, unless penalties over long
 * outputs fill it). */
static void sample_rows(wk_model *m, const wk_batch *b, float *x) {
    kn_backend *be = m->be;
    const kn_backend_ops *op = be->ops;
    const int64_t V = m->hp.n_vocab;
    if (b->n_mask)
        op->upload(be, m->d_masks, b->masks, (size_t)b->n_mask * mask_words(m) * sizeof(uint32_t));
    for (int r0 = 0, r1; r0 < b->n_sample; r0 = r1) {
        const int32_t a0 = b->adj_off ? b->adj_off[r0] : 0;
        r1 = b->adj_off ? r0 + 1 : b->n_sample; // one row always fits (adj_cap)
        while (r1 < b->n_sample && (size_t)(b->adj_off[r1 + 1] - a0) <= adj_cap(m, m->max_logits))
            r1++;
        const int n = r1 - r0;
        const int32_t na = b->adj_off ? b->adj_off[r1] - a0 : 0;
        op->upload(be, m->d_smp, b->sample + r0, (size_t)n * sizeof *b->sample);
        if (na) {
            for (int i = 0; i <= n; i++)
                m->h_adj_off[i] = b->adj_off[r0 + i] - a0;
            op->upload(be, m->d_adj_off, m->h_adj_off, (size_t)(n + 1) * sizeof(int32_t));
            op->upload(be, m->d_adj_id, b->adj_id + a0, (size_t)na * sizeof(int32_t));
            op->upload(be, m->d_adj_val, b->adj_val + a0, (size_t)na * sizeof(float));
        }
        op->sample(be, x + (size_t)r0 * (size_t)V, n, V, m->d_smp, na ? m->d_adj_off : NULL, m->d_adj_id,
                   m->d_adj_val, m->d_masks, m->d_smp_out);
        op->download(be, b->sampled + r0, m->d_smp_out, (size_t)n * sizeof(kn_sample_out));
    }
}

/* Runs b; logits (host, [n_logits, n_vocab]) are written by the call. */
int wk_model_forward(wk_model *m, wk_kv *kv, const wk_batch *b, float *logits) {
    if (!m->arena || !b || !kv)
        return -EINVAL;
    int rc = check_batch(m, kv, b);
    if (rc < 0)
        return rc;
    kn_backend *be = m->be;
    const kn_backend_ops *op = be->ops;
    const wk_hparams *hp = &m->hp;

    int fixed_tok, fixed_blocks;
    if (fixed_shape(m, b, &fixed_tok, &fixed_blocks)) {
        upload_batch(m, b, fixed_tok, fixed_blocks);
        run_fixed(m, kv, fixed_tok, fixed_blocks);
    } else {
        upload_batch(m, b, b->n_tok, b->max_blocks);
        forward_ops(m, kv, b->n_tok, b->max_blocks, b->n_logits);
    }
    if (!b->n_logits) {
        op->sync(be);
        return 0;
    }
    const int n_full = b->n_logits - b->n_sample;
    if (b->n_sample)
        sample_rows(m, b, m->logits + (size_t)n_full * (size_t)hp->n_vocab);
    if (n_full)
        op->download(be, logits, m->logits, (size_t)n_full * (size_t)hp->n_vocab * sizeof(float));
    return 0;
}
