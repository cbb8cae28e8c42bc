/* Unit tests for the worker's scheduler, sampler and chat template on the real
 * default model (KOLM_TEST_MODEL, default ~/.kolm/models/...; skipped with a
 * message when absent): batching and preemption never change greedy output, stop
 * strings never leak, cancel frees every block, overflow is a clean error. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kn.h"
#include "tests/unit/kt.h"
#include "worker/wk_gguf.h"
#include "worker/wk_kv.h"
#include "worker/wk_model.h"
#include "worker/wk_sampler.h"
#include "worker/wk_sched.h"
#include "worker/wk_template.h"
#include "worker/wk_tok.h"

#define MAXJ 8

typedef struct capture {
    cm_buf text[MAXJ];
    int finished[MAXJ], finish_reason[MAXJ], errors[MAXJ], accepted[MAXJ];
    char code[MAXJ][64];
} capture;

static void on_ev(void *ud, const proto_event *ev) {
    capture *c = ud;
    int j = (int)ev->job_id;
    if (j < 0 || j >= MAXJ)
        return;
    switch (ev->kind) {
    case PROTO_EV_ACCEPTED: c->accepted[j]++; break;
    case PROTO_EV_DELTA: cm_buf_append(&c->text[j], ev->text.p, ev->text.len); break;
    case PROTO_EV_FINISH:
        c->finished[j]++;
        c->finish_reason[j] = ev->finish_reason;
        break;
    case PROTO_EV_ERROR:
        c->errors[j]++;
        snprintf(c->code[j], sizeof c->code[j], "%.*s", (int)ev->code.len, ev->code.p);
        break;
    }
}

static const char *prompts[4] = {"The capital of France is", "Write a list of three fruits.",
                                 "Count from one to ten.", "Translate 'good morning' into German."};

typedef struct env {
    wk_gguf *g;
    wk_tok *tok;
    wk_model *m;
    kn_backend *be;
} env;

static int render(env *e, const char *text, int32_t **toks) {
    wk_chat_msg msg = {.role = "user", .content = text, .content_len = strlen(text)};
    int n = 0;
    char err[128];
    ASSERT_EQ(wk_template_render(WK_TEMPLATE_GEMMA, e->tok, &msg, 1, toks, &n, err, sizeof err), 0);
    return n;
}

static int submit1(wk_sched *s, const proto_submit *sub, const int32_t *toks, int nt) {
    return wk_sched_submit(s, sub, 1, &toks, &nt);
}

/* No sequence holds a block: every block is free or held only by the prefix cache. */
static int all_released(const wk_sched *s) {
    proto_stats st;
    wk_sched_stats(s, &st);
    return st.kv_blocks_free + st.kv_blocks_cached == st.kv_blocks_total && st.jobs == 0;
}

/* Runs jobs [0, n) with the given prompts through a fresh scheduler + pool of
 * n_blocks blocks; greedy, max_tokens each. Returns the capture (caller frees). */
static void run(env *e, int n, int n_blocks, int max_tokens, const char *stop, capture *c, int *preempt_free) {
    memset(c, 0, sizeof *c);
    const wk_hparams *hp = wk_model_hparams(e->m);
    wk_kv *kv = wk_kv_create(e->be, hp->n_layer, hp->n_head_kv, hp->head_dim, 16, n_blocks, KN_F16);
    wk_sched_config cfg = {.n_ctx = 1024, .max_seqs = 8, .step_tokens = 64};
    wk_sched *s = wk_sched_create(e->m, kv, e->tok, &cfg, on_ev, c);
    ASSERT_TRUE(kv && s);
    for (int j = 0; j < n; j++) {
        int32_t *toks;
        int nt = render(e, prompts[j], &toks);
        proto_str st = {(char *)stop, stop ? (uint32_t)strlen(stop) : 0};
        proto_submit sub = {.job_id = (uint64_t)j, .max_tokens = max_tokens, .temperature = 0, .top_p = 1,
                            .n_stop = stop ? 1 : 0, .stop = &st};
        submit1(s, &sub, toks, nt);
        free(toks);
    }
    for (int guard = 0; wk_sched_busy(s) && guard < 10000; guard++)
        ASSERT_EQ(wk_sched_step(s), 0);
    if (preempt_free)
        *preempt_free = all_released(s);
    wk_sched_free(s);
    wk_kv_free(kv);
}

static void free_capture(capture *c) {
    for (int j = 0; j < MAXJ; j++)
        cm_buf_free(&c->text[j]);
}

static int same(const cm_buf *a, const cm_buf *b) {
    return a->len == b->len && (!a->len || !memcmp(a->data, b->data, a->len));
}

static void test_batching_and_preemption(env *e) {
    capture alone[4], batch, tiny;
    // Each job alone.
    for (int j = 0; j < 4; j++) {
        memset(&alone[j], 0, sizeof alone[j]);
        const char *saved = prompts[0];
        prompts[0] = prompts[j];
        run(e, 1, 512, 24, NULL, &alone[j], NULL);
        prompts[0] = saved;
        ASSERT_EQ(alone[j].finished[0], 1);
        ASSERT_TRUE(alone[j].text[0].len > 0);
    }
    // All four at once.
    int all_free = 0;
    run(e, 4, 512, 24, NULL, &batch, &all_free);
    ASSERT_TRUE(all_free);
    for (int j = 0; j < 4; j++) {
        ASSERT_EQ(batch.accepted[j], 1);
        ASSERT_EQ(batch.finished[j], 1);
        ASSERT_EQ(batch.finish_reason[j], alone[j].finish_reason[0]);
        ASSERT_TRUE(same(&batch.text[j], &alone[j].text[0]));
    }
    // A pool of 6 blocks (96 tokens) for four ~40-token sequences: preemption.
    run(e, 4, 6, 24, NULL, &tiny, &all_free);
    ASSERT_TRUE(all_free);
    for (int j = 0; j < 4; j++) {
        ASSERT_EQ(tiny.finished[j], 1);
        ASSERT_TRUE(same(&tiny.text[j], &alone[j].text[0]));
        if (!same(&tiny.text[j], &alone[j].text[0]))
            fprintf(stderr, "  job %d: '%.*s' vs '%.*s'\n", j, (int)tiny.text[j].len, tiny.text[j].data,
                    (int)alone[j].text[0].len, alone[j].text[0].data);
    }
    // Stop strings: cut the known output in the middle of its second half.
    const cm_buf *ref = &alone[1].text[0];
    if (ref->len >= 12) {
        char stop[5];
        size_t at = ref->len / 2 + 1;
        memcpy(stop, ref->data + at, 4);
        stop[4] = 0;
        size_t first = (size_t)((const uint8_t *)memmem(ref->data, ref->len, stop, 4) - ref->data);
        capture sc;
        const char *saved = prompts[0];
        prompts[0] = prompts[1];
        run(e, 1, 512, 24, stop, &sc, NULL);
        prompts[0] = saved;
        ASSERT_EQ(sc.finish_reason[0], PROTO_FINISH_STOP);
        ASSERT_EQ(sc.text[0].len, first);
        ASSERT_TRUE(!memcmp(sc.text[0].data, ref->data, first));
        ASSERT_TRUE(!memmem(sc.text[0].data, sc.text[0].len, stop, 4));
        free_capture(&sc);
    }
    for (int j = 0; j < 4; j++)
        free_capture(&alone[j]);
    free_capture(&batch);
    free_capture(&tiny);
}

static void test_cancel_and_overflow(env *e) {
    capture c = {0};
    const wk_hparams *hp = wk_model_hparams(e->m);
    wk_kv *kv = wk_kv_create(e->be, hp->n_layer, hp->n_head_kv, hp->head_dim, 16, 64, KN_F16);
    wk_sched_config cfg = {.n_ctx = 256, .max_seqs = 4, .step_tokens = 64};
    wk_sched *s = wk_sched_create(e->m, kv, e->tok, &cfg, on_ev, &c);
    int32_t *toks;
    int nt = render(e, prompts[0], &toks);
    proto_submit sub = {.job_id = 1, .max_tokens = 100, .temperature = 0.7f, .top_p = 0.9f, .top_k = 40};
    sub.n = 3; // three choices, all cancelled together
    ASSERT_EQ(submit1(s, &sub, toks, nt), 0);
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(wk_sched_step(s), 0);
    ASSERT_TRUE(!all_released(s));
    wk_sched_cancel(s, 1);
    ASSERT_TRUE(all_released(s));
    sub.n = 1;
    ASSERT_EQ(c.finished[1], 1);
    ASSERT_EQ(c.finish_reason[1], PROTO_FINISH_CANCELLED);
    ASSERT_EQ(wk_sched_busy(s), 0);
    // A prompt over the window, and max_tokens past the window.
    int32_t *big = calloc(300, sizeof *big);
    for (int i = 0; i < 300; i++)
        big[i] = toks[i % nt];
    sub.job_id = 2;
    ASSERT_TRUE(submit1(s, &sub, big, 300) < 0);
    ASSERT_EQ(c.errors[2], 1);
    ASSERT_STREQ(c.code[2], "context_length_exceeded");
    sub.job_id = 3;
    sub.max_tokens = 250;
    ASSERT_TRUE(submit1(s, &sub, toks, nt) < 0);
    ASSERT_STREQ(c.code[3], "context_length_exceeded");
    ASSERT_EQ(c.accepted[2] + c.accepted[3], 0);
    // A logit_bias id outside the vocabulary.
    proto_bias oob = {hp->n_vocab, 1.0f};
    proto_submit bs = {.job_id = 4, .max_tokens = 4, .temperature = 0, .top_p = 1, .n_bias = 1, .bias = &oob};
    ASSERT_TRUE(submit1(s, &bs, toks, nt) < 0);
    ASSERT_STREQ(c.code[4], "invalid_value");
    free(big);
    free(toks);
    wk_sched_free(s);
    wk_kv_free(kv);
    free_capture(&c);
}

#define MAXC 4

typedef struct ccap {
    cm_buf text[MAXC], lptext[MAXC];
    int finished[MAXC], n_lp[MAXC], lp_bad, last, errors;
    uint32_t pt, ct, cached, choice_ct[MAXC];
} ccap;

static void on_cev(void *ud, const proto_event *ev) {
    ccap *c = ud;
    if (ev->choice >= MAXC)
        return;
    int k = (int)ev->choice;
    switch (ev->kind) {
    case PROTO_EV_DELTA:
        cm_buf_append(&c->text[k], ev->text.p, ev->text.len);
        for (uint32_t i = 0; i < ev->n_lp; i++) {
            const proto_logprob *l = &ev->lp[i];
            cm_buf_append(&c->lptext[k], l->tok.p, l->tok.len);
            c->n_lp[k]++;
            // greedy: the sampled token is the best alternative
            if (!l->n_top || l->top[0].logprob != l->logprob || l->logprob > 0 ||
                memcmp(l->top[0].tok.p, l->tok.p, l->tok.len))
                c->lp_bad++;
            for (uint32_t t = 1; t < l->n_top; t++)
                c->lp_bad += l->top[t].logprob > l->top[t - 1].logprob;
        }
        break;
    case PROTO_EV_FINISH:
        c->finished[k]++;
        if (!ev->last)
            c->choice_ct[k] = ev->completion_tokens; // the last FINISH carries the job's totals
        if (ev->last) {
            c->last++;
            c->pt = ev->prompt_tokens;
            c->ct = ev->completion_tokens;
            c->cached = ev->cached_tokens;
        }
        break;
    case PROTO_EV_ERROR: c->errors++; break;
    }
}

static void ccap_free(ccap *c) {
    for (int k = 0; k < MAXC; k++) {
        cm_buf_free(&c->text[k]);
        cm_buf_free(&c->lptext[k]);
    }
}

/* n > 1 shares the prompt through the prefix cache; a repeated prompt reports
 * cached tokens; logprobs line up with the text. Block size 4 so that the short
 * prompt fills several blocks. */
static void test_choices_prefix_logprobs(env *e) {
    const wk_hparams *hp = wk_model_hparams(e->m);
    wk_kv *kv = wk_kv_create(e->be, hp->n_layer, hp->n_head_kv, hp->head_dim, 4, 256, KN_F16);
    wk_sched_config cfg = {.n_ctx = 512, .max_seqs = 8, .step_tokens = 64};
    ccap c[4];
    memset(c, 0, sizeof c);
    int32_t *toks;
    int nt = render(e, prompts[0], &toks);
    ASSERT_TRUE(nt > 8);
    for (int r = 0; r < 4; r++) {
        ccap *cc = &c[r];
        wk_sched *s = wk_sched_create(e->m, kv, e->tok, &cfg, on_cev, cc);
        ASSERT_TRUE(s != NULL);
        proto_submit sub = {.job_id = 1, .n = r == 0 ? 3 : 1, .max_tokens = 12, .temperature = 0, .top_p = 1,
                            .logprobs = r == 3, .top_logprobs = r == 3 ? 3 : 0};
        ASSERT_EQ(submit1(s, &sub, toks, nt), 0);
        if (r == 1) { // the same prompt again on the same scheduler: cached
            for (int guard = 0; wk_sched_busy(s) && guard < 1000; guard++)
                ASSERT_EQ(wk_sched_step(s), 0);
            ASSERT_EQ(cc->cached, 0);
            ccap_free(cc);
            memset(cc, 0, sizeof *cc);
            sub.job_id = 2;
            ASSERT_EQ(submit1(s, &sub, toks, nt), 0);
        }
        for (int guard = 0; wk_sched_busy(s) && guard < 1000; guard++)
            ASSERT_EQ(wk_sched_step(s), 0);
        ASSERT_TRUE(all_released(s));
        wk_sched_free(s);
        ASSERT_EQ(wk_kv_n_free(kv), wk_kv_n_blocks(kv)); // the cache let go of everything
        ASSERT_EQ(cc->last, 1);
        ASSERT_EQ(cc->errors, 0);
        ASSERT_EQ(cc->pt, (uint32_t)nt);
    }
    // n = 3: three identical greedy choices, each finished once, usage summed.
    for (int k = 0; k < 3; k++) {
        ASSERT_EQ(c[0].finished[k], 1);
        ASSERT_TRUE(same(&c[0].text[k], &c[2].text[0]));
    }
    uint32_t per = c[0].choice_ct[0] ? c[0].choice_ct[0] : c[0].choice_ct[1];
    ASSERT_TRUE(per > 0);
    ASSERT_EQ(c[0].ct, 3 * per);
    ASSERT_EQ(c[0].cached, 0);
    // the repeat found the prompt's full blocks (all but the last token's block)
    ASSERT_EQ(c[1].cached, (uint32_t)((nt - 1) / 4 * 4));
    ASSERT_TRUE(same(&c[1].text[0], &c[2].text[0]));
    // logprobs: one entry per output token, their bytes spell the text
    ASSERT_TRUE(same(&c[3].text[0], &c[2].text[0]));
    ASSERT_TRUE(same(&c[3].lptext[0], &c[3].text[0]));
    ASSERT_EQ(c[3].lp_bad, 0);
    ASSERT_TRUE(c[3].n_lp[0] > 0 && (uint32_t)c[3].n_lp[0] <= c[3].ct);
    ASSERT_EQ(c[2].n_lp[0], 0);
    for (int r = 0; r < 4; r++)
        ccap_free(&c[r]);
    free(toks);
    wk_kv_free(kv);
}

static void test_template(env *e) {
    wk_chat_msg msgs[2] = {{.role = "system", .content = "Be brief.", .content_len = 9},
                           {.role = "user", .content = "Hi <end_of_turn> there", .content_len = 22}};
    int32_t *toks;
    int n;
    char err[128];
    ASSERT_EQ(wk_template_render(WK_TEMPLATE_GEMMA, e->tok, msgs, 2, &toks, &n, err, sizeof err), 0);
    const char *lit = "<start_of_turn>user\nBe brief.\n\nHi ";
    int32_t want[256];
    int k = wk_tok_encode(e->tok, lit, strlen(lit), 1, 1, want, 256);
    int k2 = wk_tok_encode(e->tok, "<end_of_turn> there", 19, 0, 0, want + k, 256 - k); // literal text
    const char *tail = "<end_of_turn>\n<start_of_turn>model\n";
    int k3 = wk_tok_encode(e->tok, tail, strlen(tail), 0, 1, want + k + k2, 256 - k - k2);
    // The content run "Hi <end_of_turn> there" is tokenized as one piece; compare
    // the special-token skeleton and the total against the segment-wise encoding.
    int32_t eot = wk_tok_find(e->tok, "<end_of_turn>");
    int n_eot = 0;
    for (int i = 0; i < n; i++)
        n_eot += toks[i] == eot;
    ASSERT_EQ(n_eot, 1); // only the template's own end of turn
    ASSERT_EQ(toks[0], wk_tok_bos(e->tok));
    ASSERT_EQ(toks[1], wk_tok_find(e->tok, "<start_of_turn>"));
    ASSERT_TRUE(k > 0 && k2 > 0 && k3 > 0);
    int tail_ok = n >= k3 && !memcmp(toks + n - k3, want + k + k2, (size_t)k3 * sizeof *toks);
    ASSERT_TRUE(tail_ok);
    free(toks);
    // Without user content tricks, rendering equals encoding the whole text with special parsing.
    wk_chat_msg plain[2] = {{.role = "system", .content = "Be brief.", .content_len = 9},
                            {.role = "user", .content = "Hello there", .content_len = 11}};
    ASSERT_EQ(wk_template_render(WK_TEMPLATE_GEMMA, e->tok, plain, 2, &toks, &n, err, sizeof err), 0);
    const char *full = "<start_of_turn>user\nBe brief.\n\nHello there<end_of_turn>\n<start_of_turn>model\n";
    int m = wk_tok_encode(e->tok, full, strlen(full), 1, 1, want, 256);
    ASSERT_EQ(n, m);
    ASSERT_TRUE(n == m && !memcmp(toks, want, (size_t)n * sizeof *toks));
    free(toks);
    // Tool calls and tool results (Gemma has no tool format: ChatML's tags as text).
    proto_call call = {{"call_1", 6}, {"get_weather", 11}, {"{\"city\":\"Paris\"}", 16}};
    wk_chat_msg tools[4] = {{.role = "user", .content = "Weather?", .content_len = 8},
                            {.role = "assistant", .content = "", .content_len = 0, .calls = &call, .n_calls = 1},
                            {.role = "tool", .content = "18C", .content_len = 3},
                            {.role = "tool", .content = "sunny", .content_len = 5}};
    ASSERT_EQ(wk_template_render(WK_TEMPLATE_GEMMA, e->tok, tools, 4, &toks, &n, err, sizeof err), 0);
    const char *tfull = "<start_of_turn>user\nWeather?<end_of_turn>\n<start_of_turn>model\n<tool_call>\n"
                        "{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call><end_of_turn>\n"
                        "<start_of_turn>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\nsunny\n"
                        "</tool_response><end_of_turn>\n<start_of_turn>model\n";
    m = wk_tok_encode(e->tok, tfull, strlen(tfull), 1, 1, want, 256);
    ASSERT_EQ(n, m);
    ASSERT_TRUE(n == m && !memcmp(toks, want, (size_t)n * sizeof *toks));
    free(toks);
    // An unknown role is refused by name.
    wk_chat_msg bad = {.role = "wizard", .content = "x", .content_len = 1};
    ASSERT_EQ(wk_template_render(WK_TEMPLATE_GEMMA, e->tok, &bad, 1, &toks, &n, err, sizeof err), -EINVAL);
    ASSERT_TRUE(strstr(err, "wizard") != NULL);
}

static wk_sampler_params P(float temp, float top_p, int top_k, uint64_t seed) {
    return (wk_sampler_params){.temperature = temp, .top_p = top_p, .top_k = top_k, .has_seed = 1, .seed = seed};
}

/* The sampler's next row, run through the CPU backend's sample op over a copy of
 * logits ([n]; mask NULL: every token), n_top as the op takes it. */
static kn_backend *smp_be;

static kn_sample_out draw_row(wk_sampler *s, const float *logits, int n, int n_top, const uint32_t *mask) {
    kn_sample_params row;
    const int cap = wk_sampler_n_adj(s) + 1;
    int32_t *aid = malloc((size_t)cap * sizeof *aid);
    float *aval = malloc((size_t)cap * sizeof *aval), *x = malloc((size_t)n * sizeof *x);
    kn_sample_out o = {.id = -2};
    if (!aid || !aval || !x) {
        ASSERT_TRUE(0);
        goto out;
    }
    const int na = wk_sampler_row(s, &row, aid, aval);
    ASSERT_TRUE(na <= wk_sampler_n_adj(s));
    row.n_top = n_top;
    row.mask = mask ? 0 : -1;
    const int32_t off[2] = {0, na};
    memcpy(x, logits, (size_t)n * sizeof *x);
    smp_be->ops->sample(smp_be, x, 1, n, &row, na ? off : NULL, aid, aval, mask, &o);
out:
    free(aid);
    free(aval);
    free(x);
    return o;
}

static int32_t draw(wk_sampler *s, const float *logits, int n) {
    return draw_row(s, logits, n, -1, NULL).id;
}

/* Sampling among a grammar's allowed tokens (a mask, few enough that the CPU
 * backend gathers them) draws what sampling the whole row with every other logit
 * at -inf draws. */
static void test_sampler_subset(void) {
    enum { NV = 4096, NA = 300 };
    float *row = malloc(NV * sizeof *row), *masked = malloc(NV * sizeof *masked);
    uint32_t mask[NV / 32] = {0};
    uint64_t x = 42;
    for (int i = 0; i < NV; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        row[i] = (float)((x >> 40) % 2000) / 100.0f - 10.0f;
        masked[i] = -INFINITY;
    }
    for (int i = 0; i < NA; i++) {
        const int id = i * 13 + 5;
        mask[id / 32] |= 1u << (id % 32);
        masked[id] = row[id];
    }
    struct {
        float t, top_p, min_p;
        int top_k;
    } cfg[] = {{0, 1, 0, 0}, {0.8f, 0.9f, 0, 0}, {1.5f, 0.5f, 0, 0}, {1.0f, 1.0f, 0, 40}, {0.7f, 0.95f, 0.1f, 10}};
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++)
        for (uint64_t seed = 1; seed <= 20; seed++) {
            wk_sampler_params p = {.temperature = cfg[c].t, .top_p = cfg[c].top_p, .min_p = cfg[c].min_p,
                                   .top_k = cfg[c].top_k, .has_seed = 1, .seed = seed};
            wk_sampler a, b;
            ASSERT_EQ(wk_sampler_init(&a, NV, &p), 0);
            ASSERT_EQ(wk_sampler_init(&b, NV, &p), 0);
            const int32_t want = draw(&a, masked, NV), got = draw_row(&b, row, NV, -1, mask).id;
            ASSERT_EQ(got, want);
            ASSERT_TRUE(mask[got / 32] >> (got % 32) & 1);
            wk_sampler_free(&a);
            wk_sampler_free(&b);
        }
    free(row);
    free(masked);
}

/* Counts of 20000 draws of s over logits[8]. */
static void tally(wk_sampler *s, const float *logits, int counts[8]) {
    for (int i = 0; i < 8; i++)
        counts[i] = 0;
    for (int i = 0; i < 20000; i++) {
        const int32_t x = draw(s, logits, 8);
        ASSERT_TRUE(x >= 0 && x < 8);
        if (x < 0 || x >= 8)
            return;
        counts[x]++;
    }
}

static void test_sampler(void) {
    const float base[8] = {0.1f, 2.0f, 2.0f, -1.0f, 0.5f, 1.9f, -3.0f, 0.0f};
    wk_sampler s;
    wk_sampler_params p = P(0, 1, 0, 1);
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    ASSERT_EQ(draw(&s, base, 8), 1); // ties go to the lowest id
    wk_sampler_free(&s);
    p = P(1.0f, 1, 1, 1);
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    ASSERT_EQ(draw(&s, base, 8), 1); // top_k 1 is greedy
    wk_sampler_free(&s);
    p = P(1.0f, 1e-6f, 0, 1);
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    const int32_t tiny = draw(&s, base, 8);
    ASSERT_TRUE(tiny == 1 || tiny == 2); // a tiny top_p keeps the best value: its two tokens
    wk_sampler_free(&s);
    // Same seed, same draws; frequencies follow the softmax.
    wk_sampler a, b;
    int counts[8], again[8];
    p = P(1.0f, 1, 0, 42);
    wk_sampler_init(&a, 8, &p);
    wk_sampler_init(&b, 8, &p);
    tally(&a, base, counts);
    tally(&b, base, again);
    ASSERT_EQ(memcmp(counts, again, sizeof counts), 0);
    double z = 0;
    for (int i = 0; i < 8; i++)
        z += exp(base[i]);
    for (int i = 0; i < 8; i++)
        ASSERT_NEAR(counts[i] / 20000.0, exp(base[i]) / z, 0.02);
    wk_sampler_free(&a);
    wk_sampler_free(&b);
    // Another seed, other draws.
    p = P(1.0f, 1, 0, 43);
    wk_sampler_init(&a, 8, &p);
    tally(&a, base, again);
    ASSERT_TRUE(memcmp(counts, again, sizeof counts) != 0);
    wk_sampler_free(&a);
    // top_k 2 never draws outside the two best.
    p = P(1.0f, 1, 2, 7);
    wk_sampler_init(&a, 8, &p);
    tally(&a, base, counts);
    ASSERT_EQ(counts[1] + counts[2], 20000);
    wk_sampler_free(&a);
    // min_p 0.5 of the best's weight: tokens 1, 2 (w 1) and 5 (w e^-0.1), renormalized.
    p = P(1.0f, 1, 0, 8);
    p.min_p = 0.5f;
    wk_sampler_init(&a, 8, &p);
    tally(&a, base, counts);
    ASSERT_EQ(counts[1] + counts[2] + counts[5], 20000);
    ASSERT_NEAR(counts[5] / 20000.0, exp(-0.1) / (2 + exp(-0.1)), 0.02);
    wk_sampler_free(&a);
    // top_p over a large vocabulary: the draws follow the renormalized nucleus
    // {0, 1, 2} exactly.
    {
        enum { NV = 4096 };
        float *lg = malloc(NV * sizeof *lg);
        for (int i = 0; i < NV; i++)
            lg[i] = -5.0f;
        lg[0] = 5.0f, lg[1] = 4.5f, lg[2] = 4.0f;
        double zz = exp(5.0) + exp(4.5) + exp(4.0) + (NV - 3) * exp(-5.0);
        double p0 = exp(5.0) / zz, p1 = exp(4.5) / zz, p2 = exp(4.0) / zz;
        ASSERT_TRUE(p0 + p1 < 0.9 && p0 + p1 + p2 >= 0.9); // the nucleus is exactly {0, 1, 2}
        wk_sampler_params tp = P(1.0f, 0.9f, 0, 99);
        ASSERT_EQ(wk_sampler_init(&s, NV, &tp), 0);
        int cnt[3] = {0}, outside = 0;
        for (int i = 0; i < 20000; i++) {
            int32_t x = draw(&s, lg, NV);
            if (x >= 0 && x < 3)
                cnt[x]++;
            else
                outside++;
        }
        ASSERT_EQ(outside, 0);
        double pn = p0 + p1 + p2;
        ASSERT_NEAR(cnt[0] / 20000.0, p0 / pn, 0.015);
        ASSERT_NEAR(cnt[1] / 20000.0, p1 / pn, 0.015);
        ASSERT_NEAR(cnt[2] / 20000.0, p2 / pn, 0.015);
        wk_sampler_free(&s);
        free(lg);
    }
    // logit_bias: -100 removes the best, +5.5 promotes a poor token; a token listed
    // twice gets both.
    proto_bias bias[2] = {{1, -100.0f}, {2, -100.0f}};
    p = P(0, 1, 0, 1);
    p.bias = bias;
    p.n_bias = 2;
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    ASSERT_EQ(draw(&s, base, 8), 5);
    wk_sampler_free(&s);
    bias[0] = (proto_bias){6, 5.5f};
    p.n_bias = 1;
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    ASSERT_EQ(draw(&s, base, 8), 6); // -3 + 5.5 = 2.5 beats 2.0
    wk_sampler_free(&s);
    bias[0] = (proto_bias){6, 3.0f};
    bias[1] = (proto_bias){6, 2.5f};
    p.n_bias = 2;
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    ASSERT_EQ(wk_sampler_n_adj(&s), 1);
    ASSERT_EQ(draw(&s, base, 8), 6);
    wk_sampler_free(&s);
    // Penalties: presence lowers every seen token once, frequency per occurrence;
    // a biased token gets its bias and its penalty in one entry.
    int32_t aid[8];
    float aval[8];
    kn_sample_params row;
    p = P(0, 1, 0, 1);
    p.presence_penalty = 0.15f;
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    ASSERT_EQ(wk_sampler_row(&s, &row, aid, aval), 0);
    ASSERT_EQ(wk_sampler_accept(&s, 1), 0);
    ASSERT_EQ(wk_sampler_row(&s, &row, aid, aval), 1);
    ASSERT_EQ(aid[0], 1);
    ASSERT_NEAR(aval[0], -0.15, 1e-6);
    ASSERT_EQ(draw(&s, base, 8), 2); // 1 fell to 1.85
    ASSERT_EQ(wk_sampler_accept(&s, 2), 0);
    ASSERT_EQ(wk_sampler_accept(&s, 2), 0);
    ASSERT_EQ(draw(&s, base, 8), 5); // 1.9 beats 1.85 and 1.85
    wk_sampler_free(&s);
    p.presence_penalty = 0;
    p.frequency_penalty = 0.5f;
    bias[0] = (proto_bias){5, 0.25f};
    p.bias = bias;
    p.n_bias = 1;
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    for (int i = 0; i < 3; i++)
        wk_sampler_accept(&s, 5);
    wk_sampler_accept(&s, 1);
    ASSERT_EQ(wk_sampler_row(&s, &row, aid, aval), 2);
    ASSERT_EQ(aid[0], 5);
    ASSERT_NEAR(aval[0], 0.25 - 1.5, 1e-6);
    ASSERT_EQ(aid[1], 1);
    ASSERT_NEAR(aval[1], -0.5, 1e-6);
    ASSERT_EQ(draw(&s, base, 8), 2);
    wk_sampler_free(&s);
    p.n_bias = 0;
    p.frequency_penalty = -1.0f; // negative values encourage repetition
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    wk_sampler_accept(&s, 7);
    wk_sampler_accept(&s, 7);
    wk_sampler_accept(&s, 7);
    ASSERT_EQ(draw(&s, base, 8), 7);
    wk_sampler_free(&s);
    // The draw is the generator's only when the row samples.
    p = P(0.7f, 0.9f, 0, 5);
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    ASSERT_EQ(wk_sampler_row(&s, &row, aid, aval), 0);
    ASSERT_TRUE(row.u >= 0.0f && row.u < 1.0f && row.temperature == 0.7f && row.top_p == 0.9f);
    wk_sampler_free(&s);
    // Logprobs: log-softmax of the raw logits (no bias), top list best first, ties to
    // the lower id.
    bias[0] = (proto_bias){4, 10.0f};
    p = P(0, 1, 0, 1);
    p.bias = bias;
    p.n_bias = 1;
    ASSERT_EQ(wk_sampler_init(&s, 8, &p), 0);
    kn_sample_out o = draw_row(&s, base, 8, 4, NULL);
    ASSERT_EQ(o.id, 4);
    ASSERT_NEAR(o.logprob, 0.5 - log(z), 1e-5);
    ASSERT_EQ(o.top_id[0], 1);
    ASSERT_EQ(o.top_id[1], 2);
    ASSERT_EQ(o.top_id[2], 5);
    ASSERT_EQ(o.top_id[3], 4);
    ASSERT_NEAR(o.top_lp[0], 2.0 - log(z), 1e-5);
    ASSERT_NEAR(o.top_lp[3], 0.5 - log(z), 1e-5);
    wk_sampler_free(&s);
    // A vocabulary-sized row (the vectorized path and its tail) against double exp.
    const int nv = 262144 + 5;
    float *big = malloc((size_t)nv * sizeof *big);
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < nv; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        big[i] = (float)((double)(x >> 11) * 0x1.0p-53 * 40.0 - 30.0);
    }
    big[nv - 1] = 12.5f; // the maximum sits in the scalar tail
    big[77] = 12.25f;
    double ref = 0;
    for (int i = 0; i < nv; i++)
        ref += exp((double)big[i] - 12.5);
    bias[0] = (proto_bias){77, 1.0f};
    ASSERT_EQ(wk_sampler_init(&s, nv, &p), 0);
    o = draw_row(&s, big, nv, 20, NULL);
    ASSERT_EQ(o.id, 77);
    ASSERT_NEAR(o.logprob, 12.25 - (12.5 + log(ref)), 2e-5);
    ASSERT_EQ(o.top_id[0], nv - 1);
    ASSERT_EQ(o.top_id[1], 77);
    ASSERT_NEAR(o.top_lp[0], -log(ref), 2e-5);
    for (int i = 1; i < 20; i++)
        ASSERT_TRUE(o.top_lp[i] <= o.top_lp[i - 1]);
    wk_sampler_free(&s);
    free(big);
}

/* GPU pool sizing (--gpu-memory-fraction): what a fraction of the device leaves
 * after what is in use and what is still to come, never more than is free. */
static void test_kv_sizing(void) {
    const size_t G = (size_t)1 << 30, M = (size_t)1 << 20;
    // 80 GiB device, 10 used by the weights, 0.9 of it: 72 - 10 - 2 reserved = 60 GiB
    ASSERT_EQ(wk_kv_blocks_for_memory(80 * G, 70 * G, 0.9, 2 * G, M), (long)(60 * 1024));
    // another process holds 75 of 80: only what is free counts, less the reserve
    ASSERT_EQ(wk_kv_blocks_for_memory(80 * G, 5 * G, 1.0, 1 * G, M), (long)(4 * 1024));
    // the fraction is already used up, or the reserve takes the rest: no block
    ASSERT_EQ(wk_kv_blocks_for_memory(80 * G, 10 * G, 0.5, 0, M), 0);
    ASSERT_EQ(wk_kv_blocks_for_memory(80 * G, 70 * G, 0.9, 62 * G, M), 0);
    ASSERT_EQ(wk_kv_blocks_for_memory(80 * G, 70 * G, 0.9, 0, 0), 0);
    // blocks round down
    ASSERT_EQ(wk_kv_blocks_for_memory(100 * M, 100 * M, 1.0, 0, 3 * M), 33);
}

int main(void) {
    smp_be = kn_cpu_create(1);
    ASSERT_TRUE(smp_be != NULL);
    if (!smp_be)
        return kt_done("test_sched");
    test_sampler();
    test_sampler_subset();
    smp_be->ops->destroy(smp_be);
    test_kv_sizing();
    char def[1024];
    const char *path = kt_model_path(def, sizeof def);
    env e = {0};
    char err[256];
    if (wk_gguf_open(path, &e.g, err, sizeof err)) {
        printf("test_sched: model %s not available (%s); model tests skipped\n", path, err);
        return kt_done("test_sched");
    }
    e.be = kn_cpu_create(2);
    ASSERT_EQ(wk_tok_load(e.g, &e.tok, err, sizeof err), 0);
    ASSERT_EQ(wk_model_load(e.g, e.be, WK_QUANT_NONE, &e.m, err, sizeof err), 0);
    test_template(&e);
    test_batching_and_preemption(&e);
    test_cancel_and_overflow(&e);
    test_choices_prefix_logprobs(&e);
    wk_model_free(e.m);
    wk_tok_free(e.tok);
    e.be->ops->destroy(e.be);
    wk_gguf_close(e.g);
    return kt_done("test_sched");
}
