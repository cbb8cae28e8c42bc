/* cm_crypto: the hashes, encodings, keys and signatures that artifacts and
 * receipts are built from.
 *
 * SHA-256 comes from OpenSSL (libcrypto, already linked for h2o's TLS): its SHA-NI
 * path hashes about 1.2 GB/s here against libsodium's 160 MB/s, and every blob of
 * an artifact is hashed at load. ed25519 signatures and base64url come from
 * libsodium. A key id is the first 8 bytes of SHA-256(public key) in hex.
 *
 * Key files are one line of base64url (no padding): NAME.pub holds the 32-byte
 * public key, NAME.key the 32-byte ed25519 seed (the private key, mode 0600);
 * PyNaCl's SigningKey(seed) and VerifyKey(pk) read the same bytes. */
#ifndef CM_CRYPTO_H
#define CM_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define CM_SHA256_LEN 32
#define CM_SIG_LEN 64
#define CM_PK_LEN 32
#define CM_KEY_ID_LEN 16 // hex characters

/* Fails only when libsodium cannot initialize (no entropy source). */
int cm_crypto_init(void);

void cm_sha256(const void *p, size_t n, uint8_t out[CM_SHA256_LEN]);

/* Incremental SHA-256. */
typedef struct cm_sha256_ctx {
    void *md; // EVP_MD_CTX
} cm_sha256_ctx;
int cm_sha256_init(cm_sha256_ctx *c);
void cm_sha256_update(cm_sha256_ctx *c, const void *p, size_t n);
/* Writes the digest and frees the context (so does cm_sha256_free alone). */
void cm_sha256_final(cm_sha256_ctx *c, uint8_t out[CM_SHA256_LEN]);
void cm_sha256_free(cm_sha256_ctx *c);

/* Lowercase hex of p[0..n) into out (2n+1 bytes). Parsing: 0 or -1. */
void cm_hex(const void *p, size_t n, char *out);
int cm_unhex(const char *s, size_t slen, uint8_t *out, size_t n);

/* base64url without padding. Encoded length of n bytes, with its NUL. */
size_t cm_b64url_len(size_t n);
void cm_b64url(const void *p, size_t n, char *out);
/* Decodes s[0..slen) into out (at most cap bytes): 0 with *n set, or -1 on bad
 * characters, padding, or a result over cap. */
int cm_unb64url(const char *s, size_t slen, uint8_t *out, size_t cap, size_t *n);

typedef struct cm_key {
    uint8_t pk[CM_PK_LEN];
    uint8_t sk[64]; // libsodium's seed||pk form; zero for a public-only key
    int has_secret;
    char id[CM_KEY_ID_LEN + 1];
} cm_key;

void cm_key_id(const uint8_t pk[CM_PK_LEN], char id[CM_KEY_ID_LEN + 1]);
int cm_key_generate(cm_key *k);
/* Writes dir/NAME.key (0600, refusing to replace an existing one) and dir/NAME.pub. */
int cm_key_save(const cm_key *k, const char *dir, const char *name, char *err, size_t errlen);
int cm_key_write_public(const cm_key *k, const char *path, char *err, size_t errlen);
/* Reads a .key (secret, which must not be readable by group or others) or a .pub. */
int cm_key_load_secret(const char *path, cm_key *k, char *err, size_t errlen);
int cm_key_load_public(const char *path, cm_key *k, char *err, size_t errlen);

void cm_sign(const cm_key *k, const void *m, size_t n, uint8_t sig[CM_SIG_LEN]);
/* 0 when sig is pk's signature of m[0..n), -1 otherwise. */
int cm_verify(const uint8_t pk[CM_PK_LEN], const void *m, size_t n, const uint8_t sig[CM_SIG_LEN]);

/* 1 when dir holds a NAME.pub whose key is pk (a keyring is a directory of .pub
 * files); 0 when not; -1 when dir cannot be read. */
int cm_keyring_has(const char *dir, const uint8_t pk[CM_PK_LEN]);

#endif
