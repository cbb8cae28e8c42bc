/* gw_models.c: see gw_models.h. */
#include "gateway/gw_models.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/cm_kolm.h"
#include "common/cm_log.h"

#define MAX_MODELS 64
#define MAX_LISTED 1024

struct gw_model {
    char id[256];
    char path[4096];
    char cid[CM_CID_MAX];
    int has_cid;
    char signer[CM_KEY_ID_LEN + 1];
    char signer_pk[64];
    gw_pool *pool;
    gw_model_state state;
    long long created;
};

struct gw_models {
    gw_models_config cfg;
    gw_model *m[MAX_MODELS]; // [0] is the served model
    int n;
};

gw_models *gw_models_create(const gw_models_config *cfg) {
    gw_models *ms = calloc(1, sizeof *ms);
    if (ms)
        ms->cfg = *cfg;
    return ms;
}

/* The start checks: a .kolm's signature and signer (unless allow_unsigned), or
 * that a raw GGUF is allowed at all. */
static int check(gw_models *ms, gw_model *m, char *err, size_t errlen) {
    int art = cm_kolm_is_artifact(m->path);
    if (art < 0) {
        cm_set_err(err, errlen, "%s: %s", m->path, strerror(errno));
        return -1;
    }
    if (!art) {
        if (!ms->cfg.allow_unsigned) {
            cm_set_err(err, errlen,
                       "%s is not a .kolm artifact, so nothing about it can be verified.\n"
                       "Pack and sign it (kolm keygen; kolm pack %s -o NAME.kolm), or pass --allow-unsigned.",
                       m->path, m->path);
            return -1;
        }
        cm_warn("serving %s unsigned (--allow-unsigned): its receipts name no artifact", m->path);
        return 0;
    }
    cm_kolm *k;
    char why[1024];
    if (cm_kolm_open(m->path, ms->cfg.home, &k, err, errlen))
        return -1;
    snprintf(m->cid, sizeof m->cid, "%s", k->cid);
    m->has_cid = 1;
    if (k->has_sig && !cm_kolm_check_signature(k, NULL, 0)) {
        snprintf(m->signer, sizeof m->signer, "%s", k->signer_id);
        cm_b64url(k->signer, CM_PK_LEN, m->signer_pk);
    }
    int rc = 0;
    if (cm_kolm_check_trust(k, ms->cfg.keyring, why, sizeof why)) {
        if (ms->cfg.allow_unsigned) {
            cm_warn("serving it anyway (--allow-unsigned): %s", why);
        } else {
            cm_set_err(err, errlen, "%s (--allow-unsigned serves it anyway)", why);
            rc = -1;
        }
    }
    cm_kolm_close(k);
    return rc;
}

/* Models that may be loaded at once. */
static int capacity(const gw_models *ms) {
    return ms->cfg.max_models > 0 && ms->cfg.max_models < MAX_MODELS ? ms->cfg.max_models : MAX_MODELS;
}

static gw_model *start(gw_models *ms, const char *path, const char *id, char *err, size_t errlen) {
    const int cap = capacity(ms);
    if (ms->n >= cap) {
        cm_set_err(err, errlen, "this server already runs %d model(s), its limit (--max-models)", cap);
        return NULL;
    }
    gw_model *m = calloc(1, sizeof *m);
    if (!m) {
        cm_set_err(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    snprintf(m->id, sizeof m->id, "%s", id);
    if (check(ms, m, err, errlen)) {
        free(m);
        return NULL;
    }
    gw_pool_config pc = ms->cfg.pool;
    pc.model_path = m->path;
    pc.model_id = m->id;
    pc.artifact_cid = m->has_cid ? m->cid : NULL;
    if (!(m->pool = gw_pool_create(ms->cfg.loop, &pc))) {
        cm_set_err(err, errlen, "cannot start the workers of %s", m->id);
        free(m);
        return NULL;
    }
    m->created = (long long)time(NULL);
    ms->m[ms->n++] = m;
    if (m->has_cid)
        cm_info("loading %s as '%s' (artifact %s, %s%s)", m->path, m->id, m->cid, m->signer[0] ? "signed by " : "unsigned",
                m->signer);
    else
        cm_info("loading %s as '%s' (a raw GGUF)", m->path, m->id);
    return m;
}

int gw_models_serve(gw_models *ms, const char *path, char *err, size_t errlen) {
    const char *slash = strrchr(path, '/');
    return start(ms, path, slash ? slash + 1 : path, err, errlen) ? 0 : -1;
}

void gw_models_free(gw_models *ms, int timeout_ms) {
    if (!ms)
        return;
    for (int i = 0; i < ms->n; i++) {
        gw_pool_shutdown(ms->m[i]->pool, timeout_ms);
        gw_pool_free(ms->m[i]->pool);
        free(ms->m[i]);
    }
    free(ms);
}

void gw_models_tick(gw_models *ms) {
    for (int i = 0; i < ms->n; i++) {
        gw_model *m = ms->m[i];
        gw_pool_tick(m->pool);
        if (m->state != GW_MODEL_STARTING)
            continue;
        if (gw_pool_ready(m->pool))
            m->state = GW_MODEL_READY;
        else if (gw_pool_failed_to_start(m->pool))
            m->state = GW_MODEL_FAILED;
        else
            continue;
        if (m->state == GW_MODEL_FAILED) { // stop respawning: every try would fail the same way
            cm_error("the workers could not load %s (their error is above); it stays unavailable until the "
                     "server restarts", m->path);
            gw_pool_shutdown(m->pool, 0);
        }
        if (ms->cfg.on_change)
            ms->cfg.on_change(ms->cfg.ud, m);
    }
}

/* An artifact file name: "NAME.kolm", no path parts. */
static int artifact_name(const char *id, size_t len) {
    if (len < 6 || len > 255 || memcmp(id + len - 5, ".kolm", 5) || id[0] == '.')
        return 0;
    for (size_t i = 0; i < len; i++)
        if (id[i] == '/' || id[i] == 0)
            return 0;
    return 1;
}

/* The loaded model named id, else (NULL) whether id names an artifact file, whose
 * path and name are then filled in. */
static gw_model *find(gw_models *ms, const char *id, size_t len, int *listed, char path[4400], char name[256]) {
    *listed = 0;
    for (int i = 0; i < ms->n; i++)
        if (strlen(ms->m[i]->id) == len && !memcmp(ms->m[i]->id, id, len)) {
            *listed = 1;
            return ms->m[i];
        }
    if (!artifact_name(id, len))
        return NULL;
    snprintf(name, 256, "%.*s", (int)len, id);
    snprintf(path, 4400, "%s/artifacts/%s", ms->cfg.home, name);
    struct stat st;
    *listed = !stat(path, &st) && S_ISREG(st.st_mode);
    return NULL;
}

const gw_model *gw_models_find(gw_models *ms, const char *id, size_t len, int *listed) {
    char path[4400], name[256];
    return find(ms, id, len, listed, path, name);
}

gw_model *gw_models_get(gw_models *ms, const char *id, size_t len, gw_model_refusal *why, char *err,
                        size_t errlen) {
    *why = GW_MODEL_NOT_FOUND;
    char path[4400], name[256];
    int listed;
    gw_model *m = find(ms, id, len, &listed, path, name);
    if (m || !listed)
        return m;
    m = start(ms, path, name, err, errlen);
    if (!m) {
        cm_warn("not loading %s: %s", path, err);
        *why = ms->n >= capacity(ms) ? GW_MODEL_AT_CAPACITY : GW_MODEL_UNTRUSTED;
    }
    return m;
}

gw_model *gw_models_served(gw_models *ms) {
    return ms->n ? ms->m[0] : NULL;
}

gw_model *gw_models_at(gw_models *ms, int i) {
    return i >= 0 && i < ms->n ? ms->m[i] : NULL;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void gw_models_list(gw_models *ms, void (*cb)(void *ud, const char *id, const gw_model *m), void *ud) {
    for (int i = 0; i < ms->n; i++)
        cb(ud, ms->m[i]->id, ms->m[i]);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/artifacts", ms->cfg.home);
    DIR *d = opendir(dir);
    if (!d)
        return;
    char *names[MAX_LISTED];
    int n = 0;
    struct dirent *e;
    while (n < MAX_LISTED && (e = readdir(d))) {
        if (!artifact_name(e->d_name, strlen(e->d_name)))
            continue;
        int loaded = 0;
        for (int i = 0; i < ms->n && !loaded; i++)
            loaded = !strcmp(ms->m[i]->id, e->d_name);
        if (!loaded && (names[n] = strdup(e->d_name)))
            n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_names);
    for (int i = 0; i < n; i++) {
        cb(ud, names[i], NULL);
        free(names[i]);
    }
}

gw_pool *gw_model_pool(const gw_model *m) {
    return m->pool;
}

const char *gw_model_id(const gw_model *m) {
    return m->id;
}

const char *gw_model_cid(const gw_model *m) {
    return m->has_cid ? m->cid : NULL;
}

const char *gw_model_signer(const gw_model *m) {
    return m->signer[0] ? m->signer : NULL;
}

const char *gw_model_signer_pk(const gw_model *m) {
    return m->signer[0] ? m->signer_pk : NULL;
}

gw_model_state gw_model_get_state(const gw_model *m) {
    return m->state;
}

long long gw_model_created(const gw_model *m) {
    return m->created;
}
