/* gw_chat: OpenAI request validation, without any I/O.
 *
 * gw_chat_parse (POST /v1/chat/completions) and gw_completions_parse (POST
 * /v1/completions) validate a request body and turn it into a proto_submit;
 * anything wrong becomes a gw_error (HTTP status + OpenAI error fields). Every
 * field of the request schema is honoured or refused by name; unknown fields are
 * refused, as OpenAI does. Everything here is pure so tests/unit/test_gw_chat.c
 * can check it case by case; responses are rendered by gw_render. */
#ifndef GW_CHAT_H
#define GW_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "common/cm_buf.h"
#include "gateway/gw_render.h"
#include "proto/proto.h"

/* A parsed request. The proto_submit's strings point into storage owned by the
 * request; release everything with gw_chat_req_free. */
typedef struct gw_chat_req {
    proto_submit submit; // job_id left 0 for the caller
    int legacy;          // a /v1/completions request
    int n_choices;       // submit.n * max(1, submit.n_prompts)
    int stream;
    int include_usage;
    void *json;          // the parsed document (jansson), owner of most strings
    char **owned;        // joined content parts, schema texts
    int n_owned;
    proto_tool *tools;   // [submit.n_tools] (owned; strings point into json)
    int legacy_functions; // tools came as the deprecated functions: answer with message.function_call
    const char *model;    // the request's `model` (in json)
    size_t model_len;
} gw_chat_req;

/* Parses body[0..len). 0 on success (free req with gw_chat_req_free), or -1 with
 * *err filled (req left empty). Which models exist is not the parser's to know:
 * the caller resolves req->model (gw_models_get), after every other check here. */
int gw_chat_parse(const char *body, size_t len, gw_chat_req *req, gw_error *err);
/* The same for a legacy completion (prompt instead of messages; max_tokens
 * defaults to 16 as OpenAI's does). */
int gw_completions_parse(const char *body, size_t len, gw_chat_req *req, gw_error *err);
void gw_chat_req_free(gw_chat_req *req);

#endif
