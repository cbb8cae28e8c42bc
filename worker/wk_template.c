/* wk_template.c: chat templates rendered straight to tokens (see wk_template.h).
 *
 * The renderer keeps a pending run of plain text (template text and message
 * content together). A markup token flushes that run through the tokenizer with
 * parse_special off and then appends the markup token's id, so the result is
 * what llama.cpp gets by partitioning the whole rendered string on special tokens,
 * except that content can never turn into markup. */
#include "worker/wk_template.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cm_buf.h"

typedef struct render {
    const wk_tok *tok;
    cm_buf text; // pending plain text
    int32_t *ids;
    int n, cap;
    int rc;
} render;

static int push_ids(render *r, const int32_t *ids, int n) {
    if (r->n + n > r->cap) {
        int cap = r->cap ? r->cap : 256;
        while (cap < r->n + n)
            cap *= 2;
        int32_t *p = realloc(r->ids, (size_t)cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        r->ids = p;
        r->cap = cap;
    }
    memcpy(r->ids + r->n, ids, (size_t)n * sizeof *ids);
    r->n += n;
    return 0;
}

/* Tokenizes the pending text (add_bos when asked) and appends the ids. */
static void flush(render *r, int add_bos) {
    if (r->rc || (!r->text.len && !add_bos))
        return;
    int need = wk_tok_encode(r->tok, (const char *)r->text.data, r->text.len, add_bos, 0, NULL, 0);
    if (need < 0) {
        r->rc = need;
        return;
    }
    int32_t *tmp = malloc(((size_t)need + 1) * sizeof *tmp);
    if (!tmp) {
        r->rc = -ENOMEM;
        return;
    }
    int got = wk_tok_encode(r->tok, (const char *)r->text.data, r->text.len, add_bos, 0, tmp, need);
    if (got < 0 || got > need)
        r->rc = got < 0 ? got : -EINVAL;
    else
        r->rc = push_ids(r, tmp, got);
    free(tmp);
    r->text.len = 0;
}

static void text(render *r, const char *s, size_t n) {
    if (!r->rc && cm_buf_append(&r->text, s, n))
        r->rc = -ENOMEM;
}

static void lit(render *r, const char *s) {
    text(r, s, strlen(s));
}

/* Appends the markup token whose text is s. */
static void markup(render *r, const char *s, char *err, size_t errlen) {
    flush(r, 0);
    if (r->rc)
        return;
    int32_t id = wk_tok_find(r->tok, s);
    if (id < 0) {
        snprintf(err, errlen, "the model's vocabulary has no %s token required by its chat template", s);
        r->rc = -EINVAL;
        return;
    }
    r->rc = push_ids(r, &id, 1);
}

/* The token whose text is s when the vocabulary has one (Qwen's <tool_call>),
 * else s as plain text. */
static void markup_or_text(render *r, const char *s) {
    int32_t id = wk_tok_find(r->tok, s);
    if (id < 0) {
        lit(r, s);
        return;
    }
    flush(r, 0);
    if (!r->rc)
        r->rc = push_ids(r, &id, 1);
}

/* {"name": N, "<key>": A}; the gateway checked that N needs no escaping and made A
 * JSON. */
static void call_json(render *r, const proto_call *c, const char *key) {
    lit(r, "{\"name\": \"");
    text(r, c->name.p, c->name.len);
    lit(r, "\", \"");
    lit(r, key);
    lit(r, "\": ");
    text(r, c->arguments.len ? c->arguments.p : "{}", c->arguments.len ? c->arguments.len : 2);
    lit(r, "}");
}

/* content, then each call tagged <tool_call> (ChatML and Gemma). */
static void content_and_calls(render *r, const wk_chat_msg *m) {
    text(r, m->content, m->content_len);
    for (int c = 0; c < m->n_calls; c++) {
        if (m->content_len || c)
            lit(r, "\n");
        markup_or_text(r, "<tool_call>");
        lit(r, "\n");
        call_json(r, &m->calls[c], "arguments");
        lit(r, "\n");
        markup_or_text(r, "</tool_call>");
    }
}

/* One tool result, tagged <tool_response>. */
static void tool_response(render *r, const wk_chat_msg *m) {
    markup_or_text(r, "<tool_response>");
    lit(r, "\n");
    text(r, m->content, m->content_len);
    lit(r, "\n");
    markup_or_text(r, "</tool_response>");
}

static int is_tool(const wk_chat_msg *m) {
    return !strcmp(m->role, "tool");
}

wk_template_family wk_template_detect(const wk_gguf *g, const char *arch) {
    const char *s;
    size_t n;
    if (!wk_gguf_get_str(g, "tokenizer.chat_template", &s, &n)) {
        if (memmem(s, n, "<start_of_turn>", 15))
            return WK_TEMPLATE_GEMMA;
        if (memmem(s, n, "<|start_header_id|>", 19))
            return WK_TEMPLATE_LLAMA3;
        if (memmem(s, n, "<|im_start|>", 12))
            return WK_TEMPLATE_CHATML;
    }
    if (arch && !strncmp(arch, "gemma", 5))
        return WK_TEMPLATE_GEMMA;
    if (arch && !strcmp(arch, "llama"))
        return WK_TEMPLATE_LLAMA3;
    return WK_TEMPLATE_CHATML;
}

const char *wk_template_name(wk_template_family f) {
    switch (f) {
    case WK_TEMPLATE_GEMMA: return "gemma";
    case WK_TEMPLATE_CHATML: return "chatml";
    case WK_TEMPLATE_LLAMA3: return "llama3";
    }
    return "unknown";
}

static int is_system(const char *role) {
    return !strcmp(role, "system") || !strcmp(role, "developer");
}

/* Gemma: no system turn; system/developer text is folded into the next user turn
 * as "{system}\n\n{user}". Assistant turns are "model"; tool results go in a user
 * turn (Gemma has no tool role). */
static void render_gemma(render *r, const wk_chat_msg *m, int n, char *err, size_t errlen) {
    cm_buf sys = CM_BUF_INIT;
    for (int i = 0; i < n && !r->rc; i++) {
        if (is_system(m[i].role)) {
            if (sys.len && cm_buf_append(&sys, "\n\n", 2))
                r->rc = -ENOMEM;
            if (cm_buf_append(&sys, m[i].content, m[i].content_len))
                r->rc = -ENOMEM;
            continue;
        }
        int model = !strcmp(m[i].role, "assistant");
        markup(r, "<start_of_turn>", err, errlen);
        lit(r, model ? "model\n" : "user\n");
        if (!model && sys.len) {
            text(r, (const char *)sys.data, sys.len);
            lit(r, "\n\n");
            sys.len = 0;
        }
        if (is_tool(&m[i])) { // consecutive results share one user turn
            for (;; i++) {
                tool_response(r, &m[i]);
                if (i + 1 >= n || !is_tool(&m[i + 1]))
                    break;
                lit(r, "\n");
            }
        } else {
            content_and_calls(r, &m[i]);
        }
        markup(r, "<end_of_turn>", err, errlen);
        lit(r, "\n");
    }
    if (sys.len && !r->rc) { // system text with no user turn after it
        markup(r, "<start_of_turn>", err, errlen);
        lit(r, "user\n");
        text(r, (const char *)sys.data, sys.len);
        markup(r, "<end_of_turn>", err, errlen);
        lit(r, "\n");
    }
    cm_buf_free(&sys);
    markup(r, "<start_of_turn>", err, errlen);
    lit(r, "model\n");
}

static void render_chatml(render *r, const wk_chat_msg *m, int n, char *err, size_t errlen) {
    for (int i = 0; i < n && !r->rc; i++) {
        markup(r, "<|im_start|>", err, errlen);
        if (is_tool(&m[i])) { // consecutive results share one user turn
            lit(r, "user");
            for (;; i++) {
                lit(r, "\n");
                tool_response(r, &m[i]);
                if (i + 1 >= n || !is_tool(&m[i + 1]))
                    break;
            }
        } else {
            lit(r, is_system(m[i].role) ? "system" : m[i].role);
            lit(r, "\n");
            content_and_calls(r, &m[i]);
        }
        markup(r, "<|im_end|>", err, errlen);
        lit(r, "\n");
    }
    markup(r, "<|im_start|>", err, errlen);
    lit(r, "assistant\n");
}

static void render_llama3(render *r, const wk_chat_msg *m, int n, char *err, size_t errlen) {
    for (int i = 0; i < n && !r->rc; i++) {
        const char *role = is_system(m[i].role) ? "system" : !strcmp(m[i].role, "tool") ? "ipython" : m[i].role;
        markup(r, "<|start_header_id|>", err, errlen);
        lit(r, role);
        markup(r, "<|end_header_id|>", err, errlen);
        lit(r, "\n\n");
        text(r, m[i].content, m[i].content_len);
        for (int c = 0; c < m[i].n_calls; c++) {
            if (m[i].content_len || c)
                lit(r, "\n");
            call_json(r, &m[i].calls[c], "parameters");
        }
        markup(r, "<|eot_id|>", err, errlen);
    }
    markup(r, "<|start_header_id|>", err, errlen);
    lit(r, "assistant");
    markup(r, "<|end_header_id|>", err, errlen);
    lit(r, "\n\n");
}

int wk_template_render(wk_template_family f, const wk_tok *t, const wk_chat_msg *msgs, int n_msgs, int32_t **out,
                       int *n_out, char *err, size_t errlen) {
    render r = {.tok = t};
    *out = NULL;
    *n_out = 0;
    for (int i = 0; i < n_msgs; i++) {
        const char *role = msgs[i].role;
        if (!is_system(role) && strcmp(role, "user") && strcmp(role, "assistant") && strcmp(role, "tool")) {
            snprintf(err, errlen, "unsupported message role '%.32s'", role);
            return -EINVAL;
        }
    }
    flush(&r, 1); // BOS, when the model adds one
    switch (f) {
    case WK_TEMPLATE_GEMMA: render_gemma(&r, msgs, n_msgs, err, errlen); break;
    case WK_TEMPLATE_CHATML: render_chatml(&r, msgs, n_msgs, err, errlen); break;
    case WK_TEMPLATE_LLAMA3: render_llama3(&r, msgs, n_msgs, err, errlen); break;
    }
    flush(&r, 0);
    cm_buf_free(&r.text);
    if (r.rc) {
        if (r.rc == -ENOMEM)
            snprintf(err, errlen, "out of memory rendering the chat template");
        free(r.ids);
        return r.rc;
    }
    *out = r.ids;
    *n_out = r.n;
    return 0;
}
