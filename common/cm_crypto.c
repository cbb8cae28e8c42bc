/* cm_crypto.c: see cm_crypto.h. */
#include "common/cm_crypto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cm_log.h"

int cm_crypto_init(void) {
    return sodium_init() < 0 ? -1 : 0;
}

void cm_sha256(const void *p, size_t n, uint8_t out[CM_SHA256_LEN]) {
    unsigned int len = 0;
    if (!EVP_Digest(p, n, out, &len, EVP_sha256(), NULL))
        cm_assert_fail("EVP_Digest(sha256)", __FILE__, __LINE__); // only on allocation failure inside OpenSSL
}

int cm_sha256_init(cm_sha256_ctx *c) {
    c->md = EVP_MD_CTX_new();
    if (!c->md || !EVP_DigestInit_ex(c->md, EVP_sha256(), NULL)) {
        cm_sha256_free(c);
        return -1;
    }
    return 0;
}

void cm_sha256_update(cm_sha256_ctx *c, const void *p, size_t n) {
    if (c->md && n)
        EVP_DigestUpdate(c->md, p, n);
}

void cm_sha256_final(cm_sha256_ctx *c, uint8_t out[CM_SHA256_LEN]) {
    unsigned int len = 0;
    if (!c->md || !EVP_DigestFinal_ex(c->md, out, &len))
        memset(out, 0, CM_SHA256_LEN); // a context that failed to start: no digest verifies against zeros
    cm_sha256_free(c);
}

void cm_sha256_free(cm_sha256_ctx *c) {
    if (c->md)
        EVP_MD_CTX_free(c->md);
    c->md = NULL;
}

void cm_hex(const void *p, size_t n, char *out) {
    static const char d[] = "0123456789abcdef";
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; // canonical hex is lowercase
}

int cm_unhex(const char *s, size_t slen, uint8_t *out, size_t n) {
    if (slen != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int h = hexval(s[2 * i]), l = hexval(s[2 * i + 1]);
        if (h < 0 || l < 0)
            return -1;
        out[i] = (uint8_t)(h << 4 | l);
    }
    return 0;
}

size_t cm_b64url_len(size_t n) {
    return sodium_base64_encoded_len(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

void cm_b64url(const void *p, size_t n, char *out) {
    sodium_bin2base64(out, cm_b64url_len(n), p, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

int cm_unb64url(const char *s, size_t slen, uint8_t *out, size_t cap, size_t *n) {
    const char *end = NULL;
    size_t got = 0;
    if (sodium_base642bin(out, cap, s, slen, NULL, &got, &end, sodium_base64_VARIANT_URLSAFE_NO_PADDING) ||
        end != s + slen)
        return -1;
    *n = got;
    return 0;
}

void cm_key_id(const uint8_t pk[CM_PK_LEN], char id[CM_KEY_ID_LEN + 1]) {
    uint8_t h[CM_SHA256_LEN];
    cm_sha256(pk, CM_PK_LEN, h);
    cm_hex(h, CM_KEY_ID_LEN / 2, id);
}

int cm_key_generate(cm_key *k) {
    memset(k, 0, sizeof *k);
    if (crypto_sign_keypair(k->pk, k->sk))
        return -1;
    k->has_secret = 1;
    cm_key_id(k->pk, k->id);
    return 0;
}

static int write_line(const char *path, const void *bytes, size_t n, int mode, int excl, char *err, size_t errlen) {
    char text[128];
    cm_b64url(bytes, n, text);
    size_t l = strlen(text);
    text[l++] = '\n';
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC), mode);
    if (fd < 0) {
        cm_set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int bad = write(fd, text, l) != (ssize_t)l || fchmod(fd, (mode_t)mode) || fsync(fd);
    if (close(fd) || bad) {
        cm_set_err(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int cm_key_save(const cm_key *k, const char *dir, const char *name, char *err, size_t errlen) {
    char path[4096];
    if (!k->has_secret) {
        cm_set_err(err, errlen, "no private key to save");
        return -1;
    }
    snprintf(path, sizeof path, "%s/%s.key", dir, name);
    if (write_line(path, k->sk, 32, 0600, 1, err, errlen)) // the seed is the first half of sk
        return -1;
    snprintf(path, sizeof path, "%s/%s.pub", dir, name);
    return cm_key_write_public(k, path, err, errlen);
}

int cm_key_write_public(const cm_key *k, const char *path, char *err, size_t errlen) {
    return write_line(path, k->pk, CM_PK_LEN, 0644, 0, err, errlen);
}

/* Reads a one-line base64url key file into out (exactly n bytes). */
static int read_line(const char *path, uint8_t *out, size_t n, int secret, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cm_set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    char text[256];
    ssize_t l = -1;
    if (!fstat(fd, &st)) {
        if (secret && (st.st_mode & 077)) {
            close(fd);
            cm_set_err(err, errlen, "%s: a private key must not be readable by others (chmod 600 it)", path);
            return -1;
        }
        l = read(fd, text, sizeof text - 1);
    }
    close(fd);
    if (l < 0) {
        cm_set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    while (l > 0 && (text[l - 1] == '\n' || text[l - 1] == '\r' || text[l - 1] == ' '))
        l--;
    size_t got = 0;
    if (cm_unb64url(text, (size_t)l, out, n, &got) || got != n) {
        cm_set_err(err, errlen, "%s: not a kolm %s key (one line of base64url, %zu bytes)", path,
                   secret ? "private" : "public", n);
        return -1;
    }
    return 0;
}

int cm_key_load_secret(const char *path, cm_key *k, char *err, size_t errlen) {
    uint8_t seed[32];
    memset(k, 0, sizeof *k);
    if (read_line(path, seed, sizeof seed, 1, err, errlen))
        return -1;
    int rc = crypto_sign_seed_keypair(k->pk, k->sk, seed);
    sodium_memzero(seed, sizeof seed);
    if (rc) {
        cm_set_err(err, errlen, "%s: cannot derive the key pair", path);
        return -1;
    }
    k->has_secret = 1;
    cm_key_id(k->pk, k->id);
    return 0;
}

int cm_key_load_public(const char *path, cm_key *k, char *err, size_t errlen) {
    memset(k, 0, sizeof *k);
    if (read_line(path, k->pk, CM_PK_LEN, 0, err, errlen))
        return -1;
    cm_key_id(k->pk, k->id);
    return 0;
}

void cm_sign(const cm_key *k, const void *m, size_t n, uint8_t sig[CM_SIG_LEN]) {
    crypto_sign_detached(sig, NULL, m, n, k->sk);
}

int cm_verify(const uint8_t pk[CM_PK_LEN], const void *m, size_t n, const uint8_t sig[CM_SIG_LEN]) {
    return crypto_sign_verify_detached(sig, m, n, pk) ? -1 : 0;
}

int cm_keyring_has(const char *dir, const uint8_t pk[CM_PK_LEN]) {
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".pub"))
            continue;
        char path[4096];
        cm_key k;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (!cm_key_load_public(path, &k, NULL, 0) && !sodium_memcmp(k.pk, pk, CM_PK_LEN))
            found = 1;
    }
    closedir(d);
    return found;
}
