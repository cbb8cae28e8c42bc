/* gw_tools.c: response_format and the tool-calling fields of a chat request
 * (tools, tool_choice, parallel_tool_calls, the deprecated functions and
 * function_call), checked and turned into proto_submit fields. Schemas travel
 * to the worker as JSON text: the worker compiles them into grammars and refuses
 * what it cannot enforce. See gw_parse.h for the helpers shared with gw_chat.c. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw_parse.h"

#define INVALID "invalid_request_error"

/* response_format: text, json_object, or json_schema {name, description, schema,
 * strict}. The schema travels to the worker as JSON text; the worker compiles it
 * into the grammar and refuses what it cannot enforce. */
int gw_parse_response_format(gw_chat_req *req, json_t *v, gw_error *err) {
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v)) {
        gw_error_set(err, 400, INVALID, "response_format", "invalid_type",
                     "Invalid type for 'response_format': expected an object.");
        return -1;
    }
    json_t *t = json_object_get(v, "type");
    if (gw_jeq(t, "text") || gw_jeq(t, "json_object")) {
        static const char *const keys[] = {"type", NULL};
        if (gw_only_keys(v, "response_format", keys, err))
            return -1;
        req->submit.format = gw_jeq(t, "text") ? PROTO_FORMAT_TEXT : PROTO_FORMAT_JSON_OBJECT;
        return 0;
    }
    if (!gw_jeq(t, "json_schema")) {
        gw_error_set(err, 400, INVALID, "response_format.type", "invalid_value",
                     "Invalid 'response_format.type': expected one of 'text', 'json_object', 'json_schema'.");
        return -1;
    }
    static const char *const keys[] = {"type", "json_schema", NULL};
    static const char *const js_keys[] = {"name", "description", "schema", "strict", NULL};
    json_t *js = json_object_get(v, "json_schema");
    if (gw_only_keys(v, "response_format", keys, err))
        return -1;
    if (!json_is_object(js)) {
        gw_error_set(err, 400, INVALID, "response_format.json_schema", js ? "invalid_type" : "missing_required_parameter",
                     "'response_format.json_schema' must be an object with a 'name' and a 'schema'.");
        return -1;
    }
    if (gw_only_keys(js, "response_format.json_schema", js_keys, err))
        return -1;
    json_t *name = json_object_get(js, "name"), *schema = json_object_get(js, "schema"),
           *desc = json_object_get(js, "description"), *strict = json_object_get(js, "strict");
    size_t nl = json_is_string(name) ? json_string_length(name) : 0;
    if (!gw_valid_name(name)) {
        gw_error_set(err, 400, INVALID, "response_format.json_schema.name",
                     name ? "invalid_value" : "missing_required_parameter",
                     "'response_format.json_schema.name' must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -.");
        return -1;
    }
    if (desc && !json_is_null(desc) && !json_is_string(desc)) {
        gw_error_set(err, 400, INVALID, "response_format.json_schema.description", "invalid_type",
                     "Invalid type for 'response_format.json_schema.description': expected a string.");
        return -1;
    }
    if (schema && !json_is_null(schema) && !json_is_object(schema)) {
        gw_error_set(err, 400, INVALID, "response_format.json_schema.schema", "invalid_type",
                     "Invalid type for 'response_format.json_schema.schema': expected an object.");
        return -1;
    }
    if (strict && !json_is_null(strict) && !json_is_boolean(strict)) {
        gw_error_set(err, 400, INVALID, "response_format.json_schema.strict", "invalid_type",
                     "Invalid type for 'response_format.json_schema.strict': expected a boolean.");
        return -1;
    }
    char *text = schema && !json_is_null(schema) ? json_dumps(schema, JSON_COMPACT | JSON_PRESERVE_ORDER)
                                                 : strdup("{}");
    if (!text || !gw_keep(req, text))
        return gw_nomem(err);
    req->submit.format = PROTO_FORMAT_JSON_SCHEMA;
    req->submit.strict = (uint8_t)json_is_true(strict);
    req->submit.schema = (proto_str){text, (uint32_t)strlen(text)};
    req->submit.schema_name = (proto_str){(char *)json_string_value(name), (uint32_t)nl};
    return 0;
}

static int tool_error(gw_error *err, const char *fmt_param, int i, const char *code, const char *msg) {
    static char param[96];
    snprintf(param, sizeof param, fmt_param, i);
    gw_error_set(err, 400, INVALID, param, code, "Invalid '%s': %s", param, msg);
    return -1;
}

/* One function definition (tools[i].function, or functions[i]). */
static int parse_function(gw_chat_req *req, json_t *fn, int i, int legacy, proto_tool *out, gw_error *err) {
    const char *at = legacy ? "functions[%d]" : "tools[%d].function";
    char where[64];
    snprintf(where, sizeof where, at, i);
    static const char *const keys[] = {"name", "description", "parameters", "strict", NULL};
    if (!json_is_object(fn))
        return tool_error(err, at, i, "invalid_type", "expected an object.");
    if (gw_only_keys(fn, where, keys, err))
        return -1;
    json_t *name = json_object_get(fn, "name"), *desc = json_object_get(fn, "description"),
           *params = json_object_get(fn, "parameters"), *strict = json_object_get(fn, "strict");
    if (!gw_valid_name(name))
        return tool_error(err, legacy ? "functions[%d].name" : "tools[%d].function.name", i, "invalid_value",
                          "a function name is 1 to 64 characters of a-z, A-Z, 0-9, _ and -.");
    if (desc && !json_is_null(desc) && !json_is_string(desc))
        return tool_error(err, legacy ? "functions[%d].description" : "tools[%d].function.description", i,
                          "invalid_type", "expected a string.");
    if (params && !json_is_null(params) && !json_is_object(params))
        return tool_error(err, legacy ? "functions[%d].parameters" : "tools[%d].function.parameters", i,
                          "invalid_type", "expected a JSON Schema object.");
    if (strict && !json_is_null(strict) && !json_is_boolean(strict))
        return tool_error(err, legacy ? "functions[%d].strict" : "tools[%d].function.strict", i, "invalid_type",
                          "expected a boolean.");
    char *text = params && !json_is_null(params) ? json_dumps(params, JSON_COMPACT | JSON_PRESERVE_ORDER)
                                                 : strdup("{\"type\":\"object\",\"properties\":{}}");
    if (!text || !gw_keep(req, text))
        return gw_nomem(err);
    out->name = (proto_str){(char *)json_string_value(name), (uint32_t)json_string_length(name)};
    out->description = json_is_string(desc) ? (proto_str){(char *)json_string_value(desc),
                                                           (uint32_t)json_string_length(desc)}
                                            : (proto_str){"", 0};
    out->parameters = (proto_str){text, (uint32_t)strlen(text)};
    out->strict = (uint8_t)json_is_true(strict);
    return 0;
}

/* tools + tool_choice + parallel_tool_calls, or the deprecated functions +
 * function_call (one call at most, answered as message.function_call). With
 * tool_choice "none" the model still sees the tools but cannot call them. */
int gw_parse_tools(gw_chat_req *req, json_t *root, gw_error *err) {
    json_t *tools = json_object_get(root, "tools"), *fns = json_object_get(root, "functions"),
           *tc = json_object_get(root, "tool_choice"), *fc = json_object_get(root, "function_call");
    tools = json_is_null(tools) ? NULL : tools;
    fns = json_is_null(fns) ? NULL : fns;
    tc = json_is_null(tc) ? NULL : tc;
    fc = json_is_null(fc) ? NULL : fc;
    if (tools && fns) {
        gw_error_set(err, 400, INVALID, "functions", "invalid_value",
                     "Use either 'tools' or the deprecated 'functions', not both.");
        return -1;
    }
    int legacy = fns != NULL;
    json_t *list = legacy ? fns : tools, *choice = legacy ? fc : tc;
    const char *lname = legacy ? "functions" : "tools", *cname = legacy ? "function_call" : "tool_choice";
    if ((legacy && tc) || (!legacy && fc)) {
        gw_error_set(err, 400, INVALID, legacy ? "tool_choice" : "function_call", "invalid_value",
                     legacy ? "'tool_choice' goes with 'tools', not with 'functions'."
                            : "'function_call' goes with 'functions', not with 'tools'.");
        return -1;
    }
    if (list && !json_is_array(list)) {
        gw_error_set(err, 400, INVALID, lname, "invalid_type", "Invalid type for '%s': expected an array.", lname);
        return -1;
    }
    if (!list || !json_array_size(list)) {
        if (choice) {
            gw_error_set(err, 400, INVALID, cname, "invalid_value", "'%s' is only allowed when '%s' are specified.",
                         cname, lname);
            return -1;
        }
        return 0;
    }
    size_t n = json_array_size(list);
    if (n > PROTO_MAX_TOOLS) {
        gw_error_set(err, 400, INVALID, lname, "array_above_max_length",
                     "Invalid '%s': at most %d functions, got %zu.", lname, PROTO_MAX_TOOLS, n);
        return -1;
    }
    proto_tool *t = calloc(n, sizeof *t);
    if (!t)
        return gw_nomem(err);
    req->tools = t;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(list, i), *fn = e;
        if (!legacy) {
            static const char *const keys[] = {"type", "function", NULL};
            char where[32];
            snprintf(where, sizeof where, "tools[%zu]", i);
            if (!json_is_object(e))
                return tool_error(err, "tools[%d]", (int)i, "invalid_type", "expected an object.");
            if (!gw_jeq(json_object_get(e, "type"), "function"))
                return tool_error(err, "tools[%d].type", (int)i, "invalid_value", "the only tool type is 'function'.");
            if (gw_only_keys(e, where, keys, err))
                return -1;
            fn = json_object_get(e, "function");
        }
        if (parse_function(req, fn, (int)i, legacy, &t[i], err))
            return -1;
        for (size_t j = 0; j < i; j++)
            if (t[j].name.len == t[i].name.len && !memcmp(t[j].name.p, t[i].name.p, t[i].name.len)) {
                gw_error_set(err, 400, INVALID, lname, "invalid_value", "Invalid '%s': the function name '%s' is "
                             "used twice.", lname, t[i].name.p);
                return -1;
            }
    }
    int mode = PROTO_TOOLS_AUTO;
    json_t *named = NULL;
    if (!choice || gw_jeq(choice, "auto"))
        mode = PROTO_TOOLS_AUTO;
    else if (gw_jeq(choice, "none"))
        mode = PROTO_TOOLS_NONE;
    else if (!legacy && gw_jeq(choice, "required"))
        mode = PROTO_TOOLS_REQUIRED;
    else if (json_is_object(choice) && (legacy || gw_jeq(json_object_get(choice, "type"), "function")))
        named = legacy ? json_object_get(choice, "name") : json_object_get(json_object_get(choice, "function"), "name");
    else {
        gw_error_set(err, 400, INVALID, cname, "invalid_value",
                     legacy ? "Invalid 'function_call': expected 'none', 'auto' or {\"name\": ...}."
                            : "Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
                              "{\"type\": \"function\", \"function\": {\"name\": ...}}.");
        return -1;
    }
    if (named || (json_is_object(choice) && !named)) {
        size_t k = 0;
        while (named && k < n &&
               !(json_is_string(named) && t[k].name.len == json_string_length(named) &&
                 !memcmp(t[k].name.p, json_string_value(named), t[k].name.len)))
            k++;
        if (!named || k == n) {
            gw_error_set(err, 400, INVALID, cname, "invalid_value", "Invalid '%s': it names no function in '%s'.",
                         cname, lname);
            return -1;
        }
        mode = PROTO_TOOLS_NAMED;
        req->submit.tool_name = t[k].name;
    }
    int par = !legacy;
    if (gw_get_bool(root, "parallel_tool_calls", &par, err))
        return -1;
    req->legacy_functions = legacy;
    req->submit.tool_choice = (uint8_t)mode;
    req->submit.parallel_calls = (uint8_t)(par && !legacy);
    req->submit.tools = t;
    req->submit.n_tools = (uint32_t)n;
    return 0;
}

