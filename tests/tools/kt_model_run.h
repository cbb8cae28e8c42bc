/* kt_model_run: drives wk_model_forward over several sequences with the same
 * tokens, the way a continuous-batching scheduler would, for kt_logits and
 * tests/unit/test_model.c. Header-only (static functions).
 *
 * Modes: KT_PREFILL runs every sequence's whole prompt in one batch; KT_STEP one
 * token per sequence per forward call; KT_MIXED staggers the sequences (sequence s
 * joins at round s) and feeds chunks of 1..chunk tokens, so prefill and decode
 * tokens of different sequences share a batch. Tokens of different sequences are
 * interleaved within a batch, and KV blocks are allocated lazily as positions
 * advance, so the sequences' blocks interleave in the pool. */
#ifndef KT_MODEL_RUN_H
#define KT_MODEL_RUN_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "worker/wk_kv.h"
#include "worker/wk_model.h"

enum { KT_PREFILL = 0, KT_STEP = 1, KT_MIXED = 2 };

/* Blocks per sequence for n tokens. */
static inline int kt_blocks_for(int n, int block_size) {
    return (n + block_size - 1) / block_size;
}

/* Reserves m for kt_run_seqs(n tokens, n_seq sequences, block size bs). */
static inline int kt_reserve(wk_model *m, int n, int n_seq, int bs) {
    return wk_model_reserve(m, n * n_seq, n * n_seq, n_seq, kt_blocks_for(n, bs));
}

/* Runs toks[0..n) through n_seq sequences. out: [n_seq, all ? n : 1, n_vocab] host
 * floats (the logits of every position, or of the last only). Returns 0 or a
 * negative errno (from the model, or -ENOSPC if the pool runs out). Frees every
 * block it allocated. */
static int kt_run_seqs(wk_model *m, wk_kv *kv, const int32_t *toks, int n, int n_seq, int mode, int chunk, int all,
                       float *out) {
    const int bs = wk_kv_block_size(kv), mb = kt_blocks_for(n, bs);
    const size_t V = (size_t)wk_model_hparams(m)->n_vocab;
    const int cap = n * n_seq;
    int rc = -ENOMEM;
    int32_t *bt = malloc((size_t)n_seq * mb * sizeof(int32_t));
    int *prog = calloc((size_t)n_seq, sizeof(int));
    int32_t *bt_tok = malloc((size_t)cap * sizeof(int32_t)), *bpos = malloc((size_t)cap * sizeof(int32_t));
    int32_t *bseq = malloc((size_t)cap * sizeof(int32_t)), *rows = malloc((size_t)cap * sizeof(int32_t));
    int *row_dst = malloc((size_t)cap * sizeof(int));
    float *lg = malloc((size_t)cap * V * sizeof(float));
    if (!bt || !prog || !bt_tok || !bpos || !bseq || !rows || !row_dst || !lg)
        goto cleanup;
    for (int i = 0; i < n_seq * mb; i++)
        bt[i] = -1;
    if (chunk < 1)
        chunk = 1;
    for (int round = 0;; round++) {
        int cnt[64], maxc = 0, done = 1;
        if (n_seq > 64) {
            rc = -EINVAL;
            goto cleanup;
        }
        for (int s = 0; s < n_seq; s++) {
            int rem = n - prog[s], c;
            if (rem > 0)
                done = 0;
            if (mode == KT_PREFILL)
                c = rem;
            else if (mode == KT_STEP)
                c = rem > 0 ? 1 : 0;
            else
                c = round < s ? 0 : 1 + (s + round) % chunk;
            if (c > rem)
                c = rem;
            cnt[s] = c;
            if (c > maxc)
                maxc = c;
        }
        if (done)
            break;
        if (maxc == 0)
            continue;
        int nt = 0, nl = 0;
        for (int i = 0; i < maxc; i++) {
            for (int s = 0; s < n_seq; s++) {
                if (i >= cnt[s])
                    continue;
                int p = prog[s] + i;
                if (p % bs == 0) {
                    int32_t blk = wk_kv_alloc(kv);
                    if (blk < 0) {
                        rc = -ENOSPC;
                        goto cleanup;
                    }
                    bt[s * mb + p / bs] = blk;
                }
                bt_tok[nt] = toks[p];
                bpos[nt] = p;
                bseq[nt] = s;
                if (all || p == n - 1) {
                    rows[nl] = nt;
                    row_dst[nl] = all ? s * n + p : s;
                    nl++;
                }
                nt++;
            }
        }
        for (int s = 0; s < n_seq; s++)
            prog[s] += cnt[s];
        wk_batch b = {
            .n_tok = nt,
            .tokens = bt_tok,
            .pos = bpos,
            .seq = bseq,
            .block_tables = bt,
            .n_seq = n_seq,
            .max_blocks = mb,
            .logit_rows = rows,
            .n_logits = nl,
        };
        if ((rc = wk_model_forward(m, kv, &b, lg)) < 0)
            goto cleanup;
        for (int i = 0; i < nl; i++)
            memcpy(out + (size_t)row_dst[i] * V, lg + (size_t)i * V, V * sizeof(float));
    }
    rc = 0;
cleanup:
    if (bt)
        for (int i = 0; i < n_seq * mb; i++)
            if (bt[i] >= 0)
                wk_kv_release(kv, bt[i]);
    free(lg);
    free(row_dst);
    free(rows);
    free(bseq);
    free(bpos);
    free(bt_tok);
    free(prog);
    free(bt);
    return rc;
}

#endif
