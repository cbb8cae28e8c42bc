/* wk_pretok: the pre-tokenizers of byte-level BPE models: hand-written matchers
 * equal to llama.cpp's regexes for tokenizer.ggml.pre = gpt2, llama3 (llama-bpe),
 * qwen2 and the four-stage "default", with Unicode categories from
 * wk_unicode_data.c. They cut a codepoint string into words; wk_tok merges each
 * word on its own. */
#ifndef WK_PRETOK_H
#define WK_PRETOK_H

#include <stddef.h>
#include <stdint.h>

typedef enum wk_pretok_kind {
    WK_PRETOK_DEFAULT = 0,
    WK_PRETOK_GPT2 = 1,
    WK_PRETOK_LLAMA3 = 2,
    WK_PRETOK_QWEN2 = 3,
} wk_pretok_kind;

/* Splits cp[0..n) into words. *lens (malloc'd; the caller frees it) receives
 * each word's length in codepoints, in order, and *n_words their count; the
 * lengths add up to n. 0 or -ENOMEM. */
int wk_pretok_split(wk_pretok_kind kind, const uint32_t *cp, size_t n, size_t **lens, size_t *n_words);

#endif
