/* Unit tests for gateway/gw_chat: validation errors (status, param, code) and the
 * shapes of rendered bodies and SSE chunks. */
#include <jansson.h>

#include "gateway/gw_chat.h"
#include "tests/unit/kt.h"

#define MODEL "m.gguf"

typedef int (*parse_fn)(const char *, size_t, gw_chat_req *, gw_error *);

/* Parses body with parse; expects an error with status/param/code (param NULL:
 * expects a null param; code NULL: any code). */
static void expect_error_of(parse_fn parse, const char *body, int status, const char *param, const char *code) {
    gw_chat_req r;
    gw_error e;
    int rc = parse(body, strlen(body), &r, &e);
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

/* Parses body with parse; expects success with req.model exactly model[0..len). */
static void expect_model(parse_fn parse, const char *body, const char *model, size_t len) {
    gw_chat_req r;
    gw_error e;
    int rc = parse(body, strlen(body), &r, &e);
    ASSERT_EQ(rc, 0);
    if (rc)
        return;
    ASSERT_EQ(r.model_len, len);
    ASSERT_TRUE(r.model_len == len && !memcmp(r.model, model, len));
    gw_chat_req_free(&r);
}

static void expect_error(const char *body, int status, const char *param, const char *code) {
    expect_error_of(gw_chat_parse, body, status, param, code);
}

static void expect_legacy_error(const char *body, int status, const char *param, const char *code) {
    expect_error_of(gw_completions_parse, body, status, param, code);
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
    CASE("\"n\":0", 400, "n", "invalid_value");
    CASE("\"n\":129", 400, "n", "invalid_value");
    CASE("\"logprobs\":1", 400, "logprobs", "invalid_type");
    CASE("\"top_logprobs\":3", 400, "top_logprobs", "invalid_value"); // needs logprobs: true
    CASE("\"logprobs\":true,\"top_logprobs\":21", 400, "top_logprobs", "invalid_value");
    CASE("\"presence_penalty\":2.5", 400, "presence_penalty", "invalid_value");
    CASE("\"frequency_penalty\":\"x\"", 400, "frequency_penalty", "invalid_type");
    CASE("\"logit_bias\":[1]", 400, "logit_bias", "invalid_type");
    CASE("\"logit_bias\":{\"abc\":1}", 400, "logit_bias", "invalid_value");
    CASE("\"logit_bias\":{\"-1\":1}", 400, "logit_bias", "invalid_value");
    CASE("\"logit_bias\":{\"5\":101}", 400, "logit_bias", "invalid_value");
    CASE("\"logit_bias\":{\"5\":\"x\"}", 400, "logit_bias", "invalid_value");
    CASE("\"prompt\":\"x\"", 400, "prompt", "unknown_parameter"); // a legacy field
    CASE("\"tools\":[{\"type\":\"retrieval\"}]", 400, "tools[0].type", "invalid_value");
    CASE("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]", 400, "tools[0].function.name",
         "invalid_value");
    CASE("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":[]}}]", 400,
         "tools[0].function.parameters", "invalid_type");
    CASE("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":"
         "{\"name\":\"f\"}}]",
         400, "tools", "invalid_value");
    CASE("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\","
         "\"function\":{\"name\":\"g\"}}",
         400, "tool_choice", "invalid_value");
    CASE("\"tool_choice\":\"required\"", 400, "tool_choice", "invalid_value");
    CASE("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"logprobs\":true", 400, "logprobs",
         "unsupported_parameter");
    CASE("\"functions\":[{\"name\":\"f\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]", 400,
         "functions", "invalid_value");
    CASE("\"response_format\":{\"type\":\"yaml\"}", 400, "response_format.type", "invalid_value");
    CASE("\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{}}}", 400,
         "response_format.json_schema.name", "missing_required_parameter");
    CASE("\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":\"s\"}}", 400,
         "response_format.json_schema.schema", "invalid_type");
    CASE("\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", 400, "stop", "invalid_value");
    CASE("\"stop\":5", 400, "stop", "invalid_type");
    CASE("\"stream_options\":{\"include_usage\":true}", 400, "stream_options", "invalid_value");
    CASE("\"frobnicate\":1", 400, "frobnicate", "unknown_parameter");
    CASE("\"stream\":\"yes\"", 400, "stream", "invalid_type");
    // Any model id parses: which exist is the gateway's to say (tests/integration).
    snprintf(b, sizeof b, "{\"model\":\"other\",%s}", ok_msgs);
    expect_model(gw_chat_parse, b, "other", 5);
#undef CASE
}

static void test_accepts(void) {
    const char *body = "{\"model\":\"" MODEL "\",\"messages\":["
                       "{\"role\":\"developer\",\"content\":\"be terse\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                       "{\"role\":\"assistant\",\"content\":null}],"
                       "\"temperature\":0,\"top_p\":0.5,\"max_completion_tokens\":7,\"max_tokens\":99,\"seed\":42,"
                       "\"stop\":\"END\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"user\":\"u\",\"metadata\":{\"k\":\"v\"},\"store\":false,\"n\":3,\"logprobs\":true,"
                       "\"top_logprobs\":5,\"presence_penalty\":0.5,\"frequency_penalty\":-1,"
                       "\"logit_bias\":{\"42\":-100,\"7\":2.5}}";
    gw_chat_req r;
    gw_error e;
    ASSERT_EQ(gw_chat_parse(body, strlen(body), &r, &e), 0);
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
    ASSERT_EQ(r.submit.n, 3);
    ASSERT_EQ(r.n_choices, 3);
    ASSERT_EQ(r.submit.logprobs, 1);
    ASSERT_EQ(r.submit.top_logprobs, 5);
    ASSERT_NEAR(r.submit.presence_penalty, 0.5, 0);
    ASSERT_NEAR(r.submit.frequency_penalty, -1, 0);
    ASSERT_EQ(r.submit.n_bias, 2);
    int b42 = r.submit.bias[0].token == 42 ? 0 : 1;
    ASSERT_EQ(r.submit.bias[b42].token, 42);
    ASSERT_NEAR(r.submit.bias[b42].bias, -100, 0);
    ASSERT_NEAR(r.submit.bias[1 - b42].bias, 2.5, 0);
    gw_chat_req_free(&r);

    const char *minimal = "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    ASSERT_EQ(gw_chat_parse(minimal, strlen(minimal), &r, &e), 0);
    ASSERT_NEAR(r.submit.temperature, 1, 0); // OpenAI's defaults, not the model's
    ASSERT_NEAR(r.submit.top_p, 1, 0);
    ASSERT_EQ(r.submit.max_tokens, -1);
    ASSERT_EQ(r.submit.has_seed, 0);
    ASSERT_EQ(r.stream, 0);
    ASSERT_EQ(r.submit.n, 1);
    ASSERT_EQ(r.submit.logprobs, 0);
    ASSERT_EQ(r.legacy, 0);
    gw_chat_req_free(&r);
}

/* Tool calls in the history: shapes, the arguments' JSON, and tool results that
 * must answer an earlier call. */
static void test_tool_history(void) {
    const char *body =
        "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
        "\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}},"
        "{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"not json\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"18C\"},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_2\",\"content\":[{\"type\":\"text\",\"text\":\"ok\"}],\"name\":\"f\"}]}";
    gw_chat_req r;
    gw_error e;
    int rc = gw_chat_parse(body, strlen(body), &r, &e);
    ASSERT_EQ(rc, 0);
    if (rc) {
        fprintf(stderr, "  %s\n", e.message);
        return;
    }
    ASSERT_EQ(r.submit.n_msgs, 4);
    const proto_msg *a = &r.submit.msgs[1];
    ASSERT_EQ(a->n_calls, 2);
    ASSERT_STREQ(a->calls[0].id.p, "call_1");
    ASSERT_STREQ(a->calls[0].name.p, "get_weather");
    ASSERT_STREQ(a->calls[0].arguments.p, "{\"city\":\"Paris\"}"); // re-serialized compactly
    ASSERT_STREQ(a->calls[1].arguments.p, "\"not json\"");         // kept, as a JSON string
    ASSERT_STREQ(r.submit.msgs[2].tool_call_id.p, "call_1");
    ASSERT_STREQ(r.submit.msgs[3].content.p, "ok");
    ASSERT_STREQ(r.submit.msgs[3].name.p, "f");
    gw_chat_req_free(&r);
    const char *u = "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},";
    char b[768];
#define TCASE(rest, param, code)                                                                                   \
    snprintf(b, sizeof b, "%s%s]}", u, rest);                                                                       \
    expect_error(b, 400, param, code)
    TCASE("{\"role\":\"tool\",\"content\":\"r\"}", "messages[1].tool_call_id", "missing_required_parameter");
    TCASE("{\"role\":\"tool\",\"tool_call_id\":\"nope\",\"content\":\"r\"}", "messages[1].tool_call_id",
          "invalid_value");
    TCASE("{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}", "messages[1].tool_calls", "invalid_value");
    TCASE("{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\","
          "\"function\":{\"name\":\"bad name\",\"arguments\":\"{}\"}}]}",
          "messages[1].tool_calls[0]", "invalid_value");
    TCASE("{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\","
          "\"function\":{\"name\":\"f\",\"arguments\":{}}}]}",
          "messages[1].tool_calls[0]", "invalid_value");
    TCASE("{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c\",\"type\":\"retrieval\"}]}",
          "messages[1].tool_calls[0]", "invalid_value");
#undef TCASE
    const char *fc = "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"assistant\",\"content\":null,"
                     "\"function_call\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}";
    ASSERT_EQ(gw_chat_parse(fc, strlen(fc), &r, &e), 0);
    ASSERT_EQ(r.submit.msgs[0].n_calls, 1);
    ASSERT_STREQ(r.submit.msgs[0].calls[0].name.p, "f");
    gw_chat_req_free(&r);
}

/* Legacy completions: prompt shapes, their defaults and refusals. */
static void test_legacy(void) {
    gw_chat_req r;
    gw_error e;
    const char *one = "{\"model\":\"" MODEL "\",\"prompt\":\"Once upon\",\"logprobs\":2,\"n\":2,\"best_of\":2}";
    ASSERT_EQ(gw_completions_parse(one, strlen(one), &r, &e), 0);
    ASSERT_EQ(r.legacy, 1);
    ASSERT_EQ(r.submit.n_msgs, 0);
    ASSERT_EQ(r.submit.n_prompts, 1);
    ASSERT_STREQ(r.submit.prompts[0].text.p, "Once upon");
    ASSERT_EQ(r.submit.max_tokens, 16); // OpenAI's default for completions
    ASSERT_EQ(r.submit.logprobs, 1);
    ASSERT_EQ(r.submit.top_logprobs, 2);
    ASSERT_EQ(r.n_choices, 2);
    gw_chat_req_free(&r);
    const char *many = "{\"model\":\"" MODEL "\",\"prompt\":[\"a\",[1,2,3]],\"n\":3,\"echo\":true,\"max_tokens\":4}";
    ASSERT_EQ(gw_completions_parse(many, strlen(many), &r, &e), 0);
    ASSERT_EQ(r.submit.n_prompts, 2);
    ASSERT_EQ(r.submit.prompts[1].n_tokens, 3);
    ASSERT_EQ(r.submit.prompts[1].tokens[2], 3);
    ASSERT_EQ(r.n_choices, 6);
    ASSERT_EQ(r.submit.echo, 1);
    ASSERT_EQ(r.submit.max_tokens, 4);
    gw_chat_req_free(&r);
    const char *ids = "{\"model\":\"" MODEL "\",\"prompt\":[2,100,7]}";
    ASSERT_EQ(gw_completions_parse(ids, strlen(ids), &r, &e), 0);
    ASSERT_EQ(r.submit.n_prompts, 1);
    ASSERT_EQ(r.submit.prompts[0].n_tokens, 3);
    ASSERT_EQ(r.submit.logprobs, 0);
    gw_chat_req_free(&r);
    expect_legacy_error("{\"model\":\"" MODEL "\"}", 400, "prompt", "missing_required_parameter");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":5}", 400, "prompt", "invalid_type");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":[]}", 400, "prompt", "invalid_value");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":[1,-2]}", 400, "prompt", "invalid_value");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":[\"a\",5]}", 400, "prompt[1]", "invalid_type");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":\"a\",\"logprobs\":6}", 400, "logprobs", "invalid_value");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":\"a\",\"suffix\":\"z\"}", 400, "suffix",
                        "unsupported_parameter");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":\"a\",\"best_of\":3}", 400, "best_of", "unsupported_value");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":\"a\",\"echo\":true,\"logprobs\":1}", 400, "echo",
                        "unsupported_value");
    expect_legacy_error("{\"model\":\"" MODEL "\",\"prompt\":\"a\",\"messages\":[]}", 400, "messages",
                        "unknown_parameter");
    expect_model(gw_completions_parse, "{\"model\":\"x\",\"prompt\":\"a\"}", "x", 1);
}

static json_t *load(const char *s, size_t n) {
    json_error_t je;
    json_t *j = json_loadb(s, n, 0, &je);
    ASSERT_TRUE(j != NULL);
    return j;
}

static void test_render(void) {
    gw_completion c = {"chatcmpl-x", MODEL, 123, 0, 0};
    gw_usage u = {10, 3, 0};
    cm_buf b = CM_BUF_INIT;
    gw_choice_out one = {"h\"i\n", 4, PROTO_FINISH_LENGTH, NULL, NULL};
    ASSERT_EQ(gw_render_completion(&b, &c, &one, 1, &u), 0);
    json_t *j = load((const char *)b.data, b.len);
    ASSERT_STREQ(json_string_value(json_object_get(j, "object")), "chat.completion");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    ASSERT_STREQ(json_string_value(json_object_get(json_object_get(ch, "message"), "content")), "h\"i\n");
    ASSERT_STREQ(json_string_value(json_object_get(ch, "finish_reason")), "length");
    ASSERT_EQ(json_integer_value(json_object_get(json_object_get(j, "usage"), "total_tokens")), 13);
    json_decref(j);

    b.len = 0;
    gw_chunk first = {.index = 0, .role = 1, .text = "", .with_usage_null = 1};
    ASSERT_EQ(gw_render_chunk(&b, &c, &first), 0);
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
    int rc = gw_chat_parse(ok, strlen(ok), &r, &e);
    ASSERT_EQ(rc, 0);
    if (rc == 0) {
        ASSERT_EQ(r.submit.msgs[0].content.len, 3);
        ASSERT_TRUE(!memcmp(r.submit.msgs[0].content.p, "a\0b", 3));
        gw_chat_req_free(&r);
    }
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\\u0000x\",\"content\":\"a\"}]}", 400,
                 "messages[0].role", "invalid_value");
    // the model id keeps its NUL and its length, so it can never equal MODEL
    expect_model(gw_chat_parse, "{\"model\":\"" MODEL "\\u0000x\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}",
                 MODEL "\0x", sizeof MODEL + 1);
    expect_error("{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\\u0000\","
                 "\"text\":\"a\"}]}]}",
                 400, "messages[0].content[0].type", "invalid_value");
}

/* Invalid UTF-8 (a worker breaking the contract, a message cut mid-character)
 * still renders as JSON with every field present, invalid bytes as U+FFFD. */
static void test_render_bad_utf8(void) {
    gw_completion c = {"chatcmpl-x", MODEL, 123, 0, 0};
    gw_usage u = {1, 1, 0};
    cm_buf b = CM_BUF_INIT;
    gw_choice_out bad = {"a\xC3(\xED\xA0\x80z\xF0\x9F", 9, PROTO_FINISH_STOP, NULL, NULL};
    ASSERT_EQ(gw_render_completion(&b, &c, &bad, 1, &u), 0);
    json_t *j = load((const char *)b.data, b.len);
    json_t *msg = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    ASSERT_STREQ(json_string_value(json_object_get(msg, "content")),
                 "a\xEF\xBF\xBD(\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDz\xEF\xBF\xBD\xEF\xBF\xBD");
    json_decref(j);

    b.len = 0;
    gw_chunk k = {.text = "\xFFok", .len = 3};
    ASSERT_EQ(gw_render_chunk(&b, &c, &k), 0);
    j = load((const char *)b.data + 6, b.len - 8);
    json_t *d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
    ASSERT_STREQ(json_string_value(json_object_get(d, "content")), "\xEF\xBF\xBDok");
    json_decref(j);

    /* A model name of 'a' + 150 x U+00E9, cut to 200 bytes (mid-character) by the
     * gateway's 404 message, still renders as a JSON string. */
    char name[400];
    int n = snprintf(name, sizeof name, "a");
    for (int i = 0; i < 150; i++)
        n += snprintf(name + n, sizeof name - (size_t)n, "\xC3\xA9");
    gw_error e;
    gw_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                 "The model '%.200s' does not exist or you do not have access to it.", name);
    b.len = 0;
    ASSERT_EQ(gw_render_error(&b, &e), 0);
    j = load((const char *)b.data, b.len);
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    ASSERT_TRUE(m != NULL && strstr(m, "does not exist") != NULL);
    json_decref(j);
    cm_buf_free(&b);
}

/* Logprobs in the chat shape (token, logprob, bytes, top_logprobs) and the legacy
 * shape (tokens, token_logprobs, top_logprobs, text_offset); n choices. */
static void test_render_logprobs(void) {
    proto_top top[2] = {{{"\xe2\x80", 2}, -0.5f}, {{" b", 2}, -1.0f}};
    proto_logprob lp[2] = {{{"\xe2\x80", 2}, -0.5f, 2, top}, {{"\xa6", 1}, -0.25f, 0, NULL}};
    json_t *acc = NULL;
    size_t off = 0;
    ASSERT_EQ(gw_logprobs_add(&acc, 0, lp, 2, &off), 0);
    json_t *content = json_object_get(acc, "content");
    ASSERT_EQ(json_array_size(content), 2);
    json_t *t0 = json_array_get(content, 0);
    ASSERT_STREQ(json_string_value(json_object_get(t0, "token")), "\xEF\xBF\xBD\xEF\xBF\xBD"); // half a character
    ASSERT_EQ(json_integer_value(json_array_get(json_object_get(t0, "bytes"), 0)), 0xe2);
    ASSERT_NEAR(json_real_value(json_object_get(t0, "logprob")), -0.5, 0);
    ASSERT_EQ(json_array_size(json_object_get(t0, "top_logprobs")), 2);
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(json_object_get(t0, "top_logprobs"), 1), "token")),
                 " b");
    ASSERT_TRUE(json_is_null(json_object_get(acc, "refusal")));

    gw_completion c = {"chatcmpl-x", MODEL, 1, 0, 0};
    gw_choice_out two[2] = {{"x", 1, PROTO_FINISH_STOP, acc, NULL}, {"yz", 2, PROTO_FINISH_LENGTH, NULL, NULL}};
    gw_usage u = {3, 4, 2};
    cm_buf b = CM_BUF_INIT;
    ASSERT_EQ(gw_render_completion(&b, &c, two, 2, &u), 0);
    json_t *j = load((const char *)b.data, b.len);
    json_t *choices = json_object_get(j, "choices");
    ASSERT_EQ(json_array_size(choices), 2);
    ASSERT_EQ(json_integer_value(json_object_get(json_array_get(choices, 1), "index")), 1);
    ASSERT_STREQ(json_string_value(json_object_get(json_array_get(choices, 1), "finish_reason")), "length");
    ASSERT_TRUE(json_is_null(json_object_get(json_array_get(choices, 1), "logprobs")));
    ASSERT_EQ(json_array_size(json_object_get(json_object_get(json_array_get(choices, 0), "logprobs"), "content")), 2);
    ASSERT_EQ(json_integer_value(json_object_get(json_object_get(json_object_get(j, "usage"), "prompt_tokens_details"),
                                                 "cached_tokens")),
              2);
    json_decref(j);
    json_decref(acc);

    // legacy: text_completion with the four parallel arrays
    acc = NULL;
    off = 5;
    proto_logprob plain[2] = {{{"ab", 2}, -1.0f, 2, top}, {{"c", 1}, -2.0f, 0, NULL}};
    ASSERT_EQ(gw_logprobs_add(&acc, 1, plain, 2, &off), 0);
    ASSERT_EQ(off, 8);
    ASSERT_EQ(json_integer_value(json_array_get(json_object_get(acc, "text_offset"), 1)), 7);
    ASSERT_STREQ(json_string_value(json_array_get(json_object_get(acc, "tokens"), 0)), "ab");
    ASSERT_NEAR(json_real_value(json_array_get(json_object_get(acc, "token_logprobs"), 1)), -2, 0);
    ASSERT_EQ(json_object_size(json_array_get(json_object_get(acc, "top_logprobs"), 0)), 2);
    gw_completion lc = {"cmpl-x", MODEL, 1, 1, 0};
    gw_choice_out lo = {"abc", 3, PROTO_FINISH_STOP, acc, NULL};
    b.len = 0;
    ASSERT_EQ(gw_render_completion(&b, &lc, &lo, 1, &u), 0);
    j = load((const char *)b.data, b.len);
    ASSERT_STREQ(json_string_value(json_object_get(j, "object")), "text_completion");
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    ASSERT_STREQ(json_string_value(json_object_get(ch, "text")), "abc");
    ASSERT_TRUE(json_object_get(ch, "message") == NULL);
    json_decref(j);
    json_decref(acc);
    // a legacy chunk has text and index, no delta
    b.len = 0;
    gw_chunk k = {.index = 2, .text = "c", .len = 1, .lp = plain + 1, .n_lp = 1, .text_off = 4, .finish = 0};
    ASSERT_EQ(gw_render_chunk(&b, &lc, &k), 0);
    j = load((const char *)b.data + 6, b.len - 8);
    ch = json_array_get(json_object_get(j, "choices"), 0);
    ASSERT_STREQ(json_string_value(json_object_get(ch, "text")), "c");
    ASSERT_EQ(json_integer_value(json_object_get(ch, "index")), 2);
    ASSERT_TRUE(json_object_get(ch, "delta") == NULL);
    ASSERT_EQ(json_array_size(json_object_get(json_object_get(ch, "logprobs"), "tokens")), 1);
    ASSERT_EQ(json_integer_value(json_array_get(json_object_get(json_object_get(ch, "logprobs"), "text_offset"), 0)), 4);
    json_decref(j);
    cm_buf_free(&b);
}

/* ---- exact bytes of streamed chunks ----
 * Pinned from what gw_render_chunk produced as a jansson tree dumped with
 * JSON_COMPACT, so any other way of rendering must match it: key order, escaping (\" \\ \b \f \n \r \t,
 * \u00XX upper-case for other control characters, '/', DEL and UTF-8 raw), U+FFFD
 * for each byte of an invalid sequence, and the integers. */

/* Text with every escape, an embedded NUL, 2-, 3- and 4-byte characters, then bytes
 * that are not UTF-8: 0xFF, a 2-byte lead before '(', an encoded surrogate, a 4-byte
 * sequence cut short. */
static const char TRICKY[] = "q\"b\\s/n\nr\rt\tb\bf\fc\x01\x1f\x7f"
                             "\0"
                             "z\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"
                             "\xFF\xC3(\xED\xA0\x80\xF0\x9F";
static proto_top g_top[2] = {{{"\xe2\x80", 2}, -0.5f}, {{" b\"", 3}, -1.0f}};
static proto_logprob g_lp[2] = {{{"Hi", 2}, -0.1f, 2, g_top}, {{"\xa6\n", 2}, -INFINITY, 0, NULL}};

#define CHAT {"chatcmpl-abc", "m.gguf", 1700000000, 0, 0}
#define FUNCS {"chatcmpl-abc", "m.gguf", 1700000000, 0, 1}
#define LEGACY {"cmpl-abc", "m.gguf", 1700000000, 1, 0}
#define ODD {"chatcmpl-\"odd\"", NULL, -1, 0, 0}
#define ODDM {"chatcmpl-z", "d\xC3\xA9j\xC3\xA0 \"vu\"\\/\x01\xFF.gguf", 0, 0, 0}

typedef struct golden {
    gw_completion c;
    gw_chunk k;
    const char *want;
} golden;

static const golden GOLDEN[] = {
    {CHAT,
     {.index = 0, .role = 1, .text = "", .with_usage_null = 1},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\""
     ",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"},
    {CHAT,
     {.index = 3, .role = 1, .text = ""},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":3,\"delta\":{\"role\":\"assistant\""
     ",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {CHAT,
     {.text = "Hello", .len = 5},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}"
     ",\"logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {CHAT,
     {.text = TRICKY, .len = sizeof TRICKY - 1, .with_usage_null = 1},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"q\\\"b\\"
     "\\s/n\\nr\\rt\\tb\\bf\\fc\\u0001\\u001F\177\\u0000z\303\251\342\202\254\360\237\230\200\357\277\275\357"
     "\277\275(\357\277\275\357\277\275\357\277\275\357\277\275\357\277\275\"},\"logprobs\":null,\"finish_rea"
     "son\":null}],\"usage\":null}\n\n"},
    {CHAT,
     {.index = 1, .text = "", .len = 0},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"\"},\"lo"
     "gprobs\":null,\"finish_reason\":null}]}\n\n"},
    {CHAT,
     {.index = 0},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\""
     "finish_reason\":null}]}\n\n"},
    {CHAT,
     {.finish = PROTO_FINISH_STOP, .with_usage_null = 1},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\""
     "finish_reason\":\"stop\"}],\"usage\":null}\n\n"},
    {CHAT,
     {.index = 2, .finish = PROTO_FINISH_LENGTH},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":2,\"delta\":{},\"logprobs\":null,\""
     "finish_reason\":\"length\"}]}\n\n"},
    {CHAT,
     {.finish = PROTO_FINISH_TOOL_CALLS},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\""
     "finish_reason\":\"tool_calls\"}]}\n\n"},
    {FUNCS,
     {.finish = PROTO_FINISH_TOOL_CALLS},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\""
     "finish_reason\":\"function_call\"}]}\n\n"},
    {CHAT,
     {.text = "", .call = 1, .call_id = "call_x1", .call_name = "get_weather"},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"ind"
     "ex\":0,\"id\":\"call_x1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\""
     "\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {CHAT,
     {.text = "{\"city\": \"Pa\\n", .len = 13, .call = 1, .with_usage_null = 1},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"ind"
     "ex\":0,\"function\":{\"arguments\":\"{\\\"city\\\": \\\"Pa\\\\\"}}]},\"logprobs\":null,\"finish_reason\""
     ":null}],\"usage\":null}\n\n"},
    {CHAT,
     {.index = 1, .text = "{}", .len = 2, .call = 2, .call_id = "call_y", .call_name = "f"},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":1,\"delta\":{\"tool_calls\":[{\"ind"
     "ex\":1,\"id\":\"call_y\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\""
     "logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {CHAT,
     {.text = NULL, .call = 3, .call_id = "call_z"},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"ind"
     "ex\":2,\"id\":\"call_z\",\"type\":\"function\",\"function\":{\"arguments\":\"\"}}]},\"logprobs\":null,\""
     "finish_reason\":null}]}\n\n"},
    {CHAT,
     {.text = "x", .len = 1, .call = 1, .call_name = "g"},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"ind"
     "ex\":0,\"function\":{\"name\":\"g\",\"arguments\":\"x\"}}]},\"logprobs\":null,\"finish_reason\":null}]}"
     "\n\n"},
    {CHAT,
     {.role = 1, .text = "\xFF", .len = 1, .call = 1, .call_id = "call_r", .call_name = "h"},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\""
     ",\"tool_calls\":[{\"index\":0,\"id\":\"call_r\",\"type\":\"function\",\"function\":{\"name\":\"h\",\"ar"
     "guments\":\"\357\277\275\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {FUNCS,
     {.text = "", .call = 1, .call_name = "f", .call_id = "call_f"},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"function_call\":{\"n"
     "ame\":\"f\",\"arguments\":\"\"}},\"logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {FUNCS,
     {.text = "{\"a\":1}", .len = 7, .call = 1, .with_usage_null = 1},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"function_call\":{\"a"
     "rguments\":\"{\\\"a\\\":1}\"}},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"},
    {FUNCS,
     {.role = 1, .text = "", .call = 1, .call_name = "f"},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\""
     ",\"function_call\":{\"name\":\"f\",\"arguments\":\"\"}},\"logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {LEGACY,
     {.index = 2, .text = "c", .len = 1},
     "data: {\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"m.gguf\",\""
     "system_fingerprint\":\"fp_kolm\",\"choices\":[{\"text\":\"c\",\"index\":2,\"logprobs\":null,\"finish_re"
     "ason\":null}]}\n\n"},
    {LEGACY,
     {.index = 0, .text = NULL},
     "data: {\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"m.gguf\",\""
     "system_fingerprint\":\"fp_kolm\",\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_rea"
     "son\":null}]}\n\n"},
    {LEGACY,
     {.text = "", .finish = PROTO_FINISH_LENGTH, .with_usage_null = 1},
     "data: {\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"m.gguf\",\""
     "system_fingerprint\":\"fp_kolm\",\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_rea"
     "son\":\"length\"}],\"usage\":null}\n\n"},
    {LEGACY,
     {.text = TRICKY, .len = sizeof TRICKY - 1},
     "data: {\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"m.gguf\",\""
     "system_fingerprint\":\"fp_kolm\",\"choices\":[{\"text\":\"q\\\"b\\\\s/n\\nr\\rt\\tb\\bf\\fc\\u0001\\u00"
     "1F\177\\u0000z\303\251\342\202\254\360\237\230\200\357\277\275\357\277\275(\357\277\275\357\277\275\357"
     "\277\275\357\277\275\357\277\275\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {LEGACY,
     {.text = "x", .len = 1, .call = 1, .call_name = "f", .role = 1},
     "data: {\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"m.gguf\",\""
     "system_fingerprint\":\"fp_kolm\",\"choices\":[{\"text\":\"x\",\"index\":0,\"logprobs\":null,\"finish_re"
     "ason\":null}]}\n\n"},
    {CHAT,
     {.text = "Hi\xE2\x80", .len = 4, .lp = g_lp, .n_lp = 2, .with_usage_null = 1},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\357\277"
     "\275\357\277\275\"},\"logprobs\":{\"content\":[{\"token\":\"Hi\",\"logprob\":-0.10000000149011612,\"byt"
     "es\":[72,105],\"top_logprobs\":[{\"token\":\"\357\277\275\357\277\275\",\"logprob\":-0.5,\"bytes\":[226"
     ",128]},{\"token\":\" b\\\"\",\"logprob\":-1.0,\"bytes\":[32,98,34]}]},{\"token\":\"\357\277\275\\n\",\""
     "logprob\":-9999.0,\"bytes\":[166,10],\"top_logprobs\":[]}],\"refusal\":null},\"finish_reason\":null}],\""
     "usage\":null}\n\n"},
    {CHAT,
     {.text = "Hi", .len = 2, .lp = g_lp, .n_lp = 0},
     "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\""
     "m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\""
     "logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {LEGACY,
     {.index = 1, .text = "Hi", .len = 2, .lp = g_lp, .n_lp = 2, .text_off = 4, .finish = PROTO_FINISH_STOP},
     "data: {\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"m.gguf\",\""
     "system_fingerprint\":\"fp_kolm\",\"choices\":[{\"text\":\"Hi\",\"index\":1,\"logprobs\":{\"tokens\":[\""
     "Hi\",\"\357\277\275\\n\"],\"token_logprobs\":[-0.10000000149011612,-9999.0],\"top_logprobs\":[{\"\357\277"
     "\275\357\277\275\":-0.5,\" b\\\"\":-1.0},{}],\"text_offset\":[4,6]},\"finish_reason\":\"stop\"}]}\n\n"},
    {ODD,
     {.index = UINT32_MAX, .text = "a", .len = 1},
     "data: {\"id\":\"chatcmpl-\\\"odd\\\"\",\"object\":\"chat.completion.chunk\",\"created\":-1,\"model\":nu"
     "ll,\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index\":4294967295,\"delta\":{\"content\":\"a\"},"
     "\"logprobs\":null,\"finish_reason\":null}]}\n\n"},
    {ODDM,
     {.text = "a", .len = 1, .finish = PROTO_FINISH_STOP},
     "data: {\"id\":\"chatcmpl-z\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"d\303\251j\303"
     "\240 \\\"vu\\\"\\\\/\\u0001\357\277\275.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[{\"index"
     "\":0,\"delta\":{\"content\":\"a\"},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n"},
};

/* Compares out with want byte for byte; prints both from the first difference. */
static void expect_bytes(const cm_buf *out, const char *want, const char *what) {
    size_t n = strlen(want), i = 0;
    while (i < n && i < out->len && out->data[i] == (uint8_t)want[i])
        i++;
    kt_checks++;
    if (i == n && out->len == n)
        return;
    KT_FAIL_("%s: differs at byte %zu (got %zu bytes, want %zu)\n  got:  %.*s\n  want: %s", what, i, out->len, n,
             (int)(out->len - (i < 40 ? 0 : i - 40)), (const char *)out->data + (i < 40 ? 0 : i - 40),
             want + (i < 40 ? 0 : i - 40));
}

static void test_render_golden(void) {
    cm_buf b = CM_BUF_INIT;
    for (size_t i = 0; i < sizeof GOLDEN / sizeof *GOLDEN; i++) {
        char what[32];
        snprintf(what, sizeof what, "GOLDEN[%zu]", i);
        b.len = 0;
        ASSERT_EQ(gw_render_chunk(&b, &GOLDEN[i].c, &GOLDEN[i].k), 0);
        expect_bytes(&b, GOLDEN[i].want, what);
        // appends: what was in the buffer stays
        size_t before = b.len;
        ASSERT_EQ(gw_render_chunk(&b, &GOLDEN[i].c, &GOLDEN[i].k), 0);
        ASSERT_TRUE(b.len == 2 * before && !memcmp(b.data, b.data + before, before));
    }
    gw_completion chat = CHAT, legacy = LEGACY;
    gw_usage u = {10, 3, 2};
    b.len = 0;
    ASSERT_EQ(gw_render_usage_chunk(&b, &chat, &u), 0);
    expect_bytes(&b,
                 "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":"
                 "\"m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,"
                 "\"completion_tokens\":3,\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":2},"
                 "\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
                 "usage chunk");
    b.len = 0;
    ASSERT_EQ(gw_render_usage_chunk(&b, &legacy, &u), 0);
    expect_bytes(&b,
                 "data: {\"id\":\"cmpl-abc\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":"
                 "\"m.gguf\",\"system_fingerprint\":\"fp_kolm\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,"
                 "\"completion_tokens\":3,\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":2},"
                 "\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
                 "legacy usage chunk");
    cm_buf_free(&b);
}

/* The content string of the chunk rendered for s[0..n) must be what jansson dumps
 * for gw_jstr(s, n): the escaping and the U+FFFD repair of invalid UTF-8 agree
 * with jansson's own validation. Returns 0 on a mismatch (reported once). */
static int same_as_jansson(const char *s, size_t n, cm_buf *b) {
    static const gw_completion c = CHAT;
    static const char pre[] = "\"delta\":{\"content\":", post[] = "},\"logprobs\":";
    gw_chunk k = {.text = s, .len = n};
    kt_checks++;
    b->len = 0;
    if (gw_render_chunk(b, &c, &k) || cm_buf_append(b, "", 1)) {
        KT_FAIL_("cannot render %zu bytes", n);
        return 0;
    }
    const char *from = strstr((const char *)b->data, pre), *to = strstr((const char *)b->data, post);
    json_t *j = gw_jstr(s, n);
    char *want = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    int ok = from && to && want && (size_t)(to - from) == sizeof pre - 1 + strlen(want) &&
             !memcmp(from + sizeof pre - 1, want, strlen(want));
    if (!ok) {
        fprintf(stderr, "  input:");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %02x", (unsigned char)s[i]);
        KT_FAIL_("content renders unlike jansson: got %s, want %s", from ? from : "(none)", want ? want : "(null)");
    }
    free(want);
    return ok;
}

static void test_render_escape_fuzz(void) {
    // bytes where escaping and UTF-8 validation have edges
    static const unsigned char edge[] = {0x00, 0x01, 0x08, 0x09, 0x0a, 0x0c, 0x0d, 0x1f, 0x20, 0x22, 0x2f, 0x41,
                                         0x5c, 0x7e, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2,
                                         0xdf, 0xe0, 0xed, 0xee, 0xef, 0xf0, 0xf4, 0xf5, 0xf7, 0xf8, 0xfe, 0xff};
    cm_buf b = CM_BUF_INIT;
    unsigned char s[16];
    int bad = 0;
    for (unsigned i = 0; i < 65536 && bad < 3; i++) { // every 2-byte string
        s[0] = (unsigned char)(i >> 8), s[1] = (unsigned char)i;
        bad += !same_as_jansson((const char *)s, 2, &b);
    }
    for (unsigned lead = 0xe0; lead <= 0xff && bad < 3; lead++) // 3- and 4-byte leads before every second byte
        for (unsigned second = 0; second < 256; second++)
            for (size_t e = 0; e < sizeof edge && bad < 3; e++) {
                s[0] = (unsigned char)lead, s[1] = (unsigned char)second, s[2] = edge[e], s[3] = 0x80;
                bad += !same_as_jansson((const char *)s, 3, &b) + !same_as_jansson((const char *)s, 4, &b);
            }
    uint32_t x = 12345;
    for (int i = 0; i < 100000 && bad < 3; i++) { // random strings of edge bytes and ASCII
        size_t n = (x >> 7) % sizeof s;
        for (size_t m = 0; m < n; m++) {
            x = x * 1103515245u + 12345u;
            s[m] = (x >> 16) & 1 ? edge[(x >> 17) % sizeof edge] : (unsigned char)(0x20 + (x >> 20) % 95);
        }
        x = x * 1103515245u + 12345u;
        bad += !same_as_jansson((const char *)s, n, &b);
    }
    cm_buf_free(&b);
}

int main(void) {
    test_errors();
    test_accepts();
    test_legacy();
    test_tool_history();
    test_render_logprobs();
    test_render();
    test_nul();
    test_render_bad_utf8();
    test_render_golden();
    test_render_escape_fuzz();
    return kt_done("test_gw_chat");
}
