/* logit_stats.c — per-position statistics of a reference and a quantized model's logits (qrt_eval.h): KL
 * divergence, both argmaxes, both next-token NLLs, threaded over rows, AVX-512 where the CPU has it.
 *
 * Numerics. The exponentials are float (vectorised), the sums double. KL is computed in a form whose terms are all
 * non-negative, so float-precision weights cost only float relative precision in the result, however small the
 * divergence: with p ~ exp(r), q ~ exp(q_logits) and d_i = r_i - q_i (exact in double),
 *     KL(p || q) = E_p[d] + log E_p[exp(-d)]                  (any constant shift of d cancels)
 *                = log E_p[exp(-v)],  v = d - E_p[d]
 *                = log1p(E_p[g(v)]),  g(v) = exp(-v) - 1 + v >= 0   (E_p[v] = 0),
 * where g comes from its Taylor series for |v| < 1 (no cancellation) and from exp otherwise. Subtracting the two
 * log-sum-exps directly would leave the divergence (1e-4 for a good quantization) as the difference of two O(1)
 * numbers, each carrying the float exponentials' error (1e-7): 1e-3 relative. NLLs are log-sum-exp minus the
 * logit, in double. The weights p_i are exp(r_i - max r) in float (~1 ulp): the result is the exact KL of
 * distributions within ~1e-7 relative of the true ones, which the tests check against float64 numpy at 1e-6.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels.h"
#include "qrt.h"
#include "select.h"

/* sums of one row, shared by the scalar and the vector passes */
typedef struct {
    float max_r, max_q;
    int32_t arg_r, arg_q;
    double sum_er;  /* sum exp(r - max_r) */
    double sum_eq;  /* sum exp(q - max_q) */
    double sum_erd; /* sum exp(r - max_r) * (r - q) */
    double sum_erg; /* sum exp(r - max_r) * g(r - q - mean) */
} row_sums;

/* g(v) / v^2 = sum_k (-v)^k / (k + 2)! for |v| < 1; 12 terms leave < 2e-10 relative */
static const float G_SERIES[12] = {
    1.0f / 2,         -1.0f / 6,          1.0f / 24,          -1.0f / 120,          1.0f / 720,         -1.0f / 5040,
    1.0f / 40320,     -1.0f / 362880,     1.0f / 3628800,     -1.0f / 39916800,     1.0f / 479001600,   -1.0f / 6227020800.0f,
};

static inline float g_scalar(float v) {
    if (fabsf(v) < 1.0f) {
        float h = G_SERIES[11];
        for (int k = 10; k >= 0; k--) h = fmaf(h, v, G_SERIES[k]);
        return v * v * h;
    }
    return (expf(-v) - 1.0f) + v;
}

/* the passes over values i0..n of a row (the vector code leaves its tail to these) */
static void max_scalar(const float *r, const float *q, int64_t i0, int64_t n, row_sums *s) {
    for (int64_t i = i0; i < n; i++) {
        if (r[i] > s->max_r) s->max_r = r[i], s->arg_r = (int32_t)i;
        if (q[i] > s->max_q) s->max_q = q[i], s->arg_q = (int32_t)i;
    }
}

static void sums_scalar(const float *r, const float *q, int64_t i0, int64_t n, row_sums *s) {
    for (int64_t i = i0; i < n; i++) {
        const double er = expf(r[i] - s->max_r);
        s->sum_er += er;
        s->sum_eq += expf(q[i] - s->max_q);
        s->sum_erd += er * ((double)r[i] - (double)q[i]);
    }
}

static void g_pass_scalar(const float *r, const float *q, int64_t i0, int64_t n, double mean, row_sums *s) {
    for (int64_t i = i0; i < n; i++) {
        const float v = (float)((double)r[i] - (double)q[i] - mean);
        s->sum_erg += (double)(expf(r[i] - s->max_r) * g_scalar(v));
    }
}

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#include <immintrin.h>

#include "expf_avx512.h"


static inline __m512d lo_pd(__m512 x) { return _mm512_cvtps_pd(_mm512_castps512_ps256(x)); }
static inline __m512d hi_pd(__m512 x) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1)); }

static int32_t first_equal(const float *x, int64_t n, float value) {
    const __m512 want = _mm512_set1_ps(value);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), want, _CMP_EQ_OQ);
        if (m) return (int32_t)(i + __builtin_ctz(m));
    }
    for (; i < n; i++)
        if (x[i] == value) return (int32_t)i;
    return 0;
}

static void row_avx512(const float *r, const float *q, int64_t n, row_sums *s) {
    const int64_t nv = n & ~(int64_t)15;
    __m512 mr = _mm512_set1_ps(-INFINITY), mq = mr;
    for (int64_t i = 0; i < nv; i += 16) {
        mr = _mm512_max_ps(mr, _mm512_loadu_ps(r + i));
        mq = _mm512_max_ps(mq, _mm512_loadu_ps(q + i));
    }
    s->max_r = _mm512_reduce_max_ps(mr);
    s->max_q = _mm512_reduce_max_ps(mq);
    s->arg_r = nv ? first_equal(r, nv, s->max_r) : 0;
    s->arg_q = nv ? first_equal(q, nv, s->max_q) : 0;
    max_scalar(r, q, nv, n, s); /* the tail: later indices only win when strictly larger */

    const __m512 vmr = _mm512_set1_ps(s->max_r), vmq = _mm512_set1_ps(s->max_q);
    __m512d er0 = _mm512_setzero_pd(), er1 = er0, eq0 = er0, eq1 = er0, erd0 = er0, erd1 = er0;
    for (int64_t i = 0; i < nv; i += 16) {
        const __m512 x = _mm512_loadu_ps(r + i), y = _mm512_loadu_ps(q + i);
        const __m512 er = qrt_v_expf(_mm512_sub_ps(x, vmr)), eq = qrt_v_expf(_mm512_sub_ps(y, vmq));
        const __m512d erl = lo_pd(er), erh = hi_pd(er);
        er0 = _mm512_add_pd(er0, erl);
        er1 = _mm512_add_pd(er1, erh);
        eq0 = _mm512_add_pd(eq0, lo_pd(eq));
        eq1 = _mm512_add_pd(eq1, hi_pd(eq));
        erd0 = _mm512_fmadd_pd(erl, _mm512_sub_pd(lo_pd(x), lo_pd(y)), erd0);
        erd1 = _mm512_fmadd_pd(erh, _mm512_sub_pd(hi_pd(x), hi_pd(y)), erd1);
    }
    s->sum_er = _mm512_reduce_add_pd(_mm512_add_pd(er0, er1));
    s->sum_eq = _mm512_reduce_add_pd(_mm512_add_pd(eq0, eq1));
    s->sum_erd = _mm512_reduce_add_pd(_mm512_add_pd(erd0, erd1));
    sums_scalar(r, q, nv, n, s);

    const double mean = s->sum_erd / s->sum_er;
    const __m512d vmean = _mm512_set1_pd(mean);
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512d erg0 = _mm512_setzero_pd(), erg1 = erg0;
    for (int64_t i = 0; i < nv; i += 16) {
        const __m512 x = _mm512_loadu_ps(r + i), y = _mm512_loadu_ps(q + i);
        const __m256 vl = _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_sub_pd(lo_pd(x), lo_pd(y)), vmean));
        const __m256 vh = _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_sub_pd(hi_pd(x), hi_pd(y)), vmean));
        const __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512(vl), vh, 1);
        __m512 h = _mm512_set1_ps(G_SERIES[11]);
        for (int k = 10; k >= 0; k--) h = _mm512_fmadd_ps(h, v, _mm512_set1_ps(G_SERIES[k]));
        __m512 g = _mm512_mul_ps(_mm512_mul_ps(v, v), h);
        const __mmask16 big = _mm512_cmp_ps_mask(_mm512_abs_ps(v), one, _CMP_GE_OQ);
        if (big) {
            const __m512 direct = _mm512_add_ps(_mm512_sub_ps(qrt_v_expf(_mm512_sub_ps(_mm512_setzero_ps(), v)), one), v);
            g = _mm512_mask_blend_ps(big, g, direct);
        }
        const __m512 w = _mm512_mul_ps(qrt_v_expf(_mm512_sub_ps(x, vmr)), g);
        erg0 = _mm512_add_pd(erg0, lo_pd(w));
        erg1 = _mm512_add_pd(erg1, hi_pd(w));
    }
    s->sum_erg = _mm512_reduce_add_pd(_mm512_add_pd(erg0, erg1));
    g_pass_scalar(r, q, nv, n, mean, s);
}
#pragma GCC pop_options
#endif

static void row_scalar(const float *r, const float *q, int64_t n, row_sums *s) {
    s->max_r = s->max_q = -INFINITY;
    s->arg_r = s->arg_q = 0;
    max_scalar(r, q, 0, n, s);
    s->sum_er = s->sum_eq = s->sum_erd = s->sum_erg = 0.0;
    sums_scalar(r, q, 0, n, s);
    g_pass_scalar(r, q, 0, n, s->sum_erd / s->sum_er, s);
}

typedef struct {
    const float *ref, *quant;
    int64_t n_vocab, row0, row1;
    const int32_t *next;
    double *kld, *nll_ref, *nll_quant;
    int32_t *argmax_ref, *argmax_quant;
    int vector;
} stats_job;

static void *run_rows(void *arg) {
    const stats_job *j = arg;
    for (int64_t i = j->row0; i < j->row1; i++) {
        const float *r = j->ref + i * j->n_vocab, *q = j->quant + i * j->n_vocab;
        row_sums s = {0};
#if defined(__x86_64__)
        if (j->vector) row_avx512(r, q, j->n_vocab, &s);
        else
#endif
            row_scalar(r, q, j->n_vocab, &s);
        if (j->kld) j->kld[i] = log1p(s.sum_erg / s.sum_er);
        if (j->argmax_ref) j->argmax_ref[i] = s.arg_r;
        if (j->argmax_quant) j->argmax_quant[i] = s.arg_q;
        const int32_t t = j->next ? j->next[i] : -1;
        if (j->nll_ref) j->nll_ref[i] = t >= 0 ? (double)s.max_r + log(s.sum_er) - (double)r[t] : NAN;
        if (j->nll_quant) j->nll_quant[i] = t >= 0 ? (double)s.max_q + log(s.sum_eq) - (double)q[t] : NAN;
    }
    return NULL;
}

#define MAX_THREADS 64

int qrt_logit_stats(const float *ref, const float *quant, int64_t n_rows, int64_t n_vocab, const int32_t *next_tokens,
                    int n_threads, double *kld, int32_t *argmax_ref, int32_t *argmax_quant, double *nll_ref,
                    double *nll_quant) {
    if (n_vocab <= 0 || n_vocab > INT32_MAX || n_rows < 0) return -1;
    if (n_rows == 0) return 0;
    if (!ref || !quant) return -1;
    if (next_tokens)
        for (int64_t i = 0; i < n_rows; i++)
            if (next_tokens[i] >= n_vocab) return -1;
    if (n_threads <= 0) n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
    if (n_threads > n_rows) n_threads = (int)n_rows;
    /* the vector path wants AVX-512 F/DQ only; the kernel table's avx512 variant (which also needs VNNI) is the
     * choice this file shares with the rest of the runtime, and QRT_KERNEL=scalar forces the scalar path here too */
    const unsigned scalar_or_avx512 = QRT_VARIANT_BIT(QRT_VARIANT_SCALAR) | QRT_VARIANT_BIT(QRT_VARIANT_AVX512);
    const int vector = qrt_pick_variant(scalar_or_avx512) == QRT_VARIANT_AVX512;
    stats_job jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started = 0, failed = 0;
    for (int k = 0; k < n_threads; k++) {
        jobs[k] = (stats_job){ref, quant, n_vocab, n_rows * k / n_threads, n_rows * (k + 1) / n_threads, next_tokens,
                              kld, nll_ref, nll_quant, argmax_ref, argmax_quant, vector};
        if (k == 0) continue; /* the calling thread takes the first share */
        if (pthread_create(&threads[k], NULL, run_rows, &jobs[k]) != 0) {
            failed = 1;
            break;
        }
        started = k;
    }
    if (!failed) run_rows(&jobs[0]);
    for (int k = 1; k <= started; k++) pthread_join(threads[k], NULL);
    return failed ? -1 : 0;
}
