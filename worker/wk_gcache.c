/* wk_gcache: see wk_gcache.h. */
#include "worker/wk_gcache.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/cm_buf.h"
#include "worker/wk_gvocab.h"
#include "worker/wk_jsonschema.h"
#include "worker/wk_tools.h"

typedef struct entry {
    uint64_t hash;
    char *key; // owned: everything the grammar is compiled from
    size_t len;
    wk_grammar *g;
    int refs;
    uint64_t used; // last use, for eviction
} entry;

typedef struct cand {
    int32_t id;
    uint32_t dist; // bytes left to finish after the token
} cand;

struct wk_gcache {
    const wk_tok *t;
    cand *cand; // [n_vocab] scratch of the budget check near the end
    wk_template_family family;
    wk_gvocab *v; // built on first use
    entry *e;
    int n, cap;
    uint64_t clock;
    uint64_t masks, mask_ns, compiles, hits;
};

wk_gcache *wk_gcache_new(const wk_tok *t, wk_template_family family) {
    wk_gcache *c = calloc(1, sizeof *c);
    if (c) {
        c->t = t;
        c->family = family;
    }
    return c;
}

static void entry_free(entry *e) {
    free(e->key);
    wk_grammar_free(e->g);
}

void wk_gcache_free(wk_gcache *c) {
    if (!c)
        return;
    for (int i = 0; i < c->n; i++)
        entry_free(&c->e[i]);
    free(c->e);
    free(c->cand);
    wk_gvocab_free(c->v);
    free(c);
}

static uint64_t key_hash(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int key_str(cm_buf *k, const proto_str *s) {
    uint32_t n = s->len;
    return cm_buf_append(k, &n, sizeof n) || cm_buf_append(k, s->p ? s->p : "", s->len) ? -ENOMEM : 0;
}

/* Everything sub's grammar is compiled from, as one byte string. */
static int make_key(const proto_submit *sub, cm_buf *k) {
    if (sub->n_tools) {
        uint8_t head[3] = {'T', sub->tool_choice, sub->parallel_calls};
        int rc = cm_buf_append(k, head, sizeof head) || key_str(k, &sub->tool_name) ? -ENOMEM : 0;
        for (uint32_t i = 0; !rc && i < sub->n_tools; i++)
            rc = key_str(k, &sub->tools[i].name) || cm_buf_append(k, &sub->tools[i].strict, 1) ||
                         key_str(k, &sub->tools[i].parameters)
                     ? -ENOMEM
                     : 0;
        return rc;
    }
    uint8_t head[3] = {'F', sub->format, sub->format == PROTO_FORMAT_JSON_SCHEMA ? sub->strict : 0};
    proto_str none = {"", 0};
    return cm_buf_append(k, head, sizeof head) ||
                   key_str(k, sub->format == PROTO_FORMAT_JSON_SCHEMA ? &sub->schema : &none)
               ? -ENOMEM
               : 0;
}

/* Drops unused entries, least recently used first, down to WK_GCACHE_CAP. */
static void evict(wk_gcache *c) {
    for (;;) {
        int unused = 0, victim = -1;
        for (int i = 0; i < c->n; i++)
            if (!c->e[i].refs) {
                unused++;
                if (victim < 0 || c->e[i].used < c->e[victim].used)
                    victim = i;
            }
        if (unused <= WK_GCACHE_CAP)
            return;
        entry_free(&c->e[victim]);
        c->e[victim] = c->e[--c->n];
    }
}

wk_grammar *wk_gcache_get(wk_gcache *c, const proto_submit *sub, int *status, char *msg, size_t msglen,
                          char *param, size_t paramlen) {
    *status = 500;
    snprintf(msg, msglen, "out of memory while compiling the output grammar");
    snprintf(param, paramlen, "%s", "");
    cm_buf k = CM_BUF_INIT;
    if (make_key(sub, &k)) {
        cm_buf_free(&k);
        return NULL;
    }
    uint64_t h = key_hash(k.data, k.len);
    c->clock++;
    for (int i = 0; i < c->n; i++) {
        entry *e = &c->e[i];
        if (e->hash == h && e->len == k.len && !memcmp(e->key, k.data, k.len)) {
            e->refs++;
            e->used = c->clock;
            c->hits++;
            cm_buf_free(&k);
            return e->g;
        }
    }
    wk_grammar *g = NULL;
    int rc = -ENOMEM;
    if (!c->v && wk_gvocab_build(c->t, &c->v))
        goto fail;
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 8;
        entry *p = realloc(c->e, (size_t)cap * sizeof *p);
        if (!p)
            goto fail;
        c->e = p;
        c->cap = cap;
    }
    char err[600];
    if (sub->n_tools) {
        rc = wk_tools_grammar(c->family, sub, &g, err, sizeof err, param, paramlen);
        if (rc == -EINVAL)
            snprintf(msg, msglen, "%s", err);
    } else {
        int js = sub->format == PROTO_FORMAT_JSON_SCHEMA;
        rc = wk_jsonschema_grammar(js ? sub->schema.p : NULL, js ? sub->schema.len : 0, js && sub->strict, &g, err,
                                   sizeof err);
        if (rc == -EINVAL) {
            snprintf(param, paramlen, "response_format");
            snprintf(msg, msglen, "Invalid schema for response_format '%.*s': %s", (int)sub->schema_name.len,
                     sub->schema_name.p ? sub->schema_name.p : "", err);
        }
    }
    if (rc == -EINVAL)
        *status = 400;
    if (rc)
        goto fail;
    c->compiles++;
    c->e[c->n++] = (entry){h, (char *)k.data, k.len, g, 1, c->clock};
    evict(c);
    return g;
fail:
    cm_buf_free(&k);
    return NULL;
}

void wk_gcache_put(wk_gcache *c, wk_grammar *g) {
    if (!g)
        return;
    for (int i = 0; i < c->n; i++)
        if (c->e[i].g == g) {
            c->e[i].refs--;
            break;
        }
    evict(c);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Set bits in m[0..words), with the popcnt instruction where the CPU has it (the
 * x86-64 baseline does not, and libgcc's fallback costs ~10 us per mask). */
static int bits_plain(const uint64_t *m, int words) {
    int n = 0;
    for (int w = 0; w < words; w++)
        n += __builtin_popcountll(m[w]);
    return n;
}

#if defined(__x86_64__)
__attribute__((target("popcnt"))) static int bits_popcnt(const uint64_t *m, int words) {
    return bits_plain(m, words);
}
#endif

static int bits_count(const uint64_t *m, int words) {
#if defined(__x86_64__)
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("popcnt");
    if (has)
        return bits_popcnt(m, words);
#endif
    return bits_plain(m, words);
}

/* Records token id (allowed in state) with its distance after it; end-of-
 * generation tokens (no bytes) are left to the caller. 0 or a negative errno. */
static int cand_add(wk_gcache *c, wk_grammar *g, int32_t state, int32_t id, int *k, uint32_t *best) {
    int len;
    const uint8_t *b = wk_gvocab_bytes(c->v, id, &len);
    if (!len)
        return 0;
    int32_t t = wk_grammar_step(g, state, b, (size_t)len);
    if (t < 0)
        return t;
    c->cand[*k] = (cand){id, wk_grammar_distance(g, t)};
    if (c->cand[*k].dist < *best)
        *best = c->cand[*k].dist;
    (*k)++;
    return 0;
}

/* Clears token id's bit in bits; 1 if it was set. */
static int drop_bit(uint32_t *bits, int32_t id) {
    const uint32_t m = 1u << (id & 31);
    const int was = (bits[id >> 5] & m) != 0;
    bits[id >> 5] &= ~m;
    return was;
}

int wk_gcache_mask(wk_gcache *c, wk_grammar *g, int32_t state, int budget, uint32_t *bits, int n_logits,
                   int *restricted) {
    *restricted = 0;
    uint64_t t0 = now_ns();
    int computed, err;
    const wk_grise *rises;
    int n_rises;
    const uint64_t *m = wk_grammar_mask(g, c->v, state, &rises, &n_rises, &computed, &err);
    if (!m)
        return err;
    const int n = wk_gvocab_n_vocab(c->v) < n_logits ? wk_gvocab_n_vocab(c->v) : n_logits, words = (n + 63) / 64;
    int allowed = bits_count(m, words);
    // The grammar's words, split in halves (bit i % 32 of word i / 32); none past
    // the tokenizer's vocabulary.
    const int out_words = (n_logits + 31) / 32;
    for (int w = 0; w < out_words; w++) {
        const int base = w * 32;
        uint32_t x = base < n ? (uint32_t)(m[w >> 1] >> (32 * (w & 1))) : 0;
        if (base < n && n - base < 32)
            x &= (1u << (n - base)) - 1;
        bits[w] = x;
    }
    // The budget: drop the tokens after which the tokens left cannot finish the
    // document (when none can, keep the ones that come nearest). While the
    // budget covers the distance in bytes, only rising tokens can go, and they
    // are listed farthest first; nearer the end every allowed token is checked.
    uint32_t d = wk_grammar_distance(g, state), cap, min_chars;
    if (budget >= 1 && (uint32_t)budget - 1 >= d) {
        for (int i = 0; i < n_rises && rises[i].dist > (uint32_t)budget - 1; i++) {
            allowed -= drop_bit(bits, rises[i].token);
            *restricted = 1;
        }
    } else if (budget >= 1) {
        // Nearer the end: step every allowed token, keep those that leave at most
        // budget - 1 bytes (or, when none does, the nearest). Inside a free string
        // a plain token of k characters leaves d - min(k, min_chars), so only the
        // other tokens need a step there.
        if (!c->cand && !(c->cand = malloc((size_t)n * sizeof *c->cand)))
            return -ENOMEM;
        size_t words = ((size_t)c->v->n_vocab + 63) / 64;
        int plain = wk_grammar_plain_state(g, state, &cap, &min_chars), k = 0, rc;
        uint32_t best = wk_grammar_accepting(g, state) && c->v->n_eog ? 0 : UINT32_MAX; // end of generation
        if (plain) {
            const trie *o = &c->v->other;
            // The longest plain token allowed (plain_le grows at every length a token has).
            int r = cap < (uint32_t)c->v->max_chars ? (int)cap : c->v->max_chars;
            while (r > 0 && !memcmp(c->v->plain + (size_t)r * words, c->v->plain + (size_t)(r - 1) * words,
                                    words * sizeof *c->v->plain))
                r--;
            if (r > 0 && d - ((uint32_t)r < min_chars ? (uint32_t)r : min_chars) < best)
                best = d - ((uint32_t)r < min_chars ? (uint32_t)r : min_chars);
            for (int32_t i = 0; i < o->ntok_off[o->n_nodes]; i++) {
                int32_t id = o->ntok[i];
                if (id < n && (m[id >> 6] >> (id & 63) & 1) && (rc = cand_add(c, g, state, id, &k, &best)))
                    return rc;
            }
        } else {
            for (int w = 0; w * 64 < n; w++)
                for (uint64_t x = m[w]; x; x &= x - 1)
                    if ((rc = cand_add(c, g, state, w * 64 + __builtin_ctzll(x), &k, &best)))
                        return rc;
        }
        uint32_t limit = (uint32_t)budget - 1 > best ? (uint32_t)budget - 1 : best;
        for (int i = 0; i < k; i++)
            if (c->cand[i].dist > limit) {
                allowed -= drop_bit(bits, c->cand[i].id);
                *restricted = 1;
            }
        if (plain && limit < d) { // plain tokens need min(chars, min_chars) >= d - limit
            uint32_t need = d - limit;
            int below = min_chars < need ? c->v->max_chars : (int)need - 1 < c->v->max_chars ? (int)need - 1
                                                                                               : c->v->max_chars;
            const uint64_t *drop = c->v->plain + (size_t)below * words;
            for (size_t w = 0; w < words; w++)
                for (uint64_t x = m[w] & drop[w]; x; x &= x - 1) {
                    int32_t id = (int32_t)(w * 64) + __builtin_ctzll(x);
                    if (id < n && drop_bit(bits, id)) {
                        allowed--;
                        *restricted = 1;
                    }
                }
        }
    }
    c->masks++;
    c->mask_ns += now_ns() - t0;
    return allowed;
}

int32_t wk_gcache_advance(wk_gcache *c, wk_grammar *g, int32_t state, int32_t id) {
    int len;
    const uint8_t *b = wk_gvocab_bytes(c->v, id, &len);
    if (!len)
        return WK_GRAMMAR_DEAD;
    return wk_grammar_step(g, state, b, (size_t)len);
}

void wk_gcache_stats(const wk_gcache *c, proto_stats *out) {
    out->grammar_masks = c->masks;
    out->grammar_mask_ns = c->mask_ns;
    out->grammar_compiles = c->compiles;
    out->grammar_cache_hits = c->hits;
}
