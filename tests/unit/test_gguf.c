/* test_gguf: wk_gguf against GGUF files written here byte by byte (valid ones,
 * and damaged ones that must fail cleanly with a message), plus the real default
 * model at /tmp/gemma.gguf when it is present. */
#include "worker/wk_gguf.h"

#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "tests/unit/kt.h"

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
} wbuf;

static void put(wbuf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(wbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(wbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(wbuf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void pad_to(wbuf *b, size_t align) {
    static const uint8_t z[64];
    while (b->n % align)
        put(b, z, 1);
}

/* Damage to apply while writing the test file. */
enum {
    V_OK,
    V_BAD_MAGIC,
    V_VERSION1,
    V_VERSION4,
    V_HUGE_TENSORS,
    V_HUGE_KV,
    V_HUGE_STRLEN,
    V_HUGE_ARRAY,
    V_NESTED_ARRAY,
    V_UNKNOWN_VTYPE,
    V_MISALIGNED,
    V_OOB_TENSOR,
    V_DUP_TENSOR,
    V_DUP_KEY,
    V_DIMS0,
    V_DIMS5,
    V_DIM_ZERO,
    V_BAD_TYPE,
    V_UNSUPPORTED_TYPE,
    V_BAD_ROW,
    V_OVERLAP,
    V_HUGE_DIMS,
    V_ALIGN64,
    V_BAD_ALIGN,
    V_COUNT,
};

/* Writes a GGUF v3 file: 7 metadata keys and 2 tensors ("a": f32 [4, 2], "b.weight":
 * q8_0 [32, 3]) whose data ends exactly at the end of the file. */
static void build(int v, wbuf *b) {
    b->n = 0;
    put(b, v == V_BAD_MAGIC ? "GGUX" : "GGUF", 4);
    put_u32(b, v == V_VERSION1 ? 1 : v == V_VERSION4 ? 4 : 3);
    put_u64(b, v == V_HUGE_TENSORS ? (1ull << 60) : 2);
    int n_kv = 7 + (v == V_DUP_KEY) + (v == V_ALIGN64 || v == V_BAD_ALIGN);
    put_u64(b, v == V_HUGE_KV ? (1ull << 58) : (uint64_t)n_kv);
    size_t align = v == V_ALIGN64 ? 64 : 32;

    put_str(b, "general.architecture");
    put_u32(b, WK_GGUF_STRING);
    if (v == V_HUGE_STRLEN) {
        put_u64(b, 1ull << 40);
        put(b, "test", 4);
    } else {
        put_str(b, "test");
    }
    put_str(b, "test.block_count");
    put_u32(b, v == V_UNKNOWN_VTYPE ? 13 : WK_GGUF_U32);
    put_u32(b, 18);
    put_str(b, "test.eps");
    put_u32(b, WK_GGUF_F32);
    float eps = 1e-6f;
    put(b, &eps, 4);
    put_str(b, "test.flag");
    put_u32(b, WK_GGUF_BOOL);
    put(b, "\1", 1);
    put_str(b, "test.big");
    put_u32(b, WK_GGUF_I64);
    put_u64(b, (uint64_t)-5);
    put_str(b, "tokenizer.tokens");
    put_u32(b, WK_GGUF_ARRAY);
    put_u32(b, v == V_NESTED_ARRAY ? WK_GGUF_ARRAY : WK_GGUF_STRING);
    put_u64(b, v == V_HUGE_ARRAY ? (1ull << 61) : 3);
    put_str(b, "<s>");
    put_str(b, "");
    put_str(b, "hello");
    put_str(b, "tokenizer.scores");
    put_u32(b, WK_GGUF_ARRAY);
    put_u32(b, WK_GGUF_F32);
    put_u64(b, 3);
    float sc[3] = {0.f, -1.f, -2.5f};
    put(b, sc, sizeof sc);
    if (v == V_DUP_KEY) {
        put_str(b, "test.eps");
        put_u32(b, WK_GGUF_F32);
        put(b, &eps, 4);
    }
    if (v == V_ALIGN64 || v == V_BAD_ALIGN) {
        put_str(b, "general.alignment");
        put_u32(b, WK_GGUF_U32);
        put_u32(b, v == V_ALIGN64 ? 64 : 48);
    }

    // tensor "a": f32 [4, 2] = 32 bytes at offset 0
    put_str(b, "a");
    uint32_t nd = v == V_DIMS0 ? 0 : v == V_DIMS5 ? 5 : 2;
    put_u32(b, nd);
    for (uint32_t d = 0; d < nd; d++)
        put_u64(b, v == V_DIM_ZERO && d == 1 ? 0 : v == V_HUGE_DIMS ? (1ull << 40) : (d == 0 ? 4 : 2));
    put_u32(b, v == V_BAD_TYPE ? 99 : v == V_UNSUPPORTED_TYPE ? KN_Q8_K : KN_F32);
    put_u64(b, 0);
    // tensor "b.weight": q8_0 [32, 3] = 3 * 34 = 102 bytes, after "a" (aligned)
    put_str(b, v == V_DUP_TENSOR ? "a" : "b.weight");
    put_u32(b, 2);
    put_u64(b, v == V_BAD_ROW ? 33 : 32);
    put_u64(b, 3);
    put_u32(b, KN_Q8_0);
    uint64_t off_b = align;
    if (v == V_MISALIGNED)
        off_b = align + 4;
    if (v == V_OVERLAP)
        off_b = 0;
    if (v == V_OOB_TENSOR)
        off_b = align * 4;
    put_u64(b, off_b);

    pad_to(b, align);
    size_t data = b->n;
    for (int i = 0; i < 8; i++) {
        float f = (float)i;
        put(b, &f, 4);
    }
    pad_to(b, align);
    // damaged offsets keep the file its normal size
    size_t fill = (v == V_OVERLAP || v == V_OOB_TENSOR || v == V_MISALIGNED) ? align : off_b;
    while (b->n < data + fill + 102) {
        uint8_t x = (uint8_t)b->n;
        put(b, &x, 1);
    }
}

static const char *tmp_path(void) {
    static char path[64];
    if (!path[0])
        snprintf(path, sizeof path, "/tmp/test_gguf.%d.gguf", (int)getpid());
    return path;
}

static int write_file(const uint8_t *p, size_t n) {
    FILE *f = fopen(tmp_path(), "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(p, 1, n, f) : 0;
    fclose(f);
    return w == n ? 0 : -1;
}

/* Opens the file and returns rc; on failure checks the error is clean. */
static int try_open(const uint8_t *p, size_t n, char *err, size_t errlen) {
    wk_gguf *g = (wk_gguf *)1;
    if (write_file(p, n) < 0) {
        KT_FAIL_("cannot write %s", tmp_path());
        return -1;
    }
    err[0] = 0;
    int rc = wk_gguf_open(tmp_path(), &g, err, errlen);
    if (rc < 0) {
        ASSERT_TRUE(g == NULL);
        ASSERT_TRUE(err[0] != 0);
    } else {
        wk_gguf_close(g);
    }
    return rc;
}

static void test_valid(void) {
    wbuf b = {0};
    char err[256];
    build(V_OK, &b);
    ASSERT_EQ(write_file(b.p, b.n), 0);
    wk_gguf *g = NULL;
    int rc = wk_gguf_open(tmp_path(), &g, err, sizeof err);
    ASSERT_EQ(rc, 0);
    if (rc) {
        fprintf(stderr, "open: %s\n", err);
        free(b.p);
        return;
    }
    const char *s;
    size_t len;
    int64_t i64;
    float f;
    int bl;
    ASSERT_EQ(wk_gguf_get_str(g, "general.architecture", &s, &len), 0);
    ASSERT_EQ(len, 4);
    ASSERT_TRUE(!memcmp(s, "test", 4));
    ASSERT_EQ(wk_gguf_get_i64(g, "test.block_count", &i64), 0);
    ASSERT_EQ(i64, 18);
    ASSERT_EQ(wk_gguf_get_i64(g, "test.big", &i64), 0);
    ASSERT_EQ(i64, -5);
    ASSERT_EQ(wk_gguf_get_f32(g, "test.eps", &f), 0);
    ASSERT_NEAR(f, 1e-6, 1e-12);
    ASSERT_EQ(wk_gguf_get_bool(g, "test.flag", &bl), 0);
    ASSERT_EQ(bl, 1);
    ASSERT_EQ(wk_gguf_get_i64(g, "nope", &i64), -ENOENT);
    ASSERT_EQ(wk_gguf_get_i64(g, "test.eps", &i64), -EINVAL);
    ASSERT_EQ(wk_gguf_get_f32(g, "test.block_count", &f), -EINVAL);
    ASSERT_EQ(wk_gguf_get_str(g, "test.block_count", &s, &len), -EINVAL);

    wk_gguf_vtype et;
    uint64_t n;
    const void *data;
    ASSERT_EQ(wk_gguf_get_arr(g, "tokenizer.tokens", &et, &n, &data), 0);
    ASSERT_EQ(et, WK_GGUF_STRING);
    ASSERT_EQ(n, 3);
    ASSERT_EQ(wk_gguf_arr_str(g, "tokenizer.tokens", 2, &s, &len), 0);
    ASSERT_EQ(len, 5);
    ASSERT_TRUE(!memcmp(s, "hello", 5));
    ASSERT_EQ(wk_gguf_arr_str(g, "tokenizer.tokens", 1, &s, &len), 0);
    ASSERT_EQ(len, 0);
    ASSERT_EQ(wk_gguf_arr_str(g, "tokenizer.tokens", 3, &s, &len), -EINVAL);
    ASSERT_EQ(wk_gguf_arr_str(g, "tokenizer.scores", 0, &s, &len), -EINVAL);
    ASSERT_EQ(wk_gguf_get_arr(g, "tokenizer.scores", &et, &n, &data), 0);
    ASSERT_EQ(et, WK_GGUF_F32);
    ASSERT_EQ(n, 3);
    float sc[3];
    memcpy(sc, data, sizeof sc);
    ASSERT_NEAR(sc[2], -2.5, 0);

    ASSERT_EQ(wk_gguf_n_tensors(g), 2);
    const wk_gguf_tensor *a = wk_gguf_tensor_get(g, "a");
    const wk_gguf_tensor *w = wk_gguf_tensor_get(g, "b.weight");
    ASSERT_TRUE(a && w);
    ASSERT_TRUE(wk_gguf_tensor_get(g, "b") == NULL);
    ASSERT_TRUE(wk_gguf_tensor_at(g, 0) == a);
    ASSERT_TRUE(wk_gguf_tensor_at(g, 2) == NULL);
    if (a && w) {
        ASSERT_EQ(a->type, KN_F32);
        ASSERT_EQ(a->n_dims, 2);
        ASSERT_EQ(a->ne[0], 4);
        ASSERT_EQ(a->ne[1], 2);
        ASSERT_EQ(a->ne[2], 1);
        ASSERT_EQ(a->size, 32);
        float v7;
        memcpy(&v7, (const float *)a->data + 7, 4);
        ASSERT_NEAR(v7, 7.0, 0);
        ASSERT_EQ(w->type, KN_Q8_0);
        ASSERT_EQ(w->size, 102);
        ASSERT_EQ((const uint8_t *)w->data - (const uint8_t *)a->data, 32);
        ASSERT_EQ((uintptr_t)w->data % 32, 0);
    }
    wk_gguf_close(g);
    wk_gguf_close(NULL);

    // Version 2 has the same layout.
    b.p[4] = 2;
    ASSERT_EQ(try_open(b.p, b.n, err, sizeof err), 0);

    // Every truncation fails cleanly.
    int bad = 0;
    for (size_t cut = 0; cut < b.n; cut++) {
        if (try_open(b.p, cut, err, sizeof err) >= 0) {
            bad++;
            fprintf(stderr, "truncated at %zu of %zu: open succeeded\n", cut, b.n);
        }
    }
    ASSERT_EQ(bad, 0);
    free(b.p);
}

static void expect_fail(int v, const char *what, const char *needle) {
    wbuf b = {0};
    char err[256];
    build(v, &b);
    int rc = try_open(b.p, b.n, err, sizeof err);
    if (rc >= 0)
        KT_FAIL_("%s: open succeeded", what);
    else if (needle && !strstr(err, needle))
        KT_FAIL_("%s: message \"%s\" lacks \"%s\"", what, err, needle);
    kt_checks++;
    free(b.p);
}

static void test_damaged(void) {
    expect_fail(V_BAD_MAGIC, "bad magic", "magic");
    expect_fail(V_VERSION1, "version 1", "version 1");
    expect_fail(V_VERSION4, "version 4", "version 4");
    expect_fail(V_HUGE_TENSORS, "huge tensor count", "tensor count");
    expect_fail(V_HUGE_KV, "huge kv count", "metadata count");
    expect_fail(V_HUGE_STRLEN, "huge string", "general.architecture");
    expect_fail(V_HUGE_ARRAY, "huge array", "tokenizer.tokens");
    expect_fail(V_NESTED_ARRAY, "nested array", "tokenizer.tokens");
    expect_fail(V_UNKNOWN_VTYPE, "unknown value type", "test.block_count");
    expect_fail(V_MISALIGNED, "misaligned data", "b.weight");
    expect_fail(V_OOB_TENSOR, "tensor past the end", "b.weight");
    expect_fail(V_DUP_TENSOR, "duplicate tensor", "duplicate tensor name a");
    expect_fail(V_DUP_KEY, "duplicate key", "test.eps");
    expect_fail(V_DIMS0, "0 dims", "dims");
    expect_fail(V_DIMS5, "5 dims", "dims");
    expect_fail(V_DIM_ZERO, "zero dim", "tensor a");
    expect_fail(V_BAD_TYPE, "unknown tensor type", "tensor a");
    expect_fail(V_UNSUPPORTED_TYPE, "unsupported tensor type", "tensor a");
    expect_fail(V_BAD_ROW, "row not a block multiple", "b.weight");
    expect_fail(V_OVERLAP, "overlapping tensors", "overlaps");
    expect_fail(V_HUGE_DIMS, "element count overflow", "tensor a");
    expect_fail(V_BAD_ALIGN, "alignment not a power of two", "alignment");

    wbuf b = {0};
    char err[256];
    build(V_ALIGN64, &b);
    ASSERT_EQ(try_open(b.p, b.n, err, sizeof err), 0);
    free(b.p);

    wk_gguf *g = (wk_gguf *)1;
    ASSERT_EQ(wk_gguf_open("/nonexistent/x.gguf", &g, err, sizeof err), -ENOENT);
    ASSERT_TRUE(g == NULL);
    ASSERT_TRUE(strstr(err, "/nonexistent/x.gguf") != NULL);
}

static void test_gemma(void) {
    const char *path = getenv("KOLM_TEST_MODEL");
    if (!path)
        path = "/tmp/gemma.gguf";
    if (access(path, R_OK) != 0) {
        printf("test_gguf: %s absent, skipping the real-model checks\n", path);
        return;
    }
    char err[256];
    wk_gguf *g = NULL;
    int rc = wk_gguf_open(path, &g, err, sizeof err);
    ASSERT_EQ(rc, 0);
    if (rc) {
        fprintf(stderr, "open %s: %s\n", path, err);
        return;
    }
    const char *s;
    size_t len;
    int64_t v;
    ASSERT_EQ(wk_gguf_get_str(g, "general.architecture", &s, &len), 0);
    if (len != 6 || memcmp(s, "gemma3", 6)) {
        printf("test_gguf: %s is not gemma3, skipping its metadata checks\n", path);
        wk_gguf_close(g);
        return;
    }
    ASSERT_EQ(wk_gguf_get_i64(g, "gemma3.block_count", &v), 0);
    ASSERT_EQ(v, 18);
    ASSERT_EQ(wk_gguf_get_i64(g, "gemma3.embedding_length", &v), 0);
    ASSERT_EQ(v, 640);
    ASSERT_EQ(wk_gguf_n_tensors(g), 236);
    wk_gguf_vtype et;
    uint64_t n;
    ASSERT_EQ(wk_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, NULL), 0);
    ASSERT_EQ(et, WK_GGUF_STRING);
    ASSERT_EQ(n, 262144);
    ASSERT_EQ(wk_gguf_arr_str(g, "tokenizer.ggml.tokens", 2, &s, &len), 0);
    ASSERT_TRUE(len == 5 && !memcmp(s, "<bos>", 5));
    const wk_gguf_tensor *t = wk_gguf_tensor_get(g, "token_embd.weight");
    ASSERT_TRUE(t != NULL);
    if (t) {
        ASSERT_EQ(t->ne[0], 640);
        ASSERT_EQ(t->ne[1], 262144);
    }
    ASSERT_TRUE(wk_gguf_tensor_get(g, "blk.17.attn_q.weight") != NULL);
    ASSERT_TRUE(wk_gguf_tensor_get(g, "blk.18.attn_q.weight") == NULL);
    wk_gguf_close(g);
}

int main(void) {
    test_valid();
    test_damaged();
    test_gemma();
    unlink(tmp_path());
    return kt_done("test_gguf");
}
