/* gw_render: OpenAI response bodies and SSE events, without any I/O.
 *
 * Chat completions (chat.completion, chat.completion.chunk), legacy text
 * completions (text_completion), usage, logprobs in both shapes, and error bodies
 * {"error":{message,type,param,code}}. Every string that reaches JSON goes through
 * gw_jstr (or, in a streamed chunk, the escaping that writes it, which repairs the
 * same way), so bytes that are not valid UTF-8 (a token holding half a character, a
 * message cut mid-character) render as U+FFFD instead of failing. Pure functions,
 * checked case by case in tests/unit/test_gw_chat.c. */
#ifndef GW_RENDER_H
#define GW_RENDER_H

#include <jansson.h>
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

/* Sets *err. message is printf-style. */
void gw_error_set(gw_error *err, int status, const char *type, const char *param, const char *code, const char *fmt,
                  ...) __attribute__((format(printf, 6, 7)));

/* Appends the OpenAI error body {"error":{...}} for err. */
int gw_render_error(cm_buf *out, const gw_error *err);
/* Appends "data: {"error":...}\n\n". */
int gw_render_sse_error(cm_buf *out, const gw_error *err);

/* A JSON string of n bytes of s, invalid UTF-8 replaced by U+FFFD. NULL only when
 * out of memory; the caller owns the result. */
json_t *gw_jstr(const char *s, size_t n);

/* Identity of one completion, shared by all of its chunks. */
typedef struct gw_completion {
    const char *id;    // "chatcmpl-..." or "cmpl-..."
    const char *model;
    long long created;
    int legacy;        // a /v1/completions text_completion
    int functions;     // tools came as the deprecated functions: calls render as function_call
} gw_completion;

typedef struct gw_usage {
    uint32_t prompt_tokens, completion_tokens, cached_tokens;
} gw_usage;

/* finish_reason string for a proto_finish value (tool calls are "function_call"
 * for the deprecated functions API). */
const char *gw_finish_name(const gw_completion *c, int finish);

/* Appends the logprobs of n (>= 0) tokens to *acc, creating it on first use: for
 * chat {"content":[{token, logprob, bytes, top_logprobs}], "refusal":null}, for
 * legacy completions {tokens, token_logprobs, top_logprobs, text_offset}.
 * *text_off is the offset, in characters, where the first of these tokens starts
 * (legacy text_offset); it is advanced past them. 0 or -ENOMEM. Release *acc with
 * json_decref. */
int gw_logprobs_add(json_t **acc, int legacy, const proto_logprob *lp, uint32_t n, size_t *text_off);

/* Characters (UTF-8 sequences started) in s[0..n): what text_offset counts. */
size_t gw_utf8_chars(const char *s, size_t n);

/* One finished choice of a non-streamed completion. */
typedef struct gw_choice_out {
    const char *text;
    size_t len;
    int finish;    // proto_finish
    json_t *lp;    // logprobs (borrowed) or NULL
    json_t *calls; // tool calls [{id, type, function: {name, arguments}}] (borrowed) or NULL
} gw_choice_out;

/* Appends the non-streamed body: chat.completion or text_completion. */
int gw_render_completion(cm_buf *out, const gw_completion *c, const gw_choice_out *ch, int n_choices,
                         const gw_usage *u);

/* One streamed chunk for choice `index`. */
typedef struct gw_chunk {
    uint32_t index;
    int role;                // chat: include delta.role
    const char *text;        // NULL: no content key (chat); legacy always has text
    size_t len;
    const proto_logprob *lp; // [n_lp] or NULL: logprobs null
    uint32_t n_lp;
    size_t text_off;         // legacy logprobs: where the first token starts (see gw_logprobs_add)
    int finish;              // 0: null
    int with_usage_null;     // add "usage": null (stream_options.include_usage)
    uint32_t call;           // > 0: text is a fragment of the arguments of tool call `call` (1-based)
    const char *call_id;     // the call's first delta: its id and function name
    const char *call_name;
} gw_chunk;

/* Appends "data: {chunk}\n\n", the bytes jansson would dump for the chunk's tree,
 * written directly: without logprobs it allocates nothing beyond out's growth. 0,
 * or -ENOMEM with out back at its length. */
int gw_render_chunk(cm_buf *out, const gw_completion *c, const gw_chunk *k);
/* Appends the final usage chunk (choices: []). */
int gw_render_usage_chunk(cm_buf *out, const gw_completion *c, const gw_usage *u);

#endif
