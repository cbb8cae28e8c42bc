/* gw_http: the HTTP side of the gateway on libh2o-evloop: listener, routes, and
 * the per-request state that turns worker events into JSON responses or SSE.
 *
 * Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models,
 * GET /v1/models/{id}, GET /v1/kolm/keys, GET /health, GET /metrics. Every answer
 * carries a signed x-kolm-receipt (gw_receipt.h). Other OpenAI endpoints answer an
 * OpenAI-shaped 404 `unsupported_endpoint`; unknown paths a 404 `unknown_url`;
 * known paths with the wrong method a 405. With an API key set, /v1 requests
 * without it get a 401. The server owns the h2o configuration and context; the
 * worker pool is borrowed. */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <h2o.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/gw_models.h"
#include "gateway/gw_receipt.h"

typedef struct gw_http_config {
    const char *host;
    int port;
    size_t max_body;
    int max_messages;            // 0 = only the protocol's cap
    long max_request_tokens;     // completion tokens one request may ask for (all choices); 0 = no cap
    uint64_t request_timeout_ms; // 0 = none
    uint64_t keepalive_ms;       // SSE comment after this long without output; 0 = none
    const char *api_key;         // NULL or "": no authentication
    gw_receipts *receipts;       // signs every response (borrowed)
} gw_http_config;

typedef struct gw_http gw_http;

/* Binds and listens; NULL with a logged reason on failure. The models are borrowed. */
gw_http *gw_http_create(h2o_loop_t *loop, gw_models *models, const gw_http_config *cfg);
/* gw_models' on_change: requests waiting for m go to it, or fail when it failed. */
void gw_http_model_changed(gw_http *s, gw_model *m);
/* Stops listening and frees the server. */
void gw_http_free(gw_http *s);

#endif
