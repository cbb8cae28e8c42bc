/* Unit tests for gateway/gw_chat: validation errors (status, param, code) and the
 * shapes of rendered bodies and SSE chunks. */
#include <jansson.h>

#include "gateway/gw_chat.h"
#include "tests/unit/kt.h"

#define MODEL "m.gguf"

/* Parses body; expects an error with status/param/code (param/code may be NULL). */
static void expect_error(const char *body, int status, const char *param, const char *code) {
    gw_chat_req r;
    gw_error e;
    int rc = gw_chat_parse(body, strlen(body), MODEL, &r, &e);
    ASSERT_EQ(rc, -1);
    if (rc != -1) {
        fprintf(stderr, "  body: %s\n", body);
        gw_chat_req_free(&r);
        return;
    }
    ASSERT_EQ(e.status, status);
    if (param)
        ASSERT_STREQ(e.param, param);
    else
        ASSERT_TRUE(e.param == NULL);
    if (code)
        ASSERT_STREQ(e.code, code);
    ASSERT_TRUE(strlen(e.message) > 0);
}

static void test_errors(void) {
    expect_error("{bad", 400, NULL, "invalid_json");
    expect_error("[1,2]", 400, NULL, "invalid_json");
    expect_error("\"\xff\"", 400, NULL, "invalid_json"); // invalid UTF-8
    expect_error("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "model", "missing_required_parameter");
    expect_error("{\"model\":3,\"messages\":[]}", 400, "model", "invalid_type");
    expect_error("{\"model\":\"" MODEL "\"}", 400, "messages", "missing_required_parameter");
    expect_error("{\"model\":\"" MODEL "\",\"messages\":{}}", 400, "messages", "invalid_type");
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[]}", 400, "messages", "empty_array");
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[3]}", 400, "messages[0]", "invalid_type");
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400,
                 "messages[0].role", "invalid_value");
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content",
                 "missing_required_parameter");
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400,
                 "messages[0].content", "invalid_type");
    expect_error("{\"model\":\"" MODEL
                 "\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
                 400, "messages[0].content[0].type", "invalid_value");
    const char *ok_msgs = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    char b[512];
#define CASE(extra, st, param, code)                                                                                \
    snprintf(b, sizeof b, "{\"model\":\"" MODEL "\",%s,%s}", ok_msgs, extra);                                       \
    expect_error(b, st, param, code)
    CASE("\"temperature\":\"hot\"", 400, "temperature", "invalid_type");
    CASE("\"temperature\":2.5", 400, "temperature", "invalid_value");
    CASE("\"top_p\":-0.1", 400, "top_p", "invalid_value");
    CASE("\"max_tokens\":0", 400, "max_tokens", "invalid_value");
    CASE("\"max_tokens\":1.5", 400, "max_tokens", "invalid_type");
    CASE("\"n\":2", 400, "n", "unsupported_value");
    CASE("\"logprobs\":true", 400, "logprobs", "unsupported_parameter");
    CASE("\"presence_penalty\":0.5", 400, "presence_penalty", "unsupported_parameter");
    CASE("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]", 400, "tools", "unsupported_parameter");
    CASE("\"response_format\":{\"type\":\"json_object\"}", 400, "response_format", "unsupported_parameter");
    CASE("\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", 400, "stop", "invalid_value");
    CASE("\"stop\":5", 400, "stop", "invalid_type");
    CASE("\"stream_options\":{\"include_usage\":true}", 400, "stream_options", "invalid_value");
    CASE("\"frobnicate\":1", 400, "frobnicate", "unknown_parameter");
    CASE("\"stream\":\"yes\"", 400, "stream", "invalid_type");
    snprintf(b, sizeof b, "{\"model\":\"other\",%s}", ok_msgs);
    expect_error(b, 404, "model", "model_not_found");
#undef CASE
}

static void test_accepts(void) {
    const char *body = "{\"model\":\"" MODEL "\",\"messages\":["
                       "{\"role\":\"developer\",\"content\":\"be terse\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                       "{\"role\":\"assistant\",\"content\":null}],"
                       "\"temperature\":0,\"top_p\":0.5,\"max_completion_tokens\":7,\"max_tokens\":99,\"seed\":42,"
                       "\"stop\":\"END\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"user\":\"u\",\"metadata\":{\"k\":\"v\"},\"store\":false,\"n\":1,\"logprobs\":false}";
    gw_chat_req r;
    gw_error e;
    ASSERT_EQ(gw_chat_parse(body, strlen(body), MODEL, &r, &e), 0);
    ASSERT_EQ(r.submit.n_msgs, 3);
    ASSERT_STREQ(r.submit.msgs[0].role.p, "developer");
    ASSERT_STREQ(r.submit.msgs[1].content.p, "ab");
    ASSERT_EQ(r.submit.msgs[2].content.len, 0);
    ASSERT_NEAR(r.submit.temperature, 0, 0);
    ASSERT_NEAR(r.submit.top_p, 0.5, 0);
    ASSERT_EQ(r.submit.max_tokens, 7); // max_completion_tokens wins
    ASSERT_EQ(r.submit.has_seed, 1);
    ASSERT_TRUE(r.submit.seed == 42);
    ASSERT_EQ(r.submit.n_stop, 1);
    ASSERT_STREQ(r.submit.stop[0].p, "END");
    ASSERT_EQ(r.stream, 1);
    ASSERT_EQ(r.include_usage, 1);
    gw_chat_req_free(&r);

    const char *minimal = "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    ASSERT_EQ(gw_chat_parse(minimal, strlen(minimal), MODEL, &r, &e), 0);
    ASSERT_NEAR(r.submit.temperature, 1, 0); // OpenAI's defaults, not the model's
    ASSERT_NEAR(r.submit.top_p, 1, 0);
    ASSERT_EQ(r.submit.max_tokens, -1);
    ASSERT_EQ(r.submit.has_seed, 0);
    ASSERT_EQ(r.stream, 0);
    gw_chat_req_free(&r);
}

static json_t *load(const char *s, size_t n) {
    json_error_t je;
    json_t *j = json_loadb(s, n, 0, &je);
    ASSERT_TRUE(j != NULL);
    return j;
}

static void test_render(void) {
    gw_completion c = {"chatcmpl-x", MODEL, 123};
    gw_usage u = {10, 3, 0};
    cm_buf b = CM_BUF_INIT;
    ASSERT_EQ(gw_render_completion(&b, &c, "h\"i\n", 4, PROTO_FINISH_LENGTH, &u), 0);
    json_t *j = load((const char *)b.data, b.len);
    ASSERT_STREQ(json_string_value(json_object_get(j, "object")), "chat.completion");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    ASSERT_STREQ(json_string_value(json_object_get(json_object_get(ch, "message"), "content")), "h\"i\n");
    ASSERT_STREQ(json_string_value(json_object_get(ch, "finish_reason")), "length");
    ASSERT_EQ(json_integer_value(json_object_get(json_object_get(j, "usage"), "total_tokens")), 13);
    json_decref(j);

    b.len = 0;
    ASSERT_EQ(gw_render_chunk(&b, &c, 1, "", 0, 0, 1), 0);
    ASSERT_TRUE(b.len > 8 && !memcmp(b.data, "data: ", 6) && !memcmp(b.data + b.len - 2, "\n\n", 2));
    j = load((const char *)b.data + 6, b.len - 8);
    ch = json_array_get(json_object_get(j, "choices"), 0);
    ASSERT_STREQ(json_string_value(json_object_get(json_object_get(ch, "delta"), "role")), "assistant");
    ASSERT_TRUE(json_is_null(json_object_get(ch, "finish_reason")));
    ASSERT_TRUE(json_is_null(json_object_get(j, "usage")));
    json_decref(j);

    b.len = 0;
    ASSERT_EQ(gw_render_usage_chunk(&b, &c, &u), 0);
    j = load((const char *)b.data + 6, b.len - 8);
    ASSERT_EQ(json_array_size(json_object_get(j, "choices")), 0);
    ASSERT_EQ(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")), 10);
    json_decref(j);

    gw_error e;
    gw_error_set(&e, 400, "invalid_request_error", NULL, NULL, "bad %d", 1);
    b.len = 0;
    ASSERT_EQ(gw_render_error(&b, &e), 0);
    j = load((const char *)b.data, b.len);
    json_t *err = json_object_get(j, "error");
    ASSERT_STREQ(json_string_value(json_object_get(err, "message")), "bad 1");
    ASSERT_TRUE(json_is_null(json_object_get(err, "param")));
    ASSERT_TRUE(json_is_null(json_object_get(err, "code")));
    json_decref(j);
    cm_buf_free(&b);
}

/* NUL characters (\u0000) are ordinary text in content, but never make a fixed
 * value match: "user\u0000x" is not the role "user", nor the model id. */
static void test_nul(void) {
    gw_chat_req r;
    gw_error e;
    const char *ok = "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}";
    int rc = gw_chat_parse(ok, strlen(ok), MODEL, &r, &e);
    ASSERT_EQ(rc, 0);
    if (rc == 0) {
        ASSERT_EQ(r.submit.msgs[0].content.len, 3);
        ASSERT_TRUE(!memcmp(r.submit.msgs[0].content.p, "a\0b", 3));
        gw_chat_req_free(&r);
    }
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\\u0000x\",\"content\":\"a\"}]}", 400,
                 "messages[0].role", "invalid_value");
    expect_error("{\"model\":\"" MODEL "\\u0000x\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}", 404,
                 "model", "model_not_found");
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\\u0000\","
                 "\"text\":\"a\"}]}]}",
                 400, "messages[0].content[0].type", "invalid_value");
}

/* Invalid UTF-8 (a worker breaking the contract, a message cut mid-character)
 * still renders as JSON with every field present, invalid bytes as U+FFFD. */
static void test_render_bad_utf8(void) {
    gw_completion c = {"chatcmpl-x", MODEL, 123};
    gw_usage u = {1, 1, 0};
    cm_buf b = CM_BUF_INIT;
    ASSERT_EQ(gw_render_completion(&b, &c, "a\xC3(\xED\xA0\x80z\xF0\x9F", 9, PROTO_FINISH_STOP, &u), 0);
    json_t *j = load((const char *)b.data, b.len);
    json_t *msg = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    ASSERT_STREQ(json_string_value(json_object_get(msg, "content")),
                 "a\xEF\xBF\xBD(\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDz\xEF\xBF\xBD\xEF\xBF\xBD");
    json_decref(j);

    b.len = 0;
    ASSERT_EQ(gw_render_chunk(&b, &c, 0, "\xFFok", 3, 0, 0), 0);
    j = load((const char *)b.data + 6, b.len - 8);
    json_t *d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
    ASSERT_STREQ(json_string_value(json_object_get(d, "content")), "\xEF\xBF\xBDok");
    json_decref(j);

    /* A model name of 'a' + 150 x U+00E9, cut to 200 bytes by the 404 message. */
    char body[1024], name[400];
    int n = snprintf(name, sizeof name, "a");
    for (int i = 0; i < 150; i++)
        n += snprintf(name + n, sizeof name - (size_t)n, "\xC3\xA9");
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}", name);
    gw_chat_req r;
    gw_error e;
    ASSERT_EQ(gw_chat_parse(body, strlen(body), MODEL, &r, &e), -1);
    ASSERT_EQ(e.status, 404);
    b.len = 0;
    ASSERT_EQ(gw_render_error(&b, &e), 0);
    j = load((const char *)b.data, b.len);
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    ASSERT_TRUE(m != NULL && strstr(m, "does not exist") != NULL);
    json_decref(j);
    cm_buf_free(&b);
}

int main(void) {
    test_errors();
    test_accepts();
    test_render();
    test_nul();
    test_render_bad_utf8();
    return kt_done("test_gw_chat");
}
