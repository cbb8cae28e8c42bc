/* gw_chat.c: request validation and response rendering (see gw_chat.h).
 *
 * Policy: every field of CreateChatCompletionRequest / CreateCompletionRequest is
 * either honoured or refused by name with a 400; nothing is silently dropped.
 * Fields the worker cannot honour yet (suffix, echo with logprobs) are refused.
 * response_format and the tool-calling fields are parsed in gw_tools.c. Tool
 * calls in the history (assistant tool_calls, tool results) are passed on for
 * the chat template. Unknown fields are refused too, as OpenAI does
 * ("Unrecognized request argument supplied"). Parameter names built for
 * an error (messages[3].content) live in static buffers: the gateway is single-
 * threaded and renders an error before it parses the next request. */
#include "gateway/gw_chat.h"
#include "gateway/gw_parse.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INVALID "invalid_request_error"

int gw_nomem(gw_error *err) {
    gw_error_set(err, 500, "server_error", NULL, NULL, "Out of memory.");
    return -1;
}

/* ---- parsing ---- */

/* 1 when v is the JSON string lit exactly (length-aware: "user\u0000x" is not "user"). */
int gw_jeq(const json_t *v, const char *lit) {
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

int gw_get_bool(json_t *root, const char *key, int *out, gw_error *err) {
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

char *gw_keep(gw_chat_req *req, char *s) {
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
        if (!gw_jeq(type, "text")) {
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
    out->p = gw_keep(req, (char *)joined.data);
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

/* A function name as OpenAI allows it: [A-Za-z0-9_-]{1,64} (so it needs no
 * escaping when a template writes it into JSON). */
int gw_valid_name(const json_t *v) {
    size_t n = json_is_string(v) ? json_string_length(v) : 0;
    const char *s = json_string_value(v);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

/* The JSON text a template shows for arguments: the arguments re-serialized when
 * they are JSON, else the string as a JSON string (models do emit broken JSON). */
static int call_arguments(gw_chat_req *req, const json_t *args, proto_str *out, gw_error *err) {
    json_t *parsed = json_loadb(json_string_value(args), json_string_length(args), JSON_DECODE_ANY, NULL);
    char *s = json_dumps(parsed ? parsed : args, JSON_COMPACT | JSON_ENCODE_ANY);
    if (parsed)
        json_decref(parsed);
    if (!s || !gw_keep(req, s))
        return gw_nomem(err);
    out->p = s;
    out->len = (uint32_t)strlen(s);
    return 0;
}

/* One call {id, type: "function", function: {name, arguments}}, or with `legacy`
 * a function_call {name, arguments}. where names it in errors. */
static int parse_call(gw_chat_req *req, json_t *c, int legacy, const char *where, proto_call *out, gw_error *err) {
    static char param[96];
    json_t *fn = c, *id = NULL;
    if (!json_is_object(c))
        goto bad;
    if (!legacy) {
        id = json_object_get(c, "id");
        fn = json_object_get(c, "function");
        if (!json_is_string(id) || !gw_jeq(json_object_get(c, "type"), "function") || !json_is_object(fn))
            goto bad;
        out->id.p = (char *)json_string_value(id);
        out->id.len = (uint32_t)json_string_length(id);
    } else {
        out->id.p = "";
    }
    json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
    if (!gw_valid_name(name) || !json_is_string(args))
        goto bad;
    out->name.p = (char *)json_string_value(name);
    out->name.len = (uint32_t)json_string_length(name);
    return call_arguments(req, args, &out->arguments, err);
bad:
    snprintf(param, sizeof param, "%s", where);
    gw_error_set(err, 400, INVALID, param, "invalid_value",
                 "Invalid '%s': a tool call is {\"id\": string, \"type\": \"function\", \"function\": {\"name\": "
                 "[A-Za-z0-9_-]{1,64}, \"arguments\": string}}.",
                 param);
    return -1;
}

/* name, an assistant's tool_calls (or legacy function_call), a tool result's
 * tool_call_id (which must answer a call made earlier in the conversation). */
static int parse_tool_fields(gw_chat_req *req, json_t *msgs, int i, proto_msg *pm, gw_error *err) {
    static char param[96];
    json_t *m = json_array_get(msgs, (size_t)i);
    json_t *name = json_object_get(m, "name"), *calls = json_object_get(m, "tool_calls"),
           *fc = json_object_get(m, "function_call"), *tcid = json_object_get(m, "tool_call_id");
    int assistant = gw_jeq(json_object_get(m, "role"), "assistant"), tool = gw_jeq(json_object_get(m, "role"), "tool");
    if (name && !json_is_null(name)) {
        if (!json_is_string(name)) {
            snprintf(param, sizeof param, "messages[%d].name", i);
            gw_error_set(err, 400, INVALID, param, "invalid_type", "Invalid type for '%s': expected a string.", param);
            return -1;
        }
        pm->name.p = (char *)json_string_value(name);
        pm->name.len = (uint32_t)json_string_length(name);
    }
    if ((calls && !json_is_null(calls)) || (fc && !json_is_null(fc))) {
        int legacy = !calls || json_is_null(calls);
        snprintf(param, sizeof param, "messages[%d].%s", i, legacy ? "function_call" : "tool_calls");
        if (!assistant || (!legacy && (!json_is_array(calls) || !json_array_size(calls))) ||
            (!legacy && fc && !json_is_null(fc))) {
            gw_error_set(err, 400, INVALID, param, "invalid_value",
                         "Invalid '%s': only assistant messages carry tool calls, as a non-empty array (or one "
                         "function_call).",
                         param);
            return -1;
        }
        size_t n = legacy ? 1 : json_array_size(calls);
        if (n > PROTO_MAX_CALLS) {
            gw_error_set(err, 400, INVALID, param, "array_above_max_length",
                         "Invalid '%s': at most %d tool calls per message.", param, PROTO_MAX_CALLS);
            return -1;
        }
        pm->calls = calloc(n, sizeof *pm->calls);
        if (!pm->calls)
            return gw_nomem(err);
        pm->n_calls = (uint32_t)n;
        for (size_t c = 0; c < n; c++) {
            char where[64];
            if (legacy)
                snprintf(where, sizeof where, "messages[%d].function_call", i);
            else
                snprintf(where, sizeof where, "messages[%d].tool_calls[%zu]", i, c);
            if (parse_call(req, legacy ? fc : json_array_get(calls, c), legacy, where, &pm->calls[c], err))
                return -1;
        }
    }
    if (!tool)
        return 0;
    snprintf(param, sizeof param, "messages[%d].tool_call_id", i);
    if (!json_is_string(tcid)) {
        gw_error_set(err, 400, INVALID, param, tcid ? "invalid_type" : "missing_required_parameter",
                     "Missing or invalid '%s': a tool message answers a tool call by its id.", param);
        return -1;
    }
    for (int k = i - 1; k >= 0; k--) {
        const proto_msg *prev = &req->submit.msgs[k];
        for (uint32_t c = 0; c < prev->n_calls; c++)
            if (prev->calls[c].id.len == json_string_length(tcid) &&
                !memcmp(prev->calls[c].id.p, json_string_value(tcid), prev->calls[c].id.len)) {
                pm->tool_call_id.p = (char *)json_string_value(tcid);
                pm->tool_call_id.len = (uint32_t)json_string_length(tcid);
                return 0;
            }
    }
    gw_error_set(err, 400, INVALID, param, "invalid_value",
                 "Invalid '%s': messages with role 'tool' must be a response to a preceding message with "
                 "'tool_calls' that has this id.",
                 param);
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
        if (!r || !(gw_jeq(role, "system") || gw_jeq(role, "developer") || gw_jeq(role, "user") || gw_jeq(role, "assistant") ||
                    gw_jeq(role, "tool"))) {
            snprintf(param, sizeof param, "messages[%zu].role", i);
            gw_error_set(err, 400, INVALID, param, role ? "invalid_value" : "missing_required_parameter",
                         "Invalid '%s': expected one of 'system', 'developer', 'user', 'assistant', 'tool'.", param);
            return -1;
        }
        pm[i].role.p = (char *)r;
        pm[i].role.len = (uint32_t)strlen(r);
        if (parse_content(req, m, (int)i, &pm[i].content, err) || parse_tool_fields(req, msgs, (int)i, &pm[i], err))
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

static const char *const chat_fields[] = {
    "model", "messages", "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens", "stop", "seed", "n",
    "stream", "stream_options", "user", "metadata", "store", "logprobs", "top_logprobs", "presence_penalty",
    "frequency_penalty", "logit_bias", "parallel_tool_calls", "service_tier", "response_format", "tool_choice",
    "tools", "functions", "function_call", NULL,
};

static const char *const legacy_fields[] = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "top_k",
    "min_p", "user", NULL,
};

int gw_only_keys(json_t *obj, const char *where, const char *const *keys, gw_error *err) {
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        int ok = 0;
        for (int i = 0; keys[i] && !ok; i++)
            ok = !strcmp(k, keys[i]);
        if (ok)
            continue;
        static char param[160];
        if (!where) {
            snprintf(param, sizeof param, "%.63s", k);
            gw_error_set(err, 400, INVALID, param, "unknown_parameter", "Unrecognized request argument supplied: %s",
                         k);
        } else {
            snprintf(param, sizeof param, "%s.%.64s", where, k);
            gw_error_set(err, 400, INVALID, param, "unknown_parameter", "Unrecognized argument in '%s': %.64s",
                         where, k);
        }
        return -1;
    }
    return 0;
}

/* logit_bias: {"token id": bias in [-100, 100]}. Ids are checked against the
 * vocabulary by the worker. */
static int parse_logit_bias(gw_chat_req *req, json_t *root, gw_error *err) {
    json_t *v = json_object_get(root, "logit_bias");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v)) {
        gw_error_set(err, 400, INVALID, "logit_bias", "invalid_type",
                     "Invalid type for 'logit_bias': expected an object mapping token ids to numbers.");
        return -1;
    }
    size_t n = json_object_size(v);
    if (n > PROTO_MAX_BIAS) {
        gw_error_set(err, 400, INVALID, "logit_bias", "invalid_value",
                     "Invalid 'logit_bias': at most %d entries are allowed.", PROTO_MAX_BIAS);
        return -1;
    }
    if (!n)
        return 0;
    proto_bias *b = calloc(n, sizeof *b);
    if (!b)
        return gw_nomem(err);
    req->submit.bias = b;
    const char *k;
    json_t *val;
    json_object_foreach(v, k, val) {
        char *end;
        errno = 0;
        long long id = strtoll(k, &end, 10);
        if (errno || end == k || *end || id < 0 || id > INT32_MAX) {
            gw_error_set(err, 400, INVALID, "logit_bias", "invalid_value",
                         "Invalid 'logit_bias': '%.64s' is not a token id.", k);
            return -1;
        }
        if (!is_num(val) || json_number_value(val) < -100 || json_number_value(val) > 100) {
            gw_error_set(err, 400, INVALID, "logit_bias", "invalid_value",
                         "Invalid 'logit_bias': the bias of token %lld must be a number in [-100, 100].", id);
            return -1;
        }
        b[req->submit.n_bias++] = (proto_bias){(int32_t)id, (float)json_number_value(val)};
    }
    return 0;
}

/* The fields both endpoints share: sampling, n, penalties, bias, stop, stream. */
static int parse_common(gw_chat_req *req, json_t *root, long long max_tokens, gw_error *err) {
    proto_submit *s = &req->submit;
    double temp = 1, top_p = 1, min_p = 0, pres = 0, freq = 0;
    long long top_k = 0, seed = 0, n = 1;
    if (get_number(root, "temperature", 0, 2, &temp, err) || get_number(root, "top_p", 0, 1, &top_p, err) ||
        get_number(root, "min_p", 0, 1, &min_p, err) || get_number(root, "presence_penalty", -2, 2, &pres, err) ||
        get_number(root, "frequency_penalty", -2, 2, &freq, err) ||
        get_integer(root, "max_tokens", 1, INT32_MAX, &max_tokens, err) ||
        get_integer(root, "top_k", 0, INT32_MAX, &top_k, err) || get_integer(root, "n", 1, PROTO_MAX_N, &n, err) ||
        get_integer(root, "seed", INT64_MIN, INT64_MAX, &seed, err) || gw_get_bool(root, "stream", &req->stream, err) ||
        parse_stop(req, root, err) || parse_logit_bias(req, root, err))
        return -1;
    s->temperature = (float)temp;
    s->top_p = (float)top_p;
    s->top_k = (int32_t)top_k;
    s->min_p = (float)min_p;
    s->presence_penalty = (float)pres;
    s->frequency_penalty = (float)freq;
    s->n = (uint32_t)n;
    s->max_tokens = (int32_t)max_tokens;
    json_t *sv = json_object_get(root, "seed");
    s->has_seed = sv && !json_is_null(sv);
    s->seed = (uint64_t)seed;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!req->stream) {
            gw_error_set(err, 400, INVALID, "stream_options", "invalid_value",
                         "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
            return -1;
        }
        if (!json_is_object(so)) {
            gw_error_set(err, 400, INVALID, "stream_options", "invalid_type",
                         "Invalid type for 'stream_options': expected an object.");
            return -1;
        }
        if (gw_get_bool(so, "include_usage", &req->include_usage, err)) {
            err->param = "stream_options.include_usage";
            return -1;
        }
    }
    return 0;
}

/* Chat-only fields besides messages. */
static int parse_chat_fields(gw_chat_req *req, json_t *root, gw_error *err) {
    json_t *v;
    long long mct = -1, top = 0;
    int lp = 0;
    if (get_integer(root, "max_completion_tokens", 1, INT32_MAX, &mct, err) || gw_get_bool(root, "logprobs", &lp, err) ||
        get_integer(root, "top_logprobs", 0, PROTO_MAX_TOP_LOGPROBS, &top, err))
        return -1;
    if (mct > 0)
        req->submit.max_tokens = (int32_t)mct;
    if (!lp && (v = json_object_get(root, "top_logprobs")) && !json_is_null(v)) {
        gw_error_set(err, 400, INVALID, "top_logprobs", "invalid_value",
                     "'top_logprobs' requires 'logprobs' to be true.");
        return -1;
    }
    req->submit.logprobs = (uint8_t)lp;
    req->submit.top_logprobs = (uint8_t)top;
    if (gw_parse_response_format(req, json_object_get(root, "response_format"), err) || gw_parse_tools(req, root, err))
        return -1;
    if (req->submit.tool_choice != PROTO_TOOLS_NONE && lp) {
        gw_error_set(err, 400, INVALID, "logprobs", "unsupported_parameter",
                     "'logprobs' together with tool calling is not supported by this server yet.");
        return -1;
    }
    if (req->submit.n_tools && req->submit.format != PROTO_FORMAT_TEXT) {
        gw_error_set(err, 400, INVALID, "response_format", "unsupported_parameter",
                     "A structured 'response_format' together with tool calling is not supported by this server "
                     "yet.");
        return -1;
    }
    return 0;
}

/* Parses the body into a JSON object and takes `model` (a string; the caller
 * resolves it). */
static int begin(const char *body, size_t len, gw_chat_req *req, gw_error *err) {
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
        return -1;
    }
    json_t *model = json_object_get(root, "model");
    if (!model) {
        gw_error_set(err, 400, INVALID, "model", "missing_required_parameter", "Missing required parameter: 'model'.");
        return -1;
    }
    if (!json_is_string(model)) {
        gw_error_set(err, 400, INVALID, "model", "invalid_type", "Invalid type for 'model': expected a string.");
        return -1;
    }
    req->model = json_string_value(model);
    req->model_len = json_string_length(model);
    return 0;
}

int gw_chat_parse(const char *body, size_t len, gw_chat_req *req, gw_error *err) {
    if (begin(body, len, req, err))
        goto fail;
    json_t *root = req->json;
    if (parse_messages(req, root, err) || gw_only_keys(root, NULL, chat_fields, err) ||
        parse_common(req, root, -1, err) || parse_chat_fields(req, root, err))
        goto fail;
    req->n_choices = (int)req->submit.n;
    return 0;
fail:
    gw_chat_req_free(req);
    return -1;
}

/* prompt: a string, an array of strings, an array of token ids, or an array of
 * arrays of token ids. */
static int parse_prompt(gw_chat_req *req, json_t *root, gw_error *err) {
    static char param[48];
    json_t *v = json_object_get(root, "prompt");
    if (!v) {
        gw_error_set(err, 400, INVALID, "prompt", "missing_required_parameter",
                     "Missing required parameter: 'prompt'.");
        return -1;
    }
    size_t n = 1;
    int flat_ids = json_is_array(v) && json_array_size(v) && json_is_integer(json_array_get(v, 0));
    int many = json_is_array(v) && !flat_ids; // an array of prompts
    if (many) {
        n = json_array_size(v);
        if (n == 0 || n > PROTO_MAX_PROMPTS) {
            gw_error_set(err, 400, INVALID, "prompt", "invalid_value",
                         "Invalid 'prompt': expected between 1 and %d prompts.", PROTO_MAX_PROMPTS);
            return -1;
        }
    } else if (!json_is_string(v) && !flat_ids) {
        gw_error_set(err, 400, INVALID, "prompt", "invalid_type",
                     "Invalid type for 'prompt': expected a string, an array of strings, an array of token ids, "
                     "or an array of arrays of token ids.");
        return -1;
    }
    proto_prompt *pr = calloc(n, sizeof *pr);
    if (!pr)
        return gw_nomem(err);
    req->submit.prompts = pr;
    req->submit.n_prompts = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        json_t *p = many ? json_array_get(v, i) : v;
        if (many)
            snprintf(param, sizeof param, "prompt[%zu]", i);
        else
            snprintf(param, sizeof param, "prompt");
        if (json_is_string(p)) {
            pr[i].text.p = (char *)json_string_value(p);
            pr[i].text.len = (uint32_t)json_string_length(p);
            continue;
        }
        size_t k = json_is_array(p) ? json_array_size(p) : 0;
        if (!json_is_array(p) || k == 0 || k > PROTO_MAX_PROMPT_TOKENS) {
            gw_error_set(err, 400, INVALID, param, "invalid_type",
                         "Invalid '%s': expected a string or a non-empty array of token ids.", param);
            return -1;
        }
        pr[i].tokens = malloc(k * sizeof *pr[i].tokens);
        if (!pr[i].tokens)
            return gw_nomem(err);
        pr[i].n_tokens = (uint32_t)k;
        for (size_t t = 0; t < k; t++) {
            json_t *id = json_array_get(p, t);
            if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT32_MAX) {
                gw_error_set(err, 400, INVALID, param, "invalid_value",
                             "Invalid '%s': element %zu is not a token id.", param, t);
                return -1;
            }
            pr[i].tokens[t] = (int32_t)json_integer_value(id);
        }
    }
    return 0;
}

int gw_completions_parse(const char *body, size_t len, gw_chat_req *req, gw_error *err) {
    if (begin(body, len, req, err))
        goto fail;
    json_t *root = req->json, *v;
    req->legacy = 1;
    long long lp = -1, best_of = 0;
    int echo = 0;
    if (parse_prompt(req, root, err) || gw_only_keys(root, NULL, legacy_fields, err) ||
        parse_common(req, root, 16, err) || get_integer(root, "logprobs", 0, 5, &lp, err) ||
        gw_get_bool(root, "echo", &echo, err) || get_integer(root, "best_of", 1, PROTO_MAX_N, &best_of, err))
        goto fail;
    req->submit.logprobs = lp >= 0;
    req->submit.top_logprobs = (uint8_t)(lp > 0 ? lp : 0);
    req->submit.echo = (uint8_t)echo;
    if (best_of && best_of != (long long)req->submit.n) {
        gw_error_set(err, 400, INVALID, "best_of", "unsupported_value",
                     "Only best_of equal to n is supported by this server (every candidate is returned).");
        goto fail;
    }
    if (echo && lp >= 0) {
        gw_error_set(err, 400, INVALID, "echo", "unsupported_value",
                     "echo together with logprobs (prompt logprobs) is not supported by this server yet.");
        goto fail;
    }
    if ((v = json_object_get(root, "suffix")) && !json_is_null(v) && !gw_jeq(v, "")) {
        gw_error_set(err, 400, INVALID, "suffix", "unsupported_parameter",
                     "'suffix' (insertion) is not supported by this model.");
        goto fail;
    }
    req->n_choices = (int)(req->submit.n * req->submit.n_prompts);
    return 0;
fail:
    gw_chat_req_free(req);
    return -1;
}

void gw_chat_req_free(gw_chat_req *req) {
    for (uint32_t i = 0; req->submit.msgs && i < req->submit.n_msgs; i++)
        free(req->submit.msgs[i].calls);
    free(req->submit.msgs);
    free(req->submit.stop);
    free(req->submit.bias);
    for (uint32_t i = 0; i < req->submit.n_prompts; i++)
        free(req->submit.prompts[i].tokens);
    free(req->submit.prompts);
    for (int i = 0; i < req->n_owned; i++)
        free(req->owned[i]);
    free(req->owned);
    free(req->tools);
    if (req->json)
        json_decref(req->json);
    memset(req, 0, sizeof *req);
}
