/* gw_pool.c: worker supervision and job routing (see gw_pool.h).
 *
 * Design note. Each worker is a child process with one end of a socketpair on fd
 * 3. The gateway side is an h2o socket on the main loop: reads are parsed frame
 * by frame with proto_decode, writes go through a two-buffer queue (one buffer in
 * flight in h2o_socket_write, the other collecting new frames). Death is noticed
 * as EOF/error on the socket (or an exit reaped by gw_pool_tick before that); the
 * worker's jobs are detached and told, the process is killed and reaped, and a
 * new one is spawned after a backoff that doubles with each failure to start
 * (reset by a HELLO), so a worker that crashes at startup never spins.
 *
 * gw_pool_tick runs after every turn of the event loop, so it must not cost a
 * syscall per turn (one waitpid per worker was one per streamed token). It reaps
 * when gw_pool_child_exited (the process's SIGCHLD handler) has counted an exit
 * since this pool last looked, and otherwise at most every REAP_POLL_S, for a
 * process that installs no handler. The count is read before the waitpids, so an
 * exit that lands after a worker's waitpid is seen on the next tick. */
#include "gateway/gw_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/cm_log.h"

#define REAP_POLL_S 0.1 // reaping without a SIGCHLD, at most this often

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "gw_pool_child_exited must be async-signal-safe");
static atomic_uint g_child_exits; // bumped by gw_pool_child_exited

typedef struct worker {
    gw_pool *pool;
    int idx;
    pid_t pid;         // 0 once reaped
    h2o_socket_t *sock; // NULL when dead
    int ready;
    uint32_t n_ctx;
    cm_buf wq, wflight;
    int writing;
    gw_job **jobs;
    int n_jobs, cap_jobs;
    int failures;
    double next_spawn;
    proto_stats stats; // the worker's last STATS
} worker;

struct gw_pool {
    h2o_loop_t *loop;
    gw_pool_config cfg;
    worker *w;
    uint64_t next_job;
    uint32_t n_ctx;
    int shutting_down;
    int ever_ready;      // some worker said HELLO
    int failed_to_start; // a worker died before any HELLO
    unsigned seen_exits; // g_child_exits when this pool last reaped
    double next_reap;    // reap by then even without a SIGCHLD
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void worker_dead(worker *w, const char *why);

/* ---- writing ---- */

static void on_write(h2o_socket_t *sock, const char *err);

static void flush_writes(worker *w) {
    if (w->writing || !w->wq.len || !w->sock)
        return;
    cm_buf t = w->wflight;
    w->wflight = w->wq;
    w->wq = t;
    w->wq.len = 0;
    w->writing = 1;
    h2o_iovec_t iov = h2o_iovec_init(w->wflight.data, w->wflight.len);
    h2o_socket_write(w->sock, &iov, 1, on_write);
}

static void on_write(h2o_socket_t *sock, const char *err) {
    worker *w = sock->data;
    w->writing = 0;
    w->wflight.len = 0;
    if (err) {
        worker_dead(w, err);
        return;
    }
    flush_writes(w);
}

/* ---- jobs ---- */

static int attach(worker *w, gw_job *job) {
    if (w->n_jobs == w->cap_jobs) {
        int cap = w->cap_jobs ? w->cap_jobs * 2 : 16;
        gw_job **p = realloc(w->jobs, (size_t)cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        w->jobs = p;
        w->cap_jobs = cap;
    }
    w->jobs[w->n_jobs++] = job;
    job->worker = w->idx;
    return 0;
}

static void detach(worker *w, gw_job *job) {
    for (int i = 0; i < w->n_jobs; i++)
        if (w->jobs[i] == job) {
            w->jobs[i] = w->jobs[--w->n_jobs];
            break;
        }
    job->worker = -1;
}

static gw_job *find_job(worker *w, uint64_t id) {
    for (int i = 0; i < w->n_jobs; i++)
        if (w->jobs[i]->id == id)
            return w->jobs[i];
    return NULL;
}

/* ---- reading ---- */

static void handle_frame(worker *w, proto_frame *f) {
    switch (f->type) {
    case PROTO_HELLO:
        w->ready = 1;
        w->failures = 0;
        w->n_ctx = f->u.hello.n_ctx;
        w->pool->n_ctx = f->u.hello.n_ctx;
        w->pool->ever_ready = 1;
        cm_info("worker %d (pid %d) ready: %s, %s, context %u", w->idx, (int)w->pid, f->u.hello.model_id.p,
                f->u.hello.arch.p, f->u.hello.n_ctx);
        break;
    case PROTO_EVENT: {
        gw_job *job = find_job(w, f->u.event.job_id);
        if (!job)
            break; // cancelled: late events are dropped
        if ((f->u.event.kind == PROTO_EV_FINISH && f->u.event.last) || f->u.event.kind == PROTO_EV_ERROR)
            detach(w, job);
        job->ops->on_event(job, &f->u.event);
        break;
    }
    case PROTO_STATS: w->stats = f->u.stats; break;
    default: break; // anything newer: nothing to do
    }
}

static void on_read(h2o_socket_t *sock, const char *err) {
    worker *w = sock->data;
    if (err) {
        worker_dead(w, err);
        return;
    }
    size_t off = 0;
    while (off < sock->input->size) {
        proto_frame f;
        ssize_t n = proto_decode((const uint8_t *)sock->input->bytes + off, sock->input->size - off, &f);
        if (n == 0)
            break;
        if (n < 0) {
            cm_error("worker %d sent a bad frame: %s", w->idx, proto_strerror((int)n));
            worker_dead(w, "protocol error");
            return;
        }
        off += (size_t)n;
        handle_frame(w, &f);
        proto_frame_free(&f);
        if (!w->sock)
            return;
    }
    h2o_buffer_consume(&sock->input, off);
}

/* ---- processes ---- */

static int spawn(worker *w) {
    gw_pool *p = w->pool;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
        cm_error("socketpair: %s", strerror(errno));
        return -errno;
    }
    char fdarg[16], idarg[16], tharg[16], ctxarg[16];
    snprintf(fdarg, sizeof fdarg, "3");
    snprintf(idarg, sizeof idarg, "%d", w->idx);
    snprintf(tharg, sizeof tharg, "%d", p->cfg.threads);
    snprintf(ctxarg, sizeof ctxarg, "%d", p->cfg.ctx);
    char *argv[32]; // every option below given: 23 entries and the NULL
    int a = 0;
    argv[a++] = (char *)p->cfg.worker_exe;
    argv[a++] = "--fd", argv[a++] = fdarg;
    argv[a++] = "--model", argv[a++] = (char *)p->cfg.model_path;
    argv[a++] = "--model-id", argv[a++] = (char *)p->cfg.model_id;
    if (p->cfg.artifact_cid)
        argv[a++] = "--artifact-cid", argv[a++] = (char *)p->cfg.artifact_cid;
    argv[a++] = "--worker-id", argv[a++] = idarg;
    if (p->cfg.devices)
        argv[a++] = "--device", argv[a++] = (char *)p->cfg.devices[w->idx];
    if (p->cfg.kv_dtype)
        argv[a++] = "--kv-dtype", argv[a++] = (char *)p->cfg.kv_dtype;
    if (p->cfg.quantization)
        argv[a++] = "--quantization", argv[a++] = (char *)p->cfg.quantization;
    if (p->cfg.gpu_fraction && p->cfg.devices && !strncmp(p->cfg.devices[w->idx], "cuda:", 5))
        argv[a++] = "--gpu-memory-fraction", argv[a++] = (char *)p->cfg.gpu_fraction;
    argv[a++] = "--threads", argv[a++] = tharg;
    if (p->cfg.ctx > 0)
        argv[a++] = "--ctx", argv[a++] = ctxarg;
    argv[a] = NULL;
    pid_t pid = fork();
    if (pid < 0) {
        cm_error("fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -errno;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (dup2(sv[1], 3) < 0)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        execv(argv[0], argv);
        fprintf(stderr, "kolm: cannot exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(sv[1]);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    w->pid = pid;
    w->ready = 0;
    memset(&w->stats, 0, sizeof w->stats);
    w->writing = 0;
    w->wq.len = w->wflight.len = 0;
    w->sock = h2o_evloop_socket_create(p->loop, sv[0], 0);
    w->sock->data = w;
    h2o_socket_read_start(w->sock, on_read);
    cm_info("spawned worker %d (pid %d)", w->idx, (int)pid);
    return 0;
}

static void worker_dead(worker *w, const char *why) {
    if (!w->sock)
        return;
    if (!w->pool->shutting_down)
        cm_warn("worker %d (pid %d) is gone (%s)", w->idx, (int)w->pid, why);
    if (!w->pool->ever_ready && !w->pool->shutting_down)
        w->pool->failed_to_start = 1;
    h2o_socket_close(w->sock);
    w->sock = NULL;
    w->ready = 0;
    w->writing = 0;
    if (w->pid > 0)
        kill(w->pid, SIGKILL);
    double backoff = 0.25;
    for (int i = 0; i < w->failures && backoff < 10; i++)
        backoff *= 2;
    w->failures++;
    w->next_spawn = now_s() + backoff;
    // Fail the jobs. on_dead may submit nothing back to this worker: it is dead.
    while (w->n_jobs) {
        gw_job *job = w->jobs[w->n_jobs - 1];
        detach(w, job);
        job->ops->on_dead(job);
    }
}

gw_pool *gw_pool_create(h2o_loop_t *loop, const gw_pool_config *cfg) {
    gw_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->loop = loop;
    p->cfg = *cfg;
    p->w = calloc((size_t)cfg->n_workers, sizeof *p->w);
    if (!p->w) {
        free(p);
        return NULL;
    }
    for (int i = 0; i < cfg->n_workers; i++) {
        p->w[i].pool = p;
        p->w[i].idx = i;
        if (spawn(&p->w[i]))
            p->w[i].next_spawn = now_s() + 1;
    }
    return p;
}

void gw_pool_child_exited(void) {
    atomic_fetch_add_explicit(&g_child_exits, 1, memory_order_relaxed);
}

/* Reaps the workers that exited and treats them as dead. */
static void reap(gw_pool *p) {
    int status;
    // Each worker's own pid: several pools share the process, and waitpid(-1)
    // would reap another pool's children.
    for (int i = 0; i < p->cfg.n_workers; i++) {
        worker *w = &p->w[i];
        pid_t pid = w->pid;
        if (pid <= 0 || waitpid(pid, &status, WNOHANG) != pid)
            continue;
        if (!p->shutting_down) {
            if (WIFSIGNALED(status))
                cm_warn("worker %d (pid %d) killed by signal %d", i, (int)pid, WTERMSIG(status));
            else
                cm_warn("worker %d (pid %d) exited with status %d", i, (int)pid, WEXITSTATUS(status));
        }
        w->pid = 0;
        worker_dead(w, "process exited");
    }
}

void gw_pool_tick(gw_pool *p) {
    double t = now_s();
    unsigned exits = atomic_load_explicit(&g_child_exits, memory_order_relaxed);
    if (exits != p->seen_exits || t >= p->next_reap) {
        p->seen_exits = exits;
        p->next_reap = t + REAP_POLL_S;
        reap(p);
    }
    if (p->shutting_down)
        return;
    for (int i = 0; i < p->cfg.n_workers; i++) {
        worker *w = &p->w[i];
        if (!w->sock && w->pid == 0 && t >= w->next_spawn && spawn(w))
            w->next_spawn = t + 1;
    }
}

void gw_pool_shutdown(gw_pool *p, int timeout_ms) {
    p->shutting_down = 1;
    for (int i = 0; i < p->cfg.n_workers; i++) {
        worker_dead(&p->w[i], "shutdown");
        if (p->w[i].pid > 0)
            kill(p->w[i].pid, SIGTERM);
    }
    double deadline = now_s() + timeout_ms / 1000.0;
    for (;;) {
        int left = 0;
        for (int i = 0; i < p->cfg.n_workers; i++) {
            worker *w = &p->w[i];
            if (w->pid > 0 && waitpid(w->pid, NULL, WNOHANG) == w->pid)
                w->pid = 0;
            left += w->pid > 0;
        }
        if (!left)
            return;
        if (now_s() > deadline) {
            for (int i = 0; i < p->cfg.n_workers; i++)
                if (p->w[i].pid > 0) {
                    kill(p->w[i].pid, SIGKILL);
                    waitpid(p->w[i].pid, NULL, 0);
                    p->w[i].pid = 0;
                }
            return;
        }
        usleep(10000);
    }
}

void gw_pool_free(gw_pool *p) {
    if (!p)
        return;
    for (int i = 0; i < p->cfg.n_workers; i++) {
        cm_buf_free(&p->w[i].wq);
        cm_buf_free(&p->w[i].wflight);
        free(p->w[i].jobs);
    }
    free(p->w);
    free(p);
}

int gw_pool_failed_to_start(const gw_pool *p) {
    return p->failed_to_start;
}

int gw_pool_ready(const gw_pool *p) {
    int n = 0;
    for (int i = 0; i < p->cfg.n_workers; i++)
        n += p->w[i].sock && p->w[i].ready;
    return n;
}

uint32_t gw_pool_n_ctx(const gw_pool *p) {
    return p->n_ctx;
}

int gw_pool_submit(gw_pool *p, gw_job *job, proto_submit *sub) {
    worker *best = NULL;
    for (int i = 0; i < p->cfg.n_workers; i++) {
        worker *w = &p->w[i];
        if (w->sock && w->ready && (!best || w->n_jobs < best->n_jobs))
            best = w;
    }
    if (!best)
        return -EAGAIN;
    if (p->cfg.max_jobs > 0 && best->n_jobs >= p->cfg.max_jobs)
        return -EBUSY;
    job->id = sub->job_id = ++p->next_job;
    size_t before = best->wq.len;
    int rc = proto_encode_submit(&best->wq, sub);
    if (rc)
        return rc;
    if ((rc = attach(best, job))) {
        best->wq.len = before;
        return rc;
    }
    flush_writes(best);
    return 0;
}

int gw_pool_n_workers(const gw_pool *p) {
    return p->cfg.n_workers;
}

void gw_pool_worker_stats(const gw_pool *p, int i, proto_stats *out, int *ready, pid_t *pid) {
    const worker *w = &p->w[i];
    *out = w->stats;
    *ready = w->sock && w->ready;
    *pid = w->pid;
}

void gw_pool_cancel(gw_pool *p, gw_job *job) {
    if (job->worker < 0)
        return;
    worker *w = &p->w[job->worker];
    detach(w, job);
    if (w->sock && !proto_encode_cancel(&w->wq, job->id))
        flush_writes(w);
}
