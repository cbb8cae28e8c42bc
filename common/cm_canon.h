/* cm_canon: canonical JSON, the bytes that artifact manifests and receipts sign.
 *
 * The rule is Python's json.dumps(v, sort_keys=True, separators=(",", ":"),
 * ensure_ascii=False), so anyone can rebuild the bytes with a standard library:
 * object keys sorted by their UTF-8 bytes, no whitespace, strings as UTF-8 with
 * only '"', '\\' and control characters escaped (\b \f \n \r \t, others \u00xx in
 * lowercase hex), integers in decimal, reals as Python's repr (the shortest digits
 * that read back to the same double; exponent form "1e+22" / "1e-05" when the
 * decimal point would sit more than 16 places right or 4 places left, else fixed
 * with at least one fractional digit, "1.0"). */
#ifndef CM_CANON_H
#define CM_CANON_H

#include <jansson.h>
#include <stddef.h>

#include "common/cm_buf.h"

/* Appends s[0..n) as a canonical JSON string, or null when it is not valid UTF-8
 * (no overlongs, surrogates or code points past U+10FFFF: the form client bytes need). */
int cm_canon_string(cm_buf *b, const char *s, size_t n);

/* The canonical bytes of j (NUL-terminated; free() them), or NULL when out of
 * memory or j holds a non-finite real. */
char *cm_canonical_json(const json_t *j, size_t *len);

#endif
