/* gw_pool: the worker processes of one model and the jobs running on them.
 *
 * The pool spawns `kolm-worker` processes (socketpair + fork + exec), owns one
 * h2o socket per worker on the gateway's loop, writes frames with one write in
 * flight and a queue behind it, and parses the frames that come back. Each job is
 * owned by its HTTP request (gateway/gw_http.c); the pool only keeps a pointer
 * and calls the job's callbacks. A worker whose socket closes is dead: its jobs
 * get on_dead, it is reaped, and it is respawned with backoff. */
#ifndef GW_POOL_H
#define GW_POOL_H

#include <h2o.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/cm_buf.h"
#include "proto/proto.h"

typedef struct gw_pool gw_pool;
typedef struct gw_job gw_job;

typedef struct gw_job_ops {
    void (*on_event)(gw_job *job, const proto_event *ev); // a FINISH or ERROR detaches the job first
    void (*on_dead)(gw_job *job);                          // the worker died; the job is already detached
} gw_job_ops;

/* Embedded in the request's state; the pool fills the private part. */
struct gw_job {
    const gw_job_ops *ops;
    uint64_t id;
    int worker; // index, -1 when detached
};

typedef struct gw_pool_config {
    const char *worker_exe; // path of kolm-worker
    const char *model_path;
    const char *model_id;
    const char *artifact_cid; // a .kolm's CID: the workers refuse any other file; NULL for a GGUF
    int n_workers;
    const char *const *devices; // [n_workers]: each worker's --device ("cpu", "cuda:N"); NULL: all cpu
    const char *kv_dtype;       // the workers' --kv-dtype ("f16", "bf16", "f32", "fp8"); NULL: the default
    const char *quantization;   // the workers' --quantization ("none", "fp8"); NULL: the default (none)
    const char *gpu_fraction;   // GPU workers' --gpu-memory-fraction; NULL: the worker's default
    int threads;
    int ctx; // 0 = worker default
    int max_jobs; // jobs (running + queued) per worker before submits are refused; 0 = no cap
} gw_pool_config;

/* Creates the pool and spawns the workers on loop. NULL on failure. */
gw_pool *gw_pool_create(h2o_loop_t *loop, const gw_pool_config *cfg);
/* Sends SHUTDOWN, waits up to timeout_ms for the workers to exit, kills the rest. */
void gw_pool_shutdown(gw_pool *p, int timeout_ms);
void gw_pool_free(gw_pool *p);

/* Reaps exited workers and respawns dead ones whose backoff has passed. Call
 * after every turn of the loop: it calls waitpid only when a child exited (see
 * gw_pool_child_exited) or ~100 ms passed since it last did. */
void gw_pool_tick(gw_pool *p);

/* Counts a child's exit for every pool's next gw_pool_tick: the process's SIGCHLD
 * handler calls it (async-signal-safe). Without that handler exits are still
 * reaped, up to ~100 ms later. */
void gw_pool_child_exited(void);

/* 1 when a worker died before any worker ever said HELLO: the model cannot be
 * loaded (bad file, too little memory), so respawning would only loop. */
int gw_pool_failed_to_start(const gw_pool *p);

/* Number of workers that said HELLO and are alive. */
int gw_pool_ready(const gw_pool *p);
/* Context window reported by the workers (0 before the first HELLO). */
uint32_t gw_pool_n_ctx(const gw_pool *p);

/* Sends sub (its job_id is set here) on the least-loaded ready worker and attaches
 * job. 0, or -EAGAIN (no worker ready), -EBUSY (every ready worker holds max_jobs
 * jobs), -ENOMEM, -EMSGSIZE. */
int gw_pool_submit(gw_pool *p, gw_job *job, proto_submit *sub);
int gw_pool_n_workers(const gw_pool *p);
/* What worker i last reported (its STATS, zero before any) and whether it is
 * ready. */
void gw_pool_worker_stats(const gw_pool *p, int i, proto_stats *out, int *ready, pid_t *pid);

/* Detaches job and sends CANCEL if it is still attached. Safe on detached jobs. */
void gw_pool_cancel(gw_pool *p, gw_job *job);

#endif
