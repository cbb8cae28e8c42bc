/* gw_http: the HTTP side of the gateway on libh2o-evloop: listener, routes, and
 * the per-request state that turns worker events into JSON responses or SSE.
 *
 * Routes: POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id},
 * GET /health. Everything else is an OpenAI-shaped 404 (unknown path) or 405
 * (known path, wrong method). The server owns the h2o configuration and context;
 * the worker pool is borrowed. */
#ifndef GW_HTTP_H
#define GW_HTTP_H

#include <h2o.h>
#include <stddef.h>

#include "gateway/gw_pool.h"

typedef struct gw_http_config {
    const char *host;
    int port;
    const char *model_id;
    size_t max_body;
} gw_http_config;

typedef struct gw_http gw_http;

/* Binds and listens; NULL with a logged reason on failure. */
gw_http *gw_http_create(h2o_loop_t *loop, gw_pool *pool, const gw_http_config *cfg);
/* Stops listening and frees the server. */
void gw_http_free(gw_http *s);

#endif
