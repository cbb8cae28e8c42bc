/* cm_kolm.c: see cm_kolm.h.
 *
 * Design note. Packing makes two passes over the inputs: the first hashes them
 * (the manifest, which precedes the blobs, carries their SHA-256), the second
 * copies them to their offsets. The offsets are written into the manifest, whose
 * length depends on their digits, so the layout is recomputed until the manifest
 * length settles (two rounds in practice). */
#include "common/cm_kolm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cm_canon.h"
#include "common/cm_log.h"

static const char *const roles[] = {"weights", "adapter", "draft", "embedding", NULL};

static uint64_t align_up(uint64_t v) {
    return (v + CM_KOLM_ALIGN - 1) & ~(uint64_t)(CM_KOLM_ALIGN - 1);
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void cm_cid(int codec, const uint8_t digest[CM_SHA256_LEN], char out[CM_CID_MAX]) {
    uint8_t b[40];
    size_t n = 0;
    b[n++] = 0x01; // CIDv1
    for (unsigned v = (unsigned)codec;; v >>= 7) { // unsigned varint
        b[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        if (v <= 0x7f)
            break;
    }
    b[n++] = 0x12; // sha2-256
    b[n++] = 0x20;
    memcpy(b + n, digest, CM_SHA256_LEN);
    n += CM_SHA256_LEN;
    static const char al[] = "abcdefghijklmnopqrstuvwxyz234567"; // RFC 4648 base32, lowercase, no padding
    size_t o = 0;
    out[o++] = 'b';
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | b[i];
        bits += 8;
        while (bits >= 5) {
            out[o++] = al[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits)
        out[o++] = al[(acc << (5 - bits)) & 31];
    out[o] = 0;
}

void cm_kolm_home(char *out, size_t n) {
    const char *h = getenv("KOLM_HOME"), *u = getenv("HOME");
    if (h && *h)
        snprintf(out, n, "%s", h);
    else
        snprintf(out, n, "%s/.kolm", u ? u : ".");
}

void cm_kolm_keyring(char *out, size_t n) {
    char home[4096];
    cm_kolm_home(home, sizeof home);
    snprintf(out, n, "%s/keys/trusted", home);
}

int cm_mkdirs(const char *path, unsigned mode) {
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, (mode_t)mode) && errno != EEXIST)
                return -1;
            *s = '/';
        }
    return mkdir(p, (mode_t)mode) && errno != EEXIST ? -1 : 0;
}

int cm_kolm_is_artifact(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char m[8];
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EISDIR;
        return -1;
    }
    ssize_t n = read(fd, m, sizeof m);
    close(fd);
    return n == 8 && !memcmp(m, CM_KOLM_MAGIC, 8);
}

static int pread_all(int fd, void *p, size_t n, uint64_t off) {
    uint8_t *b = p;
    while (n) {
        ssize_t r = pread(fd, b, n, (off_t)off);
        if (r <= 0)
            return -1;
        b += r, n -= (size_t)r, off += (uint64_t)r;
    }
    return 0;
}

/* A string member of o, or NULL. */
static const char *jstr(const json_t *o, const char *k) {
    return json_string_value(json_object_get(o, k));
}

static int parse_blob(cm_kolm *k, const json_t *b, int i, uint64_t data_start, const char *home, char *err,
                      size_t errlen) {
    cm_kolm_blob *x = &k->blobs[i];
    json_t *size = json_object_get(b, "size"), *off = json_object_get(b, "offset");
    const char *sha = jstr(b, "sha256");
    x->role = jstr(b, "role");
    x->name = jstr(b, "name");
    x->format = jstr(b, "format");
    x->cid = jstr(b, "cid");
    int known = 0;
    for (int r = 0; x->role && roles[r]; r++)
        known |= !strcmp(x->role, roles[r]);
    if (!json_is_object(b) || !known || !x->name || !x->format || !json_is_integer(size) ||
        json_integer_value(size) < 0 || !sha || cm_unhex(sha, strlen(sha), x->sha256, CM_SHA256_LEN) ||
        (x->cid ? off != NULL : !json_is_integer(off) || json_integer_value(off) < 0)) {
        cm_set_err(err, errlen, "%s: manifest blob %d is malformed (it needs a known role, name, format, size, "
                   "sha256, and an offset or a cid)", k->path, i);
        return -1;
    }
    for (int j = 0; j < i; j++)
        if (!strcmp(k->blobs[j].role, x->role)) {
            cm_set_err(err, errlen, "%s: the manifest has two '%s' blobs", k->path, x->role);
            return -1;
        }
    x->size = (uint64_t)json_integer_value(size);
    if (x->cid) {
        char want[CM_CID_MAX];
        cm_cid(CM_CODEC_RAW, x->sha256, want);
        if (strcmp(want, x->cid)) {
            cm_set_err(err, errlen, "%s: blob '%s' names cid %s, which is not the CID of its sha256", k->path, x->role,
                       x->cid);
            return -1;
        }
        snprintf(x->path, sizeof x->path, "%s/models/%s", home, x->cid);
        struct stat st;
        if (stat(x->path, &st) || !S_ISREG(st.st_mode)) {
            cm_set_err(err, errlen, "%s: blob '%s' refers to %s, which is not in the model store %s/models/",
                       k->path, x->role, x->cid, home);
            return -1;
        }
        if ((uint64_t)st.st_size != x->size) {
            cm_set_err(err, errlen, "%s: stored blob %s is %lld bytes, the manifest says %llu", k->path, x->path,
                       (long long)st.st_size, (unsigned long long)x->size);
            return -1;
        }
        return 0;
    }
    x->offset = (uint64_t)json_integer_value(off);
    if (x->offset % CM_KOLM_ALIGN || x->offset < data_start || x->size > k->file_size ||
        x->offset > k->file_size - x->size) {
        cm_set_err(err, errlen, "%s: blob '%s' (offset %llu, %llu bytes) is misaligned or outside the file (%llu bytes)",
                   k->path, x->role, (unsigned long long)x->offset, (unsigned long long)x->size,
                   (unsigned long long)k->file_size);
        return -1;
    }
    for (int j = 0; j < i; j++) {
        const cm_kolm_blob *y = &k->blobs[j];
        if (!y->cid && x->offset < y->offset + y->size && y->offset < x->offset + x->size) {
            cm_set_err(err, errlen, "%s: blobs '%s' and '%s' overlap", k->path, y->role, x->role);
            return -1;
        }
    }
    snprintf(x->path, sizeof x->path, "%s", k->path);
    return 0;
}

static int parse_signature(cm_kolm *k, int fd, uint64_t off, uint64_t len, char *err, size_t errlen) {
    if (!off && !len)
        return 0;
    if (len > 4096 || off < CM_KOLM_HEADER + k->manifest_len || off > k->file_size || len > k->file_size - off) {
        cm_set_err(err, errlen, "%s: the signature block is outside the file", k->path);
        return -1;
    }
    for (int i = 0; i < k->n_blobs; i++)
        if (!k->blobs[i].cid && off < k->blobs[i].offset + k->blobs[i].size && k->blobs[i].offset < off + len) {
            cm_set_err(err, errlen, "%s: the signature block overlaps blob '%s'", k->path, k->blobs[i].role);
            return -1;
        }
    char buf[4097];
    if (pread_all(fd, buf, (size_t)len, off)) {
        cm_set_err(err, errlen, "%s: cannot read the signature block", k->path);
        return -1;
    }
    buf[len] = 0;
    json_t *s = json_loadb(buf, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    const char *alg = jstr(s, "alg"), *pk = jstr(s, "public_key"), *sig = jstr(s, "signature"),
               *kid = jstr(s, "key_id");
    size_t n1 = 0, n2 = 0;
    int bad = !alg || strcmp(alg, "ed25519") || !pk || !sig || !kid ||
              cm_unb64url(pk, strlen(pk), k->signer, CM_PK_LEN, &n1) || n1 != CM_PK_LEN ||
              cm_unb64url(sig, strlen(sig), k->sig, CM_SIG_LEN, &n2) || n2 != CM_SIG_LEN;
    if (!bad) {
        cm_key_id(k->signer, k->signer_id);
        bad = strcmp(kid, k->signer_id) != 0;
    }
    json_decref(s);
    if (bad) {
        cm_set_err(err, errlen, "%s: the signature block is malformed", k->path);
        return -1;
    }
    k->has_sig = 1;
    k->sig_offset = off;
    return 0;
}

int cm_kolm_open(const char *path, const char *home, cm_kolm **out, char *err, size_t errlen) {
    *out = NULL;
    cm_kolm *k = calloc(1, sizeof *k);
    if (!k) {
        cm_set_err(err, errlen, "out of memory");
        return -1;
    }
    snprintf(k->path, sizeof k->path, "%s", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    uint8_t h[CM_KOLM_HEADER];
    if (fd < 0 || fstat(fd, &st)) {
        cm_set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    k->file_size = (uint64_t)st.st_size;
    if (!S_ISREG(st.st_mode) || k->file_size < CM_KOLM_HEADER || pread_all(fd, h, sizeof h, 0) ||
        memcmp(h, CM_KOLM_MAGIC, 8)) {
        cm_set_err(err, errlen, "%s: not a .kolm artifact (bad magic)", path);
        goto fail;
    }
    uint32_t ver = get_u32(h + 8), hsize = get_u32(h + 12);
    uint64_t mlen = get_u64(h + 16), soff = get_u64(h + 24), slen = get_u64(h + 32);
    static const uint8_t zero[24];
    if (ver == CM_KOLM_VERSION && memcmp(h + 40, zero, sizeof zero)) {
        cm_set_err(err, errlen, "%s: the header's reserved bytes are not zero", path);
        goto fail;
    }
    if (ver != CM_KOLM_VERSION || hsize != CM_KOLM_HEADER) {
        cm_set_err(err, errlen, "%s: .kolm format version %u is not supported (this kolm reads version %d)", path, ver,
                   CM_KOLM_VERSION);
        goto fail;
    }
    if (!mlen || mlen > CM_KOLM_MAX_MANIFEST || mlen > k->file_size - CM_KOLM_HEADER) {
        cm_set_err(err, errlen, "%s: the manifest length (%llu) does not fit the file", path, (unsigned long long)mlen);
        goto fail;
    }
    k->manifest_len = (size_t)mlen;
    if (!(k->manifest = malloc(k->manifest_len + 1)) || pread_all(fd, k->manifest, k->manifest_len, CM_KOLM_HEADER)) {
        cm_set_err(err, errlen, "%s: cannot read the manifest", path);
        goto fail;
    }
    k->manifest[k->manifest_len] = 0;
    json_error_t je;
    k->m = json_loadb((const char *)k->manifest, k->manifest_len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(k->m)) {
        cm_set_err(err, errlen, "%s: the manifest is not a JSON object (%s)", path, k->m ? "wrong type" : je.text);
        goto fail;
    }
    size_t clen = 0;
    char *canon = cm_canonical_json(k->m, &clen);
    int same = canon && clen == k->manifest_len && !memcmp(canon, k->manifest, clen);
    free(canon);
    if (!same) {
        cm_set_err(err, errlen, "%s: the manifest is not in canonical form (sorted keys, no whitespace)", path);
        goto fail;
    }
    uint8_t d[CM_SHA256_LEN];
    cm_sha256(k->manifest, k->manifest_len, d);
    cm_cid(CM_CODEC_JSON, d, k->cid);
    json_t *fmt = json_object_get(k->m, "kolm_format"), *blobs = json_object_get(k->m, "blobs");
    if (!json_is_integer(fmt) || json_integer_value(fmt) != CM_KOLM_VERSION) {
        cm_set_err(err, errlen, "%s: the manifest's kolm_format is not %d", path, CM_KOLM_VERSION);
        goto fail;
    }
    if (!json_is_array(blobs) || !json_array_size(blobs) || json_array_size(blobs) > CM_KOLM_MAX_BLOBS) {
        cm_set_err(err, errlen, "%s: the manifest lists no blobs (or more than %d)", path, CM_KOLM_MAX_BLOBS);
        goto fail;
    }
    k->n_blobs = (int)json_array_size(blobs);
    for (int i = 0; i < k->n_blobs; i++)
        if (parse_blob(k, json_array_get(blobs, (size_t)i), i, align_up(CM_KOLM_HEADER + mlen), home, err, errlen))
            goto fail;
    if (!cm_kolm_blob_role(k, "weights")) {
        cm_set_err(err, errlen, "%s: the manifest has no 'weights' blob", path);
        goto fail;
    }
    if (parse_signature(k, fd, soff, slen, err, errlen))
        goto fail;
    close(fd);
    *out = k;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    cm_kolm_close(k);
    return -1;
}

void cm_kolm_close(cm_kolm *k) {
    if (!k)
        return;
    json_decref(k->m);
    free(k->manifest);
    free(k);
}

const cm_kolm_blob *cm_kolm_blob_role(const cm_kolm *k, const char *role) {
    for (int i = 0; i < k->n_blobs; i++)
        if (!strcmp(k->blobs[i].role, role))
            return &k->blobs[i];
    return NULL;
}

int cm_kolm_check_signature(const cm_kolm *k, char *err, size_t errlen) {
    if (!k->has_sig) {
        cm_set_err(err, errlen, "%s is not signed", k->path);
        return -1;
    }
    if (cm_verify(k->signer, k->manifest, k->manifest_len, k->sig)) {
        cm_set_err(err, errlen, "%s: the signature (key %s) does not match the manifest", k->path, k->signer_id);
        return -1;
    }
    return 0;
}

int cm_kolm_check_trust(const cm_kolm *k, const char *keyring, char *err, size_t errlen) {
    if (cm_kolm_check_signature(k, err, errlen))
        return -1;
    int r = cm_keyring_has(keyring, k->signer);
    if (r <= 0) {
        cm_set_err(err, errlen, "%s: signer %s is not a trusted key (%s %s)", k->path, k->signer_id,
                   r < 0 ? "cannot read the keyring" : "no matching .pub in", keyring);
        return -1;
    }
    return 0;
}

/* SHA-256 of bytes [off, off+size) of path. */
static int hash_file(const char *path, uint64_t off, uint64_t size, uint8_t out[CM_SHA256_LEN]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    uint64_t base = off & ~(uint64_t)(sysconf(_SC_PAGESIZE) - 1);
    size_t maplen = (size_t)(off - base + size);
    if (!size) {
        close(fd);
        cm_sha256("", 0, out);
        return 0;
    }
    uint8_t *p = mmap(NULL, maplen, PROT_READ, MAP_PRIVATE, fd, (off_t)base);
    close(fd);
    if (p == MAP_FAILED)
        return -1;
    madvise(p, maplen, MADV_SEQUENTIAL);
    cm_sha256(p + (off - base), (size_t)size, out);
    munmap(p, maplen);
    return 0;
}

/* The bytes between the manifest, the embedded blobs and the signature block
 * (alignment padding) must be zero: nothing hashes them, so nothing may hide there. */
static int check_padding(const cm_kolm *k, char *err, size_t errlen) {
    uint64_t at = CM_KOLM_HEADER + k->manifest_len;
    int fd = open(k->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cm_set_err(err, errlen, "%s: %s", k->path, strerror(errno));
        return -1;
    }
    int bad = 0;
    for (int i = 0; !bad && i <= k->n_blobs; i++) {
        uint64_t next = k->sig_offset ? k->sig_offset : k->file_size; // after the last blob
        for (int j = 0; j < k->n_blobs; j++) // the nearest embedded blob at or after `at`
            if (!k->blobs[j].cid && k->blobs[j].offset >= at && k->blobs[j].offset < next)
                next = k->blobs[j].offset;
        uint8_t pad[CM_KOLM_ALIGN];
        if (next < at || next - at > sizeof pad) {
            bad = 1;
            break;
        }
        if (next > at) {
            static const uint8_t z[CM_KOLM_ALIGN];
            bad = pread_all(fd, pad, (size_t)(next - at), at) || memcmp(pad, z, (size_t)(next - at));
        }
        int j = 0;
        while (j < k->n_blobs && (k->blobs[j].cid || k->blobs[j].offset != next))
            j++;
        if (j == k->n_blobs)
            break; // reached the signature block or the end
        at = next + k->blobs[j].size;
    }
    close(fd);
    if (bad)
        cm_set_err(err, errlen, "%s: there are stray bytes between its parts (padding must be zero and under %d bytes)",
                   k->path, CM_KOLM_ALIGN);
    return bad ? -1 : 0;
}

int cm_kolm_verify_blobs(const cm_kolm *k, char *err, size_t errlen) {
    if (check_padding(k, err, errlen))
        return -1;
    for (int i = 0; i < k->n_blobs; i++) {
        const cm_kolm_blob *b = &k->blobs[i];
        uint8_t d[CM_SHA256_LEN];
        if (hash_file(b->path, b->offset, b->size, d)) {
            cm_set_err(err, errlen, "%s: cannot read blob '%s': %s", k->path, b->role, strerror(errno));
            return -1;
        }
        if (memcmp(d, b->sha256, CM_SHA256_LEN)) {
            cm_set_err(err, errlen, "%s: blob '%s' (%s) does not match its SHA-256 in the manifest", k->path, b->role,
                       b->name);
            return -1;
        }
    }
    return 0;
}

/* ---- packing ---- */

typedef struct pack_blob {
    const cm_kolm_input *in;
    uint64_t size;
    uint8_t sha256[CM_SHA256_LEN];
    char cid[CM_CID_MAX];
} pack_blob;

/* Stores path as home/models/CID unless it is there already. */
static int store_blob(const char *home, const pack_blob *b, char *err, size_t errlen) {
    char dst[4096], tmp[4200];
    snprintf(dst, sizeof dst, "%s/models", home);
    cm_mkdirs(dst, 0755);
    snprintf(dst, sizeof dst, "%s/models/%s", home, b->cid);
    struct stat st;
    uint8_t have[CM_SHA256_LEN];
    if (!stat(dst, &st) && (uint64_t)st.st_size == b->size && !hash_file(dst, 0, b->size, have) &&
        !memcmp(have, b->sha256, CM_SHA256_LEN))
        return 0;
    // A copy, not a link: a stored blob must not change when its source file is edited.
    snprintf(tmp, sizeof tmp, "%s.tmp%d", dst, (int)getpid());
    int in = open(b->in->path, O_RDONLY | O_CLOEXEC), outfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int bad = in < 0 || outfd < 0;
    for (uint64_t done = 0; !bad && done < b->size;) {
        ssize_t n = copy_file_range(in, NULL, outfd, NULL, (size_t)(b->size - done), 0);
        if (n <= 0)
            bad = 1;
        else
            done += (uint64_t)n;
    }
    if (in >= 0)
        close(in);
    if (outfd >= 0 && (fsync(outfd) | close(outfd)))
        bad = 1;
    if (!bad)
        chmod(tmp, 0444);
    if (bad || rename(tmp, dst)) {
        cm_set_err(err, errlen, "cannot store %s as %s: %s", b->in->path, dst, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* The manifest for the current layout. */
static char *layout_manifest(json_t *meta, pack_blob *pb, int n, uint64_t data_start, uint64_t *end, size_t *len) {
    json_t *m = json_deep_copy(meta);
    json_t *arr = json_array();
    uint64_t off = data_start;
    char hex[2 * CM_SHA256_LEN + 1];
    for (int i = 0; m && arr && i < n; i++) {
        const char *name = strrchr(pb[i].in->path, '/');
        name = name ? name + 1 : pb[i].in->path;
        cm_hex(pb[i].sha256, CM_SHA256_LEN, hex);
        json_t *b = json_pack("{s:s,s:s,s:s,s:I,s:s}", "role", pb[i].in->role, "name", name, "format", "gguf", "size",
                              (json_int_t)pb[i].size, "sha256", hex);
        if (!b)
            break;
        if (pb[i].in->reference) {
            json_object_set_new(b, "cid", json_string(pb[i].cid));
        } else {
            json_object_set_new(b, "offset", json_integer((json_int_t)off));
            off = align_up(off + pb[i].size);
        }
        json_array_append_new(arr, b);
    }
    json_object_set_new(m, "kolm_format", json_integer(CM_KOLM_VERSION));
    json_object_set_new(m, "blobs", arr);
    char *s = cm_canonical_json(m, len);
    json_decref(m);
    *end = off;
    return s;
}

static int write_all(int fd, const void *p, size_t n, uint64_t off) {
    const uint8_t *b = p;
    while (n) {
        ssize_t w = pwrite(fd, b, n, (off_t)off);
        if (w <= 0)
            return -1;
        b += w, n -= (size_t)w, off += (uint64_t)w;
    }
    return 0;
}

static int copy_into(int dst, uint64_t off, const char *src, uint64_t size) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    loff_t o = (loff_t)off;
    uint64_t done = 0;
    while (done < size) {
        ssize_t n = copy_file_range(in, NULL, dst, &o, (size_t)(size - done), 0);
        if (n <= 0)
            break;
        done += (uint64_t)n;
    }
    close(in);
    return done == size ? 0 : -1;
}

int cm_kolm_pack(const char *out, const char *home, json_t *meta, const cm_kolm_input *in, int n_in,
                 const cm_key *key, char cid[CM_CID_MAX], char *err, size_t errlen) {
    if (n_in < 1 || n_in > CM_KOLM_MAX_BLOBS || !json_is_object(meta)) {
        cm_set_err(err, errlen, "nothing to pack");
        return -1;
    }
    pack_blob pb[CM_KOLM_MAX_BLOBS];
    for (int i = 0; i < n_in; i++) {
        struct stat st;
        pb[i].in = &in[i];
        if (stat(in[i].path, &st) || !S_ISREG(st.st_mode)) {
            cm_set_err(err, errlen, "%s: not a readable file", in[i].path);
            return -1;
        }
        pb[i].size = (uint64_t)st.st_size;
        if (hash_file(in[i].path, 0, pb[i].size, pb[i].sha256)) {
            cm_set_err(err, errlen, "%s: cannot read: %s", in[i].path, strerror(errno));
            return -1;
        }
        cm_cid(CM_CODEC_RAW, pb[i].sha256, pb[i].cid);
        if (in[i].reference && store_blob(home, &pb[i], err, errlen))
            return -1;
    }
    size_t mlen = 0;
    uint64_t start = align_up(CM_KOLM_HEADER), end = 0;
    char *man = NULL;
    for (int round = 0; round < 8; round++) {
        free(man);
        man = layout_manifest(meta, pb, n_in, start, &end, &mlen);
        if (!man) {
            cm_set_err(err, errlen, "out of memory");
            return -1;
        }
        if (align_up(CM_KOLM_HEADER + mlen) == start)
            break;
        start = align_up(CM_KOLM_HEADER + mlen);
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", out, (int)getpid());
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        cm_set_err(err, errlen, "%s: %s", tmp, strerror(errno));
        free(man);
        return -1;
    }
    uint8_t h[CM_KOLM_HEADER] = {0};
    memcpy(h, CM_KOLM_MAGIC, 8);
    put_u32(h + 8, CM_KOLM_VERSION);
    put_u32(h + 12, CM_KOLM_HEADER);
    put_u64(h + 16, mlen);
    char *sigblock = NULL;
    size_t slen = 0;
    uint64_t soff = align_up(end);
    if (key) {
        uint8_t sig[CM_SIG_LEN];
        char pk64[64], sig64[100];
        cm_sign(key, man, mlen, sig);
        cm_b64url(key->pk, CM_PK_LEN, pk64);
        cm_b64url(sig, CM_SIG_LEN, sig64);
        json_t *s = json_pack("{s:s,s:s,s:s,s:s}", "alg", "ed25519", "key_id", key->id, "public_key", pk64,
                              "signature", sig64);
        sigblock = s ? cm_canonical_json(s, &slen) : NULL;
        json_decref(s);
        put_u64(h + 24, soff);
        put_u64(h + 32, slen);
    }
    int bad = (key && !sigblock) || write_all(fd, h, sizeof h, 0) || write_all(fd, man, mlen, CM_KOLM_HEADER);
    uint64_t off = start;
    for (int i = 0; !bad && i < n_in; i++) {
        if (in[i].reference)
            continue;
        bad = copy_into(fd, off, in[i].path, pb[i].size);
        off = align_up(off + pb[i].size);
    }
    if (!bad && sigblock)
        bad = write_all(fd, sigblock, slen, soff);
    if (!bad && !sigblock && ftruncate(fd, (off_t)end)) // unsigned: the file ends at the last blob
        bad = 1;
    if (!bad)
        bad = fsync(fd);
    if (close(fd))
        bad = 1;
    cm_kolm *check = NULL; // what open refuses is never written (unknown roles, no weights, NULs in meta)
    if (!bad && cm_kolm_open(tmp, home, &check, err, errlen)) {
        unlink(tmp);
        free(man);
        free(sigblock);
        return -1;
    }
    cm_kolm_close(check);
    if (bad || rename(tmp, out)) {
        cm_set_err(err, errlen, "cannot write %s: %s", out, strerror(errno));
        unlink(tmp);
        free(man);
        free(sigblock);
        return -1;
    }
    if (cid) {
        uint8_t d[CM_SHA256_LEN];
        cm_sha256(man, mlen, d);
        cm_cid(CM_CODEC_JSON, d, cid);
    }
    free(man);
    free(sigblock);
    return 0;
}
