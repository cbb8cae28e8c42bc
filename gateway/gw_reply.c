/* gw_reply.c: see gw_reply.h. */
#include "gateway/gw_reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/cm_crypto.h"
#include "common/cm_log.h"

void gw_random_id(char *out, size_t n, const char *prefix) {
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char r[32];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        for (size_t i = 0; i < sizeof r; i++)
            r[i] = (unsigned char)rand();
    size_t pl = strlen(prefix), k = 0;
    snprintf(out, n, "%s", prefix);
    for (size_t i = pl; i + 1 < n && k < 24; i++, k++)
        out[i] = al[r[k] % (sizeof al - 1)];
    out[pl + k < n ? pl + k : n - 1] = 0;
}

static const char *reason_for(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 504: return "Gateway Timeout";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

void gw_reply_headers(h2o_req_t *req, int status, const char *ctype) {
    req->res.status = status;
    req->res.reason = reason_for(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype, strlen(ctype));
    char rid[40];
    gw_random_id(rid, sizeof rid, "req_");
    h2o_iovec_t v = h2o_strdup(&req->pool, rid, strlen(rid));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, v.base, v.len);
}

int gw_reply_receipt(gw_receipts *rc, h2o_req_t *req, const gw_model *m, int status, const uint8_t *response_sha256,
                     int stream, const gw_usage *u, cm_buf *out) {
    uint8_t rq[CM_SHA256_LEN];
    cm_sha256(req->entity.base ? req->entity.base : "", req->entity.len, rq);
    gw_receipt_in in = {.artifact = m ? gw_model_cid(m) : NULL,
                        .model = m ? gw_model_id(m) : NULL,
                        .method = req->method.base,
                        .method_len = req->method.len,
                        .path = req->path.base,
                        .path_len = req->path.len,
                        .status = status,
                        .request_sha256 = rq,
                        .response_sha256 = response_sha256,
                        .stream = stream,
                        .prompt_tokens = u ? (long long)u->prompt_tokens : -1,
                        .completion_tokens = u ? (long long)u->completion_tokens : -1};
    return gw_receipt_make(rc, &in, out);
}

void gw_reply_receipt_header(gw_receipts *rc, h2o_req_t *req, const gw_model *m, int status,
                             const uint8_t *response_sha256, int stream, const gw_usage *u) {
    cm_buf t = CM_BUF_INIT;
    if (gw_reply_receipt(rc, req, m, status, response_sha256, stream, u, &t))
        cm_error("cannot sign a receipt (out of memory)");
    else
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-kolm-receipt"), 0, NULL,
                              h2o_strdup(&req->pool, (const char *)t.data, t.len).base, t.len);
    cm_buf_free(&t);
}

void gw_reply(gw_receipts *rc, h2o_req_t *req, const gw_model *m, int status, const char *ctype, const void *body,
              size_t len, const gw_usage *u) {
    gw_reply_headers(req, status, ctype);
    uint8_t rs[CM_SHA256_LEN];
    cm_sha256(body, len, rs);
    gw_reply_receipt_header(rc, req, m, status, rs, 0, u);
    h2o_send_inline(req, body, len);
}

void gw_reply_error(gw_receipts *rc, h2o_req_t *req, const gw_model *m, const gw_error *err) {
    if (err->status == 429 || err->status == 503)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
    cm_buf b = CM_BUF_INIT;
    if (gw_render_error(&b, err))
        gw_reply(rc, req, m, 500, "application/json", "{}", 2, NULL);
    else
        gw_reply(rc, req, m, err->status, "application/json", b.data, b.len, NULL);
    cm_buf_free(&b);
}

void gw_reply_simple_error(gw_receipts *rc, h2o_req_t *req, const gw_model *m, int status, const char *type,
                           const char *param, const char *code, const char *msg) {
    gw_error e;
    gw_error_set(&e, status, type, param, code, "%s", msg);
    gw_reply_error(rc, req, m, &e);
}
