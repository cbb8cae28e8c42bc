/* wk_pretok.c: the byte-level BPE pre-tokenizers (see wk_pretok.h). */
#include "worker/wk_pretok.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "worker/wk_unicode.h"

#define U_VALID 128u // in-range codepoint marker added to the wk_unicode flags

typedef struct sizevec {
    size_t *v;
    size_t n, cap;
} sizevec;

static int sv_push(sizevec *s, size_t x) {
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        size_t *nv = realloc(s->v, nc * sizeof(size_t));
        if (!nv)
            return -ENOMEM;
        s->v = nv;
        s->cap = nc;
    }
    s->v[s->n++] = x;
    return 0;
}

typedef struct cpview {
    const uint32_t *cp;
    const uint8_t *fl; // wk_unicode flags | U_VALID
    size_t end;
} cpview;

static inline uint32_t CP(const cpview *v, size_t i) { return i < v->end ? v->cp[i] : 0xFFFFFFFFu; }
static inline unsigned FL(const cpview *v, size_t i) { return i < v->end ? v->fl[i] : 0; }

static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Contraction at pos ('s 't 'm 'd 're 've 'll); returns its length or 0. */
static size_t contraction(const cpview *v, size_t pos, int icase) {
    if (CP(v, pos) != '\'' || pos + 1 >= v->end)
        return 0;
    uint32_t a = CP(v, pos + 1);
    if (icase)
        a = ascii_lower(a);
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if (pos + 2 < v->end) {
        uint32_t b = CP(v, pos + 2);
        if (icase)
            b = ascii_lower(b);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return 3;
    }
    return 0;
}

#define WLN (WK_U_WHITESPACE | WK_U_LETTER | WK_U_NUMBER)

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static int split_gpt2(const cpview *v, size_t ini, sizevec *out) {
    size_t pos = ini, prev = ini;
    int rc = 0;
#define ADD(e)                                                                                                 \
    do {                                                                                                       \
        size_t e_ = (e);                                                                                       \
        if (e_ > prev && (rc = sv_push(out, e_ - prev)) < 0)                                                   \
            return rc;                                                                                         \
        prev = e_;                                                                                             \
    } while (0)
    while (pos < v->end) {
        uint32_t c = CP(v, pos);
        unsigned f = FL(v, pos);
        size_t k = contraction(v, pos, 0);
        if (k) {
            pos += k;
            ADD(pos);
            continue;
        }
        unsigned f2 = c == ' ' ? FL(v, pos + 1) : f;
        if (f2 & WK_U_LETTER) {
            pos += c == ' ';
            while (FL(v, pos) & WK_U_LETTER)
                pos++;
            ADD(pos);
            continue;
        }
        if (f2 & WK_U_NUMBER) {
            pos += c == ' ';
            while (FL(v, pos) & WK_U_NUMBER)
                pos++;
            ADD(pos);
            continue;
        }
        if (!(f2 & WLN) && f2) {
            pos += c == ' ';
            while (!(FL(v, pos) & WLN) && FL(v, pos))
                pos++;
            ADD(pos);
            continue;
        }
        size_t nws = 0;
        while (FL(v, pos + nws) & WK_U_WHITESPACE)
            nws++;
        if (nws > 1 && pos + nws < v->end) {
            pos += nws - 1;
            ADD(pos);
            continue;
        }
        if (nws > 0) {
            pos += nws;
            ADD(pos);
            continue;
        }
        ADD(++pos);
    }
    return 0;
}

/* Llama 3 (max_digits 3) and Qwen2 (max_digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,n}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static int split_llama3(const cpview *v, size_t ini, size_t max_digits, sizevec *out) {
    size_t pos = ini, prev = ini;
    int rc = 0;
    while (pos < v->end) {
        uint32_t c = CP(v, pos);
        unsigned f = FL(v, pos);
        size_t k = contraction(v, pos, 1);
        if (k) {
            pos += k;
            ADD(pos);
            continue;
        }
        if (!(c == '\r' || c == '\n' || (f & WK_U_NUMBER)) &&
            ((f & WK_U_LETTER) || (FL(v, pos + 1) & WK_U_LETTER))) {
            pos++;
            while (FL(v, pos) & WK_U_LETTER)
                pos++;
            ADD(pos);
            continue;
        }
        if (f & WK_U_NUMBER) {
            size_t run = pos;
            while (FL(v, pos) & WK_U_NUMBER) {
                if (++pos - run >= max_digits) {
                    ADD(pos);
                    run = pos;
                }
            }
            ADD(pos);
            continue;
        }
        unsigned f2 = c == ' ' ? FL(v, pos + 1) : f;
        if (!(f2 & WLN) && f) {
            pos += c == ' ';
            while (!(FL(v, pos) & WLN) && FL(v, pos))
                pos++;
            while (CP(v, pos) == '\r' || CP(v, pos) == '\n')
                pos++;
            ADD(pos);
            continue;
        }
        size_t nws = 0, last_rn = 0;
        while (FL(v, pos + nws) & WK_U_WHITESPACE) {
            uint32_t c2 = CP(v, pos + nws);
            if (c2 == '\r' || c2 == '\n')
                last_rn = pos + nws + 1;
            nws++;
        }
        if (last_rn > 0) {
            pos = last_rn;
            ADD(pos);
            continue;
        }
        if (nws > 1 && pos + nws < v->end) {
            pos += nws - 1;
            ADD(pos);
            continue;
        }
        if (nws > 0) {
            pos += nws;
            ADD(pos);
            continue;
        }
        ADD(++pos);
    }
    return 0;
}
#undef ADD

/* Splits [ini, end) into maximal runs of chars in / not in a class (the regex
 * "[class]+" applied with gaps kept as words). */
static int split_runs(const cpview *v, size_t ini, int (*in)(const cpview *, size_t), sizevec *out) {
    size_t s = ini;
    int rc;
    while (s < v->end) {
        int cls = in(v, s);
        size_t e = s + 1;
        while (e < v->end && in(v, e) == cls)
            e++;
        if ((rc = sv_push(out, e - s)) < 0)
            return rc;
        s = e;
    }
    return 0;
}

static int in_default_punct(const cpview *v, size_t i) { // [\p{P}\$\+<=>\^~\|]
    uint32_t c = v->cp[i];
    if (c < 128)
        return (c < 128 && (v->fl[i] & WK_U_PUNCT)) || (c && strchr("$+<=>^~|", (int)c) != NULL);
    return (v->fl[i] & WK_U_PUNCT) && !(v->fl[i] & WK_U_WHITESPACE);
}

static int in_number(const cpview *v, size_t i) { // \p{N} (collapsed: whitespace wins)
    return (v->fl[i] & WK_U_NUMBER) && !(v->fl[i] & WK_U_WHITESPACE);
}

/* [0-9][0-9][0-9]: leftmost non-overlapping triples, gaps kept. */
static int split_digit3(const cpview *v, size_t ini, sizevec *out) {
    size_t s = ini, i = ini;
    int rc;
#define DIG(k) (v->cp[k] >= '0' && v->cp[k] <= '9')
    while (i + 3 <= v->end) {
        if (DIG(i) && DIG(i + 1) && DIG(i + 2)) {
            if (i > s && (rc = sv_push(out, i - s)) < 0)
                return rc;
            if ((rc = sv_push(out, 3)) < 0)
                return rc;
            i += 3;
            s = i;
        } else {
            i++;
        }
    }
#undef DIG
    if (v->end > s && (rc = sv_push(out, v->end - s)) < 0)
        return rc;
    return 0;
}

/* Applies stage to every word of in (lengths over cp[]), producing out. */
static int split_stage(const uint32_t *cp, const uint8_t *fl, const sizevec *in, int stage, sizevec *out) {
    size_t start = 0;
    int rc = 0;
    out->n = 0;
    for (size_t w = 0; w < in->n; w++) {
        cpview v = {cp, fl, start + in->v[w]};
        switch (stage) {
        case 0:
            rc = split_runs(&v, start, in_default_punct, out);
            break;
        case 1:
            rc = split_gpt2(&v, start, out);
            break;
        case 2:
            rc = split_runs(&v, start, in_number, out);
            break;
        case 3:
            rc = split_digit3(&v, start, out);
            break;
        case 4:
            rc = split_llama3(&v, start, 3, out);
            break;
        case 5:
            rc = split_llama3(&v, start, 1, out);
            break;
        }
        if (rc < 0)
            return rc;
        start += in->v[w];
    }
    return 0;
}

int wk_pretok_split(wk_pretok_kind kind, const uint32_t *cp, size_t n, size_t **lens, size_t *n_words) {
    static const int stages_default[] = {0, 1, 2, 3}, stages_gpt2[] = {1}, stages_llama3[] = {4},
                     stages_qwen2[] = {5};
    const int *st;
    int nst;
    switch (kind) {
    case WK_PRETOK_GPT2: st = stages_gpt2, nst = 1; break;
    case WK_PRETOK_LLAMA3: st = stages_llama3, nst = 1; break;
    case WK_PRETOK_QWEN2: st = stages_qwen2, nst = 1; break;
    default: st = stages_default, nst = 4; break;
    }
    *lens = NULL;
    *n_words = 0;
    int rc = -ENOMEM;
    sizevec a = {0}, b = {0};
    uint8_t *fl = malloc(n + 1);
    if (!fl)
        goto done;
    for (size_t i = 0; i < n; i++)
        fl[i] = (uint8_t)(wk_unicode_flags(cp[i]) | U_VALID);
    if ((rc = sv_push(&a, n)) < 0)
        goto done;
    for (int s = 0; s < nst; s++) {
        if ((rc = split_stage(cp, fl, &a, st[s], &b)) < 0)
            goto done;
        sizevec tmp = a;
        a = b;
        b = tmp;
    }
    *lens = a.v;
    *n_words = a.n;
    a.v = NULL;
    rc = 0;
done:
    free(fl);
    free(a.v);
    free(b.v);
    return rc;
}
