/* wk_gcache: the worker's compiled grammars and the masks they put on logits.
 *
 * A job asking for structured output or tool calls gets its grammar from here:
 * compiled on first use, then shared by every job with the same inputs (the
 * response format, strict flag and schema text, or the tools and tool_choice;
 * the key is a hash of them, confirmed by comparing them). Entries are reference counted; at most
 * WK_GCACHE_CAP unused ones are kept, least recently used dropped first. The
 * cache also owns the vocabulary trie the masks are computed over (built on
 * first use) and the grammar counters reported in STATS. */
#ifndef WK_GCACHE_H
#define WK_GCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "worker/wk_grammar.h"
#include "worker/wk_template.h"
#include "worker/wk_tok.h"

#define WK_GCACHE_CAP 32

typedef struct wk_gcache wk_gcache;

/* A cache over t (borrowed; it must outlive the cache) for a model whose tool
 * calls follow family's format. NULL on ENOMEM. */
wk_gcache *wk_gcache_new(const wk_tok *t, wk_template_family family);
void wk_gcache_free(wk_gcache *c); // NULL is a no-op; every grammar must have been put back

/* The grammar for sub's tools (wk_tools_constrain) or else its response format
 * (format != TEXT), with one reference held for the caller (release with
 * wk_gcache_put). On failure NULL, *status is 400 (a schema is refused: msg says
 * why, naming the keyword; param the request field) or 500 (out of memory). */
wk_grammar *wk_gcache_get(wk_gcache *c, const proto_submit *sub, int *status, char *msg, size_t msglen,
                          char *param, size_t paramlen);
void wk_gcache_put(wk_gcache *c, wk_grammar *g); // NULL is a no-op

/* Writes the grammar's mask of state into bits [(n_logits + 31) / 32] (bit i % 32
 * of word i / 32 allows token i, as kn.h's sample op reads it; tokens past the
 * tokenizer's vocabulary are never allowed).
 * budget (tokens the output may still take, this one included; < 0: no limit)
 * also forbids the tokens after which the rest of the budget could not finish
 * the document (its distance in bytes exceeds the tokens left: every byte has
 * a token of its own), so a constrained output that is cut by max_tokens still
 * ends as a whole document when one fits; when none fits, only the tokens that
 * come nearest to the end stay allowed. *restricted is set to 1 when that
 * removed a token. Returns the number of tokens left allowed, or a negative
 * errno. */
int wk_gcache_mask(wk_gcache *c, wk_grammar *g, int32_t state, int budget, uint32_t *bits, int n_logits,
                   int *restricted);
/* The grammar state after token id from state: a live state, or <= 0 when the
 * token leaves the language (or a negative errno). */
int32_t wk_gcache_advance(wk_gcache *c, wk_grammar *g, int32_t state, int32_t id);

/* Adds the grammar counters to out. */
void wk_gcache_stats(const wk_gcache *c, proto_stats *out);

#endif
