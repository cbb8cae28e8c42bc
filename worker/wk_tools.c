/* wk_tools: see wk_tools.h. */
#include "worker/wk_tools.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cm_buf.h"
#include "worker/wk_jsonschema.h"

/* The markup around one call, per family. */
typedef struct markup {
    const char *open;  // up to the name
    const char *mid;   // between the name and ARGS
    const char *close; // after ARGS
    const char *sep;   // between two calls (NULL: one call only)
    const char *text_trigger; // auto: the text that turns free text into a call
} markup;

static const markup chatml = {"<tool_call>\n{\"name\": \"", "\", \"arguments\": ", "}\n</tool_call>", "\n",
                              "<tool_call>"};
static const markup llama3 = {"{\"name\": \"", "\", \"parameters\": ", "}", NULL, NULL};

static const markup *markup_of(wk_template_family f) {
    return f == WK_TEMPLATE_LLAMA3 ? &llama3 : &chatml;
}

/* ------------------------------------------------------------------ prompt */

char *wk_tools_prompt(wk_template_family f, const proto_submit *sub) {
    cm_buf b = CM_BUF_INIT;
    int llama = f == WK_TEMPLATE_LLAMA3, rc = 0;
    if (llama)
        rc = cm_buf_printf(&b, "Given the following functions, please respond with a JSON for a function call with "
                               "its proper arguments that best answers the given prompt.\n\nRespond in the format "
                               "{\"name\": function name, \"parameters\": dictionary of argument name and its "
                               "value}. Do not use variables.\n\n");
    else
        rc = cm_buf_printf(&b, "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                               "You are provided with function signatures within <tools></tools> XML tags:\n"
                               "<tools>");
    for (uint32_t i = 0; !rc && i < sub->n_tools; i++) {
        const proto_tool *t = &sub->tools[i];
        json_t *params = json_loadb(t->parameters.p, t->parameters.len, 0, NULL);
        json_t *fn = json_pack("{s:s%}", "name", t->name.p, (size_t)t->name.len);
        if (fn && t->description.len)
            json_object_set_new(fn, "description", json_stringn(t->description.p, t->description.len));
        if (fn && params)
            json_object_set(fn, "parameters", params);
        json_t *tool = fn ? json_pack("{s:s,s:O}", "type", "function", "function", fn) : NULL;
        char *txt = tool ? json_dumps(tool, (llama ? JSON_INDENT(4) : 0) | JSON_PRESERVE_ORDER) : NULL;
        rc = txt ? cm_buf_printf(&b, llama ? "%s\n\n" : "\n%s", txt) : -ENOMEM;
        free(txt);
        json_decref(tool);
        json_decref(fn);
        json_decref(params);
    }
    if (!rc && !llama)
        rc = cm_buf_printf(&b, "\n</tools>\n\nFor each function call, return a json object with function name and "
                               "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
                               "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
    if (!rc)
        rc = cm_buf_append(&b, "", 1);
    if (rc) {
        cm_buf_free(&b);
        return NULL;
    }
    return (char *)b.data; // the buffer's storage, handed over
}

/* ----------------------------------------------------------------- grammar */

/* Free text that never contains trigger, each state accepting; completing the
 * trigger goes to `into`. Node of state k = trigger[0..k) matched. */
static void text_without(wk_grammar *g, const char *trigger, int32_t start, int32_t end, int32_t into) {
    int m = (int)strlen(trigger);
    int32_t st[32];
    for (int k = 0; k < m; k++) {
        st[k] = k ? wk_grammar_node(g) : start;
        wk_grammar_eps(g, st[k], end);
    }
    int fail[32] = {0}; // KMP failure function
    for (int k = 1, j = 0; k < m; k++) {
        while (j && trigger[k] != trigger[j])
            j = fail[j - 1];
        if (trigger[k] == trigger[j])
            j++;
        fail[k] = j;
    }
    for (int k = 0; k < m; k++) {
        int32_t to[256];
        for (int b = 0; b < 256; b++) {
            int j = k;
            while (j && (uint8_t)trigger[j] != b)
                j = fail[j - 1];
            if ((uint8_t)trigger[j] == b)
                j++;
            to[b] = j == m ? into : st[j];
        }
        for (int b = 0; b < 256;) { // runs of bytes with the same target
            int e = b;
            while (e + 1 < 256 && to[e + 1] == to[b])
                e++;
            wk_grammar_bytes(g, st[k], (uint8_t)b, (uint8_t)e, to[b]);
            b = e + 1;
        }
    }
}

int wk_tools_constrain(wk_template_family f, const proto_submit *sub) {
    return sub->n_tools && (sub->tool_choice != PROTO_TOOLS_NONE || markup_of(f)->text_trigger);
}

int wk_tools_grammar(wk_template_family f, const proto_submit *sub, wk_grammar **out, char *err, size_t errlen,
                     char *param, size_t paramlen) {
    *out = NULL;
    const markup *mk = markup_of(f);
    wk_grammar *g = wk_grammar_new();
    wk_js *c = g ? wk_js_new(g) : NULL;
    json_t **docs = calloc(sub->n_tools ? sub->n_tools : 1, sizeof *docs);
    int rc = -ENOMEM;
    if (!c || !docs)
        goto out;
    int32_t start = wk_grammar_node(g), end = wk_grammar_node(g), calls = wk_grammar_node(g),
            after = wk_grammar_node(g);
    wk_grammar_end(g, end);
    // calls: after the trigger (when there is one) each offered tool's call
    size_t skip = mk->text_trigger ? strlen(mk->text_trigger) : 0;
    int32_t body = wk_grammar_lit(g, calls, mk->open, skip);
    for (uint32_t i = 0; i < sub->n_tools; i++) {
        const proto_tool *t = &sub->tools[i];
        if (sub->tool_choice == PROTO_TOOLS_NAMED &&
            (t->name.len != sub->tool_name.len || memcmp(t->name.p, sub->tool_name.p, t->name.len)))
            continue;
        json_error_t je;
        if (!(docs[i] = json_loadb(t->parameters.p, t->parameters.len, 0, &je))) {
            snprintf(param, paramlen, "tools[%u].function.parameters", i);
            snprintf(err, errlen, "Invalid schema for function '%s': not JSON (%s).", t->name.p, je.text);
            rc = -EINVAL;
            goto out;
        }
        int32_t n = wk_grammar_lit(g, body, mk->open + skip, strlen(mk->open) - skip);
        n = wk_grammar_lit(g, n, t->name.p, t->name.len);
        n = wk_grammar_lit(g, n, mk->mid, strlen(mk->mid));
        int32_t args = wk_grammar_node(g);
        char e[512];
        if ((rc = wk_js_emit(c, docs[i], t->strict, n, args, e, sizeof e))) {
            snprintf(param, paramlen, "tools[%u].function.parameters", i);
            snprintf(err, errlen, "Invalid schema for function '%s': %s", t->name.p, e);
            goto out;
        }
        wk_grammar_eps(g, wk_grammar_lit(g, args, mk->close, strlen(mk->close)), after);
    }
    wk_grammar_eps(g, after, end);
    if (mk->sep && sub->parallel_calls && sub->tool_choice != PROTO_TOOLS_NAMED)
        wk_grammar_eps(g, wk_grammar_lit(g, after, mk->sep, strlen(mk->sep)), calls);
    if (sub->tool_choice == PROTO_TOOLS_NONE) { // the markup never completes: no way into a call
        text_without(g, mk->text_trigger, start, end, wk_grammar_node(g));
    } else if (sub->tool_choice != PROTO_TOOLS_AUTO) {
        wk_grammar_eps(g, start, calls);
    } else if (mk->text_trigger) {
        text_without(g, mk->text_trigger, start, end, body);
    } else { // text must not start like a call; a call is the whole output
        int32_t text = wk_grammar_node(g);
        wk_grammar_eps(g, start, end);
        wk_grammar_eps(g, start, calls);
        wk_grammar_bytes(g, start, 0, '{' - 1, text);
        wk_grammar_bytes(g, start, '{' + 1, 0xFF, text);
        wk_grammar_bytes(g, text, 0, 0xFF, text);
        wk_grammar_eps(g, text, end);
    }
    rc = wk_grammar_seal(g, start);
    if (rc == -E2BIG || rc == -ENOENT) {
        snprintf(param, paramlen, "tools");
        snprintf(err, errlen, rc == -E2BIG ? "The tools' schemas compile to too large a grammar."
                                           : "No call satisfies the tools' schemas.");
        rc = -EINVAL;
    }
out:
    for (uint32_t i = 0; docs && i < sub->n_tools; i++)
        json_decref(docs[i]);
    free(docs);
    wk_js_free(c);
    if (rc) {
        wk_grammar_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

/* ------------------------------------------------------------------ reader */

enum { X_TEXT, X_NAME, X_ARGS, X_AFTER };

struct wk_tcx {
    const markup *mk;
    int phase;
    int calls;
    int at_start; // nothing read yet (Llama 3: a call only starts the output)
    cm_buf hold;  // bytes read and not yet handed out
};

wk_tcx *wk_tcx_new(wk_template_family f) {
    wk_tcx *x = calloc(1, sizeof *x);
    if (x) {
        x->mk = markup_of(f);
        x->at_start = 1;
    }
    return x;
}

void wk_tcx_free(wk_tcx *x) {
    if (!x)
        return;
    cm_buf_free(&x->hold);
    free(x);
}

int wk_tcx_calls(const wk_tcx *x) {
    return x->calls;
}

/* Length of the longest suffix of p[0..n) that is a proper prefix of s. */
static size_t partial(const char *p, size_t n, const char *s) {
    size_t m = strlen(s);
    for (size_t k = m - 1 < n ? m - 1 : n; k > 0; k--)
        if (!memcmp(p + n - k, s, k))
            return k;
    return 0;
}

int wk_tcx_feed(wk_tcx *x, const char *p, size_t n, int final, wk_tcx_emit_fn emit, void *ud) {
    if (n && cm_buf_append(&x->hold, p, n))
        return -ENOMEM;
    const markup *mk = x->mk;
    for (;;) {
        const char *h = (const char *)x->hold.data;
        size_t len = x->hold.len, used = 0;
        if (!len)
            return 0;
        if (x->phase == X_TEXT || x->phase == X_AFTER) {
            size_t ol = strlen(mk->open);
            const char *at = NULL;
            if (!mk->text_trigger) { // Llama 3: a call is the whole output
                if (x->at_start && len >= ol && !memcmp(h, mk->open, ol))
                    at = h;
                else if (x->at_start && len < ol && !memcmp(h, mk->open, len) && !final)
                    return 0; // could still become a call
            } else {
                at = memmem(h, len, mk->open, ol);
            }
            x->at_start = 0;
            if (at) {
                if (x->phase == X_TEXT && at > h)
                    emit(ud, 0, NULL, h, (size_t)(at - h));
                used = (size_t)(at - h) + ol;
                x->phase = X_NAME;
            } else {
                size_t keep = final || !mk->text_trigger ? 0 : partial(h, len, mk->open);
                if (x->phase == X_TEXT && len > keep)
                    emit(ud, 0, NULL, h, len - keep);
                cm_buf_consume(&x->hold, len - keep);
                return 0;
            }
        } else if (x->phase == X_NAME) {
            size_t ml = strlen(mk->mid);
            const char *q = memchr(h, '"', len);
            if (!q || (size_t)(q - h) + ml > len) {
                if (final) // cut short by max_tokens: what there is of the name
                    cm_buf_consume(&x->hold, len);
                return 0;
            }
            char name[80];
            size_t nl = (size_t)(q - h) < sizeof name - 1 ? (size_t)(q - h) : sizeof name - 1;
            memcpy(name, h, nl);
            name[nl] = 0;
            x->calls++;
            emit(ud, (uint32_t)x->calls, name, "", 0);
            used = (size_t)(q - h) + ml;
            x->phase = X_ARGS;
        } else { // X_ARGS
            size_t cl = strlen(mk->close);
            const char *at = mk->text_trigger ? memmem(h, len, mk->close, cl) : NULL;
            if (!mk->text_trigger && final && len && h[len - 1] == '}')
                at = h + len - 1; // Llama 3: the output's last '}' closes the call
            if (at) {
                if (at > h)
                    emit(ud, (uint32_t)x->calls, NULL, h, (size_t)(at - h));
                used = (size_t)(at - h) + cl;
                x->phase = X_AFTER;
            } else {
                size_t keep = final ? 0 : mk->text_trigger ? partial(h, len, mk->close) : 1;
                keep = keep > len ? len : keep;
                if (len > keep)
                    emit(ud, (uint32_t)x->calls, NULL, h, len - keep);
                cm_buf_consume(&x->hold, len - keep);
                return 0;
            }
        }
        cm_buf_consume(&x->hold, used);
    }
}
