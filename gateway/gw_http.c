/* gw_http.c: routes and request state (see gw_http.h).
 *
 * Design note. A chat request's state (req_state) lives in the request's memory
 * pool via h2o_mem_alloc_shared, so it is disposed with the request; dispose
 * cancels the job in the worker and clears st->req, after which worker events for
 * it are ignored. A streamed response starts when the worker accepts the job (so
 * a prompt over the context window is still a plain 400), then SSE chunks are
 * queued into `pending` and handed to h2o one buffer at a time: `flight` is owned
 * by h2o until the generator's proceed callback runs.
 *
 * Two timers ride on each job: the deadline (--request-timeout) cancels the job and
 * answers 504 (or an SSE error), and a stream's keep-alive writes an SSE comment
 * line whenever nothing was sent for an interval, so proxies and clients with read
 * timeouts keep the connection during long prefills and queue waits. A third, for
 * non-streamed HTTP/1 requests only, watches for a client that hung up: h2o 2.2
 * does not read an HTTP/1 socket while a request is handled, so the gateway peeks
 * at it (recv MSG_PEEK) every LIVENESS_MS and cancels the job on EOF. All are
 * unlinked when the request is disposed. */
#include "gateway/gw_http.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/cm_crypto.h"
#include "common/cm_log.h"
#include "gateway/gw_admin.h"
#include "gateway/gw_chat.h"
#include "gateway/gw_reply.h"

/* h2o's own entity cap sits above ours so that our 413 (an OpenAI error body)
 * answers bodies up to this size; larger ones get h2o's plain 413. */
#define H2O_ENTITY_CAP (256u << 20)
#define LIVENESS_MS 250

struct gw_http {
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listener;
    gw_models *models;
    gw_http_config cfg;
    struct req_state *parked; // requests waiting for their model to load
    long long started;
    h2o_timeout_t deadline_to, keepalive_to, liveness_to;
};

/* One choice of a request. */
typedef struct choice_state {
    cm_buf text;     // non-streamed: the choice's text
    json_t *lp;      // non-streamed: its logprobs, NULL without
    size_t text_off; // characters before the next output (legacy logprobs' text_offset)
    int finish;      // proto_finish, 0 while running
    json_t *calls;   // non-streamed: its tool calls so far, NULL without
    cm_buf args;     // non-streamed: the last call's arguments so far
} choice_state;

typedef struct req_state {
    gw_job job; // first: the pool hands back &st->job
    gw_http *srv;
    gw_model *model;
    gw_chat_req cr;              // kept while parked (the submit points into it)
    struct req_state *park_next, **park_prev; // in srv->parked while the model loads
    h2o_req_t *req; // NULL once the request is gone
    int stream, include_usage, n_choices;
    int logprobs;   // requested: every choice has a logprobs object, empty or not
    choice_state *ch; // [n_choices]
    int started;    // SSE headers sent
    int final_sent;
    int final_pending;
    int sending;
    int quiet;      // no bytes queued since the last keep-alive tick
    cm_buf pending, flight;
    cm_sha256_ctx body_hash; // SSE: the bytes handed to h2o so far, until the stream is sealed
    h2o_generator_t gen;
    gw_completion comp;
    h2o_timeout_entry_t deadline, keepalive, liveness;
    char id[48];
} req_state;

static gw_http *server_of(h2o_req_t *req) {
    return H2O_STRUCT_FROM_MEMBER(gw_http, ctx, req->conn->ctx);
}

/* Answers go out through gw_reply with this server's receipt key. */
static void respond(h2o_req_t *req, int status, const char *ctype, const void *body, size_t len) {
    gw_reply(server_of(req)->cfg.receipts, req, NULL, status, ctype, body, len, NULL);
}

static void respond_model_error(h2o_req_t *req, const gw_model *m, const gw_error *err) {
    gw_reply_error(server_of(req)->cfg.receipts, req, m, err);
}

static void respond_error(h2o_req_t *req, const gw_error *err) {
    respond_model_error(req, NULL, err);
}

static void respond_model_simple_error(h2o_req_t *req, const gw_model *m, int status, const char *type,
                                       const char *param, const char *code, const char *msg) {
    gw_reply_simple_error(server_of(req)->cfg.receipts, req, m, status, type, param, code, msg);
}

static void respond_simple_error(h2o_req_t *req, int status, const char *type, const char *param, const char *code,
                                 const char *msg) {
    respond_model_simple_error(req, NULL, status, type, param, code, msg);
}

/* ---- streaming ---- */

/* Hands the queued SSE bytes to h2o when nothing is in flight. `final` ends the
 * response with this send. After a final send st may be gone: callers return. */
static void stream_send(req_state *st, int final) {
    if (!st->req || !st->started || st->sending || st->final_sent)
        return; // nothing may reach h2o_send before h2o_start_response
    if (!st->pending.len && !final)
        return;
    st->quiet = 0;
    cm_buf t = st->flight;
    st->flight = st->pending;
    st->pending = t;
    st->pending.len = 0;
    st->sending = 1;
    h2o_iovec_t iov = h2o_iovec_init(st->flight.data, st->flight.len);
    cm_sha256_update(&st->body_hash, st->flight.data, st->flight.len);
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

static void stop_timers(req_state *st) {
    if (h2o_timeout_is_linked(&st->deadline))
        h2o_timeout_unlink(&st->deadline);
    if (h2o_timeout_is_linked(&st->keepalive))
        h2o_timeout_unlink(&st->keepalive);
    if (h2o_timeout_is_linked(&st->liveness))
        h2o_timeout_unlink(&st->liveness);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req) {
    req_state *st = H2O_STRUCT_FROM_MEMBER(req_state, gen, gen);
    gw_pool_cancel(gw_model_pool(st->model), &st->job);
    stop_timers(st);
    st->req = NULL;
}

/* Queues the end of the stream (after the chunks already pending). */
static void stream_end(req_state *st) {
    stop_timers(st);
    st->final_pending = 1;
    if (!st->sending)
        stream_send(st, 1);
}

/* Keep-alive tick: an SSE comment when the last interval sent nothing. */
static void on_keepalive(h2o_timeout_entry_t *e) {
    req_state *st = H2O_STRUCT_FROM_MEMBER(req_state, keepalive, e);
    if (!st->req || st->final_pending)
        return;
    if (st->quiet && st->started) {
        cm_buf_append(&st->pending, ": keep-alive\n\n", 14);
        stream_send(st, 0);
    }
    st->quiet = 1;
    h2o_timeout_link(st->srv->ctx.loop, &st->srv->keepalive_to, &st->keepalive);
}

static void render_chunk(req_state *st, const gw_chunk *k) {
    if (gw_render_chunk(&st->pending, &st->comp, k))
        cm_warn("cannot render a chunk of %s (out of memory)", st->id);
}

static void start_stream(req_state *st) {
    h2o_req_t *req = st->req;
    gw_reply_headers(req, 200, "text/event-stream");
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-accel-buffering"), 0, NULL, H2O_STRLIT("no"));
    gw_reply_receipt_header(st->srv->cfg.receipts, req, st->model, 200, NULL, 1, NULL);
    if (cm_sha256_init(&st->body_hash))
        cm_error("cannot hash the stream of %s (out of memory): its final receipt will not verify", st->id);
    st->gen.proceed = on_proceed;
    st->gen.stop = on_stop;
    h2o_start_response(req, &st->gen);
    st->started = 1;
    if (!st->comp.legacy) // chat streams open each choice with its role
        for (int i = 0; i < st->n_choices; i++) {
            gw_chunk k = {.index = (uint32_t)i, .role = 1, .text = "", .with_usage_null = st->include_usage};
            render_chunk(st, &k);
        }
    stream_send(st, 0);
}

/* The stream's last event, pending[at..len), gets the receipt over the whole
 * body (what was sent, what is pending, then "data: [DONE]" when done follows)
 * as its last member "kolm_receipt"; see gw_receipt.h. */
static void seal_stream(req_state *st, size_t at, const gw_usage *u, int done) {
    static const char done_line[] = "data: [DONE]\n\n", key[] = ",\"kolm_receipt\":\"";
    cm_buf *p = &st->pending;
    if (at >= p->len || p->len < 3 || memcmp(p->data + p->len - 3, "}\n\n", 3)) {
        cm_error("the last event of %s is not a JSON object: its stream has no final receipt", st->id);
        return;
    }
    uint8_t rs[CM_SHA256_LEN];
    cm_sha256_update(&st->body_hash, p->data, p->len);
    if (done)
        cm_sha256_update(&st->body_hash, done_line, sizeof done_line - 1);
    cm_sha256_final(&st->body_hash, rs); // no later bytes are hashed
    cm_buf t = CM_BUF_INIT;
    if (cm_buf_append(&t, key, sizeof key - 1) || gw_reply_receipt(st->srv->cfg.receipts, st->req, st->model, 200, rs, 1, u, &t) ||
        cm_buf_append(&t, "\"", 1) || cm_buf_reserve(p, t.len)) {
        cm_error("cannot sign the final receipt of %s (out of memory)", st->id);
    } else {
        memmove(p->data + p->len - 3 + t.len, p->data + p->len - 3, 3);
        memcpy(p->data + p->len - 3, t.data, t.len);
        p->len += t.len;
    }
    cm_buf_free(&t);
}

/* ---- worker events ---- */

static void fail_request(req_state *st, const gw_error *err) {
    if (!st->req)
        return;
    stop_timers(st);
    if (st->started) {
        size_t at = st->pending.len;
        gw_render_sse_error(&st->pending, err);
        seal_stream(st, at, NULL, 0);
        stream_end(st);
    } else {
        respond_model_error(st->req, st->model, err);
    }
}

/* Non-streamed: the last call's arguments are complete. */
static void close_call(choice_state *c) {
    json_t *last = json_array_get(c->calls, json_array_size(c->calls) - 1);
    if (last)
        json_object_set_new(json_object_get(last, "function"), "arguments",
                            gw_jstr((const char *)c->args.data, c->args.len));
    c->args.len = 0;
}

/* A piece of tool call ev->call: its start (id made here, name) or an argument
 * fragment. */
static void on_call_delta(req_state *st, choice_state *c, const proto_event *ev) {
    char id[40] = "";
    if (ev->call_name.len)
        gw_random_id(id, sizeof id, "call_");
    if (st->stream) {
        gw_chunk k = {.index = ev->choice, .text = ev->text.p, .len = ev->text.len, .call = ev->call,
                      .call_id = *id ? id : NULL, .call_name = ev->call_name.len ? ev->call_name.p : NULL,
                      .with_usage_null = st->include_usage};
        render_chunk(st, &k);
        stream_send(st, 0);
        return;
    }
    if (ev->call_name.len) {
        if (!c->calls && !(c->calls = json_array()))
            return;
        close_call(c);
        json_t *call = json_pack("{s:s,s:s,s:{s:s%,s:s}}", "id", id, "type", "function", "function", "name",
                                 ev->call_name.p, (size_t)ev->call_name.len, "arguments", "");
        if (!call || json_array_append_new(c->calls, call))
            cm_warn("cannot keep a tool call of %s (out of memory)", st->id);
    }
    cm_buf_append(&c->args, ev->text.p, ev->text.len);
}

static void on_delta(req_state *st, choice_state *c, const proto_event *ev) {
    if (ev->call) {
        on_call_delta(st, c, ev);
        return;
    }
    if (st->stream) {
        gw_chunk k = {.index = ev->choice, .text = ev->text.p, .len = ev->text.len, .lp = ev->lp, .n_lp = ev->n_lp,
                      .text_off = c->text_off, .with_usage_null = st->include_usage};
        render_chunk(st, &k);
        stream_send(st, 0);
    } else {
        size_t off = c->text_off;
        if (ev->n_lp && gw_logprobs_add(&c->lp, st->comp.legacy, ev->lp, ev->n_lp, &off))
            cm_warn("cannot keep the logprobs of %s (out of memory)", st->id);
        cm_buf_append(&c->text, ev->text.p, ev->text.len);
    }
    c->text_off += gw_utf8_chars(ev->text.p, ev->text.len);
}

static void on_finish(req_state *st, const proto_event *ev) {
    size_t at = SIZE_MAX; // where this event's finish chunk starts in pending
    if (ev->choice < (uint32_t)st->n_choices && !st->ch[ev->choice].finish) {
        st->ch[ev->choice].finish = ev->finish_reason;
        if (st->stream) {
            at = st->pending.len;
            gw_chunk k = {.index = ev->choice, .text = st->comp.legacy ? "" : NULL, .finish = ev->finish_reason,
                          .with_usage_null = st->include_usage};
            render_chunk(st, &k);
        }
    }
    if (!ev->last) {
        stream_send(st, 0);
        return;
    }
    gw_usage u = {ev->prompt_tokens, ev->completion_tokens, ev->cached_tokens};
    stop_timers(st);
    if (st->stream) {
        if (st->include_usage) {
            at = st->pending.len;
            gw_render_usage_chunk(&st->pending, &st->comp, &u);
        } else if (at == SIZE_MAX) { // the last choice's finish went out earlier: an empty delta carries the receipt
            at = st->pending.len;
            gw_chunk k = {.index = 0, .text = st->comp.legacy ? "" : NULL};
            render_chunk(st, &k);
        }
        seal_stream(st, at, &u, 1);
        cm_buf_append(&st->pending, "data: [DONE]\n\n", 14);
        stream_end(st);
        return;
    }
    gw_choice_out *out = calloc((size_t)st->n_choices, sizeof *out);
    cm_buf b = CM_BUF_INIT;
    for (int i = 0; out && i < st->n_choices; i++) {
        choice_state *c = &st->ch[i];
        if (st->logprobs && !c->lp && gw_logprobs_add(&c->lp, st->comp.legacy, NULL, 0, &c->text_off))
            cm_warn("cannot render the logprobs of %s (out of memory)", st->id);
        close_call(c);
        out[i] = (gw_choice_out){(const char *)c->text.data, c->text.len, c->finish ? c->finish : ev->finish_reason,
                                 c->lp, c->calls};
    }
    if (!out || gw_render_completion(&b, &st->comp, out, st->n_choices, &u))
        respond_model_simple_error(st->req, st->model, 500, "server_error", NULL, NULL, "cannot render the response");
    else
        gw_reply(st->srv->cfg.receipts, st->req, st->model, 200, "application/json", b.data, b.len, &u);
    free(out);
    cm_buf_free(&b);
}

static void on_event(gw_job *job, const proto_event *ev) {
    req_state *st = (req_state *)job;
    if (!st->req)
        return;
    if (ev->kind == PROTO_EV_DELTA && ev->choice >= (uint32_t)st->n_choices) {
        cm_warn("worker event for choice %u of %s, which has %d", ev->choice, st->id, st->n_choices);
        return;
    }
    switch (ev->kind) {
    case PROTO_EV_ACCEPTED:
        if (st->stream && !st->started) // a repeated ACCEPTED must not restart the response
            start_stream(st);
        break;
    case PROTO_EV_DELTA:
        if (st->stream && !st->started) // a worker that skipped ACCEPTED still streams
            start_stream(st);
        on_delta(st, &st->ch[ev->choice], ev);
        break;
    case PROTO_EV_FINISH:
        if (st->stream && !st->started)
            start_stream(st);
        on_finish(st, ev);
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

/* Out of the parked list (no-op when not parked); the parsed request is freed. */
static void unpark(req_state *st) {
    if (st->park_prev) {
        *st->park_prev = st->park_next;
        if (st->park_next)
            st->park_next->park_prev = st->park_prev;
        st->park_prev = NULL;
        st->park_next = NULL;
    }
    gw_chat_req_free(&st->cr);
}

/* A non-streamed HTTP/1 request's client check: EOF on its socket cancels the job
 * (the answer is written to a closed socket, which ends the request in h2o). */
static void on_liveness(h2o_timeout_entry_t *e) {
    req_state *st = H2O_STRUCT_FROM_MEMBER(req_state, liveness, e);
    if (!st->req)
        return;
    h2o_conn_t *conn = st->req->conn;
    h2o_socket_t *sock = conn->callbacks->get_socket ? conn->callbacks->get_socket(conn) : NULL;
    char c;
    ssize_t n = sock ? recv(h2o_socket_get_fd(sock), &c, 1, MSG_PEEK | MSG_DONTWAIT) : -1;
    if (n == 0 || (n < 0 && sock && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        cm_debug("client of %s hung up; cancelling", st->id);
        gw_pool_cancel(gw_model_pool(st->model), &st->job);
        unpark(st);
        stop_timers(st);
        respond_model_simple_error(st->req, st->model, 400, "invalid_request_error", NULL, "client_closed",
                             "The client closed the connection.");
        return;
    }
    h2o_timeout_link(st->srv->ctx.loop, &st->srv->liveness_to, &st->liveness);
}

/* The request's deadline: cancel the job and say so. */
static void on_deadline(h2o_timeout_entry_t *e) {
    req_state *st = H2O_STRUCT_FROM_MEMBER(req_state, deadline, e);
    gw_pool_cancel(gw_model_pool(st->model), &st->job);
    unpark(st);
    gw_error err;
    gw_error_set(&err, 504, "server_error", NULL, "timeout",
                 "The request did not complete within the server's time limit (%g s).",
                 st->srv->cfg.request_timeout_ms / 1000.0);
    fail_request(st, &err);
}

static void dispose_state(void *p) {
    req_state *st = p;
    if (st->model)
        gw_pool_cancel(gw_model_pool(st->model), &st->job);
    unpark(st);
    stop_timers(st);
    st->req = NULL;
    for (int i = 0; i < st->n_choices; i++) {
        cm_buf_free(&st->ch[i].text);
        cm_buf_free(&st->ch[i].args);
        if (st->ch[i].lp)
            json_decref(st->ch[i].lp);
        if (st->ch[i].calls)
            json_decref(st->ch[i].calls);
    }
    cm_buf_free(&st->pending);
    cm_buf_free(&st->flight);
    cm_sha256_free(&st->body_hash);
}

/* ---- routes ---- */

static int path_is(h2o_req_t *req, const char *p) {
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, p, strlen(p));
}

static int method_is(h2o_req_t *req, const char *m) {
    return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

/* A JSON body (or none declared): anything else is a 415. */
static int json_content_type(h2o_req_t *req) {
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    if (i < 0)
        return 1;
    h2o_iovec_t v = req->headers.entries[i].value;
    size_t n = v.len;
    for (size_t k = 0; k < v.len; k++)
        if (v.base[k] == ';') {
            n = k;
            break;
        }
    while (n && (v.base[n - 1] == ' ' || v.base[n - 1] == '\t'))
        n--;
    return h2o_lcstris(v.base, n, H2O_STRLIT("application/json"));
}

/* Limits that need the parsed request (the body size is checked before). */
static int check_limits(gw_http *s, gw_pool *pool, const gw_chat_req *cr, gw_error *err) {
    const gw_http_config *c = &s->cfg;
    if (c->max_messages && cr->submit.n_msgs > (uint32_t)c->max_messages) {
        gw_error_set(err, 400, "invalid_request_error", "messages", "array_above_max_length",
                     "Invalid 'messages': %u messages, more than this server's limit of %d.", cr->submit.n_msgs,
                     c->max_messages);
        return -1;
    }
    if (c->max_request_tokens) {
        long long per = cr->submit.max_tokens > 0 ? cr->submit.max_tokens : (long long)gw_pool_n_ctx(pool);
        long long total = per * cr->n_choices;
        if (total > c->max_request_tokens) {
            gw_error_set(err, 400, "invalid_request_error", "max_tokens", "invalid_value",
                         "This request may generate %lld tokens (%d choice(s) x %lld), more than this server's limit "
                         "of %ld tokens per request; lower max_tokens or n.",
                         total, cr->n_choices, per, c->max_request_tokens);
            return -1;
        }
    }
    return 0;
}

static void submit(req_state *st);

static void handle_completion(gw_http *s, h2o_req_t *req, int legacy) {
    if (req->entity.len > s->cfg.max_body) {
        char msg[128];
        snprintf(msg, sizeof msg, "Request body too large: %zu bytes (the limit is %zu).", req->entity.len,
                 s->cfg.max_body);
        respond_simple_error(req, 413, "invalid_request_error", NULL, "request_too_large", msg);
        return;
    }
    if (!json_content_type(req)) {
        respond_simple_error(req, 415, "invalid_request_error", NULL, "unsupported_media_type",
                             "The request body must be JSON: send 'Content-Type: application/json'.");
        return;
    }
    gw_chat_req cr;
    gw_error err;
    const char *body = req->entity.base ? req->entity.base : "";
    int rc = legacy ? gw_completions_parse(body, req->entity.len, &cr, &err)
                    : gw_chat_parse(body, req->entity.len, &cr, &err);
    if (rc) {
        respond_error(req, &err);
        return;
    }
    char why[1100];
    gw_model_refusal refusal;
    gw_model *m = gw_models_get(s->models, cr.model, cr.model_len, &refusal, why, sizeof why);
    if (!m) {
        switch (refusal) {
        case GW_MODEL_AT_CAPACITY:
            gw_error_set(&err, 503, "server_error", "model", "model_capacity",
                         "The model '%.200s' is not loaded and %s; retry when an operator raises the limit.",
                         cr.model, why);
            break;
        case GW_MODEL_UNTRUSTED:
            gw_error_set(&err, 403, "invalid_request_error", "model", "model_not_trusted",
                         "The model '%.200s' cannot be served: %s", cr.model, why);
            break;
        default:
            gw_error_set(&err, 404, "invalid_request_error", "model", "model_not_found",
                         "The model '%.200s' does not exist or you do not have access to it.", cr.model);
        }
        gw_chat_req_free(&cr);
        respond_error(req, &err);
        return;
    }
    if (gw_model_get_state(m) == GW_MODEL_FAILED) {
        gw_chat_req_free(&cr);
        respond_model_simple_error(req, m, 503, "server_error", "model", "model_unavailable",
                                   "The model's workers could not load it; the server log has the reason.");
        return;
    }
    req_state *st = h2o_mem_alloc_shared(&req->pool, sizeof *st, dispose_state);
    memset(st, 0, sizeof *st);
    st->cr = cr;
    st->model = m;
    st->ch = h2o_mem_alloc_pool(&req->pool, (size_t)cr.n_choices * sizeof *st->ch);
    memset(st->ch, 0, (size_t)cr.n_choices * sizeof *st->ch);
    st->n_choices = cr.n_choices;
    st->job.ops = &job_ops;
    st->job.worker = -1;
    st->srv = s;
    st->req = req;
    st->stream = cr.stream;
    st->include_usage = cr.include_usage;
    st->logprobs = cr.submit.logprobs;
    // Legacy text_offset counts from the start of the prompt, as OpenAI's does
    // (token-id prompts have no text here: their offsets start at 0).
    for (int i = 0; legacy && !cr.submit.echo && i < cr.n_choices; i++) {
        const proto_prompt *p = &cr.submit.prompts[i / (int)cr.submit.n];
        if (!p->tokens)
            st->ch[i].text_off = gw_utf8_chars(p->text.p, p->text.len);
    }
    gw_random_id(st->id, sizeof st->id, legacy ? "cmpl-" : "chatcmpl-");
    st->comp.id = st->id;
    st->comp.model = gw_model_id(m);
    st->comp.created = (long long)time(NULL);
    st->comp.legacy = legacy;
    st->comp.functions = cr.legacy_functions;
    st->deadline.cb = on_deadline;
    st->keepalive.cb = on_keepalive;
    st->liveness.cb = on_liveness;
    if (s->cfg.request_timeout_ms)
        h2o_timeout_link(s->ctx.loop, &s->deadline_to, &st->deadline);
    if (!st->stream && req->version < 0x200)
        h2o_timeout_link(s->ctx.loop, &s->liveness_to, &st->liveness);
    if (gw_model_get_state(m) == GW_MODEL_STARTING) { // loading: wait for it (gw_http_model_changed)
        st->park_next = s->parked;
        if (s->parked)
            s->parked->park_prev = &st->park_next;
        st->park_prev = &s->parked;
        s->parked = st;
        return;
    }
    submit(st);
}

/* Sends the parsed request to its model's workers, or answers why not. */
static void submit(req_state *st) {
    gw_http *s = st->srv;
    h2o_req_t *req = st->req;
    gw_pool *pool = gw_model_pool(st->model);
    gw_error err;
    if (check_limits(s, pool, &st->cr, &err)) {
        gw_chat_req_free(&st->cr);
        stop_timers(st);
        respond_model_error(req, st->model, &err);
        return;
    }
    int rc = gw_pool_submit(pool, &st->job, &st->cr.submit);
    gw_chat_req_free(&st->cr);
    if (rc) {
        stop_timers(st);
        if (rc == -EBUSY)
            respond_model_simple_error(req, st->model, 429, "rate_limit_exceeded", NULL, "rate_limit_exceeded",
                                       "The server is at its limit of concurrent requests; retry shortly.");
        else
            respond_model_simple_error(req, st->model, 503, "server_error", NULL, "worker_unavailable",
                                       rc == -EAGAIN ? "No model worker is ready yet; retry shortly."
                                                     : "The request could not be queued.");
        return;
    }
    if (st->stream && s->cfg.keepalive_ms)
        h2o_timeout_link(s->ctx.loop, &s->keepalive_to, &st->keepalive);
}

void gw_http_model_changed(gw_http *s, gw_model *m) {
    req_state **pp = &s->parked;
    while (*pp) {
        req_state *st = *pp;
        if (st->model != m) {
            pp = &st->park_next;
            continue;
        }
        *pp = st->park_next; // unlink
        if (st->park_next)
            st->park_next->park_prev = pp;
        st->park_next = NULL;
        st->park_prev = NULL;
        if (gw_model_get_state(m) == GW_MODEL_READY) {
            submit(st);
        } else {
            gw_chat_req_free(&st->cr);
            gw_error e;
            gw_error_set(&e, 503, "server_error", "model", "model_unavailable",
                         "The model's workers could not load it; the server log has the reason.");
            fail_request(st, &e);
        }
    }
}

/* Paths of the OpenAI API this server does not serve: a clear error instead of
 * a bare 404 (a prefix ending in '/' covers the paths below it). */
static const char *const unsupported[] = {
    "/v1/embeddings", "/v1/audio/", "/v1/images/", "/v1/files", "/v1/fine_tuning/", "/v1/batches",
    "/v1/moderations", "/v1/assistants", "/v1/threads", "/v1/vector_stores", "/v1/responses", "/v1/uploads",
    "/v1/realtime", "/v1/organization/", "/v1/evals", "/v1/containers", "/v1/chat/completions/",
    "/v1/conversations", "/v1/videos", "/v1/skills", "/v1/chatkit", "/v1/content_provenance_checks",
    "/v1/projects/", NULL,
};

static int is_unsupported(h2o_req_t *req) {
    for (int i = 0; unsupported[i]; i++) {
        size_t n = strlen(unsupported[i]);
        const char *p = req->path_normalized.base;
        size_t len = req->path_normalized.len;
        if (unsupported[i][n - 1] == '/' ? len >= n && !memcmp(p, unsupported[i], n)
                                         : (len == n || (len > n && p[n] == '/')) && !memcmp(p, unsupported[i], n))
            return 1;
    }
    return 0;
}

/* With an API key configured, every /v1 request must carry it as a bearer token. */
static int authorized(gw_http *s, h2o_req_t *req) {
    if (!s->cfg.api_key || !*s->cfg.api_key)
        return 1;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0)
        return 0;
    h2o_iovec_t v = req->headers.entries[i].value;
    size_t kl = strlen(s->cfg.api_key);
    return v.len == 7 + kl && h2o_lcstris(v.base, 7, H2O_STRLIT("bearer ")) && !memcmp(v.base + 7, s->cfg.api_key, kl);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
    gw_http *s = *(gw_http **)(self + 1);
    const char *prefix = "/v1/models/";
    size_t pl = strlen(prefix);
    int v1 = req->path_normalized.len >= 3 && !memcmp(req->path_normalized.base, "/v1", 3);
    if (v1 && !authorized(s, req)) {
        respond_simple_error(req, 401, "invalid_request_error", NULL, "invalid_api_key",
                             "Incorrect API key provided. Pass the server's key as 'Authorization: Bearer KEY'.");
        return 0;
    }
    if (path_is(req, "/v1/chat/completions") || path_is(req, "/v1/completions")) {
        if (!method_is(req, "POST"))
            goto not_allowed;
        handle_completion(s, req, path_is(req, "/v1/completions"));
    } else if (path_is(req, "/v1/models")) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD"))
            goto not_allowed;
        gw_admin_models(s->cfg.receipts, req, s->models, s->started);
    } else if (req->path_normalized.len > pl && !memcmp(req->path_normalized.base, prefix, pl)) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD"))
            goto not_allowed;
        gw_admin_model(s->cfg.receipts, req, s->models, s->started,
                       h2o_iovec_init(req->path_normalized.base + pl, req->path_normalized.len - pl));
    } else if (path_is(req, "/v1/kolm/keys")) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD"))
            goto not_allowed;
        gw_admin_keys(s->cfg.receipts, req, s->models);
    } else if (path_is(req, "/health")) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD"))
            goto not_allowed;
        if (gw_pool_ready(gw_model_pool(gw_models_served(s->models))))
            respond(req, 200, "application/json", "{\"status\":\"ok\"}", 15);
        else
            respond_simple_error(req, 503, "server_error", NULL, "worker_unavailable", "No model worker is ready.");
    } else if (path_is(req, "/metrics")) {
        if (!method_is(req, "GET") && !method_is(req, "HEAD"))
            goto not_allowed;
        gw_admin_metrics(s->cfg.receipts, req, s->models);
    } else if (is_unsupported(req)) {
        char msg[300];
        snprintf(msg, sizeof msg,
                 "%.*s is part of the OpenAI API but is not supported by this server (kolm serves "
                 "/v1/chat/completions, /v1/completions and /v1/models).",
                 (int)(req->path_normalized.len > 200 ? 200 : req->path_normalized.len), req->path_normalized.base);
        respond_simple_error(req, 404, "invalid_request_error", NULL, "unsupported_endpoint", msg);
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

gw_http *gw_http_create(h2o_loop_t *loop, gw_models *models, const gw_http_config *cfg) {
    gw_http *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->models = models;
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
    h2o_timeout_init(loop, &s->deadline_to, cfg->request_timeout_ms ? cfg->request_timeout_ms : 1);
    h2o_timeout_init(loop, &s->keepalive_to, cfg->keepalive_ms ? cfg->keepalive_ms : 1);
    h2o_timeout_init(loop, &s->liveness_to, LIVENESS_MS);
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
