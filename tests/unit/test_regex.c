/* Unit tests for worker/wk_regex: table-driven (pattern, input, accepted?) cases over
 * every construct, the refusals and their messages, the size limits, the shape of
 * the NFA (ranges, no surrogates, live states), and a differential run against
 * POSIX extended regexes (glibc regexec) on random patterns over {a, b, c}. */
#include "worker/wk_regex.h"

#include <errno.h>
#include <regex.h>

#include "tests/unit/kt.h"

/* Decodes valid UTF-8 s[0..len) into cps (room for len); returns the count. */
static size_t to_cps(const char *s, size_t len, uint32_t *cps) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c = u[i];
        int k = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
        if (k)
            c &= 0x3F >> k;
        for (int j = 1; j <= k; j++)
            c = c << 6 | (u[i + (size_t)j] & 0x3F);
        cps[n++] = c;
        i += (size_t)k + 1;
    }
    return n;
}

/* The NFA's invariants: offsets, targets and ranges in bounds, no surrogates, every
 * state live (reaches acceptance), start 0. Returns the number of violations. */
static int check_shape(const wk_rx *rx, const char *pat) {
    int bad = 0;
    int32_t n = rx->n_states;
    if (n < 1 || rx->start != 0 || rx->edge_off[0] != 0 || rx->eps_off[0] != 0)
        bad++;
    for (int32_t s = 0; s < n && !bad; s++) {
        if (rx->edge_off[s] > rx->edge_off[s + 1] || rx->eps_off[s] > rx->eps_off[s + 1])
            bad++;
        for (int32_t i = rx->edge_off[s]; i < rx->edge_off[s + 1]; i++) {
            const wk_rx_edge *e = &rx->edges[i];
            if (e->lo > e->hi || e->hi > 0x10FFFF || e->to < 0 || e->to >= n || (e->lo <= 0xDFFF && e->hi >= 0xD800))
                bad++;
            if (i > rx->edge_off[s] && rx->edges[i - 1].lo > e->lo)
                bad++; // sorted by lo
        }
        for (int32_t i = rx->eps_off[s]; i < rx->eps_off[s + 1]; i++)
            if (rx->eps[i] < 0 || rx->eps[i] >= n)
                bad++;
    }
    if (!bad && n > 1) { // liveness: fixpoint over "reaches an accepting state"
        uint8_t *live = calloc((size_t)n, 1);
        int changed = 1;
        for (int32_t s = 0; s < n; s++)
            live[s] = rx->accept[s];
        while (changed) {
            changed = 0;
            for (int32_t s = 0; s < n; s++) {
                if (live[s])
                    continue;
                for (int32_t i = rx->edge_off[s]; i < rx->edge_off[s + 1] && !live[s]; i++)
                    live[s] = live[rx->edges[i].to];
                for (int32_t i = rx->eps_off[s]; i < rx->eps_off[s + 1] && !live[s]; i++)
                    live[s] = live[rx->eps[i]];
                changed |= live[s];
            }
        }
        for (int32_t s = 0; s < n; s++)
            bad += !live[s];
        free(live);
    }
    if (bad)
        fprintf(stderr, "bad NFA shape for /%s/ (%d problems)\n", pat, bad);
    return bad;
}

/* 1/0 whether pat accepts the UTF-8 string in[0..in_len); -1000 + rc when pat does
 * not compile. */
static int accepts_n(const char *pat, const char *in, size_t in_len) {
    wk_rx rx;
    char err[256];
    int rc = wk_rx_compile(pat, strlen(pat), &rx, err, sizeof err);
    if (rc) {
        fprintf(stderr, "/%s/ does not compile: %d %s\n", pat, rc, err);
        return -1000 + rc;
    }
    ASSERT_EQ(check_shape(&rx, pat), 0);
    uint32_t *cps = malloc((in_len + 1) * sizeof *cps);
    size_t n = to_cps(in, in_len, cps);
    int m = wk_rx_match(&rx, cps, n);
    free(cps);
    wk_rx_free(&rx);
    return m;
}

static int accepts(const char *pat, const char *in) { return accepts_n(pat, in, strlen(in)); }

typedef struct mcase {
    const char *pat, *in;
    int want;
} mcase;

static const mcase CASES[] = {
    // anchors vs unanchored
    {"b", "abc", 1}, {"b", "", 0}, {"^b", "abc", 0}, {"^b", "bc", 1}, {"b$", "ab", 1}, {"b$", "abc", 0},
    {"^b$", "b", 1}, {"^b$", "bb", 0}, {"", "", 1}, {"", "xyz", 1}, {"^$", "", 1}, {"^$", "a", 0},
    {"^", "abc", 1}, {"$", "abc", 1}, {"abc", "xxabcxx", 1}, {"abc", "abxc", 0},
    // alternation, with per-alternative anchors and empty alternatives
    {"^a|b$", "ax", 1}, {"^a|b$", "xb", 1}, {"^a|b$", "xbx", 0}, {"^a|b$", "xa", 0}, {"^a|^b", "bq", 1},
    {"^a|^b", "qb", 0}, {"a$|^b", "ba", 1}, {"a$|^b", "xab", 0}, {"^ab$|^cd$", "cd", 1}, {"^ab$|^cd$", "abcd", 0},
    {"^cat|dog", "hotdog!", 1}, {"^cat|dog", "a cat", 0}, {"a|", "zzz", 1}, {"^(a|)$", "", 1}, {"^(a|)$", "a", 1},
    {"^(a|)$", "aa", 0}, {"^(|a)b$", "b", 1}, {"^(|a)b$", "ab", 1}, {"^(a||b)$", "b", 1}, {"^(a||b)$", "c", 0},
    {"^a|b|c$", "zbz", 1}, {"^(?:a|b|c)$", "zbz", 0},
    // literals, non-ASCII
    {"é", "café", 1}, {"^日本$", "日本", 1}, {"^日本$", "日", 0}, {"^😀$", "😀", 1}, {"^😀+$", "😀😀", 1},
    {"^a b$", "a b", 1}, {"^-,:;@#%&=~'\"<>!`$", "-,:;@#%&=~'\"<>!`", 1},
    // .
    {"^.$", "a", 1}, {"^.$", "\n", 0}, {"^.$", "\r", 0}, {"^.$", "\xe2\x80\xa8", 0}, {"^.$", "\xe2\x80\xa9", 0},
    {"^.$", "é", 1}, {"^.$", "😀", 1}, {"^...$", "a😀b", 1}, {"^.$", "", 0}, {"^.$", "\t", 1}, {"a.c", "a\nc", 0},
    {"a.c", "xabc", 1}, {"^.*$", "line\nbreak", 0}, {"^.*$", "no break", 1}, {"a.*", "\n\na\n", 1},
    // \d \w \s and negations
    {"^\\d+$", "0123456789", 1}, {"^\\d$", "a", 0}, {"^\\d$", "\xd9\xa3", 0}, {"^\\D$", "a", 1}, {"^\\D$", "5", 0},
    {"^\\D$", "\n", 1}, {"^\\w+$", "aZ_09", 1}, {"^\\w$", "-", 0}, {"^\\w$", "é", 0}, {"^\\W$", "é", 1},
    {"^\\W$", "_", 0}, {"^\\s$", " ", 1}, {"^\\s$", "\t", 1}, {"^\\s$", "\n", 1}, {"^\\s$", "\v", 1},
    {"^\\s$", "\f", 1}, {"^\\s$", "\r", 1}, {"^\\s$", "\xc2\xa0", 1}, {"^\\s$", "\xe1\x9a\x80", 1},
    {"^\\s$", "\xe2\x80\x80", 1}, {"^\\s$", "\xe2\x80\x8a", 1}, {"^\\s$", "\xe2\x80\xa8", 1},
    {"^\\s$", "\xe2\x80\xa9", 1}, {"^\\s$", "\xe2\x80\xaf", 1}, {"^\\s$", "\xe2\x81\x9f", 1},
    {"^\\s$", "\xe3\x80\x80", 1}, {"^\\s$", "\xef\xbb\xbf", 1}, {"^\\s$", "\xe2\x80\x8b", 0}, {"^\\s$", "a", 0},
    {"^\\s$", "\xc2\x85", 0}, {"^\\S$", "a", 1}, {"^\\S$", " ", 0}, {"^\\S$", "\xe3\x80\x80", 0}, {"^\\S$", "😀", 1},
    // character escapes
    {"^\\t\\n\\r\\f\\v$", "\t\n\r\f\v", 1}, {"^\\x41$", "A", 1}, {"^\\x4a$", "J", 1}, {"^\\u00e9$", "é", 1},
    {"^\\u00E9$", "e", 0}, {"^\\u{1F600}$", "😀", 1}, {"^\\u{41}$", "A", 1}, {"^\\u{0000041}$", "A", 1},
    {"^\\uD83D\\uDE00$", "😀", 1}, {"^[\\uD83D\\uDE00]$", "😀", 1}, {"^\\uD83D\\uDE00+$", "😀😀", 1},
    {"^\\cJ$", "\n", 1}, {"^\\ci$", "\t", 1},
    {"^\\.\\\\\\/\\-\\[\\]\\(\\)\\{\\}\\*\\+\\?\\|\\^\\$$", ".\\/-[](){}*+?|^$", 1}, {"^a\\.b$", "axb", 0},
    {"^a\\.b$", "a.b", 1}, {"^\\@\\:\\#$", "@:#", 1},
    // classes
    {"^[abc]+$", "abcba", 1}, {"^[abc]$", "d", 0}, {"^[a-z]+$", "hello", 1}, {"^[a-z]$", "A", 0},
    {"^[^a-z]$", "A", 1}, {"^[^a-z]$", "q", 0}, {"^[^a]$", "\n", 1}, {"^[^a]$", "😀", 1}, {"^[^a]$", "", 0},
    {"^[-a]+$", "-a-", 1}, {"^[a-]+$", "a-", 1}, {"^[a\\-z]+$", "-", 1}, {"^[a\\-z]$", "b", 0},
    {"^[a-c-e]+$", "a-e", 1}, {"^[a-c-e]$", "d", 0}, {"^[\\d.]+$", "1.5", 1}, {"^[\\w-.]+$", "a-b.c", 1},
    {"^[\\w-.]$", "!", 0}, {"^[.-\\w]+$", "a-.", 1}, {"^[^\\d]$", "5", 0}, {"^[^\\d]$", "x", 1}, {"^[\\D]$", "x", 1},
    {"^[\\D]$", "7", 0}, {"^[^\\D]$", "7", 1}, {"^[\\s\\S]$", "\n", 1}, {"^[^\\s\\S]$", "a", 0},
    {"^[\\W\\d]+$", "!5", 1}, {"^[\\W\\d]$", "a", 0}, {"^[^\\W\\d]$", "a", 1}, {"^[^\\W\\d]$", "5", 0},
    {"^[^\\S]$", " ", 1}, {"[]", "a", 0}, {"[]", "", 0}, {"^a|[]", "ab", 1}, {"^[^]$", "\n", 1}, {"^[^]$", "ab", 0},
    {"^[à-ÿ]+$", "éü", 1}, {"^[à-ÿ]$", "a", 0}, {"^[^à-ÿ]$", "é", 0}, {"^[^à-ÿ]$", "e", 1}, {"^[😀-😂]$", "😁", 1},
    {"^[😀-😂]$", "😃", 0}, {"^[\\u0000-\\uFFFF]$", "😀", 0}, {"^[\\u0000-\\uFFFF]$", "\xef\xbf\xbf", 1},
    {"^[\\u0000-\\uFFFF]$", "\xee\x80\x80", 1}, {"^[\\uD800-\\uDFFF]$", "a", 0}, {"^[^\\uD800-\\uDFFF]$", "😀", 1},
    {"^[\\b]$", "\b", 1}, {"^[\\]]$", "]", 1}, {"^[[]$", "[", 1}, {"^[\\x41-\\x43]+$", "ABC", 1},
    {"^[\\x41-\\x43]$", "D", 0}, {"^[\\u{1F600}-\\u{1F64F}]$", "🙏", 1}, {"^[.]$", "x", 0}, {"^[$^|()*+?{}]+$", "$^|()*+?{}", 1},
    {"^[\\t ]$", "\t", 1},
    // groups
    {"^(ab)+$", "ababab", 1}, {"^(ab)+$", "aba", 0}, {"^(?:ab|cd)*$", "abcdab", 1}, {"^(?:ab|cd)*$", "abc", 0},
    {"^(?<year>\\d{4})-(?<m>\\d{2})$", "2024-05", 1}, {"^(?<year>\\d{4})-(?<m>\\d{2})$", "2024-5", 0},
    {"^((a|b)c)+$", "acbc", 1}, {"^((a|b)c)+$", "acb", 0}, {"^(a(b(c)?)?)?$", "ab", 1}, {"^(a(b(c)?)?)?$", "abc", 1},
    {"^(a(b(c)?)?)?$", "ac", 0}, {"^(a(b(c)?)?)?$", "", 1}, {"^(a*)*$", "aaa", 1}, {"^(a*)*b$", "aab", 1},
    {"^(a*)+$", "", 1}, {"^(a|b)*c$", "ababc", 1}, {"^(a*b*)*$", "abba", 1}, {"^(a*b*)*$", "abca", 0},
    {"^(ab*)?c$", "c", 1}, {"^(ab*)?c$", "bc", 0}, {"^(ab*)?c$", "abbc", 1}, {"^(ab*)*$", "b", 0},
    {"^(ab*)*$", "abab", 1}, {"^(ab*)+$", "abbab", 1}, {"^(ab*)+$", "", 0}, {"^(ab*)+$", "bab", 0},
    {"^()$", "", 1}, {"^()+a$", "a", 1}, {"^(()|a)+$", "aa", 1}, {"^((((x))))$", "x", 1}, {"^(?:)*$", "", 1},
    {"^(?:a|b(?:c|d(?:e|f)))$", "bdf", 1}, {"^(?:a|b(?:c|d(?:e|f)))$", "bd", 0}, {"^(a|ab)(c|bcd)(d*)$", "abcd", 1},
    {"^(?<名>x)$", "x", 1},
    // quantifiers: exact bounds
    {"^a{2,3}$", "a", 0}, {"^a{2,3}$", "aa", 1}, {"^a{2,3}$", "aaa", 1}, {"^a{2,3}$", "aaaa", 0},
    {"^a{3}$", "aaa", 1}, {"^a{3}$", "aa", 0}, {"^a{3}$", "aaaa", 0}, {"^a{2,}$", "a", 0}, {"^a{2,}$", "aa", 1},
    {"^a{2,}$", "aaaaaaa", 1}, {"^a{0}$", "", 1}, {"^a{0}$", "a", 0}, {"^xa{0}y$", "xy", 1}, {"^a{0,2}$", "", 1},
    {"^a{0,2}$", "aa", 1}, {"^a{0,2}$", "aaa", 0}, {"^a{0,}$", "aaaa", 1}, {"^a{1}$", "a", 1}, {"^a{1,1}$", "aa", 0},
    {"^a*$", "", 1}, {"^a*$", "aaa", 1}, {"^a*$", "ab", 0}, {"^a+$", "", 0}, {"^a+$", "aaa", 1}, {"^a?$", "", 1},
    {"^a?$", "aa", 0}, {"^a*?$", "aaa", 1}, {"^a+?b$", "aab", 1}, {"^a??$", "a", 1}, {"^a{2,3}?$", "aaa", 1},
    {"^a{2,3}?$", "aaaa", 0}, {"^a{2,}?$", "aaa", 1}, {"^(ab){2}$", "abab", 1}, {"^(ab){2}$", "ab", 0},
    {"^(a|bc){2,3}$", "abcbc", 1}, {"^(a|bc){2,3}$", "a", 0}, {"^(a|bc){2,3}$", "aaaa", 0},
    {"^x(ab){1,2}y$", "xababy", 1}, {"^x(ab){1,2}y$", "xy", 0}, {"^x(ab){1,2}y$", "xabababy", 0},
    {"a{2,3}", "aaaa", 1}, {"a{2,3}", "aba", 0}, {"^[ab]{1,2}c*$", "abccc", 1}, {"^[ab]{1,2}c*$", "abac", 0},
    {"^(a{2}){2}$", "aaaa", 1}, {"^(a{2}){2}$", "aaa", 0}, {"^(a{1,2}){2}$", "aaa", 1}, {"^(a{1,2}){2}$", "aaaaa", 0},
    {"^(a+){2,}$", "aa", 1}, {"^(a+){2,}$", "a", 0}, {"^(a?b){2,3}$", "bab", 1}, {"^(a?b){2,3}$", "abababab", 0},
    {"^\\d{1,3}(,\\d{3})*$", "1,234,567", 1}, {"^\\d{1,3}(,\\d{3})*$", "1,23", 0},
    // realistic JSON Schema patterns
    {"^[A-Z]{3}-\\d{4}$", "ABC-1234", 1}, {"^[A-Z]{3}-\\d{4}$", "AB-1234", 0}, {"^[A-Z]{3}-\\d{4}$", "ABC-12345", 0},
    {"^[A-Z]{3}-\\d{4}$", "abc-1234", 0}, {"^\\d{3}-\\d{2}-\\d{4}$", "123-45-6789", 1},
    {"^\\d{3}-\\d{2}-\\d{4}$", "123-456-789", 0}, {"^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$", "john.doe+tag@example.co.uk", 1},
    {"^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$", "john@localhost", 0},
    {"^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$", "a@b.c", 0}, {"^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$", "a@b.cd", 1},
    {"^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$", "A@b.cd", 0}, {"^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$", "@b.cd", 0},
    {"^(\\([0-9]{3}\\))?[0-9]{3}-[0-9]{4}$", "(555)123-4567", 1}, {"^(\\([0-9]{3}\\))?[0-9]{3}-[0-9]{4}$", "555-1234", 1},
    {"^(\\([0-9]{3}\\))?[0-9]{3}-[0-9]{4}$", "(555)555-12345", 0}, {"^(\\([0-9]{3}\\))?[0-9]{3}-[0-9]{4}$", "(55)123-4567", 0},
    {"^(\\([0-9]{3}\\))?[0-9]{3}-[0-9]{4}$", "(555)-1234", 0},
    {"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", "123e4567-e89b-12d3-a456-426614174000", 1},
    {"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", "123e4567-e89b-12d3-a456-42661417400", 0},
    {"^\\d{4}-\\d{2}-\\d{2}(T\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?(Z|[+-]\\d{2}:\\d{2})?)?$", "2024-01-31T12:30:05.25+01:00", 1},
    {"^\\d{4}-\\d{2}-\\d{2}(T\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?(Z|[+-]\\d{2}:\\d{2})?)?$", "2024-01-31T12", 0},
    {"^#?([a-fA-F0-9]{6}|[a-fA-F0-9]{3})$", "#a0F", 1}, {"^#?([a-fA-F0-9]{6}|[a-fA-F0-9]{3})$", "#a0F1", 0},
    {"^(\\+|-)?\\d+(\\.\\d+)?$", "-12.5", 1}, {"^(\\+|-)?\\d+(\\.\\d+)?$", "12.", 0},
    {"^https?://[^\\s/$.?#].[^\\s]*$", "https://example.com/a?b", 1}, {"^https?://[^\\s/$.?#].[^\\s]*$", "http:// x", 0},
    {"^[^@\\s]+@[^@\\s]+$", "ü@ß", 1}, {"^[^@\\s]+@[^@\\s]+$", "a b@c", 0}, {"\\S+", "   x  ", 1}, {"\\S+", "   ", 0},
};

static void test_table(void) {
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const mcase *c = &CASES[i];
        int got = accepts(c->pat, c->in);
        if (got != c->want)
            fprintf(stderr, "case %zu: /%s/ on \"%s\": got %d, want %d\n", i, c->pat, c->in, got, c->want);
        ASSERT_EQ(got, c->want);
    }
}

/* Patterns and inputs with NUL, surrogates in the input, long unrolled counts. */
static void test_special(void) {
    wk_rx rx;
    char err[256];
    ASSERT_EQ(accepts_n("^a\\0b$", "a\0b", 3), 1);
    ASSERT_EQ(accepts_n("^a\\0b$", "a0b", 3), 0);
    ASSERT_EQ(accepts_n("^a\\x00$", "a\0", 2), 1);
    // a NUL byte inside the pattern is a literal
    ASSERT_EQ(wk_rx_compile("^a\0b$", 5, &rx, err, sizeof err), 0);
    uint32_t nul[3] = {'a', 0, 'b'};
    ASSERT_EQ(wk_rx_match(&rx, nul, 3), 1);
    ASSERT_EQ(wk_rx_match(&rx, nul, 2), 0);
    wk_rx_free(&rx);
    // lone surrogates in the input never match, not even `.` or [^a]
    ASSERT_EQ(wk_rx_compile("^[^a]$", 6, &rx, err, sizeof err), 0);
    uint32_t sur[1] = {0xD83D};
    ASSERT_EQ(wk_rx_match(&rx, sur, 1), 0);
    uint32_t big[1] = {0x10FFFF};
    ASSERT_EQ(wk_rx_match(&rx, big, 1), 1);
    wk_rx_free(&rx);
    wk_rx_free(&rx); // freed twice: the second is on a zeroed rx
    wk_rx_free(NULL);
    // the largest count, exactly
    static uint32_t as[10001];
    for (int i = 0; i < 10001; i++)
        as[i] = 'a';
    const char *p = "^a{10000}$";
    ASSERT_EQ(wk_rx_compile(p, strlen(p), &rx, err, sizeof err), 0);
    ASSERT_TRUE(rx.n_states <= 10002);
    ASSERT_EQ(wk_rx_match(&rx, as, 10000), 1);
    ASSERT_EQ(wk_rx_match(&rx, as, 9999), 0);
    ASSERT_EQ(wk_rx_match(&rx, as, 10001), 0);
    wk_rx_free(&rx);
    p = "^(ab|c){0,5000}$";
    ASSERT_EQ(wk_rx_compile(p, strlen(p), &rx, err, sizeof err), 0);
    ASSERT_EQ(check_shape(&rx, p), 0);
    wk_rx_free(&rx);
    // sizes: a small pattern gives a small, mostly epsilon-free NFA
    p = "^[A-Z]{3}-\\d{4}$";
    ASSERT_EQ(wk_rx_compile(p, strlen(p), &rx, err, sizeof err), 0);
    ASSERT_EQ(rx.n_states, 9);
    ASSERT_EQ(rx.eps_off[rx.n_states], 0);
    wk_rx_free(&rx);
    p = "abc";
    ASSERT_EQ(wk_rx_compile(p, strlen(p), &rx, err, sizeof err), 0);
    ASSERT_TRUE(rx.n_states <= 5);
    ASSERT_EQ(rx.eps_off[rx.n_states], 0);
    wk_rx_free(&rx);
    // an empty language: one non-accepting state with no moves
    ASSERT_EQ(wk_rx_compile("[]", 2, &rx, err, sizeof err), 0);
    ASSERT_EQ(rx.n_states, 1);
    ASSERT_EQ(rx.accept[0], 0);
    ASSERT_EQ(rx.edge_off[1], 0);
    ASSERT_EQ(wk_rx_match(&rx, NULL, 0), 0);
    wk_rx_free(&rx);
    // a pattern need not be NUL-terminated
    ASSERT_EQ(wk_rx_compile("^abXYZ", 3, &rx, err, sizeof err), 0);
    uint32_t ab[2] = {'a', 'b'};
    ASSERT_EQ(wk_rx_match(&rx, ab, 2), 1);
    wk_rx_free(&rx);
}

typedef struct ecase {
    const char *pat;
    int rc;
    const char *msg; // must appear in the error message
} ecase;

static const ecase ERRORS[] = {
    {"(?=a)", -EINVAL, "lookahead (?= at offset 0 is not supported"},
    {"abc(?=a)", -EINVAL, "lookahead (?= at offset 3 is not supported"},
    {"a(?!b)", -EINVAL, "negative lookahead (?! at offset 1"},
    {"(?<=a)b", -EINVAL, "lookbehind (?<= at offset 0"},
    {"(?<!a)b", -EINVAL, "negative lookbehind (?<! at offset 0"},
    {"(a)\\1", -EINVAL, "backreference \\1 at offset 3"},
    {"[\\1]", -EINVAL, "backreference \\1 at offset 1"},
    {"(?<n>a)\\k<n>", -EINVAL, "backreference \\k at offset 7"},
    {"\\bfoo", -EINVAL, "word boundary \\b at offset 0"},
    {"a\\B", -EINVAL, "word boundary \\B at offset 1"},
    {"[\\B]", -EINVAL, "word boundary \\B"},
    {"a^b", -EINVAL, "'^' at offset 1"},
    {"a$b", -EINVAL, "'$' at offset 1"},
    {"(^a)", -EINVAL, "'^' at offset 1"},
    {"(a$)", -EINVAL, "'$' at offset 2"},
    {"a|b^", -EINVAL, "'^' at offset 3"},
    {"^^a", -EINVAL, "'^' at offset 1"},
    {"a$$", -EINVAL, "'$' at offset 1"},
    {"(a|$)", -EINVAL, "'$' at offset 3"},
    {"\\p{L}", -EINVAL, "unicode property escape \\p at offset 0"},
    {"[\\P{L}]", -EINVAL, "unicode property escape \\P at offset 1"},
    {"(a", -EINVAL, "unterminated group '(' at offset 0"},
    {"((a)", -EINVAL, "unterminated group '(' at offset 0"},
    {"a(b(c)", -EINVAL, "unterminated group '(' at offset 1"},
    {"a)", -EINVAL, "unbalanced ')' at offset 1"},
    {"(a))", -EINVAL, "unbalanced ')' at offset 3"},
    {"[a", -EINVAL, "unterminated character class '[' at offset 0"},
    {"x[a-", -EINVAL, "unterminated character class '[' at offset 1"},
    {"[\\]", -EINVAL, "unterminated character class"},
    {"a]", -EINVAL, "unbalanced ']' at offset 1"},
    {"a}", -EINVAL, "unbalanced '}' at offset 1"},
    {"a{3,2}", -EINVAL, "quantifier {3,2} at offset 1 has min > max"},
    {"*a", -EINVAL, "quantifier '*' at offset 0 has nothing to repeat"},
    {"a**", -EINVAL, "quantifier '*' at offset 2 has nothing to repeat"},
    {"a+*", -EINVAL, "quantifier '*' at offset 2"},
    {"a??+", -EINVAL, "quantifier '+' at offset 3"},
    {"a|+", -EINVAL, "quantifier '+' at offset 2 has nothing to repeat"},
    {"(?:*)", -EINVAL, "quantifier '*' at offset 3"},
    {"(|?)", -EINVAL, "quantifier '?' at offset 2"},
    {"^*", -EINVAL, "quantifier '*' at offset 1"},
    {"{2}", -EINVAL, "quantifier '{' at offset 0 has nothing to repeat"},
    {"a{2}{3}", -EINVAL, "quantifier '{' at offset 4 has nothing to repeat"},
    {"a{10001}", -EINVAL, "exceeds 10000"},
    {"a{1,10001}", -EINVAL, "exceeds 10000"},
    {"a{99999999999999999999}", -EINVAL, "exceeds 10000"},
    {"a{", -EINVAL, "'{' at offset 1 is not a valid quantifier"},
    {"a{x}", -EINVAL, "'{' at offset 1 is not a valid quantifier"},
    {"a{,3}", -EINVAL, "'{' at offset 1 is not a valid quantifier"},
    {"a{1,2", -EINVAL, "'{' at offset 1 is not a valid quantifier"},
    {"{abc", -EINVAL, "'{' at offset 0 is not a valid quantifier"},
    {"\xff", -EINVAL, "invalid UTF-8 at offset 0"},
    {"a\xc3", -EINVAL, "invalid UTF-8 at offset 1"},
    {"ab\xed\xa0\x80", -EINVAL, "invalid UTF-8 at offset 2"},
    {"\xc0\x80", -EINVAL, "invalid UTF-8 at offset 0"},
    {"\xf4\x90\x80\x80", -EINVAL, "invalid UTF-8 at offset 0"},
    {"[a\xe2\x82]", -EINVAL, "invalid UTF-8 at offset 2"},
    {"\\uD800", -EINVAL, "lone surrogate \\uD800 at offset 0"},
    {"\\uDE00\\uD83D", -EINVAL, "lone surrogate \\uDE00 at offset 0"},
    {"x\\u{D83D}", -EINVAL, "lone surrogate \\uD83D at offset 1"},
    {"[z-a]", -EINVAL, "character class range at offset 1 is out of order"},
    {"\\", -EINVAL, "lone backslash"},
    {"\\q", -EINVAL, "unknown escape \\q at offset 0"},
    {"\\a", -EINVAL, "unknown escape \\a"},
    {"\\é", -EINVAL, "unknown escape at offset 0"},
    {"\\x4", -EINVAL, "invalid \\x escape at offset 0"},
    {"\\xZZ", -EINVAL, "invalid \\x escape"},
    {"\\u12", -EINVAL, "invalid \\u escape at offset 0"},
    {"\\u{110000}", -EINVAL, "invalid \\u{...} escape at offset 0"},
    {"\\u{}", -EINVAL, "invalid \\u{...} escape"},
    {"\\u{41", -EINVAL, "invalid \\u{...} escape"},
    {"\\c1", -EINVAL, "invalid \\c escape"},
    {"\\01", -EINVAL, "octal escape \\01 at offset 0"},
    {"(?i)a", -EINVAL, "group syntax '(?' at offset 0 is not supported"},
    {"(?", -EINVAL, "group syntax '(?' at offset 0"},
    {"(?<>a)", -EINVAL, "empty group name at offset 0"},
    {"(?<a", -EINVAL, "unterminated group name at offset 0"},
    {"(?<1a>x)", -EINVAL, "invalid group name at offset 0"},
    {"(a{1000}){1000}", -E2BIG, "more than 100000 NFA states"},
    {"((a{100}){100}){100}", -E2BIG, "more than 100000 NFA states"},
    {"(x{1,10000}){1,11}", -E2BIG, "NFA states"},
    {"[^a]{10000}(([^b]{10000}){10})", -E2BIG, "NFA states"},
};

static void test_errors(void) {
    char err[256];
    for (size_t i = 0; i < sizeof ERRORS / sizeof ERRORS[0]; i++) {
        const ecase *c = &ERRORS[i];
        wk_rx rx;
        memset(&rx, 0x5a, sizeof rx);
        int rc = wk_rx_compile(c->pat, strlen(c->pat), &rx, err, sizeof err);
        if (rc != c->rc || !strstr(err, c->msg))
            fprintf(stderr, "error case %zu /%s/: rc %d, message \"%s\", want %d \"%s\"\n", i, c->pat, rc, err, c->rc,
                    c->msg);
        ASSERT_EQ(rc, c->rc);
        ASSERT_TRUE(strstr(err, c->msg) != NULL);
        ASSERT_TRUE(rx.n_states == 0 && rx.accept == NULL && rx.edges == NULL); // zeroed on failure
        // no message buffer is fine too
        ASSERT_EQ(wk_rx_compile(c->pat, strlen(c->pat), &rx, NULL, 0), c->rc);
    }
    // a message that does not fit is cut, not overrun
    char small[8];
    memset(small, 'x', sizeof small);
    wk_rx rx;
    ASSERT_EQ(wk_rx_compile("(?=a)", 5, &rx, small, sizeof small), -EINVAL);
    ASSERT_EQ(strlen(small), 7);
}

/* ---- differential run against POSIX ERE ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(uint32_t n) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32) % n;
}

static void gen_expr(char *o, size_t *k, int depth);

static void gen_atom(char *o, size_t *k, int depth) {
    static const char *atoms[] = {"a", "b", "c", ".", "[ab]", "[^a]", "[a-b]", "[^bc]", "ab"};
    uint32_t r = rnd(depth < 3 ? 12 : 9);
    if (r < 9) {
        size_t l = strlen(atoms[r]);
        memcpy(o + *k, atoms[r], l);
        *k += l;
        return;
    }
    o[(*k)++] = '(';
    gen_expr(o, k, depth + 1);
    o[(*k)++] = ')';
}

static void gen_seq(char *o, size_t *k, int depth) {
    static const char *quants[] = {"*", "+", "?", "{2}", "{0,2}", "{1,3}", "{2,}", "{0,1}", "{1}"};
    uint32_t n = 1 + rnd(3);
    for (uint32_t i = 0; i < n; i++) {
        gen_atom(o, k, depth);
        if (rnd(2)) {
            const char *q = quants[rnd(9)];
            memcpy(o + *k, q, strlen(q));
            *k += strlen(q);
        }
    }
}

static void gen_expr(char *o, size_t *k, int depth) {
    uint32_t n = 1 + (rnd(3) == 0 ? rnd(3) : 0);
    for (uint32_t i = 0; i < n; i++) {
        if (i)
            o[(*k)++] = '|';
        if (depth == 0 && rnd(3) == 0)
            o[(*k)++] = '^';
        gen_seq(o, k, depth);
        if (depth == 0 && rnd(3) == 0)
            o[(*k)++] = '$';
    }
}

static void test_posix_differential(void) {
    char pat[4096], in[8];
    uint32_t cps[8];
    int mismatches = 0, runs = 0, accepted = 0;
    for (int it = 0; it < 400 && mismatches < 5; it++) {
        size_t k = 0;
        gen_expr(pat, &k, 0);
        pat[k] = '\0';
        regex_t re;
        if (regcomp(&re, pat, REG_EXTENDED | REG_NOSUB)) {
            fprintf(stderr, "regcomp refused /%s/\n", pat);
            continue;
        }
        wk_rx rx;
        char err[256];
        int rc = wk_rx_compile(pat, k, &rx, err, sizeof err);
        ASSERT_EQ(rc, 0);
        if (rc) {
            fprintf(stderr, "/%s/: %s\n", pat, err);
            regfree(&re);
            continue;
        }
        ASSERT_EQ(check_shape(&rx, pat), 0);
        // every string over {a, b, c} up to length 5
        for (int len = 0; len <= 5; len++) {
            int total = 1;
            for (int j = 0; j < len; j++)
                total *= 3;
            for (int v = 0; v < total; v++) {
                int x = v;
                for (int j = 0; j < len; j++) {
                    in[j] = (char)('a' + x % 3);
                    cps[j] = (uint32_t)in[j];
                    x /= 3;
                }
                in[len] = '\0';
                int want = regexec(&re, in, 0, NULL, 0) == 0;
                int got = wk_rx_match(&rx, cps, (size_t)len);
                runs++;
                accepted += want;
                if (got != want && mismatches++ < 5)
                    fprintf(stderr, "differential: /%s/ on \"%s\": got %d, POSIX %d\n", pat, in, got, want);
            }
        }
        wk_rx_free(&rx);
        regfree(&re);
    }
    ASSERT_EQ(mismatches, 0);
    ASSERT_TRUE(runs > 100000);
    ASSERT_TRUE(accepted > runs / 10 && accepted < runs - runs / 10); // both outcomes well exercised
}

/* Random bytes from the syntax's alphabet: every pattern compiles to a well-formed
 * NFA or fails with -EINVAL/-E2BIG and a message; nothing crashes or leaks. */
static void test_garbage(void) {
    static const char alpha[] = "ab()[]{}|^$*+?.\\-,0123:<>=!dDwWsSbBkpuxc\xc3\xa9\xff";
    char pat[16], err[256];
    uint32_t in[4] = {'a', 'b', 0xE9, '-'};
    int ok = 0, bad = 0;
    for (int it = 0; it < 30000; it++) {
        size_t len = rnd(sizeof pat);
        for (size_t i = 0; i < len; i++)
            pat[i] = alpha[rnd(sizeof alpha - 1)];
        wk_rx rx;
        err[0] = 'x';
        int rc = wk_rx_compile(pat, len, &rx, err, sizeof err);
        if (rc == 0) {
            ok++;
            ASSERT_EQ(err[0], '\0');
            if (check_shape(&rx, "(random)"))
                ASSERT_TRUE(0);
            for (size_t n = 0; n <= 4; n++)
                ASSERT_TRUE(wk_rx_match(&rx, in, n) >= 0);
            wk_rx_free(&rx);
        } else {
            bad++;
            if (!(rc == -EINVAL || rc == -E2BIG) || !err[0]) {
                fprintf(stderr, "random pattern of %zu bytes: rc %d, message \"%s\"\n", len, rc, err);
                ASSERT_TRUE(0);
            }
        }
    }
    ASSERT_TRUE(ok > 1000 && bad > 1000);
}

int main(void) {
    test_table();
    test_special();
    test_errors();
    test_posix_differential();
    test_garbage();
    return kt_done("test_regex");
}
