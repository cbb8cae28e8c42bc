/* wk_jsscalar: JSON strings and numbers for wk_jsonschema (see its design note):
 * strings as a code-point NFA (pattern, format or any code point) times a length
 * counter, each code point written in its JSON encoding; numbers as a digit-by-
 * digit comparison automaton against the bounds. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/wk_js_int.h"
#include "worker/wk_regex.h"

/* ------------------------------------------------------------- small emitters */

int32_t wk_js_node(wk_js *c) {
    return wk_grammar_node(c->g);
}

int32_t wk_js_lit(wk_js *c, int32_t from, const char *s) {
    return wk_grammar_lit(c->g, from, s, strlen(s));
}

int32_t wk_js_ws(wk_js *c, int32_t from) {
    int32_t out = wk_js_node(c), cur = from;
    for (int i = 0; i < WK_JS_MAX_WS; i++) {
        wk_grammar_eps(c->g, cur, out);
        int32_t n = wk_js_node(c);
        wk_grammar_bytes(c->g, cur, ' ', ' ', n);
        wk_grammar_bytes(c->g, cur, '\t', '\n', n);
        wk_grammar_bytes(c->g, cur, '\r', '\r', n);
        cur = n;
    }
    wk_grammar_eps(c->g, cur, out);
    return out;
}

/* from --(the JSON string encoding of one code point in [lo, hi])--> to. */
void wk_js_cp(wk_js *c, int32_t from, uint32_t lo, uint32_t hi, int32_t to) {
    int32_t esc = -1, u3 = -1, hx[2] = {-1, -1};
    static const char short_esc[32] = {[8] = 'b', [9] = 't', [10] = 'n', [12] = 'f', [13] = 'r'};
    for (uint32_t cp = lo; cp <= hi && cp < 0x20; cp++) {
        if (esc < 0) {
            esc = wk_js_node(c);
            wk_grammar_bytes(c->g, from, '\\', '\\', esc);
        }
        if (short_esc[cp]) {
            wk_grammar_bytes(c->g, esc, (uint8_t)short_esc[cp], (uint8_t)short_esc[cp], to);
            continue;
        }
        if (u3 < 0)
            u3 = wk_js_lit(c, esc, "u00");
        int h = (int)(cp >> 4);
        if (hx[h] < 0) {
            hx[h] = wk_js_node(c);
            wk_grammar_bytes(c->g, u3, (uint8_t)('0' + h), (uint8_t)('0' + h), hx[h]);
        }
        uint8_t d = (uint8_t)("0123456789abcdef"[cp & 15]);
        wk_grammar_bytes(c->g, hx[h], d, d, to);
    }
    static const uint32_t quoted[] = {'"', '\\'};
    for (int i = 0; i < 2; i++)
        if (lo <= quoted[i] && quoted[i] <= hi) {
            if (esc < 0) {
                esc = wk_js_node(c);
                wk_grammar_bytes(c->g, from, '\\', '\\', esc);
            }
            wk_grammar_bytes(c->g, esc, (uint8_t)quoted[i], (uint8_t)quoted[i], to);
        }
    // raw: [0x20, 0x10FFFF] minus '"' and '\\'
    uint32_t cuts[][2] = {{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0x10FFFF}};
    for (int i = 0; i < 3; i++) {
        uint32_t a = lo > cuts[i][0] ? lo : cuts[i][0], b = hi < cuts[i][1] ? hi : cuts[i][1];
        if (a <= b)
            wk_grammar_utf8(c->g, from, a, b, to);
    }
}

/* Alternatives: each branch gets its own entry node (so that loops inside one
 * branch cannot leak into another). */
int32_t wk_js_branch(wk_js *c, int32_t from) {
    int32_t n = wk_js_node(c);
    wk_grammar_eps(c->g, from, n);
    return n;
}

/* ------------------------------------------------------------------ strings */

typedef struct pcell {
    int32_t q, k;
} pcell;

/* '"' then code points accepted by rx, count in [min, max] (max < 0: none), '"'.
 * plain: rx is "any code point", so every cell takes any plain text (tagged for
 * wk_grammar's mask shortcut). */
static int emit_string_rx(wk_js *c, const wk_rx *rx, long min, long max, int plain, int32_t from, int32_t to) {
    long kk = max >= 0 ? max : min; // counts above kk are the same state (no max)
    if ((double)rx->n_states * (double)(kk + 1) > 2e6)
        return wk_js_fail(c, "string length bounds %ld..%ld are too large for this pattern", min, max);
    size_t cells = (size_t)rx->n_states * (size_t)(kk + 1);
    int32_t *map = malloc(cells * sizeof *map);
    pcell *work = malloc(cells * sizeof *work);
    if (!map || !work) {
        free(map);
        free(work);
        return -ENOMEM;
    }
    memset(map, 0xff, cells * sizeof *map);
    int32_t open = wk_js_lit(c, from, "\""), close = wk_js_node(c);
    wk_grammar_bytes(c->g, close, '"', '"', to);
    if (plain)
        wk_grammar_inert(c->g, close);
    size_t nw = 0;
#define CELL(q, k) ((size_t)(q) * (size_t)(kk + 1) + (size_t)(k))
    map[CELL(rx->start, 0)] = open;
    work[nw++] = (pcell){rx->start, 0};
    while (nw) {
        pcell p = work[--nw];
        int32_t at = map[CELL(p.q, p.k)];
        if (plain)
            wk_grammar_plain(c->g, at, max >= 0 ? (uint32_t)(max - p.k) : WK_GRAMMAR_UNBOUNDED,
                             p.k < min ? (uint32_t)(min - p.k) : 0);
        if (rx->accept[p.q] && p.k >= min)
            wk_grammar_eps(c->g, at, close);
        for (int32_t e = rx->eps_off[p.q]; e < rx->eps_off[p.q + 1]; e++) {
            int32_t q = rx->eps[e];
            if (map[CELL(q, p.k)] < 0) {
                map[CELL(q, p.k)] = wk_js_node(c);
                work[nw++] = (pcell){q, p.k};
            }
            wk_grammar_eps(c->g, at, map[CELL(q, p.k)]);
        }
        long nk = p.k + 1;
        if (max >= 0 && nk > max)
            continue;
        if (nk > kk)
            nk = kk;
        for (int32_t e = rx->edge_off[p.q]; e < rx->edge_off[p.q + 1]; e++) {
            const wk_rx_edge *ed = &rx->edges[e];
            if (map[CELL(ed->to, nk)] < 0) {
                map[CELL(ed->to, nk)] = wk_js_node(c);
                work[nw++] = (pcell){ed->to, (int32_t)nk};
            }
            wk_js_cp(c, at, ed->lo, ed->hi, map[CELL(ed->to, nk)]);
        }
    }
#undef CELL
    free(map);
    free(work);
    return 0;
}

static const struct {
    const char *name, *rx;
} formats[] = {
#define DATE                                                                                                       \
    "[0-9]{4}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
#define TIME "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
    {"date", "^" DATE "$"},
    {"time", "^" TIME "$"},
    {"date-time", "^" DATE "T" TIME "$"},
    {"uuid", "^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"},
    {"email", "^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63}){0,4}\\.[A-Za-z]{2,12}$"},
    {"ipv4", "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"},
#undef DATE
#undef TIME
};

int wk_js_count(wk_js *c, json_t *s, const char *key, long *out) {
    json_t *v = json_object_get(s, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return wk_js_fail(c, "'%s' must be a non-negative integer", key);
    if (json_integer_value(v) > 100000)
        return wk_js_fail(c, "'%s' above 100000 is not supported", key);
    *out = (long)json_integer_value(v);
    return 0;
}

int wk_js_string(wk_js *c, json_t *s, int32_t from, int32_t to) {
    long min = 0, max = -1;
    if (wk_js_count(c, s, "minLength", &min) || wk_js_count(c, s, "maxLength", &max))
        return -EINVAL;
    if (max >= 0 && min > max)
        return wk_js_fail(c, "minLength %ld is above maxLength %ld", min, max);
    json_t *pat = json_object_get(s, "pattern"), *fmt = json_object_get(s, "format");
    if (pat && !json_is_string(pat))
        return wk_js_fail(c, "'pattern' must be a string");
    if (fmt && !json_is_string(fmt))
        return wk_js_fail(c, "'format' must be a string");
    if (pat && fmt)
        return wk_js_fail(c, "'pattern' together with 'format' is not supported");
    const char *src = pat ? json_string_value(pat) : NULL;
    size_t srclen = pat ? json_string_length(pat) : 0;
    if (fmt) {
        for (size_t i = 0; i < sizeof formats / sizeof *formats && !src; i++)
            if (!strcmp(formats[i].name, json_string_value(fmt))) {
                src = formats[i].rx;
                srclen = strlen(src);
            }
        if (!src)
            return wk_js_fail(c, "format '%s' is not supported (supported: date-time, date, time, uuid, email, ipv4)",
                        json_string_value(fmt));
    }
    wk_rx rx = {0};
    if (src) {
        char e[200] = "";
        int rc = wk_rx_compile(src, srclen, &rx, e, sizeof e);
        if (rc == -ENOMEM)
            return rc;
        if (rc)
            return wk_js_fail(c, "'%s' %s: %s", pat ? "pattern" : "format", pat ? "is not supported" : "failed", e);
    } else { // any code point, any number of times
        static uint8_t acc1[1] = {1};
        static int32_t eo[2] = {0, 1}, xo[2] = {0, 0};
        static wk_rx_edge any[1] = {{0, 0x10FFFF, 0}};
        rx = (wk_rx){.n_states = 1, .start = 0, .accept = acc1, .edge_off = eo, .edges = any, .eps_off = xo};
    }
    int rc = emit_string_rx(c, &rx, min, max, !src, from, to);
    if (src)
        wk_rx_free(&rx);
    return rc;
}

/* ------------------------------------------------------------------ numbers */

enum { ND = 40, NI = 20 }; // digit positions: NI integer, ND - NI fraction

typedef struct dec {
    int inf;        // no bound
    uint8_t d[ND];  // d[0..NI) integer digits (most significant first), d[NI..ND) fraction
} dec;

/* |v| as 20 + 20 digits; dir > 0 rounds up past 20 fraction digits, dir < 0 down.
 * Magnitudes >= 1e20 set inf. */
static void dec_of(double v, int dir, dec *out) {
    memset(out, 0, sizeof *out);
    v = fabs(v);
    if (!(v < 1e20)) {
        out->inf = 1;
        return;
    }
    char buf[64];
    for (int p = 1; p <= 17; p++) { // shortest decimal that reads back as v
        snprintf(buf, sizeof buf, "%.*e", p - 1, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    // buf = D.DDDDe[+-]XX
    char digs[32];
    int nd = 0, exp10 = atoi(strchr(buf, 'e') + 1);
    for (const char *p = buf; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9')
            digs[nd++] = *p;
    int rest = 0;
    for (int i = 0; i < nd; i++) {
        int pos = NI - 1 - exp10 + i; // digit i has weight 10^(exp10 - i)
        if (pos < 0)
            continue; // cannot happen below 1e20
        if (pos >= ND) {
            rest |= digs[i] != '0';
            continue;
        }
        out->d[pos] = (uint8_t)(digs[i] - '0');
    }
    if (rest && dir > 0) // round up at the last fraction digit
        for (int pos = ND - 1; pos >= 0; pos--) {
            if (++out->d[pos] < 10)
                break;
            out->d[pos] = 0;
        }
}

static int dec_cmp(const dec *a, const dec *b) {
    if (a->inf || b->inf)
        return a->inf == b->inf ? 0 : a->inf ? 1 : -1;
    return memcmp(a->d, b->d, ND);
}

static int dec_zero_from(const dec *a, int p) {
    for (; p < ND; p++)
        if (a->d[p])
            return 0;
    return 1;
}

typedef struct magn {
    wk_js *c;
    const dec *a, *b; // a finite; b may be inf
    int a_excl, b_excl, int_only;
    int32_t to;
    int32_t memo[ND + 1][2][2][2]; // [position][eqA][eqB][after '.']
} magn;

static int32_t magn_state(magn *m, int p, int ea, int eb, int dot);

/* From `at`, digits [dlo, dhi] at position p under (ea, eb) into their states. */
static void magn_digits(magn *m, int32_t at, int p, int ea, int eb, int dlo, int dhi, int dot) {
    int a = ea ? m->a->d[p] : -1, b = eb ? m->b->d[p] : 10;
    int lo = dlo > a ? dlo : a, hi = dhi < b ? dhi : b; // below a or above b leaves the range
    if (ea && a > dhi)
        return;
    for (int d = lo < 0 ? 0 : lo; d <= hi;) {
        int na = ea && d == a, nb = eb && d == b;
        int e = d; // extend the run of digits with the same successor
        while (e + 1 <= hi && (ea && e + 1 == a) == na && (eb && e + 1 == b) == nb)
            e++;
        wk_grammar_bytes(m->c->g, at, (uint8_t)('0' + d), (uint8_t)('0' + e), magn_state(m, p + 1, na, nb, dot));
        d = e + 1;
    }
}

/* The node before digit position p (p == NI: after the integer digits). */
static int32_t magn_state(magn *m, int p, int ea, int eb, int dot) {
    int32_t *slot = &m->memo[p][ea][eb][dot];
    if (*slot >= 0)
        return *slot;
    int32_t at = *slot = wk_js_node(m->c);
    int can_end = p == NI ? !dot : dot && p > NI;
    if (can_end) {
        int low = !ea || (dec_zero_from(m->a, p) && !m->a_excl);
        int up = !eb || !dec_zero_from(m->b, p) || !m->b_excl;
        if (low && up)
            wk_grammar_eps(m->c->g, at, m->to);
    }
    if (p < NI) {
        magn_digits(m, at, p, ea, eb, 0, 9, 0);
    } else if (p == NI && !dot) {
        if (!m->int_only)
            wk_grammar_bytes(m->c->g, at, '.', '.', magn_state(m, NI, ea, eb, 1));
    } else if (p < ND) {
        magn_digits(m, at, p, ea, eb, 0, 9, 1);
    }
    return at;
}

/* from --(a decimal y written without sign, a <= y <= b)--> to. */
static void emit_magnitude(wk_js *c, const dec *a, int a_excl, const dec *b, int b_excl, int int_only, int32_t from,
                           int32_t to) {
    magn m = {.c = c, .a = a, .b = b, .a_excl = a_excl, .b_excl = b_excl, .int_only = int_only, .to = to};
    memset(m.memo, 0xff, sizeof m.memo);
    for (int n = 1; n <= NI; n++) { // integer part of n digits
        int p0 = NI - n, ea = 1, eb = !b->inf;
        for (int p = 0; p < p0; p++) {
            if (a->d[p])
                ea = -1; // shorter than a: below it
            if (eb && b->d[p])
                eb = 0;
        }
        if (ea < 0)
            continue;
        magn_digits(&m, from, p0, ea, eb, n == 1 ? 0 : 1, 9, 0);
    }
}

static int num_bound(wk_js *c, json_t *s, const char *key, double *v, int *has) {
    json_t *x = json_object_get(s, key);
    if (!x)
        return 0;
    if (!json_is_number(x))
        return wk_js_fail(c, "'%s' must be a number", key);
    double d = json_number_value(x);
    if (!isfinite(d))
        return wk_js_fail(c, "'%s' must be finite", key);
    *v = d;
    *has = 1;
    return 0;
}

int wk_js_number(wk_js *c, json_t *s, int int_only, int32_t from, int32_t to) {
    double lo = 0, hi = 0, xlo = 0, xhi = 0;
    int has_lo = 0, has_hi = 0, has_xlo = 0, has_xhi = 0;
    if (num_bound(c, s, "minimum", &lo, &has_lo) || num_bound(c, s, "maximum", &hi, &has_hi) ||
        num_bound(c, s, "exclusiveMinimum", &xlo, &has_xlo) || num_bound(c, s, "exclusiveMaximum", &xhi, &has_xhi))
        return -EINVAL;
    int lo_excl = 0, hi_excl = 0;
    if (has_xlo && (!has_lo || xlo >= lo)) {
        lo = xlo;
        lo_excl = has_lo = 1;
    }
    if (has_xhi && (!has_hi || xhi <= hi)) {
        hi = xhi;
        hi_excl = has_hi = 1;
    }
    if (has_lo && has_hi && (lo > hi || (lo == hi && (lo_excl || hi_excl))))
        return wk_js_fail(c, "no number satisfies the bounds (minimum above maximum)");
    int done = 0;
    dec a, b;
    if (!has_hi || hi >= 0) { // y = x >= 0
        dec_of(has_lo && lo > 0 ? lo : 0, 1, &a);
        if (has_hi)
            dec_of(hi, -1, &b);
        else
            b.inf = 1;
        if (!a.inf && dec_cmp(&a, &b) <= 0) {
            emit_magnitude(c, &a, has_lo && lo >= 0 && lo_excl, &b, has_hi && hi_excl, int_only, wk_js_branch(c, from), to);
            done = 1;
        }
    }
    if (!has_lo || lo < 0) { // x = -y, y > 0
        dec_of(has_hi && hi < 0 ? hi : 0, 1, &a);
        if (has_lo)
            dec_of(lo, -1, &b);
        else
            b.inf = 1;
        if (!a.inf && dec_cmp(&a, &b) <= 0) {
            int32_t neg = wk_js_lit(c, wk_js_branch(c, from), "-");
            emit_magnitude(c, &a, has_hi && hi < 0 ? hi_excl : 1, &b, has_lo && lo_excl, int_only, neg, to);
            done = 1;
        }
    }
    if (!done)
        return wk_js_fail(c, "no number satisfies the bounds");
    return 0;
}

