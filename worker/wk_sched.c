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
 * victim. */
#include "worker/wk_sched.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cm_buf.h"
#include "common/cm_log.h"
#include "worker/wk_sampler.h"

enum { SEQ_WAITING = 1, SEQ_RUNNING = 2 };

typedef struct seq {
    int state;
    uint64_t job;
    int64_t order;
    int32_t *tok; // [cap_tok] prompt then generated tokens
    int n_tok, cap_tok;
    int n_prompt;
    int n_done;      // tokens whose K/V are cached
    int32_t *blocks; // [max_blocks]
    int n_blocks;
    int n_gen, max_gen;
    wk_sampler smp;
    cm_buf pend;     // detokenized bytes not yet emitted
    proto_str *stop; // [n_stop] owned copies
    uint32_t n_stop;
    int chunk;       // tokens scheduled in the current step
    int row;         // block-table row in the current step
} seq;

struct wk_sched {
    wk_model *m;
    wk_kv *kv;
    const wk_tok *t;
    wk_sched_config cfg;
    wk_sched_emit_fn emit;
    void *ud;
    int n_vocab, bs, max_blocks;
    seq **seqs; // waiting and running
    int n_seqs, cap_seqs;
    int64_t stamp, pre_stamp;
    // step buffers, sized at create
    int32_t *b_tok, *b_pos, *b_seq, *b_tables, *b_rows;
    seq **b_logit_seq;
    float *logits;
    uint64_t tokens_gen, tokens_prompt;
};

static int blocks_for(const wk_sched *s, int n) {
    return (n + s->bs - 1) / s->bs;
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

static void emit_delta(wk_sched *s, seq *q, size_t n) {
    if (!n)
        return;
    cm_buf out = CM_BUF_INIT;
    if (!utf8_sanitize(q->pend.data, n, &out) && out.len) {
        proto_event ev = {.job_id = q->job, .kind = PROTO_EV_DELTA};
        ev.text.p = (char *)out.data;
        ev.text.len = (uint32_t)out.len;
        s->emit(s->ud, &ev);
    }
    cm_buf_free(&out);
    cm_buf_consume(&q->pend, n);
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
        emit_delta(s, q, hit);
        q->pend.len = 0;
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
    emit_delta(s, q, safe);
    return 0;
}

/* ---- sequences ---- */

static void seq_release_blocks(wk_sched *s, seq *q) {
    for (int i = 0; i < q->n_blocks; i++)
        wk_kv_release(s->kv, q->blocks[i]);
    q->n_blocks = 0;
    q->n_done = 0;
}

static void seq_free(seq *q) {
    if (!q)
        return;
    free(q->tok);
    free(q->blocks);
    wk_sampler_free(&q->smp);
    cm_buf_free(&q->pend);
    for (uint32_t i = 0; i < q->n_stop; i++)
        free(q->stop[i].p);
    free(q->stop);
    free(q);
}

/* Ends q: emits FINISH with usage (reason > 0) and removes it from the scheduler. */
static void seq_finish(wk_sched *s, int idx, int reason) {
    seq *q = s->seqs[idx];
    if (reason <= 0)
        goto remove;
    proto_event ev = {.job_id = q->job,
                      .kind = PROTO_EV_FINISH,
                      .finish_reason = (uint8_t)reason,
                      .prompt_tokens = (uint32_t)q->n_prompt,
                      .completion_tokens = (uint32_t)q->n_gen};
    s->emit(s->ud, &ev);
remove:
    seq_release_blocks(s, q);
    seq_free(q);
    s->seqs[idx] = s->seqs[--s->n_seqs];
}

/* Makes sure q has blocks for its first n tokens. 0 or -ENOSPC. */
static int seq_grow(wk_sched *s, seq *q, int n) {
    int need = blocks_for(s, n);
    while (q->n_blocks < need) {
        int32_t b = wk_kv_alloc(s->kv);
        if (b < 0)
            return -ENOSPC;
        q->blocks[q->n_blocks++] = b;
    }
    return 0;
}

static void seq_preempt(wk_sched *s, seq *q) {
    cm_debug("preempting job %llu (%d tokens)", (unsigned long long)q->job, q->n_tok);
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
    const int ms = cfg->max_seqs, mt = cfg->step_tokens + cfg->max_seqs;
    s->b_tok = malloc((size_t)mt * sizeof(int32_t));
    s->b_pos = malloc((size_t)mt * sizeof(int32_t));
    s->b_seq = malloc((size_t)mt * sizeof(int32_t));
    s->b_rows = malloc((size_t)ms * sizeof(int32_t));
    s->b_logit_seq = malloc((size_t)ms * sizeof(seq *));
    s->b_tables = malloc((size_t)ms * s->max_blocks * sizeof(int32_t));
    s->logits = malloc((size_t)ms * s->n_vocab * sizeof(float));
    if (!s->b_tok || !s->b_pos || !s->b_seq || !s->b_rows || !s->b_logit_seq || !s->b_tables || !s->logits ||
        wk_model_reserve(m, mt, ms, ms, s->max_blocks)) {
        wk_sched_free(s);
        return NULL;
    }
    return s;
}

void wk_sched_free(wk_sched *s) {
    if (!s)
        return;
    for (int i = 0; i < s->n_seqs; i++) {
        seq_release_blocks(s, s->seqs[i]);
        seq_free(s->seqs[i]);
    }
    free(s->seqs);
    free(s->b_tok);
    free(s->b_pos);
    free(s->b_seq);
    free(s->b_rows);
    free(s->b_logit_seq);
    free(s->b_tables);
    free(s->logits);
    free(s);
}

int wk_sched_submit(wk_sched *s, const proto_submit *sub, const int32_t *prompt, int n_prompt) {
    char msg[512];
    const int n_ctx = s->cfg.n_ctx;
    if (n_prompt >= n_ctx || (sub->max_tokens > 0 && (int64_t)n_prompt + sub->max_tokens > n_ctx)) {
        if (sub->max_tokens > 0 && n_prompt < n_ctx)
            snprintf(msg, sizeof msg,
                     "This model's maximum context length is %d tokens. However, you requested %lld tokens (%d in "
                     "the messages, %d in the completion). Please reduce the length of the messages or completion.",
                     n_ctx, (long long)n_prompt + sub->max_tokens, n_prompt, sub->max_tokens);
        else
            snprintf(msg, sizeof msg,
                     "This model's maximum context length is %d tokens. However, your messages resulted in %d tokens. "
                     "Please reduce the length of the messages.",
                     n_ctx, n_prompt);
        emit_error(s, sub->job_id, 400, "context_length_exceeded", "messages", msg);
        return -EINVAL;
    }
    if (blocks_for(s, n_prompt + 1) > wk_kv_n_blocks(s->kv)) {
        snprintf(msg, sizeof msg,
                 "Your messages resulted in %d tokens, more than this worker's KV cache holds (%d tokens).", n_prompt,
                 wk_kv_n_blocks(s->kv) * s->bs);
        emit_error(s, sub->job_id, 400, "context_length_exceeded", "messages", msg);
        return -EINVAL;
    }
    seq *q = calloc(1, sizeof *q);
    if (!q)
        goto nomem;
    q->job = sub->job_id;
    q->n_prompt = q->n_tok = n_prompt;
    q->max_gen = n_ctx - n_prompt;
    if (sub->max_tokens > 0 && sub->max_tokens < q->max_gen)
        q->max_gen = sub->max_tokens;
    q->cap_tok = n_prompt + 64;
    q->tok = malloc((size_t)q->cap_tok * sizeof *q->tok);
    q->blocks = malloc((size_t)s->max_blocks * sizeof *q->blocks);
    if (!q->tok || !q->blocks)
        goto nomem;
    memcpy(q->tok, prompt, (size_t)n_prompt * sizeof *prompt);
    if (wk_sampler_init(&q->smp, s->n_vocab, sub->temperature, sub->top_p, sub->top_k, sub->has_seed, sub->seed))
        goto nomem;
    if (sub->n_stop) {
        q->stop = calloc(sub->n_stop, sizeof *q->stop);
        if (!q->stop)
            goto nomem;
        for (uint32_t i = 0; i < sub->n_stop; i++) {
            q->stop[i].p = malloc((size_t)sub->stop[i].len + 1);
            if (!q->stop[i].p)
                goto nomem;
            memcpy(q->stop[i].p, sub->stop[i].p, sub->stop[i].len);
            q->stop[i].p[sub->stop[i].len] = 0;
            q->stop[i].len = sub->stop[i].len;
            q->n_stop = i + 1;
        }
    }
    if (s->n_seqs == s->cap_seqs) {
        int cap = s->cap_seqs ? s->cap_seqs * 2 : 16;
        seq **p = realloc(s->seqs, (size_t)cap * sizeof *p);
        if (!p)
            goto nomem;
        s->seqs = p;
        s->cap_seqs = cap;
    }
    q->state = SEQ_WAITING;
    q->order = ++s->stamp;
    s->seqs[s->n_seqs++] = q;
    s->tokens_prompt += (uint64_t)n_prompt;
    proto_event ev = {.job_id = q->job, .kind = PROTO_EV_ACCEPTED, .prompt_tokens = (uint32_t)n_prompt};
    s->emit(s->ud, &ev);
    return 0;
nomem:
    seq_free(q);
    emit_error(s, sub->job_id, 503, "server_overloaded", "", "The worker is out of memory; retry later.");
    return -ENOMEM;
}

void wk_sched_cancel(wk_sched *s, uint64_t job_id) {
    for (int i = 0; i < s->n_seqs; i++)
        if (s->seqs[i]->job == job_id) {
            seq_finish(s, i, PROTO_FINISH_CANCELLED);
            return;
        }
}

int wk_sched_busy(const wk_sched *s) {
    return s->n_seqs > 0;
}

void wk_sched_stats(const wk_sched *s, proto_stats *out) {
    memset(out, 0, sizeof *out);
    for (int i = 0; i < s->n_seqs; i++) {
        if (s->seqs[i]->state == SEQ_RUNNING)
            out->running++;
        else
            out->waiting++;
    }
    out->kv_blocks_free = (uint32_t)wk_kv_n_free(s->kv);
    out->kv_blocks_total = (uint32_t)wk_kv_n_blocks(s->kv);
    out->tokens_generated = s->tokens_gen;
    out->tokens_prompt = s->tokens_prompt;
}

static int n_running(const wk_sched *s) {
    int n = 0;
    for (int i = 0; i < s->n_seqs; i++)
        n += s->seqs[i]->state == SEQ_RUNNING;
    return n;
}

/* Admits waiting sequences in queue order while slots and blocks allow. */
static void admit(wk_sched *s) {
    int running = n_running(s);
    while (running < s->cfg.max_seqs) {
        seq *best = NULL;
        for (int i = 0; i < s->n_seqs; i++) {
            seq *q = s->seqs[i];
            if (q->state == SEQ_WAITING && (!best || q->order < best->order))
                best = q;
        }
        if (!best || wk_kv_n_free(s->kv) < blocks_for(s, best->n_tok + 1))
            return;
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

/* Appends the sampled token and its text; returns a finish reason or 0. */
static int accept_token(wk_sched *s, seq *q, int32_t id) {
    q->n_gen++;
    s->tokens_gen++;
    if (wk_tok_is_eog(s->t, id)) {
        flush_text(s, q, 1);
        return PROTO_FINISH_STOP;
    }
    if (q->n_tok == q->cap_tok) {
        int cap = q->cap_tok * 2;
        int32_t *p = realloc(q->tok, (size_t)cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        q->tok = p;
        q->cap_tok = cap;
    }
    q->tok[q->n_tok++] = id;
    const char *piece;
    int n = wk_tok_piece(s->t, id, 0, &piece);
    if (n > 0 && cm_buf_append(&q->pend, piece, (size_t)n))
        return -ENOMEM;
    int done = q->n_gen >= q->max_gen || q->n_tok >= s->cfg.n_ctx;
    if (flush_text(s, q, done))
        return PROTO_FINISH_STOP;
    return done ? PROTO_FINISH_LENGTH : 0;
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
    // Build the batch.
    int nt = 0, nr = 0, nl = 0;
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
                  .n_logits = nl};
    int rc = wk_model_forward(s->m, s->kv, &b, s->logits);
    if (rc) {
        cm_error("model forward failed: %d", rc);
        return rc;
    }
    for (int i = 0; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        if (q->chunk > 0) {
            q->n_done += q->chunk;
            q->chunk = 0;
        }
    }
    for (int l = 0; l < nl; l++) {
        seq *q = s->b_logit_seq[l];
        int32_t id = wk_sampler_sample(&q->smp, s->logits + (size_t)l * s->n_vocab);
        int reason = accept_token(s, q, id);
        if (!reason)
            continue;
        for (int i = 0; i < s->n_seqs; i++)
            if (s->seqs[i] == q) {
                if (reason < 0)
                    emit_error(s, q->job, 500, "server_error", "", "out of memory while generating");
                seq_finish(s, i, reason);
                break;
            }
    }
    return 0;
}
