/* Unit tests of wk_tools: the tool-call grammar per tool_choice and family (whole
 * outputs accepted or refused), the output reader fed byte by byte and in one
 * piece (content, call names, argument fragments that join to the arguments),
 * and the prompt block. */
#include <errno.h>

#include "tests/unit/kt.h"
#include "worker/wk_tools.h"

#define S(s) ((proto_str){(char *)(s), (uint32_t)(sizeof(s) - 1)})

static proto_tool tools[2] = {
    {S("get_weather"), S("Weather in a city"),
     S("{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":20}},\"required\":[\"city\"]}"),
     0},
    {S("ping"), S(""), S("{\"type\":\"object\",\"properties\":{}}"), 0},
};

static wk_grammar *tools_grammar(wk_template_family f, int choice, int parallel, const char *name) {
    proto_submit sub = {.n_tools = 2, .tools = tools, .tool_choice = (uint8_t)choice,
                        .parallel_calls = (uint8_t)parallel};
    if (name)
        sub.tool_name = (proto_str){(char *)name, (uint32_t)strlen(name)};
    wk_grammar *g = NULL;
    char err[256], param[64];
    ASSERT_EQ(wk_tools_grammar(f, &sub, &g, err, sizeof err, param, sizeof param), 0);
    return g;
}

static int accepts(wk_grammar *g, const char *text) {
    return wk_grammar_accepting(g, wk_grammar_step(g, wk_grammar_start(g), (const uint8_t *)text, strlen(text)));
}

#define CALL_W "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
#define CALL_P "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>"

static void test_grammars(void) {
    struct {
        int choice, parallel;
        const char *name, *text;
        int want;
    } cases[] = {
        {PROTO_TOOLS_REQUIRED, 1, NULL, CALL_W, 1},
        {PROTO_TOOLS_REQUIRED, 1, NULL, CALL_W "\n" CALL_P, 1},
        {PROTO_TOOLS_REQUIRED, 0, NULL, CALL_W "\n" CALL_P, 0},
        {PROTO_TOOLS_REQUIRED, 1, NULL, "Sure. " CALL_W, 0},
        {PROTO_TOOLS_REQUIRED, 1, NULL, "", 0},
        {PROTO_TOOLS_REQUIRED, 1, NULL, "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>", 0},
        {PROTO_TOOLS_REQUIRED, 1, NULL, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>", 0},
        {PROTO_TOOLS_NAMED, 1, "ping", CALL_P, 1},
        {PROTO_TOOLS_NAMED, 1, "ping", CALL_P "\n" CALL_P, 0},
        {PROTO_TOOLS_NAMED, 1, "ping", CALL_W, 0},
        {PROTO_TOOLS_AUTO, 1, NULL, "Hello there <tool_ca", 1},
        {PROTO_TOOLS_AUTO, 1, NULL, "", 1},
        {PROTO_TOOLS_AUTO, 1, NULL, "Let me check. " CALL_W, 1},
        {PROTO_TOOLS_AUTO, 1, NULL, "Let me check. <tool_call>oops", 0},
        {PROTO_TOOLS_AUTO, 1, NULL, CALL_W " and text after", 0},
        {PROTO_TOOLS_NONE, 1, NULL, "Plain text, <tool> and tool_call.", 1},
        {PROTO_TOOLS_NONE, 1, NULL, "x <tool_call>", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        wk_grammar *g = tools_grammar(WK_TEMPLATE_GEMMA, cases[i].choice, cases[i].parallel, cases[i].name);
        if (!g)
            continue;
        if (accepts(g, cases[i].text) != cases[i].want) {
            kt_checks++;
            KT_FAIL_("case %zu (choice %d): '%s' accepted=%d", i, cases[i].choice, cases[i].text, !cases[i].want);
        }
        wk_grammar_free(g);
    }
    wk_grammar *g = tools_grammar(WK_TEMPLATE_LLAMA3, PROTO_TOOLS_AUTO, 1, NULL);
    if (g) {
        ASSERT_TRUE(accepts(g, "{\"name\": \"ping\", \"parameters\": {}}"));
        ASSERT_TRUE(accepts(g, "It is sunny."));
        ASSERT_TRUE(!accepts(g, "{\"name\": \"ping\", \"parameters\": {}}{\"name\": \"ping\", \"parameters\": {}}"));
        ASSERT_TRUE(!accepts(g, "{\"city\": 1}"));
        wk_grammar_free(g);
    }
    // a tool whose schema is refused names the tool's parameters
    proto_tool bad = {S("f"), S(""), S("{\"type\":\"object\",\"properties\":{\"a\":{\"not\":{}}}}"), 0};
    proto_submit sub = {.n_tools = 1, .tools = &bad, .tool_choice = PROTO_TOOLS_REQUIRED};
    char err[256], param[64];
    wk_grammar *b = NULL;
    ASSERT_EQ(wk_tools_grammar(WK_TEMPLATE_CHATML, &sub, &b, err, sizeof err, param, sizeof param), -EINVAL);
    ASSERT_STREQ(param, "tools[0].function.parameters");
    ASSERT_TRUE(strstr(err, "'not'") != NULL);
}

typedef struct got {
    char content[512];
    char names[4][32];
    char args[4][256];
    int calls, events;
} got;

static void on_emit(void *ud, uint32_t call, const char *name, const char *text, size_t len) {
    got *g = ud;
    g->events++;
    if (!call) {
        strncat(g->content, text, len);
        return;
    }
    if (name) {
        ASSERT_EQ(call, g->calls + 1);
        snprintf(g->names[g->calls++], sizeof g->names[0], "%s", name);
        ASSERT_EQ(len, 0);
        return;
    }
    ASSERT_TRUE(call >= 1 && (int)call <= g->calls);
    strncat(g->args[call - 1], text, len);
}

static void read_out(wk_template_family f, const char *out, size_t step, got *g) {
    memset(g, 0, sizeof *g);
    wk_tcx *x = wk_tcx_new(f);
    size_t n = strlen(out);
    for (size_t i = 0; i < n; i += step)
        ASSERT_EQ(wk_tcx_feed(x, out + i, i + step < n ? step : n - i, 0, on_emit, g), 0);
    ASSERT_EQ(wk_tcx_feed(x, "", 0, 1, on_emit, g), 0);
    ASSERT_EQ(wk_tcx_calls(x), g->calls);
    wk_tcx_free(x);
}

static void test_reader(void) {
    got g;
    for (size_t step = 1; step <= 64; step *= 4) {
        read_out(WK_TEMPLATE_GEMMA, "Let me check. " CALL_W "\n" CALL_P, step, &g);
        ASSERT_STREQ(g.content, "Let me check. ");
        ASSERT_EQ(g.calls, 2);
        ASSERT_STREQ(g.names[0], "get_weather");
        ASSERT_STREQ(g.args[0], "{\"city\": \"Oslo\"}");
        ASSERT_STREQ(g.names[1], "ping");
        ASSERT_STREQ(g.args[1], "{}");
        read_out(WK_TEMPLATE_GEMMA, "No call: a < b and <tool", step, &g);
        ASSERT_STREQ(g.content, "No call: a < b and <tool");
        ASSERT_EQ(g.calls, 0);
        // arguments holding what looks like the end markup inside a string
        read_out(WK_TEMPLATE_CHATML,
                 "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"s\": \"}\\n</tool_call>\"}}\n</tool_call>", step, &g);
        ASSERT_EQ(g.calls, 1);
        ASSERT_STREQ(g.args[0], "{\"s\": \"}\\n</tool_call>\"}");
        read_out(WK_TEMPLATE_LLAMA3, "{\"name\": \"ping\", \"parameters\": {\"a\": [1]}}", step, &g);
        ASSERT_EQ(g.calls, 1);
        ASSERT_STREQ(g.names[0], "ping");
        ASSERT_STREQ(g.args[0], "{\"a\": [1]}");
        ASSERT_STREQ(g.content, "");
        read_out(WK_TEMPLATE_LLAMA3, "{x} is a set", step, &g);
        ASSERT_STREQ(g.content, "{x} is a set");
    }
    // cut by max_tokens inside the arguments: what there is goes out
    read_out(WK_TEMPLATE_GEMMA, "<tool_call>\n{\"name\": \"ping\", \"arguments\": {\"a\": ", 5, &g);
    ASSERT_EQ(g.calls, 1);
    ASSERT_STREQ(g.args[0], "{\"a\": ");
}

static void test_prompt(void) {
    proto_submit sub = {.n_tools = 2, .tools = tools, .tool_choice = PROTO_TOOLS_AUTO};
    char *p = wk_tools_prompt(WK_TEMPLATE_CHATML, &sub);
    ASSERT_TRUE(p && strstr(p, "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
                                 "\"description\": \"Weather in a city\", \"parameters\": {\"type\": \"object\""));
    ASSERT_TRUE(p && strstr(p, "{\"type\": \"function\", \"function\": {\"name\": \"ping\", \"parameters\""));
    ASSERT_TRUE(p && strstr(p, "</tools>") && strstr(p, "<tool_call></tool_call> XML tags"));
    free(p);
    p = wk_tools_prompt(WK_TEMPLATE_LLAMA3, &sub);
    ASSERT_TRUE(p && strstr(p, "\"parameters\": dictionary of argument name") && strstr(p, "\"name\": \"ping\""));
    free(p);
}

int main(void) {
    test_grammars();
    test_reader();
    test_prompt();
    return kt_done("test_tools");
}
