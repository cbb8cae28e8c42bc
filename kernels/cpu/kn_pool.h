/* kn_pool: a persistent fork-join thread pool for the CPU backend.
 *
 * kn_pool_run(pool, fn, ctx) calls fn(ctx, ith, nth) once for every ith in
 * [0, nth) (the caller's thread runs ith 0) and returns when all calls are done.
 * Workers spin briefly after each job, then sleep on a condition variable. No
 * allocation after create. One caller at a time. */
#ifndef KN_POOL_H
#define KN_POOL_H

typedef struct kn_pool kn_pool;
typedef void (*kn_pool_fn)(void *ctx, int ith, int nth);

/* A pool of n_threads (>= 1) threads counting the caller; NULL on failure. Free
 * with kn_pool_destroy. */
kn_pool *kn_pool_create(int n_threads);
/* Joins the workers and frees the pool; NULL is a no-op. */
void kn_pool_destroy(kn_pool *p);
int kn_pool_size(const kn_pool *p);
/* Runs fn on every thread and waits. fn must not call kn_pool_run. */
void kn_pool_run(kn_pool *p, kn_pool_fn fn, void *ctx);

#endif
