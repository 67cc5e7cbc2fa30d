/* quant_ref.c — scalar quantize/dequantize for every block type: these are the product's quantizers.
 *
 * Layouts and the default weightings are llama.cpp's (ggml-quants.c); the searches are in quant_search.c.
 * The importance vector, when given, holds one weight per column of the row (E[x^2] of the activations that
 * multiply it). As in llama.cpp it is combined with the value itself, w = imp * sqrt(sigma2 + x^2), for every
 * type but q6_K (which uses it directly). Every quantizer finishes by re-rounding the levels against the scales
 * exactly as they are stored (fp16, 6-bit sub-scales), which can only lower the error.
 *
 * Dequantizers compute in the same order as gguf-py's numpy code (e.g. (d * sc) * q - dmin * m), so both give
 * bit-identical floats; -std=c11 keeps GCC from contracting these into FMAs.
 */
#include "quant_ref.h"

#include <math.h>
#include <string.h>

#include "quant_search.h"
#include "quant_simd.h"
#include "quant_types.h"

/* ---------------------------------------------------------------- plain floats */

void qrt_quantize_row_f32(const float *x, void *y, int64_t n, const float *importance) {
    (void)importance;
    memcpy(y, x, (size_t)n * sizeof(float));
}

void qrt_dequantize_row_f32(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

void qrt_quantize_row_f16(const float *x, void *y, int64_t n, const float *importance) {
    (void)importance;
    qrt_half *h = y;
    for (int64_t i = 0; i < n; i++) h[i] = qrt_fp32_to_fp16(x[i]);
}

void qrt_dequantize_row_f16(const void *x, float *y, int64_t n) {
    const qrt_half *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = qrt_fp16_to_fp32(h[i]);
}

void qrt_quantize_row_bf16(const float *x, void *y, int64_t n, const float *importance) {
    (void)importance;
    qrt_bf16 *h = y;
    for (int64_t i = 0; i < n; i++) h[i] = qrt_fp32_to_bf16(x[i]);
}

void qrt_dequantize_row_bf16(const void *x, float *y, int64_t n) {
    const qrt_bf16 *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = qrt_bf16_to_fp32(h[i]);
}

/* ---------------------------------------------------------------- shared helpers */

static float sum_squares(const float *x, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}

/* A group whose columns all have zero importance (never activated during calibration) would otherwise get no
 * say at all and collapse to zero; it is weighted as if its importance were uniform instead. */
static int all_zero(int n, const float *imp) {
    for (int i = 0; i < n; i++)
        if (imp[i] != 0) return 0;
    return 1;
}

/* w = imp * sqrt(sigma2 + x^2): llama.cpp's combination of importance and magnitude. */
static void importance_weights(int n, const float *x, const float *imp, float sigma2, float *w) {
    const int uniform = all_zero(n, imp);
    for (int i = 0; i < n; i++) w[i] = (uniform ? 1.f : imp[i]) * sqrtf(sigma2 + x[i] * x[i]);
}

static void square_weights(int n, const float *x, float *w) {
    for (int i = 0; i < n; i++) w[i] = x[i] * x[i];
}

static void unit_weights(int n, float *w) {
    for (int i = 0; i < n; i++) w[i] = 1.f;
}

static float sum_of(int n, const float *w) {
    float s = 0;
    for (int i = 0; i < n; i++) s += w[i];
    return s;
}

/* Nibble packing shared by q4_0, q4_1, q5_0, q5_1 and iq4_nl: byte j holds element j (low) and j + 16 (high). */
static void pack_nibbles32(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((L[j] & 15) | ((L[j + 16] & 15) << 4));
}

static void pack_high_bits32(const uint8_t *L, uint8_t qh_bytes[4]) {
    uint32_t qh = 0;
    for (int j = 0; j < 32; j++) qh |= (uint32_t)((L[j] >> 4) & 1) << j;
    qh_bytes[0] = (uint8_t)qh;
    qh_bytes[1] = (uint8_t)(qh >> 8);
    qh_bytes[2] = (uint8_t)(qh >> 16);
    qh_bytes[3] = (uint8_t)(qh >> 24);
}

static uint32_t load_u32(const uint8_t b[4]) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* ---------------------------------------------------------------- q8_0, q8_1 (single pass, as llama.cpp) */

void qrt_quantize_row_q8_0(const float *x, void *vy, int64_t n, const float *importance) {
    (void)importance;
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        v8f amax = v8_splat(0);
        for (int j = 0; j < QK8_0; j += 8) amax = v8_max(amax, v8_abs(v8_load(x + j)));
        const float d = v8_hmax(amax) / 127;
        float id = d ? 1.0f / d : 0.0f;
        if (id > 3.40282347e38f) id = 0; /* d subnormal: d stores as 0 anyway, and x * inf is no level */
        y[b].d = qrt_fp32_to_fp16(d);
        /* roundf(x * id), as llama.cpp and gguf-py: the blocks are byte-identical to theirs */
        for (int j = 0; j < QK8_0; j += 8) {
            const v8i q = v8_roundf_to_int(v8_load(x + j) * id);
            for (int k = 0; k < 8; k++) y[b].qs[j + k] = (int8_t)q[k];
        }
    }
}

void qrt_dequantize_row_q8_0(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t b = 0; b < n / QK8_0; b++, y += QK8_0) {
        const float d = qrt_fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK8_0; j++) y[j] = (float)x[b].qs[j] * d;
    }
}

void qrt_quantize_row_q8_1(const float *x, void *vy, int64_t n, const float *importance) {
    (void)importance;
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / QK8_1; b++, x += QK8_1) {
        float amax = 0;
        for (int j = 0; j < QK8_1; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127;
        float id = d ? 1.0f / d : 0.0f;
        if (id > 3.40282347e38f) id = 0; /* d subnormal, as in q8_0: (int8_t)roundf(x * inf) is undefined */
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[b].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[b].qs[j];
        }
        y[b].d = qrt_fp32_to_fp16(d);
        y[b].s = qrt_fp32_to_fp16((float)sum * d);
    }
}

void qrt_dequantize_row_q8_1(const void *vx, float *y, int64_t n) {
    const block_q8_1 *x = vx;
    for (int64_t b = 0; b < n / QK8_1; b++, y += QK8_1) {
        const float d = qrt_fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK8_1; j++) y[j] = (float)x[b].qs[j] * d;
    }
}

/* ---------------------------------------------------------------- q4_0, q5_0: x = d * (q - nmax) */

/* Without importance llama.cpp takes d from the largest magnitude; we minimise the plain squared error, whose
 * search starts from that same candidate. With importance, sigma2 is the row's mean square (llama.cpp). */
static void quantize_block_symmetric32(const float *x, int nmax, const float *imp, float sigma2, uint8_t *L,
                                       qrt_half *d_out) {
    float w[32];
    if (imp)
        importance_weights(32, x, imp, sigma2, w);
    else
        unit_weights(32, w);
    const float d = qrt_fit_symmetric(32, nmax, x, w, L, 9, 0.1f, 5);
    *d_out = qrt_fp32_to_fp16(d);
    const float d16 = qrt_fp16_to_fp32(*d_out);
    if (d16 != 0) {
        const float id = 1.f / d16;
        for (int j = 0; j < 32; j++)
            L[j] = (uint8_t)(qrt_clamp_int(qrt_nearest_int(x[j] * id), -nmax, nmax - 1) + nmax);
    }
}

void qrt_quantize_row_q4_0(const float *x, void *vy, int64_t n, const float *importance) {
    block_q4_0 *y = vy;
    const float sigma2 = importance ? sum_squares(x, n) / (float)n : 0;
    uint8_t L[32];
    for (int64_t b = 0; b < n / QK4_0; b++) {
        quantize_block_symmetric32(x + 32 * b, 8, importance ? importance + 32 * b : NULL, sigma2, L, &y[b].d);
        pack_nibbles32(L, y[b].qs);
    }
}

void qrt_dequantize_row_q4_0(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
        const float d = qrt_fp16_to_fp32(x[b].d);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((x[b].qs[j] & 15) - 8);
            y[j + 16] = d * (float)((x[b].qs[j] >> 4) - 8);
        }
    }
}

void qrt_quantize_row_q5_0(const float *x, void *vy, int64_t n, const float *importance) {
    block_q5_0 *y = vy;
    const float sigma2 = importance ? sum_squares(x, n) / (float)n : 0;
    uint8_t L[32];
    for (int64_t b = 0; b < n / QK5_0; b++) {
        quantize_block_symmetric32(x + 32 * b, 16, importance ? importance + 32 * b : NULL, sigma2, L, &y[b].d);
        pack_nibbles32(L, y[b].qs);
        pack_high_bits32(L, y[b].qh);
    }
}

void qrt_dequantize_row_q5_0(const void *vx, float *y, int64_t n) {
    const block_q5_0 *x = vx;
    for (int64_t b = 0; b < n / QK5_0; b++, y += QK5_0) {
        const float d = qrt_fp16_to_fp32(x[b].d);
        const uint32_t qh = load_u32(x[b].qh);
        for (int j = 0; j < 16; j++) {
            const int q0 = (x[b].qs[j] & 15) | (int)((qh >> j) & 1) << 4;
            const int q1 = (x[b].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (float)(q0 - 16);
            y[j + 16] = d * (float)(q1 - 16);
        }
    }
}

/* ---------------------------------------------------------------- q4_1, q5_1: x = d * q + m */

/* The stored min is any fp16, so unlike llama.cpp's search (which pins min <= 0) a block of positive values
 * may keep a positive min; without importance the start is llama.cpp's (min, (max - min) / nmax). */
static void quantize_block_asymmetric32(const float *x, int nmax, const float *imp, float sigma2, uint8_t *L,
                                        qrt_half *d_out, qrt_half *m_out) {
    float w[32], min;
    if (imp)
        importance_weights(32, x, imp, sigma2, w);
    else
        unit_weights(32, w);
    const float d = qrt_fit_asymmetric(32, nmax, x, w, L, &min, -0.9f, 0.05f, 36, 0, 1);
    *d_out = qrt_fp32_to_fp16(d);
    *m_out = qrt_fp32_to_fp16(min);
    const float d16 = qrt_fp16_to_fp32(*d_out), m16 = qrt_fp16_to_fp32(*m_out);
    if (d16 != 0) {
        const float id = 1.f / d16;
        for (int j = 0; j < 32; j++) L[j] = (uint8_t)qrt_clamp_int(qrt_nearest_int((x[j] - m16) * id), 0, nmax);
    }
}

void qrt_quantize_row_q4_1(const float *x, void *vy, int64_t n, const float *importance) {
    block_q4_1 *y = vy;
    const float sigma2 = importance ? sum_squares(x, n) / (float)n : 0;
    uint8_t L[32];
    for (int64_t b = 0; b < n / QK4_1; b++) {
        quantize_block_asymmetric32(x + 32 * b, 15, importance ? importance + 32 * b : NULL, sigma2, L, &y[b].d,
                                    &y[b].m);
        pack_nibbles32(L, y[b].qs);
    }
}

void qrt_dequantize_row_q4_1(const void *vx, float *y, int64_t n) {
    const block_q4_1 *x = vx;
    for (int64_t b = 0; b < n / QK4_1; b++, y += QK4_1) {
        const float d = qrt_fp16_to_fp32(x[b].d), m = qrt_fp16_to_fp32(x[b].m);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(x[b].qs[j] & 15) + m;
            y[j + 16] = d * (float)(x[b].qs[j] >> 4) + m;
        }
    }
}

void qrt_quantize_row_q5_1(const float *x, void *vy, int64_t n, const float *importance) {
    block_q5_1 *y = vy;
    const float sigma2 = importance ? sum_squares(x, n) / (float)n : 0;
    uint8_t L[32];
    for (int64_t b = 0; b < n / QK5_1; b++) {
        quantize_block_asymmetric32(x + 32 * b, 31, importance ? importance + 32 * b : NULL, sigma2, L, &y[b].d,
                                    &y[b].m);
        pack_nibbles32(L, y[b].qs);
        pack_high_bits32(L, y[b].qh);
    }
}

void qrt_dequantize_row_q5_1(const void *vx, float *y, int64_t n) {
    const block_q5_1 *x = vx;
    for (int64_t b = 0; b < n / QK5_1; b++, y += QK5_1) {
        const float d = qrt_fp16_to_fp32(x[b].d), m = qrt_fp16_to_fp32(x[b].m);
        const uint32_t qh = load_u32(x[b].qh);
        for (int j = 0; j < 16; j++) {
            const int q0 = (x[b].qs[j] & 15) | (int)((qh >> j) & 1) << 4;
            const int q1 = (x[b].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (float)q0 + m;
            y[j + 16] = d * (float)q1 + m;
        }
    }
}

/* ---------------------------------------------------------------- iq4_nl: x = d * kvalues[q] */

void qrt_quantize_row_iq4_nl(const float *x, void *vy, int64_t n, const float *importance) {
    block_iq4_nl *y = vy;
    float w[32];
    uint8_t L[32];
    for (int64_t b = 0; b < n / QK4_NL; b++) {
        const float *xb = x + 32 * b;
        if (importance) /* llama.cpp: sigma2 over the 32-block, doubled */
            importance_weights(32, xb, importance + 32 * b, 2.f * sum_squares(xb, 32) / 32, w);
        else
            square_weights(32, xb, w);
        const float d = qrt_fit_iq4nl(32, xb, w, L, 7);
        y[b].d = qrt_fp32_to_fp16(d);
        const float d16 = qrt_fp16_to_fp32(y[b].d);
        if (d16 != 0) {
            const float id = 1.f / d16;
            for (int j = 0; j < 32; j++) L[j] = (uint8_t)qrt_nearest_grid_index(16, qrt_kvalues_iq4nl, xb[j] * id);
        }
        pack_nibbles32(L, y[b].qs);
    }
}

void qrt_dequantize_row_iq4_nl(const void *vx, float *y, int64_t n) {
    const block_iq4_nl *x = vx;
    for (int64_t b = 0; b < n / QK4_NL; b++, y += QK4_NL) {
        const float d = qrt_fp16_to_fp32(x[b].d);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)qrt_kvalues_iq4nl[x[b].qs[j] & 15];
            y[j + 16] = d * (float)qrt_kvalues_iq4nl[x[b].qs[j] >> 4];
        }
    }
}

/* ---------------------------------------------------------------- k-quant packing helpers */

/* 2-bit planes of q2_K/q3_K: element i lives in byte (i/128)*32 + i%32 at bit 2*((i%128)/32). */
static void pack_2bit_planes(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)((L[j + l] & 3) | (L[j + l + 32] & 3) << 2 | (L[j + l + 64] & 3) << 4 |
                                      (L[j + l + 96] & 3) << 6);
}

static int unpack_2bit(const uint8_t *qs, int i) { return (qs[(i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3; }

/* q3_K: sixteen 6-bit scales in 12 bytes: low nibbles in bytes 0..7, high 2 bits in bytes 8..11. */
static void pack_q3_scales(const uint8_t ls[16], uint8_t scales[12]) {
    memset(scales, 0, 12);
    for (int j = 0; j < 16; j++) {
        const int l = ls[j];
        if (j < 8)
            scales[j] = (uint8_t)(l & 15);
        else
            scales[j - 8] |= (uint8_t)((l & 15) << 4);
        scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
    }
}

static int unpack_q3_scale(const uint8_t scales[12], int j) {
    const int low = j < 8 ? scales[j] & 15 : scales[j - 8] >> 4;
    const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (low | high << 4) - 32;
}

/* q4_K/q5_K: eight 6-bit scales and mins in 12 bytes. */
static void pack_k4_scales(const uint8_t ls[8], const uint8_t lm[8], uint8_t scales[12]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            scales[j] = ls[j];
            scales[j + 4] = lm[j];
        } else {
            scales[j + 4] = (uint8_t)((ls[j] & 15) | (lm[j] & 15) << 4);
            scales[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            scales[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

static void unpack_k4_scale(const uint8_t scales[12], int j, int *sc, int *m) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4);
        *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

/* ---------------------------------------------------------------- sub-block scale polish */

/* The search fits each sub-block's scale and min as reals; the super-block then rounds them to small integers
 * (ls, lm) on the stored fp16 d and dmin, independently. Here each pair may move one step in either direction
 * when that lowers the sub-block's weighted error, levels re-rounded for every candidate; L gets the final
 * levels. Dequantization is (d * ls) * q - dmin * lm, and the error is measured on exactly that. */
static void polish_scale_min(int n, int nmax, int smax, const float *x, const float *w, float d16, float m16,
                             uint8_t *ls, uint8_t *lm, uint8_t *L) {
    float best = -1, best_l[32] = {0}, cand[32];
    int best_s = *ls, best_m = *lm;
    for (int ds = 0; ds < 3; ds++) {
        for (int dm = 0; dm < 3; dm++) {
            const int s = *ls + (ds == 2 ? -1 : ds), m = *lm + (dm == 2 ? -1 : dm); /* current pair first */
            if (s < 0 || s > smax || m < 0 || m > smax) continue;
            const float d = d16 * (float)s, mn = m16 * (float)m;
            const float id = d != 0 ? 1.f / d : 0.f;
            v8f acc = v8_splat(0);
            for (int i = 0; i < n; i += 8) {
                const v8f xv = v8_load(x + i);
                const v8f l = v8_round(v8_clamp((xv + mn) * id, 0.f, (float)nmax));
                v8_store(cand + i, l);
                const v8f diff = d * l - mn - xv;
                acc += v8_load(w + i) * diff * diff;
            }
            const float err = v8_sum(acc);
            if (best < 0 || err < best) {
                best = err;
                best_s = s;
                best_m = m;
                memcpy(best_l, cand, sizeof(float) * (size_t)n);
            }
        }
    }
    for (int i = 0; i < n; i++) L[i] = (uint8_t)best_l[i];
    *ls = (uint8_t)best_s;
    *lm = (uint8_t)best_m;
}

/* The same for q6_K: the signed sub-block scale sc in [smin, smax] may move one
 * step; dequantization is (d * sc) * l with l in [-nmax, nmax - 1], L[i] = l + nmax. */
static void polish_scale(int n, int nmax, int smin, int smax, const float *x, const float *w, float d16, int *sc,
                         uint8_t *L) {
    float best = -1, best_l[16] = {0}, cand[16];
    int best_sc = *sc;
    for (int k = 0; k < 3; k++) {
        const int s = *sc + (k == 2 ? -1 : k); /* current scale first */
        if (s < smin || s > smax) continue;
        const float d = d16 * (float)s;
        const float id = d != 0 ? 1.f / d : 0.f;
        v8f acc = v8_splat(0);
        for (int i = 0; i < n; i += 8) {
            const v8f xv = v8_load(x + i);
            const v8f l = v8_round(v8_clamp(xv * id, (float)-nmax, (float)(nmax - 1)));
            v8_store(cand + i, l);
            const v8f diff = d * l - xv;
            acc += v8_load(w + i) * diff * diff;
        }
        const float err = v8_sum(acc);
        if (best < 0 || err < best) {
            best = err;
            best_sc = s;
            memcpy(best_l, cand, sizeof(float) * (size_t)n);
        }
    }
    for (int i = 0; i < n; i++) L[i] = (uint8_t)((int)best_l[i] + nmax);
    *sc = best_sc;
}

/* ---------------------------------------------------------------- q2_K */

void qrt_quantize_row_q2_K(const float *x, void *vy, int64_t n, const float *importance) {
    block_q2_K *y = vy;
    uint8_t L[QK_K], Ls[16], Lm[16];
    float weights[QK_K], sw[16], scales[16], mins[16];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        const float *imp = importance ? importance + QK_K * b : NULL;
        const float sigma2 = sum_squares(x, QK_K) / QK_K;
        for (int j = 0; j < 16; j++) {
            const float *xs = x + 16 * j;
            float *w = weights + 16 * j, min;
            if (imp) {
                importance_weights(16, xs, imp + 16 * j, sigma2, w);
                scales[j] = qrt_fit_asymmetric(16, 3, xs, w, L + 16 * j, &min, -0.9f, 0.05f, 36, 0, 0);
            } else { /* llama.cpp's reference: |x| weights, judged by absolute error */
                for (int l = 0; l < 16; l++) w[l] = fabsf(xs[l]);
                scales[j] = qrt_fit_asymmetric(16, 3, xs, w, L + 16 * j, &min, -0.5f, 0.1f, 15, 1, 0);
            }
            mins[j] = -min;
            sw[j] = sum_of(16, w);
        }
        const float dm = qrt_fit_positive(16, 15, scales, sw, Ls);
        const float mm = qrt_fit_positive(16, 15, mins, sw, Lm);
        y[b].d = qrt_fp32_to_fp16(dm);
        y[b].dmin = qrt_fp32_to_fp16(mm);
        const float d16 = qrt_fp16_to_fp32(y[b].d), m16 = qrt_fp16_to_fp32(y[b].dmin);
        for (int j = 0; j < 16; j++) {
            polish_scale_min(16, 3, 15, x + 16 * j, weights + 16 * j, d16, m16, &Ls[j], &Lm[j], L + 16 * j);
            y[b].scales[j] = (uint8_t)(Ls[j] | Lm[j] << 4);
        }
        pack_2bit_planes(L, y[b].qs);
    }
}

void qrt_dequantize_row_q2_K(const void *vx, float *y, int64_t n) {
    const block_q2_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        const float d = qrt_fp16_to_fp32(x[b].d), dmin = qrt_fp16_to_fp32(x[b].dmin);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (float)(x[b].scales[j] & 15);
            const float ml = dmin * (float)(x[b].scales[j] >> 4);
            for (int l = 0; l < 16; l++) y[16 * j + l] = dl * (float)unpack_2bit(x[b].qs, 16 * j + l) - ml;
        }
    }
}

/* ---------------------------------------------------------------- q3_K */

void qrt_quantize_row_q3_K(const float *x, void *vy, int64_t n, const float *importance) {
    block_q3_K *y = vy;
    uint8_t L[QK_K], Ls[16];
    float w[16], sw[16], scales[16];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        const float *imp = importance ? importance + QK_K * b : NULL;
        const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
        for (int j = 0; j < 16; j++) {
            /* Without importance llama.cpp starts from the largest value only (make_q3_quants): a wider search
             * of the x^2-weighted error there costs plain RMSE, measured 2% on heavy-tailed data. */
            if (imp)
                importance_weights(16, x + 16 * j, imp + 16 * j, sigma2, w);
            else
                square_weights(16, x + 16 * j, w);
            scales[j] = qrt_fit_symmetric(16, 4, x + 16 * j, w, L + 16 * j, imp ? 9 : 0, 0.1f, 5);
            sw[j] = sum_of(16, w);
        }
        const float d_block = qrt_fit_symmetric(16, 32, scales, sw, Ls, 9, 0.1f, 5);
        y[b].d = qrt_fp32_to_fp16(d_block);
        const float d16 = qrt_fp16_to_fp32(y[b].d);
        /* no polish_scale here: the scale fit's descent leaves it nothing (measured 0.04%) for 40% of the time */
        pack_q3_scales(Ls, y[b].scales);
        for (int j = 0; j < 16; j++) {
            const float d = d16 * (float)(Ls[j] - 32);
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = d ? (uint8_t)(qrt_clamp_int(qrt_nearest_int(x[16 * j + l] / d), -4, 3) + 4) : 4;
        }
        /* level bit 2 of element i goes to bit i/32 of hmask[i%32]; levels keep their low 2 bits */
        for (int m = 0; m < 32; m++) {
            uint8_t h = 0;
            for (int k = 0; k < 8; k++) {
                h |= (uint8_t)((L[32 * k + m] >> 2) << k);
                L[32 * k + m] &= 3;
            }
            y[b].hmask[m] = h;
        }
        pack_2bit_planes(L, y[b].qs);
    }
}

void qrt_dequantize_row_q3_K(const void *vx, float *y, int64_t n) {
    const block_q3_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        const float d = qrt_fp16_to_fp32(x[b].d);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (float)unpack_q3_scale(x[b].scales, j);
            for (int l = 0; l < 16; l++) {
                const int i = 16 * j + l;
                const int high = (x[b].hmask[i % 32] >> (i / 32)) & 1;
                y[i] = dl * (float)(unpack_2bit(x[b].qs, i) - (high ? 0 : 4));
            }
        }
    }
}

/* ---------------------------------------------------------------- q4_K, q5_K: 8 sub-blocks of 32 */

/* Fit the eight sub-blocks of one super-block and quantize their scales and mins; L gets final levels. */
static void quantize_superblock_k4(const float *x, const float *imp, int nmax, uint8_t *L, qrt_half *d_out,
                                   qrt_half *dmin_out, uint8_t packed_scales[12]) {
    float weights[QK_K], sw[8], scales[8], mins[8];
    uint8_t Ls[8], Lm[8];
    const float sigma2 = 2 * sum_squares(x, QK_K) / QK_K;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float *w = weights + 32 * j, min;
        if (imp) {
            importance_weights(32, xs, imp + 32 * j, sigma2, w);
            scales[j] = qrt_fit_asymmetric(32, nmax, xs, w, L + 32 * j, &min, -0.9f, 0.05f, 36, 0, 0);
        } else { /* llama.cpp's reference weighting (sub-block rms + |x|) and grid (q4_K -1..1, q5_K -0.5..1) */
            const float av_x = sqrtf(sum_squares(xs, 32) / 32);
            for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(xs[l]);
            if (nmax == 15)
                scales[j] = qrt_fit_asymmetric(32, nmax, xs, w, L + 32 * j, &min, -1.f, 0.1f, 20, 0, 0);
            else
                scales[j] = qrt_fit_asymmetric(32, nmax, xs, w, L + 32 * j, &min, -0.5f, 0.1f, 15, 0, 0);
        }
        mins[j] = -min;
        sw[j] = sum_of(32, w);
    }
    const float d_block = qrt_fit_positive(8, 63, scales, sw, Ls);
    const float m_block = qrt_fit_positive(8, 63, mins, sw, Lm);
    *d_out = qrt_fp32_to_fp16(d_block);
    *dmin_out = qrt_fp32_to_fp16(m_block);
    const float d16 = qrt_fp16_to_fp32(*d_out), m16 = qrt_fp16_to_fp32(*dmin_out);
    for (int j = 0; j < 8; j++)
        polish_scale_min(32, nmax, 63, x + 32 * j, weights + 32 * j, d16, m16, &Ls[j], &Lm[j], L + 32 * j);
    memset(packed_scales, 0, 12);
    pack_k4_scales(Ls, Lm, packed_scales);
}

void qrt_quantize_row_q4_K(const float *x, void *vy, int64_t n, const float *importance) {
    block_q4_K *y = vy;
    uint8_t L[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        quantize_superblock_k4(x, importance ? importance + QK_K * b : NULL, 15, L, &y[b].d, &y[b].dmin,
                               y[b].scales);
        for (int j = 0; j < QK_K; j += 64)
            for (int l = 0; l < 32; l++) y[b].qs[j / 2 + l] = (uint8_t)(L[j + l] | L[j + l + 32] << 4);
    }
}

void qrt_dequantize_row_q4_K(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        const float d = qrt_fp16_to_fp32(x[b].d), dmin = qrt_fp16_to_fp32(x[b].dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            unpack_k4_scale(x[b].scales, j, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            const uint8_t *q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++) y[32 * j + l] = dl * (float)((q[l] >> shift) & 15) - ml;
        }
    }
}

void qrt_quantize_row_q5_K(const float *x, void *vy, int64_t n, const float *importance) {
    block_q5_K *y = vy;
    uint8_t L[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        quantize_superblock_k4(x, importance ? importance + QK_K * b : NULL, 31, L, &y[b].d, &y[b].dmin,
                               y[b].scales);
        memset(y[b].qh, 0, sizeof(y[b].qh));
        for (int j = 0; j < QK_K; j += 64) {
            const uint8_t m1 = (uint8_t)(1 << (j / 32)), m2 = (uint8_t)(2 << (j / 32));
            for (int l = 0; l < 32; l++) {
                const int l1 = L[j + l], l2 = L[j + l + 32];
                if (l1 > 15) y[b].qh[l] |= m1;
                if (l2 > 15) y[b].qh[l] |= m2;
                y[b].qs[j / 2 + l] = (uint8_t)((l1 & 15) | (l2 & 15) << 4);
            }
        }
    }
}

void qrt_dequantize_row_q5_K(const void *vx, float *y, int64_t n) {
    const block_q5_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        const float d = qrt_fp16_to_fp32(x[b].d), dmin = qrt_fp16_to_fp32(x[b].dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            unpack_k4_scale(x[b].scales, j, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            const uint8_t *q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++) {
                const int q5 = ((q[l] >> shift) & 15) | ((x[b].qh[l] >> j) & 1) << 4;
                y[32 * j + l] = dl * (float)q5 - ml;
            }
        }
    }
}

/* ---------------------------------------------------------------- q6_K */

void qrt_quantize_row_q6_K(const float *x, void *vy, int64_t n, const float *importance) {
    block_q6_K *y = vy;
    uint8_t L[QK_K];
    float weights[QK_K], scales[16];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int j = 0; j < 16; j++) {
            float *w = weights + 16 * j;
            /* llama.cpp uses the importance directly here, and x^2 without it. Coordinate descent only with
             * importance: on the x^2 weighting it trades plain RMSE for the weighted error. */
            if (importance && !all_zero(16, importance + QK_K * b + 16 * j))
                memcpy(w, importance + QK_K * b + 16 * j, 16 * sizeof(float));
            else
                square_weights(16, x + 16 * j, w);
            scales[j] = qrt_fit_symmetric(16, 32, x + 16 * j, w, L + 16 * j, 9, 0.1f, importance ? 5 : 0);
            if (fabsf(scales[j]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(&y[b], 0, sizeof(y[b]));
        if (max_abs_scale < QRT_GROUP_MAX_EPS) continue;
        const float iscale = -128.f / max_scale;
        y[b].d = qrt_fp32_to_fp16(1 / iscale);
        const float d16 = qrt_fp16_to_fp32(y[b].d);
        for (int j = 0; j < 16; j++) {
            int sc = qrt_clamp_int(qrt_nearest_int(iscale * scales[j]), -128, 127);
            polish_scale(16, 32, -128, 127, x + 16 * j, weights + 16 * j, d16, &sc, L + 16 * j);
            y[b].scales[j] = (int8_t)sc;
        }
        uint8_t *ql = y[b].ql, *qh = y[b].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((L[j + l] & 15) | (L[j + l + 64] & 15) << 4);
                ql[l + 32] = (uint8_t)((L[j + l + 32] & 15) | (L[j + l + 96] & 15) << 4);
                qh[l] = (uint8_t)((L[j + l] >> 4) | (L[j + l + 32] >> 4) << 2 | (L[j + l + 64] >> 4) << 4 |
                                  (L[j + l + 96] >> 4) << 6);
            }
        }
    }
}

void qrt_dequantize_row_q6_K(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        const float d = qrt_fp16_to_fp32(x[b].d);
        for (int i = 0; i < QK_K; i++) {
            const int half = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
            const uint8_t *ql = x[b].ql + 64 * half, *qh = x[b].qh + 32 * half;
            const int low = (ql[l + 32 * (quarter & 1)] >> (4 * (quarter >> 1))) & 15;
            const int high = (qh[l] >> (2 * quarter)) & 3;
            y[i] = d * (float)x[b].scales[i / 16] * (float)((low | high << 4) - 32);
        }
    }
}

/* ---------------------------------------------------------------- q8_K (activations, never in files) */

void qrt_quantize_row_q8_K(const float *x, void *vy, int64_t n, const float *importance) {
    (void)importance;
    block_q8_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        memset(&y[b], 0, sizeof(y[b]));
        if (!amax) continue;
        /* -127/max rather than -128 so that no level is -128 (llama.cpp's choice, for the SIMD dot products) */
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) y[b].qs[j] = (int8_t)qrt_clamp_int(qrt_nearest_int(iscale * x[j]), -127, 127);
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[b].qs[16 * j + l];
            y[b].bsums[j] = (int16_t)sum;
        }
        y[b].d = 1 / iscale;
    }
}

void qrt_dequantize_row_q8_K(const void *vx, float *y, int64_t n) {
    const block_q8_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K)
        for (int j = 0; j < QK_K; j++) y[j] = x[b].d * (float)x[b].qs[j];
}
