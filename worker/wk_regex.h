/* wk_regex: a JSON Schema `pattern` (a subset of ECMA-262 regular expressions)
 * compiled into an NFA over Unicode code points.
 *
 * The NFA accepts exactly the whole strings that are valid for the pattern under
 * JSON Schema's rule: the regex may match anywhere in the string, so a side not
 * anchored by a leading `^` or a trailing `$` gets an "any code point" loop. Each
 * top-level alternative is anchored on its own (`^a|b$`). Edges carry inclusive
 * code-point ranges and never include the surrogates U+D800..U+DFFF; one state's
 * edges may overlap. Epsilon moves remain only where folding them into range edges
 * would cost many edges (typical patterns have none). State 0 is the start; every
 * state can reach an accepting one, except when the language is empty (`[]`): then
 * the NFA is state 0 alone, not accepting, without moves.
 *
 * Supported: literals (UTF-8), `.` (anything but \n \r U+2028 U+2029), \d \D \w \W
 * \s \S (ECMA sets), \t \n \r \f \v \0 \cX \xHH \uHHHH (surrogate pairs combine)
 * \u{H...}, identity escapes of ASCII punctuation, classes [...] [^...] with ranges
 * and escapes ([\b] is U+0008; a `-` next to a class escape such as [\w-.] is a
 * literal), groups ( ) (?: ) (?<name> ), alternation (empty alternatives too), the
 * quantifiers * + ? {n} {n,} {n,m} and their lazy forms (same language), `^` as the
 * first and `$` as the last thing of a top-level alternative. Counts go up to 10000 and are
 * unrolled. Refused with -EINVAL: backreferences, lookaround, \b \B, \p{..}, `^`/`$`
 * elsewhere, inline flags (?i), unbalanced ( ) [ ], a lone `]` or `}`, a `{` that
 * is no quantifier (a literal brace is \{), {n,m} with n > m, counts above 10000, a
 * quantifier with nothing to repeat (a** too), a lone surrogate outside a class,
 * invalid UTF-8 and unknown letter escapes. -E2BIG past the size limits below.
 *
 * wk_rx owns its arrays (wk_rx_free). Nothing is global; compile and match are
 * reentrant. */
#ifndef WK_REGEX_H
#define WK_REGEX_H

#include <stddef.h>
#include <stdint.h>

#define WK_RX_MAX_STATES 100000
#define WK_RX_MAX_EDGES 1000000 // range edges, and separately epsilon edges

typedef struct wk_rx_edge {
    uint32_t lo, hi; // inclusive code-point range (lo <= hi <= 0x10FFFF, never surrogates D800-DFFF)
    int32_t to;      // target state
} wk_rx_edge;

typedef struct wk_rx {
    int32_t n_states;
    int32_t start;
    uint8_t *accept;   // [n_states] 1 = accepting
    int32_t *edge_off; // [n_states + 1] state s's code-point edges are edges[edge_off[s] .. edge_off[s+1]),
                       // sorted by lo
    wk_rx_edge *edges; // [edge_off[n_states]]
    int32_t *eps_off;  // [n_states + 1] state s's epsilon targets are eps[eps_off[s] .. eps_off[s+1])
    int32_t *eps;      // [eps_off[n_states]]
} wk_rx;

/* Compiles pattern[0..len) (UTF-8; need not be NUL-terminated). Returns 0, or
 * -EINVAL with a message in err naming the unsupported construct or the syntax
 * error and its byte offset ("lookahead (?= at offset 3 is not supported"), or
 * -E2BIG when the NFA would exceed WK_RX_MAX_STATES states or WK_RX_MAX_EDGES
 * edges, or -ENOMEM. err may be NULL (errlen 0). On success out owns its arrays:
 * release with wk_rx_free; on failure out is zeroed. */
int wk_rx_compile(const char *pattern, size_t len, wk_rx *out, char *err, size_t errlen);
/* Frees rx's arrays and zeroes it. A zeroed rx or NULL is a no-op. */
void wk_rx_free(wk_rx *rx);
/* 1 if the whole code-point string cps[0..n) is accepted, 0 if not, -ENOMEM (slow
 * reference: state-set simulation with epsilon closure; used by tests and as a
 * cross-check). */
int wk_rx_match(const wk_rx *rx, const uint32_t *cps, size_t n);

#endif
