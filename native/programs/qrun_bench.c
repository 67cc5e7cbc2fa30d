/* qrun_bench.c — qrun-bench: prompt and generation speed of libqrt, measured the way llama-bench measures
 * llama.cpp, so the two compare C with C.
 *
 *   qrun-bench MODEL.gguf [-p 62,512] [-n 32] [-d 0,1024] [-t 1,2] [-r 3] [--no-warmup] [--json]
 *
 * Tests, as llama-bench names them: ppN evaluates N prompt tokens in one eval call; tgN evaluates N tokens one
 * at a time (decode, no sampling); "@dD" first fills the KV cache with D tokens, untimed. Tokens are drawn at
 * random from the vocabulary (llama-bench does the same), the context is D + N, and each test runs once untimed
 * then -r times timed (--no-warmup: only the timed runs, as llama-bench's flag; tests/bench/arm.py counts the
 * instructions of whole runs); the figure is the median tokens per second. Each row also gives the serial share: the
 * fraction of eval time in which only the calling thread worked (outside thread-pool runs).
 *
 *   qrun-bench --read-bandwidth BYTES [-t 2] [-r 7] [--json]
 *
 * measures instead the limit decoding is compared with (tests/bench/run.py): a streaming read of one BYTES buffer
 * by each -t thread count, each thread summing its part, the best of -r runs, in bytes per second. It is C for the
 * same reason the rest is: a reduction in Python or NumPy can run slower than memory and understate the limit.
 */
#include <pthread.h>
#include <sys/mman.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qrt.h"

#define MAX_VALUES 16

typedef struct {
    int values[MAX_VALUES];
    int n;
} int_list;

typedef struct {
    const char *model;
    int_list prompt, gen, depth, threads;
    int repeats, json, no_warmup;
} options;

static int fail(const char *msg, const char *arg) {
    fprintf(stderr, "qrun-bench: error: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    return 1;
}

/* "1,2,4" -> {1, 2, 4}; 0 on a malformed list or a value outside [lo, hi]. */
static int parse_list(const char *text, int_list *out, int lo, int hi) {
    out->n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        const long v = strtol(p, &end, 10);
        if (end == p || v < lo || v > hi || out->n == MAX_VALUES) return 0;
        out->values[out->n++] = (int)v;
        if (*end == ',') end++;
        else if (*end) return 0;
        p = end;
    }
    return out->n > 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint32_t next_random(uint64_t *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*state >> 33);
}

/* One timed run of a test: seconds spent in the timed evals, and of those, in pool runs. */
static int run_once(qrt_model *m, int n_prompt, int n_gen, int depth, int32_t *tokens, double *seconds,
                    double *pool_seconds) {
    const int n_vocab = qrt_model_n_vocab(m);
    uint64_t rng = 1234;
    for (int i = 0; i < depth + n_prompt + n_gen; i++) tokens[i] = (int32_t)(next_random(&rng) % (uint32_t)n_vocab);
    qrt_model_set_n_past(m, 0);
    if (depth > 0 && qrt_model_eval(m, tokens, depth, NULL) != 0) return -1;
    qrt_model_reset_timings(m);
    const double t0 = now_s();
    if (n_prompt > 0 && qrt_model_eval(m, tokens + depth, n_prompt, NULL) != 0) return -1;
    for (int i = 0; i < n_gen; i++)
        if (qrt_model_eval(m, tokens + depth + i, 1, NULL) != 0) return -1;
    *seconds = now_s() - t0;
    *pool_seconds = qrt_model_pool_seconds(m);
    return 0;
}

static int bench(const options *o, int threads, int n_prompt, int n_gen, int depth) {
    static int rows_printed;
    qrt_model_params params = qrt_model_default_params();
    params.n_threads = threads;
    params.n_ctx = depth + n_prompt + n_gen;
    char err[512];
    qrt_model *m = qrt_model_open(o->model, &params, err, sizeof err);
    if (!m) return fail(err, NULL);
    int32_t *tokens = malloc(sizeof *tokens * (size_t)params.n_ctx);
    double *rates = malloc(sizeof *rates * (size_t)o->repeats), serial = 0;
    int rc = tokens && rates ? 0 : -1;
    for (int r = o->no_warmup ? 0 : -1; rc == 0 && r < o->repeats; r++) { /* r = -1: the untimed warm-up */
        double seconds, pool_seconds;
        rc = run_once(m, n_prompt, n_gen, depth, tokens, &seconds, &pool_seconds);
        if (rc == 0 && r >= 0) {
            rates[r] = (n_prompt + n_gen) / seconds;
            serial += (1.0 - pool_seconds / seconds) / o->repeats;
        }
    }
    if (rc != 0) {
        fail(qrt_model_error(m), NULL);
    } else {
        qsort(rates, (size_t)o->repeats, sizeof *rates, compare_doubles);
        const double median = o->repeats % 2 ? rates[o->repeats / 2]
                                             : 0.5 * (rates[o->repeats / 2 - 1] + rates[o->repeats / 2]);
        char test[64];
        snprintf(test, sizeof test, n_prompt ? "pp%d" : "tg%d", n_prompt ? n_prompt : n_gen);
        if (depth) snprintf(test + strlen(test), sizeof test - strlen(test), " @ d%d", depth);
        if (o->json)
            printf("%s{\"test\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, \"n_depth\": %d, \"threads\": %d, "
                   "\"tokens_per_second\": %.3f, \"serial_share\": %.4f}",
                   rows_printed++ ? ",\n" : "", test, n_prompt, n_gen, depth, threads, median, serial);
        else
            printf("| %-14s | %7d | %12.2f | %11.1f%% |\n", test, threads, median, 100.0 * serial);
        fflush(stdout);
    }
    free(tokens);
    free(rates);
    qrt_model_free(m);
    return rc == 0 ? 0 : 1;
}

/* ---- --read-bandwidth ---- */

typedef struct {
    const uint64_t *words;
    size_t n;
    uint64_t sum; /* kept, so the reads are not optimised away */
} read_part;

static void *read_part_run(void *arg) {
    read_part *r = arg;
    uint64_t s[8] = {0}; /* eight independent sums: the loop vectorises and never waits on an add */
    for (size_t i = 0; i + 8 <= r->n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += r->words[i + k];
    r->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    return NULL;
}

static int read_bandwidth(size_t bytes, const int_list *threads, int repeats, int json) {
    const size_t huge = (size_t)2 << 20, n = bytes / huge * huge / sizeof(uint64_t);
    uint64_t *words = n ? aligned_alloc(huge, n * sizeof *words) : NULL;
    if (!words) return fail("cannot allocate the --read-bandwidth buffer", NULL);
#ifdef MADV_HUGEPAGE
    madvise(words, n * sizeof *words, MADV_HUGEPAGE); /* as libqrt's weights (model.c): a read in 4 KiB pages pays
                                                       * a page walk per 4 KiB, a large share of it in a VM */
#endif
    for (size_t i = 0; i < n; i++) words[i] = i; /* touched: no page faults in the timed reads */
    if (json) printf("[\n");
    int rc = 0;
    for (int t = 0; t < threads->n && rc == 0; t++) {
        const int nt = threads->values[t];
        pthread_t *ids = malloc((size_t)nt * sizeof *ids);
        read_part *parts = malloc((size_t)nt * sizeof *parts);
        if (!ids || !parts) rc = fail("out of memory", NULL);
        double best = 0.0;
        uint64_t check = 0;
        for (int r = 0; r < repeats && rc == 0; r++) {
            const double t0 = now_s();
            for (int k = 0; k < nt && rc == 0; k++) {
                parts[k] = (read_part){words + n / (size_t)nt * (size_t)k, n / (size_t)nt, 0};
                if (pthread_create(&ids[k], NULL, read_part_run, &parts[k]) != 0) rc = fail("pthread_create failed", NULL);
            }
            for (int k = 0; k < nt && rc == 0; k++) pthread_join(ids[k], NULL), check += parts[k].sum;
            const double rate = (double)(n / (size_t)nt * (size_t)nt * sizeof *words) / (now_s() - t0);
            if (rate > best) best = rate;
        }
        if (rc == 0 && json)
            printf("%s  {\"test\": \"read\", \"threads\": %d, \"bytes\": %zu, \"bytes_per_second\": %.6g, \"check\": %llu}",
                   t ? ",\n" : "", nt, n * sizeof *words, best, (unsigned long long)check);
        else if (rc == 0)
            printf("read %zu bytes, %d threads: %.2f GB/s\n", n * sizeof *words, nt, best / 1e9);
        free(ids), free(parts);
    }
    if (json && rc == 0) printf("\n]\n");
    free(words);
    return rc;
}

int main(int argc, char **argv) {
    options o = {.repeats = 3};
    long long read_bytes = 0;
    parse_list("62,512", &o.prompt, 0, 1 << 20);
    parse_list("32", &o.gen, 0, 1 << 20);
    parse_list("0", &o.depth, 0, 1 << 24);
    parse_list("2", &o.threads, 1, 1024);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf("usage: qrun-bench MODEL.gguf [-p 62,512] [-n 32] [-d 0,1024] [-t 1,2] [-r 3] [--no-warmup] "
                   "[--json]\n       qrun-bench --read-bandwidth BYTES [-t 2] [-r 7] [--json]\n");
            return 0;
        } else if (strcmp(a, "--json") == 0) o.json = 1;
        else if (strcmp(a, "--no-warmup") == 0) o.no_warmup = 1;
        else if (strcmp(a, "-p") == 0 && v) ok = parse_list(argv[++i], &o.prompt, 0, 1 << 20);
        else if (strcmp(a, "-n") == 0 && v) ok = parse_list(argv[++i], &o.gen, 0, 1 << 20);
        else if (strcmp(a, "-d") == 0 && v) ok = parse_list(argv[++i], &o.depth, 0, 1 << 24);
        else if (strcmp(a, "-t") == 0 && v) ok = parse_list(argv[++i], &o.threads, 1, 1024);
        else if (strcmp(a, "-r") == 0 && v) o.repeats = atoi(argv[++i]);
        else if (strcmp(a, "--read-bandwidth") == 0 && v) ok = (read_bytes = atoll(argv[++i])) > 0;
        else if (a[0] != '-' && !o.model) o.model = a;
        else return fail("unknown or incomplete argument", a);
        if (!ok) return fail("bad list of numbers for", a);
    }
    if (o.repeats < 1 || o.repeats > 1000) return fail("-r must be 1..1000", NULL);
    if (read_bytes) return read_bandwidth((size_t)read_bytes, &o.threads, o.repeats, o.json) == 0 ? 0 : 1;
    if (!o.model) return fail("no model given (qrun-bench MODEL.gguf ...)", NULL);
    if (o.json) printf("[\n");
    else printf("| test           | threads |        tok/s | serial share |\n|---|---|---|---|\n");
    int rc = 0;
    for (int t = 0; t < o.threads.n; t++)
        for (int d = 0; d < o.depth.n; d++) {
            const int threads = o.threads.values[t], depth = o.depth.values[d];
            for (int p = 0; p < o.prompt.n && rc == 0; p++)
                if (o.prompt.values[p] > 0) rc = bench(&o, threads, o.prompt.values[p], 0, depth);
            for (int g = 0; g < o.gen.n && rc == 0; g++)
                if (o.gen.values[g] > 0) rc = bench(&o, threads, 0, o.gen.values[g], depth);
        }
    if (o.json) printf("\n]\n");
    return rc;
}
