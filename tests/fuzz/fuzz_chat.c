/* libFuzzer target for the request parsers (chat and legacy completions; every
 * input goes through both): any byte string must parse to a request or to an
 * error, never crash, leak or read out of bounds.
 *
 * On success every string the request hands to the worker is read in full (so
 * ASAN sees a dangling or short one) and the request is freed. On failure the
 * error must carry an HTTP status in [400, 599] and render to a non-empty JSON
 * object {"error":{"message": string, "type": string, "param": string|null,
 * "code": string|null}}, which is OpenAI's error shape. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw_chat.h"

static volatile unsigned char sink;

static void touch(const proto_str *s) {
    if (s->len && !s->p)
        abort();
    unsigned char x = 0;
    for (uint32_t i = 0; i < s->len; i++)
        x ^= (unsigned char)s->p[i];
    sink ^= x;
}

static void check_request(const gw_chat_req *req) {
    const proto_submit *s = &req->submit;
    if (req->legacy ? s->n_prompts == 0 || s->n_msgs || req->n_choices != (int)(s->n * s->n_prompts)
                    : s->n_msgs == 0 || !s->msgs || req->n_choices != (int)s->n)
        abort();
    for (uint32_t i = 0; i < s->n_prompts; i++) {
        touch(&s->prompts[i].text);
        for (uint32_t t = 0; t < s->prompts[i].n_tokens; t++)
            if (s->prompts[i].tokens[t] < 0)
                abort();
    }
    for (uint32_t i = 0; i < s->n_bias; i++)
        if (!(s->bias[i].bias >= -100 && s->bias[i].bias <= 100) || s->bias[i].token < 0)
            abort();
    if (s->n < 1 || s->n > PROTO_MAX_N || s->top_logprobs > PROTO_MAX_TOP_LOGPROBS)
        abort();
    for (uint32_t i = 0; i < s->n_msgs; i++) {
        touch(&s->msgs[i].role);
        touch(&s->msgs[i].content);
        touch(&s->msgs[i].name);
        touch(&s->msgs[i].tool_call_id);
        for (uint32_t c = 0; c < s->msgs[i].n_calls; c++) {
            touch(&s->msgs[i].calls[c].id);
            if (s->msgs[i].calls[c].name.len < 1 || s->msgs[i].calls[c].arguments.len < 1)
                abort();
            touch(&s->msgs[i].calls[c].name);
            touch(&s->msgs[i].calls[c].arguments);
        }
    }
    if (s->n_stop && !s->stop)
        abort();
    for (uint32_t i = 0; i < s->n_stop; i++) {
        if (s->stop[i].len == 0)
            abort();
        touch(&s->stop[i]);
    }
    if (!(s->temperature >= 0 && s->temperature <= 2) || !(s->top_p >= 0 && s->top_p <= 1))
        abort();
    if (req->include_usage && !req->stream)
        abort();
}

static int nullable_string(const json_t *v) {
    return json_is_null(v) || json_is_string(v);
}

static void check_error(const gw_error *err) {
    if (err->status < 400 || err->status > 599)
        abort();
    cm_buf out = CM_BUF_INIT;
    if (gw_render_error(&out, err) || out.len == 0)
        abort();
    json_error_t jerr;
    json_t *root = json_loadb((const char *)out.data, out.len, 0, &jerr);
    if (!root)
        abort();
    json_t *e = json_object_get(root, "error");
    if (!json_is_object(root) || !json_is_object(e) || !json_is_string(json_object_get(e, "message")) ||
        json_string_length(json_object_get(e, "message")) == 0 || !json_is_string(json_object_get(e, "type")) ||
        !nullable_string(json_object_get(e, "param")) || !nullable_string(json_object_get(e, "code")))
        abort();
    json_decref(root);
    cm_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gw_chat_req req;
    gw_error err;
    memset(&err, 0, sizeof err);
    for (int legacy = 0; legacy < 2; legacy++) {
        int rc = legacy ? gw_completions_parse((const char *)data, size, &req, &err)
                        : gw_chat_parse((const char *)data, size, &req, &err);
        if (rc == 0) {
            check_request(&req);
            gw_chat_req_free(&req);
        } else {
            check_error(&err);
        }
    }
    return 0;
}
