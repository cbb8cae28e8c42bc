/* gw_reply: how an answer leaves the gateway. Every non-streamed response goes
 * through gw_reply: status and reason, content type, x-request-id, and the signed
 * x-kolm-receipt over its body (gw_receipt.h); a stream's headers and receipts use
 * the same pieces. m is the model that answered (NULL: none), u the token counts
 * (NULL: none). */
#ifndef GW_REPLY_H
#define GW_REPLY_H

#include <h2o.h>
#include <stdint.h>

#include "common/cm_buf.h"
#include "gateway/gw_models.h"
#include "gateway/gw_receipt.h"
#include "gateway/gw_render.h"

/* prefix + 24 random alphanumerics (ids of completions, calls, requests). */
void gw_random_id(char *out, size_t n, const char *prefix);

/* Status, reason, content type and x-request-id on req's response. */
void gw_reply_headers(h2o_req_t *req, int status, const char *ctype);
/* Signs the receipt of req's answer into out; response_sha256 NULL: a stream's
 * header receipt. */
int gw_reply_receipt(gw_receipts *rc, h2o_req_t *req, const gw_model *m, int status, const uint8_t *response_sha256,
                     int stream, const gw_usage *u, cm_buf *out);
void gw_reply_receipt_header(gw_receipts *rc, h2o_req_t *req, const gw_model *m, int status,
                             const uint8_t *response_sha256, int stream, const gw_usage *u);

void gw_reply(gw_receipts *rc, h2o_req_t *req, const gw_model *m, int status, const char *ctype, const void *body,
              size_t len, const gw_usage *u);
/* An OpenAI-shaped error (429 and 503 get Retry-After). */
void gw_reply_error(gw_receipts *rc, h2o_req_t *req, const gw_model *m, const gw_error *err);
void gw_reply_simple_error(gw_receipts *rc, h2o_req_t *req, const gw_model *m, int status, const char *type,
                           const char *param, const char *code, const char *msg);

#endif
