/* kn_pool: see kn_pool.h.
 *
 * Design: a job is published by bumping `gen` under the mutex and broadcasting
 * `cv_work`. Workers first spin on `gen` (cheap hand-off between the many small
 * ops of one decode step), then sleep. Completion is an atomic countdown; the
 * last worker signals `cv_done` under the mutex, so the caller cannot miss it. */
#include "kernels/cpu/kn_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#define KN_POOL_SPIN 20000

struct kn_pool {
    int n; // threads counting the caller
    pthread_t *th;
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    atomic_uint_fast64_t gen;
    atomic_int pending;
    atomic_int stop;
    kn_pool_fn fn;
    void *ctx;
};

typedef struct {
    kn_pool *p;
    int ith;
} kn_pool_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *pool_main(void *arg) {
    kn_pool *p = ((kn_pool_arg *)arg)->p;
    const int ith = ((kn_pool_arg *)arg)->ith;
    free(arg);
    uint_fast64_t seen = 0;
    for (;;) {
        int i = 0;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen && i < KN_POOL_SPIN) {
            cpu_relax();
            i++;
        }
        if (atomic_load_explicit(&p->gen, memory_order_acquire) == seen) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_work, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = atomic_load(&p->gen);
        p->fn(p->ctx, ith, p->n);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

kn_pool *kn_pool_create(int n_threads) {
    if (n_threads < 1)
        n_threads = 1;
    kn_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    if (n_threads > 1) {
        p->th = calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!p->th)
            goto fail;
        for (int i = 1; i < n_threads; i++) {
            kn_pool_arg *a = malloc(sizeof(*a));
            if (!a)
                goto fail;
            a->p = p;
            a->ith = i;
            if (pthread_create(&p->th[i - 1], NULL, pool_main, a)) {
                free(a);
                goto fail;
            }
            p->n_started++;
        }
    }
    return p;
fail:
    kn_pool_destroy(p);
    return NULL;
}

void kn_pool_destroy(kn_pool *p) {
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->th[i], NULL);
    free(p->th);
    pthread_cond_destroy(&p->cv_done);
    pthread_cond_destroy(&p->cv_work);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int kn_pool_size(const kn_pool *p) {
    return p->n;
}

void kn_pool_run(kn_pool *p, kn_pool_fn fn, void *ctx) {
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n);
    for (int i = 0; i < KN_POOL_SPIN && atomic_load_explicit(&p->pending, memory_order_acquire) > 0; i++)
        cpu_relax();
    if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0)
            pthread_cond_wait(&p->cv_done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
