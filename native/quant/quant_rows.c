/* quant_rows.c — the public quantization API (qrt_quant.h): the type table, row sizes, and quantizing or
 * dequantizing whole matrices threaded over rows. Per-type work lives in quant_ref.c. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "qrt.h"
#include "quant_ref.h"
#include "quant_simd.h"
#include "fp_flags.h"
#include "quant_types.h"
#include "size_math.h"
#include "threadpool.h"

const qrt_type_traits qrt_type_table[QRT_TYPE_COUNT] = {
    [QRT_TYPE_F32] = {"F32", 1, 4, 0, qrt_quantize_row_f32, qrt_dequantize_row_f32},
    [QRT_TYPE_F16] = {"F16", 1, 2, 0, qrt_quantize_row_f16, qrt_dequantize_row_f16},
    [QRT_TYPE_BF16] = {"BF16", 1, 2, 0, qrt_quantize_row_bf16, qrt_dequantize_row_bf16},
    [QRT_TYPE_Q4_0] = {"Q4_0", QK4_0, sizeof(block_q4_0), 1, qrt_quantize_row_q4_0, qrt_dequantize_row_q4_0},
    [QRT_TYPE_Q4_1] = {"Q4_1", QK4_1, sizeof(block_q4_1), 1, qrt_quantize_row_q4_1, qrt_dequantize_row_q4_1},
    [QRT_TYPE_Q5_0] = {"Q5_0", QK5_0, sizeof(block_q5_0), 1, qrt_quantize_row_q5_0, qrt_dequantize_row_q5_0},
    [QRT_TYPE_Q5_1] = {"Q5_1", QK5_1, sizeof(block_q5_1), 1, qrt_quantize_row_q5_1, qrt_dequantize_row_q5_1},
    [QRT_TYPE_Q8_0] = {"Q8_0", QK8_0, sizeof(block_q8_0), 1, qrt_quantize_row_q8_0, qrt_dequantize_row_q8_0},
    [QRT_TYPE_Q8_1] = {"Q8_1", QK8_1, sizeof(block_q8_1), 1, qrt_quantize_row_q8_1, qrt_dequantize_row_q8_1},
    [QRT_TYPE_Q2_K] = {"Q2_K", QK_K, sizeof(block_q2_K), 1, qrt_quantize_row_q2_K, qrt_dequantize_row_q2_K},
    [QRT_TYPE_Q3_K] = {"Q3_K", QK_K, sizeof(block_q3_K), 1, qrt_quantize_row_q3_K, qrt_dequantize_row_q3_K},
    [QRT_TYPE_Q4_K] = {"Q4_K", QK_K, sizeof(block_q4_K), 1, qrt_quantize_row_q4_K, qrt_dequantize_row_q4_K},
    [QRT_TYPE_Q5_K] = {"Q5_K", QK_K, sizeof(block_q5_K), 1, qrt_quantize_row_q5_K, qrt_dequantize_row_q5_K},
    [QRT_TYPE_Q6_K] = {"Q6_K", QK_K, sizeof(block_q6_K), 1, qrt_quantize_row_q6_K, qrt_dequantize_row_q6_K},
    [QRT_TYPE_Q8_K] = {"Q8_K", QK_K, sizeof(block_q8_K), 1, qrt_quantize_row_q8_K, qrt_dequantize_row_q8_K},
    [QRT_TYPE_IQ4_NL] = {"IQ4_NL", QK4_NL, sizeof(block_iq4_nl), 1, qrt_quantize_row_iq4_nl,
                         qrt_dequantize_row_iq4_nl},
};

__attribute__((format(printf, 3, 4))) static void set_error(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int qrt_type_info(int type, qrt_type_info_t *out) {
    const qrt_type_traits *t = qrt_traits(type);
    if (!t || !out) return -1;
    out->name = t->name;
    out->block_size = t->block_size;
    out->block_bytes = t->block_bytes;
    out->is_quantized = t->is_quantized;
    /* q8_0 and q8_K are single-pass (as in llama.cpp): more than 6 bits leaves nothing for weights to decide */
    out->takes_importance = t->is_quantized && type != QRT_TYPE_Q8_0 && type != QRT_TYPE_Q8_1 && type != QRT_TYPE_Q8_K;
    return 0;
}

size_t qrt_row_bytes(int type, int64_t n) {
    const qrt_type_traits *t = qrt_traits(type);
    if (!t || n < 0 || n % t->block_size != 0) return 0;
    return qrt_size_mul(qrt_size_from_u64((uint64_t)(n / t->block_size)), (size_t)t->block_bytes);
}

/* Rows per task: big enough to amortise the hand-out, small enough to balance a few threads. */
static int64_t rows_per_task(int64_t nrows, int64_t ncols, int nthreads) {
    const int64_t target_values = 1 << 16; /* ~256 KB of input per task */
    int64_t rows = ncols > 0 ? target_values / ncols : nrows;
    if (rows < 1) rows = 1;
    const int64_t max_rows = (nrows + 4 * (int64_t)nthreads - 1) / (4 * (int64_t)nthreads); /* >= 4 tasks each */
    if (rows > max_rows) rows = max_rows;
    return rows < 1 ? 1 : rows;
}

/* Index of the first NaN/Inf in x, or -1; *amax = the largest |x|. One vector pass (quantizers assume finite
 * input). */
static int64_t scan_row(const float *x, int64_t n, float *amax) {
    const int64_t n8 = n - n % 8;
    v8i bad = {0};
    v8f vmax = v8_splat(0);
    for (int64_t i = 0; i < n8; i += 8) {
        const v8f a = v8_abs(v8_load(x + i));
        bad |= ~(a <= 3.40282347e38f); /* NaN compares false */
        vmax = v8_max(vmax, a);
    }
    int any = 0;
    for (int j = 0; j < 8; j++) any |= bad[j];
    float m = v8_hmax(vmax);
    for (int64_t i = n8; i < n; i++) {
        any |= !isfinite(x[i]);
        if (fabsf(x[i]) > m) m = fabsf(x[i]);
    }
    *amax = m;
    if (!any) return -1;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

/* Beyond fp16's range the scales of every quantized type (and f16 itself) overflow to inf: such rows are
 * dequantized again and rejected if anything came back non-finite, rather than written as inf/NaN. */
#define FP16_MAX 65504.f
/* A search may also place a block's min or scale past the block's own values (Q5_1 stored a min of -inf for values
 * down to -65320), so rows from a sixteenth of that range on are checked the same way; real weights stay far below. */
#define ROUND_TRIP_FROM (FP16_MAX / 16)

enum { BAD_RANGE = -1, BAD_ARITHMETIC = -2 }; /* why a row of finite values was refused (quantize_job.bad_col) */

static int row_round_trips(const qrt_type_traits *t, const void *row, int64_t n) {
    float *back = malloc(sizeof(float) * (size_t)n);
    if (!back) return 0;
    t->dequantize_row(row, back, n);
    int ok = 1;
    for (int64_t i = 0; i < n && ok; i++) ok = isfinite(back[i]);
    free(back);
    return ok;
}

typedef struct {
    const qrt_type_traits *traits;
    const float *src;
    uint8_t *dst;
    const float *importance;
    int64_t nrows, ncols, rows_per_task;
    size_t row_bytes;
    int64_t *bad_row; /* per task: first row that cannot be quantized, or -1 */
    int64_t *bad_col; /* its first non-finite column; BAD_RANGE: its range overflows the type; BAD_ARITHMETIC */
    float *bad_amax;
} quantize_job;

static void quantize_task(void *ctx, int task, int thread) {
    (void)thread;
    quantize_job *job = ctx;
    const int64_t r0 = (int64_t)task * job->rows_per_task;
    int64_t r1 = r0 + job->rows_per_task;
    if (r1 > job->nrows) r1 = job->nrows;
    job->bad_row[task] = -1;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = job->src + r * job->ncols;
        uint8_t *y = job->dst + r * (int64_t)job->row_bytes;
        float amax;
        const int64_t bad = scan_row(x, job->ncols, &amax);
        if (bad >= 0) {
            job->bad_row[task] = r;
            job->bad_col[task] = bad;
            return;
        }
        qrt_fp_flags_clear();
        job->traits->quantize_row(x, y, job->ncols, job->importance);
        const int overflowed = qrt_fp_flags_raised();
        const int out_of_range = amax > ROUND_TRIP_FROM && !row_round_trips(job->traits, y, job->ncols);
        if (out_of_range || overflowed) {
            job->bad_row[task] = r;
            job->bad_col[task] = out_of_range ? BAD_RANGE : BAD_ARITHMETIC;
            job->bad_amax[task] = amax;
            return;
        }
    }
}

int qrt_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t ncols, const float *importance,
                      int nthreads, char *err, size_t errlen) {
    const qrt_type_traits *t = qrt_traits(type);
    if (!t) {
        set_error(err, errlen, "unknown tensor type id %d", type);
        return -1;
    }
    if (nrows < 0 || ncols <= 0 || ncols % t->block_size != 0) {
        set_error(err, errlen, "%s needs rows that are a multiple of %d values, got %lld", t->name, t->block_size,
                  (long long)ncols);
        return -1;
    }
    if (importance) {
        for (int64_t c = 0; c < ncols; c++) {
            if (!isfinite(importance[c]) || importance[c] < 0) {
                set_error(err, errlen, "importance weight %lld is %g (must be finite and >= 0)", (long long)c,
                          (double)importance[c]);
                return -1;
            }
        }
    }
    if (nrows == 0) return 0;
    qrt_threadpool *pool = nthreads != 1 ? qrt_threadpool_create(nthreads) : NULL; /* NULL: run on the caller */
    const int n_threads = qrt_threadpool_size(pool);

    quantize_job job = {.traits = t, .src = src, .dst = dst, .importance = importance, .nrows = nrows,
                        .ncols = ncols, .row_bytes = qrt_row_bytes(type, ncols)};
    job.rows_per_task = rows_per_task(nrows, ncols, n_threads);
    const int64_t n_tasks = (nrows + job.rows_per_task - 1) / job.rows_per_task;
    job.bad_row = malloc(sizeof(int64_t) * 2 * (size_t)n_tasks);
    job.bad_amax = malloc(sizeof(float) * (size_t)n_tasks);
    if (!job.bad_row || !job.bad_amax) {
        free(job.bad_row);
        free(job.bad_amax);
        qrt_threadpool_destroy(pool);
        set_error(err, errlen, "out of memory");
        return -2;
    }
    job.bad_col = job.bad_row + n_tasks;
    qrt_threadpool_run(pool, quantize_task, &job, (int)n_tasks);
    qrt_threadpool_destroy(pool);

    int rc = 0;
    for (int64_t i = 0; i < n_tasks; i++) {
        if (job.bad_row[i] < 0) continue;
        const int64_t r = job.bad_row[i], c = job.bad_col[i];
        if (c >= 0)
            set_error(err, errlen, "row %lld, column %lld holds %g: cannot quantize a non-finite value", (long long)r,
                      (long long)c, (double)src[r * ncols + c]);
        else if (c == BAD_RANGE)
            set_error(err, errlen, "row %lld holds values up to %g, beyond what %s can store (fp16 range)",
                      (long long)r, (double)job.bad_amax[i], t->name);
        else
            set_error(err, errlen,
                      "row %lld (values up to %g%s) makes the %s search compute NaN (its sums overflow)",
                      (long long)r, (double)job.bad_amax[i], importance ? ", weighted by the importance matrix" : "",
                      t->name);
        rc = -3;
        break;
    }
    free(job.bad_row);
    free(job.bad_amax);
    return rc;
}

int qrt_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const qrt_type_traits *t = qrt_traits(type);
    if (!t || n < 0 || n % t->block_size != 0) return -1;
    t->dequantize_row(src, dst, n);
    return 0;
}

typedef struct {
    const qrt_type_traits *traits;
    const uint8_t *src;
    float *dst;
    int64_t nrows, ncols, rows_per_task;
    size_t row_bytes;
} dequantize_job;

static void dequantize_task(void *ctx, int task, int thread) {
    (void)thread;
    dequantize_job *job = ctx;
    const int64_t r0 = (int64_t)task * job->rows_per_task;
    int64_t r1 = r0 + job->rows_per_task;
    if (r1 > job->nrows) r1 = job->nrows;
    for (int64_t r = r0; r < r1; r++)
        job->traits->dequantize_row(job->src + r * (int64_t)job->row_bytes, job->dst + r * job->ncols, job->ncols);
}

int qrt_dequantize_rows(int type, const void *src, float *dst, int64_t nrows, int64_t ncols, int nthreads) {
    const qrt_type_traits *t = qrt_traits(type);
    if (!t || nrows < 0 || ncols <= 0 || ncols % t->block_size != 0) return -1;
    if (nrows == 0) return 0;
    qrt_threadpool *pool = nthreads != 1 ? qrt_threadpool_create(nthreads) : NULL;
    dequantize_job job = {.traits = t, .src = src, .dst = dst, .nrows = nrows, .ncols = ncols,
                          .row_bytes = qrt_row_bytes(type, ncols)};
    job.rows_per_task = rows_per_task(nrows, ncols, qrt_threadpool_size(pool));
    qrt_threadpool_run(pool, dequantize_task, &job, (int)((nrows + job.rows_per_task - 1) / job.rows_per_task));
    qrt_threadpool_destroy(pool);
    return 0;
}
