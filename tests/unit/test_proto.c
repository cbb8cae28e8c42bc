/* Unit tests for proto/: round trips, partial input, bad headers, corrupt payloads. */
#include "proto/proto.c"

#include "tests/unit/kt.h"

static proto_str S(const char *s) {
    proto_str r = {(char *)s, (uint32_t)strlen(s)};
    return r;
}

/* Decodes exactly one frame from b, expecting success. */
static ssize_t decode_one(const cm_buf *b, proto_frame *f) {
    ssize_t n = proto_decode(b->data, b->len, f);
    ASSERT_EQ(n, (ssize_t)b->len);
    return n;
}

static void test_submit_roundtrip(void) {
    cm_buf b = CM_BUF_INIT;
    proto_msg msgs[3] = {{.role = S("system"), .content = S("be brief")}, {.role = S("user"), .content = S("h\xc3\xa9llo")}, {.role = S("assistant"), .content = S("")}};
    msgs[2].content.p = "a\0b";
    msgs[2].content.len = 3; // embedded NUL survives
    proto_str stop[2] = {S("\n\n"), S("END")};
    proto_submit s = {.job_id = UINT64_MAX - 1, .n_msgs = 3, .msgs = msgs, .max_tokens = 77, .temperature = 0.25f,
                      .top_p = 0.5f, .top_k = 40, .has_seed = 1, .seed = 12345678901234ULL, .n_stop = 2, .stop = stop};
    ASSERT_EQ(proto_encode_submit(&b, &s), 0);
    proto_frame f;
    decode_one(&b, &f);
    ASSERT_EQ(f.type, PROTO_SUBMIT);
    ASSERT_TRUE(f.u.submit.job_id == UINT64_MAX - 1);
    ASSERT_EQ(f.u.submit.n_msgs, 3);
    ASSERT_STREQ(f.u.submit.msgs[1].content.p, "h\xc3\xa9llo");
    ASSERT_EQ(f.u.submit.msgs[2].content.len, 3);
    ASSERT_TRUE(!memcmp(f.u.submit.msgs[2].content.p, "a\0b", 3));
    ASSERT_EQ(f.u.submit.max_tokens, 77);
    ASSERT_NEAR(f.u.submit.temperature, 0.25, 0);
    ASSERT_NEAR(f.u.submit.top_p, 0.5, 0);
    ASSERT_EQ(f.u.submit.top_k, 40);
    ASSERT_EQ(f.u.submit.has_seed, 1);
    ASSERT_TRUE(f.u.submit.seed == 12345678901234ULL);
    ASSERT_EQ(f.u.submit.n_stop, 2);
    ASSERT_STREQ(f.u.submit.stop[1].p, "END");
    proto_frame_free(&f);

    // tool calls of an assistant turn and a tool result's call id
    cm_buf_free(&b);
    proto_call calls[2] = {{S("call_1"), S("get_weather"), S("{\"city\":\"Paris\"}")}, {S("c2"), S("f"), S("{}")}};
    proto_msg tm[2] = {{.role = S("assistant"), .content = S(""), .n_calls = 2, .calls = calls},
                       {.role = S("tool"), .content = S("18C"), .tool_call_id = S("call_1"), .name = S("get_weather")}};
    proto_submit ts = {.job_id = 2, .n_msgs = 2, .msgs = tm, .max_tokens = 5, .temperature = 1, .top_p = 1};
    ASSERT_EQ(proto_encode_submit(&b, &ts), 0);
    decode_one(&b, &f);
    ASSERT_EQ(f.u.submit.msgs[0].n_calls, 2);
    ASSERT_STREQ(f.u.submit.msgs[0].calls[0].name.p, "get_weather");
    ASSERT_STREQ(f.u.submit.msgs[0].calls[0].arguments.p, "{\"city\":\"Paris\"}");
    ASSERT_STREQ(f.u.submit.msgs[0].calls[1].id.p, "c2");
    ASSERT_STREQ(f.u.submit.msgs[1].tool_call_id.p, "call_1");
    ASSERT_STREQ(f.u.submit.msgs[1].name.p, "get_weather");
    ASSERT_EQ(f.u.submit.msgs[1].n_calls, 0);
    proto_frame_free(&f);

    // response formats: a JSON schema with its name and strict flag; json_object
    cm_buf_free(&b);
    proto_submit js = {.job_id = 9, .n_msgs = 1, .msgs = msgs, .temperature = 1, .top_p = 1,
                       .format = PROTO_FORMAT_JSON_SCHEMA, .strict = 1, .schema = S("{\"type\":\"object\"}"),
                       .schema_name = S("obj")};
    ASSERT_EQ(proto_encode_submit(&b, &js), 0);
    decode_one(&b, &f);
    ASSERT_EQ(f.u.submit.format, PROTO_FORMAT_JSON_SCHEMA);
    ASSERT_EQ(f.u.submit.strict, 1);
    ASSERT_STREQ(f.u.submit.schema.p, "{\"type\":\"object\"}");
    ASSERT_STREQ(f.u.submit.schema_name.p, "obj");
    proto_frame_free(&f);
    cm_buf_free(&b);
    js.format = PROTO_FORMAT_JSON_OBJECT;
    ASSERT_EQ(proto_encode_submit(&b, &js), 0);
    decode_one(&b, &f);
    ASSERT_EQ(f.u.submit.format, PROTO_FORMAT_JSON_OBJECT);
    ASSERT_EQ(f.u.submit.schema.len, 0);
    proto_frame_free(&f);
    cm_buf_free(&b);
    js.format = 7;
    ASSERT_EQ(proto_encode_submit(&b, &js), -EINVAL);

    // raw prompts (text and token ids), n, penalties, logit_bias, logprobs, echo
    cm_buf_free(&b);
    int32_t ids[3] = {2, 0, 262143};
    proto_prompt prompts[2] = {{.text = S("Once upon")}, {.tokens = ids, .n_tokens = 3}};
    proto_bias bias[2] = {{5, -100.0f}, {7, 2.5f}};
    proto_submit r = {.job_id = 3, .n_prompts = 2, .prompts = prompts, .n = 4, .max_tokens = 16, .temperature = 1,
                      .top_p = 1, .presence_penalty = 0.5f, .frequency_penalty = -1.25f, .n_bias = 2, .bias = bias,
                      .logprobs = 1, .top_logprobs = 20, .echo = 1};
    ASSERT_EQ(proto_encode_submit(&b, &r), 0);
    decode_one(&b, &f);
    ASSERT_EQ(f.u.submit.n_msgs, 0);
    ASSERT_EQ(f.u.submit.n_prompts, 2);
    ASSERT_STREQ(f.u.submit.prompts[0].text.p, "Once upon");
    ASSERT_TRUE(f.u.submit.prompts[0].tokens == NULL);
    ASSERT_EQ(f.u.submit.prompts[1].n_tokens, 3);
    ASSERT_EQ(f.u.submit.prompts[1].tokens[2], 262143);
    ASSERT_EQ(f.u.submit.n, 4);
    ASSERT_NEAR(f.u.submit.presence_penalty, 0.5, 0);
    ASSERT_NEAR(f.u.submit.frequency_penalty, -1.25, 0);
    ASSERT_EQ(f.u.submit.n_bias, 2);
    ASSERT_EQ(f.u.submit.bias[0].token, 5);
    ASSERT_NEAR(f.u.submit.bias[0].bias, -100, 0);
    ASSERT_EQ(f.u.submit.logprobs, 1);
    ASSERT_EQ(f.u.submit.top_logprobs, 20);
    ASSERT_EQ(f.u.submit.echo, 1);
    proto_frame_free(&f);
    cm_buf_free(&b);
    r.top_logprobs = PROTO_MAX_TOP_LOGPROBS + 1;
    ASSERT_EQ(proto_encode_submit(&b, &r), -EMSGSIZE);
    r.top_logprobs = 0;
    r.n = PROTO_MAX_N + 1;
    ASSERT_EQ(proto_encode_submit(&b, &r), -EMSGSIZE);
    ASSERT_EQ(b.len, 0);

    // defaults when optional fields are absent
    cm_buf_free(&b);
    proto_submit d = {.job_id = 1, .n_msgs = 1, .msgs = msgs, .max_tokens = -1, .temperature = 1, .top_p = 1};
    ASSERT_EQ(proto_encode_submit(&b, &d), 0);
    decode_one(&b, &f);
    ASSERT_EQ(f.u.submit.has_seed, 0);
    ASSERT_EQ(f.u.submit.max_tokens, -1);
    ASSERT_EQ(f.u.submit.n_stop, 0);
    ASSERT_EQ(f.u.submit.n, 1);
    ASSERT_EQ(f.u.submit.n_prompts, 0);
    ASSERT_EQ(f.u.submit.logprobs, 0);
    proto_frame_free(&f);
    cm_buf_free(&b);

    // caps are enforced on encode
    proto_str longstop = {(char *)"x", PROTO_MAX_STOP_LEN + 1};
    proto_submit bad = d;
    bad.n_stop = 1;
    bad.stop = &longstop;
    ASSERT_EQ(proto_encode_submit(&b, &bad), -EMSGSIZE);
    ASSERT_EQ(b.len, 0);
    cm_buf_free(&b);
}

static void test_logprob_event(void) {
    cm_buf b = CM_BUF_INIT;
    proto_top top[2] = {{S("\xe2\x80"), -0.25f}, {S(" the"), -1.5f}};
    proto_logprob lp[2] = {{S("\xe2\x80"), -0.25f, 2, top}, {S("x"), -3.0f, 0, NULL}};
    proto_event e = {.job_id = 4, .kind = PROTO_EV_DELTA, .choice = 3, .text = S(""), .n_lp = 2, .lp = lp};
    proto_event fin = {.job_id = 4, .kind = PROTO_EV_FINISH, .choice = 3, .finish_reason = PROTO_FINISH_STOP,
                       .last = 1, .completion_tokens = 9};
    ASSERT_EQ(proto_encode_event(&b, &e), 0);
    ASSERT_EQ(proto_encode_event(&b, &fin), 0);
    proto_frame f;
    ssize_t n = proto_decode(b.data, b.len, &f);
    ASSERT_TRUE(n > 0);
    ASSERT_EQ(f.u.event.choice, 3);
    ASSERT_EQ(f.u.event.n_lp, 2);
    ASSERT_EQ(f.u.event.lp[0].tok.len, 2); // partial UTF-8 bytes survive
    ASSERT_TRUE(!memcmp(f.u.event.lp[0].tok.p, "\xe2\x80", 2));
    ASSERT_EQ(f.u.event.lp[0].n_top, 2);
    ASSERT_STREQ(f.u.event.lp[0].top[1].tok.p, " the");
    ASSERT_NEAR(f.u.event.lp[0].top[1].logprob, -1.5, 0);
    ASSERT_NEAR(f.u.event.lp[1].logprob, -3.0, 0);
    ASSERT_EQ(f.u.event.lp[1].n_top, 0);
    proto_frame_free(&f);
    ssize_t m = proto_decode(b.data + n, b.len - (size_t)n, &f);
    ASSERT_TRUE(m > 0);
    ASSERT_EQ(f.u.event.last, 1);
    ASSERT_EQ(f.u.event.choice, 3);
    proto_frame_free(&f);
    // too many alternatives per token
    cm_buf_free(&b);
    lp[1].n_top = PROTO_MAX_TOP_LOGPROBS + 1;
    lp[1].top = top;
    ASSERT_EQ(proto_encode_event(&b, &e), -EMSGSIZE);
    cm_buf_free(&b);
}

/* Tools in a submit; tool-call deltas and the tool_calls finish. */
static void test_tools_roundtrip(void) {
    cm_buf b = CM_BUF_INIT;
    proto_msg m = {.role = S("user"), .content = S("hi")};
    proto_tool t[2] = {{S("get_weather"), S("Weather"), S("{\"type\":\"object\"}"), 1}, {S("ping"), S(""), S("{}"), 0}};
    proto_submit s = {.job_id = 5, .n_msgs = 1, .msgs = &m, .temperature = 1, .top_p = 1, .n_tools = 2, .tools = t,
                      .tool_choice = PROTO_TOOLS_NAMED, .parallel_calls = 1, .tool_name = S("ping")};
    ASSERT_EQ(proto_encode_submit(&b, &s), 0);
    proto_frame f;
    ASSERT_TRUE(proto_decode(b.data, b.len, &f) > 0);
    ASSERT_EQ(f.u.submit.n_tools, 2);
    ASSERT_STREQ(f.u.submit.tools[0].name.p, "get_weather");
    ASSERT_STREQ(f.u.submit.tools[0].description.p, "Weather");
    ASSERT_STREQ(f.u.submit.tools[0].parameters.p, "{\"type\":\"object\"}");
    ASSERT_EQ(f.u.submit.tools[0].strict, 1);
    ASSERT_EQ(f.u.submit.tools[1].strict, 0);
    ASSERT_EQ(f.u.submit.tool_choice, PROTO_TOOLS_NAMED);
    ASSERT_EQ(f.u.submit.parallel_calls, 1);
    ASSERT_STREQ(f.u.submit.tool_name.p, "ping");
    proto_frame_free(&f);
    cm_buf_free(&b);
    s.tool_choice = 9;
    ASSERT_EQ(proto_encode_submit(&b, &s), -EINVAL);
    cm_buf_free(&b);
    proto_event d = {.job_id = 5, .kind = PROTO_EV_DELTA, .choice = 1, .call = 2, .call_name = S("ping"), .text = S("")};
    proto_event a = {.job_id = 5, .kind = PROTO_EV_DELTA, .choice = 1, .call = 2, .text = S("{\"a\"")};
    proto_event fin = {.job_id = 5, .kind = PROTO_EV_FINISH, .finish_reason = PROTO_FINISH_TOOL_CALLS, .last = 1};
    ASSERT_EQ(proto_encode_event(&b, &d), 0);
    ASSERT_EQ(proto_encode_event(&b, &a), 0);
    ASSERT_EQ(proto_encode_event(&b, &fin), 0);
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        ssize_t n = proto_decode(b.data + at, b.len - at, &f);
        ASSERT_TRUE(n > 0);
        at += (size_t)n;
        if (i == 0) {
            ASSERT_EQ(f.u.event.call, 2);
            ASSERT_STREQ(f.u.event.call_name.p, "ping");
        } else if (i == 1) {
            ASSERT_EQ(f.u.event.call, 2);
            ASSERT_EQ(f.u.event.call_name.len, 0);
            ASSERT_STREQ(f.u.event.text.p, "{\"a\"");
        } else {
            ASSERT_EQ(f.u.event.finish_reason, PROTO_FINISH_TOOL_CALLS);
        }
        proto_frame_free(&f);
    }
    cm_buf_free(&b);
}

static void test_events_and_others(void) {
    cm_buf b = CM_BUF_INIT;
    proto_event evs[4] = {
        {.job_id = 9, .kind = PROTO_EV_ACCEPTED, .prompt_tokens = 12},
        {.job_id = 9, .kind = PROTO_EV_DELTA, .text = S("\xf0\x9f\x98\x80 hi")},
        {.job_id = 9, .kind = PROTO_EV_FINISH, .finish_reason = PROTO_FINISH_LENGTH, .prompt_tokens = 12,
         .completion_tokens = 5, .cached_tokens = 3},
        {.job_id = 10, .kind = PROTO_EV_ERROR, .status = 400, .code = S("context_length_exceeded"),
         .message = S("too long"), .param = S("messages")},
    };
    for (int i = 0; i < 4; i++)
        ASSERT_EQ(proto_encode_event(&b, &evs[i]), 0);
    proto_hello h = {.worker_id = 2, .pid = 4242, .model_id = S("m.gguf"), .arch = S("gemma3"), .n_ctx = 8192,
                     .n_vocab = 262144};
    ASSERT_EQ(proto_encode_hello(&b, &h), 0);
    ASSERT_EQ(proto_encode_cancel(&b, 77), 0);
    proto_stats st = {.jobs = 1, .running = 2, .waiting = 3, .kv_blocks_free = 4, .kv_blocks_cached = 7,
                      .kv_blocks_total = 5, .tokens_generated = 8, .tokens_prompt = 6};
    ASSERT_EQ(proto_encode_stats(&b, &st), 0);
    ASSERT_EQ(proto_encode_stats_req(&b), 0);
    ASSERT_EQ(proto_encode_shutdown(&b), 0);

    // Feed the stream byte by byte: every prefix short of a frame says "need more".
    size_t off = 0;
    int idx = 0;
    uint16_t want[] = {PROTO_EVENT, PROTO_EVENT, PROTO_EVENT, PROTO_EVENT, PROTO_HELLO,
                       PROTO_CANCEL, PROTO_STATS, PROTO_STATS_REQ, PROTO_SHUTDOWN};
    while (off < b.len) {
        proto_frame f;
        size_t avail = 0;
        ssize_t n = 0;
        while (!n && off + avail < b.len) {
            avail++;
            n = proto_decode(b.data + off, avail, &f);
        }
        ASSERT_TRUE(n > 0);
        if (n <= 0)
            break;
        ASSERT_EQ(f.type, want[idx]);
        if (idx == 1)
            ASSERT_STREQ(f.u.event.text.p, "\xf0\x9f\x98\x80 hi");
        if (idx == 2) {
            ASSERT_EQ(f.u.event.finish_reason, PROTO_FINISH_LENGTH);
            ASSERT_EQ(f.u.event.completion_tokens, 5);
            ASSERT_EQ(f.u.event.cached_tokens, 3);
        }
        if (idx == 3) {
            ASSERT_EQ(f.u.event.status, 400);
            ASSERT_STREQ(f.u.event.code.p, "context_length_exceeded");
            ASSERT_STREQ(f.u.event.param.p, "messages");
        }
        if (idx == 4) {
            ASSERT_STREQ(f.u.hello.model_id.p, "m.gguf");
            ASSERT_EQ(f.u.hello.n_ctx, 8192);
            ASSERT_EQ(f.u.hello.pid, 4242);
        }
        if (idx == 5)
            ASSERT_TRUE(f.u.cancel_job_id == 77);
        if (idx == 6) {
            ASSERT_TRUE(f.u.stats.tokens_prompt == 6);
            ASSERT_EQ(f.u.stats.kv_blocks_cached, 7);
            ASSERT_EQ(f.u.stats.jobs, 1);
        }
        proto_frame_free(&f);
        off += (size_t)n;
        idx++;
    }
    ASSERT_EQ(idx, 9);
    cm_buf_free(&b);
}

static void test_bad_headers(void) {
    cm_buf b = CM_BUF_INIT;
    ASSERT_EQ(proto_encode_cancel(&b, 1), 0);
    proto_frame f;
    uint8_t *d = b.data;

    d[0] ^= 1;
    ASSERT_EQ(proto_decode(d, 1, &f), -EPROTO); // rejected at the first byte
    d[0] ^= 1;
    d[5] = 9;
    ASSERT_EQ(proto_decode(d, b.len, &f), -EPROTONOSUPPORT);
    d[5] = PROTO_VERSION;
    d[7] = 99;
    ASSERT_EQ(proto_decode(d, b.len, &f), -EPROTO);
    d[7] = PROTO_CANCEL;
    uint8_t big[PROTO_HDR_SIZE];
    memcpy(big, d, PROTO_HDR_SIZE);
    put_be32(big + 8, PROTO_MAX_PAYLOAD + 1);
    ASSERT_EQ(proto_decode(big, sizeof big, &f), -EMSGSIZE);
    cm_buf_free(&b);
}

/* Builds a frame with a hand-written payload. */
static void raw_frame(cm_buf *b, proto_type type, const uint8_t *payload, size_t n) {
    size_t at;
    b->len = 0;
    frame_begin(b, type, &at);
    cm_buf_append(b, payload, n);
    frame_end(b, at, 0);
}

static void test_bad_payloads(void) {
    cm_buf b = CM_BUF_INIT;
    proto_frame f;
    // {"job": 1} as a cancel is fine
    const uint8_t ok[] = {0x81, 0xa3, 'j', 'o', 'b', 0x01};
    raw_frame(&b, PROTO_CANCEL, ok, sizeof ok);
    ASSERT_TRUE(proto_decode(b.data, b.len, &f) > 0);
    proto_frame_free(&f);
    // wrong type: job is a string
    const uint8_t wrongtype[] = {0x81, 0xa3, 'j', 'o', 'b', 0xa1, 'x'};
    raw_frame(&b, PROTO_CANCEL, wrongtype, sizeof wrongtype);
    ASSERT_EQ(proto_decode(b.data, b.len, &f), -EBADMSG);
    // missing required key
    const uint8_t missing[] = {0x80};
    raw_frame(&b, PROTO_CANCEL, missing, sizeof missing);
    ASSERT_EQ(proto_decode(b.data, b.len, &f), -EBADMSG);
    // payload is not a map
    const uint8_t notmap[] = {0x01};
    raw_frame(&b, PROTO_CANCEL, notmap, sizeof notmap);
    ASSERT_EQ(proto_decode(b.data, b.len, &f), -EBADMSG);
    // trailing garbage after the map
    const uint8_t trailing[] = {0x81, 0xa3, 'j', 'o', 'b', 0x01, 0x00};
    raw_frame(&b, PROTO_CANCEL, trailing, sizeof trailing);
    ASSERT_EQ(proto_decode(b.data, b.len, &f), -EBADMSG);
    // an array claiming 2^32-1 elements in a few bytes
    const uint8_t hugearr[] = {0x81, 0xa3, 'j', 'o', 'b', 0xdd, 0xff, 0xff, 0xff, 0xff};
    raw_frame(&b, PROTO_CANCEL, hugearr, sizeof hugearr);
    ASSERT_EQ(proto_decode(b.data, b.len, &f), -EBADMSG);
    // a string claiming to be longer than the cap
    const uint8_t hugestr[] = {0x81, 0xa3, 'j', 'o', 'b', 0xdb, 0x7f, 0xff, 0xff, 0xff};
    raw_frame(&b, PROTO_CANCEL, hugestr, sizeof hugestr);
    ASSERT_EQ(proto_decode(b.data, b.len, &f), -EMSGSIZE);
    // 0xc1 is never valid
    const uint8_t never[] = {0xc1};
    raw_frame(&b, PROTO_CANCEL, never, sizeof never);
    ASSERT_EQ(proto_decode(b.data, b.len, &f), -EBADMSG);
    // error event with an impossible status
    proto_event e = {.job_id = 1, .kind = PROTO_EV_ERROR, .status = 200};
    b.len = 0;
    proto_encode_event(&b, &e);
    ASSERT_EQ(proto_decode(b.data, b.len, &f), -EBADMSG);
    cm_buf_free(&b);
}

/* Random corruption of valid frames: decode returns an error or a frame, never
 * crashes or leaks (run under ASAN). */
static void test_corruption(void) {
    cm_buf b = CM_BUF_INIT;
    proto_msg msgs[2] = {{.role = S("user"), .content = S("hello there")}, {.role = S("assistant"), .content = S("hi")}};
    proto_str stop[1] = {S("###")};
    proto_submit s = {.job_id = 5, .n_msgs = 2, .msgs = msgs, .max_tokens = 10, .temperature = 0.7f, .top_p = 0.9f,
                      .n_stop = 1, .stop = stop};
    proto_encode_submit(&b, &s);
    uint8_t *copy = malloc(b.len);
    uint64_t rng = 0x9E3779B97F4A7C15ULL;
    int decoded = 0, rejected = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(copy, b.data, b.len);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            size_t pos = PROTO_HDR_SIZE + rng % (b.len - PROTO_HDR_SIZE);
            copy[pos] = (uint8_t)(rng >> 32);
        }
        size_t len = iter % 3 == 0 ? b.len - (rng >> 40) % 5 : b.len;
        proto_frame f;
        ssize_t n = proto_decode(copy, len, &f);
        if (n > 0) {
            decoded++;
            proto_frame_free(&f);
        } else if (n < 0) {
            rejected++;
        }
    }
    ASSERT_TRUE(rejected > 0);
    ASSERT_TRUE(decoded + rejected > 10000);
    free(copy);
    cm_buf_free(&b);
}

int main(void) {
    test_submit_roundtrip();
    test_tools_roundtrip();
    test_events_and_others();
    test_logprob_event();
    test_bad_headers();
    test_bad_payloads();
    test_corruption();
    return kt_done("test_proto");
}
