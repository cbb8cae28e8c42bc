/* wk_prefix.c: the prefix cache (see wk_prefix.h).
 *
 * Design note. Entries live in a fixed array with one slot per KV block; a hash
 * table (open addressing, linear probing, backward-shift deletion, power-of-two
 * size at least twice the entries) maps a chained key to its entry, and by_block
 * maps a block back to its entry so that a block is listed once. A doubly linked
 * list orders entries by last use for eviction. Keys chain: key(block i) =
 * mix(key(block i - 1), tokens of block i), with 0 standing for the empty prefix,
 * so one key covers the whole prefix up to that block; a lookup also compares the
 * parent key and the block's tokens, so only a 64-bit collision on both could
 * confuse two prefixes. */
#include "worker/wk_prefix.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    uint64_t key, parent;
    int32_t block; // -1 when the slot is unused
    int prev, next; // LRU list (head = newest)
} entry;

struct wk_prefix {
    wk_kv *kv;
    int bs, cap;
    entry *e;        // [cap]
    int32_t *tok;    // [cap, bs] each entry's tokens
    int *free_slots; // [cap] stack of unused entry slots
    int n_free_slots;
    int *table;      // [tsize] entry index or -1
    uint32_t tmask;
    int *by_block;   // [cap] entry of a block or -1
    int head, tail;  // LRU ends, -1 when empty
};

static uint64_t mix(uint64_t parent, const int32_t *tok, int n) {
    uint64_t h = parent ^ 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < n; i++) {
        h ^= (uint32_t)tok[i];
        h *= 0x100000001B3ULL;
        h ^= h >> 29;
    }
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 27;
    return h ? h : 1;
}

wk_prefix *wk_prefix_create(wk_kv *kv) {
    wk_prefix *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->kv = kv;
    p->bs = wk_kv_block_size(kv);
    p->cap = wk_kv_n_blocks(kv);
    uint32_t ts = 16;
    while (ts < 2u * (uint32_t)p->cap)
        ts <<= 1;
    p->tmask = ts - 1;
    p->e = calloc((size_t)p->cap, sizeof *p->e);
    p->tok = malloc((size_t)p->cap * p->bs * sizeof *p->tok);
    p->free_slots = malloc((size_t)p->cap * sizeof *p->free_slots);
    p->table = malloc((size_t)ts * sizeof *p->table);
    p->by_block = malloc((size_t)p->cap * sizeof *p->by_block);
    if (!p->e || !p->tok || !p->free_slots || !p->table || !p->by_block) {
        wk_prefix_free(p);
        return NULL;
    }
    for (int i = 0; i < p->cap; i++) {
        p->e[i].block = -1;
        p->free_slots[i] = p->cap - 1 - i;
        p->by_block[i] = -1;
    }
    p->n_free_slots = p->cap;
    for (uint32_t i = 0; i < ts; i++)
        p->table[i] = -1;
    p->head = p->tail = -1;
    return p;
}

void wk_prefix_free(wk_prefix *p) {
    if (!p)
        return;
    if (p->e)
        for (int i = 0; i < p->cap; i++)
            if (p->e[i].block >= 0)
                wk_kv_release(p->kv, p->e[i].block);
    free(p->e);
    free(p->tok);
    free(p->free_slots);
    free(p->table);
    free(p->by_block);
    free(p);
}

/* ---- LRU list ---- */

static void lru_unlink(wk_prefix *p, int i) {
    entry *e = &p->e[i];
    if (e->prev >= 0)
        p->e[e->prev].next = e->next;
    else
        p->head = e->next;
    if (e->next >= 0)
        p->e[e->next].prev = e->prev;
    else
        p->tail = e->prev;
}

static void lru_push_front(wk_prefix *p, int i) {
    entry *e = &p->e[i];
    e->prev = -1;
    e->next = p->head;
    if (p->head >= 0)
        p->e[p->head].prev = i;
    p->head = i;
    if (p->tail < 0)
        p->tail = i;
}

/* ---- hash table ---- */

/* Table slot holding the entry for (key, parent, tok), or -1. */
static int find(const wk_prefix *p, uint64_t key, uint64_t parent, const int32_t *tok) {
    for (uint32_t h = (uint32_t)key & p->tmask;; h = (h + 1) & p->tmask) {
        int i = p->table[h];
        if (i < 0)
            return -1;
        const entry *e = &p->e[i];
        if (e->key == key && e->parent == parent &&
            !memcmp(p->tok + (size_t)i * p->bs, tok, (size_t)p->bs * sizeof *tok))
            return (int)h;
    }
}

static void table_put(wk_prefix *p, int i) {
    uint32_t h = (uint32_t)p->e[i].key & p->tmask;
    while (p->table[h] >= 0)
        h = (h + 1) & p->tmask;
    p->table[h] = i;
}

/* Removes table slot h, shifting later members of its probe run back. */
static void table_del(wk_prefix *p, uint32_t h) {
    p->table[h] = -1;
    for (uint32_t j = (h + 1) & p->tmask; p->table[j] >= 0; j = (j + 1) & p->tmask) {
        int i = p->table[j];
        uint32_t home = (uint32_t)p->e[i].key & p->tmask;
        // i may move to the hole at h if h lies cyclically in [home, j).
        if (((j - home) & p->tmask) >= ((j - h) & p->tmask)) {
            p->table[h] = i;
            p->table[j] = -1;
            h = j;
        }
    }
}

/* ---- public ---- */

int wk_prefix_match(wk_prefix *p, const int32_t *tok, int n, int max_blocks, int32_t *blocks, uint64_t *key_out) {
    uint64_t parent = 0;
    int k = 0;
    while (k < max_blocks && (k + 1) * p->bs <= n) {
        const int32_t *bt = tok + (size_t)k * p->bs;
        uint64_t key = mix(parent, bt, p->bs);
        int h = find(p, key, parent, bt);
        if (h < 0)
            break;
        int i = p->table[h];
        wk_kv_ref(p->kv, p->e[i].block);
        blocks[k++] = p->e[i].block;
        lru_unlink(p, i);
        lru_push_front(p, i);
        parent = key;
    }
    *key_out = parent;
    return k;
}

uint64_t wk_prefix_insert(wk_prefix *p, uint64_t parent, const int32_t *tok, int32_t block) {
    uint64_t key = mix(parent, tok, p->bs);
    if (block < 0 || block >= p->cap || p->by_block[block] >= 0 || !p->n_free_slots ||
        find(p, key, parent, tok) >= 0)
        return key;
    int i = p->free_slots[--p->n_free_slots];
    p->e[i] = (entry){.key = key, .parent = parent, .block = block};
    memcpy(p->tok + (size_t)i * p->bs, tok, (size_t)p->bs * sizeof *tok);
    table_put(p, i);
    p->by_block[block] = i;
    lru_push_front(p, i);
    wk_kv_ref(p->kv, block);
    return key;
}

int wk_prefix_evict(wk_prefix *p, int n) {
    int freed = 0;
    for (int i = p->tail; i >= 0 && freed < n;) {
        int prev = p->e[i].prev;
        int32_t b = p->e[i].block;
        if (wk_kv_refs(p->kv, b) == 1) {
            table_del(p, (uint32_t)find(p, p->e[i].key, p->e[i].parent, p->tok + (size_t)i * p->bs));
            lru_unlink(p, i);
            p->by_block[b] = -1;
            p->e[i].block = -1;
            p->free_slots[p->n_free_slots++] = i;
            wk_kv_release(p->kv, b);
            freed++;
        }
        i = prev;
    }
    return freed;
}

int wk_prefix_n_reclaimable(const wk_prefix *p) {
    int n = 0;
    for (int i = p->head; i >= 0; i = p->e[i].next)
        n += wk_kv_refs(p->kv, p->e[i].block) == 1;
    return n;
}
