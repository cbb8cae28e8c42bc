/* gw_chat.c: request validation and response rendering (see gw_chat.h).
 *
 * Policy: every field of CreateChatCompletionRequest is either honoured or refused
 * by name with a 400; nothing is silently dropped. Fields the worker cannot honour
 * yet (tools, logprobs, penalties, n > 1, ...) are refused. Unknown fields are
 * refused too, as OpenAI does ("Unrecognized request argument supplied"). */
#include "gateway/gw_chat.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INVALID "invalid_request_error"

void gw_error_set(gw_error *err, int status, const char *type, const char *param, const char *code, const char *fmt,
                  ...) {
    err->status = status;
    err->type = type;
    err->param = param;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

static int dump_into(cm_buf *out, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s)
        return -ENOMEM;
    int rc = cm_buf_append(out, s, strlen(s));
    free(s);
    return rc;
}

/* A JSON string from n bytes of s that need not be valid UTF-8 (a message cut
 * by %.*s mid-character, a worker that broke the contract): invalid bytes become
 * U+FFFD. Never NULL unless out of memory. The caller owns the result. */
static json_t *jstr(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    cm_buf b = CM_BUF_INIT;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        uint32_t cp = k == 2 ? c & 0x1F : k == 3 ? c & 0x0F : c & 0x07;
        int ok = k > 0 && i + k <= n;
        for (size_t m = 1; ok && m < k; m++) {
            ok = (u[i + m] & 0xC0) == 0x80;
            cp = (cp << 6) | (u[i + m] & 0x3F);
        }
        if (ok && k > 1)
            ok = !(k == 2 && cp < 0x80) && !(k == 3 && cp < 0x800) && !(k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) &&
                 !(cp >= 0xD800 && cp <= 0xDFFF);
        if (cm_buf_append(&b, ok ? s + i : "\xEF\xBF\xBD", ok ? k : 3))
            break;
        i += ok ? k : 1;
    }
    j = json_stringn(b.data ? (const char *)b.data : "", b.len);
    cm_buf_free(&b);
    return j;
}

static json_t *str_or_null(const char *s) {
    return s ? jstr(s, strlen(s)) : json_null();
}

static json_t *error_json(const gw_error *err) {
    json_t *e = json_object();
    json_object_set_new(e, "message", jstr(err->message, strlen(err->message)));
    json_object_set_new(e, "type", json_string(err->type ? err->type : INVALID));
    json_object_set_new(e, "param", str_or_null(err->param));
    json_object_set_new(e, "code", str_or_null(err->code));
    json_t *root = json_object();
    json_object_set_new(root, "error", e);
    return root;
}

int gw_render_error(cm_buf *out, const gw_error *err) {
    return dump_into(out, error_json(err));
}

int gw_render_sse_error(cm_buf *out, const gw_error *err) {
    int rc = cm_buf_append(out, "data: ", 6);
    if (!rc)
        rc = dump_into(out, error_json(err));
    if (!rc)
        rc = cm_buf_append(out, "\n\n", 2);
    return rc;
}

/* ---- parsing ---- */

/* 1 when v is the JSON string lit exactly (length-aware: "user\u0000x" is not "user"). */
static int jeq(const json_t *v, const char *lit) {
    size_t n = strlen(lit);
    return json_is_string(v) && json_string_length(v) == n && !memcmp(json_string_value(v), lit, n);
}

static int is_num(const json_t *v) {
    return json_is_integer(v) || json_is_real(v);
}

/* Number field in [lo, hi]; absent/null leaves *out. */
static int get_number(json_t *root, const char *key, double lo, double hi, double *out, gw_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!is_num(v)) {
        gw_error_set(err, 400, INVALID, key, "invalid_type", "Invalid type for '%s': expected a number.", key);
        return -1;
    }
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) {
        gw_error_set(err, 400, INVALID, key, "invalid_value", "Invalid '%s': %g is out of range [%g, %g].", key, d,
                     lo, hi);
        return -1;
    }
    *out = d;
    return 0;
}

static int get_integer(json_t *root, const char *key, long long lo, long long hi, long long *out, gw_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v)) {
        gw_error_set(err, 400, INVALID, key, "invalid_type", "Invalid type for '%s': expected an integer.", key);
        return -1;
    }
    long long d = json_integer_value(v);
    if (d < lo || d > hi) {
        gw_error_set(err, 400, INVALID, key, "invalid_value", "Invalid '%s': %lld is out of range [%lld, %lld].", key,
                     d, lo, hi);
        return -1;
    }
    *out = d;
    return 0;
}

static int get_bool(json_t *root, const char *key, int *out, gw_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        gw_error_set(err, 400, INVALID, key, "invalid_type", "Invalid type for '%s': expected a boolean.", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static char *keep(gw_chat_req *req, char *s) {
    char **p = realloc(req->owned, (size_t)(req->n_owned + 1) * sizeof *p);
    if (!p) {
        free(s);
        return NULL;
    }
    req->owned = p;
    req->owned[req->n_owned++] = s;
    return s;
}

/* Message content: a string, null (assistant with tool_calls), or text parts. */
static int parse_content(gw_chat_req *req, json_t *m, int idx, proto_str *out, gw_error *err) {
    static char param[64];
    json_t *c = json_object_get(m, "content");
    const char *role = json_string_value(json_object_get(m, "role"));
    if (json_is_string(c)) {
        out->p = (char *)json_string_value(c);
        out->len = (uint32_t)json_string_length(c);
        return 0;
    }
    snprintf(param, sizeof param, "messages[%d].content", idx);
    if ((!c || json_is_null(c)) && role && !strcmp(role, "assistant")) {
        out->p = (char *)"";
        out->len = 0;
        return 0;
    }
    if (!json_is_array(c)) {
        gw_error_set(err, 400, INVALID, param, c ? "invalid_type" : "missing_required_parameter",
                     c ? "Invalid type for '%s': expected a string or an array of content parts."
                       : "Missing required parameter: '%s'.",
                     param);
        return -1;
    }
    cm_buf joined = CM_BUF_INIT;
    size_t i;
    json_t *part;
    json_array_foreach(c, i, part) {
        json_t *type = json_object_get(part, "type");
        json_t *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type)) {
            snprintf(param, sizeof param, "messages[%d].content[%zu]", idx, i);
            gw_error_set(err, 400, INVALID, param, "invalid_type", "Invalid content part at '%s'.", param);
            goto fail;
        }
        if (!jeq(type, "text")) {
            snprintf(param, sizeof param, "messages[%d].content[%zu].type", idx, i);
            gw_error_set(err, 400, INVALID, param, "invalid_value",
                         "Content parts of type '%s' are not supported by this model; only 'text' is.",
                         json_string_value(type));
            goto fail;
        }
        if (!json_is_string(text)) {
            snprintf(param, sizeof param, "messages[%d].content[%zu].text", idx, i);
            gw_error_set(err, 400, INVALID, param, "invalid_type", "Invalid type for '%s': expected a string.", param);
            goto fail;
        }
        if (cm_buf_append(&joined, json_string_value(text), json_string_length(text)))
            goto nomem;
    }
    if (cm_buf_append(&joined, "", 1))
        goto nomem;
    out->len = (uint32_t)(joined.len - 1);
    out->p = keep(req, (char *)joined.data);
    if (!out->p) {
        joined.data = NULL;
        goto nomem;
    }
    return 0;
nomem:
    gw_error_set(err, 500, "server_error", NULL, NULL, "Out of memory.");
fail:
    cm_buf_free(&joined);
    return -1;
}

static int parse_messages(gw_chat_req *req, json_t *root, gw_error *err) {
    json_t *msgs = json_object_get(root, "messages");
    if (!msgs) {
        gw_error_set(err, 400, INVALID, "messages", "missing_required_parameter",
                     "Missing required parameter: 'messages'.");
        return -1;
    }
    if (!json_is_array(msgs)) {
        gw_error_set(err, 400, INVALID, "messages", "invalid_type", "Invalid type for 'messages': expected an array.");
        return -1;
    }
    size_t n = json_array_size(msgs);
    if (n == 0) {
        gw_error_set(err, 400, INVALID, "messages", "empty_array",
                     "Invalid 'messages': empty array. Expected an array with minimum length 1.");
        return -1;
    }
    if (n > PROTO_MAX_MESSAGES) {
        gw_error_set(err, 400, INVALID, "messages", "array_above_max_length",
                     "Invalid 'messages': array too long (%zu > %d).", n, PROTO_MAX_MESSAGES);
        return -1;
    }
    proto_msg *pm = calloc(n, sizeof *pm);
    if (!pm) {
        gw_error_set(err, 500, "server_error", NULL, NULL, "Out of memory.");
        return -1;
    }
    req->submit.msgs = pm;
    req->submit.n_msgs = (uint32_t)n;
    static char param[64];
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        if (!json_is_object(m)) {
            snprintf(param, sizeof param, "messages[%zu]", i);
            gw_error_set(err, 400, INVALID, param, "invalid_type", "Invalid type for '%s': expected an object.",
                         param);
            return -1;
        }
        json_t *role = json_object_get(m, "role");
        const char *r = json_string_value(role);
        if (!r || !(jeq(role, "system") || jeq(role, "developer") || jeq(role, "user") || jeq(role, "assistant") ||
                    jeq(role, "tool"))) {
            snprintf(param, sizeof param, "messages[%zu].role", i);
            gw_error_set(err, 400, INVALID, param, role ? "invalid_value" : "missing_required_parameter",
                         "Invalid '%s': expected one of 'system', 'developer', 'user', 'assistant', 'tool'.", param);
            return -1;
        }
        if (json_object_get(m, "tool_calls") || json_object_get(m, "function_call")) {
            snprintf(param, sizeof param, "messages[%zu].tool_calls", i);
            gw_error_set(err, 400, INVALID, param, "unsupported_parameter",
                         "Tool calls are not supported by this server yet.");
            return -1;
        }
        pm[i].role.p = (char *)r;
        pm[i].role.len = (uint32_t)strlen(r);
        if (parse_content(req, m, (int)i, &pm[i].content, err))
            return -1;
    }
    return 0;
}

static int parse_stop(gw_chat_req *req, json_t *root, gw_error *err) {
    json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v))
        return 0;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > 4) {
            gw_error_set(err, 400, INVALID, "stop", "invalid_value", "Invalid 'stop': at most 4 sequences allowed.");
            return -1;
        }
        items = NULL;
    } else if (!json_is_string(v)) {
        gw_error_set(err, 400, INVALID, "stop", "invalid_type",
                     "Invalid type for 'stop': expected a string or an array of strings.");
        return -1;
    }
    if (!n)
        return 0;
    proto_str *st = calloc(n, sizeof *st);
    if (!st) {
        gw_error_set(err, 500, "server_error", NULL, NULL, "Out of memory.");
        return -1;
    }
    req->submit.stop = st;
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        if (!json_is_string(s) || json_string_length(s) == 0 || json_string_length(s) > PROTO_MAX_STOP_LEN) {
            gw_error_set(err, 400, INVALID, "stop", "invalid_value",
                         "Invalid 'stop': each stop sequence must be a non-empty string of at most %d bytes.",
                         PROTO_MAX_STOP_LEN);
            return -1;
        }
        st[i].p = (char *)json_string_value(s);
        st[i].len = (uint32_t)json_string_length(s);
        req->submit.n_stop = (uint32_t)(i + 1);
    }
    return 0;
}

/* Fields accepted as they are (no effect on generation or handled elsewhere). */
static const char *const accepted[] = {
    "model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "stream",
    "stream_options", "user", "metadata", "store", "top_k", "n", "logprobs", "presence_penalty",
    "frequency_penalty", "logit_bias", "parallel_tool_calls", "service_tier", "response_format", "tool_choice",
    "tools", NULL,
};

/* Fields refused while the worker cannot honour them, checked by value below. */
static int refuse_unsupported(json_t *root, gw_error *err) {
    json_t *v;
    long long n = 1;
    if (get_integer(root, "n", 1, 128, &n, err))
        return -1;
    if (n != 1) {
        gw_error_set(err, 400, INVALID, "n", "unsupported_value", "Only n=1 is supported by this server yet.");
        return -1;
    }
    int lp = 0;
    if (get_bool(root, "logprobs", &lp, err))
        return -1;
    if (lp || ((v = json_object_get(root, "top_logprobs")) && !json_is_null(v))) {
        gw_error_set(err, 400, INVALID, lp ? "logprobs" : "top_logprobs", "unsupported_parameter",
                     "logprobs are not supported by this server yet.");
        return -1;
    }
    const char *pens[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        double d = 0;
        if (get_number(root, pens[i], -2, 2, &d, err))
            return -1;
        if (d != 0) {
            gw_error_set(err, 400, INVALID, pens[i], "unsupported_parameter",
                         "'%s' is not supported by this server yet.", pens[i]);
            return -1;
        }
    }
    if ((v = json_object_get(root, "logit_bias")) && !json_is_null(v)) {
        if (!json_is_object(v)) {
            gw_error_set(err, 400, INVALID, "logit_bias", "invalid_type", "Invalid type for 'logit_bias'.");
            return -1;
        }
        if (json_object_size(v)) {
            gw_error_set(err, 400, INVALID, "logit_bias", "unsupported_parameter",
                         "'logit_bias' is not supported by this server yet.");
            return -1;
        }
    }
    const char *tooly[] = {"tools", "tool_choice"};
    for (int i = 0; i < 2; i++)
        if ((v = json_object_get(root, tooly[i])) && !json_is_null(v) &&
            !(json_is_array(v) && json_array_size(v) == 0) && !jeq(v, "none")) {
            gw_error_set(err, 400, INVALID, tooly[i], "unsupported_parameter",
                         "Tool calling is not supported by this server yet.");
            return -1;
        }
    if ((v = json_object_get(root, "response_format")) && !json_is_null(v)) {
        json_t *t = json_object_get(v, "type");
        if (!json_is_object(v) || !jeq(t, "text")) {
            gw_error_set(err, 400, INVALID, "response_format", "unsupported_parameter",
                         "Only response_format {\"type\":\"text\"} is supported by this server yet.");
            return -1;
        }
    }
    const char *k;
    json_object_foreach(root, k, v) {
        int ok = 0;
        for (int i = 0; accepted[i]; i++)
            ok |= !strcmp(k, accepted[i]);
        if (!ok && strcmp(k, "top_logprobs")) {
            static char param[64];
            snprintf(param, sizeof param, "%s", k);
            gw_error_set(err, 400, INVALID, param, "unknown_parameter", "Unrecognized request argument supplied: %s",
                         k);
            return -1;
        }
    }
    return 0;
}

int gw_chat_parse(const char *body, size_t len, const char *model_id, gw_chat_req *req, gw_error *err) {
    memset(req, 0, sizeof *req);
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        gw_error_set(err, 400, INVALID, NULL, "invalid_json",
                     "We could not parse the JSON body of your request (%s at line %d column %d).", jerr.text,
                     jerr.line, jerr.column);
        return -1;
    }
    req->json = root;
    if (!json_is_object(root)) {
        gw_error_set(err, 400, INVALID, NULL, "invalid_json", "The request body must be a JSON object.");
        goto fail;
    }
    json_t *model = json_object_get(root, "model");
    if (!model) {
        gw_error_set(err, 400, INVALID, "model", "missing_required_parameter", "Missing required parameter: 'model'.");
        goto fail;
    }
    if (!json_is_string(model)) {
        gw_error_set(err, 400, INVALID, "model", "invalid_type", "Invalid type for 'model': expected a string.");
        goto fail;
    }
    if (parse_messages(req, root, err) || refuse_unsupported(root, err))
        goto fail;
    if (!jeq(model, model_id)) {
        gw_error_set(err, 404, INVALID, "model", "model_not_found",
                     "The model '%.200s' does not exist or you do not have access to it.", json_string_value(model));
        goto fail;
    }
    proto_submit *s = &req->submit;
    double temp = 1, top_p = 1;
    long long max_tokens = -1, mct = -1, top_k = 0, seed = 0;
    if (get_number(root, "temperature", 0, 2, &temp, err) || get_number(root, "top_p", 0, 1, &top_p, err) ||
        get_integer(root, "max_tokens", 1, INT32_MAX, &max_tokens, err) ||
        get_integer(root, "max_completion_tokens", 1, INT32_MAX, &mct, err) ||
        get_integer(root, "top_k", 0, INT32_MAX, &top_k, err) ||
        get_integer(root, "seed", INT64_MIN, INT64_MAX, &seed, err) || get_bool(root, "stream", &req->stream, err) ||
        parse_stop(req, root, err))
        goto fail;
    s->temperature = (float)temp;
    s->top_p = (float)top_p;
    s->top_k = (int32_t)top_k;
    s->max_tokens = (int32_t)(mct > 0 ? mct : max_tokens);
    json_t *sv = json_object_get(root, "seed");
    s->has_seed = sv && !json_is_null(sv);
    s->seed = (uint64_t)seed;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!req->stream) {
            gw_error_set(err, 400, INVALID, "stream_options", "invalid_value",
                         "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
            goto fail;
        }
        if (!json_is_object(so)) {
            gw_error_set(err, 400, INVALID, "stream_options", "invalid_type",
                         "Invalid type for 'stream_options': expected an object.");
            goto fail;
        }
        if (get_bool(so, "include_usage", &req->include_usage, err)) {
            err->param = "stream_options.include_usage";
            goto fail;
        }
    }
    return 0;
fail:
    gw_chat_req_free(req);
    return -1;
}

void gw_chat_req_free(gw_chat_req *req) {
    free(req->submit.msgs);
    free(req->submit.stop);
    for (int i = 0; i < req->n_owned; i++)
        free(req->owned[i]);
    free(req->owned);
    if (req->json)
        json_decref(req->json);
    memset(req, 0, sizeof *req);
}

/* ---- rendering ---- */

const char *gw_finish_name(int finish) {
    switch (finish) {
    case PROTO_FINISH_STOP: return "stop";
    case PROTO_FINISH_LENGTH: return "length";
    default: return "stop";
    }
}

static json_t *usage_json(const gw_usage *u) {
    json_t *j = json_object();
    json_object_set_new(j, "prompt_tokens", json_integer(u->prompt_tokens));
    json_object_set_new(j, "completion_tokens", json_integer(u->completion_tokens));
    json_object_set_new(j, "total_tokens", json_integer((json_int_t)u->prompt_tokens + u->completion_tokens));
    json_t *pd = json_object();
    json_object_set_new(pd, "cached_tokens", json_integer(u->cached_tokens));
    json_object_set_new(j, "prompt_tokens_details", pd);
    json_t *cd = json_object();
    json_object_set_new(cd, "reasoning_tokens", json_integer(0));
    json_object_set_new(j, "completion_tokens_details", cd);
    return j;
}

static json_t *head_json(const gw_completion *c, const char *object) {
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(c->id));
    json_object_set_new(j, "object", json_string(object));
    json_object_set_new(j, "created", json_integer(c->created));
    json_object_set_new(j, "model", str_or_null(c->model));
    json_object_set_new(j, "system_fingerprint", json_string("fp_kolm"));
    return j;
}

int gw_render_completion(cm_buf *out, const gw_completion *c, const char *text, size_t text_len, int finish,
                         const gw_usage *u) {
    json_t *j = head_json(c, "chat.completion");
    json_t *msg = json_object();
    json_object_set_new(msg, "role", json_string("assistant"));
    json_object_set_new(msg, "content", jstr(text ? text : "", text ? text_len : 0));
    json_object_set_new(msg, "refusal", json_null());
    json_t *ch = json_object();
    json_object_set_new(ch, "index", json_integer(0));
    json_object_set_new(ch, "message", msg);
    json_object_set_new(ch, "logprobs", json_null());
    json_object_set_new(ch, "finish_reason", json_string(gw_finish_name(finish)));
    json_t *choices = json_array();
    json_array_append_new(choices, ch);
    json_object_set_new(j, "choices", choices);
    json_object_set_new(j, "usage", usage_json(u));
    return dump_into(out, j);
}

static int sse(cm_buf *out, json_t *j) {
    int rc = cm_buf_append(out, "data: ", 6);
    if (!rc)
        rc = dump_into(out, j);
    else
        json_decref(j);
    if (!rc)
        rc = cm_buf_append(out, "\n\n", 2);
    return rc;
}

int gw_render_chunk(cm_buf *out, const gw_completion *c, int role, const char *text, size_t text_len, int finish,
                    int with_usage_null) {
    json_t *j = head_json(c, "chat.completion.chunk");
    json_t *delta = json_object();
    if (role)
        json_object_set_new(delta, "role", json_string("assistant"));
    if (text)
        json_object_set_new(delta, "content", jstr(text, text_len));
    json_t *ch = json_object();
    json_object_set_new(ch, "index", json_integer(0));
    json_object_set_new(ch, "delta", delta);
    json_object_set_new(ch, "logprobs", json_null());
    json_object_set_new(ch, "finish_reason", finish ? json_string(gw_finish_name(finish)) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, ch);
    json_object_set_new(j, "choices", choices);
    if (with_usage_null)
        json_object_set_new(j, "usage", json_null());
    return sse(out, j);
}

int gw_render_usage_chunk(cm_buf *out, const gw_completion *c, const gw_usage *u) {
    json_t *j = head_json(c, "chat.completion.chunk");
    json_object_set_new(j, "choices", json_array());
    json_object_set_new(j, "usage", usage_json(u));
    return sse(out, j);
}
