/* gw_render.c: response bodies and SSE events (see gw_render.h).
 *
 * Design note. Bodies and the rarer events are jansson trees dumped compactly.
 * The streamed chunk, one per token, is written straight into the caller's buffer
 * instead (no tree, no allocation beyond the buffer's growth), and must be byte for
 * byte what the tree would dump: the same key order, integers as %lld writes them,
 * and strings escaped as jansson escapes them (put_str). Both paths treat invalid
 * UTF-8 alike through utf8_seq: gw_jstr repairs with it before jansson sees the
 * string, put_str while escaping. tests/unit/test_gw_chat.c pins the bytes. */
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

static int append_cb(const char *buf, size_t n, void *ud) {
    return cm_buf_append(ud, buf, n) ? -1 : 0;
}

/* Appends j dumped compactly (borrowed). On failure out keeps its length. */
static int dump_json(cm_buf *out, const json_t *j) {
    size_t at = out->len;
    if (json_dump_callback(j, append_cb, out, JSON_COMPACT)) {
        out->len = at;
        return -ENOMEM;
    }
    return 0;
}

/* Appends j dumped compactly and releases it; j NULL (a failed build) is -ENOMEM. */
static int dump_into(cm_buf *out, json_t *j) {
    if (!j)
        return -ENOMEM;
    int rc = dump_json(out, j);
    json_decref(j);
    return rc;
}

/* ---- UTF-8 and JSON strings ---- */

static const char REPLACEMENT[] = "\xEF\xBF\xBD"; // U+FFFD

/* Length (1..4) of the valid UTF-8 sequence that starts u[0..n) (n >= 1), or 0
 * when none does (a bad lead or continuation byte, a cut, overlong or surrogate
 * sequence, past U+10FFFF): the one check of what gets replaced by U+FFFD, byte
 * by byte. It accepts exactly what jansson's json_stringn accepts. */
static size_t utf8_seq(const unsigned char *u, size_t n) {
    unsigned c = u[0];
    size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (k <= 1)
        return k;
    if (k > n)
        return 0;
    uint32_t cp = k == 2 ? c & 0x1F : k == 3 ? c & 0x0F : c & 0x07;
    for (size_t m = 1; m < k; m++) {
        if ((u[m] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (u[m] & 0x3F);
    }
    if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return k;
}

json_t *gw_jstr(const char *s, size_t n) {
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    cm_buf b = CM_BUF_INIT;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(u + i, n - i);
        if (cm_buf_append(&b, k ? s + i : REPLACEMENT, k ? k : 3))
            break;
        i += k ? k : 1;
    }
    j = json_stringn(b.data ? (const char *)b.data : "", b.len);
    cm_buf_free(&b);
    return j;
}

/* Appends s[0..n) as a JSON string, escaped as jansson's compact dump escapes a
 * string: \" and \\, \b \f \n \r \t, \u00XX (upper-case hex) for the other
 * control characters, everything else raw ('/', DEL, UTF-8); a byte that starts no
 * valid sequence becomes U+FFFD, as gw_jstr makes it. 0 or -ENOMEM (out then
 * keeps its length). */
static int put_str(cm_buf *out, const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    if (n > (SIZE_MAX - 2) / 6 || cm_buf_reserve(out, 6 * n + 2)) // \u00XX: the longest a byte can grow
        return -ENOMEM;
    const unsigned char *u = (const unsigned char *)s;
    uint8_t *w = out->data + out->len;
    *w++ = '"';
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        if (c >= 0x80) {
            size_t k = utf8_seq(u + i, n - i);
            memcpy(w, k ? s + i : REPLACEMENT, k ? k : 3);
            w += k ? k : 3;
            i += k ? k : 1;
            continue;
        }
        i++;
        if (c >= 0x20 && c != '"' && c != '\\') {
            *w++ = (uint8_t)c;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '\b': *w++ = 'b'; break;
        case '\f': *w++ = 'f'; break;
        case '\n': *w++ = 'n'; break;
        case '\r': *w++ = 'r'; break;
        case '\t': *w++ = 't'; break;
        default:
            memcpy(w, "u00", 3);
            w[3] = (uint8_t)hex[c >> 4];
            w[4] = (uint8_t)hex[c & 15];
            w += 5;
        }
    }
    *w++ = '"';
    out->len = (size_t)(w - out->data);
    return 0;
}

/* NUL-terminated s as a JSON string, or null when s is NULL. */
static int put_cstr(cm_buf *out, const char *s) {
    return s ? put_str(out, s, strlen(s)) : cm_buf_append(out, "null", 4);
}

/* Appends v in decimal, as jansson writes a json_integer. */
static int put_int(cm_buf *out, long long v) {
    char d[24], *p = d + sizeof d;
    unsigned long long m = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do
        *--p = (char)('0' + m % 10);
    while (m /= 10);
    if (v < 0)
        *--p = '-';
    return cm_buf_append(out, p, (size_t)(d + sizeof d - p));
}

#define PUT(out, lit) cm_buf_append((out), (lit), sizeof(lit) - 1)

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

/* The function object of a call delta: {name?, arguments}. Nonzero on failure. */
static int put_function(cm_buf *out, const gw_chunk *k) {
    if (PUT(out, "{"))
        return -ENOMEM;
    if (k->call_name && (PUT(out, "\"name\":") || put_cstr(out, k->call_name) || PUT(out, ",")))
        return -ENOMEM;
    return PUT(out, "\"arguments\":") || put_str(out, k->text ? k->text : "", k->text ? k->len : 0) ||
           PUT(out, "}");
}

/* A chat chunk's delta object: {role?, function_call | tool_calls | content?}.
 * Nonzero on failure. */
static int put_delta(cm_buf *out, const gw_completion *c, const gw_chunk *k) {
    if (PUT(out, "{") || (k->role && PUT(out, "\"role\":\"assistant\"")))
        return -ENOMEM;
    if ((k->call || k->text) && k->role && PUT(out, ","))
        return -ENOMEM;
    if (k->call && c->functions) {
        if (PUT(out, "\"function_call\":") || put_function(out, k))
            return -ENOMEM;
    } else if (k->call) {
        if (PUT(out, "\"tool_calls\":[{\"index\":") || put_int(out, (long long)(k->call - 1)))
            return -ENOMEM;
        if (k->call_id && (PUT(out, ",\"id\":") || put_cstr(out, k->call_id) || PUT(out, ",\"type\":\"function\"")))
            return -ENOMEM;
        if (PUT(out, ",\"function\":") || put_function(out, k) || PUT(out, "}]"))
            return -ENOMEM;
    } else if (k->text) {
        if (PUT(out, "\"content\":") || put_str(out, k->text, k->len))
            return -ENOMEM;
    }
    return PUT(out, "}");
}

/* Written field by field in the key order of the jansson tree it replaced:
 * {id, object, created, model, system_fingerprint, choices: [{index, delta | text,
 * index; logprobs, finish_reason}], usage?}. Only logprobs go through jansson. */
int gw_render_chunk(cm_buf *out, const gw_completion *c, const gw_chunk *k) {
    size_t at = out->len;
    if (PUT(out, "data: {\"id\":") || put_cstr(out, c->id) || PUT(out, ",\"object\":") ||
        (c->legacy ? PUT(out, "\"text_completion\"") : PUT(out, "\"chat.completion.chunk\"")) ||
        PUT(out, ",\"created\":") || put_int(out, c->created) || PUT(out, ",\"model\":") ||
        put_cstr(out, c->model) || PUT(out, ",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{"))
        goto fail;
    if (c->legacy) {
        if (PUT(out, "\"text\":") || put_str(out, k->text ? k->text : "", k->text ? k->len : 0) ||
            PUT(out, ",\"index\":") || put_int(out, k->index))
            goto fail;
    } else if (PUT(out, "\"index\":") || put_int(out, k->index) || PUT(out, ",\"delta\":") ||
               put_delta(out, c, k)) {
        goto fail;
    }
    if (PUT(out, ",\"logprobs\":"))
        goto fail;
    if (k->lp && k->n_lp) {
        json_t *lp = NULL;
        size_t off = k->text_off;
        int rc = gw_logprobs_add(&lp, c->legacy, k->lp, k->n_lp, &off);
        rc = rc ? rc : dump_json(out, lp);
        json_decref(lp);
        if (rc)
            goto fail;
    } else if (PUT(out, "null")) {
        goto fail;
    }
    const char *fin = k->finish ? gw_finish_name(c, k->finish) : NULL;
    if (PUT(out, ",\"finish_reason\":") || (fin ? put_cstr(out, fin) : PUT(out, "null")) || PUT(out, "}]") ||
        (k->with_usage_null && PUT(out, ",\"usage\":null")) || PUT(out, "}\n\n"))
        goto fail;
    return 0;
fail:
    out->len = at;
    return -ENOMEM;
}

int gw_render_usage_chunk(cm_buf *out, const gw_completion *c, const gw_usage *u) {
    json_t *j = head_json(c, 1);
    json_object_set_new(j, "choices", json_array());
    json_object_set_new(j, "usage", usage_json(u));
    return sse(out, j);
}
