/* cm_canon.c: see cm_canon.h. */
#include "common/cm_canon.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cm_buf.h"

static int put_string(cm_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    int rc = cm_buf_append(b, "\"", 1);
    size_t run = 0; // bytes copied as they are, pending
    for (size_t i = 0; !rc && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                memcpy(u, "\\u00", 4);
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
                u[6] = 0;
                esc = u;
            }
        }
        if (!esc) {
            run++;
            continue;
        }
        rc = cm_buf_append(b, s + i - run, run);
        run = 0;
        if (!rc)
            rc = cm_buf_append(b, esc, strlen(esc));
    }
    if (!rc)
        rc = cm_buf_append(b, s + n - run, run);
    return rc ? rc : cm_buf_append(b, "\"", 1);
}

static int utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n)
            return 0;
        unsigned cp = len == 1 ? c : c & (0x7f >> len);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

int cm_canon_string(cm_buf *b, const char *s, size_t n) {
    return utf8_valid(s, n) ? put_string(b, s, n) : cm_buf_append(b, "null", 4);
}

/* Python's repr of a finite double. */
static int put_real(cm_buf *b, double v) {
    if (!isfinite(v))
        return -1;
    if (v == 0)
        return cm_buf_printf(b, signbit(v) ? "-0.0" : "0.0");
    char e[40], digits[24];
    int p;
    for (p = 1; p <= 17; p++) { // the shortest digits that read back as v
        snprintf(e, sizeof e, "%.*e", p - 1, v);
        if (strtod(e, NULL) == v)
            break;
    }
    // e is [-]d[.ddd]e±XX
    const char *q = e;
    int neg = *q == '-';
    q += neg;
    size_t n = 0;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[n++] = *q;
    while (n > 1 && digits[n - 1] == '0')
        n--;
    digits[n] = 0;
    int decpt = atoi(q + 1) + 1; // value = 0.DIGITS x 10^decpt
    int rc = neg ? cm_buf_append(b, "-", 1) : 0;
    if (rc)
        return rc;
    if (decpt <= -4 || decpt > 16) {
        int x = decpt - 1;
        rc = cm_buf_append(b, digits, 1);
        if (!rc && n > 1)
            rc = cm_buf_printf(b, ".%s", digits + 1);
        return rc ? rc : cm_buf_printf(b, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    }
    if (decpt <= 0) { // 0.000ddd
        rc = cm_buf_append(b, "0.", 2);
        for (int i = 0; !rc && i < -decpt; i++)
            rc = cm_buf_append(b, "0", 1);
        return rc ? rc : cm_buf_append(b, digits, n);
    }
    if ((size_t)decpt < n) // dd.ddd
        return cm_buf_printf(b, "%.*s.%s", decpt, digits, digits + decpt);
    rc = cm_buf_append(b, digits, n); // ddd000.0
    for (int i = (int)n; !rc && i < decpt; i++)
        rc = cm_buf_append(b, "0", 1);
    return rc ? rc : cm_buf_append(b, ".0", 2);
}

static int cmp_keys(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int put(cm_buf *b, const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(j), i = 0;
        const char **keys = malloc((n ? n : 1) * sizeof *keys);
        if (!keys)
            return -1;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) keys[i++] = k;
        qsort(keys, n, sizeof *keys, cmp_keys); // strcmp orders UTF-8 by code point
        int rc = cm_buf_append(b, "{", 1);
        for (i = 0; !rc && i < n; i++) {
            if (i)
                rc = cm_buf_append(b, ",", 1);
            if (!rc)
                rc = put_string(b, keys[i], strlen(keys[i]));
            if (!rc)
                rc = cm_buf_append(b, ":", 1);
            if (!rc)
                rc = put(b, json_object_get(j, keys[i]));
        }
        free(keys);
        return rc ? rc : cm_buf_append(b, "}", 1);
    }
    case JSON_ARRAY: {
        int rc = cm_buf_append(b, "[", 1);
        for (size_t i = 0; !rc && i < json_array_size(j); i++) {
            if (i)
                rc = cm_buf_append(b, ",", 1);
            if (!rc)
                rc = put(b, json_array_get(j, i));
        }
        return rc ? rc : cm_buf_append(b, "]", 1);
    }
    case JSON_STRING: return put_string(b, json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return cm_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
    case JSON_REAL: return put_real(b, json_real_value(j));
    case JSON_TRUE: return cm_buf_append(b, "true", 4);
    case JSON_FALSE: return cm_buf_append(b, "false", 5);
    default: return cm_buf_append(b, "null", 4);
    }
}

char *cm_canonical_json(const json_t *j, size_t *len) {
    cm_buf b = CM_BUF_INIT;
    if (put(&b, j) || cm_buf_append(&b, "", 1)) {
        cm_buf_free(&b);
        return NULL;
    }
    if (len)
        *len = b.len - 1;
    return (char *)b.data;
}
