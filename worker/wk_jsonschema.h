/* wk_jsonschema: JSON Schema (draft 2020-12, the subset below) compiled into a
 * wk_grammar whose sentences are JSON texts valid under the schema.
 *
 * Supported: type (every JSON type, and unions), enum, const, properties,
 * required, additionalProperties, items, prefixItems, minItems, maxItems,
 * minLength, maxLength, pattern (wk_regex), format (date-time, date, time, uuid,
 * email, ipv4), minimum, maximum, exclusiveMinimum, exclusiveMaximum, anyOf,
 * oneOf (generated as anyOf), allOf (merged), $ref into the same document ("#",
 * "#/$defs/...", "#/definitions/..."), recursion included, and boolean schemas.
 * Annotations (title, description, default, examples, $schema, $id, $comment,
 * deprecated, readOnly, writeOnly) are ignored. Any other keyword is refused with
 * a message naming it and its location; so are contradictions (minLength above
 * maxLength, an empty enum, a $ref that does not resolve).
 *
 * Generation policy (a subset of what the schema allows, never more): properties
 * come in schema order, optional ones may be left out; no extra keys when
 * properties are listed and additionalProperties is absent; no extra array items
 * after prefixItems unless items says so; numbers are plain decimals (no
 * exponent) with at most 20 integer and 20 fraction digits; strings use the short
 * escapes and \u00XX for control characters and raw UTF-8 for everything else;
 * between tokens at most WK_JS_MAX_WS whitespace bytes.
 *
 * strict (OpenAI's structured-output rules): the root must be an object schema,
 * and every object schema must set additionalProperties to false and list every
 * property in required; a violation is refused. */
#ifndef WK_JSONSCHEMA_H
#define WK_JSONSCHEMA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/wk_grammar.h"

#define WK_JS_MAX_WS 16

typedef struct wk_js wk_js;

/* A compiler emitting into g (borrowed; unsealed). NULL on ENOMEM. */
wk_js *wk_js_new(wk_grammar *g);
void wk_js_free(wk_js *c); // NULL is a no-op

/* Emits from node `from` to node `to` the JSON texts valid under schema (whose
 * $refs resolve against schema itself; borrowed, it must outlive c). 0, or
 * -EINVAL with a message in err naming the keyword and its place, or -ENOMEM. */
int wk_js_emit(wk_js *c, json_t *schema, int strict, int32_t from, int32_t to, char *err, size_t errlen);
/* Emits optional JSON whitespace (at most WK_JS_MAX_WS bytes) from `from`; returns
 * the node after it. */
int32_t wk_js_ws(wk_js *c, int32_t from);

/* The whole job for response_format: schema text (JSON) to a sealed grammar. A
 * NULL text means any JSON object (json_object). 0 or -EINVAL/-ENOMEM with err. */
int wk_jsonschema_grammar(const char *text, size_t len, int strict, wk_grammar **out, char *err, size_t errlen);

#endif
