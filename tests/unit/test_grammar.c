/* Unit tests of wk_grammar (the lazy DFA and its token masks) and wk_jsonschema
 * (schemas to grammars): whole strings accepted or refused, numbers against
 * their bounds by value, random walks that must end in valid JSON, and every
 * mask cross-checked token by token against stepping the token's bytes, and on
 * sampled states against an independent matcher that keeps explicit call stacks. */
#include <errno.h>
#include <jansson.h>
#include <time.h>

#include "tests/unit/kt.h"
#include "worker/wk_grammar.c"
#include "worker/wk_jsonschema.h"
#include "worker/wk_regex.h"

static wk_grammar *compile(const char *schema, int strict) {
    wk_grammar *g = NULL;
    char err[512];
    int rc = wk_jsonschema_grammar(schema, strlen(schema), strict, &g, err, sizeof err);
    if (rc)
        fprintf(stderr, "compile %s: %s\n", schema, err);
    ASSERT_EQ(rc, 0);
    return g;
}

/* 1 when text is a whole sentence of g. */
static int accepts(wk_grammar *g, const char *text) {
    int32_t s = wk_grammar_step(g, wk_grammar_start(g), (const uint8_t *)text, strlen(text));
    return wk_grammar_accepting(g, s);
}

static void check_strings(const char *schema, const char *const *yes, const char *const *no) {
    wk_grammar *g = compile(schema, 0);
    if (!g)
        return;
    for (; *yes; yes++)
        if (!accepts(g, *yes)) {
            kt_checks++;
            KT_FAIL_("%s should accept %s", schema, *yes);
        }
    for (; *no; no++)
        if (accepts(g, *no)) {
            kt_checks++;
            KT_FAIL_("%s should refuse %s", schema, *no);
        }
    kt_checks++;
    wk_grammar_free(g);
}

static void test_whole_strings(void) {
    check_strings("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},"
                  "\"required\":[\"a\"]}",
                  (const char *[]){"{\"a\":1}", "{\"a\": -12, \"b\": \"x\"}", "{ \"a\" :0 ,\"b\":\"\\n\\u0001\"}",
                                   "{\n  \"a\": 5\n}", NULL},
                  (const char *[]){"{}", "{\"b\":\"x\"}", "{\"b\":\"x\",\"a\":1}", "{\"a\":01}", "{\"a\":1.5}",
                                   "{\"a\":1,}", "{\"a\":1,\"c\":2}", "{\"a\":1}x", NULL});
    check_strings("{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"minItems\":2,\"maxItems\":3}",
                  (const char *[]){"[true,false]", "[true, false, true]", NULL},
                  (const char *[]){"[]", "[true]", "[true,true,true,true]", "[true,]", NULL});
    check_strings("{\"type\":\"array\",\"prefixItems\":[{\"type\":\"null\"},{\"const\":\"x\"}],\"items\":false}",
                  (const char *[]){"[]", "[null]", "[null,\"x\"]", NULL},
                  (const char *[]){"[null,\"x\",null]", "[\"x\"]", NULL});
    check_strings("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
                  (const char *[]){"\"ab\"", "\"abc\"", "\"\\\"\\\\\"", "\"\xc3\xa9\xe2\x82\xac\"", NULL},
                  (const char *[]){"\"a\"", "\"abcd\"", "\"\"", "\"a\nb\"", NULL});
    check_strings("{\"type\":\"string\",\"pattern\":\"^[A-Z]{3}-\\\\d{4}$\"}",
                  (const char *[]){"\"ABC-1234\"", NULL}, (const char *[]){"\"AB-1234\"", "\"ABC-12345\"", NULL});
    check_strings("{\"type\":\"string\",\"pattern\":\"ab\",\"maxLength\":4}",
                  (const char *[]){"\"ab\"", "\"xaby\"", NULL}, (const char *[]){"\"axb\"", "\"xxaby\"", NULL});
    check_strings("{\"type\":\"string\",\"format\":\"date\"}",
                  (const char *[]){"\"2024-02-28\"", "\"1999-12-31\"", NULL},
                  (const char *[]){"\"2024-02-30\"", "\"2024-13-01\"", "\"24-01-01\"", NULL});
    check_strings("{\"enum\":[\"red\",1.5,null,{\"k\":[1]}]}",
                  (const char *[]){"\"red\"", "1.5", "null", "{\"k\":[1]}", NULL},
                  (const char *[]){"\"blue\"", "1", "{\"k\":[2]}", NULL});
    check_strings("{\"type\":[\"string\",\"null\"],\"maxLength\":1}", (const char *[]){"null", "\"x\"", NULL},
                  (const char *[]){"\"xy\"", "1", NULL});
    check_strings("{\"anyOf\":[{\"type\":\"integer\",\"minimum\":5},{\"type\":\"boolean\"}]}",
                  (const char *[]){"5", "99", "true", NULL}, (const char *[]){"4", "-5", "null", NULL});
    check_strings("{\"allOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"required\":[\"a\"]},"
                  "{\"properties\":{\"b\":{\"type\":\"string\"}},\"required\":[\"b\"]}]}",
                  (const char *[]){"{\"a\":1,\"b\":\"x\"}", NULL}, (const char *[]){"{\"a\":1}", "{\"b\":\"x\"}", NULL});
    check_strings("{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
                  "\"next\":{\"anyOf\":[{\"$ref\":\"#/$defs/node\"},{\"type\":\"null\"}]}},\"required\":[\"v\",\"next\"],"
                  "\"additionalProperties\":false}},\"$ref\":\"#/$defs/node\"}",
                  (const char *[]){"{\"v\":1,\"next\":null}", "{\"v\":1,\"next\":{\"v\":2,\"next\":{\"v\":3,\"next\":null}}}",
                                   NULL},
                  (const char *[]){"{\"v\":1}", "{\"v\":1,\"next\":{\"v\":2}}", NULL});
    check_strings("{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"}},\"additionalProperties\":"
                  "{\"type\":\"boolean\"}}",
                  (const char *[]){"{\"id\":1,\"x\":true}", "{\"i\":true}", "{\"idx\":false,\"y\":true}", NULL},
                  (const char *[]){"{\"id\":1,\"id\":true}", "{\"id\":true}", "{\"x\":1}", NULL});
    check_strings("{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"uniqueItems\":false,\"maxItems\":2}",
                  (const char *[]){"[1,1]", NULL}, (const char *[]){"[1,1,1]", NULL});
    check_strings("{}", (const char *[]){"1", "[1,{\"a\":[null,\"x\"]}]", "\"s\"", "{}", NULL},
                  (const char *[]){"[1,]", "{\"a\"}", "tru", NULL});
}

static void test_distance(void) {
    wk_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"minLength\":3},"
                            "\"b\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2}},"
                            "\"required\":[\"a\",\"b\"]}",
                            0);
    if (!g)
        return;
    const char *done = "{\"a\":\"xyz\",\"b\":[1,2]}";
    int32_t s = wk_grammar_start(g);
    ASSERT_EQ(wk_grammar_distance(g, s), strlen(done));
    for (size_t i = 0; done[i]; i++) { // along a shortest sentence the distance drops by one per byte
        s = wk_grammar_step(g, s, (const uint8_t *)done + i, 1);
        ASSERT_EQ(wk_grammar_distance(g, s), strlen(done) - i - 1);
    }
    s = wk_grammar_step(g, wk_grammar_start(g), (const uint8_t *)"{\"a\":\"xyzw", 10);
    ASSERT_EQ(wk_grammar_distance(g, s), strlen("\",\"b\":[1,2]}"));
    ASSERT_EQ(wk_grammar_distance(g, WK_GRAMMAR_DEAD), UINT32_MAX);
    wk_grammar_free(g);
    g = compile("{\"$defs\":{\"t\":{\"type\":\"object\",\"properties\":{\"c\":{\"type\":\"array\",\"items\":"
                "{\"$ref\":\"#/$defs/t\"}}},\"required\":[\"c\"]}},\"$ref\":\"#/$defs/t\"}",
                0);
    if (!g)
        return;
    s = wk_grammar_step(g, wk_grammar_start(g), (const uint8_t *)"{\"c\":[{\"c\":[", 12);
    ASSERT_EQ(wk_grammar_distance(g, s), strlen("]}]}")); // the call stack's returns count
    wk_grammar_free(g);
}

static void test_refusals(void) {
    static const struct {
        const char *schema, *needle;
        int strict;
    } bad[] = {
        {"{\"not\":{}}", "'not'", 0},
        {"{\"type\":\"strin\"}", "strin", 0},
        {"{\"type\":\"string\",\"pattern\":\"(?=a)\"}", "pattern", 0},
        {"{\"type\":\"string\",\"format\":\"hostname\"}", "hostname", 0},
        {"{\"type\":\"string\",\"minLength\":3,\"maxLength\":2}", "minLength", 0},
        {"{\"enum\":[]}", "enum", 0},
        {"{\"$ref\":\"#/$defs/nope\"}", "#/$defs/nope", 0},
        {"{\"type\":\"integer\",\"minimum\":0.2,\"maximum\":0.8}", "no JSON value", 0},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}}}", "additionalProperties", 1},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":false}", "required", 1},
        {"{\"type\":\"array\"}", "object", 1},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"uniqueItems\":true}}}", "uniqueItems", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        wk_grammar *g = NULL;
        char err[512] = "";
        int rc = wk_jsonschema_grammar(bad[i].schema, strlen(bad[i].schema), bad[i].strict, &g, err, sizeof err);
        ASSERT_EQ(rc, -EINVAL);
        if (!strstr(err, bad[i].needle)) {
            kt_checks++;
            KT_FAIL_("%s: message '%s' does not name %s", bad[i].schema, err, bad[i].needle);
        }
        wk_grammar_free(g);
    }
}

static uint64_t rng = 0x1234567;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* Random decimal strings against the bounds, by value. */
static void check_number_bounds(const char *schema, double lo, int lo_x, double hi, int hi_x, int integer) {
    wk_grammar *g = compile(schema, 0);
    if (!g)
        return;
    int bad = 0;
    for (int t = 0; t < 20000 && bad < 5; t++) {
        char s[64];
        int n = 0;
        if (rnd() % 2)
            s[n++] = '-';
        int id = 1 + (int)(rnd() % 3);
        for (int i = 0; i < id; i++)
            s[n++] = (char)('0' + rnd() % 10);
        if (rnd() % 2) {
            s[n++] = '.';
            int fd = 1 + (int)(rnd() % 3);
            for (int i = 0; i < fd; i++)
                s[n++] = (char)('0' + rnd() % 10);
        }
        s[n] = 0;
        const char *d = s[0] == '-' ? s + 1 : s;
        double v = strtod(s, NULL);
        int canon = !(d[0] == '0' && d[1] >= '0' && d[1] <= '9') && !(s[0] == '-' && v == 0);
        int want = (lo_x ? v > lo : v >= lo) && (hi_x ? v < hi : v <= hi) && (!integer || !strchr(s, '.'));
        int got = accepts(g, s);
        if (canon ? got != want : got) {
            bad++;
            kt_checks++;
            KT_FAIL_("%s: %s accepted=%d, want %d", schema, s, got, canon && want);
        }
    }
    kt_checks++;
    wk_grammar_free(g);
}

static void test_numbers(void) {
    check_number_bounds("{\"type\":\"number\",\"minimum\":-2.5,\"maximum\":0.75}", -2.5, 0, 0.75, 0, 0);
    check_number_bounds("{\"type\":\"number\",\"exclusiveMinimum\":-2.5,\"exclusiveMaximum\":0.75}", -2.5, 1, 0.75,
                        1, 0);
    check_number_bounds("{\"type\":\"integer\",\"minimum\":-17,\"maximum\":250}", -17, 0, 250, 0, 1);
    check_number_bounds("{\"type\":\"number\",\"minimum\":3.14}", 3.14, 0, 1e300, 0, 0);
    check_number_bounds("{\"type\":\"number\",\"exclusiveMaximum\":-0.5}", -1e300, 0, -0.5, 1, 0);
    check_number_bounds("{\"type\":\"integer\",\"exclusiveMinimum\":0,\"maximum\":9.5}", 0, 1, 9.5, 0, 1);
    check_number_bounds("{\"type\":\"number\"}", -1e300, 0, 1e300, 0, 0);
}

/* ------------------------------------------------------------ with a vocab */

/* Independent matcher: configurations with explicit stacks, no interning. */
typedef struct rcfg {
    int32_t node;
    int32_t depth;
    int32_t st[WK_GRAMMAR_MAX_DEPTH];
} rcfg;

typedef struct rset {
    rcfg *c;
    int n, cap;
    int acc;
} rset;

static int rcfg_eq(const rcfg *a, const rcfg *b) {
    return a->node == b->node && a->depth == b->depth && !memcmp(a->st, b->st, (size_t)a->depth * sizeof *a->st);
}

static void rset_add(rset *s, const rcfg *c) {
    for (int i = 0; i < s->n; i++)
        if (rcfg_eq(&s->c[i], c))
            return;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->c = realloc(s->c, (size_t)s->cap * sizeof *s->c);
    }
    s->c[s->n++] = *c;
}

/* Closes s in place (s holds every configuration, transient ones included). */
static void rclose(const wk_grammar *g, rset *s) {
    for (int i = 0; i < s->n; i++) {
        rcfg c = s->c[i];
        if (g->end[c.node]) {
            if (!c.depth)
                s->acc = 1;
            else {
                rcfg r = c;
                r.node = c.st[--r.depth];
                rset_add(s, &r);
            }
        }
        for (int32_t e = g->m_off[c.node]; e < g->m_off[c.node + 1]; e++) {
            rcfg r = c;
            r.node = g->m[e].to;
            if (g->m[e].ret >= 0) {
                if (r.depth >= WK_GRAMMAR_MAX_DEPTH)
                    continue;
                r.st[r.depth++] = g->m[e].ret;
            }
            rset_add(s, &r);
        }
    }
}

static void rstep(const wk_grammar *g, const rset *in, uint8_t b, rset *out) {
    out->n = 0;
    out->acc = 0;
    for (int i = 0; i < in->n; i++)
        for (int32_t e = g->b_off[in->c[i].node]; e < g->b_off[in->c[i].node + 1]; e++)
            if (g->b[e].lo <= b && b <= g->b[e].hi) {
                rcfg r = in->c[i];
                r.node = g->b[e].to;
                rset_add(out, &r);
            }
    rclose(g, out);
}

/* Walks n random allowed tokens from the start, checking every mask against
 * per-token stepping and (every `ref_every` steps) against the reference
 * matcher; returns the text in buf. */
static int walk(wk_grammar *g, wk_gvocab *v, int max_steps, int ref_every, char *buf, size_t cap,
                double *mask_us, int *n_masks) {
    int32_t s = wk_grammar_start(g);
    size_t len = 0;
    int words = (v->n_vocab + 63) / 64;
    int32_t *allowed = malloc((size_t)v->n_vocab * sizeof *allowed);
    int *rise_at = calloc((size_t)v->n_vocab, sizeof *rise_at), *rise_idx = malloc((size_t)v->n_vocab * sizeof *rise_idx);
    rset a = {0}, b = {0};
    int complete = 0;
    for (int step = 0; step < max_steps; step++) {
        int computed, err;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        const wk_grise *rises;
        int n_rises;
        const uint64_t *m = wk_grammar_mask(g, v, s, &rises, &n_rises, &computed, &err);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        *mask_us += (double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3;
        (*n_masks)++;
        ASSERT_TRUE(m != NULL);
        if (!m)
            break;
        int na = 0, eog_ok = 0;
        for (int r = 0; r < n_rises; r++) {
            rise_at[rises[r].token] = step + 1;
            rise_idx[rises[r].token] = r;
        }
        int do_ref = ref_every && step % ref_every == 0;
        if (do_ref) { // rebuild the reference set by replaying the text
            a.n = 0;
            a.acc = 0;
            rcfg c0 = {.node = g->root, .depth = 0};
            rset_add(&a, &c0);
            rclose(g, &a);
            for (size_t i = 0; i < len; i++) {
                rstep(g, &a, (uint8_t)buf[i], &b);
                rset t = a;
                a = b;
                b = t;
            }
            ASSERT_EQ(a.acc, wk_grammar_accepting(g, s));
        }
        for (int32_t id = 0; id < v->n_vocab; id++) {
            int bit = (int)(m[id >> 6] >> (id & 63) & 1);
            int tl;
            const uint8_t *tb = wk_gvocab_bytes(v, id, &tl);
            int want;
            int is_eog = 0;
            for (int k = 0; k < v->n_eog; k++)
                is_eog |= v->eog[k] == id;
            if (is_eog)
                want = wk_grammar_accepting(g, s);
            else if (!tl)
                want = 0;
            else
                want = wk_grammar_step(g, s, tb, (size_t)tl) > 0;
            if (do_ref && tl && !is_eog) {
                rset cur = {0}, nxt = {0};
                cur.c = malloc((size_t)(a.n ? a.n : 1) * sizeof *cur.c);
                memcpy(cur.c, a.c, (size_t)a.n * sizeof *cur.c);
                cur.n = cur.cap = a.n;
                for (int i = 0; i < tl && (cur.n || cur.acc); i++) {
                    rstep(g, &cur, tb[i], &nxt);
                    rset t = cur;
                    cur = nxt;
                    nxt = t;
                }
                int rwant = 0;
                for (int i = 0; i < cur.n && !rwant; i++)
                    rwant = g->b_off[cur.c[i].node + 1] > g->b_off[cur.c[i].node];
                rwant |= cur.acc;
                free(cur.c);
                free(nxt.c);
                if (rwant != want) {
                    kt_checks++;
                    KT_FAIL_("token %d: reference %d, dfa %d after '%.*s'", id, rwant, want, (int)len, buf);
                }
            }
            if (bit && !is_eog) { // rising tokens are listed with their distance, farthest first
                uint32_t nd = wk_grammar_distance(g, wk_grammar_step(g, s, tb, (size_t)tl));
                int listed = rise_at[id] == step + 1 ? rise_idx[id] : -1;
                if ((nd > wk_grammar_distance(g, s)) != (listed >= 0) || (listed >= 0 && rises[listed].dist != nd)) {
                    kt_checks++;
                    KT_FAIL_("token %d: distance %u -> %u, listed as rising: %d", id, wk_grammar_distance(g, s), nd,
                             listed >= 0);
                }
            }
            if (bit != want) {
                kt_checks++;
                KT_FAIL_("token %d: mask %d, step %d after '%.*s'", id, bit, want, (int)len, buf);
                break;
            }
            if (bit) {
                if (is_eog)
                    eog_ok = 1;
                else
                    allowed[na++] = id;
            }
        }
        kt_checks++;
        for (int r = 1; r < n_rises; r++)
            ASSERT_TRUE(rises[r].dist <= rises[r - 1].dist);
        (void)words;
        if (wk_grammar_complete(g, s)) {
            ASSERT_EQ(na, 0);
            ASSERT_TRUE(eog_ok);
            complete = 1;
            break;
        }
        if (!na) {
            ASSERT_TRUE(eog_ok);
            complete = eog_ok;
            break;
        }
        // prefer short tokens half of the time so walks reach the end
        int32_t id = allowed[rnd() % (uint32_t)na];
        if (rnd() % 2) {
            for (int tries = 0; tries < 8; tries++) {
                int32_t c = allowed[rnd() % (uint32_t)na];
                int cl, il;
                wk_gvocab_bytes(v, c, &cl);
                wk_gvocab_bytes(v, id, &il);
                if (cl < il)
                    id = c;
            }
        }
        int tl;
        const uint8_t *tb = wk_gvocab_bytes(v, id, &tl);
        if (len + (size_t)tl + 1 >= cap)
            break;
        memcpy(buf + len, tb, (size_t)tl);
        len += (size_t)tl;
        s = wk_grammar_step(g, s, tb, (size_t)tl);
        ASSERT_TRUE(s > 0);
        if (eog_ok && rnd() % 4 == 0) {
            complete = 1;
            break;
        }
    }
    buf[len] = 0;
    free(allowed);
    free(rise_at);
    free(rise_idx);
    free(a.c);
    free(b.c);
    return complete;
}

static void test_with_vocab(const wk_tok *tok) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    wk_gvocab *v = NULL;
    ASSERT_EQ(wk_gvocab_build(tok, &v), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("test_grammar: vocabulary %d tokens, %d trie nodes (%d outside plain text), built in %.1f ms\n",
           v->n_vocab, v->all.n_nodes, v->other.n_nodes,
           (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    static const char *const schemas[] = {
        NULL, // json_object
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},\"age\":{\"type\":"
        "\"integer\",\"minimum\":0,\"maximum\":130},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\"]},"
        "\"maxItems\":3}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}",
        "{\"type\":\"object\",\"properties\":{\"when\":{\"type\":\"string\",\"format\":\"date-time\"},\"code\":{"
        "\"type\":\"string\",\"pattern\":\"^[A-Z]{2}[0-9]{2}$\"},\"x\":{\"type\":\"number\",\"minimum\":-1,"
        "\"maximum\":1}},\"required\":[\"when\",\"code\",\"x\"]}",
        // runs of byte classes (wk_grammar's run shortcut): long ones, ones that
        // part into two classes, and one a run token can take farther from the end
        "{\"type\":\"object\",\"properties\":{\"e\":{\"type\":\"string\",\"format\":\"email\"},\"u\":{\"type\":"
        "\"string\",\"format\":\"uuid\"},\"ip\":{\"type\":\"string\",\"format\":\"ipv4\"}},\"required\":[\"e\",\"u\","
        "\"ip\"],\"additionalProperties\":false}",
        "{\"type\":\"object\",\"properties\":{\"p\":{\"type\":\"string\",\"pattern\":\"^([a-z]{1,5}|[a-z0-9]{2,8})-"
        "[A-Za-z0-9._%+-]{3,40}$\"},\"q\":{\"type\":\"string\",\"pattern\":\"^(ab)?[a-z]{0,3}x$\"},\"r\":{\"type\":"
        "\"string\",\"pattern\":\"^[0-9a-f]{6,}$\",\"maxLength\":30}},\"required\":[\"p\",\"q\",\"r\"],"
        "\"additionalProperties\":false}",
    };
    for (size_t i = 0; i < sizeof schemas / sizeof *schemas; i++) {
        wk_grammar *g = NULL;
        char err[256];
        ASSERT_EQ(wk_jsonschema_grammar(schemas[i], schemas[i] ? strlen(schemas[i]) : 0, 0, &g, err, sizeof err), 0);
        if (!g)
            continue;
        double us = 0;
        int nm = 0, done = 0;
        for (int w = 0; w < 4; w++) {
            char buf[4096];
            int complete = walk(g, v, 300, w == 0 ? 7 : 0, buf, sizeof buf, &us, &nm);
            if (!complete)
                continue;
            done++;
            json_error_t je;
            json_t *j = json_loads(buf, JSON_DECODE_ANY, &je);
            if (!j || !json_is_object(j)) {
                kt_checks++;
                KT_FAIL_("walk %d of schema %zu is not a JSON object: %s", w, i, buf);
            }
            json_decref(j);
        }
        if (!done) {
            kt_checks++;
            KT_FAIL_("no random walk over schema %zu ended", i);
        }
        printf("test_grammar: schema %zu: %d masks, %.1f us each on average, %d DFA states\n", i, nm, us / nm,
               wk_grammar_n_states(g));
        wk_grammar_free(g);
    }
    wk_gvocab_free(v);
}

int main(void) {
    test_whole_strings();
    test_refusals();
    test_distance();
    test_numbers();
    char def[1024];
    const char *path = kt_model_path(def, sizeof def);
    wk_gguf *gg = NULL;
    wk_tok *tok = NULL;
    char err[256];
    if (wk_gguf_open(path, &gg, err, sizeof err)) {
        printf("test_grammar: model %s not available (%s); vocabulary tests skipped\n", path, err);
        return kt_done("test_grammar");
    }
    ASSERT_EQ(wk_tok_load(gg, &tok, err, sizeof err), 0);
    if (tok)
        test_with_vocab(tok);
    wk_tok_free(tok);
    wk_gguf_close(gg);
    return kt_done("test_grammar");
}
