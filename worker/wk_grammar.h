/* wk_grammar: byte-level grammars for constrained decoding, and the token masks
 * they induce over a vocabulary.
 *
 * A grammar is a recursive transition network over bytes: nodes joined by
 * byte-range edges, epsilon edges and call edges (enter a rule at its start node;
 * when the rule reaches an end node, continue at the call's return node). A
 * compiler (wk_jsonschema) builds one node by node, then wk_grammar_seal freezes
 * it. The grammar's own root rule starts at the node given to seal; reaching an
 * end node with an empty call stack means the text so far is a whole sentence.
 *
 * Matching is a lazy DFA: a state is an interned set of configurations (node,
 * call stack) closed under epsilon, call and return moves; a transition on a byte
 * is computed the first time it is needed and then memoized. A sequence's matcher
 * state is therefore one int32 state id, and sequences using the same grammar
 * (a job's choices, repeated schemas) share its states, transitions and masks.
 *
 * A vocabulary (wk_gvocab, one per tokenizer) is every token's bytes laid out as
 * a byte trie in preorder. A state's mask (bit i set: token i keeps the output
 * inside the language) is one walk of that trie over the DFA, skipping a subtree
 * as soon as its prefix is dead, and is cached per state. Inside a free string
 * (wk_grammar_plain) or a run of one byte class (as in [a-z0-9]{1,64}), most of the
 * mask comes from the vocabulary's bitsets by length and only the rest is walked.
 * End-of-generation tokens are allowed exactly when the state is accepting;
 * tokens with no bytes (control tokens) never are. Call stacks deeper than
 * WK_GRAMMAR_MAX_DEPTH are cut off (bounds recursion such as nested JSON), and a
 * grammar holds at most WK_GRAMMAR_MAX_STATES states: past that, steps fail with
 * -E2BIG.
 *
 * Not thread-safe: one worker thread owns a grammar. */
#ifndef WK_GRAMMAR_H
#define WK_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#include "worker/wk_gvocab.h"

#define WK_GRAMMAR_DEAD 0 /* the state no continuation can leave */
#define WK_GRAMMAR_MAX_DEPTH 64
#define WK_GRAMMAR_MAX_NODES (1 << 22)
#define WK_GRAMMAR_MAX_STATES 32768
#define WK_GRAMMAR_MASK_BUDGET (64u << 20) /* bytes of cached masks per grammar */

typedef struct wk_grammar wk_grammar;

/* --- building --- */
wk_grammar *wk_grammar_new(void); // NULL on ENOMEM
void wk_grammar_free(wk_grammar *g); // NULL is a no-op
/* A new node id. Builder calls never fail on their own: an allocation failure or
 * the node cap is remembered and reported by wk_grammar_seal. */
int32_t wk_grammar_node(wk_grammar *g);
void wk_grammar_bytes(wk_grammar *g, int32_t from, uint8_t lo, uint8_t hi, int32_t to);
void wk_grammar_eps(wk_grammar *g, int32_t from, int32_t to);
/* from --(run the rule starting at rule_start)--> ret. */
void wk_grammar_call(wk_grammar *g, int32_t from, int32_t rule_start, int32_t ret);
/* Marks node as a rule's end (return to the caller, or accept at the root). */
void wk_grammar_end(wk_grammar *g, int32_t node);
/* from --text--> returned node (a chain of single-byte edges). */
int32_t wk_grammar_lit(wk_grammar *g, int32_t from, const char *text, size_t len);
/* Declares that a plain token (whole UTF-8 characters a JSON string holds as
 * they are: no '"', '\\' or control character) of c characters keeps a
 * configuration at node alive exactly when c <= chars (WK_GRAMMAR_UNBOUNDED: any
 * c), and lowers its distance by min(c, min_chars); wk_grammar_inert: no plain
 * token keeps one alive. A state made of one such node and inert ones gets its mask without
 * walking the plain tokens. The caller vouches for it (wk_jsonschema's strings). */
#define WK_GRAMMAR_UNBOUNDED UINT32_MAX
void wk_grammar_plain(wk_grammar *g, int32_t node, uint32_t chars, uint32_t min_chars);
void wk_grammar_inert(wk_grammar *g, int32_t node);
/* from --(UTF-8 of any code point in [lo, hi], surrogates excluded)--> to. */
void wk_grammar_utf8(wk_grammar *g, int32_t from, uint32_t lo, uint32_t hi, int32_t to);
int32_t wk_grammar_n_nodes(const wk_grammar *g);
/* Freezes the grammar; its root rule starts at start. Edges into nodes that can
 * never complete their rule are dropped, so a live state can always be finished.
 * 0, -ENOMEM, -E2BIG (more than WK_GRAMMAR_MAX_NODES nodes), or -ENOENT (no
 * sentence at all). No building after this. */
int wk_grammar_seal(wk_grammar *g, int32_t start);

/* --- matching (sealed grammars) --- */
/* The state before any byte: >= 1, or a negative errno. */
int32_t wk_grammar_start(wk_grammar *g);
/* The state after bytes[0..n) from state: a state id, WK_GRAMMAR_DEAD, or a
 * negative errno (-ENOMEM, -E2BIG). */
int32_t wk_grammar_step(wk_grammar *g, int32_t state, const uint8_t *bytes, size_t n);
/* 1 when the text up to state is a whole sentence. */
int wk_grammar_accepting(const wk_grammar *g, int32_t state);
/* 1 when state is accepting and no byte can follow. */
int wk_grammar_complete(const wk_grammar *g, int32_t state);
/* An allowed token after which the distance to an accepting state grows. */
typedef struct wk_grise {
    int32_t token;
    uint32_t dist; // wk_grammar_distance after the token
} wk_grise;

/* The allowed-token bitmask of state over v ([ceil(n_vocab / 64)] words, bit i of
 * word i / 64), owned by g and valid until the next wk_grammar_mask call. A
 * grammar serves one vocabulary. *rises / *n_rises (same lifetime) list the
 * allowed tokens that take the state farther from acceptance, farthest first.
 * NULL and *err set (-ENOMEM, -E2BIG) on failure; *computed is set to 1 when the
 * mask was not cached, else 0. */
const uint64_t *wk_grammar_mask(wk_grammar *g, wk_gvocab *v, int32_t state, const wk_grise **rises,
                                int *n_rises, int *computed, int *err);
/* The fewest bytes that take state to an accepting one (0 when accepting;
 * UINT32_MAX for the dead state). */
uint32_t wk_grammar_distance(const wk_grammar *g, int32_t state);
/* 1 when state is one plain node (wk_grammar_plain) and inert ones: *chars and
 * *min_chars are the node's. */
int wk_grammar_plain_state(const wk_grammar *g, int32_t state, uint32_t *chars, uint32_t *min_chars);
/* Number of live DFA states (for tests and stats). */
int32_t wk_grammar_n_states(const wk_grammar *g);

#endif
