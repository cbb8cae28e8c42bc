/* wk_regex.c: JSON Schema patterns to an NFA over code points (see wk_regex.h).
 *
 * Design note. Three stages.
 *
 * (1) A recursive-descent parser turns the pattern into a small AST: sets of
 * code-point ranges (sorted, merged, surrogates cut out), concatenation,
 * alternation and repetition {min, max}. What is trivially the empty word is
 * folded away (x{0}, (), a repeated empty group), so unrolling never spins on
 * nothing. Every error names its construct and byte offset.
 *
 * (2) A Thompson-style builder emits states, range edges and epsilon edges, with
 * one invariant: building a node from state `from` adds edges only out of `from` or
 * out of states it creates, and only into states it creates. So the alternatives
 * of a group can all start at `from`, and every loop gets a fresh state (a loop on
 * `from` itself would leak into its siblings). An optional copy joins through a
 * fresh state for the same reason. Repetition is unrolled: x{2,4} is x x, then two
 * copies each of which may be skipped to the join. Top-level alternatives start at
 * the start state (anchored with ^) or at one shared "any code point" loop, and end
 * accepting (anchored with $) or with an epsilon into one shared accepting "any"
 * loop.
 *
 * (3) Three passes, each keeping the language: a non-accepting state whose only
 * move is a single epsilon is replaced by its target everywhere; a state whose
 * epsilon closure is small (CL_STATES, CL_EDGES) takes the closure's edges and
 * acceptance instead of its epsilons (sound state by state: every accepting path
 * of the old NFA maps to one of the new and back); then the states that the start
 * cannot reach or that cannot reach acceptance go, and the rest are renumbered in
 * breadth-first order from the start, with each state's edges merged per target
 * and sorted by code point. */
#include "worker/wk_regex.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CP_MAX 0x10FFFFu
#define MAX_COUNT 10000                    // largest count in {n,m}
#define MAX_DEPTH 256                      // deepest group nesting
#define CL_STATES 32                       // epsilon closures up to this many states ...
#define CL_EDGES 64                        // ... bringing up to this many edges are folded
#define WORK_MAX (16 * WK_RX_MAX_STATES)   // builder steps (a safety net over the state limit)
#define UNBOUNDED UINT32_MAX

typedef struct range {
    uint32_t lo, hi;
} range;

static const range R_DIGIT[] = {{'0', '9'}};
static const range R_WORD[] = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
static const range R_SPACE[] = {{0x09, 0x0D},     {0x20, 0x20},     {0xA0, 0xA0},     {0x1680, 0x1680},
                                {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                                {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};
static const range R_NEWLINE[] = {{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}}; // what `.` does not match
static const range R_ANY[] = {{0, 0xD7FF}, {0xE000, CP_MAX}};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Makes the array whose address is pp (a T **) hold at least need elements of elem
 * bytes, doubling. 0 or -ENOMEM (the array is kept). */
static int reserve(void *pp, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need)
        nc *= 2;
    void *p;
    memcpy(&p, pp, sizeof p);
    void *q = realloc(p, nc * elem);
    if (!q)
        return -ENOMEM;
    memcpy(pp, &q, sizeof q);
    *cap = nc;
    return 0;
}

/* ---- parser ---- */

enum { N_EMPTY, N_SET, N_CAT, N_ALT, N_REP };

typedef struct node {
    int type;
    uint32_t a, b; // N_SET: ranges rng[a .. a + b); N_REP: min a, max b (UNBOUNDED)
    int32_t kid;   // first child (N_CAT, N_ALT, N_REP) or -1
    int32_t next;  // next sibling or -1
} node;

typedef struct top_alt {
    int32_t node;
    int anch_start, anch_end;
} top_alt;

typedef struct parser {
    const unsigned char *s;
    size_t len, pos;
    node *nodes;
    size_t n_nodes, cap_nodes;
    range *rng; // every set's ranges
    size_t n_rng, cap_rng;
    range *cls; // scratch: the set being parsed
    size_t n_cls, cap_cls;
    top_alt *alts;
    size_t n_alts, cap_alts;
    char *err;
    size_t errlen;
} parser;

__attribute__((format(printf, 3, 4))) static int fail(parser *p, int rc, const char *fmt, ...) {
    if (p->err && p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err, p->errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int is_digit(unsigned c) { return c >= '0' && c <= '9'; }
static int is_alpha(unsigned c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_quant(unsigned c) { return c == '*' || c == '+' || c == '?' || c == '{'; }
static int hexval(unsigned c) {
    if (is_digit(c))
        return (int)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (int)(c - 'A' + 10);
    return -1;
}
static int is_surrogate(uint32_t c) { return c >= 0xD800 && c <= 0xDFFF; }

/* A new node of type; its index in *id. */
static int new_node(parser *p, int type, int32_t *id) {
    if (p->n_nodes >= INT32_MAX)
        return -E2BIG;
    if (reserve(&p->nodes, &p->cap_nodes, p->n_nodes + 1, sizeof *p->nodes))
        return -ENOMEM;
    node *n = &p->nodes[p->n_nodes];
    n->type = type;
    n->a = n->b = 0;
    n->kid = n->next = -1;
    *id = (int32_t)p->n_nodes++;
    return 0;
}

/* Decodes one code point of the pattern at p->pos (strict UTF-8) and steps past it. */
static int utf8_next(parser *p, uint32_t *cp) {
    const unsigned char *s = p->s + p->pos;
    size_t n = p->len - p->pos, k;
    uint32_t c = s[0], min;
    if (c < 0x80) {
        *cp = c;
        p->pos++;
        return 0;
    }
    if ((c & 0xE0) == 0xC0)
        k = 1, c &= 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        k = 2, c &= 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        k = 3, c &= 0x07, min = 0x10000;
    else
        goto bad;
    if (n < k + 1)
        goto bad;
    for (size_t i = 1; i <= k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            goto bad;
        c = c << 6 | (s[i] & 0x3F);
    }
    if (c < min || c > CP_MAX || is_surrogate(c))
        goto bad;
    *cp = c;
    p->pos += k + 1;
    return 0;
bad:
    return fail(p, -EINVAL, "invalid UTF-8 at offset %zu", p->pos);
}

/* Appends [lo, hi] minus the surrogates to the scratch set. */
static int cls_add(parser *p, uint32_t lo, uint32_t hi) {
    if (lo <= 0xDFFF && hi >= 0xD800) {
        int rc = lo < 0xD800 ? cls_add(p, lo, 0xD7FF) : 0;
        return rc ? rc : hi > 0xDFFF ? cls_add(p, 0xE000, hi) : 0;
    }
    if (reserve(&p->cls, &p->cap_cls, p->n_cls + 1, sizeof *p->cls))
        return -ENOMEM;
    p->cls[p->n_cls++] = (range){lo, hi};
    return 0;
}

/* Appends a sorted table of ranges, or its complement, to the scratch set. */
static int cls_add_table(parser *p, const range *t, size_t n, int negate) {
    int rc = 0;
    uint32_t next = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (!negate)
            rc = cls_add(p, t[i].lo, t[i].hi);
        else if (t[i].lo > next)
            rc = cls_add(p, next, t[i].lo - 1);
        next = t[i].hi + 1;
    }
    if (!rc && negate && next <= CP_MAX)
        rc = cls_add(p, next, CP_MAX);
    return rc;
}

static int cmp_range(const void *a, const void *b) {
    const range *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return x->hi < y->hi ? -1 : x->hi > y->hi;
}

/* Turns the scratch set (complemented when negate) into an N_SET node and empties
 * the scratch. */
static int make_set(parser *p, int negate, int32_t *out) {
    int rc;
    if (negate) { // the surrogates stay out of the complement
        if (reserve(&p->cls, &p->cap_cls, p->n_cls + 1, sizeof *p->cls))
            return -ENOMEM;
        p->cls[p->n_cls++] = (range){0xD800, 0xDFFF};
    }
    if (p->n_cls > 1)
        qsort(p->cls, p->n_cls, sizeof *p->cls, cmp_range);
    size_t m = 0;
    for (size_t i = 0; i < p->n_cls; i++) {
        if (m && p->cls[i].lo <= p->cls[m - 1].hi + 1) {
            if (p->cls[i].hi > p->cls[m - 1].hi)
                p->cls[m - 1].hi = p->cls[i].hi;
        } else {
            p->cls[m++] = p->cls[i];
        }
    }
    if (reserve(&p->rng, &p->cap_rng, p->n_rng + m + 1, sizeof *p->rng))
        return -ENOMEM;
    size_t first = p->n_rng;
    if (!negate) {
        if (m)
            memcpy(p->rng + first, p->cls, m * sizeof *p->cls);
        p->n_rng += m;
    } else {
        uint32_t next = 0;
        for (size_t i = 0; i < m; i++) {
            if (p->cls[i].lo > next)
                p->rng[p->n_rng++] = (range){next, p->cls[i].lo - 1};
            next = p->cls[i].hi + 1;
        }
        if (next <= CP_MAX)
            p->rng[p->n_rng++] = (range){next, CP_MAX};
    }
    p->n_cls = 0;
    if ((rc = new_node(p, N_SET, out)))
        return rc;
    p->nodes[*out].a = (uint32_t)first;
    p->nodes[*out].b = (uint32_t)(p->n_rng - first);
    return 0;
}

/* Reads exactly n hex digits at p->pos into *v and steps past them; -1 if they are not there. */
static int read_hex(parser *p, int n, uint32_t *v) {
    *v = 0;
    if (p->len - p->pos < (size_t)n)
        return -1;
    for (int i = 0; i < n; i++) {
        int h = hexval(p->s[p->pos + (size_t)i]);
        if (h < 0)
            return -1;
        *v = *v * 16 + (uint32_t)h;
    }
    p->pos += (size_t)n;
    return 0;
}

/* \u after its 'u': \uHHHH (a high surrogate followed by \uLOW combines) or \u{H...}. */
static int parse_u(parser *p, size_t off, uint32_t *cp) {
    if (p->pos < p->len && p->s[p->pos] == '{') {
        size_t i = p->pos + 1;
        uint32_t v = 0;
        while (i < p->len && hexval(p->s[i]) >= 0) {
            if (v <= CP_MAX)
                v = v * 16 + (uint32_t)hexval(p->s[i]);
            i++;
        }
        if (i == p->pos + 1 || i >= p->len || p->s[i] != '}' || v > CP_MAX)
            return fail(p, -EINVAL, "invalid \\u{...} escape at offset %zu", off);
        p->pos = i + 1;
        *cp = v;
        return 0;
    }
    if (read_hex(p, 4, cp))
        return fail(p, -EINVAL, "invalid \\u escape at offset %zu (four hex digits or {...} expected)", off);
    if (*cp >= 0xD800 && *cp <= 0xDBFF && p->len - p->pos >= 6 && p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u') {
        size_t save = p->pos;
        uint32_t low;
        p->pos += 2;
        if (!read_hex(p, 4, &low) && low >= 0xDC00 && low <= 0xDFFF) {
            *cp = 0x10000 + ((*cp - 0xD800) << 10) + (low - 0xDC00);
            return 0;
        }
        p->pos = save;
    }
    return 0;
}

/* The escape at p->pos (its backslash). Either one code point in *cp (*is_set 0)
 * or a class such as \d appended to the scratch set (*is_set 1). */
static int parse_escape(parser *p, int in_class, uint32_t *cp, int *is_set) {
    size_t off = p->pos++;
    *is_set = 0;
    if (p->pos >= p->len)
        return fail(p, -EINVAL, "lone backslash at the end of the pattern (offset %zu)", off);
    unsigned c = p->s[p->pos++];
    switch (c) {
    case 'd':
    case 'D':
        *is_set = 1;
        return cls_add_table(p, R_DIGIT, N_OF(R_DIGIT), c == 'D');
    case 'w':
    case 'W':
        *is_set = 1;
        return cls_add_table(p, R_WORD, N_OF(R_WORD), c == 'W');
    case 's':
    case 'S':
        *is_set = 1;
        return cls_add_table(p, R_SPACE, N_OF(R_SPACE), c == 'S');
    case 't': *cp = '\t'; return 0;
    case 'n': *cp = '\n'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'v': *cp = '\v'; return 0;
    case '0':
        if (p->pos < p->len && is_digit(p->s[p->pos]))
            return fail(p, -EINVAL, "octal escape \\0%c at offset %zu is not supported", p->s[p->pos], off);
        *cp = 0;
        return 0;
    case 'b':
        if (in_class) {
            *cp = 0x08;
            return 0;
        }
        return fail(p, -EINVAL, "word boundary \\b at offset %zu is not supported", off);
    case 'B': return fail(p, -EINVAL, "word boundary \\B at offset %zu is not supported", off);
    case 'k': return fail(p, -EINVAL, "backreference \\k at offset %zu is not supported", off);
    case 'p':
    case 'P': return fail(p, -EINVAL, "unicode property escape \\%c at offset %zu is not supported", c, off);
    case 'x':
        if (read_hex(p, 2, cp))
            return fail(p, -EINVAL, "invalid \\x escape at offset %zu (two hex digits expected)", off);
        return 0;
    case 'u': return parse_u(p, off, cp);
    case 'c':
        if (p->pos < p->len && is_alpha(p->s[p->pos])) {
            *cp = p->s[p->pos++] % 32;
            return 0;
        }
        return fail(p, -EINVAL, "invalid \\c escape at offset %zu (a letter expected)", off);
    default:
        if (c >= '1' && c <= '9')
            return fail(p, -EINVAL, "backreference \\%c at offset %zu is not supported", c, off);
        if (c >= 0x20 && c < 0x7F && !is_alpha(c) && !is_digit(c)) {
            *cp = c; // identity escape: \. \\ \/ \- \[ ...
            return 0;
        }
        if (c >= 0x20 && c < 0x7F)
            return fail(p, -EINVAL, "unknown escape \\%c at offset %zu", c, off);
        return fail(p, -EINVAL, "unknown escape at offset %zu", off);
    }
}

static int class_atom(parser *p, uint32_t *cp, int *is_set) {
    if (p->s[p->pos] == '\\')
        return parse_escape(p, 1, cp, is_set);
    *is_set = 0;
    return utf8_next(p, cp);
}

/* [...] or [^...] at p->pos. */
static int parse_class(parser *p, int32_t *out) {
    size_t off = p->pos++;
    int negate = 0, rc;
    p->n_cls = 0;
    if (p->pos < p->len && p->s[p->pos] == '^') {
        negate = 1;
        p->pos++;
    }
    for (;;) {
        if (p->pos >= p->len)
            return fail(p, -EINVAL, "unterminated character class '[' at offset %zu", off);
        if (p->s[p->pos] == ']') {
            p->pos++;
            break;
        }
        size_t aoff = p->pos;
        uint32_t a, b;
        int aset, bset;
        if ((rc = class_atom(p, &a, &aset)))
            return rc;
        if (p->len - p->pos >= 2 && p->s[p->pos] == '-' && p->s[p->pos + 1] != ']') {
            p->pos++;
            if ((rc = class_atom(p, &b, &bset)))
                return rc;
            if (aset || bset) { // [\w-.]: the '-' is a literal (Annex B)
                if ((!aset && (rc = cls_add(p, a, a))) || (!bset && (rc = cls_add(p, b, b))) ||
                    (rc = cls_add(p, '-', '-')))
                    return rc;
            } else if (a > b) {
                return fail(p, -EINVAL, "character class range at offset %zu is out of order", aoff);
            } else if ((rc = cls_add(p, a, b))) {
                return rc;
            }
        } else if (!aset && (rc = cls_add(p, a, a))) {
            return rc;
        }
    }
    return make_set(p, negate, out);
}

/* The group name after "(?<", up to and past its '>'. */
static int parse_name(parser *p, size_t off) {
    size_t start = p->pos;
    uint32_t cp;
    int rc;
    while (p->pos < p->len && p->s[p->pos] != '>') {
        unsigned c = p->s[p->pos];
        if (c >= 0x80) {
            if ((rc = utf8_next(p, &cp)))
                return rc;
        } else if (is_alpha(c) || c == '_' || c == '$' || (is_digit(c) && p->pos > start)) {
            p->pos++;
        } else {
            return fail(p, -EINVAL, "invalid group name at offset %zu", off);
        }
    }
    if (p->pos >= p->len)
        return fail(p, -EINVAL, "unterminated group name at offset %zu", off);
    if (p->pos == start)
        return fail(p, -EINVAL, "empty group name at offset %zu", off);
    p->pos++;
    return 0;
}

static int parse_alt(parser *p, int depth, int32_t *out);

/* ( ), (?: ) or (?<name> ) at p->pos. */
static int parse_group(parser *p, int depth, int32_t *out) {
    size_t off = p->pos++;
    int rc;
    if (depth >= MAX_DEPTH)
        return fail(p, -EINVAL, "groups nested deeper than %d at offset %zu", MAX_DEPTH, off);
    if (p->pos < p->len && p->s[p->pos] == '?') {
        unsigned c = p->len - p->pos > 1 ? p->s[p->pos + 1] : 0;
        unsigned c2 = p->len - p->pos > 2 ? p->s[p->pos + 2] : 0;
        if (c == ':') {
            p->pos += 2;
        } else if (c == '=') {
            return fail(p, -EINVAL, "lookahead (?= at offset %zu is not supported", off);
        } else if (c == '!') {
            return fail(p, -EINVAL, "negative lookahead (?! at offset %zu is not supported", off);
        } else if (c == '<' && c2 == '=') {
            return fail(p, -EINVAL, "lookbehind (?<= at offset %zu is not supported", off);
        } else if (c == '<' && c2 == '!') {
            return fail(p, -EINVAL, "negative lookbehind (?<! at offset %zu is not supported", off);
        } else if (c == '<') {
            p->pos += 2;
            if ((rc = parse_name(p, off)))
                return rc;
        } else {
            return fail(p, -EINVAL, "group syntax '(?' at offset %zu is not supported (only (?: and (?<name>)", off);
        }
    }
    if ((rc = parse_alt(p, depth + 1, out)))
        return rc;
    if (p->pos >= p->len || p->s[p->pos] != ')')
        return fail(p, -EINVAL, "unterminated group '(' at offset %zu", off);
    p->pos++;
    return 0;
}

/* Reads a count (saturating above MAX_COUNT) at s[*i]; 0 if there is no digit. */
static int read_count(const parser *p, size_t *i, uint32_t *v) {
    size_t i0 = *i;
    *v = 0;
    while (*i < p->len && is_digit(p->s[*i])) {
        if (*v <= MAX_COUNT)
            *v = *v * 10 + (p->s[*i] - '0');
        (*i)++;
    }
    return *i > i0;
}

/* {n}, {n,} or {n,m} at p->pos: 1 and p->pos past it, or 0 when it is not one. */
static int read_braces(parser *p, uint32_t *min, uint32_t *max) {
    size_t i = p->pos + 1;
    if (!read_count(p, &i, min) || i >= p->len)
        return 0;
    if (p->s[i] == '}') {
        *max = *min;
    } else if (p->s[i] == ',') {
        i++;
        if (i < p->len && p->s[i] == '}')
            *max = UNBOUNDED;
        else if (!read_count(p, &i, max) || i >= p->len || p->s[i] != '}')
            return 0;
    } else {
        return 0;
    }
    p->pos = i + 1;
    return 1;
}

/* One atom at p->pos (not '|' or ')'). */
static int parse_atom(parser *p, int depth, int32_t *out) {
    size_t off = p->pos;
    unsigned c = p->s[off];
    uint32_t cp;
    int is_set, rc;
    switch (c) {
    case '(': return parse_group(p, depth, out);
    case '[': return parse_class(p, out);
    case '.':
        p->pos++;
        p->n_cls = 0;
        return (rc = cls_add_table(p, R_NEWLINE, N_OF(R_NEWLINE), 1)) ? rc : make_set(p, 0, out);
    case '\\':
        p->n_cls = 0;
        if ((rc = parse_escape(p, 0, &cp, &is_set)))
            return rc;
        if (!is_set && is_surrogate(cp))
            return fail(p, -EINVAL, "lone surrogate \\u%04X at offset %zu can never match (a pair is \\uD83D\\uDE00)",
                        (unsigned)cp, off);
        if (!is_set && (rc = cls_add(p, cp, cp)))
            return rc;
        return make_set(p, 0, out);
    case '{':
        if (!read_braces(p, &cp, &cp))
            return fail(p, -EINVAL, "'{' at offset %zu is not a valid quantifier (a literal brace is \\{)", off);
        /* fall through */
    case '*':
    case '+':
    case '?': return fail(p, -EINVAL, "quantifier '%c' at offset %zu has nothing to repeat", c, off);
    case '}': return fail(p, -EINVAL, "unbalanced '}' at offset %zu (a literal brace is \\})", off);
    case ']': return fail(p, -EINVAL, "unbalanced ']' at offset %zu (a literal bracket is \\])", off);
    case '^':
        return fail(p, -EINVAL, "'^' at offset %zu is only supported at the start of a top-level alternative", off);
    case '$':
        return fail(p, -EINVAL, "'$' at offset %zu is only supported at the end of a top-level alternative", off);
    default:
        p->n_cls = 0;
        if ((rc = utf8_next(p, &cp)) || (rc = cls_add(p, cp, cp)))
            return rc;
        return make_set(p, 0, out);
    }
}

/* An atom and its quantifier, if any. */
static int parse_term(parser *p, int depth, int32_t *out) {
    int rc = parse_atom(p, depth, out);
    if (rc || p->pos >= p->len)
        return rc;
    size_t qoff = p->pos;
    uint32_t min, max;
    switch (p->s[qoff]) {
    case '*': min = 0, max = UNBOUNDED, p->pos++; break;
    case '+': min = 1, max = UNBOUNDED, p->pos++; break;
    case '?': min = 0, max = 1, p->pos++; break;
    case '{':
        if (!read_braces(p, &min, &max))
            return fail(p, -EINVAL, "'{' at offset %zu is not a valid quantifier (a literal brace is \\{)", qoff);
        if (min > MAX_COUNT || (max != UNBOUNDED && max > MAX_COUNT))
            return fail(p, -EINVAL, "repetition count in the quantifier at offset %zu exceeds %d", qoff, MAX_COUNT);
        if (max != UNBOUNDED && min > max)
            return fail(p, -EINVAL, "quantifier {%u,%u} at offset %zu has min > max", (unsigned)min, (unsigned)max,
                        qoff);
        break;
    default: return 0;
    }
    if (p->pos < p->len && p->s[p->pos] == '?')
        p->pos++; // lazy: the same language
    if (p->pos < p->len && is_quant(p->s[p->pos]))
        return fail(p, -EINVAL, "quantifier '%c' at offset %zu has nothing to repeat", p->s[p->pos], p->pos);
    if (p->nodes[*out].type == N_EMPTY || max == 0)
        return new_node(p, N_EMPTY, out);
    if (min == 1 && max == 1)
        return 0;
    int32_t r;
    if ((rc = new_node(p, N_REP, &r)))
        return rc;
    p->nodes[r].a = min;
    p->nodes[r].b = max;
    p->nodes[r].kid = *out;
    *out = r;
    return 0;
}

/* Terms up to '|', ')' or the end. At the top level (anch_end not NULL) a '$' that
 * ends the alternative is consumed and sets *anch_end. */
static int parse_seq(parser *p, int depth, int *anch_end, int32_t *out) {
    int32_t head = -1, tail = -1, t;
    int n = 0, rc;
    while (p->pos < p->len) {
        unsigned c = p->s[p->pos];
        if (c == '|' || c == ')')
            break;
        if (anch_end && c == '$' && (p->pos + 1 == p->len || p->s[p->pos + 1] == '|')) {
            p->pos++;
            *anch_end = 1;
            break;
        }
        if ((rc = parse_term(p, depth, &t)))
            return rc;
        if (p->nodes[t].type == N_EMPTY)
            continue;
        if (tail >= 0)
            p->nodes[tail].next = t;
        else
            head = t;
        tail = t;
        n++;
    }
    if (n == 0)
        return new_node(p, N_EMPTY, out);
    if (n == 1) {
        *out = head;
        return 0;
    }
    if ((rc = new_node(p, N_CAT, out)))
        return rc;
    p->nodes[*out].kid = head;
    return 0;
}

/* Alternatives inside a group, up to its ')' (not consumed). */
static int parse_alt(parser *p, int depth, int32_t *out) {
    int32_t head = -1, tail = -1, s;
    int n = 0, have_empty = 0, rc;
    for (;;) {
        if ((rc = parse_seq(p, depth, NULL, &s)))
            return rc;
        int empty = p->nodes[s].type == N_EMPTY;
        if (!empty || !have_empty) { // one empty alternative is enough
            if (tail >= 0)
                p->nodes[tail].next = s;
            else
                head = s;
            tail = s;
            n++;
            have_empty |= empty;
        }
        if (p->pos >= p->len || p->s[p->pos] != '|')
            break;
        p->pos++;
    }
    if (n == 1) {
        *out = head;
        return 0;
    }
    if ((rc = new_node(p, N_ALT, out)))
        return rc;
    p->nodes[*out].kid = head;
    return 0;
}

/* The whole pattern: top-level alternatives, each with its own anchors. */
static int parse_top(parser *p) {
    for (;;) {
        top_alt a = {.node = -1};
        int rc;
        if (p->pos < p->len && p->s[p->pos] == '^') {
            p->pos++;
            a.anch_start = 1;
        }
        if ((rc = parse_seq(p, 0, &a.anch_end, &a.node)))
            return rc;
        if (reserve(&p->alts, &p->cap_alts, p->n_alts + 1, sizeof *p->alts))
            return -ENOMEM;
        p->alts[p->n_alts++] = a;
        if (p->pos >= p->len)
            return 0;
        if (p->s[p->pos] == ')')
            return fail(p, -EINVAL, "unbalanced ')' at offset %zu", p->pos);
        p->pos++; // '|'
    }
}

/* ---- builder ---- */

typedef struct redge {
    int32_t from, to;
    uint32_t lo, hi;
} redge;

typedef struct xedge {
    int32_t from, to;
} xedge;

/* Edge lists with their source state, turned into CSR by to_csr. */
typedef struct builder {
    parser *p;
    int32_t n;
    uint8_t *acc;
    size_t cap_acc;
    redge *e;
    size_t ne, cap_e;
    xedge *x;
    size_t nx, cap_x;
    size_t work;
} builder;

static int too_big(builder *b) {
    return fail(b->p, -E2BIG, "the pattern needs more than %d NFA states or %d edges (repetition is unrolled)",
                WK_RX_MAX_STATES, WK_RX_MAX_EDGES);
}

static int b_state(builder *b, int32_t *s) {
    if (b->n >= WK_RX_MAX_STATES)
        return too_big(b);
    if (reserve(&b->acc, &b->cap_acc, (size_t)b->n + 1, 1))
        return -ENOMEM;
    b->acc[b->n] = 0;
    *s = b->n++;
    return 0;
}

static int b_edge(builder *b, int32_t from, uint32_t lo, uint32_t hi, int32_t to) {
    if (b->ne >= WK_RX_MAX_EDGES)
        return too_big(b);
    if (reserve(&b->e, &b->cap_e, b->ne + 1, sizeof *b->e))
        return -ENOMEM;
    b->e[b->ne++] = (redge){from, to, lo, hi};
    return 0;
}

static int b_eps(builder *b, int32_t from, int32_t to) {
    if (from == to)
        return 0;
    if (b->nx >= WK_RX_MAX_EDGES)
        return too_big(b);
    if (reserve(&b->x, &b->cap_x, b->nx + 1, sizeof *b->x))
        return -ENOMEM;
    b->x[b->nx++] = (xedge){from, to};
    return 0;
}

static int b_ranges(builder *b, const range *r, size_t n, int32_t from, int32_t to) {
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = b_edge(b, from, r[i].lo, r[i].hi, to);
    return rc;
}

static int b_set(builder *b, const node *nd, int32_t from, int32_t to) {
    return b_ranges(b, b->p->rng + nd->a, nd->b, from, to);
}

static int b_node(builder *b, int32_t id, int32_t from, int32_t *to);

/* x{min,max} from `from`. Loops go on fresh states; a repeated set loops without epsilons. */
static int b_rep(builder *b, const node *nd, int32_t from, int32_t *to) {
    const node *k = &b->p->nodes[nd->kid];
    int is_set = k->type == N_SET, rc;
    uint32_t min = nd->a, max = nd->b;
    int32_t cur = from, s, e, t;
    if (max == UNBOUNDED) {
        for (uint32_t i = 1; i < min; i++) // min - 1 copies, then one that loops
            if ((rc = b_node(b, nd->kid, cur, &cur)))
                return rc;
        if ((rc = b_state(b, &s)))
            return rc;
        if (is_set) { // x* : cur -eps-> s, s -x-> s;  x+ : cur -x-> s, s -x-> s
            if ((rc = min ? b_set(b, k, cur, s) : b_eps(b, cur, s)) || (rc = b_set(b, k, s, s)))
                return rc;
            *to = s;
            return 0;
        }
        if ((rc = b_eps(b, cur, s)) || (rc = b_node(b, nd->kid, s, &e)) || (rc = b_eps(b, e, s)))
            return rc;
        *to = min ? e : s;
        return 0;
    }
    for (uint32_t i = 0; i < min; i++)
        if ((rc = b_node(b, nd->kid, cur, &cur)))
            return rc;
    if (max > min) {
        if ((rc = b_state(b, &t)))
            return rc;
        for (uint32_t i = min; i < max; i++)
            if ((rc = b_eps(b, cur, t)) || (rc = b_node(b, nd->kid, cur, &cur)))
                return rc;
        if ((rc = b_eps(b, cur, t)))
            return rc;
        cur = t;
    }
    *to = cur;
    return 0;
}

/* Builds node id from state `from`; *to is the state reached after it. */
static int b_node(builder *b, int32_t id, int32_t from, int32_t *to) {
    const node *nd = &b->p->nodes[id];
    int32_t t, e;
    int rc;
    if (++b->work > WORK_MAX)
        return too_big(b);
    switch (nd->type) {
    case N_EMPTY: *to = from; return 0;
    case N_SET:
        if ((rc = b_state(b, &t)) || (rc = b_set(b, nd, from, t)))
            return rc;
        *to = t;
        return 0;
    case N_CAT:
        for (int32_t k = nd->kid; k >= 0; k = b->p->nodes[k].next)
            if ((rc = b_node(b, k, from, &from)))
                return rc;
        *to = from;
        return 0;
    case N_ALT:
        if ((rc = b_state(b, &t)))
            return rc;
        for (int32_t k = nd->kid; k >= 0; k = b->p->nodes[k].next) {
            const node *kn = &b->p->nodes[k];
            if (kn->type == N_SET)
                rc = b_set(b, kn, from, t); // straight to the join
            else if (!(rc = b_node(b, k, from, &e)))
                rc = b_eps(b, e, t);
            if (rc)
                return rc;
        }
        *to = t;
        return 0;
    default: return b_rep(b, nd, from, to);
    }
}

/* The whole NFA: state 0 is the start. */
static int assemble(builder *b) {
    const parser *p = b->p;
    int32_t S, L = -1, E = -1, e;
    size_t n_loose = 0;
    int rc;
    for (size_t i = 0; i < p->n_alts; i++)
        n_loose += !p->alts[i].anch_start;
    if ((rc = b_state(b, &S)))
        return rc;
    if (n_loose == p->n_alts)
        L = S; // nothing anchored at the start: the start itself loops
    else if (n_loose && ((rc = b_state(b, &L)) || (rc = b_eps(b, S, L))))
        return rc;
    if (L >= 0 && (rc = b_ranges(b, R_ANY, N_OF(R_ANY), L, L)))
        return rc;
    for (size_t i = 0; i < p->n_alts; i++) {
        const top_alt *a = &p->alts[i];
        if ((rc = b_node(b, a->node, a->anch_start ? S : L, &e)))
            return rc;
        if (a->anch_end) {
            b->acc[e] = 1;
            continue;
        }
        if (E < 0) {
            if ((rc = b_state(b, &E)) || (rc = b_ranges(b, R_ANY, N_OF(R_ANY), E, E)))
                return rc;
            b->acc[E] = 1;
        }
        if ((rc = b_eps(b, e, E)))
            return rc;
    }
    return 0;
}

/* ---- passes ---- */

/* CSR of n states from edge lists (acc [n] is copied). */
static int to_csr(int32_t n, const uint8_t *acc, const redge *e, size_t ne, const xedge *x, size_t nx, int32_t start,
                  wk_rx *g) {
    memset(g, 0, sizeof *g);
    g->n_states = n;
    g->start = start;
    g->accept = malloc((size_t)n);
    g->edge_off = calloc((size_t)n + 1, sizeof *g->edge_off);
    g->eps_off = calloc((size_t)n + 1, sizeof *g->eps_off);
    g->edges = malloc((ne ? ne : 1) * sizeof *g->edges);
    g->eps = malloc((nx ? nx : 1) * sizeof *g->eps);
    if (!g->accept || !g->edge_off || !g->eps_off || !g->edges || !g->eps) {
        wk_rx_free(g);
        return -ENOMEM;
    }
    memcpy(g->accept, acc, (size_t)n);
    for (size_t i = 0; i < ne; i++)
        g->edge_off[e[i].from + 1]++;
    for (size_t i = 0; i < nx; i++)
        g->eps_off[x[i].from + 1]++;
    for (int32_t s = 0; s < n; s++) {
        g->edge_off[s + 1] += g->edge_off[s];
        g->eps_off[s + 1] += g->eps_off[s];
    }
    // fill from the back so that each state's edges keep their order
    for (size_t i = ne; i-- > 0;)
        g->edges[--g->edge_off[e[i].from + 1]] = (wk_rx_edge){e[i].lo, e[i].hi, e[i].to};
    for (size_t i = nx; i-- > 0;)
        g->eps[--g->eps_off[x[i].from + 1]] = x[i].to;
    for (int32_t s = 0; s < n; s++) { // each slot now holds its state's start: shift back
        g->edge_off[s] = g->edge_off[s + 1];
        g->eps_off[s] = g->eps_off[s + 1];
    }
    g->edge_off[n] = (int32_t)ne;
    g->eps_off[n] = (int32_t)nx;
    return 0;
}

/* The single epsilon target of a state that has no other move, else s itself. */
static int32_t alias_of(const wk_rx *g, int32_t s) {
    if (g->accept[s] || g->edge_off[s] != g->edge_off[s + 1] || g->eps_off[s + 1] - g->eps_off[s] != 1)
        return s;
    return g->eps[g->eps_off[s]];
}

/* Points every reference to an aliasing state at what it aliases (in place). */
static int pass_bypass(wk_rx *g) {
    int32_t n = g->n_states;
    int32_t *res = malloc((size_t)n * sizeof *res), *mark = malloc((size_t)n * sizeof *mark);
    int rc = -ENOMEM;
    if (!res || !mark)
        goto cleanup;
    for (int32_t s = 0; s < n; s++)
        res[s] = mark[s] = -1;
    for (int32_t s = 0; s < n; s++) {
        if (res[s] >= 0)
            continue;
        int32_t x = s;
        while (res[x] < 0 && alias_of(g, x) != x && mark[x] != s) {
            mark[x] = s;
            x = alias_of(g, x);
        }
        // x resolved, a fixpoint, or on an epsilon cycle of move-less states (dead: pruned later)
        int32_t root = res[x] >= 0 ? res[x] : x;
        for (int32_t y = s; y != x && res[y] < 0; y = alias_of(g, y))
            res[y] = root;
        if (res[x] < 0)
            res[x] = x;
    }
    for (int32_t i = 0; i < g->edge_off[n]; i++)
        g->edges[i].to = res[g->edges[i].to];
    for (int32_t i = 0; i < g->eps_off[n]; i++)
        g->eps[i] = res[g->eps[i]];
    g->start = res[g->start];
    rc = 0;
cleanup:
    free(res);
    free(mark);
    return rc;
}

/* h = g with small epsilon closures folded into edges and acceptance. */
static int pass_closure(const wk_rx *g, builder *b, wk_rx *h) {
    int32_t n = g->n_states, cl[CL_STATES];
    int32_t *stamp = malloc((size_t)n * sizeof *stamp), *stack = malloc((size_t)n * sizeof *stack);
    int rc = -ENOMEM;
    if (!stamp || !stack || reserve(&b->acc, &b->cap_acc, (size_t)n, 1))
        goto cleanup;
    b->n = n;
    b->ne = b->nx = 0;
    for (int32_t s = 0; s < n; s++)
        stamp[s] = -1;
    for (int32_t s = 0; s < n; s++) {
        b->acc[s] = g->accept[s];
        for (int32_t i = g->edge_off[s]; i < g->edge_off[s + 1]; i++)
            if ((rc = b_edge(b, s, g->edges[i].lo, g->edges[i].hi, g->edges[i].to)))
                goto cleanup;
        if (g->eps_off[s] == g->eps_off[s + 1])
            continue;
        int32_t ncl = 0, sp = 0, n_edges = 0;
        int small = 1;
        stamp[s] = s;
        stack[sp++] = s;
        while (sp && small) {
            int32_t u = stack[--sp];
            for (int32_t i = g->eps_off[u]; i < g->eps_off[u + 1] && small; i++) {
                int32_t v = g->eps[i];
                if (stamp[v] == s)
                    continue;
                stamp[v] = s;
                if (ncl == CL_STATES || (n_edges += g->edge_off[v + 1] - g->edge_off[v]) > CL_EDGES) {
                    small = 0;
                    break;
                }
                cl[ncl++] = v;
                stack[sp++] = v;
            }
        }
        if (small && b->ne + (size_t)n_edges <= WK_RX_MAX_EDGES) {
            for (int32_t j = 0; j < ncl; j++) {
                int32_t v = cl[j];
                b->acc[s] |= g->accept[v];
                for (int32_t i = g->edge_off[v]; i < g->edge_off[v + 1]; i++)
                    if ((rc = b_edge(b, s, g->edges[i].lo, g->edges[i].hi, g->edges[i].to)))
                        goto cleanup;
            }
        } else {
            for (int32_t i = g->eps_off[s]; i < g->eps_off[s + 1]; i++)
                if ((rc = b_eps(b, s, g->eps[i])))
                    goto cleanup;
        }
    }
    rc = to_csr(n, b->acc, b->e, b->ne, b->x, b->nx, g->start, h);
cleanup:
    free(stamp);
    free(stack);
    return rc;
}

static int cmp_edge_to(const void *a, const void *b) {
    const wk_rx_edge *x = a, *y = b;
    if (x->to != y->to)
        return x->to < y->to ? -1 : 1;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static int cmp_edge_lo(const void *a, const void *b) {
    const wk_rx_edge *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    if (x->hi != y->hi)
        return x->hi < y->hi ? -1 : 1;
    return x->to < y->to ? -1 : x->to > y->to;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* out = the live part of g (reachable from the start and reaching acceptance),
 * renumbered breadth-first from the start, edges merged per target. */
static int pass_prune(const wk_rx *g, wk_rx *out) {
    int32_t n = g->n_states, ne = g->edge_off[n], nx = g->eps_off[n], m = 0;
    int32_t *rev_off = calloc((size_t)n + 1, sizeof *rev_off), *rev = malloc(((size_t)ne + nx + 1) * sizeof *rev);
    int32_t *queue = malloc((size_t)n * sizeof *queue), *id = malloc((size_t)n * sizeof *id);
    uint8_t *live = calloc((size_t)n, 1);
    int rc = -ENOMEM;
    memset(out, 0, sizeof *out);
    if (!rev_off || !rev || !queue || !id || !live)
        goto cleanup;
    // reverse graph, then everything that reaches an accepting state
    for (int32_t i = 0; i < ne; i++)
        rev_off[g->edges[i].to + 1]++;
    for (int32_t i = 0; i < nx; i++)
        rev_off[g->eps[i] + 1]++;
    for (int32_t s = 0; s < n; s++)
        rev_off[s + 1] += rev_off[s];
    for (int32_t s = 0; s < n; s++) {
        for (int32_t i = g->edge_off[s]; i < g->edge_off[s + 1]; i++)
            rev[rev_off[g->edges[i].to]++] = s;
        for (int32_t i = g->eps_off[s]; i < g->eps_off[s + 1]; i++)
            rev[rev_off[g->eps[i]]++] = s;
    }
    for (int32_t s = n; s > 0; s--)
        rev_off[s] = rev_off[s - 1];
    rev_off[0] = 0;
    int32_t qn = 0;
    for (int32_t s = 0; s < n; s++)
        if (g->accept[s]) {
            live[s] = 1;
            queue[qn++] = s;
        }
    for (int32_t qi = 0; qi < qn; qi++)
        for (int32_t i = rev_off[queue[qi]]; i < rev_off[queue[qi] + 1]; i++)
            if (!live[rev[i]]) {
                live[rev[i]] = 1;
                queue[qn++] = rev[i];
            }
    // breadth-first from the start through live states (a dead state leads only to dead ones)
    for (int32_t s = 0; s < n; s++)
        id[s] = -1;
    id[g->start] = 0;
    queue[0] = g->start;
    m = 1;
    for (int32_t qi = 0; qi < m; qi++) {
        int32_t u = queue[qi];
        for (int32_t i = g->edge_off[u]; i < g->edge_off[u + 1]; i++)
            if (live[g->edges[i].to] && id[g->edges[i].to] < 0) {
                id[g->edges[i].to] = m;
                queue[m++] = g->edges[i].to;
            }
        for (int32_t i = g->eps_off[u]; i < g->eps_off[u + 1]; i++)
            if (live[g->eps[i]] && id[g->eps[i]] < 0) {
                id[g->eps[i]] = m;
                queue[m++] = g->eps[i];
            }
    }
    out->n_states = m;
    out->start = 0;
    out->accept = malloc((size_t)m);
    out->edge_off = malloc(((size_t)m + 1) * sizeof *out->edge_off);
    out->eps_off = malloc(((size_t)m + 1) * sizeof *out->eps_off);
    out->edges = malloc(((size_t)ne + 1) * sizeof *out->edges);
    out->eps = malloc(((size_t)nx + 1) * sizeof *out->eps);
    if (!out->accept || !out->edge_off || !out->eps_off || !out->edges || !out->eps)
        goto cleanup;
    int32_t oe = 0, ox = 0;
    for (int32_t k = 0; k < m; k++) {
        int32_t u = queue[k], first = oe, firstx = ox;
        out->accept[k] = g->accept[u];
        out->edge_off[k] = oe;
        out->eps_off[k] = ox;
        for (int32_t i = g->edge_off[u]; i < g->edge_off[u + 1]; i++)
            if (live[g->edges[i].to])
                out->edges[oe++] = (wk_rx_edge){g->edges[i].lo, g->edges[i].hi, id[g->edges[i].to]};
        qsort(out->edges + first, (size_t)(oe - first), sizeof *out->edges, cmp_edge_to);
        int32_t w = first;
        for (int32_t i = first; i < oe; i++) {
            wk_rx_edge *last = w > first ? &out->edges[w - 1] : NULL;
            if (last && last->to == out->edges[i].to && out->edges[i].lo <= last->hi + 1) {
                if (out->edges[i].hi > last->hi)
                    last->hi = out->edges[i].hi;
            } else {
                out->edges[w++] = out->edges[i];
            }
        }
        oe = w;
        qsort(out->edges + first, (size_t)(oe - first), sizeof *out->edges, cmp_edge_lo);
        for (int32_t i = g->eps_off[u]; i < g->eps_off[u + 1]; i++)
            if (live[g->eps[i]] && id[g->eps[i]] != k)
                out->eps[ox++] = id[g->eps[i]];
        qsort(out->eps + firstx, (size_t)(ox - firstx), sizeof *out->eps, cmp_i32);
        w = firstx;
        for (int32_t i = firstx; i < ox; i++)
            if (w == firstx || out->eps[w - 1] != out->eps[i])
                out->eps[w++] = out->eps[i];
        ox = w;
    }
    out->edge_off[m] = oe;
    out->eps_off[m] = ox;
    rc = 0;
cleanup:
    if (rc)
        wk_rx_free(out);
    free(rev_off);
    free(rev);
    free(queue);
    free(id);
    free(live);
    return rc;
}

/* ---- public ---- */

int wk_rx_compile(const char *pattern, size_t len, wk_rx *out, char *err, size_t errlen) {
    parser p = {.s = (const unsigned char *)pattern, .len = len, .err = err, .errlen = errlen};
    builder b = {.p = &p};
    wk_rx g = {0}, h = {0};
    int rc;
    memset(out, 0, sizeof *out);
    if (err && errlen)
        err[0] = '\0';
    if (!pattern && len) {
        rc = fail(&p, -EINVAL, "no pattern");
        goto cleanup;
    }
    if ((rc = parse_top(&p)) || (rc = assemble(&b)))
        goto cleanup;
    if ((rc = to_csr(b.n, b.acc, b.e, b.ne, b.x, b.nx, 0, &g)) || (rc = pass_bypass(&g)))
        goto cleanup;
    if ((rc = pass_closure(&g, &b, &h)) || (rc = pass_prune(&h, out)))
        goto cleanup;
cleanup:
    if (rc == -ENOMEM)
        fail(&p, rc, "out of memory compiling the pattern");
    else if (rc == -E2BIG && err && errlen && !err[0])
        too_big(&b);
    wk_rx_free(&h);
    wk_rx_free(&g);
    free(b.acc);
    free(b.e);
    free(b.x);
    free(p.nodes);
    free(p.rng);
    free(p.cls);
    free(p.alts);
    return rc;
}

void wk_rx_free(wk_rx *rx) {
    if (!rx)
        return;
    free(rx->accept);
    free(rx->edge_off);
    free(rx->edges);
    free(rx->eps_off);
    free(rx->eps);
    memset(rx, 0, sizeof *rx);
}

/* Adds s and its epsilon closure to set (marking them with gen). */
static void closure_add(const wk_rx *rx, int32_t s, int32_t *set, int32_t *nset, uint64_t *mark, uint64_t gen,
                        int32_t *stack) {
    int32_t sp = 0;
    if (mark[s] == gen)
        return;
    mark[s] = gen;
    set[(*nset)++] = s;
    stack[sp++] = s;
    while (sp) {
        int32_t u = stack[--sp];
        for (int32_t i = rx->eps_off[u]; i < rx->eps_off[u + 1]; i++) {
            int32_t v = rx->eps[i];
            if (mark[v] != gen) {
                mark[v] = gen;
                set[(*nset)++] = v;
                stack[sp++] = v;
            }
        }
    }
}

int wk_rx_match(const wk_rx *rx, const uint32_t *cps, size_t n) {
    if (!rx || rx->n_states <= 0)
        return 0;
    size_t ns = (size_t)rx->n_states;
    int32_t *cur = malloc(ns * sizeof *cur), *nxt = malloc(ns * sizeof *nxt), *stack = malloc(ns * sizeof *stack);
    uint64_t *mark = calloc(ns, sizeof *mark), gen = 1;
    int32_t ncur = 0, nnxt;
    int rc = -ENOMEM;
    if (!cur || !nxt || !stack || !mark)
        goto cleanup;
    closure_add(rx, rx->start, cur, &ncur, mark, gen, stack);
    for (size_t k = 0; k < n && ncur; k++) {
        gen++;
        nnxt = 0;
        for (int32_t j = 0; j < ncur; j++) {
            int32_t s = cur[j];
            for (int32_t i = rx->edge_off[s]; i < rx->edge_off[s + 1]; i++)
                if (rx->edges[i].lo <= cps[k] && cps[k] <= rx->edges[i].hi)
                    closure_add(rx, rx->edges[i].to, nxt, &nnxt, mark, gen, stack);
        }
        int32_t *t = cur;
        cur = nxt;
        nxt = t;
        ncur = nnxt;
    }
    rc = 0;
    for (int32_t j = 0; j < ncur && !rc; j++)
        rc = rx->accept[cur[j]];
cleanup:
    free(cur);
    free(nxt);
    free(stack);
    free(mark);
    return rc;
}
