/* wk_js_int: the JSON Schema compiler's shared insides (wk_jsonschema.c: the
 * schema structure; wk_jsscalar.c: strings and numbers). Not for other modules. */
#ifndef WK_JS_INT_H
#define WK_JS_INT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/wk_jsonschema.h"

typedef struct rule {
    json_t *schema;
    int32_t start;
} rule;

struct wk_js {
    wk_grammar *g;
    json_t *root;  // document the current $refs resolve against
    int strict;
    rule *rules;
    int n_rules, cap_rules;
    int32_t any;   // start of the any-value rule, -1 until needed
    int32_t num;   // [lazily] start of the free-number rule
    json_t *owned; // merged schemas
    char *err;
    size_t errlen;
    int failed;
    int depth;
    char path[512]; // JSON pointer of the schema being compiled
    size_t path_len;
};

/* Sets the compile error (the first one wins; the schema location is appended)
 * and returns -EINVAL. */
int wk_js_fail(wk_js *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int32_t wk_js_node(wk_js *c);
/* from --text--> returned node. */
int32_t wk_js_lit(wk_js *c, int32_t from, const char *s);
/* A fresh entry node for one alternative starting at from. */
int32_t wk_js_branch(wk_js *c, int32_t from);
/* from --(the JSON string encoding of one code point in [lo, hi])--> to. */
void wk_js_cp(wk_js *c, int32_t from, uint32_t lo, uint32_t hi, int32_t to);
/* A count keyword of s (minLength, maxItems, ...) into *out when present. 0 or -EINVAL. */
int wk_js_count(wk_js *c, json_t *s, const char *key, long *out);
/* The string / number values under s (NULL: any string / number), from -> to. */
int wk_js_string(wk_js *c, json_t *s, int32_t from, int32_t to);
int wk_js_number(wk_js *c, json_t *s, int int_only, int32_t from, int32_t to);

#endif
