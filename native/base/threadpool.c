/* threadpool.c — see threadpool.h.
 *
 * One 64-bit atomic word describes the current job: generation (24 bits) | task count (20) | next task (20).
 * Any thread claims a task with a compare-and-swap that bumps `next`; a claim can only succeed while its job
 * is live, and the job cannot finish (so fn/ctx cannot change) before the claimed task is done, so fn/ctx read
 * after a claim are that job's. `run` waits for the *tasks* to finish, never for idle workers to check in:
 * a worker that is descheduled while the caller does all the work costs nothing (the machine may be
 * oversubscribed), and a late worker finds no task to claim and goes back to sleep.
 *
 * The caller's wake-up after the last task goes through the mutex, not through a store on one side and a load on
 * the other: qemu-user runs aarch64's store-release / load-acquire pair (which the C11 seq_cst pair compiles to)
 * without the store->load order the architecture promises, and such a pair once lost that wake-up there (both
 * threads asleep; tests/arm caught it about once in 40 runs). The one store/load pair left, a worker going to
 * sleep against a new job, can at worst leave that worker out of one job: the caller runs every unclaimed task.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
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

/* Spin this many rounds for a task or for the last task to finish before sleeping: bridges the gap between
 * consecutive matmuls of one forward pass without holding a shared core for long. */
enum { SPIN_ROUNDS = 4096 };

#define TASK_BITS 20
#define TASK_MASK ((UINT64_C(1) << TASK_BITS) - 1)
#define MAX_TASKS ((int)TASK_MASK)

struct qrt_threadpool {
    int n_threads;
    pthread_t *workers; /* n_threads - 1 */
    pthread_mutex_t mutex;
    pthread_cond_t wake; /* a new job, or stop */
    pthread_cond_t done; /* the last task of the job finished */
    _Atomic uint64_t work;  /* generation | n_tasks | next task */
    atomic_int finished;    /* tasks of the current job done */
    atomic_int sleepers;    /* workers waiting on `wake` */
    atomic_int stop;
    qrt_task_fn fn;
    void *ctx;
};

typedef struct {
    qrt_threadpool *pool;
    int thread;
} worker_arg;

static int claimable(uint64_t w) { return (w & TASK_MASK) < ((w >> TASK_BITS) & TASK_MASK); }

/* Claim and run tasks until the current job has none left; returns how many this thread ran. */
static int work_on_tasks(qrt_threadpool *pool, int thread) {
    int ran = 0;
    uint64_t w = atomic_load_explicit(&pool->work, memory_order_acquire);
    while (claimable(w)) {
        if (!atomic_compare_exchange_weak_explicit(&pool->work, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* w reloaded: another thread claimed, or a new job began */
        const int n_tasks = (int)((w >> TASK_BITS) & TASK_MASK);
        pool->fn(pool->ctx, (int)(w & TASK_MASK), thread);
        ran++;
        /* The last task's finisher wakes the caller under the mutex (uncontended, no system call unless the caller
         * sleeps); the caller finishing it itself sees its own count. */
        if (atomic_fetch_add(&pool->finished, 1) + 1 == n_tasks && thread != 0) {
            pthread_mutex_lock(&pool->mutex);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mutex);
        }
        w = atomic_load_explicit(&pool->work, memory_order_acquire);
    }
    return ran;
}

static void *worker_main(void *arg_) {
    worker_arg *arg = arg_;
    qrt_threadpool *pool = arg->pool;
    const int thread = arg->thread;
    free(arg);
    for (;;) {
        int spin = 0;
        while (!claimable(atomic_load_explicit(&pool->work, memory_order_acquire)) && spin < SPIN_ROUNDS &&
               !atomic_load_explicit(&pool->stop, memory_order_relaxed)) {
            QRT_CPU_RELAX();
            spin++;
        }
        if (atomic_load(&pool->stop)) return NULL;
        if (!claimable(atomic_load(&pool->work))) {
            pthread_mutex_lock(&pool->mutex);
            atomic_fetch_add(&pool->sleepers, 1);
            atomic_thread_fence(memory_order_seq_cst); /* pairs with run()'s: it sees us sleeping, or we see its job */
            while (!claimable(atomic_load(&pool->work)) && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->mutex);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mutex);
            if (atomic_load(&pool->stop)) return NULL;
        }
        work_on_tasks(pool, thread);
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
    atomic_init(&pool->work, 0);
    atomic_init(&pool->finished, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_init(&pool->stop, 0);
    if (n_threads > 1) {
        pool->workers = calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!pool->workers) {
            pool->n_threads = 1;
            qrt_threadpool_destroy(pool);
            return NULL;
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *arg = malloc(sizeof(*arg));
            if (arg) {
                arg->pool = pool;
                arg->thread = i;
            }
            if (!arg || pthread_create(&pool->workers[i - 1], NULL, worker_main, arg) != 0) {
                free(arg);
                pool->n_threads = i; /* destroy joins the i - 1 workers started so far */
                qrt_threadpool_destroy(pool);
                return NULL;
            }
        }
    }
    return pool;
}

int qrt_threadpool_size(const qrt_threadpool *pool) { return pool ? pool->n_threads : 1; }

void qrt_threadpool_run(qrt_threadpool *pool, qrt_task_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    if (!pool || pool->n_threads == 1 || n_tasks == 1 || n_tasks > MAX_TASKS) {
        for (int task = 0; task < n_tasks; task++) fn(ctx, task, 0);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->finished, 0, memory_order_relaxed);
    const uint64_t generation = ((atomic_load_explicit(&pool->work, memory_order_relaxed) >> (2 * TASK_BITS)) + 1);
    atomic_store(&pool->work, (generation << (2 * TASK_BITS)) | ((uint64_t)n_tasks << TASK_BITS)); /* publishes */
    /* A worker going to sleep now may miss this job (then the caller and any awake worker run it), never a later
     * one: the next run sees its count. The fence keeps that window small under emulators too. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }

    work_on_tasks(pool, 0);

    for (int spin = 0; spin < SPIN_ROUNDS; spin++) {
        if (atomic_load_explicit(&pool->finished, memory_order_acquire) == n_tasks) return;
        QRT_CPU_RELAX();
    }
    pthread_mutex_lock(&pool->mutex);
    while (atomic_load(&pool->finished) != n_tasks) pthread_cond_wait(&pool->done, &pool->mutex);
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
