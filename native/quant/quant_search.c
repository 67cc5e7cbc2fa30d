/* quant_search.c — see quant_search.h. Candidate grids follow llama.cpp's ggml-quants.c (facts: ranges and
 * steps), the code and the refinement passes are ours. */
#include "quant_search.h"

#include <pthread.h>

#include "quant_simd.h"
#include "quant_types.h"

enum { REFIT_ROUNDS = 2, QP_DESCENT_ROUNDS = 5 };

/* ---- symmetric: x ~ scale * l, l in [-nmax, nmax - 1] ---- */

/* Levels for one inverse scale and their weighted sums (n a multiple of 8); returns sum w*l*l and
 * *sumlx = sum w*x*l. */
/* always_inline: inlined into the candidate loop, its splats and setup are hoisted out of it (measured 2x) */
static inline __attribute__((always_inline)) float sym_levels(int n, int nmax, const float *x, const float *w,
                                                             float iscale, float *l_out, float *sumlx) {
    v8f lx = {0}, l2 = {0};
    for (int i = 0; i < n; i += 8) {
        const v8f xv = v8_load(x + i);
        const v8f l = v8_round(v8_clamp(xv * iscale, (float)-nmax, (float)(nmax - 1)));
        v8_store(l_out + i, l);
        const v8f wl = v8_load(w + i) * l;
        lx += wl * xv;
        l2 += wl * l;
    }
    *sumlx = v8_sum(lx);
    return v8_sum(l2);
}

float qrt_fit_symmetric(int n, int nmax, const float *x, const float *w, uint8_t *L, int nsteps, float step,
                        int descent_rounds) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < QRT_GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++) L[i] = (uint8_t)nmax;
        return 0.f;
    }
    float best_l[QK_K], cand[QK_K];
    float sumlx, suml2 = sym_levels(n, nmax, x, w, -nmax / max, best_l, &sumlx);
    /* maximising sumlx^2 / suml2 is minimising the weighted error at the least-squares scale sumlx / suml2 */
    float best_lx = sumlx, best_l2 = suml2;
    for (int k = -nsteps; k <= nsteps; k++) {
        if (k == 0) continue;
        const float iscale = -(nmax + step * k) / max;
        float lx, l2 = sym_levels(n, nmax, x, w, iscale, cand, &lx);
        if (l2 > 0 && lx * lx * best_l2 > best_lx * best_lx * l2) {
            best_lx = lx;
            best_l2 = l2;
            memcpy(best_l, cand, sizeof(float) * (size_t)n);
        }
    }
    /* coordinate descent: move one level at a time to its best value under the others' scale */
    for (int round = 0; round < descent_rounds && best_l2 > 0; round++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float wi = w[i];
            float slx = best_lx - wi * x[i] * best_l[i];
            float sl2 = best_l2 - wi * best_l[i] * best_l[i];
            if (!(slx != 0 && sl2 > 0)) continue;
            const float nl = (float)qrt_clamp_int(qrt_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (nl == best_l[i]) continue;
            slx += wi * x[i] * nl;
            sl2 += wi * nl * nl;
            if (sl2 > 0 && slx * slx * best_l2 > best_lx * best_lx * sl2) {
                best_l[i] = nl;
                best_lx = slx;
                best_l2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (uint8_t)((int)best_l[i] + nmax);
    return best_l2 > 0 ? best_lx / best_l2 : 0.f;
}

/* ---- asymmetric: x ~ scale * L + min, L in [0, nmax] ---- */

/* Weighted sums of one group that do not depend on the levels. */
typedef struct {
    float w, x, x2;
} group_sums;

/* Weighted sums over the levels of one candidate. */
typedef struct {
    float l, l2, xl;
} level_sums;

static float asym_mad(int n, const float *x, const float *w, const float *L, float scale, float min) {
    float err = 0;
    for (int i = 0; i < n; i++) err += w[i] * fabsf(scale * L[i] + min - x[i]);
    return err;
}

/* Squared error from the sums alone: sum w (s*l + m - x)^2, expanded (one pass per candidate, not two). */
static float asym_sq_error(group_sums g, level_sums ls, float s, float m) {
    return s * s * ls.l2 + 2 * s * m * ls.l - 2 * s * ls.xl + m * m * g.w - 2 * m * g.x + g.x2;
}

static inline __attribute__((always_inline)) level_sums asym_levels(int n, int nmax, const float *x, const float *w,
                                                                    float iscale, float min, float *L) {
    v8f sl = {0}, sl2 = {0}, sxl = {0};
    for (int i = 0; i < n; i += 8) {
        const v8f xv = v8_load(x + i);
        const v8f l = v8_round(v8_clamp((xv - min) * iscale, 0.f, (float)nmax));
        v8_store(L + i, l);
        const v8f wl = v8_load(w + i) * l;
        sl += wl;
        sl2 += wl * l;
        sxl += wl * xv;
    }
    return (level_sums){v8_sum(sl), v8_sum(sl2), v8_sum(sxl)};
}

/* Least-squares scale and min for fixed levels; 0 if degenerate. */
static int asym_refit(group_sums g, level_sums ls, int allow_positive_min, float *scale, float *min) {
    const float D = g.w * ls.l2 - ls.l * ls.l;
    if (!(D > 0)) return 0;
    float s = (g.w * ls.xl - g.x * ls.l) / D;
    float m = (ls.l2 * g.x - ls.l * ls.xl) / D;
    if (!allow_positive_min && m > 0) {
        m = 0;
        s = ls.xl / ls.l2;
    }
    *scale = s;
    *min = m;
    return 1;
}

float qrt_fit_asymmetric(int n, int nmax, const float *x, const float *w, uint8_t *L, float *min_out, float rmin,
                         float rdelta, int nstep, int use_mad, int allow_positive_min) {
    float min = x[0], max = x[0];
    group_sums g = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        g.w += w[i];
        g.x += w[i] * x[i];
        g.x2 += w[i] * x[i] * x[i];
    }
    if (!allow_positive_min && min > 0) min = 0;
    /* a range this small (subnormal noise) would make nmax / (max - min) infinite and 0 * inf a NaN level:
     * stored as the constant min, which is exact to within the range */
    if (!(max - min >= QRT_GROUP_MAX_EPS)) {
        memset(L, 0, (size_t)n);
        *min_out = min;
        return 0.f;
    }
    float best_l[QK_K], cand[QK_K];
    float scale = (max - min) / nmax;
    level_sums ls = asym_levels(n, nmax, x, w, nmax / (max - min), min, best_l);
    float best = use_mad ? asym_mad(n, x, w, best_l, scale, min) : asym_sq_error(g, ls, scale, min);
    for (int k = 0; k <= nstep + REFIT_ROUNDS; k++) {
        /* as llama.cpp: each candidate starts from the best min so far, so the grid follows the fit; the last
         * REFIT_ROUNDS candidates round to the best fit itself */
        float iscale;
        if (k <= nstep) {
            if (!(max > min)) break;
            iscale = (rmin + rdelta * k + nmax) / (max - min);
        } else {
            if (!(scale > 0)) break;
            iscale = 1.f / scale;
        }
        ls = asym_levels(n, nmax, x, w, iscale, min, cand);
        float s, m;
        if (!asym_refit(g, ls, allow_positive_min, &s, &m)) continue;
        const float err = use_mad ? asym_mad(n, x, w, cand, s, m) : asym_sq_error(g, ls, s, m);
        if (err < best) {
            best = err;
            scale = s;
            min = m;
            memcpy(best_l, cand, sizeof(float) * (size_t)n);
        } else if (k > nstep) {
            break;
        }
    }
    for (int i = 0; i < n; i++) L[i] = (uint8_t)best_l[i];
    *min_out = min;
    return scale;
}

/* ---- non-negative values on 0..nmax (sub-block scales and mins of the k-quants) ---- */

float qrt_fit_positive(int n, int nmax, const float *x, const float *w, uint8_t *L) {
    float max = 0;
    for (int i = 0; i < n; i++)
        if (x[i] > max) max = x[i];
    if (max < QRT_GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    float best = 0;
    for (int i = 0; i < n; i++) {
        const int l = qrt_clamp_int(qrt_nearest_int(iscale * x[i]), 0, nmax);
        const float diff = x[i] - l / iscale;
        best += w[i] * diff * diff;
    }
    for (int k = -4; k <= 4; k++) {
        if (k == 0) continue;
        const float iscale_k = (0.1f * k + nmax) / max;
        const float scale_k = 1 / iscale_k;
        float mse = 0;
        for (int i = 0; i < n; i++) {
            const int l = qrt_clamp_int(qrt_nearest_int(iscale_k * x[i]), 0, nmax);
            const float diff = x[i] - scale_k * l;
            mse += w[i] * diff * diff;
        }
        if (mse < best) {
            best = mse;
            iscale = iscale_k;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = qrt_clamp_int(qrt_nearest_int(iscale * x[i]), 0, nmax);
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    for (int round = 0; round < QP_DESCENT_ROUNDS; round++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * L[i];
            float sl2 = suml2 - w[i] * L[i] * L[i];
            if (!(slx > 0 && sl2 > 0)) continue;
            const int nl = qrt_clamp_int(qrt_nearest_int(x[i] * sl2 / slx), 0, nmax);
            if (nl == L[i]) continue;
            slx += w[i] * x[i] * nl;
            sl2 += w[i] * nl * nl;
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = (uint8_t)nl;
                sumlx = slx;
                suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    return suml2 > 0 ? sumlx / suml2 : 0.f;
}

/* ---- iq4_nl: the non-uniform grid ---- */

int qrt_nearest_grid_index(int n, const int8_t *grid, float x) {
    if (x <= grid[0]) return 0;
    if (x >= grid[n - 1]) return n - 1;
    int lo = 0, hi = n - 1;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (x < grid[mid])
            hi = mid;
        else
            lo = mid;
    }
    return x - grid[hi - 1] < grid[hi] - x ? hi - 1 : hi;
}

/* Nearest-index table over half-units: every midpoint between neighbouring grid values is a multiple of 0.5,
 * so within [h/2, (h+1)/2) the nearest grid value does not change (a tie at h/2 goes up, as the search does).
 * Entry h + 256 covers v in [h/2, (h+1)/2) for v in [-128, 128). Built once, before any thread runs. */
static uint8_t iq4nl_index_of_half[512];
static pthread_once_t iq4nl_table_once = PTHREAD_ONCE_INIT;

static void build_iq4nl_table(void) {
    for (int h = -256; h < 256; h++)
        iq4nl_index_of_half[h + 256] = (uint8_t)qrt_nearest_grid_index(16, qrt_kvalues_iq4nl, 0.5f * (float)h);
}

static inline int iq4nl_nearest(float v) {
    v = v >= -128.f ? v : -128.f; /* written so that NaN clamps too: (int)NaN would index far outside the table */
    v = v <= 127.75f ? v : 127.75f;
    const float v2 = 2.f * v; /* exact */
    int h = (int)v2;          /* truncation; floor below */
    h -= (float)h > v2;
    return iq4nl_index_of_half[h + 256];
}

static float grid_sums(int n, const float *x, const float *w, float id, uint8_t *L, float *sumqx) {
    v8f sqx = {0}, sq2 = {0};
    for (int i = 0; i < n; i += 8) {
        v8f q;
        for (int j = 0; j < 8; j++) {
            const int l = iq4nl_nearest(id * x[i + j]);
            L[i + j] = (uint8_t)l;
            q[j] = qrt_kvalues_iq4nl[l];
        }
        const v8f wq = v8_load(w + i) * q;
        sqx += wq * v8_load(x + i);
        sq2 += wq * q;
    }
    *sumqx = v8_sum(sqx);
    return v8_sum(sq2);
}

float qrt_fit_iq4nl(int n, const float *x, const float *w, uint8_t *L, int ntry) {
    pthread_once(&iq4nl_table_once, build_iq4nl_table);
    const int8_t *values = qrt_kvalues_iq4nl;
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < QRT_GROUP_MAX_EPS) {
        memset(L, 8, (size_t)n); /* grid value 1: closest to zero */
        return 0.f;
    }
    uint8_t cand[QK_K];
    /* first candidate maps the extreme value past the far end of the grid, the loop tries the near end */
    float best_qx, best_q2 = grid_sums(n, x, w, -values[0] / max, L, &best_qx);
    for (int k = -ntry; k <= ntry; k++) {
        float qx, q2 = grid_sums(n, x, w, (k + values[0]) / max, cand, &qx);
        if (q2 > 0 && qx * qx * best_q2 > best_qx * best_qx * q2) {
            best_qx = qx;
            best_q2 = q2;
            memcpy(L, cand, (size_t)n);
        }
    }
    for (int round = 0; round < REFIT_ROUNDS && best_q2 > 0 && best_qx != 0; round++) {
        float qx, q2 = grid_sums(n, x, w, best_q2 / best_qx, cand, &qx);
        if (!(q2 > 0 && qx * qx * best_q2 > best_qx * best_qx * q2)) break;
        best_qx = qx;
        best_q2 = q2;
        memcpy(L, cand, (size_t)n);
    }
    return best_q2 > 0 ? best_qx / best_q2 : 0.f;
}
