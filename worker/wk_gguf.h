/* wk_gguf: read-only access to a GGUF file through mmap.
 *
 * wk_gguf_open maps the file, parses and validates the header, every metadata
 * key/value and every tensor descriptor (types known, dims sane, data in bounds
 * and aligned, no overlap past the end), so later accessors cannot fault on a
 * corrupt or truncated file. The wk_gguf owns the mapping; every pointer it hands
 * out (strings, arrays, tensor data) lives until wk_gguf_close. */
#ifndef WK_GGUF_H
#define WK_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kn.h"

typedef enum wk_gguf_vtype {
    WK_GGUF_U8 = 0,
    WK_GGUF_I8 = 1,
    WK_GGUF_U16 = 2,
    WK_GGUF_I16 = 3,
    WK_GGUF_U32 = 4,
    WK_GGUF_I32 = 5,
    WK_GGUF_F32 = 6,
    WK_GGUF_BOOL = 7,
    WK_GGUF_STRING = 8,
    WK_GGUF_ARRAY = 9,
    WK_GGUF_U64 = 10,
    WK_GGUF_I64 = 11,
    WK_GGUF_F64 = 12,
} wk_gguf_vtype;

typedef struct wk_gguf_tensor {
    const char *name; // NUL-terminated copy
    kn_type type;
    int n_dims;
    int64_t ne[4];    // ne[0] is the fastest-moving dim (row length); unused dims are 1
    const void *data; // into the mapping
    size_t size;      // bytes
} wk_gguf_tensor;

typedef struct wk_gguf wk_gguf;

/* Opens and validates path. 0 or a negative errno; on error *out is NULL and err
 * holds a message naming the problem ("truncated tensor data for blk.3.attn_q.weight"). */
int wk_gguf_open(const char *path, wk_gguf **out, char *err, size_t errlen);
/* The GGUF held in bytes [offset, offset+size) of path (size 0: to the end), as a
 * .kolm artifact embeds it; tensor alignment is relative to offset. */
int wk_gguf_open_at(const char *path, uint64_t offset, uint64_t size, wk_gguf **out, char *err, size_t errlen);
void wk_gguf_close(wk_gguf *g); // NULL is a no-op

/* Scalars. Integers of any GGUF integer type (and bool) convert when the value
 * fits; floats accept F32/F64. 0, -ENOENT (no key) or -EINVAL (wrong type/range). */
int wk_gguf_get_i64(const wk_gguf *g, const char *key, int64_t *out);
int wk_gguf_get_f32(const wk_gguf *g, const char *key, float *out);
int wk_gguf_get_bool(const wk_gguf *g, const char *key, int *out);
/* String value: pointer into the mapping (not NUL-terminated) and its length. */
int wk_gguf_get_str(const wk_gguf *g, const char *key, const char **s, size_t *len);

/* Arrays: element type and count. For numeric arrays *data points at the packed
 * little-endian elements; for string arrays use wk_gguf_arr_str. */
int wk_gguf_get_arr(const wk_gguf *g, const char *key, wk_gguf_vtype *etype, uint64_t *n, const void **data);
/* i-th string of a string array (pointer into the mapping, not NUL-terminated). */
int wk_gguf_arr_str(const wk_gguf *g, const char *key, uint64_t i, const char **s, size_t *len);

/* Tensor by name, or NULL. */
const wk_gguf_tensor *wk_gguf_tensor_get(const wk_gguf *g, const char *name);
int wk_gguf_n_tensors(const wk_gguf *g);
const wk_gguf_tensor *wk_gguf_tensor_at(const wk_gguf *g, int i);

#endif
