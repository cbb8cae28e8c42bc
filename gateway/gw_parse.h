/* gw_parse: what the request parsers (gw_chat.c, gw_tools.c) share; not for
 * other modules. Errors are set in *err and the functions return -1. */
#ifndef GW_PARSE_H
#define GW_PARSE_H

#include <jansson.h>

#include "gateway/gw_chat.h"

/* A 500 for an allocation failure. */
int gw_nomem(gw_error *err);
/* 1 when v is the JSON string lit exactly (length-aware). */
int gw_jeq(const json_t *v, const char *lit);
/* Boolean field; absent/null leaves *out. 0 or -1. */
int gw_get_bool(json_t *root, const char *key, int *out, gw_error *err);
/* Hands s (malloc'd) to req, which frees it with the request; NULL (s freed)
 * when out of memory. */
char *gw_keep(gw_chat_req *req, char *s);
/* Refuses (400 unknown_parameter) any key of obj not in keys[] (NULL-ended),
 * naming it as where.key, or as the key itself for the request (where NULL).
 * 0 or -1. */
int gw_only_keys(json_t *obj, const char *where, const char *const *keys, gw_error *err);
/* A function name as OpenAI allows it: [A-Za-z0-9_-]{1,64}. */
int gw_valid_name(const json_t *v);

/* response_format (NULL/null: text). 0 or -1. */
int gw_parse_response_format(gw_chat_req *req, json_t *v, gw_error *err);
/* tools/tool_choice/parallel_tool_calls or functions/function_call of root. 0 or -1. */
int gw_parse_tools(gw_chat_req *req, json_t *root, gw_error *err);

#endif
