/* cm_buf: a growable byte buffer.
 *
 * The buffer owns `data`; cm_buf_free releases it and leaves an empty buffer.
 * Appends return 0 or -ENOMEM and never leave the buffer inconsistent. */
#ifndef CM_BUF_H
#define CM_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct cm_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} cm_buf;

#define CM_BUF_INIT {NULL, 0, 0}

void cm_buf_free(cm_buf *b);
/* Ensures room for `extra` more bytes. */
int cm_buf_reserve(cm_buf *b, size_t extra);
int cm_buf_append(cm_buf *b, const void *p, size_t n);
int cm_buf_printf(cm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (n <= len). */
void cm_buf_consume(cm_buf *b, size_t n);

#endif
