/* cm_kolm: the .kolm artifact file — reading, checking and writing it.
 *
 * Layout (all integers little-endian; the format is documented in docs/kolm-format.md):
 *
 *   0   magic "\x89KOLM\r\n\x1a"           8 bytes
 *   8   u32 format version (1)
 *   12  u32 header size (64)
 *   16  u64 manifest length M             the manifest starts at 64
 *   24  u64 signature offset (0: unsigned)
 *   32  u64 signature length
 *   40  24 zero bytes
 *   64  manifest: canonical JSON (sorted keys, no whitespace, UTF-8)
 *       blobs, each at a 64-byte aligned offset the manifest gives
 *       signature block: canonical JSON {alg, key_id, public_key, signature}
 *
 * The manifest is canonical JSON (cm_canon.h). The artifact id (CID) is a CIDv1 of the manifest bytes: multihash sha2-256,
 * multicodec json (0x0200), multibase base32 lowercase ("bagaaiera…"). A blob held
 * in KOLM_HOME/models/ instead of the file is named by its own CIDv1 (multicodec
 * raw, "bafkrei…") and stored there under that name. The signature is ed25519
 * over the manifest bytes, so it covers every blob's SHA-256 and placement and
 * re-signing never moves a blob.
 *
 * cm_kolm_open reads and checks everything but the blob bytes (header, canonical
 * manifest, blob table in bounds and aligned, the signature block's form); the
 * blob hashes are checked by cm_kolm_verify_blobs, the signature by
 * cm_kolm_check_signature. Errors name what failed. */
#ifndef CM_KOLM_H
#define CM_KOLM_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/cm_crypto.h"

#define CM_KOLM_MAGIC "\x89KOLM\r\n\x1a"
#define CM_KOLM_VERSION 1
#define CM_KOLM_HEADER 64
#define CM_KOLM_ALIGN 64
#define CM_KOLM_MAX_MANIFEST (16u << 20)
#define CM_KOLM_MAX_BLOBS 64
#define CM_CID_MAX 72 // text form with its NUL

enum { CM_CODEC_RAW = 0x55, CM_CODEC_JSON = 0x0200 };

/* CIDv1 text of a SHA-256 digest under codec. */
void cm_cid(int codec, const uint8_t digest[CM_SHA256_LEN], char out[CM_CID_MAX]);

typedef struct cm_kolm_blob {
    const char *role;   // "weights", "adapter", "draft", "embedding"
    const char *name;   // the packed file's name
    const char *format; // "gguf"
    uint64_t size;
    uint8_t sha256[CM_SHA256_LEN];
    uint64_t offset;  // in the artifact; 0 for a referenced blob
    const char *cid;  // referenced blobs: their CID in KOLM_HOME/models/; NULL when embedded
    char path[4096];  // where the bytes are: the artifact itself, or the store file
} cm_kolm_blob;

typedef struct cm_kolm {
    char path[4096];
    uint64_t file_size;
    uint8_t *manifest; // the exact bytes (NUL-terminated copy)
    size_t manifest_len;
    json_t *m; // the manifest, parsed
    char cid[CM_CID_MAX];
    int has_sig;
    uint64_t sig_offset;
    uint8_t sig[CM_SIG_LEN];
    uint8_t signer[CM_PK_LEN];
    char signer_id[CM_KEY_ID_LEN + 1];
    cm_kolm_blob blobs[CM_KOLM_MAX_BLOBS];
    int n_blobs;
} cm_kolm;

/* 1 when the file at path starts with the .kolm magic, 0 when not, -1 unreadable. */
int cm_kolm_is_artifact(const char *path);

/* Opens and checks the artifact at path; home is KOLM_HOME (referenced blobs are
 * looked up in home/models/). 0, or -1 with err set. */
int cm_kolm_open(const char *path, const char *home, cm_kolm **out, char *err, size_t errlen);
void cm_kolm_close(cm_kolm *k);

/* The signature: 0 valid; -1 with err ("not signed", "the signature does not
 * match the manifest"). */
int cm_kolm_check_signature(const cm_kolm *k, char *err, size_t errlen);
/* Signature valid and its key in the keyring directory: 0, or -1 with err. */
int cm_kolm_check_trust(const cm_kolm *k, const char *keyring, char *err, size_t errlen);
/* Hashes every blob against the manifest and checks that the alignment padding
 * between the parts is zero: 0, or -1 with err naming the blob. */
int cm_kolm_verify_blobs(const cm_kolm *k, char *err, size_t errlen);
const cm_kolm_blob *cm_kolm_blob_role(const cm_kolm *k, const char *role);

/* What to pack: one file per role. reference = store the bytes in home/models/
 * by CID and point at them instead of embedding. */
typedef struct cm_kolm_input {
    const char *role;
    const char *path;
    int reference;
} cm_kolm_input;

/* Writes the artifact out (through out.tmp and a rename): meta holds the manifest's
 * members other than "kolm_format" and "blobs" (it is not modified); key signs it,
 * NULL leaves it unsigned. On success cid (when not NULL) gets the artifact id. */
int cm_kolm_pack(const char *out, const char *home, json_t *meta, const cm_kolm_input *in, int n_in,
                 const cm_key *key, char cid[CM_CID_MAX], char *err, size_t errlen);

/* KOLM_HOME (default ~/.kolm) into out. */
void cm_kolm_home(char *out, size_t n);
/* The default keyring of trusted signers: KOLM_HOME/keys/trusted. */
void cm_kolm_keyring(char *out, size_t n);
/* mkdir -p: 0, or -1 with errno. */
int cm_mkdirs(const char *path, unsigned mode);

#endif
