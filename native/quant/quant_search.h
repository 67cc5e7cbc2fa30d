/* quant_search.h — importance-weighted scale/min search for the block quantizers (internal).
 *
 * Each fit chooses integer levels L and a scale (and for asymmetric types a min) minimising
 * sum_i w[i] * (x[i] - (scale * L[i] + min))^2 over one group. The candidate grids are those of llama.cpp's
 * make_qx_quants / make_qkx2_quants / make_qkx3_quants / make_qp_quants (so we never search less), followed
 * by refinements kept only when they lower the weighted error: coordinate descent for the symmetric fits,
 * rounding to the fitted scale and refitting for the asymmetric ones. Candidate loops run on 8-float vectors
 * (quant_simd.h) and need n to be a multiple of 8.
 */
#ifndef QRT_QUANT_SEARCH_H
#define QRT_QUANT_SEARCH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Groups whose largest |x| is below this are stored as zeros (ggml's GROUP_MAX_EPS). */
#define QRT_GROUP_MAX_EPS 1e-15f

/* Round to nearest, ties to even (the same as ggml's nearest_int); saturates far outside any level range so
 * that huge ratios (an outlier over a tiny scale) cannot overflow. */
static inline int qrt_nearest_int(float v) {
    v = v > 4194303.f ? 4194303.f : v; /* ternaries compile to minss/maxss: branch-free */
    v = v < -4194303.f ? -4194303.f : v;
    float biased = v + 12582912.f;
    int32_t i;
    memcpy(&i, &biased, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static inline int qrt_clamp_int(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Symmetric levels l in [-nmax, nmax-1], x ~ scale * l; L[i] = l + nmax. Candidate inverse scales
 * -(nmax + step * k) / max for k in -nsteps..nsteps (max: the value of largest magnitude), as make_qx_quants;
 * then up to descent_rounds passes of coordinate descent (make_q3_quants: each level moved to its best value
 * under the least-squares scale of the others, kept when the error drops). Returns scale. */
float qrt_fit_symmetric(int n, int nmax, const float *x, const float *w, uint8_t *L, int nsteps, float step,
                        int descent_rounds);

/* Asymmetric levels L in [0, nmax], x ~ scale * L + min with min <= 0 unless allow_positive_min. Candidate
 * inverse scales (nmax + rmin + rdelta * k) / (max - min) for k in 0..nstep. use_mad: judge candidates by
 * weighted absolute error (q2_K reference path) instead of squared. Returns scale, *min_out = min. */
float qrt_fit_asymmetric(int n, int nmax, const float *x, const float *w, uint8_t *L, float *min_out, float rmin,
                         float rdelta, int nstep, int use_mad, int allow_positive_min);

/* Non-negative values (sub-block scales or mins) on levels 0..nmax: x ~ scale * L. llama.cpp's make_qp_quants
 * search. Returns scale. */
float qrt_fit_positive(int n, int nmax, const float *x, const float *w, uint8_t *L);

/* iq4_nl: one block of 32 on the non-uniform grid qrt_kvalues_iq4nl; returns the scale, L the grid indices. */
float qrt_fit_iq4nl(int n, const float *x, const float *w, uint8_t *L, int ntry);

/* Index of the grid value nearest x on a sorted int8 grid of n values. */
int qrt_nearest_grid_index(int n, const int8_t *grid, float x);

#endif
