/* wk_tok: SentencePiece-style ("llama") and byte-level BPE ("gpt2") tokenizers
 * that reproduce llama.cpp's token ids.
 *
 * Design note. Encoding runs in three steps, as in llama.cpp:
 *  1. Special-token partitioning. The text is split into raw fragments and token
 *     fragments. Special tokens (CONTROL and UNKNOWN only with parse_special,
 *     USER_DEFINED always) are taken longest text first; each one splits every raw
 *     fragment at all its occurrences, left to right. To avoid scanning the text
 *     once per special token (Gemma has ~6400), a hash of every prefix of every
 *     special text first finds which specials occur at all; only those run.
 *  2. Per raw fragment, the algorithm. "llama": spaces become U+2581 (plus a
 *     leading one when add_space_prefix and the previous fragment was a token),
 *     the text is cut into UTF-8 characters and the adjacent pair whose
 *     concatenation is the vocab piece with the highest score is merged
 *     repeatedly (ties: leftmost); leftover pieces fall back to <0xNN> tokens.
 *     "gpt2": the pre-tokenizer named by tokenizer.ggml.pre splits the text into
 *     words (wk_pretok), each word is mapped byte-to-unicode and merged by rank
 *     (lowest first, ties leftmost).
 *  3. BOS (and EOS when the model asks) around it.
 * Lookups go through open-addressing FNV-1a hash tables over piece bytes; the
 * token texts stay in the GGUF mapping. Decoded pieces are built once at load. */
#include "worker/wk_tok.h"
#include "common/cm_log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/wk_pretok.h"

enum { KIND_SPM, KIND_BPE };

// llama.cpp token attributes (bit flags)
enum {
    A_UNKNOWN = 1 << 0,
    A_UNUSED = 1 << 1,
    A_NORMAL = 1 << 2,
    A_CONTROL = 1 << 3,
    A_USER_DEFINED = 1 << 4,
    A_BYTE = 1 << 5,
};

typedef struct hmap { // piece bytes -> value; slots hold index+1
    uint32_t *slot;
    uint32_t mask;
} hmap;

typedef struct prefix_ent {
    uint32_t len;
    int32_t ref;  // a special token whose text starts with this prefix
    int32_t full; // the special token whose text is exactly this prefix, or -1
} prefix_ent;

struct wk_tok {
    int kind;
    wk_pretok_kind pre;
    int n_vocab;
    const char **text; // [n_vocab] into the mapping
    uint32_t *len;     // [n_vocab]
    float *score;      // [n_vocab]
    uint16_t *attr;    // [n_vocab]
    uint8_t *eog;      // [n_vocab]
    hmap vocab;        // text -> id

    int n_merges;
    const char **mtext; // [n_merges] "left right"
    uint32_t *mlen;
    hmap merges; // "left right" -> rank

    int32_t bos, eos, eot, eom, unk;
    int add_bos, add_eos, add_space_prefix, ignore_merges;
    int32_t byte_tok[256]; // SPM <0xNN> (or the 1-byte token), -1 if none

    int32_t *special; // sorted: longest text first, then lowest id
    int n_special;
    int32_t *special_rank; // [n_vocab] position in special[], -1 if not special
    prefix_ent *pfx;
    uint32_t pfx_mask;

    char *piece_buf; // decoded pieces
    uint32_t *piece_off, *piece_len;

    char bpe_enc[256][3]; // byte -> UTF-8 of its GPT-2 unicode stand-in
    uint8_t bpe_enc_len[256];
};


static uint32_t fnv1a(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

static int hmap_init(hmap *m, uint32_t n) {
    uint32_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    m->slot = calloc(cap, sizeof(uint32_t));
    m->mask = cap - 1;
    return m->slot ? 0 : -ENOMEM;
}

/* Finds s in m whose keys are (texts[i], lens[i]); returns index or -1. */
static int32_t hmap_get(const hmap *m, const char *const *texts, const uint32_t *lens, const char *s, size_t n) {
    if (!m->slot)
        return -1;
    for (uint32_t h = fnv1a(s, n) & m->mask;; h = (h + 1) & m->mask) {
        uint32_t v = m->slot[h];
        if (!v)
            return -1;
        if (lens[v - 1] == n && !memcmp(texts[v - 1], s, n))
            return (int32_t)(v - 1);
    }
}

/* Inserts index i unless an equal key exists (first one wins, as llama.cpp's emplace). */
static void hmap_put(hmap *m, const char *const *texts, const uint32_t *lens, uint32_t i) {
    const char *s = texts[i];
    size_t n = lens[i];
    for (uint32_t h = fnv1a(s, n) & m->mask;; h = (h + 1) & m->mask) {
        uint32_t v = m->slot[h];
        if (!v) {
            m->slot[h] = i + 1;
            return;
        }
        if (lens[v - 1] == n && !memcmp(texts[v - 1], s, n))
            return;
    }
}

static int32_t vocab_get(const wk_tok *t, const char *s, size_t n) {
    return hmap_get(&t->vocab, t->text, t->len, s, n);
}

static size_t utf8_len(uint8_t c) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

/* Decodes one codepoint as llama.cpp does: an invalid sequence consumes one byte
 * and yields U+FFFD. */
static uint32_t utf8_next(const uint8_t *s, size_t n, size_t *i) {
    size_t o = *i;
    uint8_t c = s[o];
    if (c < 0x80) {
        *i = o + 1;
        return c;
    }
    if ((c & 0xE0) == 0xC0 && o + 1 < n && (s[o + 1] & 0xC0) == 0x80) {
        *i = o + 2;
        return ((uint32_t)(c & 0x1F) << 6) | (s[o + 1] & 0x3F);
    }
    if ((c & 0xF0) == 0xE0 && o + 2 < n && (s[o + 1] & 0xC0) == 0x80 && (s[o + 2] & 0xC0) == 0x80) {
        *i = o + 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[o + 1] & 0x3F) << 6) | (s[o + 2] & 0x3F);
    }
    if ((c & 0xF8) == 0xF0 && o + 3 < n && (s[o + 1] & 0xC0) == 0x80 && (s[o + 2] & 0xC0) == 0x80 &&
        (s[o + 3] & 0xC0) == 0x80) {
        *i = o + 4;
        return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[o + 1] & 0x3F) << 12) |
               ((uint32_t)(s[o + 2] & 0x3F) << 6) | (s[o + 3] & 0x3F);
    }
    *i = o + 1;
    return 0xFFFD;
}

static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | ((cp >> 18) & 0x07));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- output and growable buffers ---- */

typedef struct obuf {
    int32_t *out;
    int cap;
    long n;
} obuf;

static void emit(obuf *o, int32_t id) {
    if (o->n < o->cap)
        o->out[o->n] = id;
    o->n++;
}

/* ---- merge queue shared by both algorithms ---- */

typedef struct sym {
    int prev, next;
    size_t start, n; // byte range in the work buffer
} sym;

typedef struct bigram {
    int left, right;
    float score; // SPM: higher first; BPE: -rank
    size_t size;
} bigram;

typedef struct heap {
    bigram *v;
    size_t n, cap;
} heap;

static int bg_before(const bigram *a, const bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(heap *h, bigram b) {
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        bigram *nv = realloc(h->v, nc * sizeof(bigram));
        if (!nv)
            return -ENOMEM;
        h->v = nv;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_before(&b, &h->v[p]))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return 0;
}

static bigram heap_pop(heap *h) {
    bigram top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && bg_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!bg_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

typedef struct work {
    sym *syms;
    size_t nsym, capsym;
    heap q;
    char *key; // BPE "left right" scratch
    size_t keycap;
} work;

static int syms_reserve(work *w, size_t n) {
    if (n <= w->capsym)
        return 0;
    sym *ns = realloc(w->syms, n * sizeof(sym));
    if (!ns)
        return -ENOMEM;
    w->syms = ns;
    w->capsym = n;
    return 0;
}

/* Splits buf[0..n) into UTF-8 characters (llama.cpp's length rule). */
static int split_chars(work *w, const char *buf, size_t n) {
    if (syms_reserve(w, n + 1) < 0)
        return -ENOMEM;
    w->nsym = 0;
    for (size_t o = 0; o < n;) {
        size_t l = utf8_len((uint8_t)buf[o]);
        if (l > n - o)
            l = n - o;
        sym *s = &w->syms[w->nsym];
        s->start = o;
        s->n = l;
        s->prev = (int)w->nsym - 1;
        o += l;
        s->next = o == n ? -1 : (int)w->nsym + 1;
        w->nsym++;
    }
    return 0;
}

/* ---- SPM ---- */

static int spm_add(const wk_tok *t, work *w, const char *buf, int l, int r) {
    if (l < 0 || r < 0)
        return 0;
    size_t size = w->syms[l].n + w->syms[r].n;
    int32_t id = vocab_get(t, buf + w->syms[l].start, size);
    if (id < 0)
        return 0;
    return heap_push(&w->q, (bigram){l, r, t->score[id], size});
}

static int spm_fragment(const wk_tok *t, work *w, const char *buf, size_t n, obuf *o) {
    int rc;
    if (!n)
        return 0;
    if ((rc = split_chars(w, buf, n)) < 0)
        return rc;
    w->q.n = 0;
    for (size_t i = 1; i < w->nsym; i++)
        if ((rc = spm_add(t, w, buf, (int)i - 1, (int)i)) < 0)
            return rc;
    while (w->q.n) {
        bigram b = heap_pop(&w->q);
        sym *L = &w->syms[b.left], *R = &w->syms[b.right];
        if (!L->n || !R->n || L->n + R->n != b.size)
            continue;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0)
            w->syms[R->next].prev = b.left;
        if ((rc = spm_add(t, w, buf, L->prev, b.left)) < 0 || (rc = spm_add(t, w, buf, b.left, L->next)) < 0)
            return rc;
    }
    for (int i = 0; i != -1; i = w->syms[i].next) {
        const sym *s = &w->syms[i];
        int32_t id = vocab_get(t, buf + s->start, s->n);
        if (id >= 0) {
            emit(o, id);
            continue;
        }
        for (size_t j = 0; j < s->n; j++) {
            int32_t b = t->byte_tok[(uint8_t)buf[s->start + j]];
            emit(o, b >= 0 ? b : t->unk);
        }
    }
    return 0;
}

/* ---- BPE ---- */

static int bpe_add(const wk_tok *t, work *w, const char *buf, int l, int r) {
    if (l < 0 || r < 0)
        return 0;
    const sym *L = &w->syms[l], *R = &w->syms[r];
    size_t kl = L->n + 1 + R->n;
    if (kl > w->keycap) {
        char *nk = realloc(w->key, kl * 2);
        if (!nk)
            return -ENOMEM;
        w->key = nk;
        w->keycap = kl * 2;
    }
    memcpy(w->key, buf + L->start, L->n);
    w->key[L->n] = ' ';
    memcpy(w->key + L->n + 1, buf + R->start, R->n);
    int32_t rank = hmap_get(&t->merges, t->mtext, t->mlen, w->key, kl);
    if (rank < 0)
        return 0;
    return heap_push(&w->q, (bigram){l, r, -(float)rank, L->n + R->n});
}

/* Byte-level BPE of one pre-tokenized word (already byte-to-unicode mapped). */
static int bpe_word(const wk_tok *t, work *w, const char *buf, size_t n, obuf *o) {
    int rc;
    if (t->ignore_merges) {
        int32_t id = vocab_get(t, buf, n);
        if (id >= 0) {
            emit(o, id);
            return 0;
        }
    }
    if ((rc = split_chars(w, buf, n)) < 0)
        return rc;
    w->q.n = 0;
    for (size_t i = 1; i < w->nsym; i++)
        if ((rc = bpe_add(t, w, buf, (int)i - 1, (int)i)) < 0)
            return rc;
    while (w->q.n) {
        bigram b = heap_pop(&w->q);
        sym *L = &w->syms[b.left], *R = &w->syms[b.right];
        if (!L->n || !R->n || L->n + R->n != b.size)
            continue;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0)
            w->syms[R->next].prev = b.left;
        if ((rc = bpe_add(t, w, buf, L->prev, b.left)) < 0 || (rc = bpe_add(t, w, buf, b.left, L->next)) < 0)
            return rc;
    }
    for (int i = 0; i != -1; i = w->syms[i].next) {
        const sym *s = &w->syms[i];
        int32_t id = vocab_get(t, buf + s->start, s->n);
        if (id >= 0) {
            emit(o, id);
            continue;
        }
        for (size_t j = 0; j < s->n; j++) { // llama.cpp: single bytes of the mapped text, dropped if absent
            int32_t b = vocab_get(t, buf + s->start + j, 1);
            if (b >= 0)
                emit(o, b);
        }
    }
    return 0;
}

static int bpe_fragment(const wk_tok *t, work *w, const char *text, size_t n, obuf *o) {
    int rc = -ENOMEM;
    uint32_t *cp = malloc((n + 1) * sizeof(uint32_t));
    char *wbuf = malloc(n * 6 + 8);
    size_t *lens = NULL, n_words = 0;
    if (!cp || !wbuf)
        goto done;
    size_t ncp = 0;
    for (size_t i = 0; i < n;)
        cp[ncp++] = utf8_next((const uint8_t *)text, n, &i);
    if ((rc = wk_pretok_split(t->pre, cp, ncp, &lens, &n_words)) < 0)
        goto done;
    size_t start = 0;
    for (size_t k = 0; k < n_words; k++) {
        size_t wl = 0;
        for (size_t i = start; i < start + lens[k]; i++) {
            char u[4];
            size_t ul = utf8_put(cp[i], u);
            for (size_t j = 0; j < ul; j++) {
                uint8_t by = (uint8_t)u[j];
                memcpy(wbuf + wl, t->bpe_enc[by], t->bpe_enc_len[by]);
                wl += t->bpe_enc_len[by];
            }
        }
        start += lens[k];
        if (wl && (rc = bpe_word(t, w, wbuf, wl, o)) < 0)
            goto done;
    }
    rc = 0;
done:
    free(cp);
    free(wbuf);
    free(lens);
    return rc;
}

/* ---- special-token partitioning ---- */

typedef struct frag {
    size_t off, len;
    int32_t tok; // -1: raw text
} frag;

typedef struct fragvec {
    frag *v;
    size_t n, cap;
} fragvec;

static int fv_insert(fragvec *f, size_t at, frag x) {
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 16;
        frag *nv = realloc(f->v, nc * sizeof(frag));
        if (!nv)
            return -ENOMEM;
        f->v = nv;
        f->cap = nc;
    }
    memmove(&f->v[at + 1], &f->v[at], (f->n - at) * sizeof(frag));
    f->v[at] = x;
    f->n++;
    return 0;
}

static int special_usable(const wk_tok *t, int32_t id, int parse_special) {
    return parse_special || !(t->attr[id] & (A_CONTROL | A_UNKNOWN));
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

static int partition(const wk_tok *t, const char *text, size_t n, int parse_special, fragvec *f) {
    int rc;
    f->n = 0;
    if (!n)
        return 0;
    if ((rc = fv_insert(f, 0, (frag){0, n, -1})) < 0)
        return rc;
    if (!t->n_special)
        return 0;
    // Which special tokens occur anywhere in the text (by their rank in t->special)?
    int32_t *found = NULL;
    size_t nfound = 0, capfound = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t h = 2166136261u;
        for (size_t l = 1; i + l <= n; l++) {
            h ^= (uint8_t)text[i + l - 1];
            h *= 16777619u;
            const prefix_ent *e = NULL;
            for (uint32_t s = h & t->pfx_mask;; s = (s + 1) & t->pfx_mask) {
                const prefix_ent *c = &t->pfx[s];
                if (!c->len)
                    break;
                if (c->len == l && !memcmp(t->text[c->ref], text + i, l)) {
                    e = c;
                    break;
                }
            }
            if (!e)
                break;
            if (e->full >= 0 && special_usable(t, e->full, parse_special)) {
                if (nfound == capfound) {
                    capfound = capfound ? capfound * 2 : 16;
                    int32_t *nf = realloc(found, capfound * sizeof(int32_t));
                    if (!nf) {
                        free(found);
                        return -ENOMEM;
                    }
                    found = nf;
                }
                found[nfound++] = t->special_rank[e->full];
            }
        }
    }
    if (!nfound) {
        free(found);
        return 0;
    }
    qsort(found, nfound, sizeof(int32_t), cmp_i32);
    for (size_t k = 0; k < nfound; k++) {
        if (k && found[k] == found[k - 1])
            continue;
        int32_t id = t->special[found[k]];
        const char *st = t->text[id];
        size_t sl = t->len[id];
        for (size_t fi = 0; fi < f->n; fi++) {
            if (f->v[fi].tok >= 0)
                continue;
            frag cur = f->v[fi];
            const char *m = memmem(text + cur.off, cur.len, st, sl);
            if (!m)
                continue;
            // Replace cur by: [left] token [right]; continue scanning in right.
            size_t mo = (size_t)(m - text);
            size_t at = fi;
            f->v[fi].tok = id; // reuse the slot for the token
            f->v[fi].off = mo;
            f->v[fi].len = sl;
            if (mo > cur.off) {
                if ((rc = fv_insert(f, at, (frag){cur.off, mo - cur.off, -1})) < 0) {
                    free(found);
                    return rc;
                }
                at++;
            }
            size_t rend = cur.off + cur.len, roff = mo + sl;
            if (roff < rend) {
                if ((rc = fv_insert(f, at + 1, (frag){roff, rend - roff, -1})) < 0) {
                    free(found);
                    return rc;
                }
            }
            fi = at; // the loop's ++ moves onto the right remainder
        }
    }
    free(found);
    return 0;
}

/* ---- public: encode ---- */

int wk_tok_encode(const wk_tok *t, const char *text, size_t len, int add_bos, int parse_special, int32_t *out,
                  int cap) {
    if (!t || (!text && len) || cap < 0 || (cap && !out))
        return -EINVAL;
    if (len > (size_t)INT32_MAX / 8)
        return -E2BIG;
    obuf o = {out, cap, 0};
    fragvec f = {0};
    work w = {0};
    char *esc = NULL;
    int rc = partition(t, text, len, parse_special, &f);
    if (rc < 0)
        goto done;
    if (add_bos && t->add_bos && t->bos >= 0)
        emit(&o, t->bos);
    if (t->kind == KIND_SPM) {
        esc = malloc(len * 3 + 4);
        if (!esc) {
            rc = -ENOMEM;
            goto done;
        }
    }
    int prev_special = 1;
    for (size_t i = 0; i < f.n; i++) {
        const frag *fr = &f.v[i];
        if (fr->tok >= 0) {
            emit(&o, fr->tok);
            prev_special = 1;
            continue;
        }
        if (t->kind == KIND_SPM) {
            size_t el = 0;
            if (t->add_space_prefix && prev_special) {
                memcpy(esc, "\xE2\x96\x81", 3);
                el = 3;
            }
            for (size_t j = 0; j < fr->len; j++) {
                char c = text[fr->off + j];
                if (c == ' ') {
                    memcpy(esc + el, "\xE2\x96\x81", 3);
                    el += 3;
                } else {
                    esc[el++] = c;
                }
            }
            rc = spm_fragment(t, &w, esc, el, &o);
        } else {
            rc = bpe_fragment(t, &w, text + fr->off, fr->len, &o);
        }
        if (rc < 0)
            goto done;
        prev_special = 0;
    }
    if (add_bos && t->add_eos && t->eos >= 0)
        emit(&o, t->eos);
    rc = o.n > INT32_MAX ? -E2BIG : (int)o.n;
done:
    free(esc);
    free(f.v);
    free(w.syms);
    free(w.q.v);
    free(w.key);
    return rc;
}

/* ---- load ---- */

static int key_id(const wk_gguf *g, const char *key, int n_vocab, int32_t *id) {
    int64_t v;
    if (wk_gguf_get_i64(g, key, &v) == 0 && v >= 0 && v < n_vocab)
        *id = (int32_t)v;
    return 0;
}

static int text_is(const wk_tok *t, int32_t id, const char *s) {
    size_t n = strlen(s);
    return t->len[id] == n && !memcmp(t->text[id], s, n);
}

static int cmp_special(const void *a, const void *b, void *ctx) {
    const wk_tok *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->len[x] != t->len[y])
        return t->len[x] > t->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int build_specials(wk_tok *t) {
    size_t total = 0;
    t->special_rank = malloc((size_t)t->n_vocab * sizeof(int32_t));
    if (!t->special_rank)
        return -ENOMEM;
    for (int i = 0; i < t->n_vocab; i++) {
        t->special_rank[i] = -1;
        if ((t->attr[i] & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)) && t->len[i]) {
            t->n_special++;
            total += t->len[i];
        }
    }
    t->special = malloc(((size_t)t->n_special + 1) * sizeof(int32_t));
    if (!t->special)
        return -ENOMEM;
    int k = 0;
    for (int i = 0; i < t->n_vocab; i++)
        if ((t->attr[i] & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)) && t->len[i])
            t->special[k++] = i;
    qsort_r(t->special, (size_t)t->n_special, sizeof(int32_t), cmp_special, t);
    for (int i = 0; i < t->n_special; i++)
        t->special_rank[t->special[i]] = i;
    uint32_t cap = 16;
    while (cap < total * 2 + 2)
        cap <<= 1;
    t->pfx = calloc(cap, sizeof(prefix_ent));
    if (!t->pfx)
        return -ENOMEM;
    t->pfx_mask = cap - 1;
    for (int i = 0; i < t->n_special; i++) {
        int32_t id = t->special[i];
        const char *s = t->text[id];
        uint32_t h = 2166136261u;
        for (uint32_t l = 1; l <= t->len[id]; l++) {
            h ^= (uint8_t)s[l - 1];
            h *= 16777619u;
            for (uint32_t x = h & t->pfx_mask;; x = (x + 1) & t->pfx_mask) {
                prefix_ent *e = &t->pfx[x];
                if (!e->len) {
                    e->len = l;
                    e->ref = id;
                    e->full = l == t->len[id] ? id : -1;
                    break;
                }
                if (e->len == l && !memcmp(t->text[e->ref], s, l)) {
                    if (l == t->len[id])
                        e->full = id;
                    break;
                }
            }
        }
    }
    return 0;
}

static void build_bpe_bytes(wk_tok *t) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t cp;
        if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
            cp = (uint32_t)b;
        else
            cp = 256u + (uint32_t)n++;
        t->bpe_enc_len[b] = (uint8_t)utf8_put(cp, t->bpe_enc[b]);
    }
}

/* Byte of a GPT-2 stand-in codepoint, or -1. */
static int bpe_dec(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68)
        return -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
            continue;
        if (256u + (uint32_t)n == cp)
            return b;
        n++;
    }
    return -1;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int build_pieces(wk_tok *t) {
    size_t total = 0;
    for (int i = 0; i < t->n_vocab; i++)
        total += t->len[i];
    t->piece_buf = malloc(total + 1);
    t->piece_off = malloc((size_t)t->n_vocab * sizeof(uint32_t));
    t->piece_len = malloc((size_t)t->n_vocab * sizeof(uint32_t));
    if (!t->piece_buf || !t->piece_off || !t->piece_len || total > UINT32_MAX)
        return -ENOMEM;
    size_t o = 0;
    for (int i = 0; i < t->n_vocab; i++) {
        const char *s = t->text[i];
        size_t n = t->len[i], start = o;
        uint16_t a = t->attr[i];
        if (a & (A_CONTROL | A_UNKNOWN | A_USER_DEFINED)) {
            memcpy(t->piece_buf + o, s, n);
            o += n;
        } else if (a & A_NORMAL) {
            if (t->kind == KIND_SPM) {
                for (size_t j = 0; j < n; j++) {
                    if (j + 2 < n && !memcmp(s + j, "\xE2\x96\x81", 3)) {
                        t->piece_buf[o++] = ' ';
                        j += 2;
                    } else {
                        t->piece_buf[o++] = s[j];
                    }
                }
            } else {
                for (size_t j = 0; j < n;) {
                    size_t j0 = j;
                    uint32_t cp = utf8_next((const uint8_t *)s, n, &j);
                    int b = bpe_dec(cp);
                    if (b >= 0) {
                        t->piece_buf[o++] = (char)b;
                    } else {
                        memcpy(t->piece_buf + o, s + j0, j - j0);
                        o += j - j0;
                    }
                }
            }
        } else if (a & A_BYTE) {
            int hi = n == 6 ? hexval(s[3]) : -1, lo = n == 6 ? hexval(s[4]) : -1;
            if (hi >= 0 && lo >= 0)
                t->piece_buf[o++] = (char)(hi * 16 + lo);
            else if (n == 1)
                t->piece_buf[o++] = s[0];
        }
        t->piece_off[i] = (uint32_t)start;
        t->piece_len[i] = (uint32_t)(o - start);
    }
    return 0;
}

static int load_bpe(wk_tok *t, const wk_gguf *g, char *err, size_t errlen) {
    wk_gguf_vtype et;
    uint64_t n;
    if (wk_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n, NULL) < 0 || et != WK_GGUF_STRING) {
        cm_set_err(err, errlen, "gpt2 tokenizer without tokenizer.ggml.merges (string array)");
        return -EINVAL;
    }
    if (n > INT32_MAX) {
        cm_set_err(err, errlen, "tokenizer.ggml.merges too large");
        return -EINVAL;
    }
    t->n_merges = (int)n;
    t->mtext = malloc((n + 1) * sizeof(char *));
    t->mlen = malloc((n + 1) * sizeof(uint32_t));
    if (!t->mtext || !t->mlen || hmap_init(&t->merges, (uint32_t)n + 1) < 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        size_t l;
        if (wk_gguf_arr_str(g, "tokenizer.ggml.merges", i, &t->mtext[i], &l) < 0 || l > UINT32_MAX)
            return -EINVAL;
        t->mlen[i] = (uint32_t)l;
        hmap_put(&t->merges, t->mtext, t->mlen, i);
    }
    const char *pre = "default";
    size_t pl = 7;
    (void)wk_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pl);
#define PRE_IS(s) (pl == strlen(s) && !memcmp(pre, s, pl))
    t->add_bos = 0;
    if (PRE_IS("llama3") || PRE_IS("llama-v3") || PRE_IS("llama-bpe") || PRE_IS("falcon3") || PRE_IS("pixtral") ||
        PRE_IS("smaug-bpe") || PRE_IS("dbrx")) {
        t->pre = WK_PRETOK_LLAMA3;
        t->ignore_merges = !(PRE_IS("smaug-bpe") || PRE_IS("dbrx"));
        t->add_bos = t->ignore_merges;
    } else if (PRE_IS("qwen2") || PRE_IS("deepseek-r1-qwen") || PRE_IS("megrez") || PRE_IS("stablelm2")) {
        t->pre = WK_PRETOK_QWEN2;
    } else if (PRE_IS("gpt-2") || PRE_IS("gpt2") || PRE_IS("phi-2") || PRE_IS("mpt") || PRE_IS("olmo") ||
               PRE_IS("jais")) {
        t->pre = WK_PRETOK_GPT2;
    } else if (PRE_IS("default")) {
        t->pre = WK_PRETOK_DEFAULT;
    } else {
        cm_set_err(err, errlen, "unsupported pre-tokenizer tokenizer.ggml.pre = \"%.*s\"", (int)pl, pre);
        return -ENOTSUP;
    }
#undef PRE_IS
    build_bpe_bytes(t);
    return 0;
}

int wk_tok_load(const wk_gguf *g, wk_tok **out, char *err, size_t errlen) {
    int rc = -EINVAL;
    wk_tok *t = NULL;
    const char *model;
    size_t ml;
    wk_gguf_vtype et;
    uint64_t n;
    const void *types = NULL, *scores = NULL;
    if (!g || !out)
        return -EINVAL;
    *out = NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    if (wk_gguf_get_str(g, "tokenizer.ggml.model", &model, &ml) < 0) {
        cm_set_err(err, errlen, "missing tokenizer.ggml.model");
        goto fail;
    }
    if (ml == 5 && !memcmp(model, "llama", 5)) {
        t->kind = KIND_SPM;
        t->bos = 1, t->eos = 2, t->unk = 0;
        t->add_bos = 1;
        t->add_space_prefix = 1;
    } else if (ml == 4 && !memcmp(model, "gpt2", 4)) {
        t->kind = KIND_BPE;
        t->bos = 11, t->eos = 11, t->unk = -1;
    } else {
        cm_set_err(err, errlen, "unsupported tokenizer.ggml.model \"%.*s\" (need llama or gpt2)", (int)ml, model);
        rc = -ENOTSUP;
        goto fail;
    }
    t->eot = t->eom = -1;
    if (wk_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, NULL) < 0 || et != WK_GGUF_STRING || n == 0 ||
        n > INT32_MAX / 2) {
        cm_set_err(err, errlen, "missing or bad tokenizer.ggml.tokens");
        goto fail;
    }
    t->n_vocab = (int)n;
    if (wk_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n, &scores) == 0 &&
        (et != WK_GGUF_F32 || n < (uint64_t)t->n_vocab)) {
        cm_set_err(err, errlen, "bad tokenizer.ggml.scores");
        goto fail;
    }
    if (wk_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n, &types) == 0 &&
        (et != WK_GGUF_I32 || n < (uint64_t)t->n_vocab)) {
        cm_set_err(err, errlen, "bad tokenizer.ggml.token_type");
        goto fail;
    }
    size_t V = (size_t)t->n_vocab;
    t->text = malloc(V * sizeof(char *));
    t->len = malloc(V * sizeof(uint32_t));
    t->score = malloc(V * sizeof(float));
    t->attr = malloc(V * sizeof(uint16_t));
    t->eog = calloc(V, 1);
    if (!t->text || !t->len || !t->score || !t->attr || !t->eog || hmap_init(&t->vocab, (uint32_t)V) < 0) {
        rc = -ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < V; i++) {
        size_t l;
        if (wk_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &t->text[i], &l) < 0 || l > UINT32_MAX) {
            cm_set_err(err, errlen, "bad token %zu", i);
            goto fail;
        }
        t->len[i] = (uint32_t)l;
        float sc = 0;
        if (scores)
            memcpy(&sc, (const char *)scores + i * 4, 4);
        t->score[i] = sc;
        int32_t ty = 1;
        if (types)
            memcpy(&ty, (const char *)types + i * 4, 4);
        static const uint16_t map[7] = {0, A_NORMAL, A_UNKNOWN, A_CONTROL, A_USER_DEFINED, A_UNUSED, A_BYTE};
        t->attr[i] = ty >= 0 && ty < 7 ? map[ty] : 0;
        if (l)
            hmap_put(&t->vocab, t->text, t->len, (uint32_t)i);
    }
    if (t->kind == KIND_BPE && (rc = load_bpe(t, g, err, errlen)) < 0)
        goto fail;
    rc = -EINVAL;

    key_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos);
    key_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos);
    key_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot);
    key_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &t->eom);
    key_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk);
    if (t->bos >= t->n_vocab)
        t->bos = -1;
    if (t->eos >= t->n_vocab)
        t->eos = -1;
    if (t->unk >= t->n_vocab)
        t->unk = -1;
    int b;
    if (wk_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == 0)
        t->add_bos = b;
    if (wk_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b) == 0)
        t->add_eos = b;
    if (wk_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b) == 0)
        t->add_space_prefix = b;
    if (t->kind == KIND_BPE)
        t->add_space_prefix = 0;

    // Control-looking tokens as llama.cpp treats them: end-of-turn/FIM texts become
    // CONTROL, "unused" controls UNUSED, and the EOG set is built from ids and texts.
    static const char *eog_texts[] = {"<|eot_id|>",      "<|im_end|>",         "<|end|>",   "<|return|>",
                                      "<|call|>",        "<end_of_turn>",      "<|endoftext|>", "<|eom_id|>",
                                      "<EOT>",           "<|end_of_text|>",    "<end_of_utterance>"};
    static const char *ctl_texts[] = {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|fim_suffix|>",
                                      "<fim-suffix>",   "<fim_suffix>", "<SUF>",        "<|fim_middle|>",
                                      "<fim-middle>",   "<fim_middle>", "<MID>",        "<|fim_pad|>",
                                      "<fim-pad>",      "<fim_pad>",    "<PAD>",        "<|fim_repo|>",
                                      "<|repo_name|>",  "<fim-repo>",   "<REPO>",       "<reponame>",
                                      "<|file_sep|>"};
    static const char *ud_texts[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"};
    for (int i = 0; i < t->n_vocab; i++) {
        if (t->len[i] < 3 || t->text[i][0] != '<')
            continue;
        for (size_t k = 0; k < sizeof eog_texts / sizeof *eog_texts; k++)
            if (text_is(t, i, eog_texts[k])) {
                t->eog[i] = 1;
                t->attr[i] |= A_CONTROL;
                if (t->eot < 0 && k != 7)
                    t->eot = i;
                if (k == 7 && t->eom < 0)
                    t->eom = i;
            }
        for (size_t k = 0; k < sizeof ctl_texts / sizeof *ctl_texts; k++)
            if (text_is(t, i, ctl_texts[k]))
                t->attr[i] |= A_CONTROL;
        for (size_t k = 0; k < sizeof ud_texts / sizeof *ud_texts; k++)
            if (text_is(t, i, ud_texts[k]))
                t->attr[i] = A_USER_DEFINED;
    }
    for (int i = 0; i < t->n_vocab; i++)
        if ((t->attr[i] & A_CONTROL) && memmem(t->text[i], t->len[i], "unused", 6))
            t->attr[i] |= A_UNUSED;
    if (t->eos >= 0)
        t->eog[t->eos] = 1;
    if (t->eot >= 0)
        t->eog[t->eot] = 1;
    if (t->eom >= 0)
        t->eog[t->eom] = 1;

    for (int c = 0; c < 256; c++) {
        char hex[7];
        snprintf(hex, sizeof hex, "<0x%02X>", c);
        t->byte_tok[c] = vocab_get(t, hex, 6);
        if (t->byte_tok[c] < 0) {
            char one = (char)c;
            t->byte_tok[c] = vocab_get(t, &one, 1);
        }
    }
    if (t->kind == KIND_SPM && t->unk < 0)
        t->unk = 0;
    if ((rc = build_specials(t)) < 0 || (rc = build_pieces(t)) < 0) {
        cm_set_err(err, errlen, "out of memory building the tokenizer");
        goto fail;
    }
    *out = t;
    return 0;
fail:
    if (err && errlen && !err[0])
        cm_set_err(err, errlen, "tokenizer load failed (%d)", rc);
    wk_tok_free(t);
    return rc;
}

void wk_tok_free(wk_tok *t) {
    if (!t)
        return;
    free(t->text);
    free(t->len);
    free(t->score);
    free(t->attr);
    free(t->eog);
    free(t->vocab.slot);
    free(t->mtext);
    free(t->mlen);
    free(t->merges.slot);
    free(t->special);
    free(t->special_rank);
    free(t->pfx);
    free(t->piece_buf);
    free(t->piece_off);
    free(t->piece_len);
    free(t);
}

int wk_tok_n_vocab(const wk_tok *t) { return t ? t->n_vocab : 0; }
int32_t wk_tok_bos(const wk_tok *t) { return t ? t->bos : -1; }
int32_t wk_tok_eos(const wk_tok *t) { return t ? t->eos : -1; }

int wk_tok_is_eog(const wk_tok *t, int32_t id) { return t && id >= 0 && id < t->n_vocab && t->eog[id]; }

int32_t wk_tok_find(const wk_tok *t, const char *s) { return t && s ? vocab_get(t, s, strlen(s)) : -1; }

int wk_tok_piece(const wk_tok *t, int32_t id, int render_special, const char **out) {
    if (!t || !out || id < 0 || id >= t->n_vocab)
        return -EINVAL;
    *out = t->piece_buf + t->piece_off[id];
    if (!render_special && (t->attr[id] & (A_CONTROL | A_UNKNOWN)))
        return 0;
    return (int)t->piece_len[id];
}
