/* gw_admin.c: see gw_admin.h. */
#include "gateway/gw_admin.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cm_buf.h"
#include "common/cm_crypto.h"
#include "gateway/gw_reply.h"

/* One model object of /v1/models (exactly OpenAI's Model: the answering artifact's
 * id is in each completion's receipt). */
static void append_model(cm_buf *b, long long created, const char *id) {
    json_t *j = json_pack("{s:s,s:s,s:I,s:s}", "id", id, "object", "model", "created", (json_int_t)created, "owned_by",
                          "kolm");
    char *t = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL; // ids are file names: JSON-escaped
    if (t)
        cm_buf_append(b, t, strlen(t));
    free(t);
    json_decref(j);
}

typedef struct list_ctx {
    cm_buf *b;
    long long started;
    int n;
} list_ctx;

static void list_one(void *ud, const char *id, const gw_model *m) {
    list_ctx *c = ud;
    if (c->n++)
        cm_buf_append(c->b, ",", 1);
    append_model(c->b, m ? gw_model_created(m) : c->started, id);
}


void gw_admin_models(gw_receipts *rc, h2o_req_t *req, gw_models *ms, long long started) {
    cm_buf b = CM_BUF_INIT;
    list_ctx lc = {&b, started, 0};
    cm_buf_printf(&b, "{\"object\":\"list\",\"data\":[");
    gw_models_list(ms, list_one, &lc);
    cm_buf_printf(&b, "]}");
    gw_reply(rc, req, NULL, 200, "application/json", b.data, b.len, NULL);
    cm_buf_free(&b);
}

void gw_admin_model(gw_receipts *rc, h2o_req_t *req, gw_models *ms, long long started, h2o_iovec_t id) {
    int listed;
    const gw_model *found = gw_models_find(ms, id.base, id.len, &listed);
    if (!listed) {
        char msg[300];
        snprintf(msg, sizeof msg, "The model '%.*s' does not exist or you do not have access to it.",
                 (int)(id.len > 200 ? 200 : id.len), id.base);
        gw_reply_simple_error(rc, req, NULL, 404, "invalid_request_error", "model", "model_not_found", msg);
        return;
    }
    cm_buf b = CM_BUF_INIT;
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)id.len, id.base); // listed ids are file names, under 256 bytes
    append_model(&b, found ? gw_model_created(found) : started, name);
    gw_reply(rc, req, NULL, 200, "application/json", b.data, b.len, NULL);
    cm_buf_free(&b);
}

/* GET /v1/kolm/keys: the key that signs receipts, and the served artifact's signer. */
void gw_admin_keys(gw_receipts *rc, h2o_req_t *req, gw_models *ms) {
    const cm_key *k = gw_receipts_key(rc);
    char pk[64];
    cm_b64url(k->pk, CM_PK_LEN, pk);
    cm_buf b = CM_BUF_INIT;
    cm_buf_printf(&b,
                  "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"kolm.key\",\"alg\":\"ed25519\","
                  "\"use\":\"receipt\",\"public_key\":\"%s\"}",
                  k->id, pk);
    gw_model *m;
    for (int i = 0; (m = gw_models_at(ms, i)); i++) {
        int seen = !gw_model_signer(m);
        for (int j = 0; !seen && j < i; j++) // one entry per signer
            seen = gw_model_signer(gw_models_at(ms, j)) &&
                   !strcmp(gw_model_signer(gw_models_at(ms, j)), gw_model_signer(m));
        if (!seen)
            cm_buf_printf(&b,
                          ",{\"id\":\"%s\",\"object\":\"kolm.key\",\"alg\":\"ed25519\",\"use\":\"artifact\","
                          "\"public_key\":\"%s\"}",
                          gw_model_signer(m), gw_model_signer_pk(m));
    }
    cm_buf_printf(&b, "]}");
    gw_reply(rc, req, NULL, 200, "application/json", b.data, b.len, NULL);
    cm_buf_free(&b);
}

/* GET /metrics: Prometheus text from the workers' last STATS. */
void gw_admin_metrics(gw_receipts *rc, h2o_req_t *req, gw_models *ms) {
    gw_model *md;
    cm_buf b = CM_BUF_INIT;
    // The first seven are gauges, the rest counters.
    static const char *const names[] = {"kolm_worker_ready",
                                        "kolm_worker_jobs",
                                        "kolm_worker_running",
                                        "kolm_worker_waiting",
                                        "kolm_worker_kv_blocks_free",
                                        "kolm_worker_kv_blocks_cached",
                                        "kolm_worker_kv_blocks_total",
                                        "kolm_worker_tokens_generated_total",
                                        "kolm_worker_tokens_prompt_total",
                                        "kolm_worker_grammar_masks_total",
                                        "kolm_worker_grammar_mask_seconds_total",
                                        "kolm_worker_grammar_compiles_total",
                                        "kolm_worker_grammar_cache_hits_total"};
    enum { MASK_SECONDS = 10 };
    for (size_t m = 0; m < sizeof names / sizeof *names; m++) {
        cm_buf_printf(&b, "# TYPE %s %s\n", names[m], m >= 7 ? "counter" : "gauge");
        for (int k = 0; (md = gw_models_at(ms, k)); k++)
        for (int i = 0; i < gw_pool_n_workers(gw_model_pool(md)); i++) {
            proto_stats st;
            int ready;
            pid_t pid;
            gw_pool_worker_stats(gw_model_pool(md), i, &st, &ready, &pid);
            unsigned long long v[] = {(unsigned long long)ready, st.jobs, st.running, st.waiting,
                                      st.kv_blocks_free, st.kv_blocks_cached, st.kv_blocks_total,
                                      (unsigned long long)st.tokens_generated, (unsigned long long)st.tokens_prompt,
                                      (unsigned long long)st.grammar_masks, (unsigned long long)st.grammar_mask_ns,
                                      (unsigned long long)st.grammar_compiles,
                                      (unsigned long long)st.grammar_cache_hits};
            cm_buf_printf(&b, "%s{model=\"", names[m]);
            for (const char *c = gw_model_id(md); *c; c++) { // a label value: escape \\, " and newlines
                if (*c == '"' || *c == '\\' || *c == '\n')
                    cm_buf_append(&b, "\\", 1);
                cm_buf_append(&b, *c == '\n' ? "n" : c, 1);
            }
            if (m == MASK_SECONDS)
                cm_buf_printf(&b, "\",worker=\"%d\",pid=\"%d\"} %.9f\n", i, (int)pid, (double)v[m] / 1e9);
            else
                cm_buf_printf(&b, "\",worker=\"%d\",pid=\"%d\"} %llu\n", i, (int)pid, v[m]);
        }
    }
    gw_reply(rc, req, NULL, 200, "text/plain; version=0.0.4", b.data, b.len, NULL);
    cm_buf_free(&b);
}
