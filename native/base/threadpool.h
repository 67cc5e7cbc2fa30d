/* threadpool.h — a small persistent pthread pool: run n_tasks calls of one function, return when all are done.
 *
 * The calling thread works too, so a pool of n threads starts n - 1 workers; a pool of 1 (or NULL) runs
 * everything on the caller with no synchronisation. Tasks are claimed one at a time from a shared counter
 * (dynamic balancing), and `run` returns when every task has finished; a worker never touches fn/ctx outside
 * a task it claimed. Workers spin briefly for the next job (matmul-sized jobs come back to back), then sleep
 * on a condition variable, so an idle pool costs nothing. One `run` at a time per pool (not reentrant, not for
 * concurrent callers); at most 2^20 - 1 tasks per run (more run on the caller alone).
 */
#ifndef QRT_THREADPOOL_H
#define QRT_THREADPOOL_H

typedef struct qrt_threadpool qrt_threadpool;

/* task: 0..n_tasks-1; thread: 0..n_threads-1 (0 is the caller), for per-thread scratch buffers. */
typedef void (*qrt_task_fn)(void *ctx, int task, int thread);

/* n_threads <= 0 means the number of online CPUs. NULL if threads cannot be created. */
qrt_threadpool *qrt_threadpool_create(int n_threads);
int qrt_threadpool_size(const qrt_threadpool *pool);
void qrt_threadpool_run(qrt_threadpool *pool, qrt_task_fn fn, void *ctx, int n_tasks);
void qrt_threadpool_destroy(qrt_threadpool *pool);

#endif
