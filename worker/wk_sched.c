/* wk_sched.c: continuous batching over the paged KV cache (see wk_sched.h).
 *
 * Design note. A sequence is its token list (prompt, then every sampled token)
 * and n_done, the number of those tokens whose K/V are in the cache. A step
 * computes tokens [n_done, n_done + chunk) of each scheduled sequence; when that
 * reaches the end of the list, the last row's logits are sampled and the new token
 * is appended, so a decoding sequence always has exactly one token to compute.
 * Preemption just releases the blocks and sets n_done = 0: the token list already
 * holds everything needed to recompute the cache, and the sampler state and the
 * text emitted so far are kept, so a preempted sequence continues exactly where it
 * stopped (the kernels are batch-invariant, so at temperature 0 the recomputed
 * logits are the same).
 *
 * Waiting sequences are ordered by `order` (lower first): new ones get increasing
 * stamps, preempted ones negative stamps so they go back to the head of the queue.
 * Running sequences keep their admission stamp; the newest is the preemption
 * victim.
 *
 * A job holds one sequence per choice (n per prompt). Full blocks are listed in
 * the prefix cache as soon as they are computed, and admission starts a sequence
 * from the longest cached prefix of its tokens. The first choice of each prompt
 * (its leader) is admitted alone; the prompt's other choices wait until the leader
 * has computed the whole prompt, so they share its full blocks through the cache
 * and compute only the partial last block. A preempted sequence comes back the
 * same way, usually finding its own blocks still cached. Blocks held only by the
 * cache are reclaimed (least recently used first) before anything is preempted. */
#include "worker/wk_sched.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cm_buf.h"
#include "common/cm_log.h"
#include "worker/wk_gcache.h"
#include "worker/wk_prefix.h"
#include "worker/wk_sampler.h"
#include "worker/wk_tools.h"

enum { SEQ_WAITING = 1, SEQ_RUNNING = 2 };

/* One job: its choices' shared bookkeeping. */
typedef struct job {
    uint64_t id;
    int left;               // choices not yet finished
    int n_per_prompt;       // choices per prompt (the request's n)
    uint8_t *ready;         // [n_prompts] the prompt's leader has computed it
    uint32_t pt, ct, cached; // usage of the whole job
    int top_logprobs, logprobs;
    wk_grammar *gram;       // structured output or tools: one reference from the grammar cache, or NULL
    int tool_choice;        // proto_tool_choice
} job;

/* A sampled token's logprobs, held until its text is emitted. */
typedef struct lp_entry {
    int32_t id;
    float lp;
    int n_top;
    int32_t top_id[PROTO_MAX_TOP_LOGPROBS];
    float top_lp[PROTO_MAX_TOP_LOGPROBS];
    size_t end; // offset just past the token's bytes in the choice's output
} lp_entry;

typedef struct seq {
    int state;
    job *jb;
    uint32_t choice;
    int prompt; // index of the job's prompt
    int leader; // first choice of its prompt
    int64_t order;
    int32_t *tok; // [cap_tok] prompt then generated tokens
    int n_tok, cap_tok;
    int n_prompt;
    int n_done;      // tokens whose K/V are cached
    int32_t *blocks; // [max_blocks]
    int n_blocks;
    int n_listed;    // leading blocks listed in (or taken from) the prefix cache
    uint64_t pkey;   // prefix-cache key of block n_listed - 1 (0: none)
    int admitted;    // admitted at least once (cached_tokens counted)
    lp_entry *lp;    // [n_lp] tokens whose text is not emitted yet
    int n_lp, cap_lp;
    size_t out_bytes, emitted; // output bytes produced / emitted so far
    int n_gen, max_gen;
    wk_sampler smp;
    cm_buf pend;     // detokenized bytes not yet emitted
    proto_str *stop; // [n_stop] owned copies
    uint32_t n_stop;
    int chunk;       // tokens scheduled in the current step
    int row;         // block-table row in the current step
    int32_t gstate;  // grammar state of the output so far (with jb->gram)
    int cut;         // the token budget has narrowed the grammar: the output ends early (finish "length")
    wk_tcx *tcx;     // with tools: reads the output into content and calls
} seq;

struct wk_sched {
    wk_model *m;
    wk_kv *kv;
    wk_prefix *prefix;
    const wk_tok *t;
    wk_sched_config cfg;
    wk_sched_emit_fn emit;
    void *ud;
    int n_vocab, bs, max_blocks;
    seq **seqs; // waiting and running
    int n_seqs, cap_seqs;
    int n_jobs;
    int64_t stamp, pre_stamp;
    // step buffers, sized at create
    int32_t *b_tok, *b_pos, *b_seq, *b_tables, *b_rows;
    seq **b_logit_seq;
    int *b_err;              // [max_seqs] a row that could not be prepared: its error
    kn_sample_params *b_smp; // [max_seqs] the rows' sampling (wk_batch)
    kn_sample_out *b_out;    // [max_seqs]
    int32_t *b_adj_off;      // [max_seqs + 1]
    int32_t *b_adj_id;       // [cap_adj] the rows' adjustments
    float *b_adj_val;
    int cap_adj;
    uint32_t *b_masks; // [max_seqs, mask_words] the rows' grammar masks
    size_t mask_words;
    uint64_t tokens_gen, tokens_prompt;
    wk_gcache *gc;
};

static int blocks_for(const wk_sched *s, int n) {
    return (n + s->bs - 1) / s->bs;
}

/* Token rows of one step: the step's budget plus one decode token per sequence. */
static int step_rows(const wk_sched_config *cfg) {
    return cfg->step_tokens + cfg->max_seqs;
}

size_t wk_sched_reserve_bytes(wk_model *m, const wk_sched_config *cfg, int block_size) {
    return wk_model_reserve_bytes(m, step_rows(cfg), cfg->max_seqs, cfg->max_seqs,
                                  (cfg->n_ctx + block_size - 1) / block_size);
}

/* ---- events ---- */

static void emit_error(wk_sched *s, uint64_t job, int status, const char *code, const char *param, const char *msg) {
    proto_event ev = {.job_id = job, .kind = PROTO_EV_ERROR, .status = (uint16_t)status};
    ev.code.p = (char *)code;
    ev.code.len = (uint32_t)strlen(code);
    ev.param.p = (char *)param;
    ev.param.len = (uint32_t)strlen(param);
    ev.message.p = (char *)msg;
    ev.message.len = (uint32_t)strlen(msg);
    s->emit(s->ud, &ev);
}

/* Length of the valid UTF-8 sequence at p[0..n), 0 if invalid, -1 if p holds only
 * a valid but incomplete start of one. */
static int utf8_seq(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    int len;
    uint32_t min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000;
    else
        return 0;
    uint32_t cp = c & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) {
            // incomplete: plausible only if the second byte's range allows it
            if (i == 1)
                return -1;
            break;
        }
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
        if (i == 1) { // reject overlongs, surrogates, > U+10FFFF early
            if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F) || (c == 0xF0 && p[1] < 0x90) ||
                (c == 0xF4 && p[1] > 0x8F))
                return 0;
        }
    }
    if ((size_t)len > n)
        return -1;
    return cp >= min ? len : 0;
}

/* Appends p[0..n) to out with every invalid byte replaced by U+FFFD. */
static int utf8_sanitize(const uint8_t *p, size_t n, cm_buf *out) {
    size_t i = 0;
    while (i < n) {
        int l = utf8_seq(p + i, n - i);
        if (l > 0) {
            if (cm_buf_append(out, p + i, (size_t)l))
                return -ENOMEM;
            i += (size_t)l;
        } else {
            if (cm_buf_append(out, "\xEF\xBF\xBD", 3))
                return -ENOMEM;
            i++;
        }
    }
    return 0;
}

/* Bytes of p[0..n) that end on a character boundary (an incomplete trailing
 * sequence is held back until its next bytes arrive). */
static size_t utf8_complete(const uint8_t *p, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        uint8_t c = p[n - back];
        if ((c & 0xC0) == 0x80)
            continue; // continuation byte: keep looking for the lead
        if (c >= 0xC0 && utf8_seq(p + n - back, back) == -1)
            return n - back;
        break;
    }
    return n;
}

static proto_str piece_str(const wk_sched *s, int32_t id) {
    const char *p;
    int n = wk_tok_piece(s->t, id, 0, &p);
    return n > 0 ? (proto_str){(char *)p, (uint32_t)n} : (proto_str){"", 0};
}

typedef struct tcx_ctx {
    wk_sched *s;
    seq *q;
} tcx_ctx;

/* A piece of content or of a tool call, read from the output by q->tcx. */
static void on_tcx(void *ud, uint32_t call, const char *name, const char *text, size_t len) {
    tcx_ctx *c = ud;
    proto_event ev = {.job_id = c->q->jb->id, .kind = PROTO_EV_DELTA, .choice = c->q->choice, .call = call};
    ev.text = (proto_str){(char *)text, (uint32_t)len};
    if (name)
        ev.call_name = (proto_str){(char *)name, (uint32_t)strlen(name)};
    c->s->emit(c->s->ud, &ev);
}

/* Emits q->pend[0..n) as one DELTA with the logprobs of the tokens that end in it
 * (an empty delta only when such tokens exist and `final`); with tools, as the
 * content and call deltas read from it. */
static void emit_delta(wk_sched *s, seq *q, size_t n, int final) {
    int k = 0;
    while (k < q->n_lp && q->lp[k].end <= q->emitted + n)
        k++;
    if (!n && !(final && (k || q->tcx)))
        return;
    cm_buf out = CM_BUF_INIT;
    proto_logprob *lp = k ? calloc((size_t)k, sizeof *lp) : NULL;
    proto_top *top = k && q->jb->top_logprobs ? calloc((size_t)k * q->jb->top_logprobs, sizeof *top) : NULL;
    if ((k && !lp) || (k && q->jb->top_logprobs && !top) || utf8_sanitize(q->pend.data, n, &out))
        goto done; // out of memory: drop this piece rather than the job
    for (int i = 0; i < k; i++) {
        const lp_entry *e = &q->lp[i];
        lp[i] = (proto_logprob){.tok = piece_str(s, e->id), .logprob = e->lp, .n_top = (uint32_t)e->n_top,
                                .top = top + (size_t)i * q->jb->top_logprobs};
        for (int t = 0; t < e->n_top; t++)
            lp[i].top[t] = (proto_top){piece_str(s, e->top_id[t]), e->top_lp[t]};
    }
    if (q->tcx) { // logprobs are refused together with tools
        tcx_ctx c = {s, q};
        wk_tcx_feed(q->tcx, (const char *)out.data, out.len, final, on_tcx, &c); // ENOMEM: drop this piece
        goto done;
    }
    proto_event ev = {.job_id = q->jb->id, .kind = PROTO_EV_DELTA, .choice = q->choice, .n_lp = (uint32_t)k, .lp = lp};
    ev.text.p = out.data ? (char *)out.data : "";
    ev.text.len = (uint32_t)out.len;
    s->emit(s->ud, &ev);
done:
    free(lp);
    free(top);
    cm_buf_free(&out);
    cm_buf_consume(&q->pend, n);
    q->emitted += n;
    if (k) {
        memmove(q->lp, q->lp + k, (size_t)(q->n_lp - k) * sizeof *q->lp);
        q->n_lp -= k;
    }
}

/* Emits what can safely leave of q->pend. Returns 1 if a stop string matched (the
 * text before it was emitted, the rest dropped). */
static int flush_text(wk_sched *s, seq *q, int final) {
    const uint8_t *p = q->pend.data;
    size_t n = q->pend.len, hit = SIZE_MAX;
    for (uint32_t i = 0; i < q->n_stop; i++) {
        const proto_str *st = &q->stop[i];
        if (!st->len || st->len > n)
            continue;
        const uint8_t *at = memmem(p, n, st->p, st->len);
        if (at && (size_t)(at - p) < hit)
            hit = (size_t)(at - p);
    }
    if (hit != SIZE_MAX) {
        emit_delta(s, q, hit, 1);
        q->pend.len = 0;
        q->n_lp = 0; // tokens of the stop string and after it are not output
        return 1;
    }
    size_t safe = n;
    if (!final) {
        size_t hold = 0;
        for (uint32_t i = 0; i < q->n_stop; i++) {
            const proto_str *st = &q->stop[i];
            size_t k = st->len - 1 < n ? st->len - 1 : n;
            for (; k > hold; k--)
                if (!memcmp(p + n - k, st->p, k)) {
                    hold = k;
                    break;
                }
        }
        safe = utf8_complete(p, n - hold);
    }
    emit_delta(s, q, safe, final);
    return 0;
}

/* ---- sequences ---- */

static void seq_release_blocks(wk_sched *s, seq *q) {
    for (int i = 0; i < q->n_blocks; i++)
        wk_kv_release(s->kv, q->blocks[i]);
    q->n_blocks = 0;
    q->n_done = 0;
    q->n_listed = 0;
    q->pkey = 0;
}

static void seq_free(seq *q) {
    if (!q)
        return;
    free(q->tok);
    free(q->blocks);
    free(q->lp);
    wk_tcx_free(q->tcx);
    wk_sampler_free(&q->smp);
    cm_buf_free(&q->pend);
    for (uint32_t i = 0; i < q->n_stop; i++)
        free(q->stop[i].p);
    free(q->stop);
    free(q);
}

static void job_free(job *j) {
    if (j) {
        free(j->ready);
        free(j);
    }
}

/* Removes sequence idx (its blocks released) from the scheduler. */
static void seq_remove(wk_sched *s, int idx) {
    seq *q = s->seqs[idx];
    seq_release_blocks(s, q);
    seq_free(q);
    s->seqs[idx] = s->seqs[--s->n_seqs];
}

static void job_end(wk_sched *s, job *j) {
    wk_gcache_put(s->gc, j->gram);
    job_free(j);
    s->n_jobs--;
}

/* Ends choice idx: emits its FINISH (the job's last one carries the job's usage)
 * and removes it. The job goes with its last choice. */
static void seq_finish(wk_sched *s, int idx, int reason) {
    seq *q = s->seqs[idx];
    job *j = q->jb;
    if (reason == PROTO_FINISH_STOP && q->tcx && wk_tcx_calls(q->tcx) && j->tool_choice != PROTO_TOOLS_NAMED)
        reason = PROTO_FINISH_TOOL_CALLS;
    j->left--;
    proto_event ev = {.job_id = j->id,
                      .kind = PROTO_EV_FINISH,
                      .choice = q->choice,
                      .finish_reason = (uint8_t)reason,
                      .last = j->left == 0,
                      .completion_tokens = (uint32_t)q->n_gen};
    if (ev.last)
        ev.prompt_tokens = j->pt, ev.completion_tokens = j->ct, ev.cached_tokens = j->cached;
    s->emit(s->ud, &ev);
    seq_remove(s, idx);
    if (!j->left)
        job_end(s, j);
}

/* Removes job j and all of its choices without events (after an ERROR or with
 * the FINISH of a cancel already sent). */
static void job_drop(wk_sched *s, job *j) {
    for (int i = 0; i < s->n_seqs;)
        if (s->seqs[i]->jb == j)
            seq_remove(s, i);
        else
            i++;
    job_end(s, j);
}

/* Makes sure q has blocks for its first n tokens, reclaiming cached blocks when
 * the free list is empty. 0 or -ENOSPC. */
static int seq_grow(wk_sched *s, seq *q, int n) {
    int need = blocks_for(s, n);
    while (q->n_blocks < need) {
        int32_t b = wk_kv_alloc(s->kv);
        if (b < 0 && wk_prefix_evict(s->prefix, 1))
            b = wk_kv_alloc(s->kv);
        if (b < 0)
            return -ENOSPC;
        q->blocks[q->n_blocks++] = b;
    }
    return 0;
}

/* Lists q's newly computed full blocks in the prefix cache. */
static void seq_list_blocks(wk_sched *s, seq *q) {
    while (q->n_listed < q->n_done / s->bs && q->n_listed < q->n_blocks) {
        const int32_t *bt = q->tok + (size_t)q->n_listed * s->bs;
        q->pkey = wk_prefix_insert(s->prefix, q->pkey, bt, q->blocks[q->n_listed]);
        q->n_listed++;
    }
}

static void seq_preempt(wk_sched *s, seq *q) {
    cm_debug("preempting job %llu choice %u (%d tokens)", (unsigned long long)q->jb->id, q->choice, q->n_tok);
    seq_release_blocks(s, q);
    q->state = SEQ_WAITING;
    q->order = --s->pre_stamp;
    q->chunk = 0;
}

/* ---- public ---- */

wk_sched *wk_sched_create(wk_model *m, wk_kv *kv, const wk_tok *t, const wk_sched_config *cfg, wk_sched_emit_fn emit,
                          void *ud) {
    wk_sched *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->m = m;
    s->kv = kv;
    s->t = t;
    s->cfg = *cfg;
    s->emit = emit;
    s->ud = ud;
    s->n_vocab = wk_model_hparams(m)->n_vocab;
    s->bs = wk_kv_block_size(kv);
    s->max_blocks = blocks_for(s, cfg->n_ctx);
    const int ms = cfg->max_seqs, mt = step_rows(cfg);
    s->b_tok = malloc((size_t)mt * sizeof(int32_t));
    s->b_pos = malloc((size_t)mt * sizeof(int32_t));
    s->b_seq = malloc((size_t)mt * sizeof(int32_t));
    s->b_rows = malloc((size_t)ms * sizeof(int32_t));
    s->b_logit_seq = malloc((size_t)ms * sizeof(seq *));
    s->b_err = malloc((size_t)ms * sizeof(int));
    s->b_smp = malloc((size_t)ms * sizeof(kn_sample_params));
    s->b_out = malloc((size_t)ms * sizeof(kn_sample_out));
    s->b_adj_off = malloc((size_t)(ms + 1) * sizeof(int32_t));
    s->mask_words = ((size_t)s->n_vocab + 31) / 32;
    s->b_masks = malloc((size_t)ms * s->mask_words * sizeof(uint32_t));
    s->b_tables = malloc((size_t)ms * s->max_blocks * sizeof(int32_t));
    s->prefix = wk_prefix_create(kv);
    s->gc = wk_gcache_new(t, cfg->family);
    if (!s->b_tok || !s->b_pos || !s->b_seq || !s->b_rows || !s->b_logit_seq || !s->b_err || !s->b_smp ||
        !s->b_out || !s->b_adj_off || !s->b_masks || !s->b_tables || !s->prefix || !s->gc ||
        wk_model_reserve(m, mt, ms, ms, s->max_blocks)) {
        wk_sched_free(s);
        return NULL;
    }
    return s;
}

void wk_sched_free(wk_sched *s) {
    if (!s)
        return;
    while (s->n_seqs)
        job_drop(s, s->seqs[0]->jb);
    wk_prefix_free(s->prefix);
    wk_gcache_free(s->gc);
    free(s->seqs);
    free(s->b_tok);
    free(s->b_pos);
    free(s->b_seq);
    free(s->b_rows);
    free(s->b_logit_seq);
    free(s->b_err);
    free(s->b_smp);
    free(s->b_out);
    free(s->b_adj_off);
    free(s->b_adj_id);
    free(s->b_adj_val);
    free(s->b_masks);
    free(s->b_tables);
    free(s);
}

/* A context-window error for a prompt of n_prompt tokens, or 0 when it fits. */
static int check_fits(wk_sched *s, const proto_submit *sub, int n_prompt, char *msg, size_t len) {
    const int n_ctx = s->cfg.n_ctx;
    if (n_prompt >= n_ctx || (sub->max_tokens > 0 && (int64_t)n_prompt + sub->max_tokens > n_ctx)) {
        if (sub->max_tokens > 0 && n_prompt < n_ctx)
            snprintf(msg, len,
                     "This model's maximum context length is %d tokens. However, you requested %lld tokens (%d in "
                     "the messages, %d in the completion). Please reduce the length of the messages or completion.",
                     n_ctx, (long long)n_prompt + sub->max_tokens, n_prompt, sub->max_tokens);
        else
            snprintf(msg, len,
                     "This model's maximum context length is %d tokens. However, your messages resulted in %d tokens. "
                     "Please reduce the length of the messages.",
                     n_ctx, n_prompt);
        return -EINVAL;
    }
    if (blocks_for(s, n_prompt + 1) > wk_kv_n_blocks(s->kv)) {
        snprintf(msg, len, "Your messages resulted in %d tokens, more than this worker's KV cache holds (%d tokens).",
                 n_prompt, wk_kv_n_blocks(s->kv) * s->bs);
        return -EINVAL;
    }
    return 0;
}

static seq *seq_new(wk_sched *s, const proto_submit *sub, job *j, int prompt, uint32_t choice, const int32_t *tok,
                    int n_tok) {
    seq *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->jb = j;
    q->prompt = prompt;
    q->choice = choice;
    q->leader = choice % (uint32_t)j->n_per_prompt == 0;
    q->n_prompt = q->n_tok = n_tok;
    q->max_gen = s->cfg.n_ctx - n_tok;
    if (sub->max_tokens > 0 && sub->max_tokens < q->max_gen)
        q->max_gen = sub->max_tokens;
    q->cap_tok = n_tok + 64;
    q->tok = malloc((size_t)q->cap_tok * sizeof *q->tok);
    q->blocks = malloc((size_t)s->max_blocks * sizeof *q->blocks);
    if (!q->tok || !q->blocks)
        goto fail;
    memcpy(q->tok, tok, (size_t)n_tok * sizeof *tok);
    wk_sampler_params sp = {.temperature = sub->temperature,
                            .top_p = sub->top_p,
                            .min_p = sub->min_p,
                            .top_k = sub->top_k,
                            .presence_penalty = sub->presence_penalty,
                            .frequency_penalty = sub->frequency_penalty,
                            .bias = sub->bias,
                            .n_bias = (int)sub->n_bias,
                            .has_seed = sub->has_seed,
                            .seed = sub->seed + choice};
    if (wk_sampler_init(&q->smp, s->n_vocab, &sp))
        goto fail;
    if (sub->n_stop) {
        q->stop = calloc(sub->n_stop, sizeof *q->stop);
        if (!q->stop)
            goto fail;
        for (uint32_t i = 0; i < sub->n_stop; i++) {
            q->stop[i].p = malloc((size_t)sub->stop[i].len + 1);
            if (!q->stop[i].p)
                goto fail;
            memcpy(q->stop[i].p, sub->stop[i].p, sub->stop[i].len);
            q->stop[i].p[sub->stop[i].len] = 0;
            q->stop[i].len = sub->stop[i].len;
            q->n_stop = i + 1;
        }
    }
    q->gstate = j->gram ? wk_grammar_start(j->gram) : 0;
    if (j->tool_choice != PROTO_TOOLS_NONE && !(q->tcx = wk_tcx_new(s->cfg.family)))
        goto fail;
    q->state = SEQ_WAITING;
    q->order = ++s->stamp;
    return q;
fail:
    seq_free(q);
    return NULL;
}

/* Puts q's detokenized prompt ahead of its output (echo): emitted at once (all but
 * an incomplete last character), never matched against stop strings. */
static int seq_echo(wk_sched *s, seq *q) {
    for (int i = 0; i < q->n_prompt; i++) {
        proto_str p = piece_str(s, q->tok[i]);
        if (cm_buf_append(&q->pend, p.p, p.len))
            return -ENOMEM;
    }
    q->out_bytes = q->pend.len;
    emit_delta(s, q, utf8_complete(q->pend.data, q->pend.len), 0);
    return 0;
}

int wk_sched_submit(wk_sched *s, const proto_submit *sub, int n_prompts, const int32_t *const *prompts,
                    const int *n_prompt) {
    char msg[512];
    const int n = sub->n ? (int)sub->n : 1;
    for (int p = 0; p < n_prompts; p++) {
        if (n_prompt[p] < 1) {
            emit_error(s, sub->job_id, 400, "invalid_value", "prompt", "The prompt is empty.");
            return -EINVAL;
        }
        if (check_fits(s, sub, n_prompt[p], msg, sizeof msg)) {
            emit_error(s, sub->job_id, 400, "context_length_exceeded", n_prompts > 1 ? "prompt" : "messages", msg);
            return -EINVAL;
        }
        for (int t = 0; t < n_prompt[p]; t++)
            if (prompts[p][t] < 0 || prompts[p][t] >= s->n_vocab) {
                snprintf(msg, sizeof msg, "Invalid token id %d in the prompt: this model's vocabulary has %d tokens.",
                         prompts[p][t], s->n_vocab);
                emit_error(s, sub->job_id, 400, "invalid_value", "prompt", msg);
                return -EINVAL;
            }
    }
    for (uint32_t i = 0; i < sub->n_bias; i++)
        if (sub->bias[i].token < 0 || sub->bias[i].token >= s->n_vocab) {
            snprintf(msg, sizeof msg, "Invalid 'logit_bias': token id %d is not in this model's vocabulary (%d tokens).",
                     sub->bias[i].token, s->n_vocab);
            emit_error(s, sub->job_id, 400, "invalid_value", "logit_bias", msg);
            return -EINVAL;
        }
    wk_grammar *gram = NULL;
    if (sub->format != PROTO_FORMAT_TEXT || wk_tools_constrain(s->cfg.family, sub)) {
        int status;
        char param[64];
        if (!(gram = wk_gcache_get(s->gc, sub, &status, msg, sizeof msg, param, sizeof param))) {
            emit_error(s, sub->job_id, status, status == 400 ? "invalid_json_schema" : "server_error", param, msg);
            return status == 400 ? -EINVAL : -ENOMEM;
        }
    }
    const int n_choices = n * n_prompts;
    if (s->n_seqs + n_choices > s->cap_seqs) {
        int cap = s->cap_seqs ? s->cap_seqs : 16;
        while (cap < s->n_seqs + n_choices)
            cap *= 2;
        seq **p = realloc(s->seqs, (size_t)cap * sizeof *p);
        if (!p)
            goto nomem;
        s->seqs = p;
        s->cap_seqs = cap;
    }
    job *j = calloc(1, sizeof *j);
    if (!j)
        goto nomem;
    j->ready = calloc((size_t)n_prompts, 1);
    if (!j->ready) {
        job_free(j);
        goto nomem;
    }
    j->gram = gram;
    gram = NULL; // the job's now
    j->tool_choice = sub->tool_choice;
    j->id = sub->job_id;
    j->left = n_choices;
    j->n_per_prompt = n;
    j->logprobs = sub->logprobs;
    j->top_logprobs = sub->logprobs ? sub->top_logprobs : 0;
    s->n_jobs++;
    int base = s->n_seqs;
    for (int c = 0; c < n_choices; c++) {
        int p = c / n;
        seq *q = seq_new(s, sub, j, p, (uint32_t)c, prompts[p], n_prompt[p]);
        if (!q) {
            while (s->n_seqs > base)
                seq_free(s->seqs[--s->n_seqs]);
            job_end(s, j);
            goto nomem;
        }
        s->seqs[s->n_seqs++] = q;
    }
    for (int p = 0; p < n_prompts; p++) {
        j->pt += (uint32_t)n_prompt[p];
        s->tokens_prompt += (uint64_t)n_prompt[p];
    }
    proto_event ev = {.job_id = j->id, .kind = PROTO_EV_ACCEPTED, .prompt_tokens = j->pt};
    s->emit(s->ud, &ev);
    if (sub->echo)
        for (int i = base; i < s->n_seqs; i++)
            if (seq_echo(s, s->seqs[i])) {
                emit_error(s, j->id, 500, "server_error", "", "out of memory while echoing the prompt");
                job_drop(s, j);
                return -ENOMEM;
            }
    return 0;
nomem:
    wk_gcache_put(s->gc, gram);
    emit_error(s, sub->job_id, 503, "server_overloaded", "", "The worker is out of memory; retry later.");
    return -ENOMEM;
}

void wk_sched_cancel(wk_sched *s, uint64_t job_id) {
    for (int i = 0; i < s->n_seqs; i++)
        if (s->seqs[i]->jb->id == job_id) {
            job *j = s->seqs[i]->jb;
            proto_event ev = {.job_id = job_id, .kind = PROTO_EV_FINISH, .finish_reason = PROTO_FINISH_CANCELLED,
                              .last = 1, .prompt_tokens = j->pt, .completion_tokens = j->ct,
                              .cached_tokens = j->cached};
            s->emit(s->ud, &ev);
            job_drop(s, j);
            return;
        }
}

int wk_sched_busy(const wk_sched *s) {
    return s->n_seqs > 0;
}

void wk_sched_stats(const wk_sched *s, proto_stats *out) {
    memset(out, 0, sizeof *out);
    out->jobs = (uint32_t)s->n_jobs;
    for (int i = 0; i < s->n_seqs; i++) {
        if (s->seqs[i]->state == SEQ_RUNNING)
            out->running++;
        else
            out->waiting++;
    }
    out->kv_blocks_free = (uint32_t)wk_kv_n_free(s->kv);
    out->kv_blocks_cached = (uint32_t)wk_prefix_n_reclaimable(s->prefix);
    out->kv_blocks_total = (uint32_t)wk_kv_n_blocks(s->kv);
    out->tokens_generated = s->tokens_gen;
    out->tokens_prompt = s->tokens_prompt;
    wk_gcache_stats(s->gc, out);
}

static int n_running(const wk_sched *s) {
    int n = 0;
    for (int i = 0; i < s->n_seqs; i++)
        n += s->seqs[i]->state == SEQ_RUNNING;
    return n;
}

/* Starts q from the longest cached prefix of its tokens (at least one token is
 * left to compute, for the logits). */
static void seq_start(wk_sched *s, seq *q) {
    int max = (q->n_tok - 1) / s->bs;
    int k = wk_prefix_match(s->prefix, q->tok, q->n_tok, max, q->blocks, &q->pkey);
    q->n_blocks = q->n_listed = k;
    q->n_done = k * s->bs;
    if (!q->admitted) {
        q->admitted = 1;
        if (q->leader) // the first computation of this prompt: what it found cached
            q->jb->cached += (uint32_t)(k * s->bs < q->n_prompt ? k * s->bs : q->n_prompt);
    }
}

/* Admits waiting sequences in queue order while slots and blocks allow; a
 * prompt's followers wait for its leader to compute the prompt. */
static void admit(wk_sched *s) {
    int running = n_running(s);
    while (running < s->cfg.max_seqs) {
        seq *best = NULL;
        for (int i = 0; i < s->n_seqs; i++) {
            seq *q = s->seqs[i];
            if (q->state == SEQ_WAITING && (q->leader || q->jb->ready[q->prompt]) && (!best || q->order < best->order))
                best = q;
        }
        if (!best)
            return;
        int need = blocks_for(s, best->n_tok + 1), have = wk_kv_n_free(s->kv);
        if (have < need && have + wk_prefix_n_reclaimable(s->prefix) < need)
            return;
        seq_start(s, best);
        // Blocks the match did not cover must be on the free list.
        int more = need - best->n_blocks - wk_kv_n_free(s->kv);
        if (more > 0)
            wk_prefix_evict(s->prefix, more);
        if (wk_kv_n_free(s->kv) < need - best->n_blocks) {
            seq_release_blocks(s, best); // the match took blocks the estimate counted as reclaimable
            return;
        }
        best->state = SEQ_RUNNING;
        best->order = ++s->stamp;
        running++;
    }
}

/* The running sequence admitted last. */
static seq *newest_running(wk_sched *s) {
    seq *v = NULL;
    for (int i = 0; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        if (q->state == SEQ_RUNNING && (!v || q->order > v->order))
            v = q;
    }
    return v;
}

/* Gives q blocks for its next `chunk` tokens, preempting newer sequences as
 * needed. 0, or -ENOSPC when q itself had to yield. */
static int reserve_chunk(wk_sched *s, seq *q) {
    while (seq_grow(s, q, q->n_done + q->chunk)) {
        seq *v = newest_running(s);
        seq_preempt(s, v);
        if (v == q)
            return -ENOSPC;
    }
    return 0;
}

/* Records the logprobs of a sampled token (the sample op's, from the raw logits). */
static int record_logprob(seq *q, const kn_sample_out *o, size_t end) {
    if (q->n_lp == q->cap_lp) {
        int cap = q->cap_lp ? q->cap_lp * 2 : 16;
        lp_entry *p = realloc(q->lp, (size_t)cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        q->lp = p;
        q->cap_lp = cap;
    }
    lp_entry *e = &q->lp[q->n_lp++];
    e->id = o->id;
    e->n_top = q->jb->top_logprobs;
    e->end = end;
    e->lp = o->logprob;
    memcpy(e->top_id, o->top_id, (size_t)e->n_top * sizeof *e->top_id);
    memcpy(e->top_lp, o->top_lp, (size_t)e->n_top * sizeof *e->top_lp);
    return 0;
}

/* Appends the sampled token and its text (o: its logprobs, or NULL); returns a
 * finish reason or 0. */
static int accept_token(wk_sched *s, seq *q, int32_t id, const kn_sample_out *o) {
    q->n_gen++;
    q->jb->ct++;
    s->tokens_gen++;
    if (wk_tok_is_eog(s->t, id)) {
        flush_text(s, q, 1);
        return q->cut ? PROTO_FINISH_LENGTH : PROTO_FINISH_STOP;
    }
    if (q->jb->gram && (q->gstate = wk_gcache_advance(s->gc, q->jb->gram, q->gstate, id)) <= 0)
        return q->gstate < 0 ? q->gstate : -EPROTO; // the mask allowed only tokens that keep it alive
    if (q->n_tok == q->cap_tok) {
        int cap = q->cap_tok * 2;
        int32_t *p = realloc(q->tok, (size_t)cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        q->tok = p;
        q->cap_tok = cap;
    }
    q->tok[q->n_tok++] = id;
    proto_str piece = piece_str(s, id);
    if (piece.len && cm_buf_append(&q->pend, piece.p, piece.len))
        return -ENOMEM;
    q->out_bytes += piece.len;
    if (o && record_logprob(q, o, q->out_bytes))
        return -ENOMEM;
    if (wk_sampler_accept(&q->smp, id))
        return -ENOMEM;
    int complete = q->jb->gram && wk_grammar_complete(q->jb->gram, q->gstate);
    int done = complete || q->n_gen >= q->max_gen || q->n_tok >= s->cfg.n_ctx;
    if (flush_text(s, q, done))
        return PROTO_FINISH_STOP;
    if (complete)
        return q->cut ? PROTO_FINISH_LENGTH : PROTO_FINISH_STOP;
    return done ? PROTO_FINISH_LENGTH : 0;
}

/* Row i of the step's sample op for q: its sampling, adjustments and grammar
 * mask (the next of the step's *n_mask masks; its budget counts the tokens q may
 * still take). 0 or a negative errno (the row is sampled all the same; the caller
 * drops the job). */
static int prepare_row(wk_sched *s, seq *q, int i, int *n_mask) {
    const int32_t a0 = s->b_adj_off[i], need = a0 + wk_sampler_n_adj(&q->smp);
    kn_sample_params *p = &s->b_smp[i];
    *p = (kn_sample_params){.top_p = 1.0f, .n_top = -1, .mask = -1}; // greedy until filled in
    if (need > s->cap_adj) {
        int cap = s->cap_adj ? s->cap_adj : 4096;
        while (cap < need)
            cap *= 2;
        int32_t *id = realloc(s->b_adj_id, (size_t)cap * sizeof *id);
        if (id)
            s->b_adj_id = id;
        float *val = realloc(s->b_adj_val, (size_t)cap * sizeof *val);
        if (val)
            s->b_adj_val = val;
        if (!id || !val) {
            s->b_adj_off[i + 1] = a0;
            return -ENOMEM;
        }
        s->cap_adj = cap;
    }
    s->b_adj_off[i + 1] = a0 + wk_sampler_row(&q->smp, p, s->b_adj_id + a0, s->b_adj_val + a0);
    p->n_top = q->jb->logprobs ? q->jb->top_logprobs : -1;
    if (!q->jb->gram)
        return 0;
    int left = q->max_gen - q->n_gen, room = s->cfg.n_ctx - q->n_tok, restricted;
    uint32_t *bits = s->b_masks + (size_t)*n_mask * s->mask_words;
    int allowed = wk_gcache_mask(s->gc, q->jb->gram, q->gstate, left < room ? left : room, bits, s->n_vocab,
                                 &restricted);
    q->cut |= restricted;
    if (allowed <= 0)
        return allowed < 0 ? allowed : -EPROTO;
    p->mask = (*n_mask)++;
    return 0;
}

int wk_sched_step(wk_sched *s) {
    admit(s);
    // Decoding sequences first (one token each), then prefill chunks, oldest first.
    int budget = s->cfg.step_tokens;
    for (int pass = 0; pass < 2; pass++) {
        for (;;) {
            seq *pick = NULL;
            for (int i = 0; i < s->n_seqs; i++) {
                seq *q = s->seqs[i];
                int left = q->n_tok - q->n_done;
                if (q->state != SEQ_RUNNING || q->chunk || (pass == 0) != (left == 1))
                    continue;
                if (!pick || q->order < pick->order)
                    pick = q;
            }
            if (!pick)
                break;
            int left = pick->n_tok - pick->n_done;
            pick->chunk = left < budget ? left : budget;
            if (pass == 0 && pick->chunk == 0)
                pick->chunk = 1; // decode tokens always fit: step_tokens is an extra budget
            if (!pick->chunk) {
                pick->chunk = -1; // skipped this step
                continue;
            }
            if (reserve_chunk(s, pick))
                continue; // pick was preempted
            if (pass == 1)
                budget -= pick->chunk;
        }
    }
    // Build the batch: every sequence whose chunk reaches its last token gets a
    // row of the sample op (wk_model_forward), so no logits leave the backend.
    int nt = 0, nr = 0, nl = 0, nm = 0;
    s->b_adj_off[0] = 0;
    for (int i = 0; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        if (q->state != SEQ_RUNNING || q->chunk <= 0) {
            q->chunk = 0;
            continue;
        }
        q->row = nr;
        int32_t *bt = s->b_tables + (size_t)nr * s->max_blocks;
        memcpy(bt, q->blocks, (size_t)q->n_blocks * sizeof *bt);
        for (int b = q->n_blocks; b < s->max_blocks; b++)
            bt[b] = -1;
        for (int j = 0; j < q->chunk; j++) {
            s->b_tok[nt] = q->tok[q->n_done + j];
            s->b_pos[nt] = q->n_done + j;
            s->b_seq[nt] = nr;
            nt++;
        }
        if (q->n_done + q->chunk == q->n_tok) {
            s->b_err[nl] = prepare_row(s, q, nl, &nm);
            s->b_rows[nl] = nt - 1;
            s->b_logit_seq[nl++] = q;
        }
        nr++;
    }
    if (!nt)
        return 0;
    wk_batch b = {.n_tok = nt,
                  .tokens = s->b_tok,
                  .pos = s->b_pos,
                  .seq = s->b_seq,
                  .block_tables = s->b_tables,
                  .n_seq = nr,
                  .max_blocks = s->max_blocks,
                  .logit_rows = s->b_rows,
                  .n_logits = nl,
                  .n_sample = nl,
                  .sample = s->b_smp,
                  .adj_off = s->b_adj_off,
                  .adj_id = s->b_adj_id,
                  .adj_val = s->b_adj_val,
                  .masks = s->b_masks,
                  .n_mask = nm,
                  .sampled = s->b_out};
    int rc = wk_model_forward(s->m, s->kv, &b, NULL);
    if (rc) {
        cm_error("model forward failed: %d", rc);
        return rc;
    }
    for (int i = 0; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        if (q->chunk > 0) {
            q->n_done += q->chunk;
            q->chunk = 0;
            seq_list_blocks(s, q);
            if (q->leader && q->n_done >= q->n_prompt)
                q->jb->ready[q->prompt] = 1;
        }
    }
    for (int l = 0; l < nl; l++) {
        seq *q = s->b_logit_seq[l];
        int idx = -1;
        for (int i = 0; i < s->n_seqs && idx < 0; i++)
            if (s->seqs[i] == q)
                idx = i;
        if (idx < 0)
            continue; // its job failed earlier in this loop
        const kn_sample_out *o = &s->b_out[l];
        const int reason = s->b_err[l] ? s->b_err[l]
                           : o->id < 0 ? -ENOMEM // the backend could not sample the row
                                       : accept_token(s, q, o->id, q->jb->logprobs ? o : NULL);
        if (reason < 0) {
            emit_error(s, q->jb->id, 500, "server_error", "",
                       reason == -ENOMEM   ? "out of memory while generating"
                       : reason == -E2BIG ? "the response format's grammar grew past its state limit"
                                          : "the response format's grammar allows no next token");
            job_drop(s, q->jb);
        } else if (reason) {
            seq_finish(s, idx, reason);
        }
    }
    return 0;
}
