/* wk_gcache: see wk_gcache.h. */
#include "worker/wk_gcache.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/wk_jsonschema.h"

typedef struct entry {
    uint64_t hash;
    uint8_t format, strict;
    char *schema; // owned copy of the schema text
    uint32_t len;
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
    cand *cand; // [n_vocab] scratch of the budget check
    wk_gvocab *v; // built on first use
    entry *e;
    int n, cap;
    uint64_t clock;
    uint64_t masks, mask_ns, compiles, hits;
};

wk_gcache *wk_gcache_new(const wk_tok *t) {
    wk_gcache *c = calloc(1, sizeof *c);
    if (c)
        c->t = t;
    return c;
}

static void entry_free(entry *e) {
    free(e->schema);
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

static uint64_t key_hash(uint8_t format, uint8_t strict, const char *p, uint32_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    h = (h ^ format) * 0x100000001b3ull;
    h = (h ^ strict) * 0x100000001b3ull;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
    return h;
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

wk_grammar *wk_gcache_get(wk_gcache *c, const proto_submit *sub, int *status, char *msg, size_t msglen) {
    *status = 500;
    snprintf(msg, msglen, "out of memory while compiling the response format");
    uint8_t strict = sub->format == PROTO_FORMAT_JSON_SCHEMA ? sub->strict : 0;
    const char *text = sub->format == PROTO_FORMAT_JSON_SCHEMA ? sub->schema.p : "";
    uint32_t len = sub->format == PROTO_FORMAT_JSON_SCHEMA ? sub->schema.len : 0;
    uint64_t h = key_hash(sub->format, strict, text, len);
    c->clock++;
    for (int i = 0; i < c->n; i++) {
        entry *e = &c->e[i];
        if (e->hash == h && e->format == sub->format && e->strict == strict && e->len == len &&
            !memcmp(e->schema, text, len)) {
            e->refs++;
            e->used = c->clock;
            c->hits++;
            return e->g;
        }
    }
    if (!c->v && wk_gvocab_build(c->t, &c->v))
        return NULL;
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 8;
        entry *p = realloc(c->e, (size_t)cap * sizeof *p);
        if (!p)
            return NULL;
        c->e = p;
        c->cap = cap;
    }
    char err[512];
    wk_grammar *g = NULL;
    int rc = wk_jsonschema_grammar(sub->format == PROTO_FORMAT_JSON_SCHEMA ? text : NULL, len, strict, &g, err,
                                   sizeof err);
    if (rc == -EINVAL) {
        *status = 400;
        snprintf(msg, msglen, "Invalid schema for response_format '%.*s': %s", (int)sub->schema_name.len,
                 sub->schema_name.p ? sub->schema_name.p : "", err);
        return NULL;
    }
    char *copy = malloc((size_t)len + 1);
    if (rc || !copy) {
        free(copy);
        wk_grammar_free(g);
        return NULL;
    }
    memcpy(copy, text, len);
    copy[len] = 0;
    c->compiles++;
    c->e[c->n++] = (entry){h, sub->format, strict, copy, len, g, 1, c->clock};
    evict(c);
    return g;
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

int wk_gcache_mask(wk_gcache *c, wk_grammar *g, int32_t state, int budget, float *logits, int *restricted) {
    *restricted = 0;
    uint64_t t0 = now_ns();
    int computed, err;
    const uint64_t *m = wk_grammar_mask(g, c->v, state, &computed, &err);
    if (!m)
        return err;
    const int n = wk_gvocab_n_vocab(c->v);
    int allowed = 0;
    for (int w = 0; w * 64 < n; w++) {
        uint64_t x = m[w];
        int base = w * 64, top = n - base < 64 ? n - base : 64;
        allowed += __builtin_popcountll(x);
        if (x == UINT64_MAX)
            continue;
        if (!x) {
            for (int i = 0; i < top; i++)
                logits[base + i] = -INFINITY;
            continue;
        }
        for (uint64_t off = ~x; off; off &= off - 1) {
            int i = base + __builtin_ctzll(off);
            if (i < n)
                logits[i] = -INFINITY;
        }
    }
    uint32_t d = wk_grammar_distance(g, state);
    if (budget >= 0 && (uint64_t)budget < (uint64_t)d + WK_GCACHE_BUDGET_SLACK) {
        // Keep the tokens that leave a finishable distance; when none does (the
        // budget is below even the shortest document), the ones closest to it.
        int k = 0;
        uint32_t best = UINT32_MAX;
        if (!c->cand && !(c->cand = malloc((size_t)n * sizeof *c->cand)))
            return -ENOMEM;
        for (int w = 0; w * 64 < n; w++)
            for (uint64_t x = m[w]; x; x &= x - 1) {
                int32_t id = w * 64 + __builtin_ctzll(x);
                int len;
                const uint8_t *b = wk_gvocab_bytes(c->v, id, &len);
                if (!len) { // end of generation: allowed only when accepting already
                    best = 0;
                    continue;
                }
                int32_t t = wk_grammar_step(g, state, b, (size_t)len);
                if (t < 0)
                    return t;
                uint32_t td = wk_grammar_distance(g, t);
                c->cand[k++] = (cand){id, td};
                best = td < best ? td : best;
            }
        uint32_t limit = (uint32_t)budget - 1 > best ? (uint32_t)budget - 1 : best;
        for (int i = 0; i < k; i++)
            if (c->cand[i].dist > limit) {
                logits[c->cand[i].id] = -INFINITY;
                allowed--;
                *restricted = 1;
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
