/* test_tok: wk_tok on the real Gemma 3 GGUF (skipped when /tmp/gemma.gguf or
 * $KOLM_TEST_MODEL is absent): round trips, BOS handling, special-token parsing
 * on/off, EOG set, capacity protocol, and a hand-checked SentencePiece case.
 * Exact ids against llama.cpp are checked by tests/integration/test_tokenizer.py. */
#include "worker/wk_tok.h"

#include <errno.h>
#include <unistd.h>

#include "tests/unit/kt.h"

static int enc(const wk_tok *t, const char *s, int bos, int special, int32_t *ids, int cap) {
    return wk_tok_encode(t, s, strlen(s), bos, special, ids, cap);
}

/* decode(encode(s)) == s, pieces concatenated. */
static void roundtrip(const wk_tok *t, const char *s) {
    int32_t ids[4096];
    char out[16384];
    size_t ol = 0;
    int n = enc(t, s, 0, 0, ids, 4096);
    ASSERT_TRUE(n >= 0 && n <= 4096);
    for (int i = 0; i < n && n <= 4096; i++) {
        const char *p;
        int pl = wk_tok_piece(t, ids[i], 0, &p);
        ASSERT_TRUE(pl >= 0);
        if (pl > 0 && ol + (size_t)pl < sizeof out) {
            memcpy(out + ol, p, (size_t)pl);
            ol += (size_t)pl;
        }
    }
    out[ol] = 0;
    if (ol != strlen(s) || memcmp(out, s, ol))
        KT_FAIL_("round trip of \"%s\" gave \"%s\"", s, out);
    kt_checks++;
}

int main(void) {
    const char *path = getenv("KOLM_TEST_MODEL");
    if (!path)
        path = "/tmp/gemma.gguf";
    if (access(path, R_OK) != 0) {
        printf("test_tok: %s absent, skipping\n", path);
        return kt_done("test_tok");
    }
    char err[256];
    wk_gguf *g = NULL;
    wk_tok *t = NULL;
    ASSERT_EQ(wk_gguf_open(path, &g, err, sizeof err), 0);
    if (!g)
        return kt_done("test_tok");
    int rc = wk_tok_load(g, &t, err, sizeof err);
    ASSERT_EQ(rc, 0);
    if (rc) {
        fprintf(stderr, "load: %s\n", err);
        wk_gguf_close(g);
        return kt_done("test_tok");
    }
    ASSERT_EQ(wk_tok_n_vocab(t), 262144);
    ASSERT_EQ(wk_tok_bos(t), 2);
    ASSERT_EQ(wk_tok_eos(t), 1);
    int32_t sot = wk_tok_find(t, "<start_of_turn>"), eot = wk_tok_find(t, "<end_of_turn>");
    ASSERT_EQ(sot, 105);
    ASSERT_EQ(eot, 106);
    ASSERT_EQ(wk_tok_find(t, "no-such-token-xyz"), -1);
    ASSERT_TRUE(wk_tok_is_eog(t, 1));
    ASSERT_TRUE(wk_tok_is_eog(t, eot));
    ASSERT_TRUE(!wk_tok_is_eog(t, sot));
    ASSERT_TRUE(!wk_tok_is_eog(t, 2));
    ASSERT_TRUE(!wk_tok_is_eog(t, -1));

    int32_t ids[256];
    // BOS only when asked (Gemma's add_bos_token is true).
    ASSERT_EQ(enc(t, "", 1, 0, ids, 256), 1);
    ASSERT_EQ(ids[0], 2);
    ASSERT_EQ(enc(t, "", 0, 0, ids, 256), 0);
    int n1 = enc(t, "Hello world", 1, 0, ids, 256);
    ASSERT_TRUE(n1 >= 2);
    ASSERT_EQ(ids[0], 2);
    int n0 = enc(t, "Hello world", 0, 0, ids, 256);
    ASSERT_EQ(n0, n1 - 1);
    ASSERT_TRUE(ids[0] != 2);
    // Known ids (llama.cpp): "Hello world" -> [9259, 1902]; "  " is the user-defined token 138.
    ASSERT_EQ(n0, 2);
    ASSERT_EQ(ids[0], 9259);
    ASSERT_EQ(ids[1], 1902);
    ASSERT_EQ(enc(t, "  ", 0, 0, ids, 256), 1);
    ASSERT_EQ(ids[0], 138);
    ASSERT_EQ(enc(t, "\n", 0, 0, ids, 256), 1);
    ASSERT_EQ(ids[0], 107);

    // Special parsing: control tokens only with parse_special.
    ASSERT_EQ(enc(t, "<start_of_turn>", 0, 1, ids, 256), 1);
    ASSERT_EQ(ids[0], sot);
    int ns = enc(t, "<start_of_turn>", 0, 0, ids, 256);
    ASSERT_TRUE(ns > 1);
    for (int i = 0; i < ns && i < 256; i++)
        ASSERT_TRUE(ids[i] != sot);
    int nm = enc(t, "<start_of_turn>user\nhi<end_of_turn>\n", 1, 1, ids, 256);
    ASSERT_TRUE(nm >= 6);
    ASSERT_EQ(ids[0], 2);
    ASSERT_EQ(ids[1], sot);
    ASSERT_EQ(ids[3], 107); // "\n" after "user"
    ASSERT_TRUE(nm > 2 && ids[nm - 2] == eot);

    // Pieces: control tokens are "" unless rendered; byte tokens are the byte.
    const char *p;
    ASSERT_EQ(wk_tok_piece(t, sot, 0, &p), 0);
    ASSERT_EQ(wk_tok_piece(t, sot, 1, &p), 15);
    ASSERT_TRUE(!memcmp(p, "<start_of_turn>", 15));
    ASSERT_EQ(wk_tok_piece(t, 9259, 0, &p), 5);
    ASSERT_TRUE(!memcmp(p, "Hello", 5));
    ASSERT_EQ(wk_tok_piece(t, 1902, 0, &p), 6);
    ASSERT_TRUE(!memcmp(p, " world", 6));
    int32_t b41 = wk_tok_find(t, "<0x41>");
    ASSERT_TRUE(b41 >= 0);
    ASSERT_EQ(wk_tok_piece(t, b41, 0, &p), 1);
    ASSERT_EQ(p[0], 'A');
    ASSERT_EQ(wk_tok_piece(t, 262144, 0, &p), -EINVAL);
    ASSERT_EQ(wk_tok_piece(t, -1, 0, &p), -EINVAL);

    // Capacity protocol: the total is returned even when it exceeds cap.
    const char *long_s = "The quick brown fox jumps over the lazy dog again and again.";
    int full = enc(t, long_s, 1, 0, ids, 256);
    int32_t small[3];
    ASSERT_EQ(enc(t, long_s, 1, 0, small, 3), full);
    ASSERT_EQ(small[0], ids[0]);
    ASSERT_EQ(small[2], ids[2]);
    ASSERT_EQ(enc(t, long_s, 1, 0, NULL, 0), full);

    // Invalid UTF-8 is tokenized byte-wise and round-trips.
    ASSERT_TRUE(enc(t, "bad \xff\xfe bytes \xe2\x28", 0, 0, ids, 256) > 0);

    const char *rt[] = {"Hello, world!", " leading and trailing ", "tabs\tand\nnewlines\n\n\n",
                        "Ünïcödé café naïve", "中文：你好，世界！", "日本語のテキスト", "Привет, мир",
                        "emoji 😀👍🏽 👨‍👩‍👧‍👦", "code: for (i = 0; i < n; i++) { x[i] = 0; }",
                        "numbers 1234567890 3.14", "<div>html</div>", "bad\xffxyzw and \xe2\x28" "abc end",
                        "                                          many spaces"};
    for (size_t i = 0; i < sizeof rt / sizeof *rt; i++)
        roundtrip(t, rt[i]);

    wk_tok_free(t);
    wk_tok_free(NULL);
    wk_gguf_close(g);
    return kt_done("test_tok");
}
