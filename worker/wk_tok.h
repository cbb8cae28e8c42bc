/* wk_tok: the model's own tokenizer, built from GGUF metadata.
 *
 * Two algorithms, chosen by tokenizer.ggml.model: "llama" (SentencePiece-style:
 * score-driven merges over UTF-8 characters with <0xNN> byte fallback; Gemma) and
 * "gpt2" (byte-level BPE with merge ranks and the pre-tokenizer regex named by
 * tokenizer.ggml.pre; Qwen2, Llama 3). Output token ids must equal llama.cpp's for
 * the same text and flags (tests/integration/test_tokenizer.py checks this).
 * Special tokens (control and user-defined) are matched before the algorithm runs,
 * as llama.cpp does: control tokens only with parse_special, user-defined always. */
#ifndef WK_TOK_H
#define WK_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "worker/wk_gguf.h"

typedef struct wk_tok wk_tok;

/* Builds the tokenizer from g (which must outlive it). 0 or negative errno + err. */
int wk_tok_load(const wk_gguf *g, wk_tok **out, char *err, size_t errlen);
void wk_tok_free(wk_tok *t); // NULL is a no-op

int wk_tok_n_vocab(const wk_tok *t);
int32_t wk_tok_bos(const wk_tok *t); // -1 if none
int32_t wk_tok_eos(const wk_tok *t); // -1 if none
/* 1 if generating this token ends the turn (EOS, <end_of_turn>, <|im_end|>,
 * <|eot_id|>, <|endoftext|>, ...), else 0. */
int wk_tok_is_eog(const wk_tok *t, int32_t id);
/* Id of a token whose text is exactly s (e.g. "<start_of_turn>"), or -1. */
int32_t wk_tok_find(const wk_tok *t, const char *s);

/* Tokenizes text[0..len). add_bos: prepend BOS when the model's metadata asks for
 * it (tokenizer.ggml.add_bos_token). parse_special: control-token text becomes the
 * control token. Writes up to cap ids into out and returns the total number of
 * tokens (which may exceed cap: call again with a bigger buffer), or a negative
 * errno. Invalid UTF-8 is tokenized byte-wise, never rejected. */
int wk_tok_encode(const wk_tok *t, const char *text, size_t len, int add_bos, int parse_special, int32_t *out,
                  int cap);

/* The bytes token id decodes to (byte-level BPE unmapped, "▁" as space, <0xNN>
 * as the byte). Control tokens decode to "" unless render_special. Sets *out to
 * storage owned by t; returns the length, or -EINVAL for a bad id. */
int wk_tok_piece(const wk_tok *t, int32_t id, int render_special, const char **out);

#endif
