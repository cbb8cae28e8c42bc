/* gw_http.c: routes and request state (see gw_http.h).
 *
 * Design note. A chat request's state (req_state) lives in the request's memory
 * pool via h2o_mem_alloc_shared, so it is disposed with the request; dispose
 * cancels the job in the worker and clears st->req, after which worker events for
 * it are ignored. A streamed response starts when the worker accepts the job (so
 * a prompt over the context window is still a plain 400), then SSE chunks are
 * queued into `pending` and handed to h2o one buffer at a time: `flight` is owned
 * by h2o until the generator's proceed callback runs. */
#include "gateway/gw_http.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/cm_log.h"
#include "gateway/gw_chat.h"

/* h2o's own entity cap sits above ours so that our 413 (an OpenAI error body)
 * answers bodies up to this size; larger ones get h2o's plain 413. */
#define H2O_ENTITY_CAP (256u << 20)

struct gw_http {
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listener;
    gw_pool *pool;
    gw_http_config cfg;
    long long started;
};

typedef struct req_state {
    gw_job job; // first: the pool hands back &st->job
    gw_http *srv;
    h2o_req_t *req; // NULL once the request is gone
    int stream, include_usage;
    int started;    // SSE headers sent
    int final_sent;
    int final_pending;
    int sending;
    cm_buf text;    // non-streamed completion text
    cm_buf pending, flight;
    h2o_generator_t gen;
    gw_completion comp;
    char id[48];
} req_state;

static void random_id(char *out, size_t n, const char *prefix) {
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
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

static void add_request_id(h2o_req_t *req) {
    char rid[40];
    random_id(rid, sizeof rid, "req_");
    h2o_iovec_t v = h2o_strdup(&req->pool, rid, strlen(rid));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, v.base, v.len);
}

static void respond(h2o_req_t *req, int status, const char *ctype, const void *body, size_t len) {
    req->res.status = status;
    req->res.reason = reason_for(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype, strlen(ctype));
    add_request_id(req);
    h2o_send_inline(req, body, len);
}

static void respond_error(h2o_req_t *req, const gw_error *err) {
    cm_buf b = CM_BUF_INIT;
    if (gw_render_error(&b, err))
        respond(req, 500, "application/json", "{}", 2);
    else
        respond(req, err->status, "application/json", b.data, b.len);
    cm_buf_free(&b);
}

static void respond_simple_error(h2o_req_t *req, int status, const char *type, const char *param, const char *code,
                                 const char *msg) {
    gw_error e;
    gw_error_set(&e, status, type, param, code, "%s", msg);
    respond_error(req, &e);
}

/* ---- streaming ---- */

/* Hands the queued SSE bytes to h2o when nothing is in flight. `final` ends the
 * response with this send. After a final send st may be gone: callers return. */
static void stream_send(req_state *st, int final) {
    if (!st->req || !st->started || st->sending || st->final_sent)
        return; // nothing may reach h2o_send before h2o_start_response
    if (!st->pending.len && !final)
        return;
    cm_buf t = st->flight;
    st->flight = st->pending;
    st->pending = t;
    st->pending.len = 0;
    st->sending = 1;
    h2o_iovec_t iov = h2o_iovec_init(st->flight.data, st->flight.len);
    if (final)
        st->final_sent = 1;
    h2o_send(st->req, &iov, 1, final ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req) {
    req_state *st = H2O_STRUCT_FROM_MEMBER(req_state, gen, gen);
    st->sending = 0;
    st->flight.len = 0;
    if (st->final_pending) {
        stream_send(st, 1);
        return;
    }
    stream_send(st, 0);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req) {
    req_state *st = H2O_STRUCT_FROM_MEMBER(req_state, gen, gen);
    gw_pool_cancel(st->srv->pool, &st->job);
    st->req = NULL;
}

/* Queues the end of the stream (after the chunks already pending). */
static void stream_end(req_state *st) {
    st->final_pending = 1;
    if (!st->sending)
        stream_send(st, 1);
}

static void start_stream(req_state *st) {
    h2o_req_t *req = st->req;
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/event-stream"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-accel-buffering"), 0, NULL, H2O_STRLIT("no"));
    add_request_id(req);
    st->gen.proceed = on_proceed;
    st->gen.stop = on_stop;
    h2o_start_response(req, &st->gen);
    st->started = 1;
    gw_render_chunk(&st->pending, &st->comp, 1, "", 0, 0, st->include_usage);
    stream_send(st, 0);
}

/* ---- worker events ---- */

static void fail_request(req_state *st, const gw_error *err) {
    if (!st->req)
        return;
    if (st->started) {
        gw_render_sse_error(&st->pending, err);
        stream_end(st);
    } else {
        respond_error(st->req, err);
    }
}

static void on_event(gw_job *job, const proto_event *ev) {
    req_state *st = (req_state *)job;
    if (!st->req)
        return;
    gw_usage u = {ev->prompt_tokens, ev->completion_tokens, ev->cached_tokens};
    switch (ev->kind) {
    case PROTO_EV_ACCEPTED:
        if (st->stream && !st->started) // a repeated ACCEPTED must not restart the response
            start_stream(st);
        break;
    case PROTO_EV_DELTA:
        if (st->stream) {
            if (!st->started) // a worker that skipped ACCEPTED still streams
                start_stream(st);
            gw_render_chunk(&st->pending, &st->comp, 0, ev->text.p, ev->text.len, 0, st->include_usage);
            stream_send(st, 0);
        } else {
            cm_buf_append(&st->text, ev->text.p, ev->text.len);
        }
        break;
    case PROTO_EV_FINISH:
        if (st->stream) {
            if (!st->started)
                start_stream(st);
            gw_render_chunk(&st->pending, &st->comp, 0, NULL, 0, ev->finish_reason, st->include_usage);
            if (st->include_usage)
                gw_render_usage_chunk(&st->pending, &st->comp, &u);
            cm_buf_append(&st->pending, "data: [DONE]\n\n", 14);
            stream_end(st);
        } else {
            cm_buf b = CM_BUF_INIT;
            if (gw_render_completion(&b, &st->comp, (const char *)st->text.data, st->text.len, ev->finish_reason,
                                     &u))
                respond_simple_error(st->req, 500, "server_error", NULL, NULL, "cannot render the response");
            else
                respond(st->req, 200, "application/json", b.data, b.len);
            cm_buf_free(&b);
        }
        break;
    case PROTO_EV_ERROR: {
        gw_error e;
        int status = ev->status >= 400 && ev->status <= 599 ? ev->status : 500;
        gw_error_set(&e, status, status < 500 ? "invalid_request_error" : "server_error",
                     ev->param.len ? ev->param.p : NULL, ev->code.len ? ev->code.p : NULL, "%s",
                     ev->message.len ? ev->message.p : "the worker failed this request");
        fail_request(st, &e);
        break;
    }
    default:
        break;
    }
}

static void on_dead(gw_job *job) {
    req_state *st = (req_state *)job;
    gw_error e;
    gw_error_set(&e, 503, "server_error", NULL, "worker_unavailable",
                 "The model worker serving this request stopped; retry the request.");
    fail_request(st, &e);
}

static const gw_job_ops job_ops = {on_event, on_dead};

static void dispose_state(void *p) {
    req_state *st = p;
    gw_pool_cancel(st->srv->pool, &st->job);
    st->req = NULL;
    cm_buf_free(&st->text);
    cm_buf_free(&st->pending);
    cm_buf_free(&st->flight);
}

/* ---- routes ---- */

static int path_is(h2o_req_t *req, const char *p) {
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, p, strlen(p));
}

static int method_is(h2o_req_t *req, const char *m) {
    return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

static void handle_chat(gw_http *s, h2o_req_t *req) {
    if (req->entity.len > s->cfg.max_body) {
        char msg[128];
        snprintf(msg, sizeof msg, "Request body too large: %zu bytes (the limit is %zu).", req->entity.len,
                 s->cfg.max_body);
        respond_simple_error(req, 413, "invalid_request_error", NULL, "request_too_large", msg);
        return;
    }
    gw_chat_req cr;
    gw_error err;
    if (gw_chat_parse(req->entity.base ? req->entity.base : "", req->entity.len, s->cfg.model_id, &cr, &err)) {
        respond_error(req, &err);
        return;
    }
    req_state *st = h2o_mem_alloc_shared(&req->pool, sizeof *st, dispose_state);
    memset(st, 0, sizeof *st);
    st->job.ops = &job_ops;
    st->job.worker = -1;
    st->srv = s;
    st->req = req;
    st->stream = cr.stream;
    st->include_usage = cr.include_usage;
    random_id(st->id, sizeof st->id, "chatcmpl-");
    st->comp.id = st->id;
    st->comp.model = s->cfg.model_id;
    st->comp.created = (long long)time(NULL);
    int rc = gw_pool_submit(s->pool, &st->job, &cr.submit);
    gw_chat_req_free(&cr);
    if (rc)
        respond_simple_error(req, 503, "server_error", NULL, "worker_unavailable",
                             rc == -EAGAIN ? "No model worker is ready yet; retry shortly."
                                           : "The request could not be queued.");
}

static void append_model(cm_buf *b, gw_http *s) {
    cm_buf_printf(b, "{\"id\":\"");
    for (const char *p = s->cfg.model_id; *p; p++) // ids are file names: escape quotes and controls
        if (*p == '"' || *p == '\\')
            cm_buf_printf(b, "\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            cm_buf_printf(b, "\\u%04x", *p);
        else
            cm_buf_append(b, p, 1);
    cm_buf_printf(b, "\",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"kolm\"}", s->started);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
    gw_http *s = *(gw_http **)(self + 1);
    const char *prefix = "/v1/models/";
    size_t pl = strlen(prefix);
    if (path_is(req, "/v1/chat/completions")) {
        if (!method_is(req, "POST"))
            goto not_allowed;
        handle_chat(s, req);
    } else if (path_is(req, "/v1/models")) {
        if (!method_is(req, "GET"))
            goto not_allowed;
        cm_buf b = CM_BUF_INIT;
        cm_buf_printf(&b, "{\"object\":\"list\",\"data\":[");
        append_model(&b, s);
        cm_buf_printf(&b, "]}");
        respond(req, 200, "application/json", b.data, b.len);
        cm_buf_free(&b);
    } else if (req->path_normalized.len > pl && !memcmp(req->path_normalized.base, prefix, pl)) {
        if (!method_is(req, "GET"))
            goto not_allowed;
        h2o_iovec_t id = h2o_iovec_init(req->path_normalized.base + pl, req->path_normalized.len - pl);
        if (!h2o_memis(id.base, id.len, s->cfg.model_id, strlen(s->cfg.model_id))) {
            char msg[300];
            snprintf(msg, sizeof msg, "The model '%.*s' does not exist or you do not have access to it.",
                     (int)(id.len > 200 ? 200 : id.len), id.base);
            respond_simple_error(req, 404, "invalid_request_error", "model", "model_not_found", msg);
        } else {
            cm_buf b = CM_BUF_INIT;
            append_model(&b, s);
            respond(req, 200, "application/json", b.data, b.len);
            cm_buf_free(&b);
        }
    } else if (path_is(req, "/health")) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD"))
            goto not_allowed;
        if (gw_pool_ready(s->pool))
            respond(req, 200, "application/json", "{\"status\":\"ok\"}", 15);
        else
            respond_simple_error(req, 503, "server_error", NULL, "worker_unavailable", "No model worker is ready.");
    } else {
        char msg[300];
        snprintf(msg, sizeof msg, "Unknown request URL: %.*s %.*s.", (int)req->method.len, req->method.base,
                 (int)(req->path_normalized.len > 200 ? 200 : req->path_normalized.len), req->path_normalized.base);
        respond_simple_error(req, 404, "invalid_request_error", NULL, "unknown_url", msg);
    }
    return 0;
not_allowed:
    respond_simple_error(req, 405, "invalid_request_error", NULL, "method_not_allowed",
                         "Method not allowed for this URL.");
    return 0;
}

/* ---- listener ---- */

static void on_accept(h2o_socket_t *listener, const char *err) {
    gw_http *s = listener->data;
    if (err)
        return;
    h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
    if (sock)
        h2o_accept(&s->accept_ctx, sock);
}

static int listen_on(const char *host, int port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc) {
        cm_error("cannot resolve --host %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0)
            continue;
        int on = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        if (bind(fd, a->ai_addr, a->ai_addrlen) || listen(fd, SOMAXCONN)) {
            cm_error("cannot listen on %s:%d: %s", host, port, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

gw_http *gw_http_create(h2o_loop_t *loop, gw_pool *pool, const gw_http_config *cfg) {
    gw_http *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->pool = pool;
    s->cfg = *cfg;
    s->started = (long long)time(NULL);
    h2o_config_init(&s->config);
    s->config.max_request_entity_size = H2O_ENTITY_CAP > cfg->max_body ? H2O_ENTITY_CAP : cfg->max_body + 1;
    s->config.server_name = h2o_iovec_init(H2O_STRLIT("kolm"));
    h2o_hostconf_t *host = h2o_config_register_host(&s->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *h = h2o_create_handler(path, sizeof *h + sizeof(gw_http *));
    *(gw_http **)(h + 1) = s;
    h->on_req = on_req;
    h2o_context_init(&s->ctx, loop, &s->config);
    s->accept_ctx.ctx = &s->ctx;
    s->accept_ctx.hosts = s->config.hosts;
    int fd = listen_on(cfg->host, cfg->port);
    if (fd < 0) {
        gw_http_free(s);
        return NULL;
    }
    s->listener = h2o_evloop_socket_create(loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    s->listener->data = s;
    h2o_socket_read_start(s->listener, on_accept);
    return s;
}

void gw_http_free(gw_http *s) {
    if (!s)
        return;
    if (s->listener) {
        h2o_socket_read_stop(s->listener);
        h2o_socket_close(s->listener);
    }
    free(s);
}
