/* gw_cli.c: see gw_cli.h. */
#include "gateway/gw_cli.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cm_crypto.h"
#include "common/cm_kolm.h"
#include "gateway/gw_receipt.h"

#define MAX_RECEIPT (64u << 10)

int gw_cli_worker_path(char *out, size_t n) {
    char self[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l <= 0)
        return -1;
    self[l] = 0;
    char *slash = strrchr(self, '/');
    if (!slash)
        return -1;
    *slash = 0;
    if ((size_t)snprintf(out, n, "%s/kolm-worker", self) >= n)
        return -1;
    return access(out, X_OK);
}

/* ---- keygen ---- */

int gw_cli_keygen(int argc, char **argv) {
    const char *name = "default";
    int force = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--name") && i + 1 < argc)
            name = argv[++i];
        else if (!strcmp(argv[i], "--force"))
            force = 1;
        else {
            fprintf(stderr, "usage: kolm keygen [--name NAME] [--force]\n");
            return 2;
        }
    }
    if (!*name || strchr(name, '/') || name[0] == '.') {
        fprintf(stderr, "kolm keygen: a key name is a plain file name\n");
        return 2;
    }
    char home[4096], keys[4200], trusted[4300], path[4400], err[512] = "cannot generate a key";
    cm_kolm_home(home, sizeof home);
    snprintf(keys, sizeof keys, "%s/keys", home);
    cm_kolm_keyring(trusted, sizeof trusted);
    if (cm_mkdirs(keys, 0700) || cm_mkdirs(trusted, 0755)) {
        fprintf(stderr, "kolm keygen: cannot create %s: %s\n", trusted, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/%s.key", keys, name);
    if (!access(path, F_OK)) {
        if (!force) {
            fprintf(stderr, "kolm keygen: %s exists (pass --force to replace it)\n", path);
            return 1;
        }
        unlink(path);
    }
    // The new public key is also trusted by this machine's `kolm serve` and `kolm verify`.
    char pub[4400], dst[4400];
    snprintf(pub, sizeof pub, "%s/%s.pub", keys, name);
    snprintf(dst, sizeof dst, "%s/%s.pub", trusted, name);
    cm_key k;
    if (cm_key_generate(&k) || cm_key_save(&k, keys, name, err, sizeof err) ||
        cm_key_write_public(&k, dst, err, sizeof err)) {
        fprintf(stderr, "kolm keygen: %s\n", err);
        return 1;
    }
    printf("key %s\n  private %s (mode 0600)\n  public  %s\n  trusted %s\n", k.id, path, pub, dst);
    return 0;
}

/* ---- pack ---- */

int gw_cli_worker_run(const char *arg, const char *arg2, char *out, size_t cap, size_t *len) {
    char wexe[PATH_MAX];
    int fds[2];
    *len = 0;
    if (gw_cli_worker_path(wexe, sizeof wexe) || cap == 0 || pipe(fds))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(wexe, wexe, arg, arg2, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    ssize_t r;
    while (pid > 0 && *len < cap - 1 && (r = read(fds[0], out + *len, cap - 1 - *len)) > 0)
        *len += (size_t)r;
    out[*len] = 0;
    close(fds[0]);
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
        return -1;
    return 0;
}

/* `kolm-worker --describe path` as JSON, or NULL with the reason printed. */
static json_t *describe(const char *path) {
    char buf[8192], wexe[PATH_MAX];
    size_t len;
    if (gw_cli_worker_path(wexe, sizeof wexe)) {
        fprintf(stderr, "kolm pack: cannot find kolm-worker next to kolm\n");
        return NULL;
    }
    if (gw_cli_worker_run("--describe", path, buf, sizeof buf, &len)) {
        fprintf(stderr, "kolm pack: %s is not a GGUF model kolm can read (see above)\n", path);
        return NULL;
    }
    json_t *j = json_loadb(buf, len, 0, NULL);
    if (!json_is_object(j))
        fprintf(stderr, "kolm pack: cannot read the description of %s\n", path);
    return j;
}

static json_t *load_json_file(const char *path, const char *what) {
    json_error_t e;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(j)) {
        fprintf(stderr, "kolm pack: %s %s: %s\n", what, path, j ? "must be a JSON object" : e.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

/* The manifest member naming a model blob: what --describe said and its role. */
static json_t *model_member(const json_t *d, const char *role) {
    json_t *m = json_pack("{s:s}", "blob", role);
    const char *keys[] = {"architecture", "name", "context_length"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (json_object_get(d, keys[i]))
            json_object_set(m, keys[i], json_object_get(d, keys[i]));
    return m;
}

static int key_for_pack(const char *home, const char *spec, cm_key *k) {
    char path[4400], err[512];
    if (strchr(spec, '/'))
        snprintf(path, sizeof path, "%s", spec);
    else
        snprintf(path, sizeof path, "%s/keys/%s.key", home, spec);
    if (cm_key_load_secret(path, k, err, sizeof err)) {
        fprintf(stderr, "kolm pack: %s\n%s", err,
                access(path, F_OK) ? "Make a signing key with `kolm keygen`, or pass --unsigned.\n" : "");
        return -1;
    }
    return 0;
}

int gw_cli_pack(int argc, char **argv) {
    const char *model = NULL, *out = NULL, *name = NULL, *keyspec = "default", *training = NULL, *eval = NULL;
    const char *extra[3] = {NULL, NULL, NULL}; // adapter, draft, embedding
    static const char *const extra_role[3] = {"adapter", "draft", "embedding"};
    static const char *const extra_member[3] = {"adapter", "draft_model", "embedding_model"};
    int unsigned_ = 0, reference = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--unsigned"))
            unsigned_ = 1;
        else if (!strcmp(a, "--reference"))
            reference = 1;
        else if (a[0] != '-' && !model)
            model = a;
        else if (!v)
            goto usage;
        else {
            i++;
            if (!strcmp(a, "-o") || !strcmp(a, "--out"))
                out = v;
            else if (!strcmp(a, "--name"))
                name = v;
            else if (!strcmp(a, "--key"))
                keyspec = v;
            else if (!strcmp(a, "--adapter"))
                extra[0] = v;
            else if (!strcmp(a, "--draft"))
                extra[1] = v;
            else if (!strcmp(a, "--embed"))
                extra[2] = v;
            else if (!strcmp(a, "--training"))
                training = v;
            else if (!strcmp(a, "--eval"))
                eval = v;
            else
                goto usage;
        }
    }
    if (!model || !out)
        goto usage;
    size_t ol = strlen(out);
    if (ol < 6 || strcmp(out + ol - 5, ".kolm")) {
        fprintf(stderr, "kolm pack: the output name must end in .kolm (it is the model id)\n");
        return 2;
    }
    char home[4096], err[1024], nm[256];
    cm_kolm_home(home, sizeof home);
    cm_key key;
    if (!unsigned_ && key_for_pack(home, keyspec, &key))
        return 1;
    if (!name) {
        const char *b = strrchr(out, '/');
        b = b ? b + 1 : out;
        snprintf(nm, sizeof nm, "%.*s", (int)(strlen(b) - 5), b);
        name = nm;
    }
    int rc = 1;
    json_t *meta = json_object(), *d = describe(model), *dx[3] = {NULL, NULL, NULL};
    if (!d)
        goto done;
    json_object_set_new(meta, "name", json_string(name));
    json_object_set(meta, "family", json_object_get(d, "architecture"));
    json_object_set_new(meta, "base_model", model_member(d, "weights"));
    json_t *tok = json_pack("{s:s}", "blob", "weights");
    if (json_object_get(d, "tokenizer"))
        json_object_set(tok, "model", json_object_get(d, "tokenizer"));
    if (json_object_get(d, "vocab_size"))
        json_object_set(tok, "vocab_size", json_object_get(d, "vocab_size"));
    json_object_set_new(meta, "tokenizer", tok);
    json_t *tm = json_pack("{s:s,s:O}", "blob", "weights", "format", json_object_get(d, "chat_template"));
    if (json_object_get(d, "chat_template_sha256"))
        json_object_set(tm, "sha256", json_object_get(d, "chat_template_sha256"));
    json_object_set_new(meta, "chat_template", tm);
    cm_kolm_input in[4] = {{"weights", model, reference}};
    int n_in = 1;
    for (int r = 0; r < 3; r++) {
        if (!extra[r])
            continue;
        if (!(dx[r] = describe(extra[r])))
            goto done;
        json_object_set_new(meta, extra_member[r], model_member(dx[r], extra_role[r]));
        in[n_in++] = (cm_kolm_input){extra_role[r], extra[r], 0};
    }
    json_t *tj = NULL, *ej = NULL;
    if (training && !(tj = load_json_file(training, "--training")))
        goto done;
    if (tj)
        json_object_set_new(meta, "training", tj);
    if (eval && !(ej = load_json_file(eval, "--eval")))
        goto done;
    if (ej)
        json_object_set_new(meta, "eval", ej);
    char cid[CM_CID_MAX];
    if (cm_kolm_pack(out, home, meta, in, n_in, unsigned_ ? NULL : &key, cid, err, sizeof err)) {
        fprintf(stderr, "kolm pack: %s\n", err);
        goto done;
    }
    printf("%s\n  cid    %s\n  signer %s\n", out, cid, unsigned_ ? "(unsigned)" : key.id);
    rc = 0;
done:
    json_decref(meta);
    json_decref(d);
    for (int r = 0; r < 3; r++)
        json_decref(dx[r]);
    return rc;
usage:
    fprintf(stderr, "usage: kolm pack MODEL.gguf [--adapter F] [--draft F] [--embed F] [--training F.json]\n"
                    "                 [--eval F.json] [--name N] [--key NAME|PATH | --unsigned] [--reference]\n"
                    "                 -o OUT.kolm\n");
    return 2;
}

/* ---- inspect ---- */

static const char *trust_word(const cm_kolm *k, const char *keyring) {
    if (!k->has_sig)
        return "unsigned";
    if (cm_kolm_check_signature(k, NULL, 0))
        return "INVALID signature";
    return cm_keyring_has(keyring, k->signer) == 1 ? "trusted" : "not trusted here";
}

int gw_cli_inspect(int argc, char **argv) {
    const char *path = NULL;
    int as_json = 0;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--json"))
            as_json = 1;
        else if (!path && argv[i][0] != '-')
            path = argv[i];
        else
            path = NULL, i = argc;
    if (!path) {
        fprintf(stderr, "usage: kolm inspect NAME.kolm [--json]\n");
        return 2;
    }
    char home[4096], keyring[4200], err[1024];
    cm_kolm_home(home, sizeof home);
    cm_kolm_keyring(keyring, sizeof keyring);
    cm_kolm *k;
    if (cm_kolm_open(path, home, &k, err, sizeof err)) {
        fprintf(stderr, "kolm inspect: %s\n", err);
        return 1;
    }
    if (as_json) {
        json_t *j = json_pack("{s:s,s:O,s:I}", "cid", k->cid, "manifest", k->m, "file_size", (json_int_t)k->file_size);
        if (k->has_sig)
            json_object_set_new(j, "signer", json_string(k->signer_id));
        else
            json_object_set_new(j, "signer", json_null());
        json_object_set_new(j, "trust", json_string(trust_word(k, keyring)));
        char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
        puts(s ? s : "{}");
        free(s);
        json_decref(j);
    } else {
        printf("artifact  %s (%llu bytes)\ncid       %s\nsigner    %s (%s)\nblobs\n", path,
               (unsigned long long)k->file_size, k->cid, k->has_sig ? k->signer_id : "-", trust_word(k, keyring));
        for (int i = 0; i < k->n_blobs; i++) {
            const cm_kolm_blob *b = &k->blobs[i];
            char hex[2 * CM_SHA256_LEN + 1];
            cm_hex(b->sha256, CM_SHA256_LEN, hex);
            printf("  %-10s %-40s %12llu bytes  sha256 %s  %s%s\n", b->role, b->name, (unsigned long long)b->size, hex,
                   b->cid ? "stored as " : "embedded", b->cid ? b->cid : "");
        }
        char *s = json_dumps(k->m, JSON_INDENT(2) | JSON_SORT_KEYS);
        printf("manifest\n%s\n", s ? s : "?");
        free(s);
    }
    cm_kolm_close(k);
    return 0;
}

/* ---- verify ---- */

static int read_file(const char *path, size_t cap, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t n = 0, c = 1 << 16;
    char *b = malloc(c + 1);
    size_t r;
    while (b && (r = fread(b + n, 1, c - n, f)) > 0) {
        n += r;
        if (n == c) {
            if (c >= cap) {
                free(b);
                b = NULL;
                break;
            }
            char *nb = realloc(b, 2 * c + 1);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb, c *= 2;
        }
    }
    fclose(f);
    if (!b)
        return -1;
    b[n] = 0;
    *out = b;
    *len = n;
    return 0;
}

/* A public key given as a .pub file or as base64url text. */
static int load_pub(const char *spec, cm_key *k) {
    char err[512];
    size_t n = 0;
    if (!access(spec, R_OK))
        return cm_key_load_public(spec, k, err, sizeof err) ? (fprintf(stderr, "kolm verify: %s\n", err), -1) : 0;
    memset(k, 0, sizeof *k);
    if (cm_unb64url(spec, strlen(spec), k->pk, CM_PK_LEN, &n) || n != CM_PK_LEN) {
        fprintf(stderr, "kolm verify: --key %s is neither a .pub file nor a base64url public key\n", spec);
        return -1;
    }
    cm_key_id(k->pk, k->id);
    return 0;
}

static int verify_artifact(const char *path, const char *keyspec, const char *keyring) {
    char home[4096], err[1024];
    cm_kolm_home(home, sizeof home);
    cm_kolm *k;
    if (cm_kolm_open(path, home, &k, err, sizeof err)) {
        fprintf(stderr, "kolm verify: FAILED: %s\n", err);
        return 1;
    }
    int rc = 1;
    cm_key want;
    if (keyspec) {
        if (load_pub(keyspec, &want))
            goto done;
        if (cm_kolm_check_signature(k, err, sizeof err))
            goto fail;
        if (memcmp(want.pk, k->signer, CM_PK_LEN)) {
            snprintf(err, sizeof err, "%s is signed by key %s, not by --key %s", path, k->signer_id, want.id);
            goto fail;
        }
    } else if (cm_kolm_check_trust(k, keyring, err, sizeof err)) {
        goto fail;
    }
    if (cm_kolm_verify_blobs(k, err, sizeof err))
        goto fail;
    printf("OK %s\n  cid    %s\n  signer %s\n  blobs  %d verified\n", path, k->cid, k->signer_id, k->n_blobs);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "kolm verify: FAILED: %s\n", err);
done:
    cm_kolm_close(k);
    return rc;
}

/* The body as the receipt covers it: an SSE body without its final receipt member. */
static void body_hash(const char *body, size_t len, const char *tok, size_t tl, uint8_t out[CM_SHA256_LEN]) {
    static const char key[] = ",\"kolm_receipt\":\"";
    size_t kl = sizeof key - 1;
    for (size_t i = 0; i + kl + tl + 1 <= len; i++)
        if (!memcmp(body + i, key, kl) && !memcmp(body + i + kl, tok, tl) && body[i + kl + tl] == '"') {
            cm_sha256_ctx c;
            if (cm_sha256_init(&c))
                break;
            cm_sha256_update(&c, body, i);
            cm_sha256_update(&c, body + i + kl + tl + 1, len - i - kl - tl - 1);
            cm_sha256_final(&c, out);
            return;
        }
    cm_sha256(body, len, out);
}

static int hash_matches(const json_t *p, const char *field, const uint8_t d[CM_SHA256_LEN]) {
    char hex[2 * CM_SHA256_LEN + 1];
    cm_hex(d, CM_SHA256_LEN, hex);
    const char *v = json_string_value(json_object_get(p, field));
    return v && !strcmp(v, hex);
}

static int verify_receipt(const char *spec, const char *body_path, const char *req_path, const char *keyspec) {
    char *tok = NULL, *body = NULL, *rq = NULL;
    size_t tl = 0, bl = 0, rl = 0;
    int rc = 1;
    json_t *p = NULL;
    if (!access(spec, R_OK)) {
        if (read_file(spec, MAX_RECEIPT, &tok, &tl)) {
            fprintf(stderr, "kolm verify: cannot read %s\n", spec);
            return 1;
        }
    } else {
        tok = strdup(spec);
        tl = tok ? strlen(tok) : 0;
    }
    while (tl && (tok[tl - 1] == '\n' || tok[tl - 1] == '\r' || tok[tl - 1] == ' '))
        tok[--tl] = 0;
    const char *t = tok;
    if (tl > 15 && !strncasecmp(t, "x-kolm-receipt:", 15)) // a header line pasted whole
        for (t += 15, tl -= 15; tl && *t == ' '; t++, tl--)
            ;
    cm_key k;
    char home[4096], path[4300];
    cm_kolm_home(home, sizeof home);
    snprintf(path, sizeof path, "%s/keys/gateway.pub", home);
    if (load_pub(keyspec ? keyspec : path, &k))
        goto done;
    if (gw_receipt_open(t, tl, k.pk, &p)) {
        fprintf(stderr, "kolm verify: FAILED: the receipt's signature does not verify with key %s%s\n", k.id,
                keyspec ? "" : " (this machine's gateway key; pass --key for another)");
        goto done;
    }
    const char *kid = json_string_value(json_object_get(p, "key_id"));
    if (!kid || strcmp(kid, k.id)) {
        fprintf(stderr, "kolm verify: FAILED: the receipt names key %s, not %s\n", kid ? kid : "?", k.id);
        goto done;
    }
    if (body_path) {
        uint8_t d[CM_SHA256_LEN];
        if (read_file(body_path, (size_t)1 << 34, &body, &bl)) {
            fprintf(stderr, "kolm verify: cannot read --body %s\n", body_path);
            goto done;
        }
        body_hash(body, bl, t, tl, d);
        if (!hash_matches(p, "response_sha256", d)) {
            fprintf(stderr, "kolm verify: FAILED: the body %s does not match the receipt's response_sha256%s\n",
                    body_path, json_is_null(json_object_get(p, "response_sha256"))
                                   ? " (this is a stream's header receipt: it binds the request only)" : "");
            goto done;
        }
    }
    if (req_path) {
        uint8_t d[CM_SHA256_LEN];
        if (read_file(req_path, (size_t)1 << 34, &rq, &rl)) {
            fprintf(stderr, "kolm verify: cannot read --request %s\n", req_path);
            goto done;
        }
        cm_sha256(rq, rl, d);
        if (!hash_matches(p, "request_sha256", d)) {
            fprintf(stderr, "kolm verify: FAILED: the request %s does not match the receipt's request_sha256\n",
                    req_path);
            goto done;
        }
    }
    char *s = json_dumps(p, JSON_INDENT(2) | JSON_SORT_KEYS);
    printf("OK receipt signed by %s%s%s\n%s\n", k.id, body_path ? ", body matches" : "",
           req_path ? ", request matches" : "", s ? s : "");
    free(s);
    rc = 0;
done:
    json_decref(p);
    free(tok);
    free(body);
    free(rq);
    return rc;
}

int gw_cli_verify(int argc, char **argv) {
    const char *art = NULL, *receipt = NULL, *body = NULL, *request = NULL, *key = NULL, *keyring = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (a[0] != '-' && !art)
            art = a;
        else if (!v)
            goto usage;
        else if (!strcmp(a, "--receipt"))
            receipt = v, i++;
        else if (!strcmp(a, "--body"))
            body = v, i++;
        else if (!strcmp(a, "--request"))
            request = v, i++;
        else if (!strcmp(a, "--key"))
            key = v, i++;
        else if (!strcmp(a, "--keyring"))
            keyring = v, i++;
        else
            goto usage;
    }
    if (receipt && !art)
        return verify_receipt(receipt, body, request, key);
    if (art && !receipt && !body && !request) {
        char ring[4200];
        cm_kolm_keyring(ring, sizeof ring);
        return verify_artifact(art, key, keyring ? keyring : ring);
    }
usage:
    fprintf(stderr, "usage: kolm verify NAME.kolm [--key PUB] [--keyring DIR]\n"
                    "       kolm verify --receipt RECEIPT [--body FILE] [--request FILE] [--key PUB]\n");
    return 2;
}
