/* wk_sched: the iteration-level continuous-batching scheduler of one worker.
 *
 * Sequences wait in FIFO order, are admitted when the paged KV pool has blocks for
 * their tokens, and then run: every step, each decoding sequence contributes one
 * token and prefilling sequences contribute prompt chunks within a token budget,
 * all in one wk_model_forward call. Blocks are allocated as sequences grow; when
 * the pool runs dry the most recently admitted sequence is preempted (its blocks
 * released, its tokens kept) and recomputed later, so its output is unchanged.
 * After sampling, the scheduler detokenizes incrementally (only complete UTF-8
 * leaves, invalid bytes become U+FFFD), applies stop strings (never emitted, even
 * across token boundaries) and reports everything as proto events through the
 * callback. A job's choices are separate sequences sharing the prompt's blocks
 * through the prefix cache (wk_prefix). Single-threaded; the model call is the
 * only parallel part. */
#ifndef WK_SCHED_H
#define WK_SCHED_H

#include <stdint.h>

#include "proto/proto.h"
#include "worker/wk_kv.h"
#include "worker/wk_model.h"
#include "worker/wk_template.h"
#include "worker/wk_tok.h"

typedef struct wk_sched wk_sched;

/* Receives each event; the event and its strings are valid during the call only. */
typedef void (*wk_sched_emit_fn)(void *ud, const proto_event *ev);

typedef struct wk_sched_config {
    int n_ctx;        // context window (prompt + completion) in tokens
    int max_seqs;     // sequences running at once
    int step_tokens;  // token budget of one forward step (prefill chunking)
    wk_template_family family; // the chat template's family (the tool-call format)
} wk_sched_config;

/* Creates a scheduler over m, kv and t (all borrowed; they must outlive it) and
 * reserves the model's activations. NULL on failure. */
wk_sched *wk_sched_create(wk_model *m, wk_kv *kv, const wk_tok *t, const wk_sched_config *cfg, wk_sched_emit_fn emit,
                          void *ud);
/* The backend bytes wk_sched_create reserves for m's activations under cfg with
 * KV blocks of block_size tokens (so that a KV pool can be sized before it). */
size_t wk_sched_reserve_bytes(wk_model *m, const wk_sched_config *cfg, int block_size);
void wk_sched_free(wk_sched *s); // NULL is a no-op

/* Queues a job: sub->n choices (0 counts as 1) for each of the n_prompts prompts
 * (prompts[p][0..n_prompt[p]) tokens, copied), with the sampling fields of sub.
 * Emits ACCEPTED (then, with sub->echo, each choice's prompt text), or an ERROR
 * (a prompt over the window or the cache, a token id or logit_bias id outside the
 * vocabulary). Returns 0 when queued, a negative errno when it emitted an error. */
int wk_sched_submit(wk_sched *s, const proto_submit *sub, int n_prompts, const int32_t *const *prompts,
                    const int *n_prompt);
/* Cancels a job: its blocks are freed and one FINISH (cancelled, last) is emitted.
 * Unknown ids are ignored (the job may have just finished). */
void wk_sched_cancel(wk_sched *s, uint64_t job_id);
/* 1 if any job is waiting or running. */
int wk_sched_busy(const wk_sched *s);
/* Runs one step. 0, or a negative errno when the model failed (fatal). */
int wk_sched_step(wk_sched *s);
void wk_sched_stats(const wk_sched *s, proto_stats *out);

#endif
