/* wk_gvocab: see wk_gvocab.h. */
#include "worker/wk_gvocab.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct tok_ref {
    const uint8_t *p;
    int len;
    int32_t id;
} tok_ref;

static int tok_cmp(const void *a, const void *b) {
    const tok_ref *x = a, *y = b;
    int n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, (size_t)n);
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void trie_free(trie *t) {
    free(t->nb);
    free(t->nd);
    free(t->nend);
    free(t->ntok_off);
    free(t->ntok);
}

void wk_gvocab_free(wk_gvocab *v) {
    if (!v)
        return;
    free(v->bytes);
    free(v->tok_off);
    trie_free(&v->all);
    trie_free(&v->other);
    free(v->plain);
    free(v->eog);
    free(v);
}

/* The trie of refs[0..nr) (sorted), whose bytes total `total`. */
static int trie_build(trie *t, const tok_ref *refs, int nr, size_t total, int max_len) {
    t->nb = malloc(total + 1);
    t->nd = malloc((total + 1) * sizeof *t->nd);
    t->nend = malloc((total + 1) * sizeof *t->nend);
    t->ntok_off = malloc((total + 1) * sizeof *t->ntok_off);
    t->ntok = malloc(((size_t)nr + 1) * sizeof *t->ntok);
    int32_t *path = malloc(((size_t)max_len + 1) * sizeof *path);
    if (!t->nb || !t->nd || !t->nend || !t->ntok_off || !t->ntok || !path) {
        free(path);
        return -ENOMEM;
    }
    int depth = 0, nt = 0;
    int32_t nn = 0;
    const tok_ref *prev = NULL;
    for (int r = 0; r < nr; r++) {
        const tok_ref *k = &refs[r];
        int l = 0;
        if (prev)
            while (l < prev->len && l < k->len && prev->p[l] == k->p[l])
                l++;
        for (; depth > l; depth--)
            t->nend[path[depth]] = nn;
        for (; depth < k->len; depth++) {
            t->nb[nn] = k->p[depth];
            t->nd[nn] = (uint16_t)(depth + 1);
            t->ntok_off[nn] = nt;
            path[depth + 1] = nn++;
        }
        t->ntok[nt++] = k->id; // the deepest node is the last one created
        prev = k;
    }
    for (; depth > 0; depth--)
        t->nend[path[depth]] = nn;
    t->ntok_off[nn] = nt;
    t->n_nodes = nn;
    free(path);
    return 0;
}

/* Characters in p[0..n) when it is plain JSON string text (whole, valid UTF-8
 * characters, none of them '"', '\\' or below U+0020), else -1. */
static int plain_chars(const uint8_t *p, int n) {
    int chars = 0;
    for (int i = 0; i < n; chars++) {
        uint8_t c = p[i];
        int len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len || i + len > n || (len == 1 && (c < 0x20 || c == '"' || c == '\\')))
            return -1;
        for (int k = 1; k < len; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                return -1;
        if ((c == 0xE0 && p[i + 1] < 0xA0) || (c == 0xED && p[i + 1] > 0x9F) || (c == 0xF0 && p[i + 1] < 0x90) ||
            (c == 0xF4 && p[i + 1] > 0x8F))
            return -1; // overlong, surrogate, above U+10FFFF
        i += len;
    }
    return chars;
}

int wk_gvocab_build(const wk_tok *t, wk_gvocab **out) {
    *out = NULL;
    int n = wk_tok_n_vocab(t);
    if (n <= 0)
        return -EINVAL;
    wk_gvocab *v = calloc(1, sizeof *v);
    tok_ref *refs = NULL, *others = NULL;
    int *chars = NULL;
    if (!v)
        return -ENOMEM;
    v->n_vocab = n;
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        const char *p;
        int len = wk_tok_piece(t, i, 0, &p);
        if (len > 0 && !wk_tok_is_eog(t, i))
            total += (size_t)len;
    }
    v->bytes = malloc(total ? total : 1);
    v->tok_off = calloc((size_t)n + 1, sizeof *v->tok_off);
    v->eog = calloc((size_t)n, sizeof *v->eog);
    refs = malloc((size_t)n * sizeof *refs);
    others = malloc((size_t)n * sizeof *others);
    chars = malloc((size_t)n * sizeof *chars);
    if (!v->bytes || !v->tok_off || !v->eog || !refs || !others || !chars)
        goto oom;
    size_t at = 0, other_bytes = 0;
    int nr = 0, no = 0;
    for (int32_t i = 0; i < n; i++) {
        v->tok_off[i] = (int32_t)at;
        chars[i] = -1;
        const char *p;
        int len = wk_tok_piece(t, i, 0, &p);
        if (wk_tok_is_eog(t, i)) {
            v->eog[v->n_eog++] = i;
            continue;
        }
        if (len <= 0 || len > UINT16_MAX)
            continue;
        memcpy(v->bytes + at, p, (size_t)len);
        refs[nr++] = (tok_ref){v->bytes + at, len, i};
        if ((chars[i] = plain_chars(v->bytes + at, len)) < 0) {
            others[no++] = refs[nr - 1];
            other_bytes += (size_t)len;
        } else if (chars[i] > v->max_chars) {
            v->max_chars = chars[i];
        }
        at += (size_t)len;
        if (len > v->max_len)
            v->max_len = len;
    }
    v->tok_off[n] = (int32_t)at;
    qsort(refs, (size_t)nr, sizeof *refs, tok_cmp);
    qsort(others, (size_t)no, sizeof *others, tok_cmp);
    if (trie_build(&v->all, refs, nr, at, v->max_len) || trie_build(&v->other, others, no, other_bytes, v->max_len))
        goto oom;
    size_t words = ((size_t)n + 63) / 64;
    if (!(v->plain = calloc(((size_t)v->max_chars + 1) * words, sizeof *v->plain)))
        goto oom;
    for (int32_t i = 0; i < n; i++)
        if (chars[i] > 0)
            v->plain[(size_t)chars[i] * words + (size_t)i / 64] |= 1ull << (i & 63);
    for (int r = 1; r <= v->max_chars; r++) // at most r characters
        for (size_t w = 0; w < words; w++)
            v->plain[(size_t)r * words + w] |= v->plain[(size_t)(r - 1) * words + w];
    free(chars);
    free(refs);
    free(others);
    *out = v;
    return 0;
oom:
    free(chars);
    free(refs);
    free(others);
    wk_gvocab_free(v);
    return -ENOMEM;
}

int wk_gvocab_n_vocab(const wk_gvocab *v) {
    return v->n_vocab;
}

const uint8_t *wk_gvocab_bytes(const wk_gvocab *v, int32_t id, int *len) {
    if (id < 0 || id >= v->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = v->tok_off[id + 1] - v->tok_off[id];
    return *len ? v->bytes + v->tok_off[id] : NULL;
}

