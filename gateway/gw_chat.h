/* gw_chat: the OpenAI Chat Completions wire format, without any I/O.
 *
 * gw_chat_parse validates a request body and turns it into a proto_submit;
 * anything wrong becomes a gw_error (HTTP status + OpenAI error fields). The
 * render functions produce response bodies and SSE chunks. Everything here is pure
 * so tests/unit/test_gw_chat.c can check it case by case. */
#ifndef GW_CHAT_H
#define GW_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "common/cm_buf.h"
#include "proto/proto.h"

typedef struct gw_error {
    int status;         // HTTP status
    const char *type;   // "invalid_request_error", "server_error", ...
    const char *param;  // offending field or NULL
    const char *code;   // OpenAI error code or NULL
    char message[512];
} gw_error;

/* A parsed request. The proto_submit's strings point into storage owned by the
 * request; release everything with gw_chat_req_free. */
typedef struct gw_chat_req {
    proto_submit submit; // job_id left 0 for the caller
    int stream;
    int include_usage;
    void *json;          // the parsed document (jansson), owner of most strings
    char **owned;        // joined content parts
    int n_owned;
} gw_chat_req;

/* Parses body[0..len) for the served model `model_id`. 0 on success (free req with
 * gw_chat_req_free), or -1 with *err filled (req left empty). */
int gw_chat_parse(const char *body, size_t len, const char *model_id, gw_chat_req *req, gw_error *err);
void gw_chat_req_free(gw_chat_req *req);

/* Sets *err. message is printf-style. */
void gw_error_set(gw_error *err, int status, const char *type, const char *param, const char *code, const char *fmt,
                  ...) __attribute__((format(printf, 6, 7)));

/* Appends the OpenAI error body {"error":{...}} for err. */
int gw_render_error(cm_buf *out, const gw_error *err);

/* Identity of one completion, shared by all of its chunks. */
typedef struct gw_completion {
    const char *id;    // "chatcmpl-..."
    const char *model;
    long long created;
} gw_completion;

typedef struct gw_usage {
    uint32_t prompt_tokens, completion_tokens, cached_tokens;
} gw_usage;

/* finish_reason string for a proto_finish value. */
const char *gw_finish_name(int finish);

/* Appends the non-streaming chat.completion body. */
int gw_render_completion(cm_buf *out, const gw_completion *c, const char *text, size_t text_len, int finish,
                         const gw_usage *u);
/* Appends one SSE event "data: {chunk}\n\n". role: include delta.role; text may be
 * NULL (empty delta); finish 0 = null; with_usage_null adds "usage":null. */
int gw_render_chunk(cm_buf *out, const gw_completion *c, int role, const char *text, size_t text_len, int finish,
                    int with_usage_null);
/* Appends the final usage chunk (choices: []). */
int gw_render_usage_chunk(cm_buf *out, const gw_completion *c, const gw_usage *u);
/* Appends "data: {"error":...}\n\n". */
int gw_render_sse_error(cm_buf *out, const gw_error *err);

#endif
