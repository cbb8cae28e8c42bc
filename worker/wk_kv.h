/* wk_kv: the paged KV cache: a pool of fixed-size blocks shared by all sequences.
 *
 * Each layer has a K and a V array of [n_blocks, block_size, n_kv_head, head_dim]
 * elements of `type`, allocated once in backend memory. Blocks are handed out from
 * a free list with a reference count (so a prefix can later be shared between
 * sequences); a sequence maps logical position p to block_table[p / block_size].
 * Nothing is allocated after wk_kv_create. Single-threaded (the scheduler's). */
#ifndef WK_KV_H
#define WK_KV_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kn.h"

typedef struct wk_kv wk_kv;

/* Bytes of one (slot, kv head) in a cache of type t (F32, F16, BF16, or E4M3 records). */
size_t wk_kv_head_bytes(kn_type t, int head_dim);

/* Allocates the pool. NULL on failure. */
wk_kv *wk_kv_create(kn_backend *be, int n_layer, int n_kv_head, int head_dim, int block_size, int n_blocks,
                    kn_type type);
void wk_kv_free(wk_kv *kv); // NULL is a no-op
/* How many blocks of block_bytes (K and V of every layer) a pool may have when the
 * worker may use `fraction` of the device's total bytes, of which `free` are free
 * now (the weights loaded), and `reserve` more will be allocated after the pool.
 * Never more than what is free; 0 when not one block fits. */
long wk_kv_blocks_for_memory(size_t total, size_t free, double fraction, size_t reserve, size_t block_bytes);

int wk_kv_block_size(const wk_kv *kv);
int wk_kv_n_blocks(const wk_kv *kv);
int wk_kv_n_free(const wk_kv *kv);
kn_type wk_kv_type(const wk_kv *kv);

/* Takes a free block (refcount 1); -1 if none is free. */
int32_t wk_kv_alloc(wk_kv *kv);
/* Adds a reference to a block in use. */
void wk_kv_ref(wk_kv *kv, int32_t block);
/* Drops a reference; the block returns to the free list at zero. */
void wk_kv_release(wk_kv *kv, int32_t block);
/* The block's reference count (0 = free). */
int wk_kv_refs(const wk_kv *kv, int32_t block);

void *wk_kv_k(wk_kv *kv, int layer); // [n_blocks, block_size, n_kv_head, head_dim]
void *wk_kv_v(wk_kv *kv, int layer);

#endif
