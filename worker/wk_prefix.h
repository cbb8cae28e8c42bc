/* wk_prefix: the prefix cache, full KV blocks found again by the tokens they hold.
 *
 * A full block is keyed by a hash chained over every token from the start of the
 * sequence to the block's end, so a key names one exact prefix; the entry keeps
 * the block's own tokens and its parent's key to rule out collisions. The cache
 * holds one reference on each block it lists (wk_kv refcounts): a block that only
 * the cache holds is reclaimable, and wk_prefix_evict hands such blocks back to the
 * free list, least recently used first. Nothing is allocated after create.
 * Single-threaded (the scheduler's). */
#ifndef WK_PREFIX_H
#define WK_PREFIX_H

#include <stdint.h>

#include "worker/wk_kv.h"

typedef struct wk_prefix wk_prefix;

/* A cache over kv (borrowed) with room for every block of kv. NULL on failure. */
wk_prefix *wk_prefix_create(wk_kv *kv);
/* Releases the cache's references. NULL is a no-op. */
void wk_prefix_free(wk_prefix *p);

/* Finds the longest cached run of full blocks that starts tok[0..n) (at most
 * max_blocks of them), takes a reference on each for the caller and writes them
 * to blocks[]. Returns how many; *key_out is the last matched block's key (0, the
 * empty prefix, when none), the parent to insert the next block under. */
int wk_prefix_match(wk_prefix *p, const int32_t *tok, int n, int max_blocks, int32_t *blocks, uint64_t *key_out);

/* Lists `block`, a full block holding tok[0..block_size) after the prefix keyed
 * `parent`, and returns its key (the parent of the next block). The cache takes
 * its own reference. A prefix already listed (under any block), a block already
 * listed, or a full cache leave the cache as it is; the key is returned all the
 * same. */
uint64_t wk_prefix_insert(wk_prefix *p, uint64_t parent, const int32_t *tok, int32_t block);

/* Returns up to n reclaimable blocks to the free list, oldest use first. Returns
 * how many were freed. */
int wk_prefix_evict(wk_prefix *p, int n);

/* Blocks held only by the cache (what wk_prefix_evict could free). */
int wk_prefix_n_reclaimable(const wk_prefix *p);

#endif
