/* gw_receipt.c: see gw_receipt.h. */
#include "gateway/gw_receipt.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/cm_canon.h"
#include "common/cm_kolm.h"
#include "common/cm_log.h"

#define DEFAULT_LOG_MAX (64ull << 20)
#define DEFAULT_LOG_KEEP 8
#define TAIL_SCAN (256u << 10)
#define SYNC_INTERVAL 0.05 // seconds between fdatasyncs of the receipt log

struct gw_receipts {
    cm_key key;
    uint64_t seq; // last used
    char dir[4096];
    uint64_t log_max;
    int log_keep;
    int fd;
    uint64_t log_size;
    pthread_t writer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cm_buf queue; // lines waiting for the writer
    int stop, started;
};

int gw_receipt_open(const char *tok, size_t len, const uint8_t *pk, json_t **payload) {
    uint8_t *raw = malloc(len + 1);
    size_t n = 0;
    *payload = NULL;
    if (raw && !cm_unb64url(tok, len, raw, len, &n) && n > CM_SIG_LEN &&
        (!pk || !cm_verify(pk, raw + CM_SIG_LEN, n - CM_SIG_LEN, raw)))
        *payload = json_loadb((const char *)raw + CM_SIG_LEN, n - CM_SIG_LEN, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (json_is_object(*payload))
        return 0;
    json_decref(*payload);
    *payload = NULL;
    return -1;
}

/* The sequence number in one log line (a receipt token), or -1. The log is ours:
 * the signature is not checked. */
static long long line_seq(const char *s, size_t n) {
    json_t *j;
    long long seq = -1;
    if (!gw_receipt_open(s, n, NULL, &j)) {
        json_t *v = json_object_get(j, "seq");
        if (json_is_integer(v) && json_integer_value(v) >= 0)
            seq = json_integer_value(v);
        json_decref(j);
    }
    return seq;
}

/* The last readable sequence number in the log file at path, or -1. */
static long long tail_seq(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    long long seq = -1;
    char *buf = malloc(TAIL_SCAN);
    if (buf && !fstat(fd, &st) && st.st_size > 0) {
        off_t off = st.st_size > (off_t)TAIL_SCAN ? st.st_size - (off_t)TAIL_SCAN : 0;
        ssize_t n = pread(fd, buf, (size_t)(st.st_size - off), off);
        // Walk lines from the end: a torn last line (a crash mid-write) is skipped.
        for (ssize_t end = n; seq < 0 && end > 0;) {
            while (end > 0 && buf[end - 1] == '\n')
                end--;
            ssize_t start = end;
            while (start > 0 && buf[start - 1] != '\n')
                start--;
            if (start == 0 && off > 0)
                break; // the line runs past what was read
            if (end > start)
                seq = line_seq(buf + start, (size_t)(end - start));
            end = start;
        }
    }
    free(buf);
    close(fd);
    return seq;
}

static int open_log(gw_receipts *r) {
    char path[4200];
    snprintf(path, sizeof path, "%s/receipts.log", r->dir);
    r->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    struct stat st;
    if (r->fd < 0 || fstat(r->fd, &st))
        return -1;
    r->log_size = (uint64_t)st.st_size;
    return 0;
}

static void rotate(gw_receipts *r) {
    char from[4200], to[4200];
    close(r->fd);
    for (int i = r->log_keep; i >= 1; i--) {
        snprintf(to, sizeof to, "%s/receipts.log.%d", r->dir, i);
        if (i == 1)
            snprintf(from, sizeof from, "%s/receipts.log", r->dir);
        else
            snprintf(from, sizeof from, "%s/receipts.log.%d", r->dir, i - 1);
        if (i == r->log_keep)
            unlink(to);
        rename(from, to);
    }
    if (open_log(r))
        cm_error("cannot open a new receipt log in %s: %s", r->dir, strerror(errno));
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void write_batch(gw_receipts *r, const cm_buf *batch) {
    size_t done = 0;
    while (r->fd >= 0 && done < batch->len) {
        ssize_t w = write(r->fd, batch->data + done, batch->len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            cm_error("cannot write the receipt log: %s", strerror(errno));
            break;
        }
        done += (size_t)w;
    }
    r->log_size += done;
}

/* Lines are written as they come (a crash of the process loses none); fdatasync
 * runs at most every SYNC_INTERVAL, batching what came meanwhile (group commit: a
 * power loss loses at most that long), and before each rotation and at close. */
static void *writer_main(void *arg) {
    gw_receipts *r = arg;
    cm_buf batch = CM_BUF_INIT;
    double last_sync = 0;
    int dirty = 0;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->queue.len && !r->stop && !dirty)
            pthread_cond_wait(&r->cv, &r->mu);
        if (!r->queue.len && dirty && !r->stop) { // wait out the interval, then sync
            double wait = last_sync + SYNC_INTERVAL - mono_s();
            if (wait > 0) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                long long ns = ts.tv_nsec + (long long)(wait * 1e9);
                ts.tv_sec += (time_t)(ns / 1000000000);
                ts.tv_nsec = (long)(ns % 1000000000);
                pthread_cond_timedwait(&r->cv, &r->mu, &ts);
                if (r->queue.len)
                    continue; // write the new lines first
            }
        }
        cm_buf t = batch;
        batch = r->queue;
        r->queue = t;
        r->queue.len = 0;
        int stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        if (batch.len) {
            write_batch(r, &batch);
            dirty = 1;
        }
        double now = mono_s();
        int rotate_now = r->fd >= 0 && r->log_size >= r->log_max;
        if (dirty && r->fd >= 0 && (stop || rotate_now || now - last_sync >= SYNC_INTERVAL)) {
            if (fdatasync(r->fd))
                cm_error("cannot fsync the receipt log: %s", strerror(errno));
            last_sync = now;
            dirty = 0;
        }
        if (rotate_now)
            rotate(r);
        pthread_mutex_lock(&r->mu);
        if (stop && !r->queue.len && !dirty)
            break;
    }
    pthread_mutex_unlock(&r->mu);
    cm_buf_free(&batch);
    return NULL;
}

gw_receipts *gw_receipts_open(const gw_receipts_config *cfg, char *err, size_t errlen) {
    gw_receipts *r = calloc(1, sizeof *r);
    if (!r) {
        cm_set_err(err, errlen, "out of memory");
        return NULL;
    }
    r->fd = -1;
    r->log_max = cfg->log_max ? cfg->log_max : DEFAULT_LOG_MAX;
    r->log_keep = cfg->log_keep > 0 ? cfg->log_keep : DEFAULT_LOG_KEEP;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    char keys[4200], path[4300];
    snprintf(keys, sizeof keys, "%s/keys", cfg->home);
    if (cfg->key_path) {
        if (cm_key_load_secret(cfg->key_path, &r->key, err, errlen))
            goto fail;
    } else {
        snprintf(path, sizeof path, "%s/gateway.key", keys);
        if (access(path, F_OK)) {
            if (cm_mkdirs(keys, 0700) || cm_key_generate(&r->key) || cm_key_save(&r->key, keys, "gateway", err, errlen)) {
                if (err && !*err)
                    cm_set_err(err, errlen, "cannot create the receipt key in %s: %s", keys, strerror(errno));
                goto fail;
            }
            cm_info("made the receipt signing key %s (id %s)", path, r->key.id);
        } else if (cm_key_load_secret(path, &r->key, err, errlen)) {
            goto fail;
        }
    }
    snprintf(r->dir, sizeof r->dir, "%s/receipts", cfg->home);
    if (cm_mkdirs(r->dir, 0700) || open_log(r)) {
        cm_set_err(err, errlen, "cannot open the receipt log in %s: %s", r->dir, strerror(errno));
        goto fail;
    }
    long long last = -1;
    snprintf(path, sizeof path, "%s/receipts.log", r->dir);
    last = tail_seq(path);
    for (int i = 1; last < 0 && i <= r->log_keep; i++) { // a freshly rotated log is empty
        snprintf(path, sizeof path, "%s/receipts.log.%d", r->dir, i);
        last = tail_seq(path);
    }
    r->seq = last < 0 ? 0 : (uint64_t)last;
    if (pthread_create(&r->writer, NULL, writer_main, r)) {
        cm_set_err(err, errlen, "cannot start the receipt log writer");
        goto fail;
    }
    r->started = 1;
    return r;
fail:
    gw_receipts_close(r);
    return NULL;
}

void gw_receipts_close(gw_receipts *r) {
    if (!r)
        return;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->stop = 1;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->writer, NULL);
    }
    if (r->fd >= 0)
        close(r->fd);
    cm_buf_free(&r->queue);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

const cm_key *gw_receipts_key(const gw_receipts *r) {
    return &r->key;
}

static int put_hex(cm_buf *b, const uint8_t *d) {
    char hex[2 * CM_SHA256_LEN + 3];
    if (!d)
        return cm_buf_append(b, "null", 4);
    hex[0] = '"';
    cm_hex(d, CM_SHA256_LEN, hex + 1);
    hex[2 * CM_SHA256_LEN + 1] = '"';
    return cm_buf_append(b, hex, 2 * CM_SHA256_LEN + 2);
}

static int put_count(cm_buf *b, long long v) {
    return v < 0 ? cm_buf_append(b, "null", 4) : cm_buf_printf(b, "%lld", v);
}

static int put_str(cm_buf *b, const char *s, size_t n) {
    return s ? cm_canon_string(b, s, n) : cm_buf_append(b, "null", 4);
}

/* The payload in canonical form, written directly: its members are fixed, so they
 * are emitted in sorted order (this is the receipt's hot path; building a jansson
 * object and sorting it cost as much as the signature). Client bytes that are not
 * UTF-8 (a method or path) are null; they are still in the request hash. */
static int payload(gw_receipts *r, const gw_receipt_in *in, uint64_t seq, cm_buf *b) {
    int rc = cm_buf_append(b, "{\"artifact\":", 12);
    rc = rc ? rc : put_str(b, in->artifact, in->artifact ? strlen(in->artifact) : 0);
    rc = rc ? rc : cm_buf_append(b, ",\"completion_tokens\":", 21);
    rc = rc ? rc : put_count(b, in->completion_tokens);
    rc = rc ? rc : cm_buf_printf(b, ",\"created\":%lld,\"key_id\":\"%s\",\"method\":", (long long)time(NULL), r->key.id);
    rc = rc ? rc : put_str(b, in->method, in->method_len);
    rc = rc ? rc : cm_buf_append(b, ",\"model\":", 9);
    rc = rc ? rc : put_str(b, in->model, in->model ? strlen(in->model) : 0);
    rc = rc ? rc : cm_buf_append(b, ",\"path\":", 8);
    rc = rc ? rc : put_str(b, in->path, in->path_len);
    rc = rc ? rc : cm_buf_append(b, ",\"prompt_tokens\":", 17);
    rc = rc ? rc : put_count(b, in->prompt_tokens);
    rc = rc ? rc : cm_buf_append(b, ",\"request_sha256\":", 18);
    rc = rc ? rc : put_hex(b, in->request_sha256);
    rc = rc ? rc : cm_buf_append(b, ",\"response_sha256\":", 19);
    rc = rc ? rc : put_hex(b, in->response_sha256);
    return rc ? rc
              : cm_buf_printf(b, ",\"seq\":%llu,\"status\":%d,\"stream\":%s,\"v\":1}", (unsigned long long)seq,
                              in->status, in->stream ? "true" : "false");
}

int gw_receipt_make(gw_receipts *r, const gw_receipt_in *in, cm_buf *out) {
    uint64_t seq = ++r->seq;
    cm_buf pb = CM_BUF_INIT;
    if (payload(r, in, seq, &pb)) {
        cm_buf_free(&pb);
        return -ENOMEM;
    }
    const char *pl = (const char *)pb.data;
    size_t plen = pb.len;
    size_t rawlen = CM_SIG_LEN + plen, tl = cm_b64url_len(rawlen);
    uint8_t *raw = malloc(rawlen);
    int rc = raw ? cm_buf_reserve(out, tl) : -ENOMEM;
    if (!rc) {
        cm_sign(&r->key, pl, plen, raw);
        memcpy(raw + CM_SIG_LEN, pl, plen);
        char *tok = (char *)out->data + out->len;
        cm_b64url(raw, rawlen, tok);
        pthread_mutex_lock(&r->mu);
        if (!cm_buf_append(&r->queue, tok, tl - 1) && !cm_buf_append(&r->queue, "\n", 1))
            pthread_cond_signal(&r->cv);
        else
            cm_error("receipt %llu could not be queued for the log (out of memory)", (unsigned long long)seq);
        pthread_mutex_unlock(&r->mu);
        out->len += tl - 1;
    }
    free(raw);
    cm_buf_free(&pb);
    return rc;
}
