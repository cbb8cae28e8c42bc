/* libFuzzer target for the frame decoder: any byte string must decode to a frame
 * or an error, never crash, leak or read out of bounds; a decoded frame must
 * re-encode and decode to the same frame. */
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

static int same_str(const proto_str *a, const proto_str *b) {
    return a->len == b->len && !memcmp(a->p, b->p, a->len);
}

static void check_reencode(const proto_frame *f) {
    cm_buf b = CM_BUF_INIT;
    int rc = 0;
    switch (f->type) {
    case PROTO_SUBMIT: rc = proto_encode_submit(&b, &f->u.submit); break;
    case PROTO_EVENT: rc = proto_encode_event(&b, &f->u.event); break;
    case PROTO_HELLO: rc = proto_encode_hello(&b, &f->u.hello); break;
    case PROTO_CANCEL: rc = proto_encode_cancel(&b, f->u.cancel_job_id); break;
    default: cm_buf_free(&b); return;
    }
    if (rc) {
        cm_buf_free(&b);
        return;
    }
    proto_frame g;
    if (proto_decode(b.data, b.len, &g) != (ssize_t)b.len)
        abort();
    if (g.type != f->type)
        abort();
    if (f->type == PROTO_SUBMIT) {
        if (g.u.submit.job_id != f->u.submit.job_id || g.u.submit.n_msgs != f->u.submit.n_msgs ||
            g.u.submit.n_stop != f->u.submit.n_stop || g.u.submit.max_tokens != f->u.submit.max_tokens)
            abort();
        for (uint32_t i = 0; i < g.u.submit.n_msgs; i++)
            if (!same_str(&g.u.submit.msgs[i].content, &f->u.submit.msgs[i].content))
                abort();
    } else if (f->type == PROTO_EVENT) {
        if (g.u.event.kind != f->u.event.kind || g.u.event.job_id != f->u.event.job_id)
            abort();
    }
    proto_frame_free(&g);
    cm_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t off = 0;
    while (off < size) {
        proto_frame f;
        ssize_t n = proto_decode(data + off, size - off, &f);
        if (n <= 0)
            break;
        check_reencode(&f);
        proto_frame_free(&f);
        off += (size_t)n;
    }
    return 0;
}
