/* Unit tests for common/cm_crypto and common/cm_kolm: SHA-256 and encoding
 * vectors, CIDs computed independently, key files and their permissions,
 * signatures, the keyring, and .kolm pack/open/verify with embedded and
 * referenced blobs, plus a tampered copy for every check open and verify make.
 * Everything lives in one mkdtemp directory under /tmp, removed at the end. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cm_crypto.h"
#include "common/cm_canon.h"
#include "common/cm_kolm.h"
#include "tests/unit/kt.h"

#define ASSERT_CONTAINS(s, sub)                                                                                \
    do {                                                                                                       \
        kt_checks++;                                                                                           \
        const char *kt_s_ = (s), *kt_sub_ = (sub);                                                             \
        if (!kt_s_ || !strstr(kt_s_, kt_sub_))                                                                 \
            KT_FAIL_("%s contains \"%s\": \"%s\"", #s, kt_sub_, kt_s_ ? kt_s_ : "(null)");                     \
    } while (0)

static char g_root[64]; // the mkdtemp directory
static char g_home[256], g_in[256], g_keys[256], g_ring[256], g_empty[256];

/* ---- small helpers (independent of the code under test) ---- */

static void path_of(char *out, size_t n, const char *dir, const char *name) {
    snprintf(out, n, "%s/%s", dir, name);
}

static void write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    ASSERT_TRUE(f != NULL);
    if (!f)
        return;
    ASSERT_EQ(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* The whole file (malloc'd, *n set), or NULL. */
static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    *n = 0;
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)l + 1);
    if (p && fread(p, 1, (size_t)l, f) != (size_t)l) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p)
        *n = (size_t)l;
    return p;
}

static uint64_t rd_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void wr_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void hexstr(const uint8_t *p, size_t n, char *out) {
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
}

/* The test's own CIDv1 text: 'b' + RFC 4648 base32 lowercase without padding of
 * 0x01, varint(codec), 0x12, 0x20, digest. */
static void my_cid(unsigned codec, const uint8_t d[32], char *out) {
    uint8_t b[48];
    size_t n = 0;
    b[n++] = 0x01;
    do {
        uint8_t c = codec & 0x7f;
        codec >>= 7;
        b[n++] = (uint8_t)(c | (codec ? 0x80 : 0));
    } while (codec);
    b[n++] = 0x12;
    b[n++] = 0x20;
    memcpy(b + n, d, 32);
    n += 32;
    const char *al = "abcdefghijklmnopqrstuvwxyz234567";
    size_t o = 0, bit = 0, nbits = n * 8;
    out[o++] = 'b';
    for (; bit < nbits; bit += 5) { // 5 bits at a time, MSB first, zero-padded at the end
        unsigned v = 0;
        for (size_t k = 0; k < 5; k++) {
            size_t i = bit + k;
            unsigned x = i < nbits ? (b[i / 8] >> (7 - i % 8)) & 1 : 0;
            v = v << 1 | x;
        }
        out[o++] = al[v];
    }
    out[o] = 0;
}

static void fill(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* Opens path expecting failure with a non-empty error (containing want, when
 * given) and no artifact handed out. */
static void expect_open_fails(const char *path, const char *want, int line) {
    cm_kolm *k = (cm_kolm *)1;
    char err[512] = "";
    int rc = cm_kolm_open(path, g_home, &k, err, sizeof err);
    kt_checks++;
    if (rc != -1 || k != NULL || !err[0] || (want && !strstr(err, want))) {
        kt_failures++;
        fprintf(stderr, "%s:%d (from line %d): open of %s: rc %d, out %p, err \"%s\" (want \"%s\")\n", __FILE__,
                __LINE__, line, path, rc, (void *)k, err, want ? want : "");
    }
    if (rc == 0)
        cm_kolm_close(k);
}
#define EXPECT_OPEN_FAILS(path, want) expect_open_fails(path, want, __LINE__)

/* ---- SHA-256, hex, base64url ---- */

static void test_sha256(void) {
    uint8_t d[32], d2[32];
    char hx[65];
    cm_sha256("", 0, d);
    cm_hex(d, 32, hx);
    ASSERT_STREQ(hx, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    cm_sha256("abc", 3, d);
    cm_hex(d, 32, hx);
    ASSERT_STREQ(hx, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m56 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    cm_sha256(m56, strlen(m56), d);
    cm_hex(d, 32, hx);
    ASSERT_STREQ(hx, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    // incremental in odd pieces == one shot
    static uint8_t big[100000];
    fill(big, sizeof big, 7);
    cm_sha256(big, sizeof big, d);
    cm_sha256_ctx c;
    ASSERT_EQ(cm_sha256_init(&c), 0);
    size_t off = 0, step = 1;
    while (off < sizeof big) {
        size_t n = step < sizeof big - off ? step : sizeof big - off;
        cm_sha256_update(&c, big + off, n);
        off += n;
        step = step * 3 + 1;
    }
    cm_sha256_update(&c, big, 0); // an empty update changes nothing
    cm_sha256_final(&c, d2);
    ASSERT_TRUE(!memcmp(d, d2, 32));
    ASSERT_TRUE(c.md == NULL); // final frees

    // free alone is enough, and twice is harmless
    ASSERT_EQ(cm_sha256_init(&c), 0);
    cm_sha256_update(&c, "x", 1);
    cm_sha256_free(&c);
    cm_sha256_free(&c);
    ASSERT_TRUE(c.md == NULL);
}

static void test_hex(void) {
    uint8_t all[256], back[256];
    char hx[513];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    cm_hex(all, 256, hx);
    ASSERT_EQ(strlen(hx), 512);
    ASSERT_TRUE(!strncmp(hx, "000102", 6));
    ASSERT_TRUE(!strcmp(hx + 500, "fafbfcfdfeff"));
    memset(back, 0, sizeof back);
    ASSERT_EQ(cm_unhex(hx, 512, back, 256), 0);
    ASSERT_TRUE(!memcmp(all, back, 256));
    cm_hex(all, 0, hx);
    ASSERT_STREQ(hx, "");
    ASSERT_EQ(cm_unhex("", 0, back, 0), 0);

    uint8_t o[2];
    ASSERT_EQ(cm_unhex("abcd", 4, o, 2), 0);
    ASSERT_TRUE(o[0] == 0xab && o[1] == 0xcd);
    ASSERT_EQ(cm_unhex("ABCD", 4, o, 2), -1); // canonical hex is lowercase
    ASSERT_EQ(cm_unhex("aBcd", 4, o, 2), -1);
    ASSERT_EQ(cm_unhex("abc", 3, o, 2), -1);   // odd
    ASSERT_EQ(cm_unhex("abc", 3, o, 1), -1);   // odd
    ASSERT_EQ(cm_unhex("abcdef", 6, o, 2), -1); // too long for n
    ASSERT_EQ(cm_unhex("ab", 2, o, 2), -1);     // too short for n
    ASSERT_EQ(cm_unhex("agcd", 4, o, 2), -1);
    ASSERT_EQ(cm_unhex("ab d", 4, o, 2), -1);
    ASSERT_EQ(cm_unhex("0x12", 4, o, 2), -1);
    ASSERT_EQ(cm_unhex("ab\0d", 4, o, 2), -1);
    ASSERT_EQ(cm_unhex("/0:9", 4, o, 2), -1); // the characters next to '0'..'9'
    ASSERT_EQ(cm_unhex("`0g0", 4, o, 2), -1); // and next to 'a'..'f'
}

static void test_b64url(void) {
    static const struct {
        const char *in, *out;
    } v[] = {{"", ""},           {"f", "Zg"},           {"fo", "Zm8"},         {"foo", "Zm9v"},
             {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t n = strlen(v[i].in);
        char buf[32];
        ASSERT_EQ(cm_b64url_len(n), strlen(v[i].out) + 1);
        cm_b64url(v[i].in, n, buf);
        ASSERT_STREQ(buf, v[i].out);
        uint8_t back[16];
        size_t got = 99;
        ASSERT_EQ(cm_unb64url(v[i].out, strlen(v[i].out), back, sizeof back, &got), 0);
        ASSERT_EQ(got, n);
        ASSERT_TRUE(!memcmp(back, v[i].in, n));
    }
    // the url-safe alphabet: 0xfb 0xff is "+/8=" in standard base64
    const uint8_t ff[2] = {0xfb, 0xff};
    char buf[8];
    cm_b64url(ff, 2, buf);
    ASSERT_STREQ(buf, "-_8");
    uint8_t out[8];
    size_t got = 0;
    ASSERT_EQ(cm_unb64url("-_8", 3, out, sizeof out, &got), 0);
    ASSERT_TRUE(got == 2 && out[0] == 0xfb && out[1] == 0xff);
    ASSERT_EQ(cm_unb64url("+/8", 3, out, sizeof out, &got), -1);
    ASSERT_EQ(cm_unb64url("-_8=", 4, out, sizeof out, &got), -1);
    ASSERT_EQ(cm_unb64url("Zg==", 4, out, sizeof out, &got), -1);
    ASSERT_EQ(cm_unb64url("Zm8=", 4, out, sizeof out, &got), -1);
    ASSERT_EQ(cm_unb64url("Zm9v\n", 5, out, sizeof out, &got), -1);
    ASSERT_EQ(cm_unb64url("Zm 9v", 5, out, sizeof out, &got), -1);
    ASSERT_EQ(cm_unb64url("Z", 1, out, sizeof out, &got), -1); // 6 bits is no byte
    ASSERT_EQ(cm_unb64url("Zm9vYmFy", 8, out, 5, &got), -1);  // over cap
    ASSERT_EQ(cm_unb64url("Zm9vYmFy", 8, out, 6, &got), 0);   // exactly cap
    ASSERT_EQ(got, 6);
    // only the given length is decoded
    ASSERT_EQ(cm_unb64url("Zm9vYmFy", 4, out, sizeof out, &got), 0);
    ASSERT_TRUE(got == 3 && !memcmp(out, "foo", 3));
    // non-zero trailing bits are not the canonical encoding of any bytes
    ASSERT_EQ(cm_unb64url("AA", 2, out, sizeof out, &got), 0);
    ASSERT_EQ(cm_unb64url("AB", 2, out, sizeof out, &got), -1);
    ASSERT_EQ(cm_unb64url("Zh", 2, out, sizeof out, &got), -1);
}

/* ---- CIDs and canonical JSON ---- */

static void test_cid(void) {
    uint8_t d[32];
    char c[CM_CID_MAX], mine[CM_CID_MAX + 16];
    cm_sha256("", 0, d);
    cm_cid(CM_CODEC_RAW, d, c);
    ASSERT_STREQ(c, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku");
    my_cid(0x55, d, mine);
    ASSERT_STREQ(mine, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"); // the test's own base32
    cm_cid(CM_CODEC_JSON, d, c);
    my_cid(0x0200, d, mine);
    ASSERT_STREQ(c, mine);
    ASSERT_TRUE(!strncmp(c, "bagaaiera", 9));
    ASSERT_EQ(strlen(c), 61); // 'b' + ceil(37 bytes * 8 / 5)
    cm_cid(CM_CODEC_RAW, d, c);
    ASSERT_EQ(strlen(c), 59); // 'b' + ceil(36 bytes * 8 / 5)
    for (int i = 0; i < 20; i++) {
        fill(d, 32, (uint32_t)i * 977u + 1);
        cm_cid(CM_CODEC_RAW, d, c);
        my_cid(0x55, d, mine);
        ASSERT_STREQ(c, mine);
        ASSERT_TRUE(!strncmp(c, "bafkrei", 7));
        cm_cid(CM_CODEC_JSON, d, c);
        my_cid(0x0200, d, mine);
        ASSERT_STREQ(c, mine);
        ASSERT_TRUE(!strncmp(c, "bagaaiera", 9));
    }
}

static void test_canonical_json(void) {
    json_t *j = json_loads("{ \"b\" : [1, 2, {\"z\":true, \"a\":null}], \"a\": \"h\\u00e9/\" }", 0, NULL);
    ASSERT_TRUE(j != NULL);
    size_t n = 0;
    char *s = cm_canonical_json(j, &n);
    ASSERT_STREQ(s, "{\"a\":\"h\xc3\xa9/\",\"b\":[1,2,{\"a\":null,\"z\":true}]}");
    ASSERT_EQ(n, s ? strlen(s) : 0);
    free(s);
    s = cm_canonical_json(j, NULL); // len is optional
    ASSERT_TRUE(s != NULL);
    free(s);
    json_decref(j);
    // Reals as Python's repr and escapes as json.dumps writes them (the expected
    // strings are what CPython 3 prints for the same values).
    static const struct {
        double v;
        const char *want;
    } reals[] = {{0.1, "0.1"}, {0.5, "0.5"}, {1.0, "1.0"}, {100.0, "100.0"}, {-0.0, "-0.0"}, {0.0, "0.0"},
                 {0.1 + 0.2, "0.30000000000000004"}, {1e22, "1e+22"}, {1e16, "1e+16"},
                 {1234567890123456.0, "1234567890123456.0"}, {0.0001, "0.0001"}, {1e-05, "1e-05"},
                 {1.5e-7, "1.5e-07"}, {-2.5e300, "-2.5e+300"}, {123.456, "123.456"}, {5e-324, "5e-324"},
                 {1.7976931348623157e308, "1.7976931348623157e+308"}, {0.001234, "0.001234"}};
    for (size_t i = 0; i < sizeof reals / sizeof *reals; i++) {
        json_t *r = json_real(reals[i].v);
        char *t = cm_canonical_json(r, NULL);
        ASSERT_STREQ(t, reals[i].want);
        free(t);
        json_decref(r);
    }
    json_t *str = json_stringn("a\x1f\x7f\n\"\\/\xe2\x80\xa8\0z", 12);
    char *t = cm_canonical_json(str, NULL);
    ASSERT_STREQ(t, "\"a\\u001f\x7f\\n\\\"\\\\/\xe2\x80\xa8\\u0000z\"");
    free(t);
    json_decref(str);
}

/* ---- keys, signatures, keyring ---- */

static void test_keys(void) {
    char err[512], p[512], q[512];
    cm_key a, b, l;
    ASSERT_EQ(cm_key_generate(&a), 0);
    ASSERT_EQ(cm_key_generate(&b), 0);
    ASSERT_TRUE(a.has_secret);
    ASSERT_TRUE(memcmp(a.pk, b.pk, CM_PK_LEN) != 0);
    ASSERT_TRUE(!memcmp(a.sk + 32, a.pk, 32)); // libsodium's seed||pk
    // key id: hex of the first 8 bytes of SHA-256(pk), computed here independently
    uint8_t h[32];
    char want_id[17];
    cm_sha256(a.pk, CM_PK_LEN, h);
    hexstr(h, 8, want_id);
    ASSERT_STREQ(a.id, want_id);
    char id2[CM_KEY_ID_LEN + 1];
    cm_key_id(a.pk, id2);
    ASSERT_STREQ(id2, want_id);
    ASSERT_EQ(strlen(a.id), CM_KEY_ID_LEN);

    // save: NAME.key 0600 and NAME.pub
    err[0] = 0;
    ASSERT_EQ(cm_key_save(&a, g_keys, "alice", err, sizeof err), 0);
    ASSERT_STREQ(err, "");
    struct stat st;
    path_of(p, sizeof p, g_keys, "alice.key");
    ASSERT_EQ(stat(p, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0600);
    path_of(q, sizeof q, g_keys, "alice.pub");
    ASSERT_EQ(stat(q, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0644);
    // the files are one line of base64url: the seed, and the public key
    size_t n = 0;
    uint8_t *t = read_file(p, &n);
    char b64[64];
    cm_b64url(a.sk, 32, b64);
    ASSERT_EQ(n, strlen(b64) + 1);
    ASSERT_TRUE(t && n == strlen(b64) + 1 && !memcmp(t, b64, n - 1) && t[n - 1] == '\n');
    free(t);
    t = read_file(q, &n);
    cm_b64url(a.pk, 32, b64);
    ASSERT_TRUE(t && n == strlen(b64) + 1 && !memcmp(t, b64, n - 1) && t[n - 1] == '\n');
    free(t);

    // load secret: the same pair and id
    ASSERT_EQ(cm_key_load_secret(p, &l, err, sizeof err), 0);
    ASSERT_TRUE(l.has_secret);
    ASSERT_TRUE(!memcmp(l.pk, a.pk, CM_PK_LEN));
    ASSERT_TRUE(!memcmp(l.sk, a.sk, 64));
    ASSERT_STREQ(l.id, a.id);
    // load public: the pk, no secret
    ASSERT_EQ(cm_key_load_public(q, &l, err, sizeof err), 0);
    ASSERT_TRUE(!l.has_secret);
    ASSERT_TRUE(!memcmp(l.pk, a.pk, CM_PK_LEN));
    uint8_t zero[64] = {0};
    ASSERT_TRUE(!memcmp(l.sk, zero, 64));
    ASSERT_STREQ(l.id, a.id);

    // never replace an existing .key (and leave the .pub alone too)
    err[0] = 0;
    ASSERT_EQ(cm_key_save(&b, g_keys, "alice", err, sizeof err), -1);
    ASSERT_TRUE(err[0] != 0);
    ASSERT_CONTAINS(err, "alice.key");
    ASSERT_EQ(cm_key_load_secret(p, &l, err, sizeof err), 0);
    ASSERT_TRUE(!memcmp(l.pk, a.pk, CM_PK_LEN));
    ASSERT_EQ(cm_key_load_public(q, &l, err, sizeof err), 0);
    ASSERT_TRUE(!memcmp(l.pk, a.pk, CM_PK_LEN));
    // a public-only key cannot be saved
    cm_key pub = l;
    err[0] = 0;
    ASSERT_EQ(cm_key_save(&pub, g_keys, "pubonly", err, sizeof err), -1);
    ASSERT_TRUE(err[0] != 0);
    path_of(p, sizeof p, g_keys, "pubonly.pub");
    ASSERT_TRUE(access(p, F_OK) != 0);

    // a secret file readable by others (or the group) is refused, with the fix named
    path_of(p, sizeof p, g_keys, "alice.key");
    ASSERT_EQ(chmod(p, 0644), 0);
    err[0] = 0;
    ASSERT_EQ(cm_key_load_secret(p, &l, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "chmod 600");
    ASSERT_CONTAINS(err, "alice.key");
    ASSERT_EQ(chmod(p, 0640), 0);
    err[0] = 0;
    ASSERT_EQ(cm_key_load_secret(p, &l, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "chmod 600");
    ASSERT_EQ(chmod(p, 0600), 0);
    ASSERT_EQ(cm_key_load_secret(p, &l, err, sizeof err), 0);
    // a missing file names itself
    path_of(p, sizeof p, g_keys, "nobody.key");
    err[0] = 0;
    ASSERT_EQ(cm_key_load_secret(p, &l, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "nobody.key");
    ASSERT_EQ(cm_key_load_public(p, &l, err, sizeof err), -1);

    // garbage key files
    static const char *const bad[] = {"", "\n", "not base64 at all!\n", "Zm9vYmFy\n", // too short
                                      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", // 36 bytes
                                      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", // padded
                                      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nAAAA\n"}; // two lines
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        path_of(p, sizeof p, g_keys, "garbage.key");
        unlink(p);
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(write(fd, bad[i], strlen(bad[i])), (ssize_t)strlen(bad[i]));
        close(fd);
        err[0] = 0;
        ASSERT_EQ(cm_key_load_secret(p, &l, err, sizeof err), -1);
        ASSERT_CONTAINS(err, "not a kolm private key");
        err[0] = 0;
        ASSERT_EQ(cm_key_load_public(p, &l, err, sizeof err), -1);
        ASSERT_CONTAINS(err, "not a kolm public key");
    }
    // a well-formed 32-byte line (what the files hold) loads; CRLF and a trailing space are tolerated
    path_of(p, sizeof p, g_keys, "crlf.pub");
    char line[80];
    cm_b64url(a.pk, 32, b64);
    snprintf(line, sizeof line, "%s \r\n", b64);
    write_file(p, line, strlen(line));
    ASSERT_EQ(cm_key_load_public(p, &l, err, sizeof err), 0);
    ASSERT_TRUE(!memcmp(l.pk, a.pk, 32));
    unlink(p);
    path_of(p, sizeof p, g_keys, "garbage.key");
    unlink(p);

    // write_public on its own
    path_of(p, sizeof p, g_keys, "bob-only.pub");
    ASSERT_EQ(cm_key_write_public(&b, p, err, sizeof err), 0);
    ASSERT_EQ(cm_key_load_public(p, &l, err, sizeof err), 0);
    ASSERT_TRUE(!memcmp(l.pk, b.pk, 32));
    ASSERT_STREQ(l.id, b.id);
    unlink(p);

    // signatures
    const char *msg = "the manifest bytes";
    size_t ml = strlen(msg);
    uint8_t sig[CM_SIG_LEN], sig2[CM_SIG_LEN];
    cm_sign(&a, msg, ml, sig);
    ASSERT_EQ(cm_verify(a.pk, msg, ml, sig), 0);
    cm_sign(&a, msg, ml, sig2);
    ASSERT_TRUE(!memcmp(sig, sig2, CM_SIG_LEN)); // ed25519 is deterministic
    path_of(p, sizeof p, g_keys, "alice.key");
    ASSERT_EQ(cm_key_load_secret(p, &l, err, sizeof err), 0);
    cm_sign(&l, msg, ml, sig2); // the reloaded key signs the same
    ASSERT_TRUE(!memcmp(sig, sig2, CM_SIG_LEN));
    ASSERT_EQ(cm_verify(b.pk, msg, ml, sig), -1);
    ASSERT_EQ(cm_verify(a.pk, msg, ml - 1, sig), -1);
    char mm[64];
    for (size_t i = 0; i < ml; i++) {
        memcpy(mm, msg, ml);
        mm[i] ^= 0x01;
        ASSERT_EQ(cm_verify(a.pk, mm, ml, sig), -1);
    }
    for (size_t i = 0; i < CM_SIG_LEN; i++) {
        memcpy(sig2, sig, CM_SIG_LEN);
        sig2[i] ^= 0x80;
        ASSERT_EQ(cm_verify(a.pk, msg, ml, sig2), -1);
    }
    cm_sign(&a, "", 0, sig2);
    ASSERT_EQ(cm_verify(a.pk, "", 0, sig2), 0);

    // keyring: a directory of .pub files
    char rp[512];
    path_of(rp, sizeof rp, g_ring, "alice.pub");
    ASSERT_EQ(cm_key_write_public(&a, rp, err, sizeof err), 0);
    path_of(rp, sizeof rp, g_ring, "junk.pub"); // an unreadable member does not spoil the search
    write_file(rp, "junk\n", 5);
    path_of(rp, sizeof rp, g_ring, "bob.key"); // not a .pub: ignored
    cm_b64url(b.pk, 32, b64);
    write_file(rp, b64, strlen(b64));
    path_of(rp, sizeof rp, g_ring, "bob.pubx");
    write_file(rp, b64, strlen(b64));
    ASSERT_EQ(cm_keyring_has(g_ring, a.pk), 1);
    ASSERT_EQ(cm_keyring_has(g_ring, b.pk), 0);
    ASSERT_EQ(cm_keyring_has(g_empty, a.pk), 0);
    path_of(rp, sizeof rp, g_root, "no-such-dir");
    ASSERT_EQ(cm_keyring_has(rp, a.pk), -1);
}

/* ---- .kolm pack / open ---- */

#define W_SIZE 3000
#define D_SIZE 1500
static uint8_t g_w[W_SIZE], g_d[D_SIZE];
static cm_key g_key;
static char g_wpath[512], g_dpath[512];

static uint64_t align64(uint64_t v) {
    return (v + 63) & ~(uint64_t)63;
}

/* Checks a freshly opened artifact's blobs against the inputs. */
static void check_blob(const cm_kolm *k, const char *role, const char *name, const uint8_t *data, size_t n,
                       const uint8_t *file, size_t file_n) {
    const cm_kolm_blob *b = cm_kolm_blob_role(k, role);
    ASSERT_TRUE(b != NULL);
    if (!b)
        return;
    ASSERT_STREQ(b->role, role);
    ASSERT_STREQ(b->name, name);
    ASSERT_STREQ(b->format, "gguf");
    ASSERT_EQ(b->size, n);
    uint8_t d[32];
    cm_sha256(data, n, d);
    ASSERT_TRUE(!memcmp(b->sha256, d, 32));
    if (!b->cid) {
        ASSERT_EQ(b->offset % 64, 0);
        ASSERT_TRUE(b->offset >= align64(64 + k->manifest_len));
        ASSERT_STREQ(b->path, k->path);
        ASSERT_TRUE(file && b->offset + n <= file_n && !memcmp(file + b->offset, data, n));
    }
}

static void test_pack_open(void) {
    char err[512], out[512], cid[CM_CID_MAX];
    json_t *meta = json_pack("{s:s,s:s,s:i}", "name", "tiny-test", "description", "a test \xc3\xa9", "n_ctx", 2048);
    json_t *meta_copy = json_deep_copy(meta);
    cm_kolm_input in[2] = {{"weights", g_wpath, 0}, {"draft", g_dpath, 0}};
    path_of(out, sizeof out, g_root, "signed.kolm");
    err[0] = 0;
    ASSERT_EQ(cm_kolm_pack(out, g_home, meta, in, 2, &g_key, cid, err, sizeof err), 0);
    ASSERT_STREQ(err, "");
    ASSERT_TRUE(json_equal(meta, meta_copy)); // meta is not modified
    ASSERT_EQ(json_object_size(meta), 3);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", out, (int)getpid());
    ASSERT_TRUE(access(tmp, F_OK) != 0); // renamed into place

    size_t fn = 0;
    uint8_t *f = read_file(out, &fn);
    ASSERT_TRUE(f != NULL && fn > 64);
    if (!f || fn <= 64)
        return;
    // the header, read here independently
    ASSERT_TRUE(!memcmp(f, "\x89KOLM\r\n\x1a", 8));
    ASSERT_EQ(rd_u32(f + 8), 1);
    ASSERT_EQ(rd_u32(f + 12), 64);
    uint64_t mlen = rd_u64(f + 16), soff = rd_u64(f + 24), slen = rd_u64(f + 32);
    for (int i = 40; i < 64; i++)
        ASSERT_EQ(f[i], 0);
    ASSERT_TRUE(mlen > 0 && 64 + mlen <= fn);
    ASSERT_TRUE(soff >= 64 + mlen && slen > 0 && soff + slen == fn);

    cm_kolm *k = NULL;
    err[0] = 0;
    ASSERT_EQ(cm_kolm_open(out, g_home, &k, err, sizeof err), 0);
    ASSERT_STREQ(err, "");
    ASSERT_TRUE(k != NULL);
    if (!k) {
        free(f);
        return;
    }
    ASSERT_STREQ(k->path, out);
    ASSERT_EQ(k->file_size, fn);
    ASSERT_EQ(k->manifest_len, mlen);
    ASSERT_TRUE(!memcmp(k->manifest, f + 64, mlen));
    ASSERT_EQ(k->manifest[k->manifest_len], 0);
    // canonical: the manifest re-dumps to the same bytes
    size_t cl = 0;
    char *canon = cm_canonical_json(k->m, &cl);
    ASSERT_TRUE(canon && cl == mlen && !memcmp(canon, k->manifest, cl));
    free(canon);
    ASSERT_TRUE(memchr(k->manifest, ' ', mlen) == NULL || strstr((char *)k->manifest, "a test") != NULL);
    ASSERT_TRUE(memchr(k->manifest, '\n', mlen) == NULL);
    // the manifest holds meta, kolm_format and blobs, nothing else
    ASSERT_EQ(json_object_size(k->m), 5);
    ASSERT_STREQ(json_string_value(json_object_get(k->m, "name")), "tiny-test");
    ASSERT_STREQ(json_string_value(json_object_get(k->m, "description")), "a test \xc3\xa9");
    ASSERT_EQ(json_integer_value(json_object_get(k->m, "n_ctx")), 2048);
    ASSERT_EQ(json_integer_value(json_object_get(k->m, "kolm_format")), 1);
    ASSERT_EQ(json_array_size(json_object_get(k->m, "blobs")), 2);
    // the CID: returned by pack, set by open, and computed here from the manifest bytes
    uint8_t md[32];
    char want[CM_CID_MAX + 16];
    cm_sha256(f + 64, mlen, md);
    my_cid(0x0200, md, want);
    ASSERT_STREQ(cid, want);
    ASSERT_STREQ(k->cid, want);
    ASSERT_TRUE(!strncmp(k->cid, "bagaaiera", 9));
    // the blobs: in input order, aligned, in the file, hashes right
    ASSERT_EQ(k->n_blobs, 2);
    ASSERT_STREQ(k->blobs[0].role, "weights");
    ASSERT_STREQ(k->blobs[1].role, "draft");
    check_blob(k, "weights", "weights.gguf", g_w, W_SIZE, f, fn);
    check_blob(k, "draft", "draft.gguf", g_d, D_SIZE, f, fn);
    ASSERT_EQ(k->blobs[0].offset, align64(64 + mlen));
    ASSERT_EQ(k->blobs[1].offset, align64(k->blobs[0].offset + W_SIZE));
    ASSERT_TRUE(k->blobs[0].cid == NULL && k->blobs[1].cid == NULL);
    ASSERT_EQ(soff % 64, 0);
    ASSERT_TRUE(soff >= k->blobs[1].offset + D_SIZE);
    ASSERT_TRUE(cm_kolm_blob_role(k, "adapter") == NULL);
    ASSERT_TRUE(cm_kolm_blob_role(k, "embedding") == NULL);
    ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), 0);
    // the signature block, read here independently
    json_t *sb = json_loadb((const char *)f + soff, slen, 0, NULL);
    ASSERT_TRUE(sb != NULL);
    ASSERT_STREQ(json_string_value(json_object_get(sb, "alg")), "ed25519");
    ASSERT_STREQ(json_string_value(json_object_get(sb, "key_id")), g_key.id);
    char pk64[64];
    cm_b64url(g_key.pk, 32, pk64);
    ASSERT_STREQ(json_string_value(json_object_get(sb, "public_key")), pk64);
    const char *s64 = json_string_value(json_object_get(sb, "signature"));
    uint8_t sig[64];
    size_t sn = 0;
    ASSERT_TRUE(s64 && !cm_unb64url(s64, strlen(s64), sig, sizeof sig, &sn) && sn == 64);
    ASSERT_EQ(cm_verify(g_key.pk, f + 64, mlen, sig), 0);
    json_decref(sb);
    ASSERT_TRUE(k->has_sig);
    ASSERT_TRUE(!memcmp(k->signer, g_key.pk, 32));
    ASSERT_TRUE(!memcmp(k->sig, sig, 64));
    ASSERT_STREQ(k->signer_id, g_key.id);
    err[0] = 0;
    ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), 0);
    ASSERT_EQ(cm_kolm_check_trust(k, g_ring, err, sizeof err), 0); // g_ring holds alice.pub = g_key
    err[0] = 0;
    ASSERT_EQ(cm_kolm_check_trust(k, g_empty, err, sizeof err), -1);
    ASSERT_CONTAINS(err, g_key.id);
    ASSERT_CONTAINS(err, "not a trusted key");
    char nodir[512];
    path_of(nodir, sizeof nodir, g_root, "no-such-ring");
    err[0] = 0;
    ASSERT_EQ(cm_kolm_check_trust(k, nodir, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "cannot read the keyring");
    cm_kolm_close(k);
    cm_kolm_close(NULL);

    // packing is deterministic: the same inputs give the same bytes and CID
    char out2[512], cid2[CM_CID_MAX];
    path_of(out2, sizeof out2, g_root, "signed-again.kolm");
    ASSERT_EQ(cm_kolm_pack(out2, g_home, meta, in, 2, &g_key, cid2, err, sizeof err), 0);
    ASSERT_STREQ(cid2, cid);
    size_t fn2 = 0;
    uint8_t *f2 = read_file(out2, &fn2);
    ASSERT_TRUE(f2 && fn2 == fn && !memcmp(f, f2, fn));
    free(f2);
    unlink(out2);
    // cid may be NULL
    ASSERT_EQ(cm_kolm_pack(out2, g_home, meta, in, 2, &g_key, NULL, err, sizeof err), 0);
    unlink(out2);

    // unsigned: no signature block, and the checks say so
    path_of(out2, sizeof out2, g_root, "unsigned.kolm");
    ASSERT_EQ(cm_kolm_pack(out2, g_home, meta, in, 2, NULL, cid2, err, sizeof err), 0);
    ASSERT_STREQ(cid2, cid); // the signature is not part of the id
    f2 = read_file(out2, &fn2);
    ASSERT_TRUE(f2 && fn2 >= 64 && rd_u64(f2 + 24) == 0 && rd_u64(f2 + 32) == 0);
    ASSERT_TRUE(f2 && fn2 >= 64 + mlen && !memcmp(f2 + 64, f + 64, mlen)); // same manifest
    // it ends at the last blob, padded to the alignment with zeros
    uint64_t dend = align64(64 + mlen);
    dend = align64(dend + W_SIZE) + D_SIZE;
    ASSERT_EQ(fn2, align64(dend));
    for (uint64_t i = dend; f2 && i < fn2; i++)
        ASSERT_EQ(f2[i], 0);
    free(f2);
    k = NULL;
    ASSERT_EQ(cm_kolm_open(out2, g_home, &k, err, sizeof err), 0);
    if (k) {
        ASSERT_TRUE(!k->has_sig);
        ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), 0);
        err[0] = 0;
        ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), -1);
        ASSERT_CONTAINS(err, "not signed");
        err[0] = 0;
        ASSERT_EQ(cm_kolm_check_trust(k, g_ring, err, sizeof err), -1);
        ASSERT_CONTAINS(err, "not signed");
        cm_kolm_close(k);
    }
    unlink(out2);

    // refusals of pack itself
    char missing[512];
    path_of(missing, sizeof missing, g_in, "missing.gguf");
    cm_kolm_input bad_in[1] = {{"weights", missing, 0}};
    err[0] = 0;
    ASSERT_EQ(cm_kolm_pack(out2, g_home, meta, bad_in, 1, &g_key, NULL, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "missing.gguf");
    cm_kolm_input dir_in[1] = {{"weights", g_in, 0}};
    err[0] = 0;
    ASSERT_EQ(cm_kolm_pack(out2, g_home, meta, dir_in, 1, &g_key, NULL, err, sizeof err), -1);
    ASSERT_TRUE(err[0] != 0);
    err[0] = 0;
    ASSERT_EQ(cm_kolm_pack(out2, g_home, meta, in, 0, &g_key, NULL, err, sizeof err), -1);
    ASSERT_TRUE(err[0] != 0);
    json_t *arr = json_array();
    err[0] = 0;
    ASSERT_EQ(cm_kolm_pack(out2, g_home, arr, in, 1, &g_key, NULL, err, sizeof err), -1); // meta not an object
    ASSERT_TRUE(err[0] != 0);
    json_decref(arr);
    ASSERT_TRUE(access(out2, F_OK) != 0);

    free(f);
    json_decref(meta);
    json_decref(meta_copy);
}

static void test_reference(void) {
    char err[512], out[512], cid[CM_CID_MAX], store[600];
    json_t *meta = json_pack("{s:s}", "name", "ref-test");
    cm_kolm_input in[2] = {{"weights", g_wpath, 1}, {"draft", g_dpath, 0}};
    path_of(out, sizeof out, g_root, "ref.kolm");
    err[0] = 0;
    ASSERT_EQ(cm_kolm_pack(out, g_home, meta, in, 2, &g_key, cid, err, sizeof err), 0);
    ASSERT_STREQ(err, "");
    uint8_t d[32];
    char wcid[CM_CID_MAX + 16];
    cm_sha256(g_w, W_SIZE, d);
    my_cid(0x55, d, wcid);
    snprintf(store, sizeof store, "%s/models/%s", g_home, wcid);
    size_t sn = 0;
    uint8_t *s = read_file(store, &sn);
    ASSERT_TRUE(s && sn == W_SIZE && !memcmp(s, g_w, W_SIZE));
    free(s);

    size_t fn = 0;
    uint8_t *f = read_file(out, &fn);
    ASSERT_TRUE(f && fn > 64);
    if (!f)
        return;
    // the weights are not in the file: it is the draft plus metadata
    ASSERT_TRUE(fn < 64 + rd_u64(f + 16) + D_SIZE + 64 + rd_u64(f + 32) + 64);
    cm_kolm *k = NULL;
    err[0] = 0;
    ASSERT_EQ(cm_kolm_open(out, g_home, &k, err, sizeof err), 0);
    ASSERT_STREQ(err, "");
    if (k) {
        json_t *b0 = json_array_get(json_object_get(k->m, "blobs"), 0);
        ASSERT_STREQ(json_string_value(json_object_get(b0, "cid")), wcid);
        ASSERT_TRUE(json_object_get(b0, "offset") == NULL);
        json_t *b1 = json_array_get(json_object_get(k->m, "blobs"), 1);
        ASSERT_TRUE(json_object_get(b1, "cid") == NULL);
        ASSERT_TRUE(json_is_integer(json_object_get(b1, "offset")));
        const cm_kolm_blob *w = cm_kolm_blob_role(k, "weights");
        ASSERT_TRUE(w != NULL);
        if (w) {
            ASSERT_STREQ(w->cid, wcid);
            ASSERT_STREQ(w->path, store);
            ASSERT_EQ(w->offset, 0);
            ASSERT_EQ(w->size, W_SIZE);
        }
        check_blob(k, "weights", "weights.gguf", g_w, W_SIZE, f, fn);
        check_blob(k, "draft", "draft.gguf", g_d, D_SIZE, f, fn);
        // the embedded draft is the first blob in the file
        ASSERT_EQ(k->blobs[1].offset, align64(64 + k->manifest_len));
        ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), 0);
        ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), 0);
        ASSERT_EQ(cm_kolm_check_trust(k, g_ring, err, sizeof err), 0);
        cm_kolm_close(k);
    }
    // packing again with the blob already stored is fine
    ASSERT_EQ(cm_kolm_pack(out, g_home, meta, in, 2, &g_key, NULL, err, sizeof err), 0);

    // a corrupted store file: open passes (size right), verify names the blob
    size_t wn = 0;
    uint8_t *wbak = read_file(store, &wn);
    ASSERT_TRUE(wbak != NULL);
    uint8_t *wbad = malloc(W_SIZE);
    memcpy(wbad, g_w, W_SIZE);
    wbad[W_SIZE / 2] ^= 0x40;
    unlink(store); // the store may be a hard link to the input: replace, never write through
    write_file(store, wbad, W_SIZE);
    k = NULL;
    ASSERT_EQ(cm_kolm_open(out, g_home, &k, err, sizeof err), 0);
    if (k) {
        err[0] = 0;
        ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), -1);
        ASSERT_CONTAINS(err, "'weights'");
        cm_kolm_close(k);
    }
    // a store file of the wrong size: open fails
    unlink(store);
    write_file(store, g_w, W_SIZE - 1);
    EXPECT_OPEN_FAILS(out, "bytes");
    unlink(store);
    write_file(store, g_w, W_SIZE);
    free(wbad);
    free(wbak);

    // another home has no such store
    cm_kolm *k2 = NULL;
    err[0] = 0;
    ASSERT_EQ(cm_kolm_open(out, g_root, &k2, err, sizeof err), -1);
    ASSERT_TRUE(k2 == NULL);
    ASSERT_CONTAINS(err, "model store");
    ASSERT_CONTAINS(err, wcid);
    // deleting the store file makes open fail, naming the store
    ASSERT_EQ(unlink(store), 0);
    k2 = NULL;
    err[0] = 0;
    ASSERT_EQ(cm_kolm_open(out, g_home, &k2, err, sizeof err), -1);
    ASSERT_TRUE(k2 == NULL);
    ASSERT_CONTAINS(err, "model store");
    char models[512];
    snprintf(models, sizeof models, "%s/models/", g_home);
    ASSERT_CONTAINS(err, models);
    ASSERT_CONTAINS(err, "weights");
    // a directory under the CID's name is not a blob
    ASSERT_EQ(mkdir(store, 0755), 0);
    EXPECT_OPEN_FAILS(out, "model store");
    rmdir(store);
    // the input itself is untouched (the store was a link or a copy of it)
    size_t in_n = 0;
    uint8_t *inb = read_file(g_wpath, &in_n);
    ASSERT_TRUE(inb && in_n == W_SIZE && !memcmp(inb, g_w, W_SIZE));
    free(inb);
    // re-packing restores the store
    ASSERT_EQ(cm_kolm_pack(out, g_home, meta, in, 2, &g_key, NULL, err, sizeof err), 0);
    k2 = NULL;
    ASSERT_EQ(cm_kolm_open(out, g_home, &k2, err, sizeof err), 0);
    if (k2) {
        ASSERT_EQ(cm_kolm_verify_blobs(k2, err, sizeof err), 0);
        cm_kolm_close(k2);
    }
    free(f);
    json_decref(meta);
}

/* ---- tampering ---- */

static char g_src[512]; // the signed, embedded artifact tampered copies are made from
static uint8_t *g_file;
static size_t g_fn;

static void save_copy(const char *name, const uint8_t *p, size_t n, char *path, size_t pathn) {
    path_of(path, pathn, g_root, name);
    write_file(path, p, n);
}

/* A copy of the source with the manifest replaced by m's canonical form (in place:
 * the blobs keep their absolute offsets; the new manifest must fit before them). */
static void copy_with_manifest_bytes(const char *name, const char *man, size_t ml, char *path, size_t pathn) {
    uint8_t *c = malloc(g_fn + ml);
    memcpy(c, g_file, g_fn);
    uint64_t old = rd_u64(g_file + 16);
    ASSERT_TRUE(64 + ml <= align64(64 + old)); // fits in the same slot
    if (64 + ml > align64(64 + old))
        ml = (size_t)old;
    memset(c + 64, 0, (size_t)(align64(64 + old) - 64));
    memcpy(c + 64, man, ml);
    wr_u64(c + 16, ml);
    save_copy(name, c, g_fn, path, pathn);
    free(c);
}

/* The same with m's canonical form; when it would not fit, the source's "pad"
 * member (room made for this) is shortened first. */
static void copy_with_manifest(const char *name, const json_t *m, char *path, size_t pathn) {
    size_t ml = 0, room = (size_t)(align64(64 + rd_u64(g_file + 16)) - 64);
    json_t *c = json_deep_copy(m);
    char *s = cm_canonical_json(c, &ml);
    const char *pad = json_string_value(json_object_get(c, "pad"));
    if (ml > room && pad && strlen(pad) >= ml - room) {
        size_t keep = strlen(pad) - (ml - room);
        json_object_set_new(c, "pad", json_stringn(pad, keep));
        free(s);
        s = cm_canonical_json(c, &ml);
    }
    copy_with_manifest_bytes(name, s, ml, path, pathn);
    free(s);
    json_decref(c);
}

static json_t *src_manifest(void) {
    return json_loadb((const char *)g_file + 64, rd_u64(g_file + 16), 0, NULL);
}

static json_t *blob_of(json_t *m, size_t i) {
    return json_array_get(json_object_get(m, "blobs"), i);
}

static void test_tamper(void) {
    char err[512], p[512];
    char pad[201];
    memset(pad, 'x', 200);
    pad[200] = 0;
    json_t *meta = json_pack("{s:s,s:s}", "name", "tamper-me", "pad", pad); // pad: room for bigger manifests
    cm_kolm_input in[2] = {{"weights", g_wpath, 0}, {"draft", g_dpath, 0}};
    path_of(g_src, sizeof g_src, g_root, "src.kolm");
    ASSERT_EQ(cm_kolm_pack(g_src, g_home, meta, in, 2, &g_key, NULL, err, sizeof err), 0);
    json_decref(meta);
    g_file = read_file(g_src, &g_fn);
    ASSERT_TRUE(g_file && g_fn > 64);
    if (!g_file)
        return;
    uint64_t mlen = rd_u64(g_file + 16), soff = rd_u64(g_file + 24), slen = rd_u64(g_file + 32);
    uint8_t *c = malloc(g_fn + 256);
    cm_kolm *k = NULL;

    // the unmodified copy opens and checks (the baseline for everything below)
    save_copy("t-same.kolm", g_file, g_fn, p, sizeof p);
    ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
    uint64_t woff = 0, doff = 0;
    char src_cid[CM_CID_MAX] = "";
    if (k) {
        snprintf(src_cid, sizeof src_cid, "%s", k->cid);
        ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), 0);
        ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), 0);
        woff = k->blobs[0].offset;
        doff = k->blobs[1].offset;
        cm_kolm_close(k);
    }

    // a flipped byte in each blob: open and the signature pass, verify names the blob
    static const struct {
        const char *role;
        size_t at;
    } flips[] = {{"weights", 0}, {"weights", W_SIZE - 1}, {"draft", 0}, {"draft", D_SIZE / 2}, {"draft", D_SIZE - 1}};
    for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        memcpy(c, g_file, g_fn);
        uint64_t at = (!strcmp(flips[i].role, "weights") ? woff : doff) + flips[i].at;
        c[at] ^= 0x01;
        save_copy("t-blob.kolm", c, g_fn, p, sizeof p);
        k = NULL;
        ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
        if (k) {
            ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), 0);
            err[0] = 0;
            ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), -1);
            char want[64];
            snprintf(want, sizeof want, "blob '%s'", flips[i].role);
            ASSERT_CONTAINS(err, want);
            cm_kolm_close(k);
        }
    }

    // a manifest byte changed, JSON still valid and canonical: open OK, signature fails
    memcpy(c, g_file, g_fn);
    char *nm = memmem(c + 64, mlen, "\"name\":\"tamper-me\"", 18);
    ASSERT_TRUE(nm != NULL);
    if (nm) {
        nm[8] = 'd'; // "tamper-me" -> "damper-me"
        save_copy("t-name.kolm", c, g_fn, p, sizeof p);
        k = NULL;
        err[0] = 0;
        ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
        ASSERT_STREQ(err, "");
        if (k) {
            ASSERT_STREQ(json_string_value(json_object_get(k->m, "name")), "damper-me");
            ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), 0);
            err[0] = 0;
            ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), -1);
            ASSERT_CONTAINS(err, "does not match the manifest");
            err[0] = 0;
            ASSERT_EQ(cm_kolm_check_trust(k, g_ring, err, sizeof err), -1);
            ASSERT_CONTAINS(err, "does not match");
            cm_kolm_close(k);
        }
    }
    // a blob's sha256 changed in the manifest (a valid hex digit): verify and signature both fail
    memcpy(c, g_file, g_fn);
    char *sh = memmem(c + 64, mlen, "\"sha256\":\"", 10);
    ASSERT_TRUE(sh != NULL);
    if (sh) {
        sh[10] = sh[10] == '0' ? '1' : '0';
        save_copy("t-sha.kolm", c, g_fn, p, sizeof p);
        k = NULL;
        ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
        if (k) {
            ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), -1);
            ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), -1);
            cm_kolm_close(k);
        }
    }

    // non-canonical manifests: whitespace, key order, escapes
    {
        size_t ml = (size_t)mlen;
        char *m2 = malloc(ml + 8);
        m2[0] = '{';
        m2[1] = ' ';
        memcpy(m2 + 2, g_file + 65, ml - 1);
        copy_with_manifest_bytes("t-ws.kolm", m2, ml + 1, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "canonical");
        memcpy(m2, g_file + 64, ml);
        m2[ml] = '\n';
        copy_with_manifest_bytes("t-nl.kolm", m2, ml + 1, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "canonical");
        free(m2);
        // the same object with a key out of order
        json_t *m = src_manifest();
        char *sorted = cm_canonical_json(m, NULL);
        char *unsorted = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_t *name = json_object_get(m, "name");
        json_incref(name);
        json_object_del(m, "name");
        json_t *front = json_object();
        json_object_set_new(front, "zzz", json_string("x"));
        json_object_update(front, m);
        free(unsorted);
        unsorted = json_dumps(front, JSON_COMPACT | JSON_PRESERVE_ORDER); // "zzz" first
        ASSERT_TRUE(unsorted && strncmp(unsorted, "{\"zzz\"", 6) == 0);
        if (unsorted) {
            copy_with_manifest_bytes("t-order.kolm", unsorted, strlen(unsorted), p, sizeof p);
            EXPECT_OPEN_FAILS(p, "canonical");
        }
        free(unsorted);
        free(sorted);
        json_decref(front);
        json_decref(name);
        json_decref(m);
        // an escape where the canonical form has the character
        memcpy(c, g_file, g_fn);
        char *t = memmem(g_file + 64, mlen, "tamper-me", 9);
        ASSERT_TRUE(t != NULL);
        if (t) {
            size_t pre = (size_t)(t - (char *)g_file) - 64;
            char *m3 = malloc(ml + 8);
            memcpy(m3, g_file + 64, pre);
            memcpy(m3 + pre, "\\u0074", 6); // 't'
            memcpy(m3 + pre + 6, t + 1, ml - pre - 1);
            copy_with_manifest_bytes("t-esc.kolm", m3, ml + 5, p, sizeof p);
            EXPECT_OPEN_FAILS(p, "canonical");
            free(m3);
        }
    }
    // not JSON, not an object, a duplicate key
    copy_with_manifest_bytes("t-nojson.kolm", "{\"blobs\":", 9, p, sizeof p);
    EXPECT_OPEN_FAILS(p, "not a JSON object");
    copy_with_manifest_bytes("t-array.kolm", "[1,2]", 5, p, sizeof p);
    EXPECT_OPEN_FAILS(p, "not a JSON object");
    copy_with_manifest_bytes("t-dup.kolm", "{\"a\":1,\"a\":1}", 13, p, sizeof p);
    EXPECT_OPEN_FAILS(p, NULL);

    // header: bad magic, version 2, header size, manifest length
    for (int i = 0; i < 8; i++) {
        memcpy(c, g_file, g_fn);
        c[i] ^= 0x20;
        save_copy("t-magic.kolm", c, g_fn, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "bad magic");
    }
    memcpy(c, g_file, g_fn);
    wr_u32(c + 8, 2);
    save_copy("t-v2.kolm", c, g_fn, p, sizeof p);
    EXPECT_OPEN_FAILS(p, "version 2");
    wr_u32(c + 8, 0);
    save_copy("t-v0.kolm", c, g_fn, p, sizeof p);
    EXPECT_OPEN_FAILS(p, "version");
    memcpy(c, g_file, g_fn);
    wr_u32(c + 12, 128);
    save_copy("t-hsize.kolm", c, g_fn, p, sizeof p);
    EXPECT_OPEN_FAILS(p, NULL);
    static const uint64_t bad_mlen[] = {0, 1, 10, UINT64_MAX, UINT64_MAX - 63, (uint64_t)1 << 63, 0xffffffffu,
                                        CM_KOLM_MAX_MANIFEST + 1u};
    for (size_t i = 0; i < sizeof bad_mlen / sizeof bad_mlen[0]; i++) {
        memcpy(c, g_file, g_fn);
        wr_u64(c + 16, bad_mlen[i]);
        save_copy("t-mlen.kolm", c, g_fn, p, sizeof p);
        EXPECT_OPEN_FAILS(p, NULL);
    }
    memcpy(c, g_file, g_fn);
    wr_u64(c + 16, g_fn - 64 + 1); // one past the end
    save_copy("t-mlen.kolm", c, g_fn, p, sizeof p);
    EXPECT_OPEN_FAILS(p, "does not fit the file");
    wr_u64(c + 16, g_fn); // beyond the file
    save_copy("t-mlen.kolm", c, g_fn, p, sizeof p);
    EXPECT_OPEN_FAILS(p, "does not fit the file");
    wr_u64(c + 16, mlen - 1); // one short: not JSON
    save_copy("t-mlen.kolm", c, g_fn, p, sizeof p);
    EXPECT_OPEN_FAILS(p, NULL);
    wr_u64(c + 16, mlen + 1); // one long: a trailing byte (a NUL or padding)
    save_copy("t-mlen.kolm", c, g_fn, p, sizeof p);
    EXPECT_OPEN_FAILS(p, NULL);

    // truncated files, at every interesting place
    uint64_t cuts[] = {0, 1, 7, 8, 12, 40, 63, 64, 65, 64 + mlen / 2, 64 + mlen - 1, 64 + mlen, woff, woff + 1,
                       woff + W_SIZE - 1, doff, doff + D_SIZE - 1, soff, soff + slen / 2, g_fn - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        save_copy("t-trunc.kolm", g_file, (size_t)cuts[i], p, sizeof p);
        EXPECT_OPEN_FAILS(p, NULL);
    }

    // the blob table: misaligned, out of range, overlapping, unknown roles, duplicates ...
    {
        json_t *m;
        m = src_manifest();
        json_object_set_new(blob_of(m, 1), "offset", json_integer((json_int_t)doff + 1));
        copy_with_manifest("t-misal.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "misaligned or outside the file");
        json_object_set_new(blob_of(m, 1), "offset", json_integer((json_int_t)doff + 32));
        copy_with_manifest("t-misal.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "misaligned");
        json_object_set_new(blob_of(m, 1), "offset", json_integer((json_int_t)align64(g_fn)));
        copy_with_manifest("t-range.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "outside the file");
        json_object_set_new(blob_of(m, 1), "offset", json_integer((json_int_t)(INT64_MAX & ~(int64_t)63)));
        copy_with_manifest("t-range.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "outside the file");
        json_object_set_new(blob_of(m, 1), "offset", json_integer(-64));
        copy_with_manifest("t-neg.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, NULL);
        json_decref(m);
        // the weights moved over the header or the manifest (clear of the draft: only the start check catches it)
        m = src_manifest();
        ASSERT_TRUE(64 + W_SIZE <= doff);
        json_object_set_new(blob_of(m, 0), "offset", json_integer(0));
        copy_with_manifest("t-zero.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "misaligned or outside the file");
        json_object_set_new(blob_of(m, 0), "offset", json_integer(64));
        copy_with_manifest("t-man.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "misaligned or outside the file");
        json_object_set_new(blob_of(m, 0), "offset", json_integer((json_int_t)woff - 64)); // just before its place
        copy_with_manifest("t-man.kolm", m, p, sizeof p);
        if (woff - 64 < 64 + rd_u64(g_file + 16)) // the slot before is still the manifest's
            EXPECT_OPEN_FAILS(p, "misaligned or outside the file");
        json_decref(m);
        m = src_manifest();
        json_object_set_new(blob_of(m, 1), "offset", json_integer((json_int_t)woff)); // over the weights
        copy_with_manifest("t-overlap.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "overlap");
        json_object_set_new(blob_of(m, 1), "offset", json_integer((json_int_t)soff)); // over the signature
        copy_with_manifest("t-oversig.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, NULL);
        json_object_set_new(blob_of(m, 1), "offset", json_real((double)doff)); // not an integer
        copy_with_manifest("t-real.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "malformed");
        json_decref(m);

        m = src_manifest();
        json_object_set_new(blob_of(m, 1), "size", json_integer((json_int_t)g_fn)); // runs past the end
        copy_with_manifest("t-size.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "outside the file");
        json_object_set_new(blob_of(m, 1), "size", json_integer(INT64_MAX));
        copy_with_manifest("t-size.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "outside the file");
        json_object_set_new(blob_of(m, 1), "size", json_integer(-1));
        copy_with_manifest("t-size.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "malformed");
        json_object_set_new(blob_of(m, 0), "size", json_integer(W_SIZE + 600)); // into the draft
        json_object_set_new(blob_of(m, 1), "size", json_integer(D_SIZE));
        copy_with_manifest("t-size.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "overlap");
        json_decref(m);

        static const char *const drop[] = {"role", "name", "format", "size", "sha256", "offset"};
        for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++) {
            m = src_manifest();
            json_object_del(blob_of(m, 1), drop[i]);
            copy_with_manifest("t-drop.kolm", m, p, sizeof p);
            EXPECT_OPEN_FAILS(p, "malformed");
            json_decref(m);
        }
        m = src_manifest();
        json_object_set_new(blob_of(m, 1), "role", json_string("tokenizer"));
        copy_with_manifest("t-role.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "malformed");
        json_object_set_new(blob_of(m, 1), "role", json_string("weights"));
        copy_with_manifest("t-dup.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "two 'weights' blobs");
        json_object_set_new(blob_of(m, 0), "role", json_string("adapter")); // now no weights
        json_object_set_new(blob_of(m, 1), "role", json_string("draft"));
        copy_with_manifest("t-noweights.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "no 'weights'");
        json_decref(m);
        m = src_manifest();
        json_object_set_new(blob_of(m, 1), "sha256", json_string("ABCD"));
        copy_with_manifest("t-shabad.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "malformed");
        json_decref(m);
        m = src_manifest();
        json_t *sha = json_object_get(blob_of(m, 1), "sha256");
        char up[65];
        snprintf(up, sizeof up, "%s", json_string_value(sha));
        for (char *q = up; *q; q++)
            if (*q >= 'a' && *q <= 'f')
                *q = (char)(*q - 32);
        json_object_set_new(blob_of(m, 1), "sha256", json_string(up));
        copy_with_manifest("t-shaup.kolm", m, p, sizeof p);
        ASSERT_TRUE(strpbrk(up, "ABCDEF") != NULL); // (a digest with no letter would make this vacuous)
        EXPECT_OPEN_FAILS(p, "malformed");
        json_decref(m);
        // a blob with both an offset and a cid, and a cid that is not the CID of the sha256
        m = src_manifest();
        uint8_t dd[32];
        char dcid[CM_CID_MAX + 16];
        cm_sha256(g_d, D_SIZE, dd);
        my_cid(0x55, dd, dcid);
        json_object_set_new(blob_of(m, 1), "cid", json_string(dcid));
        copy_with_manifest("t-both.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "malformed");
        json_object_del(blob_of(m, 1), "offset");
        cm_sha256(g_w, W_SIZE, dd);
        my_cid(0x55, dd, dcid);
        json_object_set_new(blob_of(m, 1), "cid", json_string(dcid));
        copy_with_manifest("t-wrongcid.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "not the CID of its sha256");
        json_decref(m);
        // the manifest as a whole
        m = src_manifest();
        json_object_set_new(m, "kolm_format", json_integer(2));
        copy_with_manifest("t-kf.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "kolm_format");
        json_object_del(m, "kolm_format");
        copy_with_manifest("t-kf.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "kolm_format");
        json_decref(m);
        m = src_manifest();
        json_object_set_new(m, "blobs", json_array());
        copy_with_manifest("t-noblobs.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "no blobs");
        json_object_set_new(m, "blobs", json_object());
        copy_with_manifest("t-noblobs.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "no blobs");
        json_object_set_new(m, "blobs", json_pack("[i]", 1));
        copy_with_manifest("t-blobint.kolm", m, p, sizeof p);
        EXPECT_OPEN_FAILS(p, "malformed");
        json_decref(m);
        // a re-canonicalized, unchanged manifest still opens and verifies (the helper is sound)
        m = src_manifest();
        copy_with_manifest("t-rewrite.kolm", m, p, sizeof p);
        k = NULL;
        ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
        if (k) {
            ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), 0);
            ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), 0);
            cm_kolm_close(k);
        }
        json_decref(m);
    }

    // the signature block's placement
    static const struct {
        uint64_t off, len;
    } sigpos[] = {{0, 1}, {1, 0}, {64, 100}, {0, 0} /* soff, slen + 1 */, {1, 1} /* soff + 1, slen */,
                  {2, 2} /* past the end */, {3, 3} /* over a blob */, {4, 4} /* over 4096 */, {5, 5} /* len 0 */};
    for (size_t i = 0; i < sizeof sigpos / sizeof sigpos[0]; i++) {
        uint64_t o = sigpos[i].off, l = sigpos[i].len;
        if (i == 3)
            o = soff, l = slen + 1;
        else if (i == 4)
            o = soff + 1, l = slen;
        else if (i == 5)
            o = g_fn + 64, l = slen;
        else if (i == 6)
            o = doff, l = slen;
        else if (i == 7)
            o = soff, l = 5000;
        else if (i == 8)
            o = soff, l = 0;
        memcpy(c, g_file, g_fn);
        wr_u64(c + 24, o);
        wr_u64(c + 32, l);
        save_copy("t-sigpos.kolm", c, g_fn, p, sizeof p);
        EXPECT_OPEN_FAILS(p, NULL);
    }
    // clearing the signature fields leaves a well-formed unsigned artifact
    memcpy(c, g_file, g_fn);
    wr_u64(c + 24, 0);
    wr_u64(c + 32, 0);
    save_copy("t-nosig.kolm", c, g_fn, p, sizeof p);
    k = NULL;
    ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
    if (k) {
        err[0] = 0;
        ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), -1);
        ASSERT_CONTAINS(err, "not signed");
        cm_kolm_close(k);
    }

    // every byte of the signature block flipped: open fails (malformed) or the signature does
    int n_open_fail = 0, n_sig_fail = 0;
    for (uint64_t i = 0; i < slen; i++) {
        for (int bit = 0; bit < 8; bit += 7) { // the lowest and the highest bit
            memcpy(c, g_file, g_fn);
            c[soff + i] ^= (uint8_t)(1u << bit);
            save_copy("t-sigflip.kolm", c, g_fn, p, sizeof p);
            k = NULL;
            err[0] = 0;
            if (cm_kolm_open(p, g_home, &k, err, sizeof err)) {
                kt_checks++;
                if (!err[0] || k)
                    KT_FAIL_("sig byte %llu: open failed without an error", (unsigned long long)i);
                n_open_fail++;
                continue;
            }
            kt_checks++;
            if (!cm_kolm_check_signature(k, err, sizeof err))
                KT_FAIL_("sig byte %llu bit %d flipped (0x%02x): open and the signature check both pass",
                         (unsigned long long)i, bit, g_file[soff + i]);
            else
                n_sig_fail++;
            cm_kolm_close(k);
        }
    }
    ASSERT_TRUE(n_open_fail > 0);
    ASSERT_TRUE(n_sig_fail > 0); // some flips land in the signature's base64 and decode to another signature

    // a signature block replaced by another key's (well-formed) block: open passes, trust decides
    {
        cm_key other;
        ASSERT_EQ(cm_key_generate(&other), 0);
        uint8_t sig[64];
        cm_sign(&other, g_file + 64, mlen, sig);
        char pk64[64], sig64[100];
        cm_b64url(other.pk, 32, pk64);
        cm_b64url(sig, 64, sig64);
        json_t *s = json_pack("{s:s,s:s,s:s,s:s}", "alg", "ed25519", "key_id", other.id, "public_key", pk64,
                              "signature", sig64);
        size_t sl = 0;
        char *sj = cm_canonical_json(s, &sl);
        json_decref(s);
        memcpy(c, g_file, g_fn);
        memcpy(c + soff, sj, sl);
        wr_u64(c + 32, sl);
        save_copy("t-resign.kolm", c, (size_t)(soff + sl), p, sizeof p);
        free(sj);
        k = NULL;
        ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
        if (k) {
            ASSERT_EQ(cm_kolm_check_signature(k, err, sizeof err), 0);
            ASSERT_STREQ(k->signer_id, other.id);
            ASSERT_STREQ(k->cid, src_cid); // the signature is not part of the id
            err[0] = 0;
            ASSERT_EQ(cm_kolm_check_trust(k, g_ring, err, sizeof err), -1); // other is not in the ring
            ASSERT_CONTAINS(err, other.id);
            cm_kolm_close(k);
        }
        // the same block with a key_id that is not the key's
        s = json_pack("{s:s,s:s,s:s,s:s}", "alg", "ed25519", "key_id", g_key.id, "public_key", pk64, "signature",
                      sig64);
        sj = cm_canonical_json(s, &sl);
        json_decref(s);
        memcpy(c + soff, sj, sl);
        wr_u64(c + 32, sl);
        save_copy("t-kid.kolm", c, (size_t)(soff + sl), p, sizeof p);
        free(sj);
        EXPECT_OPEN_FAILS(p, "malformed");
        // another algorithm
        s = json_pack("{s:s,s:s,s:s,s:s}", "alg", "ed448", "key_id", other.id, "public_key", pk64, "signature",
                      sig64);
        sj = cm_canonical_json(s, &sl);
        json_decref(s);
        memcpy(c + soff, sj, sl);
        wr_u64(c + 32, sl);
        save_copy("t-alg.kolm", c, (size_t)(soff + sl), p, sizeof p);
        free(sj);
        EXPECT_OPEN_FAILS(p, "malformed");
    }

    // a directory, and a missing path
    EXPECT_OPEN_FAILS(g_in, NULL);
    path_of(p, sizeof p, g_root, "no-such.kolm");
    EXPECT_OPEN_FAILS(p, "no-such.kolm");

    free(c);
}

/* What the format leaves unhashed must be zero, what open refuses pack never
 * writes, and a damaged store entry is replaced rather than trusted by size. */
static void test_strictness(void) {
    char err[512], p[512];
    uint8_t *c = malloc(g_fn);
    cm_kolm *k = NULL;
    ASSERT_TRUE(c != NULL);
    if (!c)
        return;
    // a reserved header byte
    memcpy(c, g_file, g_fn);
    c[50] = 1;
    save_copy("t-reserved.kolm", c, g_fn, p, sizeof p);
    EXPECT_OPEN_FAILS(p, "reserved");
    // a padding byte between the manifest and the first blob (not covered by any hash)
    uint64_t mlen = rd_u64(g_file + 16);
    if (align64(64 + mlen) > 64 + mlen) {
        memcpy(c, g_file, g_fn);
        c[64 + mlen] = 'x';
        save_copy("t-pad.kolm", c, g_fn, p, sizeof p);
        ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
        if (k) {
            ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), -1);
            ASSERT_CONTAINS(err, "stray bytes");
            cm_kolm_close(k);
            k = NULL;
        }
    }
    free(c);
    // pack refuses inputs open would refuse
    json_t *meta = json_pack("{s:s}", "name", "strict");
    cm_kolm_input dup[2] = {{"weights", g_wpath, 0}, {"weights", g_dpath, 0}};
    cm_kolm_input unknown[1] = {{"tokenizer", g_wpath, 0}};
    cm_kolm_input noweights[1] = {{"draft", g_dpath, 0}};
    path_of(p, sizeof p, g_root, "strict.kolm");
    ASSERT_EQ(cm_kolm_pack(p, g_home, meta, dup, 2, &g_key, NULL, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "two 'weights'");
    ASSERT_EQ(cm_kolm_pack(p, g_home, meta, unknown, 1, &g_key, NULL, err, sizeof err), -1);
    ASSERT_EQ(cm_kolm_pack(p, g_home, meta, noweights, 1, &g_key, NULL, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "no 'weights'");
    ASSERT_EQ(access(p, F_OK), -1); // nothing written
    json_decref(meta);
    // a store entry of the right size but wrong bytes is rewritten by the next pack
    meta = json_pack("{s:s}", "name", "store");
    cm_kolm_input ref[1] = {{"weights", g_wpath, 1}};
    ASSERT_EQ(cm_kolm_pack(p, g_home, meta, ref, 1, &g_key, NULL, err, sizeof err), 0);
    uint8_t d[CM_SHA256_LEN], zero[W_SIZE] = {0};
    char cid[CM_CID_MAX], sp[768];
    cm_sha256(g_w, W_SIZE, d);
    my_cid(0x55, d, cid);
    snprintf(sp, sizeof sp, "%s/models/%s", g_home, cid);
    chmod(sp, 0644);
    write_file(sp, zero, sizeof zero);
    ASSERT_EQ(cm_kolm_pack(p, g_home, meta, ref, 1, &g_key, NULL, err, sizeof err), 0);
    ASSERT_EQ(cm_kolm_open(p, g_home, &k, err, sizeof err), 0);
    if (k) {
        ASSERT_EQ(cm_kolm_verify_blobs(k, err, sizeof err), 0);
        cm_kolm_close(k);
    }
    struct stat st;
    ASSERT_EQ(stat(sp, &st), 0);
    ASSERT_EQ(st.st_mode & 0222, 0); // stored blobs are read-only
    json_decref(meta);
}

static void test_is_artifact(void) {
    char p[512];
    ASSERT_EQ(cm_kolm_is_artifact(g_src), 1);
    ASSERT_EQ(cm_kolm_is_artifact(g_wpath), 0);
    path_of(p, sizeof p, g_root, "empty.bin");
    write_file(p, "", 0);
    ASSERT_EQ(cm_kolm_is_artifact(p), 0);
    path_of(p, sizeof p, g_root, "short.bin");
    write_file(p, "\x89KOLM\r\n", 7); // the magic less its last byte
    ASSERT_EQ(cm_kolm_is_artifact(p), 0);
    path_of(p, sizeof p, g_root, "magic-only.bin");
    write_file(p, "\x89KOLM\r\n\x1a", 8); // only the magic: an artifact by this test (open refuses it)
    ASSERT_EQ(cm_kolm_is_artifact(p), 1);
    EXPECT_OPEN_FAILS(p, NULL);
    path_of(p, sizeof p, g_root, "gguf.bin");
    write_file(p, "GGUF\x03\0\0\0", 8);
    ASSERT_EQ(cm_kolm_is_artifact(p), 0);
    path_of(p, sizeof p, g_root, "no-such-file");
    ASSERT_EQ(cm_kolm_is_artifact(p), -1);
}

int main(void) {
    if (cm_crypto_init()) {
        fprintf(stderr, "cm_crypto_init failed\n");
        return 1;
    }
    snprintf(g_root, sizeof g_root, "/tmp/test_kolm.XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    path_of(g_home, sizeof g_home, g_root, "home");
    path_of(g_in, sizeof g_in, g_root, "in");
    path_of(g_keys, sizeof g_keys, g_root, "keys");
    path_of(g_ring, sizeof g_ring, g_root, "ring");
    path_of(g_empty, sizeof g_empty, g_root, "empty-ring");
    const char *dirs[] = {g_home, g_in, g_keys, g_ring, g_empty};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if (mkdir(dirs[i], 0755)) {
            perror(dirs[i]);
            return 1;
        }
    fill(g_w, W_SIZE, 1);
    fill(g_d, D_SIZE, 2);
    path_of(g_wpath, sizeof g_wpath, g_in, "weights.gguf");
    path_of(g_dpath, sizeof g_dpath, g_in, "draft.gguf");
    write_file(g_wpath, g_w, W_SIZE);
    write_file(g_dpath, g_d, D_SIZE);

    test_sha256();
    test_hex();
    test_b64url();
    test_cid();
    test_canonical_json();
    test_keys();
    char err[512], kp[512];
    path_of(kp, sizeof kp, g_keys, "alice.key");
    if (cm_key_load_secret(kp, &g_key, err, sizeof err)) { // the signer of the artifacts: alice, in g_ring
        fprintf(stderr, "cannot load the test key: %s\n", err);
        kt_failures++;
    } else {
        test_pack_open();
        test_reference();
        test_tamper();
        test_strictness();
        test_is_artifact();
    }
    free(g_file);

    if (nftw(g_root, rm_cb, 16, FTW_DEPTH | FTW_PHYS))
        fprintf(stderr, "cannot remove %s: %s\n", g_root, strerror(errno));
    return kt_done("test_kolm");
}
