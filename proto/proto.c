/* proto.c: frame encoding and strict decoding (see proto.h for the contract).
 *
 * Design note: msgpack-c's unpacker sizes its allocations from the element
 * counts written in the input, so a 20-byte payload claiming a 2^32-element array
 * would make it try to allocate tens of gigabytes. proto_decode therefore walks
 * the raw payload first (check_payload) and rejects any array or map whose
 * remaining element count exceeds the remaining bytes (every element takes at
 * least one byte), and any string over PROTO_MAX_STR. Only then does msgpack-c
 * unpack it, and the typed walkers below copy what they need out of the zone. */
#include "proto/proto.h"

#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* ---- encoding ---------------------------------------------------------- */

static int buf_write(void *data, const char *p, size_t n) {
    return cm_buf_append((cm_buf *)data, p, n) ? -1 : 0;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Starts a frame: appends the header with a zero length; returns its offset. */
static int frame_begin(cm_buf *out, proto_type type, size_t *hdr_at) {
    uint8_t h[PROTO_HDR_SIZE];
    put_be32(h, PROTO_MAGIC);
    h[4] = (uint8_t)(PROTO_VERSION >> 8);
    h[5] = (uint8_t)PROTO_VERSION;
    h[6] = (uint8_t)(type >> 8);
    h[7] = (uint8_t)type;
    put_be32(h + 8, 0);
    *hdr_at = out->len;
    return cm_buf_append(out, h, sizeof h);
}

/* Finishes a frame: patches the length, or rolls the frame back on error. */
static int frame_end(cm_buf *out, size_t hdr_at, int rc) {
    size_t payload = out->len - hdr_at - PROTO_HDR_SIZE;
    if (!rc && payload > PROTO_MAX_PAYLOAD)
        rc = -EMSGSIZE;
    if (rc) {
        out->len = hdr_at;
        return rc;
    }
    put_be32(out->data + hdr_at + 8, (uint32_t)payload);
    return 0;
}

static int pk_key(msgpack_packer *pk, const char *k) {
    return msgpack_pack_str_with_body(pk, k, strlen(k));
}

static int pk_str_val(msgpack_packer *pk, const proto_str *s);

static int pk_str(msgpack_packer *pk, const char *k, const proto_str *s) {
    return pk_key(pk, k) ? -ENOMEM : pk_str_val(pk, s);
}

static int pk_str_val(msgpack_packer *pk, const proto_str *s) {
    if (s->len > PROTO_MAX_STR)
        return -EMSGSIZE;
    return msgpack_pack_str_with_body(pk, s->p ? s->p : "", s->len) ? -ENOMEM : 0;
}

static int pk_u64(msgpack_packer *pk, const char *k, uint64_t v) {
    return pk_key(pk, k) || msgpack_pack_uint64(pk, v) ? -ENOMEM : 0;
}

static int pk_i64(msgpack_packer *pk, const char *k, int64_t v) {
    return pk_key(pk, k) || msgpack_pack_int64(pk, v) ? -ENOMEM : 0;
}

static int pk_f32(msgpack_packer *pk, const char *k, float v) {
    return pk_key(pk, k) || msgpack_pack_float(pk, v) ? -ENOMEM : 0;
}

int proto_encode_hello(cm_buf *out, const proto_hello *h) {
    size_t at;
    int rc = frame_begin(out, PROTO_HELLO, &at);
    if (rc)
        return rc;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    rc = msgpack_pack_map(&pk, 6) ? -ENOMEM : 0;
    if (!rc)
        rc = pk_u64(&pk, "wid", h->worker_id);
    if (!rc)
        rc = pk_i64(&pk, "pid", h->pid);
    if (!rc)
        rc = pk_str(&pk, "model", &h->model_id);
    if (!rc)
        rc = pk_str(&pk, "arch", &h->arch);
    if (!rc)
        rc = pk_u64(&pk, "n_ctx", h->n_ctx);
    if (!rc)
        rc = pk_u64(&pk, "n_vocab", h->n_vocab);
    return frame_end(out, at, rc);
}

int proto_encode_submit(cm_buf *out, const proto_submit *s) {
    if (s->format > PROTO_FORMAT_JSON_SCHEMA || s->tool_choice > PROTO_TOOLS_NAMED)
        return -EINVAL;
    if (s->n_tools > PROTO_MAX_TOOLS)
        return -EMSGSIZE;
    if (s->n_msgs > PROTO_MAX_MESSAGES || s->n_stop > PROTO_MAX_STOP || s->n_prompts > PROTO_MAX_PROMPTS ||
        s->n_bias > PROTO_MAX_BIAS || s->n > PROTO_MAX_N || s->top_logprobs > PROTO_MAX_TOP_LOGPROBS)
        return -EMSGSIZE;
    for (uint32_t i = 0; i < s->n_stop; i++)
        if (s->stop[i].len > PROTO_MAX_STOP_LEN)
            return -EMSGSIZE;
    for (uint32_t i = 0; i < s->n_prompts; i++)
        if (s->prompts[i].n_tokens > PROTO_MAX_PROMPT_TOKENS)
            return -EMSGSIZE;
    size_t at;
    int rc = frame_begin(out, PROTO_SUBMIT, &at);
    if (rc)
        return rc;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    int with_schema = s->format == PROTO_FORMAT_JSON_SCHEMA;
    rc = msgpack_pack_map(&pk, 13 + (s->has_seed ? 1 : 0) + (s->n_stop ? 1 : 0) + (s->n_prompts ? 1 : 0) +
                                   (s->n_bias ? 1 : 0) + (s->format ? 1 : 0) + (with_schema ? 3 : 0) +
                                   (s->n_tools ? 4 : 0))
             ? -ENOMEM
             : 0;
    if (!rc)
        rc = pk_u64(&pk, "job", s->job_id);
    if (!rc)
        rc = pk_key(&pk, "msgs") || msgpack_pack_array(&pk, s->n_msgs) ? -ENOMEM : 0;
    for (uint32_t i = 0; !rc && i < s->n_msgs; i++) {
        const proto_msg *m = &s->msgs[i];
        if (m->n_calls > PROTO_MAX_CALLS)
            rc = -EMSGSIZE;
        if (!rc)
            rc = msgpack_pack_map(&pk, 4 + (m->n_calls ? 1 : 0)) ? -ENOMEM : 0;
        if (!rc)
            rc = pk_str(&pk, "role", &m->role);
        if (!rc)
            rc = pk_str(&pk, "content", &m->content);
        if (!rc)
            rc = pk_str(&pk, "name", &m->name);
        if (!rc)
            rc = pk_str(&pk, "tcid", &m->tool_call_id);
        if (!rc && m->n_calls) {
            rc = pk_key(&pk, "calls") || msgpack_pack_array(&pk, m->n_calls) ? -ENOMEM : 0;
            for (uint32_t c = 0; !rc && c < m->n_calls; c++) {
                rc = msgpack_pack_array(&pk, 3) ? -ENOMEM : pk_str_val(&pk, &m->calls[c].id);
                if (!rc)
                    rc = pk_str_val(&pk, &m->calls[c].name);
                if (!rc)
                    rc = pk_str_val(&pk, &m->calls[c].arguments);
            }
        }
    }
    if (!rc && s->n_prompts) {
        rc = pk_key(&pk, "prompts") || msgpack_pack_array(&pk, s->n_prompts) ? -ENOMEM : 0;
        for (uint32_t i = 0; !rc && i < s->n_prompts; i++) {
            const proto_prompt *pr = &s->prompts[i];
            if (!pr->tokens) {
                rc = pk_str_val(&pk, &pr->text);
                continue;
            }
            rc = msgpack_pack_array(&pk, pr->n_tokens) ? -ENOMEM : 0;
            for (uint32_t t = 0; !rc && t < pr->n_tokens; t++)
                rc = msgpack_pack_int32(&pk, pr->tokens[t]) ? -ENOMEM : 0;
        }
    }
    if (!rc)
        rc = pk_u64(&pk, "n", s->n ? s->n : 1);
    if (!rc)
        rc = pk_i64(&pk, "max_tokens", s->max_tokens);
    if (!rc)
        rc = pk_f32(&pk, "temp", s->temperature);
    if (!rc)
        rc = pk_f32(&pk, "top_p", s->top_p);
    if (!rc)
        rc = pk_i64(&pk, "top_k", s->top_k);
    if (!rc)
        rc = pk_f32(&pk, "min_p", s->min_p);
    if (!rc)
        rc = pk_f32(&pk, "pres", s->presence_penalty);
    if (!rc)
        rc = pk_f32(&pk, "freq", s->frequency_penalty);
    if (!rc)
        rc = pk_u64(&pk, "lp", s->logprobs);
    if (!rc)
        rc = pk_u64(&pk, "top_lp", s->top_logprobs);
    if (!rc)
        rc = pk_u64(&pk, "echo", s->echo);
    if (!rc && s->n_bias) {
        rc = pk_key(&pk, "bias") || msgpack_pack_array(&pk, s->n_bias) ? -ENOMEM : 0;
        for (uint32_t i = 0; !rc && i < s->n_bias; i++)
            rc = msgpack_pack_array(&pk, 2) || msgpack_pack_int32(&pk, s->bias[i].token) ||
                         msgpack_pack_float(&pk, s->bias[i].bias)
                     ? -ENOMEM
                     : 0;
    }
    if (!rc && s->has_seed)
        rc = pk_u64(&pk, "seed", s->seed);
    if (!rc && s->n_stop) {
        rc = pk_key(&pk, "stop") || msgpack_pack_array(&pk, s->n_stop) ? -ENOMEM : 0;
        for (uint32_t i = 0; !rc && i < s->n_stop; i++)
            rc = pk_str_val(&pk, &s->stop[i]);
    }
    if (!rc && s->format)
        rc = pk_u64(&pk, "fmt", s->format);
    if (!rc && with_schema)
        rc = pk_u64(&pk, "strict", s->strict);
    if (!rc && with_schema)
        rc = pk_str(&pk, "schema", &s->schema);
    if (!rc && with_schema)
        rc = pk_str(&pk, "schema_name", &s->schema_name);
    if (!rc && s->n_tools) {
        rc = pk_key(&pk, "tools") || msgpack_pack_array(&pk, s->n_tools) ? -ENOMEM : 0;
        for (uint32_t i = 0; !rc && i < s->n_tools; i++) {
            const proto_tool *t = &s->tools[i];
            rc = msgpack_pack_array(&pk, 4) ? -ENOMEM : pk_str_val(&pk, &t->name);
            if (!rc)
                rc = pk_str_val(&pk, &t->description);
            if (!rc)
                rc = pk_str_val(&pk, &t->parameters);
            if (!rc)
                rc = msgpack_pack_uint8(&pk, t->strict) ? -ENOMEM : 0;
        }
        if (!rc)
            rc = pk_u64(&pk, "tc", s->tool_choice);
        if (!rc)
            rc = pk_u64(&pk, "par", s->parallel_calls);
        if (!rc)
            rc = pk_str(&pk, "tc_name", &s->tool_name);
    }
    return frame_end(out, at, rc);
}

static int encode_job_only(cm_buf *out, proto_type type, uint64_t job_id) {
    size_t at;
    int rc = frame_begin(out, type, &at);
    if (rc)
        return rc;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    rc = msgpack_pack_map(&pk, 1) ? -ENOMEM : 0;
    if (!rc)
        rc = pk_u64(&pk, "job", job_id);
    return frame_end(out, at, rc);
}

int proto_encode_cancel(cm_buf *out, uint64_t job_id) {
    return encode_job_only(out, PROTO_CANCEL, job_id);
}

static int encode_empty(cm_buf *out, proto_type type) {
    size_t at;
    int rc = frame_begin(out, type, &at);
    if (rc)
        return rc;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    rc = msgpack_pack_map(&pk, 0) ? -ENOMEM : 0;
    return frame_end(out, at, rc);
}

int proto_encode_stats_req(cm_buf *out) {
    return encode_empty(out, PROTO_STATS_REQ);
}

int proto_encode_shutdown(cm_buf *out) {
    return encode_empty(out, PROTO_SHUTDOWN);
}

/* "lp": [[tok, logprob, [[tok, logprob], ...]], ...] */
static int pk_logprobs(msgpack_packer *pk, const proto_event *e) {
    if (e->n_lp > PROTO_MAX_LOGPROBS)
        return -EMSGSIZE;
    int rc = pk_key(pk, "lp") || msgpack_pack_array(pk, e->n_lp) ? -ENOMEM : 0;
    for (uint32_t i = 0; !rc && i < e->n_lp; i++) {
        const proto_logprob *l = &e->lp[i];
        if (l->n_top > PROTO_MAX_TOP_LOGPROBS)
            return -EMSGSIZE;
        rc = msgpack_pack_array(pk, 3) ? -ENOMEM : pk_str_val(pk, &l->tok);
        if (!rc)
            rc = msgpack_pack_float(pk, l->logprob) || msgpack_pack_array(pk, l->n_top) ? -ENOMEM : 0;
        for (uint32_t t = 0; !rc && t < l->n_top; t++) {
            rc = msgpack_pack_array(pk, 2) ? -ENOMEM : pk_str_val(pk, &l->top[t].tok);
            if (!rc)
                rc = msgpack_pack_float(pk, l->top[t].logprob) ? -ENOMEM : 0;
        }
    }
    return rc;
}

int proto_encode_event(cm_buf *out, const proto_event *e) {
    size_t at;
    int rc = frame_begin(out, PROTO_EVENT, &at);
    if (rc)
        return rc;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    int n = 3;
    switch (e->kind) {
    case PROTO_EV_ACCEPTED: n += 1; break;
    case PROTO_EV_DELTA: n += 1 + (e->n_lp ? 1 : 0) + (e->call ? 1 : 0) + (e->call_name.len ? 1 : 0); break;
    case PROTO_EV_FINISH: n += 5; break;
    case PROTO_EV_ERROR: n += 4; break;
    default: break;
    }
    rc = msgpack_pack_map(&pk, (size_t)n) ? -ENOMEM : 0;
    if (!rc)
        rc = pk_u64(&pk, "job", e->job_id);
    if (!rc)
        rc = pk_u64(&pk, "kind", e->kind);
    if (!rc)
        rc = pk_u64(&pk, "choice", e->choice);
    switch (e->kind) {
    case PROTO_EV_ACCEPTED:
        if (!rc)
            rc = pk_u64(&pk, "pt", e->prompt_tokens);
        break;
    case PROTO_EV_DELTA:
        if (!rc)
            rc = pk_str(&pk, "text", &e->text);
        if (!rc && e->n_lp)
            rc = pk_logprobs(&pk, e);
        if (!rc && e->call)
            rc = pk_u64(&pk, "call", e->call);
        if (!rc && e->call_name.len)
            rc = pk_str(&pk, "cname", &e->call_name);
        break;
    case PROTO_EV_FINISH:
        if (!rc)
            rc = pk_u64(&pk, "finish", e->finish_reason);
        if (!rc)
            rc = pk_u64(&pk, "last", e->last);
        if (!rc)
            rc = pk_u64(&pk, "pt", e->prompt_tokens);
        if (!rc)
            rc = pk_u64(&pk, "ct", e->completion_tokens);
        if (!rc)
            rc = pk_u64(&pk, "cached", e->cached_tokens);
        break;
    case PROTO_EV_ERROR:
        if (!rc)
            rc = pk_u64(&pk, "status", e->status);
        if (!rc)
            rc = pk_str(&pk, "code", &e->code);
        if (!rc)
            rc = pk_str(&pk, "msg", &e->message);
        if (!rc)
            rc = pk_str(&pk, "param", &e->param);
        break;
    default:
        break;
    }
    return frame_end(out, at, rc);
}

static const char *const stats_keys[] = {"jobs",     "running",    "waiting",    "kv_free",   "kv_cached",
                                         "kv_total", "tok_gen",    "tok_prompt", "g_masks",   "g_mask_ns",
                                         "g_compiles", "g_hits"};
#define N_STATS (sizeof stats_keys / sizeof *stats_keys)

static void stats_values(const proto_stats *s, uint64_t v[N_STATS]) {
    uint64_t t[N_STATS] = {s->jobs,           s->running,         s->waiting,          s->kv_blocks_free,
                           s->kv_blocks_cached, s->kv_blocks_total, s->tokens_generated, s->tokens_prompt,
                           s->grammar_masks,    s->grammar_mask_ns, s->grammar_compiles, s->grammar_cache_hits};
    memcpy(v, t, sizeof t);
}

int proto_encode_stats(cm_buf *out, const proto_stats *s) {
    size_t at;
    int rc = frame_begin(out, PROTO_STATS, &at);
    if (rc)
        return rc;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    uint64_t v[N_STATS];
    stats_values(s, v);
    rc = msgpack_pack_map(&pk, N_STATS) ? -ENOMEM : 0;
    for (size_t i = 0; !rc && i < N_STATS; i++)
        rc = pk_u64(&pk, stats_keys[i], v[i]);
    return frame_end(out, at, rc);
}

/* ---- raw payload check --------------------------------------------------- */

static uint64_t get_be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Walks one payload of len bytes: exactly one top-level object, every length in
 * bounds, every container count <= the bytes left. 0 or -EBADMSG / -EMSGSIZE. */
static int check_payload(const uint8_t *p, size_t len) {
    size_t i = 0;
    uint64_t pending = 1; // objects still to read
    while (pending) {
        if (i >= len)
            return -EBADMSG;
        uint8_t b = p[i++];
        pending--;
        uint64_t body = 0, items = 0;
        int lenbytes = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            // fixint, negative fixint, nil, false, true
        } else if ((b & 0xf0) == 0x80) {
            items = 2u * (b & 0x0f);
        } else if ((b & 0xf0) == 0x90) {
            items = b & 0x0f;
        } else if ((b & 0xe0) == 0xa0) {
            body = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;           // bin8, str8
            case 0xc5: case 0xda: lenbytes = 2; break;           // bin16, str16
            case 0xc6: case 0xdb: lenbytes = 4; break;           // bin32, str32
            case 0xcc: case 0xd0: body = 1; break;               // u8, i8
            case 0xcd: case 0xd1: body = 2; break;
            case 0xca: case 0xce: case 0xd2: body = 4; break;
            case 0xcb: case 0xcf: case 0xd3: body = 8; break;
            case 0xd4: body = 2; break;                          // fixext1 (type + data)
            case 0xd5: body = 3; break;
            case 0xd6: body = 5; break;
            case 0xd7: body = 9; break;
            case 0xd8: body = 17; break;
            case 0xc7: case 0xc8: case 0xc9: {                   // ext8/16/32
                int n = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
                if (len - i < (size_t)n)
                    return -EBADMSG;
                body = get_be(p + i, n) + 1;
                i += (size_t)n;
                break;
            }
            case 0xdc: case 0xdd: {                              // array16/32
                int n = b == 0xdc ? 2 : 4;
                if (len - i < (size_t)n)
                    return -EBADMSG;
                items = get_be(p + i, n);
                i += (size_t)n;
                break;
            }
            case 0xde: case 0xdf: {                              // map16/32
                int n = b == 0xde ? 2 : 4;
                if (len - i < (size_t)n)
                    return -EBADMSG;
                items = 2 * get_be(p + i, n);
                i += (size_t)n;
                break;
            }
            default:
                return -EBADMSG; // 0xc1 is never used
            }
        }
        if (lenbytes) {
            if (len - i < (size_t)lenbytes)
                return -EBADMSG;
            body = get_be(p + i, lenbytes);
            i += (size_t)lenbytes;
            if (body > PROTO_MAX_STR)
                return -EMSGSIZE;
        }
        if (body > len - i)
            return -EBADMSG;
        i += (size_t)body;
        pending += items;
        if (pending > len - i)
            return -EBADMSG;
    }
    return i == len ? 0 : -EBADMSG;
}

/* ---- typed decoding ------------------------------------------------------ */

static const msgpack_object *map_get(const msgpack_object *m, const char *key) {
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl && !memcmp(k->via.str.ptr, key, kl))
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

/* Unsigned integer field: 0, -ENOENT if absent (when optional), -EBADMSG. */
static int get_uint(const msgpack_object *m, const char *key, uint64_t max, int required, uint64_t *out) {
    const msgpack_object *o = map_get(m, key);
    if (!o)
        return required ? -EBADMSG : -ENOENT;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max)
        return -EBADMSG;
    *out = o->via.u64;
    return 0;
}

static int get_int(const msgpack_object *m, const char *key, int64_t min, int64_t max, int64_t *out) {
    const msgpack_object *o = map_get(m, key);
    if (!o)
        return -ENOENT;
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return -EBADMSG;
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        return -EBADMSG;
    }
    if (v < min || v > max)
        return -EBADMSG;
    *out = v;
    return 0;
}

static int get_float(const msgpack_object *m, const char *key, float *out) {
    const msgpack_object *o = map_get(m, key);
    if (!o)
        return -ENOENT;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = (float)o->via.f64; return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (float)o->via.u64; return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (float)o->via.i64; return 0;
    default: return -EBADMSG;
    }
}

static int copy_str(const msgpack_object *o, uint32_t max, proto_str *out) {
    if (o->type != MSGPACK_OBJECT_STR)
        return -EBADMSG;
    if (o->via.str.size > max)
        return -EMSGSIZE;
    out->p = malloc((size_t)o->via.str.size + 1);
    if (!out->p)
        return -ENOMEM;
    memcpy(out->p, o->via.str.ptr, o->via.str.size);
    out->p[o->via.str.size] = 0;
    out->len = o->via.str.size;
    return 0;
}

/* String field: required or optional (absent -> empty string). */
static int get_str(const msgpack_object *m, const char *key, int required, proto_str *out) {
    const msgpack_object *o = map_get(m, key);
    if (!o) {
        if (required)
            return -EBADMSG;
        out->p = calloc(1, 1);
        out->len = 0;
        return out->p ? 0 : -ENOMEM;
    }
    return copy_str(o, PROTO_MAX_STR, out);
}

#define OPT(call) ((rc = (call)) == -ENOENT ? (rc = 0) : rc)

static int decode_hello(const msgpack_object *m, proto_hello *h) {
    int rc;
    uint64_t u = 0;
    int64_t i = 0;
    if (OPT(get_uint(m, "wid", UINT32_MAX, 0, &u)))
        return rc;
    h->worker_id = (uint32_t)u;
    if (OPT(get_int(m, "pid", INT32_MIN, INT32_MAX, &i)))
        return rc;
    h->pid = (int32_t)i;
    if ((rc = get_str(m, "model", 1, &h->model_id)) || (rc = get_str(m, "arch", 0, &h->arch)))
        return rc;
    if ((rc = get_uint(m, "n_ctx", UINT32_MAX, 1, &u)))
        return rc;
    h->n_ctx = (uint32_t)u;
    u = 0;
    if (OPT(get_uint(m, "n_vocab", UINT32_MAX, 0, &u)))
        return rc;
    h->n_vocab = (uint32_t)u;
    return 0;
}

static int decode_submit(const msgpack_object *m, proto_submit *s) {
    int rc;
    if ((rc = get_uint(m, "job", UINT64_MAX, 1, &s->job_id)))
        return rc;
    const msgpack_object *msgs = map_get(m, "msgs");
    if (!msgs || msgs->type != MSGPACK_OBJECT_ARRAY)
        return -EBADMSG;
    if (msgs->via.array.size > PROTO_MAX_MESSAGES)
        return -EMSGSIZE;
    if (msgs->via.array.size) {
        s->msgs = calloc(msgs->via.array.size, sizeof *s->msgs);
        if (!s->msgs)
            return -ENOMEM;
    }
    for (uint32_t i = 0; i < msgs->via.array.size; i++) {
        const msgpack_object *e = &msgs->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_MAP)
            return -EBADMSG;
        s->n_msgs = i + 1; // so that proto_frame_free releases what was copied
        proto_msg *pm = &s->msgs[i];
        if ((rc = get_str(e, "role", 1, &pm->role)) || (rc = get_str(e, "content", 1, &pm->content)) ||
            (rc = get_str(e, "name", 0, &pm->name)) || (rc = get_str(e, "tcid", 0, &pm->tool_call_id)))
            return rc;
        const msgpack_object *calls = map_get(e, "calls");
        if (!calls)
            continue;
        if (calls->type != MSGPACK_OBJECT_ARRAY)
            return -EBADMSG;
        if (calls->via.array.size > PROTO_MAX_CALLS)
            return -EMSGSIZE;
        if (calls->via.array.size && !(pm->calls = calloc(calls->via.array.size, sizeof *pm->calls)))
            return -ENOMEM;
        for (uint32_t c = 0; c < calls->via.array.size; c++) {
            const msgpack_object *o = &calls->via.array.ptr[c];
            if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3)
                return -EBADMSG;
            pm->n_calls = c + 1;
            if ((rc = copy_str(&o->via.array.ptr[0], PROTO_MAX_STR, &pm->calls[c].id)) ||
                (rc = copy_str(&o->via.array.ptr[1], PROTO_MAX_STR, &pm->calls[c].name)) ||
                (rc = copy_str(&o->via.array.ptr[2], PROTO_MAX_STR, &pm->calls[c].arguments)))
                return rc;
        }
    }
    const msgpack_object *prompts = map_get(m, "prompts");
    if (prompts) {
        if (prompts->type != MSGPACK_OBJECT_ARRAY)
            return -EBADMSG;
        if (prompts->via.array.size > PROTO_MAX_PROMPTS)
            return -EMSGSIZE;
        if (prompts->via.array.size) {
            s->prompts = calloc(prompts->via.array.size, sizeof *s->prompts);
            if (!s->prompts)
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < prompts->via.array.size; i++) {
            const msgpack_object *e = &prompts->via.array.ptr[i];
            proto_prompt *pr = &s->prompts[i];
            s->n_prompts = i + 1;
            if (e->type == MSGPACK_OBJECT_STR) {
                if ((rc = copy_str(e, PROTO_MAX_STR, &pr->text)))
                    return rc;
                continue;
            }
            if (e->type != MSGPACK_OBJECT_ARRAY)
                return -EBADMSG;
            if (e->via.array.size > PROTO_MAX_PROMPT_TOKENS)
                return -EMSGSIZE;
            pr->tokens = malloc(((size_t)e->via.array.size + 1) * sizeof *pr->tokens);
            if (!pr->tokens)
                return -ENOMEM;
            for (uint32_t t = 0; t < e->via.array.size; t++) {
                const msgpack_object *o = &e->via.array.ptr[t];
                if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > INT32_MAX)
                    return -EBADMSG;
                pr->tokens[t] = (int32_t)o->via.u64;
            }
            pr->n_tokens = e->via.array.size;
        }
    }
    uint64_t u = 1;
    if (OPT(get_uint(m, "n", PROTO_MAX_N, 0, &u)))
        return rc;
    if (u < 1)
        return -EBADMSG;
    s->n = (uint32_t)u;
    int64_t v = -1;
    s->max_tokens = -1;
    if (OPT(get_int(m, "max_tokens", -1, INT32_MAX, &v)))
        return rc;
    s->max_tokens = (int32_t)v;
    s->temperature = 1.0f;
    s->top_p = 1.0f;
    if (OPT(get_float(m, "temp", &s->temperature)) || OPT(get_float(m, "top_p", &s->top_p)) ||
        OPT(get_float(m, "min_p", &s->min_p)) ||
        OPT(get_float(m, "pres", &s->presence_penalty)) || OPT(get_float(m, "freq", &s->frequency_penalty)))
        return rc;
    if (!(s->temperature >= 0 && s->temperature <= 1e6f) || !(s->top_p >= 0 && s->top_p <= 1) ||
        !(s->min_p >= 0 && s->min_p <= 1) || !isfinite(s->presence_penalty) || !isfinite(s->frequency_penalty))
        return -EBADMSG; // NaN included
    v = 0;
    if (OPT(get_int(m, "top_k", 0, INT32_MAX, &v)))
        return rc;
    s->top_k = (int32_t)v;
    u = 0;
    if (OPT(get_uint(m, "lp", 1, 0, &u)))
        return rc;
    s->logprobs = (uint8_t)u;
    u = 0;
    if (OPT(get_uint(m, "top_lp", PROTO_MAX_TOP_LOGPROBS, 0, &u)))
        return rc;
    s->top_logprobs = (uint8_t)u;
    u = 0;
    if (OPT(get_uint(m, "echo", 1, 0, &u)))
        return rc;
    s->echo = (uint8_t)u;
    const msgpack_object *bias = map_get(m, "bias");
    if (bias) {
        if (bias->type != MSGPACK_OBJECT_ARRAY)
            return -EBADMSG;
        if (bias->via.array.size > PROTO_MAX_BIAS)
            return -EMSGSIZE;
        if (bias->via.array.size) {
            s->bias = calloc(bias->via.array.size, sizeof *s->bias);
            if (!s->bias)
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < bias->via.array.size; i++) {
            const msgpack_object *e = &bias->via.array.ptr[i];
            if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2)
                return -EBADMSG;
            const msgpack_object *t = &e->via.array.ptr[0], *b = &e->via.array.ptr[1];
            if (t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 > INT32_MAX)
                return -EBADMSG;
            if (b->type != MSGPACK_OBJECT_FLOAT32 && b->type != MSGPACK_OBJECT_FLOAT64)
                return -EBADMSG;
            s->bias[i].token = (int32_t)t->via.u64;
            s->bias[i].bias = (float)b->via.f64;
            s->n_bias = i + 1;
        }
    }
    rc = get_uint(m, "seed", UINT64_MAX, 0, &s->seed);
    if (rc && rc != -ENOENT)
        return rc;
    s->has_seed = rc == 0;
    const msgpack_object *stop = map_get(m, "stop");
    if (stop) {
        if (stop->type != MSGPACK_OBJECT_ARRAY)
            return -EBADMSG;
        if (stop->via.array.size > PROTO_MAX_STOP)
            return -EMSGSIZE;
        if (stop->via.array.size) {
            s->stop = calloc(stop->via.array.size, sizeof *s->stop);
            if (!s->stop)
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < stop->via.array.size; i++) {
            s->n_stop = i + 1;
            if ((rc = copy_str(&stop->via.array.ptr[i], PROTO_MAX_STOP_LEN, &s->stop[i])))
                return rc;
        }
    }
    u = 0;
    if (OPT(get_uint(m, "fmt", PROTO_FORMAT_JSON_SCHEMA, 0, &u)))
        return rc;
    s->format = (uint8_t)u;
    if (s->format == PROTO_FORMAT_JSON_SCHEMA) {
        u = 0;
        if (OPT(get_uint(m, "strict", 1, 0, &u)))
            return rc;
        s->strict = (uint8_t)u;
        const msgpack_object *o = map_get(m, "schema"), *nm = map_get(m, "schema_name");
        if (!o || !nm)
            return -EBADMSG;
        if ((rc = copy_str(o, PROTO_MAX_STR, &s->schema)) || (rc = copy_str(nm, PROTO_MAX_STR, &s->schema_name)))
            return rc;
    }
    const msgpack_object *tools = map_get(m, "tools");
    if (tools) {
        if (tools->type != MSGPACK_OBJECT_ARRAY)
            return -EBADMSG;
        if (tools->via.array.size > PROTO_MAX_TOOLS)
            return -EMSGSIZE;
        if (tools->via.array.size && !(s->tools = calloc(tools->via.array.size, sizeof *s->tools)))
            return -ENOMEM;
        for (uint32_t i = 0; i < tools->via.array.size; i++) {
            const msgpack_object *e = &tools->via.array.ptr[i];
            if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 4)
                return -EBADMSG;
            proto_tool *t = &s->tools[i];
            s->n_tools = i + 1;
            const msgpack_object *st = &e->via.array.ptr[3];
            if ((rc = copy_str(&e->via.array.ptr[0], PROTO_MAX_STR, &t->name)) ||
                (rc = copy_str(&e->via.array.ptr[1], PROTO_MAX_STR, &t->description)) ||
                (rc = copy_str(&e->via.array.ptr[2], PROTO_MAX_STR, &t->parameters)))
                return rc;
            if (st->type != MSGPACK_OBJECT_POSITIVE_INTEGER || st->via.u64 > 1)
                return -EBADMSG;
            t->strict = (uint8_t)st->via.u64;
        }
        u = 0;
        if ((rc = get_uint(m, "tc", PROTO_TOOLS_NAMED, 0, &u)))
            return rc == -ENOENT ? -EBADMSG : rc;
        s->tool_choice = (uint8_t)u;
        u = 0;
        if ((rc = get_uint(m, "par", 1, 0, &u)))
            return rc == -ENOENT ? -EBADMSG : rc;
        s->parallel_calls = (uint8_t)u;
        if ((rc = get_str(m, "tc_name", 1, &s->tool_name)))
            return rc;
    }
    return 0;
}

/* [tok, logprob] -> *out (tok copied). */
static int decode_top(const msgpack_object *o, proto_top *out) {
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 2)
        return -EBADMSG;
    const msgpack_object *lp = &o->via.array.ptr[1];
    if (lp->type != MSGPACK_OBJECT_FLOAT32 && lp->type != MSGPACK_OBJECT_FLOAT64)
        return -EBADMSG;
    out->logprob = (float)lp->via.f64;
    return copy_str(&o->via.array.ptr[0], PROTO_MAX_STR, &out->tok);
}

static int decode_logprobs(const msgpack_object *lp, proto_event *e) {
    if (lp->type != MSGPACK_OBJECT_ARRAY)
        return -EBADMSG;
    if (lp->via.array.size > PROTO_MAX_LOGPROBS)
        return -EMSGSIZE;
    if (!lp->via.array.size)
        return 0;
    e->lp = calloc(lp->via.array.size, sizeof *e->lp);
    if (!e->lp)
        return -ENOMEM;
    for (uint32_t i = 0; i < lp->via.array.size; i++) {
        const msgpack_object *o = &lp->via.array.ptr[i];
        proto_logprob *l = &e->lp[i];
        e->n_lp = i + 1;
        proto_top self;
        int rc = decode_top(o, &self);
        if (rc)
            return rc;
        l->tok = self.tok;
        l->logprob = self.logprob;
        if (o->via.array.size != 3 || o->via.array.ptr[2].type != MSGPACK_OBJECT_ARRAY)
            return -EBADMSG;
        const msgpack_object *top = &o->via.array.ptr[2];
        if (top->via.array.size > PROTO_MAX_TOP_LOGPROBS)
            return -EMSGSIZE;
        if (top->via.array.size) {
            l->top = calloc(top->via.array.size, sizeof *l->top);
            if (!l->top)
                return -ENOMEM;
        }
        for (uint32_t t = 0; t < top->via.array.size; t++) {
            l->n_top = t + 1;
            if ((rc = decode_top(&top->via.array.ptr[t], &l->top[t])))
                return rc;
        }
    }
    return 0;
}

static int decode_event(const msgpack_object *m, proto_event *e) {
    int rc;
    uint64_t u = 0;
    if ((rc = get_uint(m, "job", UINT64_MAX, 1, &e->job_id)) || (rc = get_uint(m, "kind", 255, 1, &u)))
        return rc;
    if (u < PROTO_EV_ACCEPTED || u > PROTO_EV_ERROR)
        return -EBADMSG;
    e->kind = (uint8_t)u;
    u = 0;
    if (OPT(get_uint(m, "choice", UINT32_MAX, 0, &u)))
        return rc;
    e->choice = (uint32_t)u;
    u = 0;
    if (OPT(get_uint(m, "finish", 255, 0, &u)))
        return rc;
    e->finish_reason = (uint8_t)u;
    if (e->kind == PROTO_EV_FINISH && (u < PROTO_FINISH_STOP || u > PROTO_FINISH_TOOL_CALLS))
        return -EBADMSG;
    u = 0;
    if (OPT(get_uint(m, "last", 1, 0, &u)))
        return rc;
    e->last = (uint8_t)u;
    u = 0;
    if (OPT(get_uint(m, "pt", UINT32_MAX, 0, &u)))
        return rc;
    e->prompt_tokens = (uint32_t)u;
    u = 0;
    if (OPT(get_uint(m, "ct", UINT32_MAX, 0, &u)))
        return rc;
    e->completion_tokens = (uint32_t)u;
    u = 0;
    if (OPT(get_uint(m, "cached", UINT32_MAX, 0, &u)))
        return rc;
    e->cached_tokens = (uint32_t)u;
    u = 0;
    if (OPT(get_uint(m, "status", 999, 0, &u)))
        return rc;
    e->status = (uint16_t)u;
    u = 0;
    if (OPT(get_uint(m, "call", PROTO_MAX_CALLS, 0, &u)))
        return rc;
    e->call = (uint32_t)u;
    if ((rc = get_str(m, "cname", 0, &e->call_name)))
        return rc;
    if ((rc = get_str(m, "text", e->kind == PROTO_EV_DELTA, &e->text)) || (rc = get_str(m, "code", 0, &e->code)) ||
        (rc = get_str(m, "msg", 0, &e->message)) || (rc = get_str(m, "param", 0, &e->param)))
        return rc;
    if (e->kind == PROTO_EV_ERROR && (e->status < 400 || e->status > 599))
        return -EBADMSG;
    const msgpack_object *lp = map_get(m, "lp");
    return lp ? decode_logprobs(lp, e) : 0;
}

static int decode_stats(const msgpack_object *m, proto_stats *s) {
    uint64_t v[N_STATS] = {0};
    int rc;
    for (size_t i = 0; i < N_STATS; i++)
        if (OPT(get_uint(m, stats_keys[i], i < 6 ? UINT32_MAX : UINT64_MAX, 0, &v[i])))
            return rc;
    *s = (proto_stats){.jobs = (uint32_t)v[0],
                       .running = (uint32_t)v[1],
                       .waiting = (uint32_t)v[2],
                       .kv_blocks_free = (uint32_t)v[3],
                       .kv_blocks_cached = (uint32_t)v[4],
                       .kv_blocks_total = (uint32_t)v[5],
                       .tokens_generated = v[6],
                       .tokens_prompt = v[7],
                       .grammar_masks = v[8],
                       .grammar_mask_ns = v[9],
                       .grammar_compiles = v[10],
                       .grammar_cache_hits = v[11]};
    return 0;
}

ssize_t proto_decode(const uint8_t *buf, size_t len, proto_frame *out) {
    memset(out, 0, sizeof *out);
    // Check what is already here before waiting for more: a bad magic is
    // reported as soon as its first bytes arrive.
    static const uint8_t magic[4] = {0x4B, 0x4C, 0x4D, 0x46};
    if (memcmp(buf, magic, len < 4 ? len : 4))
        return -EPROTO;
    if (len < PROTO_HDR_SIZE)
        return 0;
    uint16_t version = (uint16_t)(buf[4] << 8 | buf[5]);
    uint16_t type = (uint16_t)(buf[6] << 8 | buf[7]);
    uint32_t plen = get_be32(buf + 8);
    if (version != PROTO_VERSION)
        return -EPROTONOSUPPORT;
    if (type < PROTO_HELLO || type > PROTO_SHUTDOWN)
        return -EPROTO;
    if (plen > PROTO_MAX_PAYLOAD)
        return -EMSGSIZE;
    if (len - PROTO_HDR_SIZE < plen)
        return 0;
    const uint8_t *payload = buf + PROTO_HDR_SIZE;
    int rc = check_payload(payload, plen);
    if (rc)
        return rc;

    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, (const char *)payload, plen, &off) != MSGPACK_UNPACK_SUCCESS || off != plen) {
        rc = -EBADMSG;
        goto done;
    }
    if (u.data.type != MSGPACK_OBJECT_MAP) {
        rc = -EBADMSG;
        goto done;
    }
    out->type = type;
    switch (type) {
    case PROTO_HELLO: rc = decode_hello(&u.data, &out->u.hello); break;
    case PROTO_SUBMIT: rc = decode_submit(&u.data, &out->u.submit); break;
    case PROTO_CANCEL: rc = get_uint(&u.data, "job", UINT64_MAX, 1, &out->u.cancel_job_id); break;
    case PROTO_EVENT: rc = decode_event(&u.data, &out->u.event); break;
    case PROTO_STATS: rc = decode_stats(&u.data, &out->u.stats); break;
    default: rc = 0; break; // STATS_REQ, SHUTDOWN carry nothing
    }
done:
    msgpack_unpacked_destroy(&u);
    if (rc) {
        proto_frame_free(out);
        return rc;
    }
    return (ssize_t)(PROTO_HDR_SIZE + plen);
}

static void str_free(proto_str *s) {
    free(s->p);
    s->p = NULL;
    s->len = 0;
}

void proto_frame_free(proto_frame *f) {
    if (!f)
        return;
    switch (f->type) {
    case PROTO_HELLO:
        str_free(&f->u.hello.model_id);
        str_free(&f->u.hello.arch);
        break;
    case PROTO_SUBMIT:
        for (uint32_t i = 0; i < f->u.submit.n_msgs; i++) {
            proto_msg *m = &f->u.submit.msgs[i];
            str_free(&m->role);
            str_free(&m->content);
            str_free(&m->name);
            str_free(&m->tool_call_id);
            for (uint32_t c = 0; c < m->n_calls; c++) {
                str_free(&m->calls[c].id);
                str_free(&m->calls[c].name);
                str_free(&m->calls[c].arguments);
            }
            free(m->calls);
        }
        free(f->u.submit.msgs);
        for (uint32_t i = 0; i < f->u.submit.n_stop; i++)
            str_free(&f->u.submit.stop[i]);
        free(f->u.submit.stop);
        str_free(&f->u.submit.schema);
        str_free(&f->u.submit.schema_name);
        for (uint32_t i = 0; i < f->u.submit.n_tools; i++) {
            str_free(&f->u.submit.tools[i].name);
            str_free(&f->u.submit.tools[i].description);
            str_free(&f->u.submit.tools[i].parameters);
        }
        free(f->u.submit.tools);
        str_free(&f->u.submit.tool_name);
        for (uint32_t i = 0; i < f->u.submit.n_prompts; i++) {
            str_free(&f->u.submit.prompts[i].text);
            free(f->u.submit.prompts[i].tokens);
        }
        free(f->u.submit.prompts);
        free(f->u.submit.bias);
        break;
    case PROTO_EVENT:
        for (uint32_t i = 0; i < f->u.event.n_lp; i++) {
            str_free(&f->u.event.lp[i].tok);
            for (uint32_t t = 0; t < f->u.event.lp[i].n_top; t++)
                str_free(&f->u.event.lp[i].top[t].tok);
            free(f->u.event.lp[i].top);
        }
        free(f->u.event.lp);
        str_free(&f->u.event.text);
        str_free(&f->u.event.code);
        str_free(&f->u.event.message);
        str_free(&f->u.event.param);
        str_free(&f->u.event.call_name);
        break;
    default:
        break;
    }
    memset(f, 0, sizeof *f);
}

const char *proto_strerror(int err) {
    switch (err) {
    case -EPROTO: return "bad magic or unknown frame type";
    case -EPROTONOSUPPORT: return "protocol version mismatch (gateway and worker binaries differ; rebuild both)";
    case -EMSGSIZE: return "frame or field over its size cap";
    case -EBADMSG: return "malformed frame payload";
    case -ENOMEM: return "out of memory";
    default: return "unknown error";
    }
}
