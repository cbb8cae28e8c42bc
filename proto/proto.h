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
 * STATS_REQ, SHUTDOWN; worker -> EVENT (ACCEPTED, then DELTAs, then exactly one
 * FINISH or ERROR per job), STATS.
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
#define PROTO_VERSION 1
#define PROTO_HDR_SIZE 12

/* Caps checked on decode (and on encode, returning -EMSGSIZE). */
#define PROTO_MAX_PAYLOAD (32u << 20) /* one frame */
#define PROTO_MAX_MESSAGES 4096       /* chat messages in a submit */
#define PROTO_MAX_STR (16u << 20)     /* one string */
#define PROTO_MAX_STOP 16             /* stop strings */
#define PROTO_MAX_STOP_LEN 1024

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

typedef struct proto_msg {
    proto_str role;    // "system", "developer", "user", "assistant", "tool"
    proto_str content; // UTF-8 text
} proto_msg;

typedef struct proto_submit {
    uint64_t job_id;
    uint32_t n_msgs;
    proto_msg *msgs;     // [n_msgs]
    int32_t max_tokens;  // completion cap; -1 = up to the context window
    float temperature;   // 0 = greedy
    float top_p;         // (0, 1]
    int32_t top_k;       // 0 = off
    uint8_t has_seed;
    uint64_t seed;
    uint32_t n_stop;
    proto_str *stop;     // [n_stop]
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
} proto_finish;

typedef struct proto_event {
    uint64_t job_id;
    uint8_t kind;          // proto_event_kind
    uint32_t choice;       // choice index (0 for now)
    proto_str text;        // DELTA
    uint8_t finish_reason; // FINISH: proto_finish
    uint32_t prompt_tokens;     // ACCEPTED, FINISH
    uint32_t completion_tokens; // FINISH
    uint32_t cached_tokens;     // FINISH
    uint16_t status;       // ERROR: HTTP status to report (400, 500, 503, ...)
    proto_str code;        // ERROR: OpenAI error code ("context_length_exceeded")
    proto_str message;     // ERROR: human-readable message
    proto_str param;       // ERROR: offending request field, may be empty
} proto_event;

typedef struct proto_stats {
    uint32_t running;
    uint32_t waiting;
    uint32_t kv_blocks_free;
    uint32_t kv_blocks_total;
    uint64_t tokens_generated;
    uint64_t tokens_prompt;
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
