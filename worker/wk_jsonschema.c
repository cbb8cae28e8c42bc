/* wk_jsonschema: see wk_jsonschema.h.
 *
 * Design note. Every schema is emitted inline between two nodes, except $ref
 * targets and repeated array items, which become rules (called, so recursion and
 * repetition cost one node per use). Strings and numbers are in wk_jsscalar.c.
 * Strings are the product of a code-point NFA
 * (the pattern or format, or "any code point") with a length counter; each
 * code-point edge is expanded into its JSON encoding. Numbers are a digit-by-digit
 * comparison automaton against the bounds written as 20 + 20 decimal digits:
 * its state is the next digit position and whether the digits so far still equal
 * the lower / upper bound's; both signs are the magnitude automaton behind an
 * optional '-'. allOf and the siblings of anyOf/oneOf are merged into new schema
 * objects, kept alive in c->owned. */
#include "worker/wk_jsonschema.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/wk_js_int.h"

int wk_js_fail(wk_js *c, const char *fmt, ...) {
    if (!c->failed) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < c->errlen)
            snprintf(c->err + n, c->errlen - (size_t)n, " (at #%s)", c->path);
        c->failed = 1;
    }
    return -EINVAL;
}

static size_t path_push(wk_js *c, const char *a, const char *b) {
    size_t old = c->path_len;
    int n = snprintf(c->path + old, sizeof c->path - old, "/%s%s%s", a, b ? "/" : "", b ? b : "");
    c->path_len = n > 0 && old + (size_t)n < sizeof c->path ? old + (size_t)n : old;
    c->path[c->path_len] = 0;
    return old;
}

static void path_pop(wk_js *c, size_t old) {
    c->path_len = old;
    c->path[old] = 0;
}

wk_js *wk_js_new(wk_grammar *g) {
    wk_js *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->g = g;
    c->any = c->num = -1;
    c->owned = json_array();
    if (!c->owned) {
        free(c);
        return NULL;
    }
    return c;
}

void wk_js_free(wk_js *c) {
    if (!c)
        return;
    free(c->rules);
    json_decref(c->owned);
    free(c);
}

/* ---------------------------------------------------------- schema structure */

enum { T_NULL = 1, T_BOOL = 2, T_OBJ = 4, T_ARR = 8, T_STR = 16, T_NUM = 32, T_INT = 64, T_ALL = 127 };

static const char *const annotations[] = {"title",    "description", "default",  "examples",  "$schema", "$id",
                                          "$comment", "deprecated",  "readOnly", "writeOnly", NULL};
static const char *const keywords[] = {"type",      "enum",        "const",       "properties",       "required",
                                       "additionalProperties",     "items",       "prefixItems",      "minItems",
                                       "maxItems",  "minLength",   "maxLength",   "pattern",          "format",
                                       "minimum",   "maximum",     "exclusiveMinimum", "exclusiveMaximum", "anyOf",
                                       "oneOf",     "allOf",       "$ref",        "$defs",            "definitions",
                                       NULL};
static const char *const obj_kw[] = {"properties", "required", "additionalProperties", NULL};
static const char *const arr_kw[] = {"items", "prefixItems", "minItems", "maxItems", NULL};
static const char *const str_kw[] = {"minLength", "maxLength", "pattern", "format", NULL};
static const char *const num_kw[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", NULL};

static int in_list(const char *const *l, const char *k) {
    for (; *l; l++)
        if (!strcmp(*l, k))
            return 1;
    return 0;
}

static int has_any(json_t *s, const char *const *l) {
    for (; *l; l++)
        if (json_object_get(s, *l))
            return 1;
    return 0;
}

/* 1 when s constrains anything (a keyword other than annotations and $defs). */
static int constrains(json_t *s) {
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v) {
        if (!in_list(annotations, k) && strcmp(k, "$defs") && strcmp(k, "definitions"))
            return 1;
    }
    return 0;
}

static int check_keywords(wk_js *c, json_t *s) {
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v) {
        if (!strcmp(k, "uniqueItems") && json_is_false(v))
            continue; // the default: no constraint
        if (!in_list(keywords, k) && !in_list(annotations, k))
            return wk_js_fail(c, "schema keyword '%s' is not supported", k);
    }
    return 0;
}

static int type_bit(const char *t) {
    static const char *const names[] = {"null", "boolean", "object", "array", "string", "number", "integer"};
    for (int i = 0; i < 7; i++)
        if (!strcmp(names[i], t))
            return 1 << i;
    return 0;
}

static int types_of(wk_js *c, json_t *s, int *out) {
    json_t *t = json_object_get(s, "type");
    int m = 0;
    if (!t) {
        m |= has_any(s, obj_kw) ? T_OBJ : 0;
        m |= has_any(s, arr_kw) ? T_ARR : 0;
        m |= has_any(s, str_kw) ? T_STR : 0;
        m |= has_any(s, num_kw) ? T_NUM : 0;
        *out = m ? m : T_ALL;
        return 0;
    }
    if (json_is_string(t)) {
        if (!(m = type_bit(json_string_value(t))))
            return wk_js_fail(c, "unknown type '%s'", json_string_value(t));
    } else if (json_is_array(t) && json_array_size(t)) {
        size_t i;
        json_t *x;
        json_array_foreach(t, i, x) {
            int b = json_is_string(x) ? type_bit(json_string_value(x)) : 0;
            if (!b)
                return wk_js_fail(c, "'type' must name JSON types");
            m |= b;
        }
    } else {
        return wk_js_fail(c, "'type' must be a string or a non-empty array of strings");
    }
    if ((m & T_NUM) && (m & T_INT))
        m &= ~T_INT;
    *out = m;
    return 0;
}

static int value_type_bit(json_t *v) {
    switch (json_typeof(v)) {
    case JSON_NULL:
        return T_NULL;
    case JSON_TRUE:
    case JSON_FALSE:
        return T_BOOL;
    case JSON_OBJECT:
        return T_OBJ;
    case JSON_ARRAY:
        return T_ARR;
    case JSON_STRING:
        return T_STR;
    case JSON_INTEGER:
        return T_INT | T_NUM;
    default:
        return T_NUM | (json_real_value(v) == floor(json_real_value(v)) ? T_INT : 0);
    }
}

/* from --(the compact JSON text of v)--> to. */
static int emit_literal(wk_js *c, json_t *v, int32_t from, int32_t to) {
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    if (!t)
        return -ENOMEM;
    int32_t e = wk_grammar_lit(c->g, wk_js_branch(c, from), t, strlen(t));
    wk_grammar_eps(c->g, e, to);
    free(t);
    return 0;
}

/* ------------------------------------------------------------- refs, rules */

static int emit_value(wk_js *c, json_t *s, int32_t from, int32_t to);

static json_t *resolve_ref(wk_js *c, const char *ref) {
    if (ref[0] != '#') {
        wk_js_fail(c, "$ref '%s' is not supported: only references into the same schema ('#...') are", ref);
        return NULL;
    }
    json_t *cur = c->root;
    const char *p = ref + 1;
    while (*p == '/' && cur) {
        p++;
        char key[256];
        size_t n = 0;
        for (; *p && *p != '/' && n + 1 < sizeof key; p++) {
            if (*p == '~' && (p[1] == '0' || p[1] == '1')) {
                key[n++] = p[1] == '0' ? '~' : '/';
                p++;
            } else {
                key[n++] = *p;
            }
        }
        key[n] = 0;
        if (json_is_object(cur)) {
            cur = json_object_get(cur, key);
        } else if (json_is_array(cur)) {
            char *end;
            unsigned long i = strtoul(key, &end, 10);
            cur = *key && !*end ? json_array_get(cur, i) : NULL;
        } else {
            cur = NULL;
        }
    }
    if (!cur || *p) {
        wk_js_fail(c, "$ref '%s' does not resolve", ref);
        return NULL;
    }
    return cur;
}

static int32_t any_rule(wk_js *c);

/* from --(a value under s, as a called rule)--> to. */
static int emit_call(wk_js *c, json_t *s, int32_t from, int32_t to) {
    if (json_is_true(s) || (json_is_object(s) && !json_object_size(s))) {
        wk_grammar_call(c->g, from, any_rule(c), to);
        return 0;
    }
    for (int i = 0; i < c->n_rules; i++)
        if (c->rules[i].schema == s) {
            wk_grammar_call(c->g, from, c->rules[i].start, to);
            return 0;
        }
    if (c->n_rules == c->cap_rules) {
        int cap = c->cap_rules ? c->cap_rules * 2 : 16;
        rule *r = realloc(c->rules, (size_t)cap * sizeof *r);
        if (!r)
            return -ENOMEM;
        c->rules = r;
        c->cap_rules = cap;
    }
    int32_t start = wk_js_node(c), end = wk_js_node(c);
    wk_grammar_end(c->g, end);
    c->rules[c->n_rules++] = (rule){s, start};
    wk_grammar_call(c->g, from, start, to);
    return emit_value(c, s, start, end);
}

/* The any-JSON-value rule (objects and arrays call it again). */
static int32_t any_rule(wk_js *c) {
    if (c->any >= 0)
        return c->any;
    int32_t s = c->any = wk_js_node(c), e = wk_js_node(c);
    wk_grammar_end(c->g, e);
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++)
        wk_grammar_eps(c->g, wk_js_lit(c, wk_js_branch(c, s), words[i]), e);
    wk_js_string(c, NULL, wk_js_branch(c, s), e);
    wk_js_number(c, NULL, 0, wk_js_branch(c, s), e);
    // object
    int32_t o = wk_js_ws(c, wk_js_lit(c, wk_js_branch(c, s), "{")), close = wk_js_node(c), member = wk_js_node(c), after = wk_js_node(c);
    wk_grammar_bytes(c->g, close, '}', '}', e);
    wk_grammar_eps(c->g, o, close);
    wk_grammar_eps(c->g, o, member);
    wk_js_string(c, NULL, member, (o = wk_js_node(c)));
    wk_grammar_call(c->g, wk_js_ws(c, wk_js_lit(c, wk_js_ws(c, o), ":")), s, after);
    int32_t aw = wk_js_ws(c, after);
    wk_grammar_eps(c->g, aw, close);
    wk_grammar_eps(c->g, wk_js_ws(c, wk_js_lit(c, aw, ",")), member);
    // array
    int32_t a = wk_js_ws(c, wk_js_lit(c, wk_js_branch(c, s), "[")), aclose = wk_js_node(c), item = wk_js_node(c), aafter = wk_js_node(c);
    wk_grammar_bytes(c->g, aclose, ']', ']', e);
    wk_grammar_eps(c->g, a, aclose);
    wk_grammar_eps(c->g, a, item);
    wk_grammar_call(c->g, item, s, aafter);
    int32_t iw = wk_js_ws(c, aafter);
    wk_grammar_eps(c->g, iw, aclose);
    wk_grammar_eps(c->g, wk_js_ws(c, wk_js_lit(c, iw, ",")), item);
    return s;
}

/* --------------------------------------------------------------- merging */

/* s itself, or the target of s when s is only a $ref (plus annotations). */
static json_t *deref(wk_js *c, json_t *s) {
    for (int hops = 0; json_is_object(s) && json_object_get(s, "$ref") && hops < 32; hops++) {
        json_t *r = json_object_get(s, "$ref");
        if (!json_is_string(r)) {
            wk_js_fail(c, "'$ref' must be a string");
            return NULL;
        }
        const char *k;
        json_t *v;
        json_object_foreach(s, k, v) {
            if (strcmp(k, "$ref") && !in_list(annotations, k) && strcmp(k, "$defs") && strcmp(k, "definitions")) {
                wk_js_fail(c, "'%s' beside '$ref' is not supported", k);
                return NULL;
            }
        }
        if (!(s = resolve_ref(c, json_string_value(r))))
            return NULL;
    }
    return s;
}

static json_t *own(wk_js *c, json_t *v) {
    if (!v || json_array_append_new(c->owned, v))
        return NULL;
    return v;
}

static json_t *all_of2(wk_js *c, json_t *a, json_t *b) {
    return own(c, json_pack("{s:[OO]}", "allOf", a, b));
}

/* The schema valid exactly where a and b both are, for the keywords we merge;
 * NULL after wk_js_fail() when they cannot be merged. */
static json_t *merge(wk_js *c, json_t *a, json_t *b) {
    if (!(a = deref(c, a)) || !(b = deref(c, b)))
        return NULL;
    if (json_is_true(a))
        return b;
    if (json_is_true(b))
        return a;
    if (!json_is_object(a) || !json_is_object(b)) {
        wk_js_fail(c, "allOf/anyOf members must be schemas (objects or true)");
        return NULL;
    }
    json_t *r = own(c, json_copy(a));
    if (!r)
        return NULL;
    const char *k;
    json_t *vb;
    json_object_foreach(b, k, vb) {
        json_t *va = json_object_get(r, k), *m = NULL;
        if (!va || in_list(annotations, k)) {
            if (!va)
                json_object_set(r, k, vb);
            continue;
        }
        if (!strcmp(k, "properties") && json_is_object(va) && json_is_object(vb)) {
            m = own(c, json_copy(va));
            const char *pk;
            json_t *pv;
            json_object_foreach(vb, pk, pv) {
                json_t *old = json_object_get(m, pk);
                json_object_set(m, pk, old ? all_of2(c, old, pv) : pv);
            }
        } else if (!strcmp(k, "required") && json_is_array(va) && json_is_array(vb)) {
            m = own(c, json_copy(va));
            size_t i;
            json_t *x;
            json_array_foreach(vb, i, x) {
                size_t j;
                json_t *y;
                int dup = 0;
                json_array_foreach(va, j, y) dup |= json_equal(x, y);
                if (!dup)
                    json_array_append(m, x);
            }
        } else if (!strcmp(k, "type")) {
            int ta, tb;
            json_t *sa = own(c, json_pack("{sO}", "type", va)), *sb = own(c, json_pack("{sO}", "type", vb));
            if (!sa || !sb || types_of(c, sa, &ta) || types_of(c, sb, &tb))
                return NULL;
            int t = (ta & tb) | ((ta & T_NUM) && (tb & T_INT) ? T_INT : 0) | ((tb & T_NUM) && (ta & T_INT) ? T_INT : 0);
            if (!t) {
                wk_js_fail(c, "allOf requires disjoint types");
                return NULL;
            }
            m = own(c, json_array());
            static const char *const names[] = {"null", "boolean", "object", "array", "string", "number", "integer"};
            for (int i = 0; i < 7; i++)
                if (t >> i & 1)
                    json_array_append_new(m, json_string(names[i]));
        } else if (!strcmp(k, "minimum") || !strcmp(k, "exclusiveMinimum") || !strcmp(k, "minLength") ||
                   !strcmp(k, "minItems")) {
            m = json_number_value(va) >= json_number_value(vb) ? va : vb;
        } else if (!strcmp(k, "maximum") || !strcmp(k, "exclusiveMaximum") || !strcmp(k, "maxLength") ||
                   !strcmp(k, "maxItems")) {
            m = json_number_value(va) <= json_number_value(vb) ? va : vb;
        } else if (!strcmp(k, "additionalProperties")) {
            m = json_is_false(va) || json_is_false(vb) ? json_false()
                : json_is_true(va)                     ? vb
                : json_is_true(vb)                     ? va
                                                       : all_of2(c, va, vb);
        } else if (!strcmp(k, "allOf") && json_is_array(va) && json_is_array(vb)) {
            m = own(c, json_copy(va));
            json_array_extend(m, vb);
        } else if (json_equal(va, vb)) {
            continue;
        } else {
            wk_js_fail(c, "combining two different '%s' (allOf, or anyOf with siblings) is not supported", k);
            return NULL;
        }
        if (!m || json_object_set(r, k, m))
            return NULL;
    }
    return r;
}

/* ------------------------------------------------------------ objects, arrays */

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Key strings starting with names[0..n)[0..d) (sorted, all longer than or equal
 * to d), from the trie node t; other keys go to any_tail. */
static void key_trie(wk_js *c, const char **names, int n, size_t d, int32_t t, int32_t any_tail, int32_t to) {
    int ends = 0;
    uint32_t prev = 0; // next code point not yet covered by "other"
    for (int i = 0; i < n;) {
        if (strlen(names[i]) == d) {
            ends = 1;
            i++;
            continue;
        }
        uint8_t ch = (uint8_t)names[i][d];
        int j = i;
        while (j < n && strlen(names[j]) > d && (uint8_t)names[j][d] == ch)
            j++;
        if (ch > prev)
            wk_js_cp(c, t, prev, ch - 1u, any_tail);
        prev = ch + 1u;
        int32_t child = wk_js_node(c);
        wk_grammar_bytes(c->g, t, ch, ch, child);
        key_trie(c, names + i, j - i, d + 1, child, any_tail, to);
        i = j;
    }
    wk_js_cp(c, t, prev, 0x10FFFF, any_tail);
    if (!ends)
        wk_grammar_bytes(c->g, t, '"', '"', to);
}

/* from --(a JSON string that is none of names[0..n))--> to. */
static int emit_key_except(wk_js *c, const char **names, int n, int32_t from, int32_t to) {
    for (int i = 0; i < n; i++)
        for (const char *p = names[i]; *p; p++)
            if ((uint8_t)*p < 0x20 || (uint8_t)*p >= 0x7F || *p == '"' || *p == '\\')
                return wk_js_fail(c, "additionalProperties beside property names with non-ASCII or escaped characters "
                               "is not supported");
    qsort(names, (size_t)n, sizeof *names, name_cmp);
    int32_t tail = wk_js_node(c);
    wk_js_cp(c, tail, 0, 0x10FFFF, tail);
    wk_grammar_bytes(c->g, tail, '"', '"', to);
    key_trie(c, names, n, 0, wk_js_lit(c, from, "\""), tail, to);
    return 0;
}

/* key ws ':' ws value, from `from` to `to`. */
static int emit_member(wk_js *c, const char *key, json_t *schema, int32_t from, int32_t to) {
    json_t *ks = json_string(key);
    char *kt = ks ? json_dumps(ks, JSON_ENCODE_ANY) : NULL;
    json_decref(ks);
    if (!kt)
        return -ENOMEM;
    int32_t at = wk_js_ws(c, wk_js_lit(c, wk_js_ws(c, wk_js_lit(c, from, kt)), ":"));
    free(kt);
    size_t old = path_push(c, "properties", key);
    int rc = emit_value(c, schema, at, to);
    path_pop(c, old);
    return rc;
}

static int emit_object(wk_js *c, json_t *s, int32_t from, int32_t to) {
    json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required"),
           *addl = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props))
        return wk_js_fail(c, "'properties' must be an object");
    if (req && !json_is_array(req))
        return wk_js_fail(c, "'required' must be an array of strings");
    if (addl && !json_is_boolean(addl) && !json_is_object(addl))
        return wk_js_fail(c, "'additionalProperties' must be a boolean or a schema");
    size_t i;
    json_t *x;
    json_array_foreach(req, i, x) {
        if (!json_is_string(x))
            return wk_js_fail(c, "'required' must be an array of strings");
    }
    if (c->strict) {
        if (!json_is_false(addl))
            return wk_js_fail(c, "strict mode: 'additionalProperties' is required to be supplied and to be false");
        const char *k;
        json_t *v;
        json_object_foreach(props, k, v) {
            int listed = 0;
            json_array_foreach(req, i, x) listed |= !strcmp(json_string_value(x), k);
            if (!listed)
                return wk_js_fail(c, "strict mode: 'required' is required to include every property; missing '%s'", k);
        }
    }
    // the members: properties in order, then required names that are not properties
    size_t np = json_object_size(props), nq = json_array_size(req), n = 0;
    const char **names = calloc(np + nq + 1, sizeof *names);
    json_t **sch = calloc(np + nq + 1, sizeof *sch);
    uint8_t *must = calloc(np + nq + 1, 1);
    int32_t *A = calloc(np + nq + 1, sizeof *A), *B = calloc(np + nq + 1, sizeof *B);
    int rc = -ENOMEM;
    if (!names || !sch || !must || !A || !B)
        goto out;
    const char *k;
    json_t *v;
    json_object_foreach(props, k, v) {
        names[n] = k;
        sch[n] = v;
        json_array_foreach(req, i, x) must[n] |= !strcmp(json_string_value(x), k);
        n++;
    }
    json_array_foreach(req, i, x) {
        if (!json_object_get(props, json_string_value(x))) {
            int dup = 0;
            for (size_t j = np; j < n; j++)
                dup |= !strcmp(names[j], json_string_value(x));
            if (!dup) {
                names[n] = json_string_value(x);
                sch[n] = json_true();
                must[n++] = 1;
            }
        }
    }
    json_t *extra = addl ? (json_is_false(addl) ? NULL : addl) : (np ? NULL : json_true());
    A[0] = wk_js_ws(c, wk_js_lit(c, from, "{"));
    for (size_t j = 0; j <= n; j++) {
        if (j)
            A[j] = wk_js_node(c);
        B[j] = wk_js_node(c);
    }
    for (size_t j = 0; j < n; j++) {
        int32_t key = wk_js_node(c);
        wk_grammar_eps(c->g, A[j], key);
        wk_grammar_eps(c->g, wk_js_ws(c, wk_js_lit(c, wk_js_ws(c, B[j]), ",")), key);
        if ((rc = emit_member(c, names[j], sch[j], key, B[j + 1])))
            goto out;
        if (!must[j]) {
            wk_grammar_eps(c->g, A[j], A[j + 1]);
            wk_grammar_eps(c->g, B[j], B[j + 1]);
        }
    }
    if (extra) {
        int32_t key = wk_js_node(c), colon = wk_js_node(c);
        wk_grammar_eps(c->g, A[n], key);
        wk_grammar_eps(c->g, wk_js_ws(c, wk_js_lit(c, wk_js_ws(c, B[n]), ",")), key);
        if ((rc = emit_key_except(c, names, (int)n, key, colon)))
            goto out;
        size_t old = path_push(c, "additionalProperties", NULL);
        rc = emit_value(c, extra, wk_js_ws(c, wk_js_lit(c, wk_js_ws(c, colon), ":")), B[n]);
        path_pop(c, old);
        if (rc)
            goto out;
    }
    int32_t close = wk_js_node(c);
    wk_grammar_bytes(c->g, close, '}', '}', to);
    wk_grammar_eps(c->g, A[n], close);
    wk_grammar_eps(c->g, wk_js_ws(c, B[n]), close);
    rc = 0;
out:
    free(names);
    free(sch);
    free(must);
    free(A);
    free(B);
    return rc;
}

static int emit_array(wk_js *c, json_t *s, int32_t from, int32_t to) {
    json_t *prefix = json_object_get(s, "prefixItems"), *items = json_object_get(s, "items");
    if (prefix && !json_is_array(prefix))
        return wk_js_fail(c, "'prefixItems' must be an array of schemas");
    if (json_is_array(items))
        return wk_js_fail(c, "'items' as an array is not supported: use 'prefixItems'");
    if (items && !json_is_boolean(items) && !json_is_object(items))
        return wk_js_fail(c, "'items' must be a schema");
    long min = 0, max = -1;
    if (wk_js_count(c, s, "minItems", &min) || wk_js_count(c, s, "maxItems", &max))
        return -EINVAL;
    if (max >= 0 && min > max)
        return wk_js_fail(c, "minItems %ld is above maxItems %ld", min, max);
    long np = (long)json_array_size(prefix);
    json_t *rest = items ? (json_is_false(items) ? NULL : items) : (np ? NULL : json_true());
    if (!rest && min > np)
        return wk_js_fail(c, "minItems %ld needs more items than prefixItems allows", min);
    // positions k = 0, 1, ...: close when k >= minItems, stop at the last one;
    // unbounded, position K and all after it are the same node (a loop).
    long limit = rest ? max : (max >= 0 && max < np ? max : np), big = np > min ? np : min;
    long K = big > 1 ? big : 1;
    int32_t close = wk_js_node(c), cur = wk_js_ws(c, wk_js_lit(c, from, "["));
    wk_grammar_bytes(c->g, close, ']', ']', to);
    int rc = 0;
    for (long k = 0; !rc; k++) {
        if (k >= min)
            wk_grammar_eps(c->g, k ? wk_js_ws(c, cur) : cur, close);
        if (limit >= 0 && k == limit)
            break;
        int loop = limit < 0 && k == K;
        int32_t at = k ? wk_js_ws(c, wk_js_lit(c, wk_js_ws(c, cur), ",")) : cur, nxt = loop ? cur : wk_js_node(c);
        char idx[24];
        snprintf(idx, sizeof idx, "%ld", k);
        size_t old = path_push(c, k < np ? "prefixItems" : "items", k < np ? idx : NULL);
        rc = k < np ? emit_value(c, json_array_get(prefix, (size_t)k), at, nxt) : emit_call(c, rest, at, nxt);
        path_pop(c, old);
        if (loop)
            break;
        cur = nxt;
    }
    return rc;
}

/* ------------------------------------------------------------------ values */

static int emit_choices(wk_js *c, json_t *s, const char *kw, int32_t from, int32_t to) {
    json_t *list = json_object_get(s, kw);
    if (!json_is_array(list) || !json_array_size(list))
        return wk_js_fail(c, "'%s' must be a non-empty array of schemas", kw);
    json_t *base = own(c, json_copy(s));
    if (!base)
        return -ENOMEM;
    json_object_del(base, kw);
    int keep = constrains(base);
    size_t i;
    json_t *x;
    json_array_foreach(list, i, x) {
        char idx[24];
        snprintf(idx, sizeof idx, "%zu", i);
        size_t old = path_push(c, kw, idx);
        json_t *m = keep ? merge(c, base, x) : x;
        int rc = m ? emit_value(c, m, wk_js_branch(c, from), to) : -EINVAL;
        path_pop(c, old);
        if (rc)
            return rc;
    }
    return 0;
}

static int emit_enum(wk_js *c, json_t *s, int32_t from, int32_t to) {
    json_t *e = json_object_get(s, "enum"), *k = json_object_get(s, "const");
    if (e && (!json_is_array(e) || !json_array_size(e)))
        return wk_js_fail(c, "'enum' must be a non-empty array");
    int types = T_ALL;
    if (json_object_get(s, "type") && types_of(c, s, &types))
        return -EINVAL;
    int any = 0;
    size_t i;
    json_t *v;
    json_array_foreach(e, i, v) {
        if (k && !json_equal(k, v))
            continue;
        if (value_type_bit(v) & types) {
            int rc = emit_literal(c, v, from, to);
            if (rc)
                return rc;
            any = 1;
        }
    }
    if (!e && k && (value_type_bit(k) & types)) {
        int rc = emit_literal(c, k, from, to);
        if (rc)
            return rc;
        any = 1;
    }
    if (!any)
        return wk_js_fail(c, "no value of '%s' satisfies the schema's type", e ? "enum" : "const");
    return 0;
}

static int emit_value(wk_js *c, json_t *s, int32_t from, int32_t to) {
    if (c->failed)
        return -EINVAL;
    if (++c->depth > 200) {
        c->depth--;
        return wk_js_fail(c, "schema nesting is too deep");
    }
    int rc = 0;
    if (json_is_true(s)) {
        wk_grammar_call(c->g, from, any_rule(c), to);
        goto out;
    }
    if (json_is_false(s)) {
        rc = wk_js_fail(c, "the schema 'false' accepts no value");
        goto out;
    }
    if (!json_is_object(s)) {
        rc = wk_js_fail(c, "a schema must be an object or a boolean");
        goto out;
    }
    if ((rc = check_keywords(c, s)))
        goto out;
    json_t *ref = json_object_get(s, "$ref");
    if (ref) {
        json_t *t = deref(c, s);
        rc = t ? emit_call(c, t, from, to) : -EINVAL;
        goto out;
    }
    if (json_object_get(s, "anyOf") && json_object_get(s, "oneOf")) {
        rc = wk_js_fail(c, "'anyOf' together with 'oneOf' is not supported");
        goto out;
    }
    if (json_object_get(s, "allOf")) {
        json_t *list = json_object_get(s, "allOf"), *m = own(c, json_copy(s)), *x;
        if (!json_is_array(list) || !json_array_size(list)) {
            rc = wk_js_fail(c, "'allOf' must be a non-empty array of schemas");
            goto out;
        }
        if (!m) {
            rc = -ENOMEM;
            goto out;
        }
        json_object_del(m, "allOf");
        size_t i;
        json_array_foreach(list, i, x) {
            if (!(m = merge(c, m, x))) {
                rc = -EINVAL;
                goto out;
            }
        }
        rc = emit_value(c, m, from, to);
        goto out;
    }
    if (json_object_get(s, "anyOf") || json_object_get(s, "oneOf")) {
        rc = emit_choices(c, s, json_object_get(s, "anyOf") ? "anyOf" : "oneOf", from, to);
        goto out;
    }
    json_t *defs = json_object_get(s, "$defs");
    if ((defs && !json_is_object(defs)) || (json_object_get(s, "definitions") &&
                                            !json_is_object(json_object_get(s, "definitions")))) {
        rc = wk_js_fail(c, "'$defs' must be an object of schemas");
        goto out;
    }
    if (json_object_get(s, "enum") || json_object_get(s, "const")) {
        rc = emit_enum(c, s, from, to);
        goto out;
    }
    int types;
    if ((rc = types_of(c, s, &types)))
        goto out;
    if (types == T_ALL && !constrains(s)) {
        wk_grammar_call(c->g, from, any_rule(c), to);
        goto out;
    }
    if (types & T_NULL)
        wk_grammar_eps(c->g, wk_js_lit(c, wk_js_branch(c, from), "null"), to);
    if (types & T_BOOL) {
        wk_grammar_eps(c->g, wk_js_lit(c, wk_js_branch(c, from), "true"), to);
        wk_grammar_eps(c->g, wk_js_lit(c, wk_js_branch(c, from), "false"), to);
    }
    if (!rc && (types & T_OBJ))
        rc = emit_object(c, s, wk_js_branch(c, from), to);
    if (!rc && (types & T_ARR))
        rc = emit_array(c, s, wk_js_branch(c, from), to);
    if (!rc && (types & T_STR))
        rc = wk_js_string(c, s, wk_js_branch(c, from), to);
    if (!rc && (types & (T_NUM | T_INT)))
        rc = wk_js_number(c, s, !(types & T_NUM), wk_js_branch(c, from), to);
out:
    c->depth--;
    return rc;
}

int wk_js_emit(wk_js *c, json_t *schema, int strict, int32_t from, int32_t to, char *err, size_t errlen) {
    c->root = schema;
    c->strict = strict;
    c->err = err;
    c->errlen = errlen;
    c->failed = 0;
    c->path[0] = 0;
    c->path_len = 0;
    if (err && errlen)
        err[0] = 0;
    if (strict) {
        json_t *r = deref(c, schema), *t = json_is_object(r) ? json_object_get(r, "type") : NULL;
        if (!r)
            return -EINVAL;
        if (!json_is_string(t) || strcmp(json_string_value(t), "object") || json_object_get(r, "anyOf"))
            return wk_js_fail(c, "strict mode: the root schema must be of type 'object' and not use anyOf");
    }
    int rc = emit_value(c, schema, from, to);
    return rc ? rc : c->failed ? -EINVAL : 0;
}

int wk_jsonschema_grammar(const char *text, size_t len, int strict, wk_grammar **out, char *err, size_t errlen) {
    *out = NULL;
    json_error_t je;
    json_t *schema = text ? json_loadb(text, len, JSON_DECODE_ANY, &je) : json_pack("{ss}", "type", "object");
    if (!schema) {
        snprintf(err, errlen, "the schema is not valid JSON: %s", text ? je.text : "out of memory");
        return text ? -EINVAL : -ENOMEM;
    }
    wk_grammar *g = wk_grammar_new();
    wk_js *c = g ? wk_js_new(g) : NULL;
    int rc = -ENOMEM;
    if (!c)
        goto out;
    int32_t start = wk_grammar_node(g), end = wk_grammar_node(g);
    wk_grammar_end(g, end);
    if ((rc = wk_js_emit(c, schema, strict, start, end, err, errlen)))
        goto out;
    rc = wk_grammar_seal(g, start);
    if (rc == -E2BIG)
        snprintf(err, errlen, "the schema compiles to more than %d grammar nodes", WK_GRAMMAR_MAX_NODES);
    else if (rc == -ENOENT)
        snprintf(err, errlen, "no JSON value satisfies the schema");
    if (rc == -E2BIG || rc == -ENOENT)
        rc = -EINVAL;
out:
    wk_js_free(c);
    json_decref(schema);
    if (rc) {
        wk_grammar_free(g);
        return rc;
    }
    *out = g;
    return 0;
}
