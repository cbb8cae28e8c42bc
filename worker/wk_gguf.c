/* wk_gguf: GGUF v2/v3 reader over a read-only private mapping.
 *
 * Design note. Everything is validated once, in wk_gguf_open, by a bounds-checked
 * cursor over the mapping: counts are checked against the bytes left before any
 * allocation sized by them, every string/array length is checked before it is
 * skipped, nested arrays are rejected, and each tensor's type, dims, element count,
 * row size, alignment and extent are verified (tensor extents must not overlap).
 * After that the accessors only read memory already proven to be in bounds.
 *
 * Keys and tensors are found through small open-addressing hash tables (FNV-1a).
 * String arrays get a table of offsets at open so wk_gguf_arr_str is O(1) even for
 * the 262144-entry token list. */
#include "worker/wk_gguf.h"
#include "common/cm_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define WK_GGUF_MAX_NAME 256 // longest tensor name accepted (ggml uses 64)
#define WK_GGUF_MAX_KEY 65535

typedef struct wk_kv {
    const char *key; // into the mapping, not NUL-terminated
    size_t key_len;
    wk_gguf_vtype type;
    const uint8_t *val;   // scalar value, string length field, or first array element
    wk_gguf_vtype etype;  // arrays: element type
    uint64_t n;           // arrays: element count
    uint64_t *str_offs;   // string arrays: offset (from the map base) of each string's length field
} wk_kv;

struct wk_gguf {
    uint8_t *map; // the whole file
    size_t map_size;
    const uint8_t *base; // the GGUF inside it (a .kolm blob, or the whole file)
    size_t size;
    uint32_t version;
    wk_kv *kv;
    uint64_t n_kv;
    uint32_t *kv_hash; // index+1, 0 = empty; size kv_hcap (power of two)
    uint32_t kv_hcap;
    wk_gguf_tensor *tensors;
    int n_tensors;
    uint32_t *t_hash;
    uint32_t t_hcap;
};

typedef struct cursor {
    const uint8_t *base;
    size_t size, pos;
} cursor;


static int cur_need(const cursor *c, uint64_t n) { return c->size - c->pos >= n; }

static int cur_u32(cursor *c, uint32_t *v) {
    if (!cur_need(c, 4))
        return -1;
    memcpy(v, c->base + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int cur_u64(cursor *c, uint64_t *v) {
    if (!cur_need(c, 8))
        return -1;
    memcpy(v, c->base + c->pos, 8);
    c->pos += 8;
    return 0;
}

/* A GGUF string: u64 length then bytes. */
static int cur_str(cursor *c, const char **s, uint64_t *len) {
    if (cur_u64(c, len) < 0 || !cur_need(c, *len))
        return -1;
    *s = (const char *)(c->base + c->pos);
    c->pos += *len;
    return 0;
}

static size_t vtype_size(uint32_t t) {
    switch (t) {
    case WK_GGUF_U8:
    case WK_GGUF_I8:
    case WK_GGUF_BOOL:
        return 1;
    case WK_GGUF_U16:
    case WK_GGUF_I16:
        return 2;
    case WK_GGUF_U32:
    case WK_GGUF_I32:
    case WK_GGUF_F32:
        return 4;
    case WK_GGUF_U64:
    case WK_GGUF_I64:
    case WK_GGUF_F64:
        return 8;
    default:
        return 0; // string, array, unknown
    }
}

static uint32_t fnv1a(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

static uint32_t hash_cap(uint64_t n) {
    uint32_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    return cap;
}

static const wk_kv *find_kv(const wk_gguf *g, const char *key) {
    if (!g || !key || !g->kv_hcap)
        return NULL;
    size_t n = strlen(key);
    uint32_t mask = g->kv_hcap - 1;
    for (uint32_t h = fnv1a(key, n) & mask;; h = (h + 1) & mask) {
        uint32_t slot = g->kv_hash[h];
        if (!slot)
            return NULL;
        const wk_kv *kv = &g->kv[slot - 1];
        if (kv->key_len == n && !memcmp(kv->key, key, n))
            return kv;
    }
}

/* Parses one key/value at the cursor into kv. Returns 0 or -1 with err set. */
static int parse_kv(cursor *c, wk_kv *kv, uint64_t idx, char *err, size_t errlen) {
    const char *key;
    uint64_t klen;
    uint32_t type;
    if (cur_str(c, &key, &klen) < 0) {
        cm_set_err(err, errlen, "truncated metadata key #%llu", (unsigned long long)idx);
        return -1;
    }
    if (klen == 0 || klen > WK_GGUF_MAX_KEY || memchr(key, 0, klen)) {
        cm_set_err(err, errlen, "bad metadata key #%llu (length %llu)", (unsigned long long)idx,
                (unsigned long long)klen);
        return -1;
    }
    kv->key = key;
    kv->key_len = klen;
    int kl = (int)klen;
    if (cur_u32(c, &type) < 0) {
        cm_set_err(err, errlen, "truncated type of metadata key %.*s", kl, key);
        return -1;
    }
    kv->type = (wk_gguf_vtype)type;
    kv->val = c->base + c->pos;
    if (type == WK_GGUF_STRING) {
        const char *s;
        uint64_t n;
        if (cur_str(c, &s, &n) < 0) {
            cm_set_err(err, errlen, "truncated string value of %.*s", kl, key);
            return -1;
        }
        return 0;
    }
    if (type != WK_GGUF_ARRAY) {
        size_t sz = vtype_size(type);
        if (!sz) {
            cm_set_err(err, errlen, "unknown value type %u for %.*s", type, kl, key);
            return -1;
        }
        if (!cur_need(c, sz)) {
            cm_set_err(err, errlen, "truncated value of %.*s", kl, key);
            return -1;
        }
        c->pos += sz;
        return 0;
    }
    uint32_t et;
    uint64_t n;
    if (cur_u32(c, &et) < 0 || cur_u64(c, &n) < 0) {
        cm_set_err(err, errlen, "truncated array header of %.*s", kl, key);
        return -1;
    }
    kv->etype = (wk_gguf_vtype)et;
    kv->n = n;
    kv->val = c->base + c->pos;
    if (et == WK_GGUF_ARRAY) {
        cm_set_err(err, errlen, "nested arrays are not supported (%.*s)", kl, key);
        return -1;
    }
    if (et == WK_GGUF_STRING) {
        if (n > (c->size - c->pos) / 8) {
            cm_set_err(err, errlen, "string array %.*s: count %llu exceeds the file", kl, key, (unsigned long long)n);
            return -1;
        }
        kv->str_offs = malloc((n ? n : 1) * sizeof(uint64_t));
        if (!kv->str_offs) {
            cm_set_err(err, errlen, "out of memory for string array %.*s", kl, key);
            return -2;
        }
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            uint64_t sl;
            kv->str_offs[i] = c->pos;
            if (cur_str(c, &s, &sl) < 0) {
                cm_set_err(err, errlen, "truncated string %llu of array %.*s", (unsigned long long)i, kl, key);
                return -1;
            }
        }
        return 0;
    }
    size_t sz = vtype_size(et);
    if (!sz) {
        cm_set_err(err, errlen, "unknown array element type %u for %.*s", et, kl, key);
        return -1;
    }
    if (n > (c->size - c->pos) / sz) {
        cm_set_err(err, errlen, "array %.*s: %llu elements exceed the file", kl, key, (unsigned long long)n);
        return -1;
    }
    c->pos += n * sz;
    return 0;
}

static int cmp_tensor_off(const void *a, const void *b) {
    const wk_gguf_tensor *x = *(wk_gguf_tensor *const *)a, *y = *(wk_gguf_tensor *const *)b;
    uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
    return px < py ? -1 : px > py;
}

/* Builds the tensor hash, rejecting duplicate names. */
static int index_tensors(wk_gguf *g, char *err, size_t errlen) {
    g->t_hcap = hash_cap((uint64_t)g->n_tensors);
    g->t_hash = calloc(g->t_hcap, sizeof(uint32_t));
    if (!g->t_hash) {
        cm_set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    uint32_t mask = g->t_hcap - 1;
    for (int i = 0; i < g->n_tensors; i++) {
        const char *name = g->tensors[i].name;
        uint32_t h = fnv1a(name, strlen(name)) & mask;
        for (; g->t_hash[h]; h = (h + 1) & mask) {
            if (!strcmp(g->tensors[g->t_hash[h] - 1].name, name)) {
                cm_set_err(err, errlen, "duplicate tensor name %s", name);
                return -EINVAL;
            }
        }
        g->t_hash[h] = (uint32_t)i + 1;
    }
    return 0;
}

static int index_kv(wk_gguf *g, char *err, size_t errlen) {
    g->kv_hcap = hash_cap(g->n_kv);
    g->kv_hash = calloc(g->kv_hcap, sizeof(uint32_t));
    if (!g->kv_hash) {
        cm_set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    uint32_t mask = g->kv_hcap - 1;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const wk_kv *kv = &g->kv[i];
        uint32_t h = fnv1a(kv->key, kv->key_len) & mask;
        for (; g->kv_hash[h]; h = (h + 1) & mask) {
            const wk_kv *o = &g->kv[g->kv_hash[h] - 1];
            if (o->key_len == kv->key_len && !memcmp(o->key, kv->key, kv->key_len)) {
                cm_set_err(err, errlen, "duplicate metadata key %.*s", (int)kv->key_len, kv->key);
                return -EINVAL;
            }
        }
        g->kv_hash[h] = (uint32_t)i + 1;
    }
    return 0;
}

/* Parses one tensor descriptor (offset still relative) into t; data holds the relative offset. */
static int parse_tensor(cursor *c, wk_gguf_tensor *t, uint64_t *rel_off, int idx, char *err, size_t errlen) {
    const char *name;
    uint64_t nlen;
    uint32_t n_dims, type;
    if (cur_str(c, &name, &nlen) < 0) {
        cm_set_err(err, errlen, "truncated name of tensor #%d", idx);
        return -1;
    }
    if (nlen == 0 || nlen >= WK_GGUF_MAX_NAME || memchr(name, 0, nlen)) {
        cm_set_err(err, errlen, "bad name of tensor #%d (length %llu)", idx, (unsigned long long)nlen);
        return -1;
    }
    char *copy = malloc(nlen + 1);
    if (!copy) {
        cm_set_err(err, errlen, "out of memory");
        return -2;
    }
    memcpy(copy, name, nlen);
    copy[nlen] = 0;
    t->name = copy;
    if (cur_u32(c, &n_dims) < 0) {
        cm_set_err(err, errlen, "truncated descriptor of tensor %s", copy);
        return -1;
    }
    if (n_dims < 1 || n_dims > 4) {
        cm_set_err(err, errlen, "tensor %s has %u dims (expected 1..4)", copy, n_dims);
        return -1;
    }
    t->n_dims = (int)n_dims;
    int64_t nel = 1;
    for (int d = 0; d < 4; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        if (cur_u64(c, &ne) < 0) {
            cm_set_err(err, errlen, "truncated dims of tensor %s", copy);
            return -1;
        }
        if (ne == 0 || ne > (uint64_t)INT64_MAX || (int64_t)ne > INT64_MAX / nel) {
            cm_set_err(err, errlen, "tensor %s: bad dim %u = %llu", copy, d, (unsigned long long)ne);
            return -1;
        }
        t->ne[d] = (int64_t)ne;
        nel *= (int64_t)ne;
    }
    if (cur_u32(c, &type) < 0 || cur_u64(c, rel_off) < 0) {
        cm_set_err(err, errlen, "truncated descriptor of tensor %s", copy);
        return -1;
    }
    if (type >= KN_TYPE_COUNT || !kn_type_supported((kn_type)type)) {
        cm_set_err(err, errlen, "tensor %s has unsupported type %u (%s)", copy, type, kn_type_name((kn_type)type));
        return -1;
    }
    t->type = (kn_type)type;
    size_t row = kn_row_bytes(t->type, t->ne[0]);
    if (!row) {
        cm_set_err(err, errlen, "tensor %s: row length %lld is not a multiple of the %s block (%lld)", copy,
                (long long)t->ne[0], kn_type_name(t->type), (long long)kn_type_block_elems(t->type));
        return -1;
    }
    uint64_t rows = (uint64_t)(nel / t->ne[0]);
    if (rows > SIZE_MAX / row) {
        cm_set_err(err, errlen, "tensor %s is too large", copy);
        return -1;
    }
    t->size = row * rows;
    return 0;
}

int wk_gguf_open(const char *path, wk_gguf **out, char *err, size_t errlen) {
    return wk_gguf_open_at(path, 0, 0, out, err, errlen);
}

int wk_gguf_open_at(const char *path, uint64_t offset, uint64_t size, wk_gguf **out, char *err, size_t errlen) {
    int rc = -EINVAL, fd = -1, r;
    uint64_t *rel = NULL;
    wk_gguf_tensor **order = NULL;
    wk_gguf *g = NULL;
    if (err && errlen)
        err[0] = 0;
    if (!out || !path) {
        cm_set_err(err, errlen, "bad arguments");
        return -EINVAL;
    }
    *out = NULL;
    g = calloc(1, sizeof(*g));
    if (!g) {
        cm_set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        cm_set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        cm_set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!size && S_ISREG(st.st_mode) && (uint64_t)st.st_size > offset)
        size = (uint64_t)st.st_size - offset;
    if (!S_ISREG(st.st_mode) || size < 24 || offset > (uint64_t)st.st_size || size > (uint64_t)st.st_size - offset) {
        cm_set_err(err, errlen, "%s: not a GGUF file (too small: %lld bytes)", path, (long long)st.st_size);
        goto fail;
    }
    g->map_size = (size_t)st.st_size;
    g->map = mmap(NULL, g->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (g->map == MAP_FAILED) {
        g->map = NULL;
        rc = -errno;
        cm_set_err(err, errlen, "%s: mmap: %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    g->base = g->map + offset;
    g->size = (size_t)size;

    cursor c = {g->base, g->size, 0};
    uint32_t magic = 0;
    uint64_t n_tensors = 0, n_kv = 0;
    (void)cur_u32(&c, &magic);
    if (memcmp(g->base, "GGUF", 4)) {
        cm_set_err(err, errlen, "%s: bad magic (not a GGUF file)", path);
        goto fail;
    }
    (void)cur_u32(&c, &g->version);
    if (g->version != 2 && g->version != 3) {
        cm_set_err(err, errlen, "%s: GGUF version %u is not supported (need 2 or 3; re-convert the model)", path,
                g->version);
        goto fail;
    }
    (void)cur_u64(&c, &n_tensors);
    (void)cur_u64(&c, &n_kv);
    // Smallest descriptor: name len + 1 byte + n_dims + 1 dim + type + offset = 33 bytes;
    // smallest kv: key len + 1 byte + type + 1 byte value = 14 bytes.
    if (n_tensors > (g->size - c.pos) / 33 || n_tensors > INT32_MAX) {
        cm_set_err(err, errlen, "%s: tensor count %llu does not fit the file", path, (unsigned long long)n_tensors);
        goto fail;
    }
    if (n_kv > (g->size - c.pos) / 14) {
        cm_set_err(err, errlen, "%s: metadata count %llu does not fit the file", path, (unsigned long long)n_kv);
        goto fail;
    }
    g->kv = calloc(n_kv ? n_kv : 1, sizeof(wk_kv));
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(wk_gguf_tensor));
    rel = calloc(n_tensors ? n_tensors : 1, sizeof(uint64_t));
    if (!g->kv || !g->tensors || !rel) {
        rc = -ENOMEM;
        cm_set_err(err, errlen, "out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = i + 1; // so that close frees str_offs of a partially parsed kv
        if ((r = parse_kv(&c, &g->kv[i], i, err, errlen)) < 0) {
            rc = r == -2 ? -ENOMEM : -EINVAL;
            goto fail;
        }
    }
    if ((rc = index_kv(g, err, errlen)) < 0)
        goto fail;
    rc = -EINVAL;

    uint64_t align = 32;
    const wk_kv *ak = find_kv(g, "general.alignment");
    if (ak) {
        uint32_t a;
        if (ak->type != WK_GGUF_U32) {
            cm_set_err(err, errlen, "general.alignment must be a u32");
            goto fail;
        }
        memcpy(&a, ak->val, 4);
        if (a == 0 || (a & (a - 1))) {
            cm_set_err(err, errlen, "general.alignment %u is not a power of two", a);
            goto fail;
        }
        align = a;
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        g->n_tensors = (int)i + 1;
        if ((r = parse_tensor(&c, &g->tensors[i], &rel[i], (int)i, err, errlen)) < 0) {
            rc = r == -2 ? -ENOMEM : -EINVAL;
            goto fail;
        }
    }
    if ((rc = index_tensors(g, err, errlen)) < 0)
        goto fail;
    rc = -EINVAL;

    uint64_t data_start = (c.pos + align - 1) / align * align;
    for (int i = 0; i < g->n_tensors; i++) {
        wk_gguf_tensor *t = &g->tensors[i];
        if (rel[i] % align) {
            cm_set_err(err, errlen, "tensor %s: data offset %llu is not aligned to %llu", t->name,
                    (unsigned long long)rel[i], (unsigned long long)align);
            goto fail;
        }
        if (data_start > g->size || rel[i] > g->size - data_start ||
            t->size > g->size - data_start - rel[i]) {
            cm_set_err(err, errlen, "truncated tensor data for %s (offset %llu + %zu bytes past the end of the file)",
                    t->name, (unsigned long long)rel[i], t->size);
            goto fail;
        }
        t->data = g->base + data_start + rel[i];
    }
    // Tensor extents must not overlap.
    if (g->n_tensors > 1) {
        order = malloc((size_t)g->n_tensors * sizeof(*order));
        if (!order) {
            rc = -ENOMEM;
            cm_set_err(err, errlen, "out of memory");
            goto fail;
        }
        for (int i = 0; i < g->n_tensors; i++)
            order[i] = &g->tensors[i];
        qsort(order, (size_t)g->n_tensors, sizeof(*order), cmp_tensor_off);
        for (int i = 1; i < g->n_tensors; i++) {
            const uint8_t *end = (const uint8_t *)order[i - 1]->data + order[i - 1]->size;
            if ((const uint8_t *)order[i]->data < end) {
                cm_set_err(err, errlen, "tensor %s overlaps tensor %s", order[i]->name, order[i - 1]->name);
                goto fail;
            }
        }
    }
    free(order);
    free(rel);
    *out = g;
    return 0;

fail:
    free(order);
    free(rel);
    if (fd >= 0)
        close(fd);
    wk_gguf_close(g);
    return rc;
}

void wk_gguf_close(wk_gguf *g) {
    if (!g)
        return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++)
            free(g->kv[i].str_offs);
    if (g->tensors)
        for (int i = 0; i < g->n_tensors; i++)
            free((char *)g->tensors[i].name);
    free(g->kv);
    free(g->kv_hash);
    free(g->tensors);
    free(g->t_hash);
    if (g->map)
        munmap(g->map, g->map_size);
    free(g);
}

/* Reads a scalar integer/bool value as int64 (u64 above INT64_MAX fails). */
static int kv_int(const wk_kv *kv, int64_t *out) {
    const uint8_t *p = kv->val;
    switch (kv->type) {
    case WK_GGUF_U8:
    case WK_GGUF_BOOL:
        *out = p[0];
        return 0;
    case WK_GGUF_I8:
        *out = (int8_t)p[0];
        return 0;
    case WK_GGUF_U16: {
        uint16_t v;
        memcpy(&v, p, 2);
        *out = v;
        return 0;
    }
    case WK_GGUF_I16: {
        int16_t v;
        memcpy(&v, p, 2);
        *out = v;
        return 0;
    }
    case WK_GGUF_U32: {
        uint32_t v;
        memcpy(&v, p, 4);
        *out = v;
        return 0;
    }
    case WK_GGUF_I32: {
        int32_t v;
        memcpy(&v, p, 4);
        *out = v;
        return 0;
    }
    case WK_GGUF_U64: {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v > (uint64_t)INT64_MAX)
            return -EINVAL;
        *out = (int64_t)v;
        return 0;
    }
    case WK_GGUF_I64:
        memcpy(out, p, 8);
        return 0;
    default:
        return -EINVAL;
    }
}

int wk_gguf_get_i64(const wk_gguf *g, const char *key, int64_t *out) {
    const wk_kv *kv = find_kv(g, key);
    if (!kv)
        return -ENOENT;
    return kv_int(kv, out);
}

int wk_gguf_get_f32(const wk_gguf *g, const char *key, float *out) {
    const wk_kv *kv = find_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type == WK_GGUF_F32) {
        memcpy(out, kv->val, 4);
        return 0;
    }
    if (kv->type == WK_GGUF_F64) {
        double d;
        memcpy(&d, kv->val, 8);
        *out = (float)d;
        return 0;
    }
    return -EINVAL;
}

int wk_gguf_get_bool(const wk_gguf *g, const char *key, int *out) {
    const wk_kv *kv = find_kv(g, key);
    int64_t v;
    if (!kv)
        return -ENOENT;
    if (kv_int(kv, &v) < 0)
        return -EINVAL;
    *out = v != 0;
    return 0;
}

int wk_gguf_get_str(const wk_gguf *g, const char *key, const char **s, size_t *len) {
    const wk_kv *kv = find_kv(g, key);
    uint64_t n;
    if (!kv)
        return -ENOENT;
    if (kv->type != WK_GGUF_STRING)
        return -EINVAL;
    memcpy(&n, kv->val, 8);
    *s = (const char *)kv->val + 8;
    *len = (size_t)n;
    return 0;
}

int wk_gguf_get_arr(const wk_gguf *g, const char *key, wk_gguf_vtype *etype, uint64_t *n, const void **data) {
    const wk_kv *kv = find_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != WK_GGUF_ARRAY)
        return -EINVAL;
    if (etype)
        *etype = kv->etype;
    if (n)
        *n = kv->n;
    if (data)
        *data = kv->val;
    return 0;
}

int wk_gguf_arr_str(const wk_gguf *g, const char *key, uint64_t i, const char **s, size_t *len) {
    const wk_kv *kv = find_kv(g, key);
    uint64_t n;
    if (!kv)
        return -ENOENT;
    if (kv->type != WK_GGUF_ARRAY || kv->etype != WK_GGUF_STRING || i >= kv->n)
        return -EINVAL;
    const uint8_t *p = g->base + kv->str_offs[i];
    memcpy(&n, p, 8);
    *s = (const char *)p + 8;
    *len = (size_t)n;
    return 0;
}

const wk_gguf_tensor *wk_gguf_tensor_get(const wk_gguf *g, const char *name) {
    if (!g || !name || !g->t_hcap)
        return NULL;
    uint32_t mask = g->t_hcap - 1;
    for (uint32_t h = fnv1a(name, strlen(name)) & mask;; h = (h + 1) & mask) {
        uint32_t slot = g->t_hash[h];
        if (!slot)
            return NULL;
        if (!strcmp(g->tensors[slot - 1].name, name))
            return &g->tensors[slot - 1];
    }
}

int wk_gguf_n_tensors(const wk_gguf *g) { return g ? g->n_tensors : 0; }

const wk_gguf_tensor *wk_gguf_tensor_at(const wk_gguf *g, int i) {
    if (!g || i < 0 || i >= g->n_tensors)
        return NULL;
    return &g->tensors[i];
}
