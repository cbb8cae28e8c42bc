/* wk_gvocab: a tokenizer's vocabulary laid out for grammar masks.
 *
 * Every token's bytes (end-of-generation tokens kept aside, control tokens
 * without bytes left out) as a byte trie in preorder, so a walk visits each
 * shared prefix once and skips a dead prefix's whole subtree; a second trie of
 * the tokens that are not plain text; and, for the plain tokens (whole UTF-8
 * characters a JSON string holds as they are), bitsets by character count. The
 * structures are shared with wk_grammar's mask walk; everyone else uses the
 * functions. Built once per worker, read-only afterwards. */
#ifndef WK_GVOCAB_H
#define WK_GVOCAB_H

#include <stdint.h>

#include "worker/wk_tok.h"

/* Tokens laid out as a byte trie in preorder. */
typedef struct trie {
    int32_t n_nodes;
    uint8_t *nb;       // [n_nodes] the byte leading into the node
    uint16_t *nd;      // [n_nodes] depth (1 = a child of the root)
    int32_t *nend;     // [n_nodes] index just past the node's subtree
    int32_t *ntok_off; // [n_nodes + 1] tokens ending at node i: ntok[ntok_off[i] .. ntok_off[i + 1])
    int32_t *ntok;
} trie;

struct wk_gvocab {
    int n_vocab;
    uint8_t *bytes;   // token bytes, token i at bytes[tok_off[i] .. tok_off[i + 1])
    int32_t *tok_off; // [n_vocab + 1]
    trie all;         // every token with bytes (not the end-of-generation ones)
    trie other;       // the tokens that are not plain text (below)
    // Plain tokens: whole UTF-8 characters that a JSON string holds as they are
    // (no '"', '\\' or control character). plain[r * words ..] is the bitset of
    // those of at most r characters, r = 0 .. max_chars.
    uint64_t *plain;
    int max_chars;
    int32_t *eog; // [n_eog]
    int n_eog;
    int max_len;
};

typedef struct wk_gvocab wk_gvocab;

/* Builds the vocabulary of t (borrowed during the call only). 0, -EINVAL (an
 * empty vocabulary) or -ENOMEM. */
int wk_gvocab_build(const wk_tok *t, wk_gvocab **out);
void wk_gvocab_free(wk_gvocab *v); // NULL is a no-op
int wk_gvocab_n_vocab(const wk_gvocab *v);
/* The bytes of token id as the grammar sees them (NULL/0 for control and
 * end-of-generation tokens). */
const uint8_t *wk_gvocab_bytes(const wk_gvocab *v, int32_t id, int *len);

#endif
