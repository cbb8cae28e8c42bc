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
    free(t->deep);
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
    for (int i = 0; i < v->n_cls; i++) {
        free(v->cls[i]->le);
        free(v->cls[i]->mixed);
        free(v->cls[i]->by_len);
        free(v->cls[i]->len_off);
        free(v->cls[i]);
    }
    free(v->cls);
    free(v);
}

/* Ends the subtree of path[depth] just before node nn, and passes its deepest
 * token up to the parent. */
static void close_node(trie *t, const int32_t *path, int depth, int32_t nn) {
    t->nend[path[depth]] = nn;
    if (depth > 1 && t->deep[path[depth - 1]] < t->deep[path[depth]])
        t->deep[path[depth - 1]] = t->deep[path[depth]];
}

/* The trie of refs[0..nr) (sorted), whose bytes total `total`. */
static int trie_build(trie *t, const tok_ref *refs, int nr, size_t total, int max_len) {
    t->nb = malloc(total + 1);
    t->nd = malloc((total + 1) * sizeof *t->nd);
    t->nend = malloc((total + 1) * sizeof *t->nend);
    t->ntok_off = malloc((total + 1) * sizeof *t->ntok_off);
    t->ntok = malloc(((size_t)nr + 1) * sizeof *t->ntok);
    t->deep = malloc((total + 1) * sizeof *t->deep);
    int32_t *path = malloc(((size_t)max_len + 1) * sizeof *path);
    if (!t->nb || !t->nd || !t->nend || !t->ntok_off || !t->ntok || !t->deep || !path) {
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
            close_node(t, path, depth, nn);
        for (; depth < k->len; depth++) {
            t->nb[nn] = k->p[depth];
            t->nd[nn] = (uint16_t)(depth + 1);
            t->ntok_off[nn] = nt;
            t->deep[nn] = 0;
            path[depth + 1] = nn++;
        }
        t->ntok[nt++] = k->id; // the deepest node is the last one created
        t->deep[path[depth]] = (uint16_t)depth;
        prev = k;
    }
    for (; depth > 0; depth--)
        close_node(t, path, depth, nn);
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


typedef struct open_node {
    int32_t node, runs_before; // run tokens met before the node
} open_node;

/* Fills c (set already there) from v's trie, visiting only the nodes whose path
 * is a run: a node's subtree holds a token that is no run when it holds more
 * tokens than the run tokens the visit counts under it. */
static int class_build(const wk_gvocab *v, wk_gclass *c) {
    const trie *t = &v->all;
    size_t words = ((size_t)v->n_vocab + 63) / 64, nw = ((size_t)t->n_nodes + 63) / 64;
    open_node *open = malloc(((size_t)v->max_len + 1) * sizeof *open);
    int32_t *run_ids = NULL;
    uint16_t *run_len = NULL;
    size_t n_runs = 0, cap_runs = 0;
    int depth = 0;
    if (!open || !(c->mixed = calloc(nw ? nw : 1, sizeof *c->mixed)))
        goto oom;
    for (int32_t i = 0;; ) {
        int d = i < t->n_nodes ? t->nd[i] : 1;
        for (; depth >= d; depth--) { // close the subtrees that end before i
            int32_t o = open[depth].node;
            if (t->ntok_off[t->nend[o]] - t->ntok_off[o] > (int32_t)n_runs - open[depth].runs_before)
                c->mixed[o >> 6] |= 1ull << (o & 63);
        }
        if (i >= t->n_nodes)
            break;
        if (!(c->set[t->nb[i] >> 6] >> (t->nb[i] & 63) & 1)) {
            i = t->nend[i]; // no run below
            continue;
        }
        open[++depth] = (open_node){i, (int32_t)n_runs};
        for (int32_t k = t->ntok_off[i]; k < t->ntok_off[i + 1]; k++) {
            if (n_runs == cap_runs) {
                cap_runs = cap_runs ? cap_runs * 2 : 1024;
                int32_t *ni = realloc(run_ids, cap_runs * sizeof *ni);
                run_ids = ni ? ni : run_ids;
                uint16_t *nl = ni ? realloc(run_len, cap_runs * sizeof *nl) : NULL;
                run_len = nl ? nl : run_len;
                if (!nl)
                    goto oom;
            }
            run_ids[n_runs] = t->ntok[k];
            run_len[n_runs++] = (uint16_t)d;
        }
        if (d > c->max_len)
            c->max_len = d;
        i++;
    }
    if (!(c->le = calloc(((size_t)c->max_len + 1) * words, sizeof *c->le)) ||
        !(c->len_off = calloc((size_t)c->max_len + 2, sizeof *c->len_off)) ||
        !(c->by_len = malloc((n_runs ? n_runs : 1) * sizeof *c->by_len)))
        goto oom;
    for (size_t k = 0; k < n_runs; k++) {
        c->le[(size_t)run_len[k] * words + (size_t)run_ids[k] / 64] |= 1ull << (run_ids[k] & 63);
        c->len_off[run_len[k] + 1]++;
    }
    for (int r = 1; r <= c->max_len + 1; r++)
        c->len_off[r] += c->len_off[r - 1];
    for (size_t k = 0; k < n_runs; k++) // counting sort by length
        c->by_len[c->len_off[run_len[k]]++] = run_ids[k];
    for (int r = c->max_len + 1; r > 0; r--)
        c->len_off[r] = c->len_off[r - 1];
    c->len_off[0] = 0;
    for (int r = 1; r <= c->max_len; r++) // at most r bytes
        for (size_t w = 0; w < words; w++)
            c->le[(size_t)r * words + w] |= c->le[(size_t)(r - 1) * words + w];
    free(open);
    free(run_ids);
    free(run_len);
    return 0;
oom:
    free(open);
    free(run_ids);
    free(run_len);
    return -ENOMEM;
}

const wk_gclass *wk_gvocab_class(wk_gvocab *v, const uint64_t set[4], int *err) {
    *err = 0;
    for (int i = 0; i < v->n_cls; i++)
        if (!memcmp(v->cls[i]->set, set, sizeof v->cls[i]->set))
            return v->cls[i];
    if (v->cls_bytes >= WK_GVOCAB_CLASS_BUDGET)
        return NULL;
    wk_gclass **p = realloc(v->cls, ((size_t)v->n_cls + 1) * sizeof *p), *c;
    if (p)
        v->cls = p;
    if (!p || !(c = calloc(1, sizeof *c))) {
        *err = -ENOMEM;
        return NULL;
    }
    memcpy(c->set, set, sizeof c->set);
    if ((*err = class_build(v, c))) {
        free(c->le);
        free(c->mixed);
        free(c->by_len);
        free(c->len_off);
        free(c);
        return NULL;
    }
    v->cls[v->n_cls++] = c;
    v->cls_bytes += ((size_t)c->max_len + 1) * (((size_t)v->n_vocab + 63) / 64) * 8 +
                    (((size_t)v->all.n_nodes + 63) / 64) * 8;
    return c;
}
