/* test_model: the KV block pool and the forward pass's self-consistency.
 *
 * The pool checks need nothing. The model checks run on the Gemma 3 GGUF at
 * $KOLM_TEST_MODEL (default $KOLM_HOME or ~/.kolm models/gemma-3-270m-q4_k_m.gguf,
 * then /tmp/gemma.gguf) and are skipped, with a line saying
 * so, when it is absent. They assert that the same tokens give the same logits
 * however they are scheduled: one prefill batch vs one token per step; alone vs
 * interleaved with three other sequences in mixed prefill/decode batches; block
 * size 16 vs 1; and the cpu backend vs the scalar reference. Agreement with
 * llama.cpp itself is tests/integration/test_model_oracle.py. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kn.h"
#include "tests/tools/kt_model_run.h"
#include "tests/unit/kt.h"
#include "worker/wk_gguf.h"
#include "worker/wk_kv.h"
#include "worker/wk_model.h"

static void test_kv_pool(void) {
    kn_backend *be = kn_ref_create();
    ASSERT_TRUE(be != NULL);
    wk_kv *kv = wk_kv_create(be, 2, 1, 8, 4, 3, KN_F16);
    ASSERT_TRUE(kv != NULL);
    ASSERT_EQ(wk_kv_block_size(kv), 4);
    ASSERT_EQ(wk_kv_n_blocks(kv), 3);
    ASSERT_EQ(wk_kv_n_free(kv), 3);
    ASSERT_EQ(wk_kv_type(kv), KN_F16);
    // memory is zero-filled
    const uint16_t *k1 = wk_kv_k(kv, 1);
    int nz = 0;
    for (int i = 0; i < 3 * 4 * 1 * 8; i++)
        nz += k1[i] != 0;
    ASSERT_EQ(nz, 0);
    ASSERT_TRUE(wk_kv_k(kv, 2) == NULL);
    ASSERT_TRUE(wk_kv_v(kv, 0) != wk_kv_k(kv, 0));

    int32_t a = wk_kv_alloc(kv), b = wk_kv_alloc(kv), c = wk_kv_alloc(kv);
    ASSERT_TRUE(a >= 0 && b >= 0 && c >= 0 && a != b && b != c && a != c);
    ASSERT_EQ(wk_kv_alloc(kv), -1);
    ASSERT_EQ(wk_kv_n_free(kv), 0);
    wk_kv_ref(kv, b); // shared: needs two releases
    wk_kv_release(kv, b);
    ASSERT_EQ(wk_kv_n_free(kv), 0);
    wk_kv_release(kv, b);
    ASSERT_EQ(wk_kv_n_free(kv), 1);
    ASSERT_EQ(wk_kv_alloc(kv), b);
    wk_kv_release(kv, a);
    wk_kv_release(kv, b);
    wk_kv_release(kv, c);
    ASSERT_EQ(wk_kv_n_free(kv), 3);
    wk_kv_release(kv, c); // double release: logged, ignored
    ASSERT_EQ(wk_kv_n_free(kv), 3);
    wk_kv_free(kv);
    ASSERT_TRUE(wk_kv_create(be, 1, 1, 8, 0, 3, KN_F16) == NULL);
    wk_kv_free(NULL);
    be->ops->destroy(be);
}

typedef struct ctx {
    wk_gguf *g;
    kn_backend *be;
    wk_model *m;
    size_t V;
} ctx;

/* Runs toks through a fresh pool; out: [n_seq, all ? n : 1, V]. */
static int run(ctx *c, const int32_t *toks, int n, int n_seq, int mode, int bs, int all, float *out) {
    wk_kv *kv = wk_kv_create(c->be, wk_model_hparams(c->m)->n_layer, wk_model_hparams(c->m)->n_head_kv,
                             wk_model_hparams(c->m)->head_dim, bs, n_seq * kt_blocks_for(n, bs) + 2, KN_F16);
    if (!kv)
        return -ENOMEM;
    int rc = kt_reserve(c->m, n, n_seq, bs);
    if (rc == 0)
        rc = kt_run_seqs(c->m, kv, toks, n, n_seq, mode, 3, all, out);
    if (rc == 0 && wk_kv_n_free(kv) != wk_kv_n_blocks(kv))
        rc = -EFAULT; // blocks leaked
    wk_kv_free(kv);
    return rc;
}

static double max_abs(const float *a, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

static size_t argmax(const float *a, size_t n) {
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (a[i] > a[b])
            b = i;
    return b;
}

/* Compares rows of logits: finite, same top-1 per row, max diff within tol
 * relative to max(1, max|ref|). Prints the measured difference. */
static void check_close(const char *what, const float *ref, const float *got, size_t rows, size_t V, double rtol) {
    double md = 0.0;
    int finite = 1;
    for (size_t i = 0; i < rows * V; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i]))
            finite = 0;
        md = fmax(md, fabs((double)got[i] - ref[i]));
    }
    double tol = rtol * fmax(1.0, max_abs(ref, rows * V));
    printf("  %-40s max|diff| = %.3g (tol %.3g)\n", what, md, tol);
    ASSERT_TRUE(finite);
    ASSERT_TRUE(md <= tol);
    for (size_t r = 0; r < rows; r++)
        ASSERT_EQ(argmax(got + r * V, V), argmax(ref + r * V, V));
}

static void test_gemma(const char *path) {
    ctx c = {0};
    char err[256];
    if (access(path, R_OK) != 0) {
        printf("SKIP model checks: %s not found (set KOLM_TEST_MODEL)\n", path);
        return;
    }
    int rc = wk_gguf_open(path, &c.g, err, sizeof(err));
    ASSERT_EQ(rc, 0);
    if (rc)
        return;
    c.be = kn_cpu_create(0);
    ASSERT_TRUE(c.be != NULL);
    rc = wk_model_load(c.g, c.be, WK_QUANT_NONE, &c.m, err, sizeof(err));
    ASSERT_EQ(rc, 0);
    if (rc) {
        fprintf(stderr, "load: %s\n", err);
        goto cleanup;
    }
    const wk_hparams *hp = wk_model_hparams(c.m);
    ASSERT_EQ(hp->arch, WK_ARCH_GEMMA3);
    ASSERT_EQ(hp->n_vocab, 262144);
    ASSERT_EQ(hp->n_embd, 640);
    ASSERT_EQ(hp->n_layer, 18);
    ASSERT_EQ(hp->n_head, 4);
    ASSERT_EQ(hp->n_head_kv, 1);
    ASSERT_EQ(hp->head_dim, 256);
    ASSERT_EQ(hp->sliding_window, 512);
    ASSERT_NEAR(hp->rope_base, 1e6, 1.0);
    ASSERT_NEAR(hp->rope_base_swa, 1e4, 1e-3);
    c.V = (size_t)hp->n_vocab;

    // "<bos>The capital of France is" (llama.cpp's tokenization) and 7 more ids
    static const int32_t toks[] = {2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 5279, 529, 9405, 563};
    const int n = (int)(sizeof(toks) / sizeof(toks[0]));
    const size_t V = c.V;
    float *pre = malloc((size_t)n * V * sizeof(float));
    float *pre1 = malloc((size_t)n * V * sizeof(float));
    float *last = malloc(V * sizeof(float));
    float *mixed = malloc(4 * (size_t)n * V * sizeof(float));
    float *padded = malloc(4 * (size_t)n * V * sizeof(float));
    if (!pre || !pre1 || !last || !mixed || !padded) {
        ASSERT_TRUE(0);
        goto done;
    }

    // prefill, all rows, block size 16
    ASSERT_EQ(run(&c, toks, n, 1, KT_PREFILL, 16, 1, pre), 0);
    ASSERT_TRUE(max_abs(pre, (size_t)n * V) > 1.0); // not all zeros

    // one token per forward call: the last row must match
    ASSERT_EQ(run(&c, toks, n, 1, KT_STEP, 16, 0, last), 0);
    check_close("step vs prefill (last row)", pre + (size_t)(n - 1) * V, last, 1, V, 2e-3);

    // block size 1: every position in its own block
    ASSERT_EQ(run(&c, toks, n, 1, KT_PREFILL, 1, 1, pre1), 0);
    check_close("block size 1 vs 16 (all rows)", pre, pre1, (size_t)n, V, 2e-3);

    // four sequences, staggered, interleaved, mixed prefill/decode batches, block size 3
    ASSERT_EQ(run(&c, toks, n, 4, KT_MIXED, 3, 1, mixed), 0);
    for (int s = 0; s < 4; s++) {
        char what[64];
        snprintf(what, sizeof(what), "mixed batch, sequence %d vs alone", s);
        check_close(what, pre, mixed + (size_t)s * n * V, (size_t)n, V, 2e-3);
    }

    // the fixed-shape path (batches whose every token wants logits, padded to a power
    // of two as CUDA graphs replay them), op by op: the kernels are batch-invariant,
    // so the logits are the unpadded run's bit for bit
    wk_model_set_exec(c.m, WK_EXEC_PADDED);
    ASSERT_EQ(run(&c, toks, n, 4, KT_MIXED, 3, 1, padded), 0);
    ASSERT_EQ(memcmp(padded, mixed, 4 * (size_t)n * V * sizeof(float)), 0);
    ASSERT_EQ(run(&c, toks, n, 3, KT_STEP, 16, 1, padded), 0); // 3 tokens a step, padded to 4
    wk_model_set_exec(c.m, WK_EXEC_EAGER);
    ASSERT_EQ(run(&c, toks, n, 3, KT_STEP, 16, 1, mixed), 0);
    ASSERT_EQ(memcmp(padded, mixed, 3 * (size_t)n * V * sizeof(float)), 0);
    wk_model_set_exec(c.m, WK_EXEC_GRAPHS);

    // logit rows in any order, the last one sampled on the backend (greedy: only its
    // token comes out), eager and padded: the same logits as rows 0, 1, 2 in order
    {
        wk_kv *kv = wk_kv_create(c.be, hp->n_layer, hp->n_head_kv, hp->head_dim, 16, 3, KN_F16);
        ASSERT_TRUE(kv != NULL);
        ASSERT_EQ(wk_model_reserve(c.m, 4, 4, 3, 1), 0);
        int32_t bt[3] = {wk_kv_alloc(kv), wk_kv_alloc(kv), wk_kv_alloc(kv)};
        int32_t tk[3] = {2, 818, 5279}, ps[3] = {0, 0, 0}, sq[3] = {0, 1, 2}, in_order[3] = {0, 1, 2};
        int32_t shuffled[3] = {2, 0, 1};
        kn_sample_params sp = {.temperature = 0.0f, .top_p = 1.0f, .n_top = 2, .mask = -1};
        kn_sample_out out;
        wk_batch b = {.n_tok = 3, .tokens = tk, .pos = ps, .seq = sq, .block_tables = bt, .n_seq = 3,
                      .max_blocks = 1, .logit_rows = in_order, .n_logits = 3};
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, mixed), 0);
        const size_t best = argmax(mixed + V, V);
        for (int mode = 0; mode < 2; mode++) {
            wk_model_set_exec(c.m, mode ? WK_EXEC_PADDED : WK_EXEC_EAGER);
            b.logit_rows = shuffled;
            b.n_sample = 1;
            b.sample = &sp;
            b.sampled = &out;
            ASSERT_EQ(wk_model_forward(c.m, kv, &b, padded), 0);
            ASSERT_EQ(memcmp(padded, mixed + 2 * V, V * sizeof(float)), 0);
            ASSERT_EQ(memcmp(padded + V, mixed, V * sizeof(float)), 0);
            ASSERT_EQ((size_t)out.id, best);
            ASSERT_EQ((size_t)out.top_id[0], best);
            ASSERT_NEAR(out.logprob, out.top_lp[0], 1e-6);
            ASSERT_TRUE(out.top_lp[1] <= out.top_lp[0] && out.logprob < 0.0f);
        }
        // adjustments on the sampled row: 7 beats 5; then 9 beats both; the logprob
        // stays the raw row's
        int32_t aoff[2] = {0, 2}, aid[3] = {5, 7, 9};
        float aval[3] = {1000.0f, 2000.0f, 3000.0f};
        b.adj_off = aoff;
        b.adj_id = aid;
        b.adj_val = aval;
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, padded), 0);
        ASSERT_EQ(out.id, 7);
        ASSERT_EQ((size_t)out.top_id[0], best);
        aoff[1] = 3;
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, padded), 0);
        ASSERT_EQ(out.id, 9);
        ASSERT_TRUE(out.logprob < out.top_lp[0]);
        ASSERT_EQ(memcmp(padded, mixed + 2 * V, V * sizeof(float)), 0); // the other rows untouched
        ASSERT_EQ(aval[2], 3000.0f);                                      // the batch's own arrays too
        // a mask allowing token 42 alone
        uint32_t *mask = calloc((V + 31) / 32, sizeof(uint32_t));
        ASSERT_TRUE(mask != NULL);
        if (mask) {
            mask[42 / 32] = 1u << (42 % 32);
            sp.mask = 0;
            sp.temperature = 0.8f;
            sp.u = 0.5f;
            b.masks = mask;
            b.n_mask = 1;
            b.adj_off = NULL;
            ASSERT_EQ(wk_model_forward(c.m, kv, &b, padded), 0);
            ASSERT_EQ(out.id, 42);
            sp.mask = 1; // past n_mask
            ASSERT_EQ(wk_model_forward(c.m, kv, &b, padded), -EINVAL);
            sp.mask = -1;
            b.n_mask = 0;
            free(mask);
        }
        b.adj_off = aoff;
        aid[2] = (int32_t)V; // out of the vocabulary
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, padded), -EINVAL);
        b.adj_off = NULL;
        sp.u = 1.0f; // the draw is in [0, 1)
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, padded), -EINVAL);
        sp.u = 0.5f;
        b.sampled = NULL; // sampled rows need somewhere to go
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, padded), -EINVAL);
        // every row sampled, with more adjustments than the backend holds at once
        // (penalties over long outputs): the op runs in several calls, each row
        // still gets its own (row r adjusts tokens 30000 r + j); +100 on token
        // 5000 + 40000 r decides row r
        {
            enum { NA = 200000 };
            int32_t *ids = malloc(3 * NA * sizeof *ids), off3[4] = {0, NA, 2 * NA, 3 * NA};
            float *vals = malloc(3 * NA * sizeof *vals);
            kn_sample_params sp3[3];
            kn_sample_out out3[3];
            ASSERT_TRUE(ids && vals);
            if (ids && vals) {
                for (int r = 0; r < 3; r++) {
                    sp3[r] = (kn_sample_params){.temperature = 0.0f, .top_p = 1.0f, .n_top = -1, .mask = -1};
                    for (int j = 0; j < NA; j++) {
                        ids[r * NA + j] = 30000 * r + j;
                        vals[r * NA + j] = ids[r * NA + j] == 5000 + 40000 * r ? 100.0f : -1e-3f * (float)(j % 7);
                    }
                }
                b.logit_rows = in_order;
                b.n_sample = 3;
                b.sample = sp3;
                b.sampled = out3;
                b.adj_off = off3;
                b.adj_id = ids;
                b.adj_val = vals;
                ASSERT_EQ(wk_model_forward(c.m, kv, &b, NULL), 0);
                for (int r = 0; r < 3; r++)
                    ASSERT_EQ(out3[r].id, 5000 + 40000 * r);
            }
            free(ids);
            free(vals);
        }
        wk_model_set_exec(c.m, WK_EXEC_GRAPHS);
        for (int i = 0; i < 3; i++)
            wk_kv_release(kv, bt[i]);
        wk_kv_free(kv);
    }

    // a bad batch is refused, not run
    {
        wk_kv *kv = wk_kv_create(c.be, hp->n_layer, hp->n_head_kv, hp->head_dim, 16, 2, KN_F16);
        ASSERT_TRUE(kv != NULL);
        ASSERT_EQ(wk_model_reserve(c.m, 4, 1, 1, 2), 0);
        int32_t bt[2] = {wk_kv_alloc(kv), -1};
        int32_t tk[2] = {2, 818}, ps[2] = {0, 1}, sq[2] = {0, 0}, rows[1] = {1};
        wk_batch b = {.n_tok = 2, .tokens = tk, .pos = ps, .seq = sq, .block_tables = bt, .n_seq = 1,
                      .max_blocks = 2, .logit_rows = rows, .n_logits = 1};
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, last), 0);
        tk[1] = (int32_t)hp->n_vocab; // token out of range
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, last), -EINVAL);
        tk[1] = 818;
        ps[1] = 16; // needs block 1, unallocated
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, last), -EINVAL);
        ps[1] = 32; // past max_blocks
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, last), -EINVAL);
        ps[1] = 1;
        rows[0] = 2; // logit row past the batch
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, last), -EINVAL);
        rows[0] = 1;
        b.n_tok = 5; // over the reservation
        ASSERT_EQ(wk_model_forward(c.m, kv, &b, last), -EINVAL);
        wk_kv_release(kv, bt[0]);
        wk_kv_free(kv);
    }

    // cpu backend vs the scalar reference (prefill, last row to keep it quick)
    if (strcmp(c.be->ops->name, "ref") != 0) {
        ctx r = c;
        r.be = kn_ref_create();
        r.m = NULL;
        ASSERT_TRUE(r.be != NULL);
        ASSERT_EQ(wk_model_load(c.g, r.be, WK_QUANT_NONE, &r.m, err, sizeof(err)), 0);
        if (r.m) {
            ASSERT_EQ(run(&r, toks, n, 1, KT_PREFILL, 16, 0, pre1), 0);
            // NOTE: the cpu backend quantizes activations to Q8_0/Q8_K like llama.cpp;
            // the reference multiplies unquantized activations in double. On Gemma
            // that alone moves logits by ~1.3 (of ~24); llama.cpp moves as much
            // between its own F16 and F32 KV caches. Op-level parity of the two
            // backends is test_kn_ops; this checks they run the same model.
            check_close("cpu vs ref backend (last row)", pre1, pre + (size_t)(n - 1) * V, 1, V, 0.1);
        }
        wk_model_free(r.m);
        r.be->ops->destroy(r.be);
    } else {
        printf("  cpu backend is the reference; cpu-vs-ref check is trivial\n");
    }
done:
    free(pre);
    free(pre1);
    free(last);
    free(mixed);
    free(padded);
cleanup:
    wk_model_free(c.m);
    if (c.be)
        c.be->ops->destroy(c.be);
    wk_gguf_close(c.g);
}

int main(void) {
    const char *path = getenv("KOLM_TEST_MODEL"), *home = getenv("KOLM_HOME"), *user = getenv("HOME");
    char def[1024] = "/tmp/gemma.gguf";
    if (!path || !*path) {
        char cand[1024];
        if (home && *home)
            snprintf(cand, sizeof(cand), "%s/models/gemma-3-270m-q4_k_m.gguf", home);
        else
            snprintf(cand, sizeof(cand), "%s/.kolm/models/gemma-3-270m-q4_k_m.gguf", user ? user : "");
        if (access(cand, R_OK) == 0)
            snprintf(def, sizeof(def), "%s", cand);
        path = def;
    }
    test_kv_pool();
    test_gemma(path);
    return kt_done("test_model");
}
