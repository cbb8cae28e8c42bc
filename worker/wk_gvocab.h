/* wk_gvocab: a tokenizer's vocabulary laid out for grammar masks.
 *
 * Every token's bytes (end-of-generation tokens kept aside, control tokens
 * without bytes left out) as a byte trie in preorder, so a walk visits each
 * shared prefix once and skips a dead prefix's whole subtree; a second trie of
 * the tokens that are not plain text; and, for the plain tokens (whole UTF-8
 * characters a JSON string holds as they are), bitsets by character count. The
 * structures are shared with wk_grammar's mask walk; everyone else uses the
 * functions. Built once per worker; afterwards only the byte-class tables
 * (wk_gvocab_class) are added, on first use, so like wk_grammar a vocabulary is
 * owned by one thread. */
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
    uint16_t *deep;    // [n_nodes] length in bytes of the longest token in the node's subtree
} trie;

/* The tokens made only of the bytes of one class (a "run" of the class): which
 * they are, by length, and where in the trie `all` the others are. */
typedef struct wk_gclass {
    uint64_t set[4];   // the class: byte b is in it when set[b >> 6] >> (b & 63) & 1
    int max_len;       // the longest run token (0: none)
    uint64_t *le;      // [(max_len + 1) * words] le[r * words ..]: the run tokens of at most r bytes
    int32_t *by_len;   // the run tokens by length: those of r bytes are by_len[len_off[r] .. len_off[r + 1])
    int32_t *len_off;  // [max_len + 2]
    uint64_t *mixed;   // [words of all.n_nodes] bit i: node i's subtree holds a token that is no run
} wk_gclass;

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
    wk_gclass **cls; // [n_cls] the byte-class tables made so far
    int n_cls;
    size_t cls_bytes;
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
/* The table of the byte class set[4] (see wk_gclass), made on first use and kept
 * with v. NULL with *err = 0 once WK_GVOCAB_CLASS_BUDGET bytes of tables exist
 * (callers then do without), or with *err = -ENOMEM. */
#define WK_GVOCAB_CLASS_BUDGET (48u << 20)
const wk_gclass *wk_gvocab_class(wk_gvocab *v, const uint64_t set[4], int *err);

#endif
