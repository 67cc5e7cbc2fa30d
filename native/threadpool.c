/* threadpool.c — see threadpool.h. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QRT_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define QRT_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define QRT_CPU_RELAX() ((void)0)
#endif

/* Spin this many rounds for a new job or for the last task before sleeping: long enough to bridge the gap
 * between consecutive matmuls of one forward pass, short enough not to steal a shared core for long. */
enum { SPIN_ROUNDS = 1 << 14 };

struct qrt_threadpool {
    int n_threads;
    pthread_t *workers; /* n_threads - 1 */
    pthread_mutex_t mutex;
    pthread_cond_t wake;      /* a new generation (job) or stop */
    pthread_cond_t done;      /* pending reached 0 */
    atomic_uint generation;   /* bumped once per run */
    atomic_int next_task;     /* next task index to hand out */
    atomic_int pending;       /* workers that have not finished the current job */
    atomic_int stop;
    qrt_task_fn fn;
    void *ctx;
    int n_tasks;
};

typedef struct {
    qrt_threadpool *pool;
    int thread;
} worker_arg;

static void work_on_tasks(qrt_threadpool *pool, int thread) {
    const int n_tasks = pool->n_tasks;
    for (;;) {
        const int task = atomic_fetch_add_explicit(&pool->next_task, 1, memory_order_relaxed);
        if (task >= n_tasks) return;
        pool->fn(pool->ctx, task, thread);
    }
}

static void *worker_main(void *arg_) {
    worker_arg *arg = arg_;
    qrt_threadpool *pool = arg->pool;
    const int thread = arg->thread;
    free(arg);
    unsigned seen = 0;
    for (;;) {
        unsigned gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        for (int spin = 0; gen == seen && spin < SPIN_ROUNDS && !atomic_load(&pool->stop); spin++) {
            QRT_CPU_RELAX();
            gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool->mutex);
            while ((gen = atomic_load(&pool->generation)) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->mutex);
            pthread_mutex_unlock(&pool->mutex);
        }
        if (atomic_load(&pool->stop)) return NULL;
        seen = gen;
        work_on_tasks(pool, thread);
        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->mutex);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mutex);
        }
    }
}

qrt_threadpool *qrt_threadpool_create(int n_threads) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    qrt_threadpool *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->next_task, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->stop, 0);
    if (n_threads > 1) {
        pool->workers = calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!pool->workers) goto fail;
        for (int i = 1; i < n_threads; i++) {
            worker_arg *arg = malloc(sizeof(*arg));
            if (!arg) goto fail_threads;
            arg->pool = pool;
            arg->thread = i;
            if (pthread_create(&pool->workers[i - 1], NULL, worker_main, arg) != 0) {
                free(arg);
                goto fail_threads;
            }
            continue;
        fail_threads:
            pool->n_threads = i; /* destroy joins the i - 1 workers started so far */
            qrt_threadpool_destroy(pool);
            return NULL;
        }
    }
    return pool;
fail:
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool);
    return NULL;
}

int qrt_threadpool_size(const qrt_threadpool *pool) { return pool ? pool->n_threads : 1; }

void qrt_threadpool_run(qrt_threadpool *pool, qrt_task_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    if (!pool || pool->n_threads == 1 || n_tasks == 1) {
        for (int task = 0; task < n_tasks; task++) fn(ctx, task, 0);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_tasks = n_tasks;
    atomic_store_explicit(&pool->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->pending, pool->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release); /* publishes fn/ctx/n_tasks */
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);

    work_on_tasks(pool, 0);

    for (int spin = 0; spin < SPIN_ROUNDS; spin++) {
        if (atomic_load_explicit(&pool->pending, memory_order_acquire) == 0) return;
        QRT_CPU_RELAX();
    }
    pthread_mutex_lock(&pool->mutex);
    while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0) pthread_cond_wait(&pool->done, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
}

void qrt_threadpool_destroy(qrt_threadpool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->workers[i - 1], NULL);
    free(pool->workers);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool);
}
