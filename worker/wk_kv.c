/* wk_kv: the paged KV block pool (see wk_kv.h).
 *
 * The pool owns one K and one V array per layer, each allocated once through the
 * backend and zero-filled (the backend's zero op: memset, or cudaMemsetAsync on a
 * GPU). Free blocks sit on a LIFO stack; a block in use carries a reference count. */
#include "worker/wk_kv.h"

#include <stdlib.h>
#include <string.h>

#include "common/cm_log.h"
#include "kernels/kn_fp8.h"

struct wk_kv {
    kn_backend *be;
    int n_layer, n_kv_head, head_dim, block_size, n_blocks;
    kn_type type;
    void **k; // [n_layer] backend arrays [n_blocks, block_size, n_kv_head, head_dim]
    void **v; // [n_layer]
    int32_t *refs;      // [n_blocks] reference counts, 0 = free
    int32_t *free_list; // [n_blocks] stack of free block ids
    int n_free;
};

size_t wk_kv_head_bytes(kn_type t, int head_dim) {
    if (t == KN_E4M3)
        return kn_e4m3_rec_bytes(head_dim);
    return (size_t)head_dim * (t == KN_F16 || t == KN_BF16 ? 2 : 4);
}

/* Returns a pool owning its arrays, or NULL; free with wk_kv_free. */
wk_kv *wk_kv_create(kn_backend *be, int n_layer, int n_kv_head, int head_dim, int block_size, int n_blocks,
                    kn_type type) {
    if (!be || n_layer <= 0 || n_kv_head <= 0 || head_dim <= 0 || block_size <= 0 || n_blocks <= 0 ||
        (type != KN_F32 && type != KN_F16 && type != KN_BF16 && type != KN_E4M3))
        return NULL;
    wk_kv *kv = calloc(1, sizeof(*kv));
    if (!kv)
        return NULL;
    kv->be = be;
    kv->n_layer = n_layer;
    kv->n_kv_head = n_kv_head;
    kv->head_dim = head_dim;
    kv->block_size = block_size;
    kv->n_blocks = n_blocks;
    kv->type = type;
    kv->k = calloc((size_t)n_layer, sizeof(void *));
    kv->v = calloc((size_t)n_layer, sizeof(void *));
    kv->refs = calloc((size_t)n_blocks, sizeof(int32_t));
    kv->free_list = malloc((size_t)n_blocks * sizeof(int32_t));
    if (!kv->k || !kv->v || !kv->refs || !kv->free_list)
        goto fail;
    size_t bytes = (size_t)n_blocks * (size_t)block_size * (size_t)n_kv_head * wk_kv_head_bytes(type, head_dim);
    for (int l = 0; l < n_layer; l++) {
        kv->k[l] = be->ops->alloc(be, bytes);
        kv->v[l] = be->ops->alloc(be, bytes);
        if (!kv->k[l] || !kv->v[l])
            goto fail;
        be->ops->zero(be, kv->k[l], bytes);
        be->ops->zero(be, kv->v[l], bytes);
    }
    // hand out low block ids first
    for (int i = 0; i < n_blocks; i++)
        kv->free_list[i] = n_blocks - 1 - i;
    kv->n_free = n_blocks;
    return kv;
fail:
    wk_kv_free(kv);
    return NULL;
}

void wk_kv_free(wk_kv *kv) {
    if (!kv)
        return;
    for (int l = 0; l < kv->n_layer && kv->k && kv->v; l++) {
        kv->be->ops->free(kv->be, kv->k[l]);
        kv->be->ops->free(kv->be, kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    free(kv->refs);
    free(kv->free_list);
    free(kv);
}

int wk_kv_block_size(const wk_kv *kv) {
    return kv->block_size;
}

int wk_kv_n_blocks(const wk_kv *kv) {
    return kv->n_blocks;
}

int wk_kv_n_free(const wk_kv *kv) {
    return kv->n_free;
}

kn_type wk_kv_type(const wk_kv *kv) {
    return kv->type;
}

int32_t wk_kv_alloc(wk_kv *kv) {
    if (kv->n_free == 0)
        return -1;
    int32_t b = kv->free_list[--kv->n_free];
    kv->refs[b] = 1;
    return b;
}

void wk_kv_ref(wk_kv *kv, int32_t block) {
    if (block < 0 || block >= kv->n_blocks || kv->refs[block] <= 0) {
        cm_error("wk_kv_ref: block %d is not in use", (int)block);
        return;
    }
    kv->refs[block]++;
}

void wk_kv_release(wk_kv *kv, int32_t block) {
    if (block < 0 || block >= kv->n_blocks || kv->refs[block] <= 0) {
        cm_error("wk_kv_release: block %d is not in use", (int)block);
        return;
    }
    if (--kv->refs[block] == 0)
        kv->free_list[kv->n_free++] = block;
}

int wk_kv_refs(const wk_kv *kv, int32_t block) {
    return block >= 0 && block < kv->n_blocks ? kv->refs[block] : 0;
}

void *wk_kv_k(wk_kv *kv, int layer) {
    return layer >= 0 && layer < kv->n_layer ? kv->k[layer] : NULL;
}

void *wk_kv_v(wk_kv *kv, int layer) {
    return layer >= 0 && layer < kv->n_layer ? kv->v[layer] : NULL;
}

long wk_kv_blocks_for_memory(size_t total, size_t free, double fraction, size_t reserve, size_t block_bytes) {
    double used = (double)(total > free ? total - free : 0), allowed = fraction * (double)total - used;
    if (allowed > (double)free)
        allowed = (double)free;
    allowed -= (double)reserve;
    if (allowed < (double)block_bytes || !block_bytes)
        return 0;
    double n = allowed / (double)block_bytes;
    return n > (double)INT32_MAX ? INT32_MAX : (long)n;
}
