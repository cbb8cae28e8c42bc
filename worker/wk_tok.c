/* wk_tok: placeholder until the tokenizer lands (every call fails with -ENOSYS). */
#include "worker/wk_tok.h"

#include <errno.h>
#include <stdio.h>

int wk_tok_load(const wk_gguf *g, wk_tok **out, char *err, size_t errlen) {
    (void)g;
    *out = NULL;
    if (err && errlen)
        snprintf(err, errlen, "tokenizer not implemented yet");
    return -ENOSYS;
}
void wk_tok_free(wk_tok *t) { (void)t; }
int wk_tok_n_vocab(const wk_tok *t) { return 0; }
int32_t wk_tok_bos(const wk_tok *t) { return -1; }
int32_t wk_tok_eos(const wk_tok *t) { return -1; }
int wk_tok_is_eog(const wk_tok *t, int32_t id) { return 0; }
int32_t wk_tok_find(const wk_tok *t, const char *s) { return -1; }
int wk_tok_encode(const wk_tok *t, const char *text, size_t len, int add_bos, int parse_special, int32_t *out,
                  int cap) {
    return -ENOSYS;
}
int wk_tok_piece(const wk_tok *t, int32_t id, int render_special, const char **out) { return -ENOSYS; }
