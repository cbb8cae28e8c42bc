/* wk_grammar: see wk_grammar.h.
 *
 * Design note. Three interned tables make the lazy DFA:
 *   - frames: a call stack is a linked list of (return node, parent frame), hash-
 *     consed so that equal stacks have equal ids (0 = the empty stack);
 *   - configurations: (node << 32 | frame), kept only for nodes with byte edges
 *     (the others are passed through by the closure);
 *   - states: a sorted set of configurations plus an accept flag, hash-consed, with
 *     256 memoized transitions each (-1 = not computed yet).
 * A transition takes every configuration's matching byte edges, then closes the
 * result under epsilon edges, calls (push a frame) and rule ends (pop one, or
 * accept on the empty stack). The mask walk visits the vocabulary trie in
 * preorder with one DFA state per depth, so a token costs one table lookup per
 * byte that is not shared with the previous token, and a dead prefix skips its
 * whole subtree. */
#include "worker/wk_grammar.h"
#include "worker/wk_gvocab.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------- grammar */

enum { E_BYTE, E_EPS, E_CALL };
enum { TAG_INERT = 1, TAG_PLAIN = 2 };

#define DIST_INF UINT32_MAX

typedef struct bedge {
    int32_t from, to, ret;
    uint8_t kind, lo, hi;
} bedge;

typedef struct byte_edge {
    uint8_t lo, hi;
    int32_t to;
} byte_edge;

/* A call-stack frame: where to return, the frame below, and the bytes the
 * callers need once the top rule ends. */
typedef struct frame {
    int32_t ret, parent;
    uint32_t dist;
    uint8_t depth;
} frame;

/* A DFA state: its configurations cfg[off .. off + n), and its cached mask. */
typedef struct state {
    size_t off;
    int32_t n;
    uint8_t acc;
    uint32_t dist;   // bytes to the nearest accepting state
    uint64_t *mask;  // NULL until computed
    wk_grise *rise;  // with mask: its rising tokens, farthest first
    int32_t n_rise;
} state;

typedef struct move_edge {
    int32_t to, ret; // ret < 0: epsilon; else a call returning to ret
} move_edge;

struct wk_grammar {
    // building
    bedge *be;
    size_t n_be, cap_be;
    uint8_t *end; // [n_nodes] 1 = a rule's end
    uint32_t *tag; // [n_nodes] 0, TAG_INERT, or TAG_PLAIN + chars (UINT32_MAX: unbounded)
    uint32_t *tag_min; // [n_nodes] plain nodes: characters still needed to reach the minimum
    int32_t n_nodes, cap_nodes;
    int err, sealed;
    int32_t root;
    // sealed edges (CSR)
    int32_t *b_off; // [n_nodes + 1]
    byte_edge *b;
    int32_t *m_off; // [n_nodes + 1]
    move_edge *m;
    uint32_t *dist; // [n_nodes] bytes to the end of the node's rule
    // frames
    frame *fr;
    int32_t n_fr, cap_fr;
    int32_t *fr_ht; // open addressing, -1 = empty
    uint32_t fr_ht_cap;
    // states
    uint64_t *cfg;
    size_t n_cfg, cap_cfg;
    state *st;
    int32_t *trans; // [n_st * 256]
    int32_t n_st, cap_st;
    int32_t *st_ht;
    uint32_t st_ht_cap;
    int32_t start;
    size_t mask_bytes;
    // closure scratch
    uint64_t *work, *out, *seen;
    size_t cap_work, n_out, cap_out;
    uint32_t seen_cap, n_seen;
    int32_t *walk;     // [max token length + 1] trie walk states
    uint8_t *walk_run; // [max token length + 1] the walk's path so far is a run (run_chain)
    uint32_t *chain_dist; // [max token length + 1] run_chain's distance after a run token of r bytes
    int cap_walk;
};

static void *grow(void *p, size_t elem, size_t *cap, size_t need) {
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(p, c * elem);
    if (q)
        *cap = c;
    return q;
}

wk_grammar *wk_grammar_new(void) {
    return calloc(1, sizeof(wk_grammar));
}

void wk_grammar_free(wk_grammar *g) {
    if (!g)
        return;
    free(g->be);
    free(g->end);
    free(g->tag);
    free(g->tag_min);
    free(g->b_off);
    free(g->b);
    free(g->m_off);
    free(g->m);
    free(g->fr);
    free(g->fr_ht);
    free(g->dist);
    free(g->cfg);
    for (int32_t i = 0; i < g->n_st; i++) {
        free(g->st[i].mask);
        free(g->st[i].rise);
    }
    free(g->st);
    free(g->trans);
    free(g->st_ht);
    free(g->work);
    free(g->out);
    free(g->seen);
    free(g->walk);
    free(g->walk_run);
    free(g->chain_dist);
    free(g);
}

int32_t wk_grammar_node(wk_grammar *g) {
    if (g->err)
        return 0;
    if (g->n_nodes >= WK_GRAMMAR_MAX_NODES) {
        g->err = -E2BIG;
        return 0;
    }
    if (g->n_nodes == g->cap_nodes) {
        int32_t c = g->cap_nodes ? g->cap_nodes * 2 : 256;
        uint8_t *e = realloc(g->end, (size_t)c);
        if (e)
            g->end = e;
        uint32_t *t = realloc(g->tag, (size_t)c * sizeof *t);
        if (t)
            g->tag = t;
        uint32_t *tm = realloc(g->tag_min, (size_t)c * sizeof *tm);
        if (tm)
            g->tag_min = tm;
        if (!e || !t || !tm) {
            g->err = -ENOMEM;
            return 0;
        }
        g->cap_nodes = c;
    }
    g->end[g->n_nodes] = 0;
    g->tag[g->n_nodes] = 0;
    g->tag_min[g->n_nodes] = 0;
    return g->n_nodes++;
}

int32_t wk_grammar_n_nodes(const wk_grammar *g) {
    return g->n_nodes;
}

static void add_edge(wk_grammar *g, bedge e) {
    if (g->err)
        return;
    bedge *p = grow(g->be, sizeof *p, &g->cap_be, g->n_be + 1);
    if (!p) {
        g->err = -ENOMEM;
        return;
    }
    g->be = p;
    g->be[g->n_be++] = e;
}

void wk_grammar_bytes(wk_grammar *g, int32_t from, uint8_t lo, uint8_t hi, int32_t to) {
    add_edge(g, (bedge){.from = from, .to = to, .ret = -1, .kind = E_BYTE, .lo = lo, .hi = hi});
}

void wk_grammar_eps(wk_grammar *g, int32_t from, int32_t to) {
    add_edge(g, (bedge){.from = from, .to = to, .ret = -1, .kind = E_EPS});
}

void wk_grammar_call(wk_grammar *g, int32_t from, int32_t rule_start, int32_t ret) {
    add_edge(g, (bedge){.from = from, .to = rule_start, .ret = ret, .kind = E_CALL});
}

void wk_grammar_end(wk_grammar *g, int32_t node) {
    if (!g->err)
        g->end[node] = 1;
}

void wk_grammar_plain(wk_grammar *g, int32_t node, uint32_t chars, uint32_t min_chars) {
    if (g->err)
        return;
    g->tag[node] = chars >= UINT32_MAX - TAG_PLAIN ? UINT32_MAX : TAG_PLAIN + chars;
    g->tag_min[node] = min_chars;
}

void wk_grammar_inert(wk_grammar *g, int32_t node) {
    if (!g->err)
        g->tag[node] = TAG_INERT;
}

int32_t wk_grammar_lit(wk_grammar *g, int32_t from, const char *text, size_t len) {
    for (size_t i = 0; i < len; i++) {
        int32_t n = wk_grammar_node(g);
        wk_grammar_bytes(g, from, (uint8_t)text[i], (uint8_t)text[i], n);
        from = n;
    }
    return from;
}

static int utf8_len(uint32_t c) {
    return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

static void utf8_enc(uint32_t c, uint8_t *b) {
    switch (utf8_len(c)) {
    case 1:
        b[0] = (uint8_t)c;
        break;
    case 2:
        b[0] = (uint8_t)(0xC0 | c >> 6);
        b[1] = (uint8_t)(0x80 | (c & 0x3F));
        break;
    case 3:
        b[0] = (uint8_t)(0xE0 | c >> 12);
        b[1] = (uint8_t)(0x80 | (c >> 6 & 0x3F));
        b[2] = (uint8_t)(0x80 | (c & 0x3F));
        break;
    default:
        b[0] = (uint8_t)(0xF0 | c >> 18);
        b[1] = (uint8_t)(0x80 | (c >> 12 & 0x3F));
        b[2] = (uint8_t)(0x80 | (c >> 6 & 0x3F));
        b[3] = (uint8_t)(0x80 | (c & 0x3F));
    }
}

/* Splits [lo, hi] until every piece is a product of per-byte ranges (same
 * encoded length, and below each split point either the full continuation range
 * or one value), then emits each piece as a chain. */
void wk_grammar_utf8(wk_grammar *g, int32_t from, uint32_t lo, uint32_t hi, int32_t to) {
    if (hi > 0x10FFFF)
        hi = 0x10FFFF;
    if (lo > hi)
        return;
    if (lo <= 0xDFFF && hi >= 0xD800) {
        if (lo < 0xD800)
            wk_grammar_utf8(g, from, lo, 0xD7FF, to);
        if (hi > 0xDFFF)
            wk_grammar_utf8(g, from, 0xE000, hi, to);
        return;
    }
    static const uint32_t top[] = {0x7F, 0x7FF, 0xFFFF};
    for (int i = 0; i < 3; i++)
        if (lo <= top[i] && hi > top[i]) {
            wk_grammar_utf8(g, from, lo, top[i], to);
            wk_grammar_utf8(g, from, top[i] + 1, hi, to);
            return;
        }
    int n = utf8_len(lo);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if (lo & m) {
                wk_grammar_utf8(g, from, lo, lo | m, to);
                wk_grammar_utf8(g, from, (lo | m) + 1, hi, to);
                return;
            }
            if ((hi & m) != m) {
                wk_grammar_utf8(g, from, lo, (hi & ~m) - 1, to);
                wk_grammar_utf8(g, from, hi & ~m, hi, to);
                return;
            }
        }
    }
    uint8_t a[4], b[4];
    utf8_enc(lo, a);
    utf8_enc(hi, b);
    int32_t cur = from;
    for (int k = 0; k < n; k++) {
        int32_t nxt = k == n - 1 ? to : wk_grammar_node(g);
        wk_grammar_bytes(g, cur, a[k], b[k], nxt);
        cur = nxt;
    }
}

/* ----------------------------------------------------------- interned tables */

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* The frame (ret, parent), created if new; -ENOMEM. */
static int32_t frame_get(wk_grammar *g, int32_t ret, int32_t parent) {
    if ((uint32_t)g->n_fr * 2 >= g->fr_ht_cap) {
        uint32_t c = g->fr_ht_cap ? g->fr_ht_cap * 2 : 1024;
        int32_t *t = malloc(c * sizeof *t);
        if (!t)
            return -ENOMEM;
        memset(t, 0xff, c * sizeof *t);
        for (int32_t f = 1; f < g->n_fr; f++) {
            uint32_t h = (uint32_t)mix((uint64_t)g->fr[f].ret << 32 | (uint32_t)g->fr[f].parent) & (c - 1);
            while (t[h] >= 0)
                h = (h + 1) & (c - 1);
            t[h] = f;
        }
        free(g->fr_ht);
        g->fr_ht = t;
        g->fr_ht_cap = c;
    }
    uint32_t h = (uint32_t)mix((uint64_t)ret << 32 | (uint32_t)parent) & (g->fr_ht_cap - 1);
    for (; g->fr_ht[h] >= 0; h = (h + 1) & (g->fr_ht_cap - 1)) {
        int32_t f = g->fr_ht[h];
        if (g->fr[f].ret == ret && g->fr[f].parent == parent)
            return f;
    }
    if (g->n_fr == g->cap_fr) {
        frame *p = realloc(g->fr, (size_t)g->cap_fr * 2 * sizeof *p);
        if (!p)
            return -ENOMEM;
        g->fr = p;
        g->cap_fr *= 2;
    }
    int32_t f = g->n_fr++;
    uint64_t fd = (uint64_t)g->dist[ret] + g->fr[parent].dist;
    g->fr[f] = (frame){ret, parent, fd >= DIST_INF ? DIST_INF - 1 : (uint32_t)fd, (uint8_t)(g->fr[parent].depth + 1)};
    g->fr_ht[h] = f;
    return f;
}

static uint64_t state_hash(const uint64_t *c, int32_t n, int acc) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)acc;
    for (int32_t i = 0; i < n; i++)
        h = mix(h ^ c[i]);
    return h;
}

static int st_ht_rebuild(wk_grammar *g, uint32_t c) {
    int32_t *t = malloc(c * sizeof *t);
    if (!t)
        return -ENOMEM;
    memset(t, 0xff, c * sizeof *t);
    for (int32_t s = 0; s < g->n_st; s++) {
        uint32_t h = (uint32_t)state_hash(g->cfg + g->st[s].off, g->st[s].n, g->st[s].acc) & (c - 1);
        while (t[h] >= 0)
            h = (h + 1) & (c - 1);
        t[h] = s;
    }
    free(g->st_ht);
    g->st_ht = t;
    g->st_ht_cap = c;
    return 0;
}

/* The state of configurations c[0..n) (sorted, unique) and acc; created if new. */
static int32_t state_get(wk_grammar *g, const uint64_t *c, int32_t n, int acc) {
    if ((uint32_t)g->n_st * 2 >= g->st_ht_cap && st_ht_rebuild(g, g->st_ht_cap ? g->st_ht_cap * 2 : 256))
        return -ENOMEM;
    uint32_t h = (uint32_t)state_hash(c, n, acc) & (g->st_ht_cap - 1);
    for (; g->st_ht[h] >= 0; h = (h + 1) & (g->st_ht_cap - 1)) {
        int32_t s = g->st_ht[h];
        if (g->st[s].n == n && g->st[s].acc == acc && (!n || !memcmp(g->cfg + g->st[s].off, c, (size_t)n * sizeof *c)))
            return s;
    }
    if (g->n_st >= WK_GRAMMAR_MAX_STATES)
        return -E2BIG;
    if (g->n_st == g->cap_st) {
        int32_t cs = g->cap_st ? g->cap_st * 2 : 64;
        state *st = realloc(g->st, (size_t)cs * sizeof *st);
        if (st)
            g->st = st;
        int32_t *tr = realloc(g->trans, (size_t)cs * 256 * sizeof *tr);
        if (tr)
            g->trans = tr;
        if (!st || !tr)
            return -ENOMEM;
        g->cap_st = cs;
    }
    uint64_t *cf = grow(g->cfg, sizeof *cf, &g->cap_cfg, g->n_cfg + (size_t)n + 1);
    if (!cf)
        return -ENOMEM;
    g->cfg = cf;
    if (n)
        memcpy(g->cfg + g->n_cfg, c, (size_t)n * sizeof *c);
    int32_t s = g->n_st++;
    uint64_t best = acc ? 0 : DIST_INF;
    for (int32_t i = 0; i < n; i++) {
        uint64_t d = (uint64_t)g->dist[c[i] >> 32] + g->fr[(uint32_t)c[i]].dist;
        best = d < best ? d : best;
    }
    g->st[s] = (state){.off = g->n_cfg, .n = n, .acc = (uint8_t)acc,
                       .dist = best >= DIST_INF ? DIST_INF : (uint32_t)best};
    g->n_cfg += (size_t)n;
    memset(g->trans + (size_t)s * 256, 0xff, 256 * sizeof *g->trans);
    g->st_ht[h] = s;
    return s;
}

/* ------------------------------------------------------------------ closure */

/* Adds configuration k to the visited set; 1 if it was new, 0 if seen, -ENOMEM. */
static int seen_add(wk_grammar *g, uint64_t k) {
    if (g->n_seen * 2 >= g->seen_cap) {
        uint32_t c = g->seen_cap ? g->seen_cap * 2 : 1024;
        uint64_t *t = malloc(c * sizeof *t);
        if (!t)
            return -ENOMEM;
        memset(t, 0xff, c * sizeof *t);
        for (uint32_t i = 0; i < g->seen_cap; i++)
            if (g->seen[i] != UINT64_MAX) {
                uint32_t h = (uint32_t)mix(g->seen[i]) & (c - 1);
                while (t[h] != UINT64_MAX)
                    h = (h + 1) & (c - 1);
                t[h] = g->seen[i];
            }
        free(g->seen);
        g->seen = t;
        g->seen_cap = c;
    }
    uint32_t h = (uint32_t)mix(k) & (g->seen_cap - 1);
    for (; g->seen[h] != UINT64_MAX; h = (h + 1) & (g->seen_cap - 1))
        if (g->seen[h] == k)
            return 0;
    g->seen[h] = k;
    g->n_seen++;
    return 1;
}

static int cfg_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#define CFG(node, fr) ((uint64_t)(uint32_t)(node) << 32 | (uint32_t)(fr))

/* Closes work[0..n) into the state it denotes: a state id or a negative errno. */
static int32_t close_state(wk_grammar *g, size_t n) {
    if (g->seen)
        memset(g->seen, 0xff, g->seen_cap * sizeof *g->seen);
    g->n_seen = 0;
    g->n_out = 0;
    int acc = 0;
    size_t top = 0;
    for (size_t i = 0; i < n; i++) { // dedup the seeds
        int r = seen_add(g, g->work[i]);
        if (r < 0)
            return r;
        if (r)
            g->work[top++] = g->work[i];
    }
    while (top) {
        uint64_t c = g->work[--top];
        int32_t node = (int32_t)(c >> 32), fr = (int32_t)(uint32_t)c;
        if (g->b_off[node + 1] > g->b_off[node]) {
            uint64_t *o = grow(g->out, sizeof *o, &g->cap_out, g->n_out + 1);
            if (!o)
                return -ENOMEM;
            g->out = o;
            g->out[g->n_out++] = c;
        }
        // successors: at most one return plus the moves
        size_t need = top + 1 + (size_t)(g->m_off[node + 1] - g->m_off[node]);
        uint64_t *w = grow(g->work, sizeof *w, &g->cap_work, need);
        if (!w)
            return -ENOMEM;
        g->work = w;
        if (g->end[node]) {
            if (fr == 0)
                acc = 1;
            else {
                uint64_t k = CFG(g->fr[fr].ret, g->fr[fr].parent);
                int r = seen_add(g, k);
                if (r < 0)
                    return r;
                if (r)
                    g->work[top++] = k;
            }
        }
        for (int32_t e = g->m_off[node]; e < g->m_off[node + 1]; e++) {
            const move_edge *me = &g->m[e];
            int32_t nf = fr;
            if (me->ret >= 0) {
                if (g->fr[fr].depth >= WK_GRAMMAR_MAX_DEPTH)
                    continue;
                nf = frame_get(g, me->ret, fr);
                if (nf < 0)
                    return nf;
            }
            uint64_t k = CFG(me->to, nf);
            int r = seen_add(g, k);
            if (r < 0)
                return r;
            if (r)
                g->work[top++] = k;
        }
    }
    qsort(g->out, g->n_out, sizeof *g->out, cfg_cmp);
    if (!g->n_out && !acc)
        return WK_GRAMMAR_DEAD;
    return state_get(g, g->out, (int32_t)g->n_out, acc);
}

static int32_t compute_trans(wk_grammar *g, int32_t s, uint8_t byte) {
    size_t n = 0;
    for (int32_t i = 0; i < g->st[s].n; i++) {
        uint64_t c = g->cfg[g->st[s].off + (size_t)i];
        int32_t node = (int32_t)(c >> 32), fr = (int32_t)(uint32_t)c;
        for (int32_t e = g->b_off[node]; e < g->b_off[node + 1]; e++)
            if (g->b[e].lo <= byte && byte <= g->b[e].hi) {
                uint64_t *w = grow(g->work, sizeof *w, &g->cap_work, n + 1);
                if (!w)
                    return -ENOMEM;
                g->work = w;
                g->work[n++] = CFG(g->b[e].to, fr);
            }
    }
    int32_t t = n ? close_state(g, n) : WK_GRAMMAR_DEAD;
    if (t >= 0)
        g->trans[(size_t)s * 256 + byte] = t;
    return t;
}

static inline int32_t next(wk_grammar *g, int32_t s, uint8_t byte) {
    int32_t t = g->trans[(size_t)s * 256 + byte];
    return t >= 0 ? t : compute_trans(g, s, byte);
}

/* -------------------------------------------------------------------- seal */

/* dist[v] = the fewest bytes from node v to the end of its rule (a call costs
 * its rule's distance plus the return node's), DIST_INF when no end can be
 * reached. Knuth's generalization of Dijkstra's algorithm: nodes are settled in
 * increasing distance, and a call edge is relaxed once both its rule and its
 * return node are settled. Edges into unreachable-end nodes are dropped by seal,
 * so every configuration the DFA holds can still be completed. */
typedef struct hitem {
    uint32_t d;
    int32_t v;
} hitem;

static void heap_push(hitem *h, size_t *n, hitem x) {
    size_t i = (*n)++;
    for (; i && h[(i - 1) / 2].d > x.d; i = (i - 1) / 2)
        h[i] = h[(i - 1) / 2];
    h[i] = x;
}

static hitem heap_pop(hitem *h, size_t *n) {
    hitem top = h[0], x = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && h[c + 1].d < h[c].d)
            c++;
        if (h[c].d >= x.d)
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = x;
    return top;
}

static int distances(wk_grammar *g, uint32_t *dist) {
    int32_t n = g->n_nodes;
    int32_t *off = calloc((size_t)n + 1, sizeof *off);
    uint8_t *done = calloc((size_t)n + 1, 1);
    size_t *rev = NULL, nh = 0;
    hitem *heap = NULL;
    int rc = -ENOMEM;
    if (!off || !done)
        goto out;
    size_t n_rev = 0;
    for (size_t i = 0; i < g->n_be; i++) {
        off[g->be[i].to + 1]++;
        n_rev++;
        if (g->be[i].kind == E_CALL) {
            off[g->be[i].ret + 1]++;
            n_rev++;
        }
    }
    for (int32_t i = 0; i < n; i++)
        off[i + 1] += off[i];
    rev = malloc((n_rev + 1) * sizeof *rev);
    heap = malloc((n_rev + (size_t)n + 1) * sizeof *heap); // one push per node and per relaxation at most
    if (!rev || !heap)
        goto out;
    for (size_t i = 0; i < g->n_be; i++) {
        rev[off[g->be[i].to]++] = i;
        if (g->be[i].kind == E_CALL)
            rev[off[g->be[i].ret]++] = i;
    }
    for (int32_t i = n; i > 0; i--)
        off[i] = off[i - 1];
    off[0] = 0;
    for (int32_t i = 0; i < n; i++) {
        dist[i] = g->end[i] ? 0 : DIST_INF;
        if (g->end[i])
            heap_push(heap, &nh, (hitem){0, i});
    }
    while (nh) {
        hitem it = heap_pop(heap, &nh);
        if (done[it.v] || it.d != dist[it.v])
            continue;
        done[it.v] = 1;
        for (int32_t k = off[it.v]; k < off[it.v + 1]; k++) {
            const bedge *e = &g->be[rev[k]];
            uint64_t cand;
            if (e->kind == E_BYTE)
                cand = 1 + (uint64_t)dist[e->to];
            else if (e->kind == E_EPS)
                cand = dist[e->to];
            else if (done[e->to] && done[e->ret])
                cand = (uint64_t)dist[e->to] + dist[e->ret];
            else
                continue;
            if (cand < dist[e->from] && !done[e->from]) {
                dist[e->from] = cand >= DIST_INF ? DIST_INF - 1 : (uint32_t)cand;
                heap_push(heap, &nh, (hitem){dist[e->from], e->from});
            }
        }
    }
    rc = 0;
out:
    free(off);
    free(done);
    free(rev);
    free(heap);
    return rc;
}

int wk_grammar_seal(wk_grammar *g, int32_t start) {
    if (g->err)
        return g->err;
    int32_t n = g->n_nodes;
    g->dist = malloc(((size_t)n + 1) * sizeof *g->dist);
    if (!g->dist || distances(g, g->dist))
        return -ENOMEM;
    if (g->dist[start] == DIST_INF)
        return -ENOENT;
    size_t kept = 0;
    for (size_t i = 0; i < g->n_be; i++) {
        const bedge *e = &g->be[i];
        if (g->dist[e->from] != DIST_INF && g->dist[e->to] != DIST_INF &&
            (e->kind != E_CALL || g->dist[e->ret] != DIST_INF))
            g->be[kept++] = *e;
    }
    g->n_be = kept;
    g->b_off = calloc((size_t)n + 1, sizeof *g->b_off);
    g->m_off = calloc((size_t)n + 1, sizeof *g->m_off);
    if (!g->b_off || !g->m_off)
        return -ENOMEM;
    size_t nb = 0, nm = 0;
    for (size_t i = 0; i < g->n_be; i++) {
        if (g->be[i].kind == E_BYTE) {
            g->b_off[g->be[i].from + 1]++;
            nb++;
        } else {
            g->m_off[g->be[i].from + 1]++;
            nm++;
        }
    }
    for (int32_t i = 0; i < n; i++) {
        g->b_off[i + 1] += g->b_off[i];
        g->m_off[i + 1] += g->m_off[i];
    }
    g->b = malloc((nb ? nb : 1) * sizeof *g->b);
    g->m = malloc((nm ? nm : 1) * sizeof *g->m);
    int32_t *fb = malloc(((size_t)n + 1) * sizeof *fb), *fm = malloc(((size_t)n + 1) * sizeof *fm);
    if (!g->b || !g->m || !fb || !fm) {
        free(fb);
        free(fm);
        return -ENOMEM;
    }
    memcpy(fb, g->b_off, ((size_t)n + 1) * sizeof *fb);
    memcpy(fm, g->m_off, ((size_t)n + 1) * sizeof *fm);
    for (size_t i = 0; i < g->n_be; i++) {
        const bedge *e = &g->be[i];
        if (e->kind == E_BYTE)
            g->b[fb[e->from]++] = (byte_edge){e->lo, e->hi, e->to};
        else
            g->m[fm[e->from]++] = (move_edge){e->to, e->kind == E_CALL ? e->ret : -1};
    }
    free(fb);
    free(fm);
    free(g->be);
    g->be = NULL;
    g->n_be = g->cap_be = 0;
    // frame 0: the empty stack
    g->cap_fr = 64;
    if (!(g->fr = malloc((size_t)g->cap_fr * sizeof *g->fr)))
        return -ENOMEM;
    g->fr[0] = (frame){.ret = -1};
    g->n_fr = 1;
    g->sealed = 1;
    g->root = start;
    // state 0: dead
    int32_t d = state_get(g, NULL, 0, 0);
    if (d < 0)
        return d;
    for (int b = 0; b < 256; b++)
        g->trans[b] = WK_GRAMMAR_DEAD;
    g->work = grow(g->work, sizeof *g->work, &g->cap_work, 1);
    if (!g->work)
        return -ENOMEM;
    g->work[0] = CFG(start, 0);
    g->start = close_state(g, 1);
    return g->start < 0 ? g->start : 0;
}

/* ----------------------------------------------------------------- matching */

int32_t wk_grammar_start(wk_grammar *g) {
    return g->start;
}

int32_t wk_grammar_step(wk_grammar *g, int32_t s, const uint8_t *bytes, size_t n) {
    for (size_t i = 0; i < n && s > WK_GRAMMAR_DEAD; i++)
        s = next(g, s, bytes[i]);
    return s;
}

int wk_grammar_accepting(const wk_grammar *g, int32_t s) {
    return s > 0 && g->st[s].acc;
}

int wk_grammar_complete(const wk_grammar *g, int32_t s) {
    return s > 0 && g->st[s].acc && g->st[s].n == 0;
}

int wk_grammar_plain_state(const wk_grammar *g, int32_t s, uint32_t *chars, uint32_t *min_chars) {
    int plain = 0;
    for (int32_t i = 0; s > 0 && i < g->st[s].n; i++) {
        int32_t node = (int32_t)(g->cfg[g->st[s].off + (size_t)i] >> 32);
        uint32_t tg = g->tag[node];
        if (tg >= TAG_PLAIN) {
            plain++;
            *chars = tg == UINT32_MAX ? UINT32_MAX : tg - TAG_PLAIN;
            *min_chars = g->tag_min[node];
        } else if (tg != TAG_INERT) {
            return 0;
        }
    }
    return plain == 1;
}

uint32_t wk_grammar_distance(const wk_grammar *g, int32_t s) {
    return s > 0 ? g->st[s].dist : UINT32_MAX;
}

int32_t wk_grammar_n_states(const wk_grammar *g) {
    return g->n_st;
}

static void masks_flush(wk_grammar *g) {
    for (int32_t i = 0; i < g->n_st; i++) {
        free(g->st[i].mask);
        free(g->st[i].rise);
        g->st[i].mask = NULL;
        g->st[i].rise = NULL;
        g->st[i].n_rise = 0;
    }
    g->mask_bytes = 0;
}

static int rise_cmp(const void *a, const void *b) {
    const wk_grise *x = a, *y = b;
    return x->dist != y->dist ? (x->dist < y->dist ? 1 : -1) : (x->token > y->token) - (x->token < y->token);
}

static int i32_cmp(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The state every byte of bytes[0..n) takes s to; -EAGAIN when they part. */
static int32_t next_all(wk_grammar *g, int32_t s, const uint8_t *bytes, int n) {
    int32_t u = next(g, s, bytes[0]);
    for (int k = 1; k < n && u >= 0; k++) {
        int32_t w = next(g, s, bytes[k]);
        u = w < 0 ? w : w == u ? u : -EAGAIN;
    }
    return u;
}

/* The run shortcut. When every byte of a class takes state s to one state s1,
 * every byte of it takes s1 to one state s2, and so on (s is inside a run of the
 * class, as in [a-z0-9]{1,64}), a token made only of the class's bytes (a run
 * token) is settled by its length r: allowed exactly when s_r is live. *run gets
 * the class's table; run tokens of at most *alive bytes are allowed, and those of
 * at most *settled bytes need no walk (INT32_MAX: all of them); g->chain_dist[r]
 * is the distance after a run token of r <= *alive bytes. 1 when the shortcut
 * applies, 0 when not, or a negative errno. */
static int run_chain(wk_grammar *g, wk_gvocab *v, int32_t s, const wk_gclass **run, int *alive, int *settled) {
    int32_t to[256], sorted[256], s1 = WK_GRAMMAR_DEAD;
    for (int b = 0; b < 256; b++)
        if ((to[b] = sorted[b] = next(g, s, (uint8_t)b)) < 0)
            return to[b];
    qsort(sorted, 256, sizeof *sorted, i32_cmp); // the live successor most bytes lead to
    int best = 0;
    for (int i = 0, j; i < 256; i = j) {
        for (j = i; j < 256 && sorted[j] == sorted[i]; j++)
            ;
        if (sorted[i] != WK_GRAMMAR_DEAD && j - i > best) {
            best = j - i;
            s1 = sorted[i];
        }
    }
    if (best < 2)
        return 0;
    uint64_t set[4] = {0};
    uint8_t bytes[256];
    int nb = 0, err;
    for (int b = 0; b < 256; b++)
        if (to[b] == s1) {
            set[b >> 6] |= 1ull << (b & 63);
            bytes[nb++] = (uint8_t)b;
        }
    if (!(*run = wk_gvocab_class(v, set, &err)))
        return err;
    *settled = INT32_MAX;
    int r = 1;
    g->chain_dist[1] = g->st[s1].dist;
    for (int32_t cur = s1; r < (*run)->max_len; r++) {
        int32_t u = next_all(g, cur, bytes, nb);
        if (u == -EAGAIN) {
            *settled = r; // longer run tokens are walked
            break;
        }
        if (u < 0)
            return u;
        if (u == WK_GRAMMAR_DEAD)
            break; // longer run tokens are dead too
        g->chain_dist[r + 1] = g->st[u].dist;
        cur = u;
    }
    *alive = r < (*run)->max_len ? r : (*run)->max_len;
    return 1;
}

/* Adds to the rising tokens *rs[0..*nr) (sorted by rise_cmp, reallocated) the
 * run tokens of at most alive bytes that run_chain found rising: all of those of
 * r bytes rise to chain_dist[r]. The result is farthest first. */
static int chain_rises(wk_grammar *g, const wk_gclass *run, int alive, uint32_t here, wk_grise **rs, size_t *nr) {
    size_t add = 0;
    int32_t *order = g->walk, n = 0; // the walk is over: its stack is free
    for (int r = 1; r <= alive; r++)
        if (g->chain_dist[r] > here) {
            add += (size_t)(run->len_off[r + 1] - run->len_off[r]);
            order[n++] = r;
        }
    if (!add)
        return 0;
    for (int i = 1; i < n; i++) // lengths by distance, farthest first (insertion sort: few)
        for (int j = i; j > 0 && g->chain_dist[order[j]] > g->chain_dist[order[j - 1]]; j--) {
            int32_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    wk_grise *out = malloc((*nr + add) * sizeof *out);
    if (!out)
        return -ENOMEM;
    size_t k = 0, w = 0;
    for (int i = 0; i < n; i++) {
        uint32_t d = g->chain_dist[order[i]];
        for (; w < *nr && (*rs)[w].dist >= d; w++)
            out[k++] = (*rs)[w];
        for (int32_t j = run->len_off[order[i]]; j < run->len_off[order[i] + 1]; j++)
            out[k++] = (wk_grise){run->by_len[j], d};
    }
    for (; w < *nr; w++)
        out[k++] = (*rs)[w];
    free(*rs);
    *rs = out;
    *nr = k;
    return 0;
}

const uint64_t *wk_grammar_mask(wk_grammar *g, wk_gvocab *v, int32_t s, const wk_grise **rises,
                                int *n_rises, int *computed, int *err) {
    *computed = 0;
    *err = 0;
    *rises = NULL;
    *n_rises = 0;
    if (s <= 0) {
        *err = -EINVAL;
        return NULL;
    }
    if (g->st[s].mask) {
        *rises = g->st[s].rise;
        *n_rises = g->st[s].n_rise;
        return g->st[s].mask;
    }
    size_t words = ((size_t)v->n_vocab + 63) / 64;
    if (g->mask_bytes + words * 8 > WK_GRAMMAR_MASK_BUDGET)
        masks_flush(g);
    uint64_t *m = calloc(words ? words : 1, sizeof *m);
    if (m && g->cap_walk < v->max_len + 1) {
        size_t n = (size_t)v->max_len + 1;
        int32_t *w = realloc(g->walk, n * sizeof *w);
        g->walk = w ? w : g->walk;
        uint8_t *wr = w ? realloc(g->walk_run, n) : NULL;
        g->walk_run = wr ? wr : g->walk_run;
        uint32_t *cd = wr ? realloc(g->chain_dist, n * sizeof *cd) : NULL;
        g->chain_dist = cd ? cd : g->chain_dist;
        if (cd)
            g->cap_walk = v->max_len + 1;
    }
    if (!m || g->cap_walk < v->max_len + 1) {
        free(m);
        *err = -ENOMEM;
        return NULL;
    }
    // One plain node (and inert ones): the plain tokens it takes come from the
    // vocabulary's bitsets, and only the other tokens are walked. Inside a run of
    // a byte class: the run tokens come from the class's bitsets and the chain's
    // distances, and the walk skips the subtrees that hold nothing else.
    const trie *tr = &v->all;
    uint32_t cap, min_chars;
    const wk_gclass *run = NULL;
    int alive = 0, settled = 0, rc = 0;
    if (wk_grammar_plain_state(g, s, &cap, &min_chars)) {
        uint32_t r = cap < (uint32_t)v->max_chars ? cap : (uint32_t)v->max_chars;
        memcpy(m, v->plain + (size_t)r * words, words * sizeof *m);
        tr = &v->other;
    } else if ((rc = run_chain(g, v, s, &run, &alive, &settled)) < 0) {
        free(m);
        *err = rc;
        return NULL;
    } else if (rc) {
        memcpy(m, run->le + (size_t)alive * words, words * sizeof *m);
    } else {
        run = NULL;
    }
    int32_t *st = g->walk;
    st[0] = s;
    g->walk_run[0] = 1;
    wk_grise *rs = NULL;
    size_t nr = 0, cap_r = 0;
    const uint32_t here = g->st[s].dist;
    for (int32_t i = 0; i < tr->n_nodes;) {
        int settled_here = 0; // the node's tokens are run tokens the chain settled
        if (run) {
            int d = tr->nd[i];
            uint8_t b = tr->nb[i];
            g->walk_run[d] = g->walk_run[d - 1] && (run->set[b >> 6] >> (b & 63) & 1);
            settled_here = g->walk_run[d] && d <= settled;
            if (settled_here && !(run->mixed[i >> 6] >> (i & 63) & 1) && tr->deep[i] <= settled) {
                i = tr->nend[i]; // only settled run tokens below
                continue;
            }
        }
        int32_t t = next(g, st[tr->nd[i] - 1], tr->nb[i]);
        if (t < 0) {
            free(m);
            free(rs);
            *err = t;
            return NULL;
        }
        if (t == WK_GRAMMAR_DEAD) {
            i = tr->nend[i];
            continue;
        }
        st[tr->nd[i]] = t;
        for (int32_t k = tr->ntok_off[i]; k < tr->ntok_off[i + 1] && !settled_here; k++) {
            m[tr->ntok[k] >> 6] |= 1ull << (tr->ntok[k] & 63);
            if (g->st[t].dist > here) {
                wk_grise *p = grow(rs, sizeof *rs, &cap_r, nr + 1);
                if (!p) {
                    free(m);
                    free(rs);
                    *err = -ENOMEM;
                    return NULL;
                }
                rs = p;
                rs[nr++] = (wk_grise){tr->ntok[k], g->st[t].dist};
            }
        }
        i++;
    }
    if (nr)
        qsort(rs, nr, sizeof *rs, rise_cmp);
    if (run && (rc = chain_rises(g, run, alive, here, &rs, &nr))) {
        free(m);
        free(rs);
        *err = rc;
        return NULL;
    }
    g->st[s].rise = rs;
    g->st[s].n_rise = (int32_t)nr;
    g->mask_bytes += nr * sizeof *rs;
    *rises = rs;
    *n_rises = (int)nr;
    if (g->st[s].acc)
        for (int k = 0; k < v->n_eog; k++)
            m[v->eog[k] >> 6] |= 1ull << (v->eog[k] & 63);
    g->st[s].mask = m;
    g->mask_bytes += words * 8;
    *computed = 1;
    return m;
}
