/* quant_search.c — see quant_search.h. Candidate grids follow llama.cpp's ggml-quants.c (facts: ranges and
 * steps), the code and the refinement passes are ours. */
#include "quant_search.h"

#include "quant_types.h"

enum { REFIT_ROUNDS = 2, DESCENT_ROUNDS = 5 };

/* ---- symmetric: x ~ scale * l, l in [-nmax, nmax - 1] ---- */

/* Weighted sums for levels from one inverse scale; returns sum w*l*l, *sumlx = sum w*x*l. */
static float sym_levels(int n, int nmax, const float *x, const float *w, float iscale, int8_t *l_out, float *sumlx) {
    float slx = 0, sl2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = qrt_clamp_int(qrt_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        l_out[i] = (int8_t)l;
        slx += w[i] * x[i] * l;
        sl2 += w[i] * l * l;
    }
    *sumlx = slx;
    return sl2;
}

float qrt_fit_symmetric(int n, int nmax, const float *x, const float *w, uint8_t *L, int nsteps, float step) {
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
    int8_t best_l[QK_K], cand[QK_K];
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
            memcpy(best_l, cand, (size_t)n);
        }
    }
    /* alternate: round to the fitted scale, refit */
    for (int round = 0; round < REFIT_ROUNDS && best_l2 > 0 && best_lx != 0; round++) {
        float lx, l2 = sym_levels(n, nmax, x, w, best_l2 / best_lx, cand, &lx);
        if (!(l2 > 0 && lx * lx * best_l2 > best_lx * best_lx * l2)) break;
        best_lx = lx;
        best_l2 = l2;
        memcpy(best_l, cand, (size_t)n);
    }
    /* coordinate descent: move one level at a time to its best value under the others' scale */
    for (int round = 0; round < DESCENT_ROUNDS && best_l2 > 0; round++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float wi = w[i];
            float slx = best_lx - wi * x[i] * best_l[i];
            float sl2 = best_l2 - wi * best_l[i] * best_l[i];
            if (!(slx != 0 && sl2 > 0)) continue;
            const int nl = qrt_clamp_int(qrt_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (nl == best_l[i]) continue;
            slx += wi * x[i] * nl;
            sl2 += wi * nl * nl;
            if (sl2 > 0 && slx * slx * best_l2 > best_lx * best_lx * sl2) {
                best_l[i] = (int8_t)nl;
                best_lx = slx;
                best_l2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (uint8_t)(best_l[i] + nmax);
    return best_l2 > 0 ? best_lx / best_l2 : 0.f;
}

/* ---- asymmetric: x ~ scale * L + min, L in [0, nmax] ---- */

static float asym_error(int n, const float *x, const float *w, const uint8_t *L, float scale, float min, int use_mad) {
    float err = 0;
    for (int i = 0; i < n; i++) {
        const float diff = scale * L[i] + min - x[i];
        err += w[i] * (use_mad ? fabsf(diff) : diff * diff);
    }
    return err;
}

/* Least-squares scale and min for fixed levels; 0 if degenerate. */
static int asym_refit(int n, const float *x, const float *w, const uint8_t *L, float sum_w, float sum_x,
                      int allow_positive_min, float *scale, float *min) {
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; i++) {
        const float wl = w[i] * L[i];
        sum_l += wl;
        sum_l2 += wl * L[i];
        sum_xl += wl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (!(D > 0)) return 0;
    float s = (sum_w * sum_xl - sum_x * sum_l) / D;
    float m = (sum_l2 * sum_x - sum_l * sum_xl) / D;
    if (!allow_positive_min && m > 0) {
        m = 0;
        s = sum_xl / sum_l2;
    }
    *scale = s;
    *min = m;
    return 1;
}

static void asym_levels(int n, int nmax, const float *x, float iscale, float min, uint8_t *L) {
    for (int i = 0; i < n; i++) L[i] = (uint8_t)qrt_clamp_int(qrt_nearest_int(iscale * (x[i] - min)), 0, nmax);
}

float qrt_fit_asymmetric(int n, int nmax, const float *x, const float *w, uint8_t *L, float *min_out, float rmin,
                         float rdelta, int nstep, int use_mad, int allow_positive_min) {
    float min = x[0], max = x[0], sum_w = 0, sum_x = 0;
    for (int i = 0; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (!allow_positive_min && min > 0) min = 0;
    if (!(max > min)) {
        memset(L, 0, (size_t)n);
        *min_out = min;
        return 0.f;
    }
    uint8_t cand[QK_K];
    const float range = max - min;
    float scale = range / nmax;
    asym_levels(n, nmax, x, nmax / range, min, L);
    float best = asym_error(n, x, w, L, scale, min, use_mad);
    const float min0 = min;
    for (int k = 0; k <= nstep; k++) {
        const float iscale = (rmin + rdelta * k + nmax) / range;
        asym_levels(n, nmax, x, iscale, min0, cand);
        float s, m;
        if (!asym_refit(n, x, w, cand, sum_w, sum_x, allow_positive_min, &s, &m)) continue;
        const float err = asym_error(n, x, w, cand, s, m, use_mad);
        if (err < best) {
            best = err;
            scale = s;
            min = m;
            memcpy(L, cand, (size_t)n);
        }
    }
    for (int round = 0; round < REFIT_ROUNDS && scale > 0; round++) {
        asym_levels(n, nmax, x, 1.f / scale, min, cand);
        float s, m;
        if (!asym_refit(n, x, w, cand, sum_w, sum_x, allow_positive_min, &s, &m)) break;
        const float err = asym_error(n, x, w, cand, s, m, use_mad);
        if (!(err < best)) break;
        best = err;
        scale = s;
        min = m;
        memcpy(L, cand, (size_t)n);
    }
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
    for (int round = 0; round < DESCENT_ROUNDS; round++) {
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

static float grid_sums(int n, const float *x, const float *w, float id, uint8_t *L, float *sumqx) {
    float sqx = 0, sq2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = qrt_nearest_grid_index(16, qrt_kvalues_iq4nl, id * x[i]);
        const float q = qrt_kvalues_iq4nl[l];
        L[i] = (uint8_t)l;
        sqx += w[i] * q * x[i];
        sq2 += w[i] * q * q;
    }
    *sumqx = sqx;
    return sq2;
}

float qrt_fit_iq4nl(int n, const float *x, const float *w, uint8_t *L, int ntry) {
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
