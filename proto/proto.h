/* proto: the gateway <-> worker contract, msgpack frames over a Unix socket.
 *
 * A frame is a 12-byte header then a msgpack payload:
 *   u32 magic 'KLMF' | u16 version | u16 type | u32 payload length   (big-endian)
 * The payload is one msgpack map with short string keys; decoders ignore keys
 * they do not know (forward compatibility within a version) and reject wrong
 * types, missing required keys and anything over the caps below. A version
 * mismatch is rejected with -EPROTONOSUPPORT so the peer can print a hint.
 *
 * Jobs are multiplexed on one socket by job_id (chosen by the gateway, unique per
 * socket). Flow: worker -> HELLO once after connecting; gateway -> SUBMIT, CANCEL,
 * STATS_REQ, SHUTDOWN; worker -> EVENT, STATS (on request, and unprompted whenever
 * its job counts change).
 *
 * A job has n_choices = n * max(1, n_prompts) choices (choice c belongs to prompt
 * c / n). Its events: one ACCEPTED, then DELTAs tagged with their choice, one FINISH
 * per choice, the job's last FINISH flagged `last` and carrying the job's usage; or
 * an ERROR, which ends the whole job at any point. A cancelled job ends with one
 * FINISH (cancelled, last).
 *
 * Ownership: encoders append to a cm_buf and never take ownership of inputs.
 * proto_decode fills a proto_frame whose strings and arrays are heap copies owned
 * by the frame; release them with proto_frame_free. */
#ifndef PROTO_H
#define PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/cm_buf.h"

#define PROTO_MAGIC 0x4B4C4D46u /* "KLMF" */
#define PROTO_VERSION 4
#define PROTO_HDR_SIZE 12

/* Caps checked on decode (and on encode, returning -EMSGSIZE). */
#define PROTO_MAX_PAYLOAD (32u << 20) /* one frame */
#define PROTO_MAX_MESSAGES 4096       /* chat messages in a submit */
#define PROTO_MAX_STR (16u << 20)     /* one string */
#define PROTO_MAX_STOP 16             /* stop strings */
#define PROTO_MAX_STOP_LEN 1024
#define PROTO_MAX_CALLS 128           /* tool calls in one assistant message */
#define PROTO_MAX_N 128               /* choices per prompt */
#define PROTO_MAX_PROMPTS 64          /* prompts in one legacy completion */
#define PROTO_MAX_PROMPT_TOKENS (1u << 20)
#define PROTO_MAX_BIAS 1024           /* logit_bias entries */
#define PROTO_MAX_TOP_LOGPROBS 20
#define PROTO_MAX_LOGPROBS 65536      /* token entries in one DELTA */
#define PROTO_MAX_TOOLS 128           /* tools offered in one submit */

typedef enum proto_type {
    PROTO_HELLO = 1,
    PROTO_SUBMIT = 2,
    PROTO_CANCEL = 3,
    PROTO_EVENT = 4,
    PROTO_STATS_REQ = 5,
    PROTO_STATS = 6,
    PROTO_SHUTDOWN = 7,
} proto_type;

/* A length-counted byte string; p is NUL-terminated too (p[len] == 0) when owned
 * by a decoded frame. May contain NUL bytes. */
typedef struct proto_str {
    char *p;
    uint32_t len;
} proto_str;

typedef struct proto_hello {
    uint32_t worker_id;
    int32_t pid;
    proto_str model_id; // the id clients put in "model"
    proto_str arch;     // "gemma3", "qwen2", "llama"
    uint32_t n_ctx;     // context window in tokens
    uint32_t n_vocab;
} proto_hello;

/* A tool call made by an earlier assistant turn. arguments is JSON text. */
typedef struct proto_call {
    proto_str id;
    proto_str name;
    proto_str arguments;
} proto_call;

typedef struct proto_msg {
    proto_str role;         // "system", "developer", "user", "assistant", "tool"
    proto_str content;      // UTF-8 text
    proto_str name;         // optional participant / tool name
    proto_str tool_call_id; // tool: the call this result answers
    uint32_t n_calls;
    proto_call *calls;      // [n_calls] assistant: the tool calls it made
} proto_msg;

/* One raw prompt of a legacy completion: text (tokenized by the worker, BOS added
 * as the model wants) or token ids given by the client (used as they are). */
typedef struct proto_prompt {
    proto_str text;
    int32_t *tokens; // [n_tokens], NULL when text is used
    uint32_t n_tokens;
} proto_prompt;

typedef struct proto_bias {
    int32_t token;
    float bias; // added to the token's logit before sampling
} proto_bias;

typedef enum proto_format {
    PROTO_FORMAT_TEXT = 0,        // free text
    PROTO_FORMAT_JSON_OBJECT = 1, // any JSON object
    PROTO_FORMAT_JSON_SCHEMA = 2, // JSON valid under proto_submit.schema
} proto_format;

typedef enum proto_tool_choice {
    PROTO_TOOLS_NONE = 0,     // no calls (tools, if any, are shown to the model all the same)
    PROTO_TOOLS_AUTO = 1,     // text or calls, the model's choice
    PROTO_TOOLS_REQUIRED = 2, // at least one call, nothing else
    PROTO_TOOLS_NAMED = 3,    // one call, to proto_submit.tool_name
} proto_tool_choice;

/* A function the model may call. parameters is the JSON Schema of its arguments
 * as JSON text. */
typedef struct proto_tool {
    proto_str name;
    proto_str description;
    proto_str parameters;
    uint8_t strict; // OpenAI's strict-mode rules apply to parameters
} proto_tool;

typedef struct proto_submit {
    uint64_t job_id;
    uint32_t n_msgs;
    proto_msg *msgs;     // [n_msgs] chat messages (rendered with the chat template)
    uint32_t n_prompts;
    proto_prompt *prompts; // [n_prompts] raw prompts instead of msgs (legacy completions)
    uint32_t n;          // choices per prompt, 1..PROTO_MAX_N (0 is sent as 1)
    int32_t max_tokens;  // completion cap per choice; -1 = up to the context window
    float temperature;   // 0 = greedy
    float top_p;         // (0, 1]
    int32_t top_k;       // 0 = off
    float min_p;         // [0, 1]: keep tokens at least min_p times as likely as the best; 0 = off
    float presence_penalty, frequency_penalty; // [-2, 2], over the choice's own output
    uint32_t n_bias;
    proto_bias *bias;    // [n_bias]
    uint8_t logprobs;    // 1: DELTAs carry the sampled tokens' logprobs
    uint8_t top_logprobs; // alternatives per token, 0..PROTO_MAX_TOP_LOGPROBS
    uint8_t echo;        // legacy completions: the prompt text leads each choice's output
    uint8_t has_seed;
    uint64_t seed;       // choice c samples from seed + c
    uint32_t n_stop;
    proto_str *stop;     // [n_stop]
    uint8_t format;      // proto_format: output constrained by a grammar
    uint8_t strict;      // JSON_SCHEMA: apply OpenAI's strict-mode rules to the schema
    proto_str schema;    // JSON_SCHEMA: the schema as JSON text
    proto_str schema_name; // JSON_SCHEMA: its name (for error messages)
    uint32_t n_tools;
    proto_tool *tools;   // [n_tools]
    uint8_t tool_choice; // proto_tool_choice (NONE without tools)
    uint8_t parallel_calls; // more than one call allowed
    proto_str tool_name; // NAMED: the tool to call
} proto_submit;

typedef enum proto_event_kind {
    PROTO_EV_ACCEPTED = 1, // prompt tokenized and admitted to the queue
    PROTO_EV_DELTA = 2,    // text: the next piece of output (valid UTF-8)
    PROTO_EV_FINISH = 3,   // finish_reason + usage; last event of the job
    PROTO_EV_ERROR = 4,    // status/code/message; last event of the job
} proto_event_kind;

typedef enum proto_finish {
    PROTO_FINISH_STOP = 1,   // EOS/EOT token or a stop string
    PROTO_FINISH_LENGTH = 2, // max_tokens or the context window
    PROTO_FINISH_CANCELLED = 3,
    PROTO_FINISH_TOOL_CALLS = 4, // the choice ended with tool calls (tool_choice auto or required)
} proto_finish;

/* One alternative token and its log-probability. tok holds the token's bytes
 * (not necessarily whole UTF-8 characters). */
typedef struct proto_top {
    proto_str tok;
    float logprob;
} proto_top;

/* One sampled token: its bytes, log-probability, and the most likely alternatives
 * at that position (best first). */
typedef struct proto_logprob {
    proto_str tok;
    float logprob;
    uint32_t n_top;
    proto_top *top; // [n_top]
} proto_logprob;

typedef struct proto_event {
    uint64_t job_id;
    uint8_t kind;          // proto_event_kind
    uint32_t choice;       // choice index
    proto_str text;        // DELTA: content, or with call > 0 a fragment of the call's arguments
    uint32_t call;         // DELTA: 0 = message content; k = the choice's k-th tool call (1-based)
    proto_str call_name;   // DELTA: the call's function name, on its first delta only
    uint32_t n_lp;
    proto_logprob *lp;     // DELTA: [n_lp] the tokens whose text ends in this delta
    uint8_t finish_reason; // FINISH: proto_finish
    uint8_t last;          // FINISH: the job's last event
    uint32_t prompt_tokens;     // ACCEPTED; the last FINISH (whole job)
    uint32_t completion_tokens; // FINISH: this choice's; the last FINISH: the whole job's
    uint32_t cached_tokens;     // the last FINISH: prompt tokens served from the prefix cache
    uint16_t status;       // ERROR: HTTP status to report (400, 500, 503, ...)
    proto_str code;        // ERROR: OpenAI error code ("context_length_exceeded")
    proto_str message;     // ERROR: human-readable message
    proto_str param;       // ERROR: offending request field, may be empty
} proto_event;

typedef struct proto_stats {
    uint32_t jobs;    // jobs accepted and not ended
    uint32_t running; // sequences (choices) in the running batch
    uint32_t waiting;
    uint32_t kv_blocks_free;   // on the free list
    uint32_t kv_blocks_cached; // held only by the prefix cache (reclaimable)
    uint32_t kv_blocks_total;
    uint64_t tokens_generated;
    uint64_t tokens_prompt;
    uint64_t grammar_masks;      // token masks applied
    uint64_t grammar_mask_ns;    // time spent computing and applying them
    uint64_t grammar_compiles;   // schemas compiled into grammars
    uint64_t grammar_cache_hits; // submits served by an already compiled grammar
} proto_stats;

typedef struct proto_frame {
    uint16_t type; // proto_type
    union {
        proto_hello hello;
        proto_submit submit;
        uint64_t cancel_job_id;
        proto_event event;
        proto_stats stats;
    } u;
} proto_frame;

/* Encoders append one whole frame to out. 0, -ENOMEM, or -EMSGSIZE (a cap). */
int proto_encode_hello(cm_buf *out, const proto_hello *h);
int proto_encode_submit(cm_buf *out, const proto_submit *s);
int proto_encode_cancel(cm_buf *out, uint64_t job_id);
int proto_encode_event(cm_buf *out, const proto_event *e);
int proto_encode_stats_req(cm_buf *out);
int proto_encode_stats(cm_buf *out, const proto_stats *s);
int proto_encode_shutdown(cm_buf *out);

/* Decodes the frame at the start of buf[0..len).
 * Returns the number of bytes consumed (> 0) with *out filled (free it with
 * proto_frame_free), 0 if buf holds only part of a frame (read more), or a negative
 * error: -EPROTO (bad magic or unknown type), -EPROTONOSUPPORT (version mismatch),
 * -EMSGSIZE (length or a field over its cap), -EBADMSG (malformed payload),
 * -ENOMEM. After an error the stream is unusable and should be closed. */
ssize_t proto_decode(const uint8_t *buf, size_t len, proto_frame *out);
void proto_frame_free(proto_frame *f);

/* A short static name for a decode error ("bad magic", ...). */
const char *proto_strerror(int err);

#endif
