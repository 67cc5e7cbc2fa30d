/* quant_blockwise.c — see qrt_blockwise.h: the importance-weighted scale (and zero point) search for ONNX's
 * block-wise DequantizeLinear, for any block size.
 *
 * For fixed integer levels l the best scale is the weighted least-squares one, sum(w x l) / sum(w l^2), and the
 * error left is sum(w x^2) - sum(w x l)^2 / sum(w l^2): a search only has to maximise F = sum(w x l)^2 /
 * sum(w l^2) over the level vectors it tries. Candidates come from a grid of inverse scales (0.1 of a level
 * apart at 4 bits, llama.cpp's q4_0 step, over a wider range), both orientations of the block's largest value in
 * the signed case, and three zero points per scale in the asymmetric case; the best is refined by alternating
 * refits (round at the fitted scale) and coordinate descent over single levels, each step kept only when F
 * grows. Sums run in 8 lanes added in a fixed order, so results are deterministic and the loops vectorize.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp_flags.h"
#include "qrt.h"
#include "threadpool.h"

enum { MAX_BLOCK = 256, LANES = 8, GRID_BELOW = 16, GRID_ABOVE = 16, REFIT_ROUNDS = 4, DESCENT_ROUNDS = 8 };

/* Candidate inverse scales are spaced (number of levels) / GRID_DIVISIONS apart: 0.1 levels at 4 bits. */
static const float GRID_DIVISIONS = 160.f;

/* Blocks whose largest magnitude is below this are stored as zeros (ggml's GROUP_MAX_EPS). */
static const float BLOCK_MAX_EPS = 1e-15f;

__attribute__((format(printf, 3, 4))) static void set_error(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Round to nearest, ties to even, in float arithmetic (exact for |v| < 2^22); keeps the loops vectorizable. */
static inline float round_to_int(float v) { return (v + 12582912.f) - 12582912.f; }

static inline float clampf(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

static inline double score(double lx, double l2) { return l2 > 0 ? lx * lx / l2 : 0.0; }

/* Levels round(iscale * x) clamped to [lo, hi]; returns F and the sums sum(w x l), sum(w l^2). n: multiple of 8. */
static double levels_for(int n, const float *x, const float *w, float iscale, float lo, float hi, float *l,
                         double *lx_out, double *l2_out) {
    float lx[LANES] = {0}, l2[LANES] = {0};
    for (int i0 = 0; i0 < n; i0 += LANES) {
        for (int j = 0; j < LANES; j++) {
            const float level = round_to_int(clampf(iscale * x[i0 + j], lo, hi));
            l[i0 + j] = level;
            const float wl = w[i0 + j] * level;
            lx[j] += wl * x[i0 + j];
            l2[j] += wl * level;
        }
    }
    double slx = 0, sl2 = 0;
    for (int j = 0; j < LANES; j++) {
        slx += lx[j];
        sl2 += l2[j];
    }
    *lx_out = slx;
    *l2_out = sl2;
    return score(slx, sl2);
}

/* Improve levels l (within [lo, hi]) whose F is *best: refit rounds, then coordinate descent. */
static void refine(int n, const float *x, const float *w, float lo, float hi, float *l, double *best) {
    float cand[MAX_BLOCK];
    double lx = 0, l2 = 0;
    for (int i = 0; i < n; i++) {
        lx += (double)w[i] * x[i] * l[i];
        l2 += (double)w[i] * l[i] * l[i];
    }
    *best = score(lx, l2);
    for (int round = 0; round < REFIT_ROUNDS && l2 > 0 && lx != 0; round++) {
        double clx, cl2;
        const double f = levels_for(n, x, w, (float)(l2 / lx), lo, hi, cand, &clx, &cl2);
        if (!(f > *best)) break;
        *best = f;
        lx = clx;
        l2 = cl2;
        memcpy(l, cand, sizeof(float) * (size_t)n);
    }
    for (int round = 0; round < DESCENT_ROUNDS; round++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            if (w[i] == 0) continue;
            const double rest_lx = lx - (double)w[i] * x[i] * l[i];
            const double rest_l2 = l2 - (double)w[i] * l[i] * l[i];
            if (!(rest_l2 > 0) || rest_lx == 0) continue;
            const float nl = round_to_int(clampf((float)(x[i] * rest_l2 / rest_lx), lo, hi));
            if (nl == l[i]) continue;
            const double nlx = rest_lx + (double)w[i] * x[i] * nl;
            const double nl2 = rest_l2 + (double)w[i] * nl * nl;
            const double f = score(nlx, nl2);
            if (f > *best) {
                *best = f;
                lx = nlx;
                l2 = nl2;
                l[i] = nl;
                changed++;
            }
        }
        if (!changed) break;
    }
}

static float ls_scale(int n, const float *x, const float *w, const float *l) {
    double lx = 0, l2 = 0;
    for (int i = 0; i < n; i++) {
        lx += (double)w[i] * x[i] * l[i];
        l2 += (double)w[i] * l[i] * l[i];
    }
    return l2 > 0 ? (float)(lx / l2) : 0.f;
}

/* Signed levels [lo, hi] = [-2^(bits-1), 2^(bits-1) - 1], zero point 0. Returns the scale. */
static float fit_symmetric(int n, int bits, const float *x, const float *w, float *l) {
    const float lo = (float)-(1 << (bits - 1)), hi = (float)((1 << (bits - 1)) - 1);
    float extreme = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            extreme = x[i];
        }
    }
    if (amax < BLOCK_MAX_EPS) {
        memset(l, 0, sizeof(float) * (size_t)n);
        return 0.f;
    }
    const float step = (hi - lo + 1) / GRID_DIVISIONS;
    float cand[MAX_BLOCK];
    double best = -1;
    memset(l, 0, sizeof(float) * (size_t)n); /* kept if every score is NaN (weights overflowed): FP flags refuse it */
    /* the extreme value lands near lo (a negative scale when it is positive) or near hi */
    const float targets[2] = {lo, hi};
    for (int t = 0; t < 2; t++) {
        const float sign = targets[t] < 0 ? -1.f : 1.f;
        for (int k = -GRID_BELOW; k <= GRID_ABOVE; k++) {
            const float iscale = sign * (fabsf(targets[t]) + step * (float)k) / extreme;
            double lx, l2;
            const double f = levels_for(n, x, w, iscale, lo, hi, cand, &lx, &l2);
            if (f > best) {
                best = f;
                memcpy(l, cand, sizeof(float) * (size_t)n);
            }
        }
    }
    refine(n, x, w, lo, hi, l, &best);
    return ls_scale(n, x, w, l);
}

/* Unsigned levels q in [0, qmax] with an integer zero point z: l = q - z in [-z, qmax - z]. Returns the scale. */
static float fit_asymmetric(int n, int bits, const float *x, const float *w, float *l, int *zero_point) {
    const int qmax = (1 << bits) - 1;
    float min = 0, max = 0; /* 0 is always representable (z is an integer in range), so the range includes it */
    for (int i = 0; i < n; i++) {
        min = x[i] < min ? x[i] : min;
        max = x[i] > max ? x[i] : max;
    }
    if (max - min < BLOCK_MAX_EPS) {
        memset(l, 0, sizeof(float) * (size_t)n);
        *zero_point = 0;
        return 0.f;
    }
    const float step = (float)(qmax + 1) / GRID_DIVISIONS;
    float cand[MAX_BLOCK];
    double best = -1;
    int best_z = 0;
    memset(l, 0, sizeof(float) * (size_t)n); /* kept if every score is NaN (weights overflowed): FP flags refuse it */
    for (int k = -GRID_BELOW; k <= GRID_ABOVE; k++) {
        const float iscale = ((float)qmax + step * (float)k) / (max - min);
        const int z0 = (int)round_to_int(-min * iscale);
        for (int z = z0 - 1; z <= z0 + 1; z++) {
            if (z < 0 || z > qmax) continue;
            double lx, l2;
            const double f = levels_for(n, x, w, iscale, (float)-z, (float)(qmax - z), cand, &lx, &l2);
            if (f > best) {
                best = f;
                best_z = z;
                memcpy(l, cand, sizeof(float) * (size_t)n);
            }
        }
    }
    refine(n, x, w, (float)-best_z, (float)(qmax - best_z), l, &best);
    *zero_point = best_z;
    return ls_scale(n, x, w, l);
}

typedef struct {
    const float *src, *importance;
    int64_t nrows, ncols, rows_per_task;
    int block_size, bits, symmetric;
    uint8_t *q;
    float *scales;
    uint8_t *zero_points;
    int64_t *bad_row, *bad_col; /* per task: first non-finite value, or -1 */
} blockwise_job;

/* 0, or -1 when a block's dequantized values scale * (q - zero point) leave float32 (a block spanning nearly all of
 * it has no scale that fits: no NaN shows it, so it is checked here). */
static int quantize_row(const blockwise_job *job, int64_t r) {
    const int64_t ncols = job->ncols, n_blocks = (ncols + job->block_size - 1) / job->block_size;
    const float *x = job->src + r * ncols;
    float sigma2 = 0;
    if (job->importance) {
        double sum = 0;
        for (int64_t c = 0; c < ncols; c++) sum += (double)x[c] * x[c];
        sigma2 = (float)(sum / (double)ncols);
    }
    float xb[MAX_BLOCK], wb[MAX_BLOCK], l[MAX_BLOCK];
    for (int64_t b = 0; b < n_blocks; b++) {
        const int64_t c0 = b * job->block_size;
        const int n = (int)(c0 + job->block_size <= ncols ? job->block_size : ncols - c0);
        const int padded = (n + LANES - 1) / LANES * LANES; /* a short last block is padded with weight 0 */
        for (int i = 0; i < padded; i++) {
            xb[i] = i < n ? x[c0 + i] : 0.f;
            wb[i] = i >= n ? 0.f : job->importance ? job->importance[c0 + i] * sqrtf(sigma2 + xb[i] * xb[i]) : 1.f;
        }
        int z = 0;
        const float scale = job->symmetric ? fit_symmetric(padded, job->bits, xb, wb, l)
                                           : fit_asymmetric(padded, job->bits, xb, wb, l, &z);
        for (int i = 0; i < n; i++)
            if (!isfinite(scale * l[i])) return -1;
        job->scales[r * n_blocks + b] = scale;
        if (job->zero_points) job->zero_points[r * n_blocks + b] = (uint8_t)z;
        uint8_t *q = job->q + r * ncols + c0;
        for (int i = 0; i < n; i++) q[i] = (uint8_t)(int8_t)((int)l[i] + z);
    }
    return 0;
}

static void quantize_task(void *ctx, int task, int thread) {
    (void)thread;
    blockwise_job *job = ctx;
    const int64_t r0 = (int64_t)task * job->rows_per_task;
    const int64_t r1 = r0 + job->rows_per_task < job->nrows ? r0 + job->rows_per_task : job->nrows;
    job->bad_row[task] = -1;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = job->src + r * job->ncols;
        for (int64_t c = 0; c < job->ncols; c++) {
            if (!isfinite(x[c])) {
                job->bad_row[task] = r;
                job->bad_col[task] = c;
                return;
            }
        }
        qrt_fp_flags_clear();
        if (quantize_row(job, r) != 0 || qrt_fp_flags_raised()) {
            job->bad_row[task] = r;
            job->bad_col[task] = -1; /* finite values whose search overflowed */
            return;
        }
    }
}

int qrt_quantize_blockwise(const float *src, int64_t nrows, int64_t ncols, int block_size, int bits, int symmetric,
                           const float *importance, void *q, float *scales, uint8_t *zero_points, int nthreads,
                           char *err, size_t errlen) {
    if (bits != 4 && bits != 8) {
        set_error(err, errlen, "bits must be 4 or 8, got %d", bits);
        return -1;
    }
    if (block_size < LANES || block_size > MAX_BLOCK || block_size % LANES) {
        set_error(err, errlen, "block size must be a multiple of %d from %d to %d, got %d", LANES, LANES, MAX_BLOCK,
                  block_size);
        return -1;
    }
    if (nrows < 0 || ncols <= 0) {
        set_error(err, errlen, "bad matrix shape %lld x %lld", (long long)nrows, (long long)ncols);
        return -1;
    }
    if (!symmetric && !zero_points) {
        set_error(err, errlen, "asymmetric quantization needs a zero point buffer");
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
    blockwise_job job = {.src = src, .importance = importance, .nrows = nrows, .ncols = ncols,
                         .block_size = block_size, .bits = bits, .symmetric = symmetric, .q = q, .scales = scales,
                         .zero_points = symmetric ? NULL : zero_points};
    /* a few tasks per thread for balance; rows are independent, so the result does not depend on the split */
    int64_t rows = (nrows + 4 * (int64_t)n_threads - 1) / (4 * (int64_t)n_threads);
    job.rows_per_task = rows < 1 ? 1 : rows;
    const int64_t n_tasks = (nrows + job.rows_per_task - 1) / job.rows_per_task;
    job.bad_row = malloc(sizeof(int64_t) * 2 * (size_t)n_tasks);
    if (!job.bad_row) {
        if (pool) qrt_threadpool_destroy(pool);
        set_error(err, errlen, "out of memory");
        return -2;
    }
    job.bad_col = job.bad_row + n_tasks;
    if (pool) {
        qrt_threadpool_run(pool, quantize_task, &job, (int)n_tasks);
        qrt_threadpool_destroy(pool);
    } else {
        for (int64_t t = 0; t < n_tasks; t++) quantize_task(&job, (int)t, 0);
    }
    int rc = 0;
    for (int64_t t = 0; t < n_tasks; t++) {
        if (job.bad_row[t] >= 0 && job.bad_col[t] < 0) {
            set_error(err, errlen,
                      "row %lld overflows float32 in the block search (a NaN sum or a dequantized value%s)",
                      (long long)job.bad_row[t], importance ? "; values and importance weights too large" : "");
            rc = -3;
            break;
        }
        if (job.bad_row[t] >= 0) {
            set_error(err, errlen, "value at row %lld, column %lld is %g", (long long)job.bad_row[t],
                      (long long)job.bad_col[t], (double)src[job.bad_row[t] * ncols + job.bad_col[t]]);
            rc = -3;
            break;
        }
    }
    free(job.bad_row);
    return rc;
}

double qrt_blockwise_row_error(const float *x, int64_t ncols, int block_size, int symmetric, const void *q,
                               const float *scales, const uint8_t *zero_points, const float *importance) {
    const uint8_t *qb = q;
    double sigma2 = 0, err = 0;
    if (importance) {
        for (int64_t c = 0; c < ncols; c++) sigma2 += (double)x[c] * x[c];
        sigma2 /= (double)ncols;
    }
    for (int64_t c = 0; c < ncols; c++) {
        const int64_t b = c / block_size;
        const int level = symmetric ? (int)(int8_t)qb[c] : (int)qb[c] - (int)zero_points[b];
        const double d = (double)x[c] - (double)(scales[b] * (float)level);
        const double w = importance ? importance[c] * sqrt(sigma2 + (double)x[c] * x[c]) : 1.0;
        err += w * d * d;
    }
    return err;
}
