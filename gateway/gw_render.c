/* gw_render.c: response bodies and SSE events (see gw_render.h). */
#include "gateway/gw_render.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if (!j)
        return -ENOMEM;
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s)
        return -ENOMEM;
    int rc = cm_buf_append(out, s, strlen(s));
    free(s);
    return rc;
}

json_t *gw_jstr(const char *s, size_t n) {
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
    return s ? gw_jstr(s, strlen(s)) : json_null();
}

static json_t *error_json(const gw_error *err) {
    json_t *e = json_object();
    json_object_set_new(e, "message", gw_jstr(err->message, strlen(err->message)));
    json_object_set_new(e, "type", json_string(err->type ? err->type : "invalid_request_error"));
    json_object_set_new(e, "param", str_or_null(err->param));
    json_object_set_new(e, "code", str_or_null(err->code));
    json_t *root = json_object();
    json_object_set_new(root, "error", e);
    return root;
}

/* Appends "data: <json>\n\n" (consumes j). */
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

int gw_render_error(cm_buf *out, const gw_error *err) {
    return dump_into(out, error_json(err));
}

int gw_render_sse_error(cm_buf *out, const gw_error *err) {
    return sse(out, error_json(err));
}

const char *gw_finish_name(const gw_completion *c, int finish) {
    switch (finish) {
    case PROTO_FINISH_LENGTH: return "length";
    case PROTO_FINISH_TOOL_CALLS: return c->functions ? "function_call" : "tool_calls";
    default: return "stop";
    }
}

/* ---- logprobs ---- */

/* OpenAI reports -9999.0 for a probability too small to represent. */
static json_t *lp_num(float lp) {
    return json_real(isfinite(lp) ? (double)lp : -9999.0);
}

static json_t *bytes_json(const proto_str *t) {
    json_t *a = json_array();
    for (uint32_t i = 0; i < t->len; i++)
        json_array_append_new(a, json_integer((unsigned char)t->p[i]));
    return a;
}

/* {token, logprob, bytes} */
static json_t *chat_token(const proto_str *t, float lp) {
    json_t *o = json_object();
    json_object_set_new(o, "token", gw_jstr(t->p, t->len));
    json_object_set_new(o, "logprob", lp_num(lp));
    json_object_set_new(o, "bytes", bytes_json(t));
    return o;
}

static void add_chat(json_t *acc, const proto_logprob *lp, uint32_t n) {
    json_t *content = json_object_get(acc, "content");
    for (uint32_t i = 0; i < n; i++) {
        json_t *o = chat_token(&lp[i].tok, lp[i].logprob);
        json_t *top = json_array();
        for (uint32_t t = 0; t < lp[i].n_top; t++)
            json_array_append_new(top, chat_token(&lp[i].top[t].tok, lp[i].top[t].logprob));
        json_object_set_new(o, "top_logprobs", top);
        json_array_append_new(content, o);
    }
}

static void add_legacy(json_t *acc, const proto_logprob *lp, uint32_t n, size_t *text_off) {
    json_t *toks = json_object_get(acc, "tokens"), *lps = json_object_get(acc, "token_logprobs"),
           *tops = json_object_get(acc, "top_logprobs"), *offs = json_object_get(acc, "text_offset");
    for (uint32_t i = 0; i < n; i++) {
        json_array_append_new(toks, gw_jstr(lp[i].tok.p, lp[i].tok.len));
        json_array_append_new(lps, lp_num(lp[i].logprob));
        json_t *top = json_object();
        for (uint32_t t = 0; t < lp[i].n_top; t++) {
            json_t *k = gw_jstr(lp[i].top[t].tok.p, lp[i].top[t].tok.len);
            const char *key = json_string_value(k);
            if (key && !json_object_get(top, key)) // two tokens may render alike (U+FFFD): keep the better
                json_object_set_new(top, key, lp_num(lp[i].top[t].logprob));
            json_decref(k);
        }
        json_array_append_new(tops, top);
        json_array_append_new(offs, json_integer((json_int_t)*text_off));
        *text_off += gw_utf8_chars(lp[i].tok.p, lp[i].tok.len);
    }
}

size_t gw_utf8_chars(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

int gw_logprobs_add(json_t **acc, int legacy, const proto_logprob *lp, uint32_t n, size_t *text_off) {
    if (!*acc) {
        json_t *o = json_object();
        if (!o)
            return -ENOMEM;
        if (legacy) {
            json_object_set_new(o, "tokens", json_array());
            json_object_set_new(o, "token_logprobs", json_array());
            json_object_set_new(o, "top_logprobs", json_array());
            json_object_set_new(o, "text_offset", json_array());
        } else {
            json_object_set_new(o, "content", json_array());
            json_object_set_new(o, "refusal", json_null());
        }
        *acc = o;
    }
    if (legacy)
        add_legacy(*acc, lp, n, text_off);
    else
        add_chat(*acc, lp, n);
    return 0;
}

/* ---- completions ---- */

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

static json_t *head_json(const gw_completion *c, int chunk) {
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(c->id));
    json_object_set_new(j, "object",
                        json_string(c->legacy ? "text_completion" : chunk ? "chat.completion.chunk" : "chat.completion"));
    json_object_set_new(j, "created", json_integer(c->created));
    json_object_set_new(j, "model", str_or_null(c->model));
    json_object_set_new(j, "system_fingerprint", json_string("fp_kolm"));
    return j;
}

int gw_render_completion(cm_buf *out, const gw_completion *c, const gw_choice_out *ch, int n_choices,
                         const gw_usage *u) {
    json_t *j = head_json(c, 0);
    json_t *choices = json_array();
    for (int i = 0; i < n_choices; i++) {
        json_t *o = json_object();
        json_t *text = gw_jstr(ch[i].text ? ch[i].text : "", ch[i].text ? ch[i].len : 0);
        if (c->legacy) {
            json_object_set_new(o, "text", text);
            json_object_set_new(o, "index", json_integer(i));
        } else {
            json_t *msg = json_object();
            size_t nc = json_array_size(ch[i].calls);
            json_object_set_new(msg, "role", json_string("assistant"));
            if (nc && !ch[i].len) { // only calls: content is null, as OpenAI sends it
                json_decref(text);
                text = json_null();
            }
            json_object_set_new(msg, "content", text);
            json_object_set_new(msg, "refusal", json_null());
            if (nc && c->functions)
                json_object_set(msg, "function_call",
                                json_object_get(json_array_get(ch[i].calls, 0), "function"));
            else if (nc)
                json_object_set(msg, "tool_calls", ch[i].calls);
            json_object_set_new(o, "index", json_integer(i));
            json_object_set_new(o, "message", msg);
        }
        json_object_set(o, "logprobs", ch[i].lp ? ch[i].lp : json_null());
        json_object_set_new(o, "finish_reason", json_string(gw_finish_name(c, ch[i].finish)));
        json_array_append_new(choices, o);
    }
    json_object_set_new(j, "choices", choices);
    json_object_set_new(j, "usage", usage_json(u));
    return dump_into(out, j);
}

int gw_render_chunk(cm_buf *out, const gw_completion *c, const gw_chunk *k) {
    json_t *j = head_json(c, 1);
    json_t *ch = json_object();
    if (c->legacy) {
        json_object_set_new(ch, "text", gw_jstr(k->text ? k->text : "", k->text ? k->len : 0));
        json_object_set_new(ch, "index", json_integer(k->index));
    } else {
        json_t *delta = json_object();
        if (k->role)
            json_object_set_new(delta, "role", json_string("assistant"));
        if (k->call) {
            json_t *fn = json_object();
            if (k->call_name)
                json_object_set_new(fn, "name", json_string(k->call_name));
            json_object_set_new(fn, "arguments", gw_jstr(k->text ? k->text : "", k->text ? k->len : 0));
            if (c->functions) {
                json_object_set_new(delta, "function_call", fn);
            } else {
                json_t *tc = json_object();
                json_object_set_new(tc, "index", json_integer(k->call - 1));
                if (k->call_id) {
                    json_object_set_new(tc, "id", json_string(k->call_id));
                    json_object_set_new(tc, "type", json_string("function"));
                }
                json_object_set_new(tc, "function", fn);
                json_t *arr = json_array();
                json_array_append_new(arr, tc);
                json_object_set_new(delta, "tool_calls", arr);
            }
        } else if (k->text) {
            json_object_set_new(delta, "content", gw_jstr(k->text, k->len));
        }
        json_object_set_new(ch, "index", json_integer(k->index));
        json_object_set_new(ch, "delta", delta);
    }
    json_t *lp = NULL;
    size_t off = k->text_off;
    if (k->lp && k->n_lp && gw_logprobs_add(&lp, c->legacy, k->lp, k->n_lp, &off)) {
        json_decref(j);
        json_decref(ch);
        return -ENOMEM;
    }
    json_object_set_new(ch, "logprobs", lp ? lp : json_null());
    json_object_set_new(ch, "finish_reason", k->finish ? json_string(gw_finish_name(c, k->finish)) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, ch);
    json_object_set_new(j, "choices", choices);
    if (k->with_usage_null)
        json_object_set_new(j, "usage", json_null());
    return sse(out, j);
}

int gw_render_usage_chunk(cm_buf *out, const gw_completion *c, const gw_usage *u) {
    json_t *j = head_json(c, 1);
    json_object_set_new(j, "choices", json_array());
    json_object_set_new(j, "usage", usage_json(u));
    return sse(out, j);
}
