/* kernels_neon.c — baseline NEON dot kernels: the integer kernels of kernels_neon.inc with the widening-multiply
 * lanes, and the f32/f16/bf16 kernels. Registered in the "neon" slot. Every aarch64 CPU has them; in the 32-bit
 * build they are compiled for NEON with VFPv4 (this file only: the rest of that build runs on VFP-only cores) and
 * dispatch.c registers them when the CPU reports both (bf16 stays scalar there: ARMv7 NEON has no doubles).
 * Compiles to a stub elsewhere. */
#if defined(__aarch64__) || defined(__arm__)
#if defined(__arm__)
#pragma GCC target("arch=armv7-a,fpu=neon-vfpv4")
#endif
#include <math.h>
#include <string.h>

#include "kernels.h"

#define QRT_NEON_DOT4 1
#define QRT_SUFFIX neon
#include "kernels_neon.inc"

/* ---- float kernels: the reference's lane orders (ggml_vec_dot: 64 lanes folded; tinyBLAS: 16 lanes), in
 * registers of 4 lanes, with the same fused multiply-adds: bit-identical to kernels_ref.c ---- */

static float reduce16_tree(const float *v) {
    float a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = v[i + 8] + v[i];
    for (int i = 0; i < 4; i++) b[i] = a[i + 4] + a[i];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

static inline float32x4_t load4_f32(const void *p, int64_t i) { return vld1q_f32((const float *)p + i); }
static inline float32x4_t load4_f16(const void *p, int64_t i) {
    return qrt_f16x4_to_f32(vld1_u16((const uint16_t *)p + i));
}

static float vecdot_lanes64(int64_t n, const void *x, const void *y, float32x4_t (*load)(const void *, int64_t),
                            int64_t *done) {
    float32x4_t acc[16];
    for (int r = 0; r < 16; r++) acc[r] = vdupq_n_f32(0);
    const int64_t np = n & ~(int64_t)63;
    for (int64_t i = 0; i < np; i += 64)
        for (int r = 0; r < 16; r++) acc[r] = vfmaq_f32(acc[r], load(x, i + 4 * r), load(y, i + 4 * r));
    float lanes[64];
    for (int r = 0; r < 16; r++) vst1q_f32(lanes + 4 * r, acc[r]);
    for (int l = 0; l < 16; l++) {
        lanes[l] += lanes[32 + l];
        lanes[16 + l] += lanes[48 + l];
        lanes[l] += lanes[16 + l];
    }
    *done = np;
    return reduce16_tree(lanes);
}

static float dot_f32(int64_t n, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    int64_t i;
    float sum = vecdot_lanes64(n, vx, vy, load4_f32, &i);
    for (; i < n; i++) sum = fmaf(x[i], y[i], sum);
    return sum;
}

static float dot_f16(int64_t n, const void *vx, const void *vy) {
    const qrt_half *x = vx, *y = vy;
    int64_t i;
    double sum = vecdot_lanes64(n, vx, vy, load4_f16, &i); /* ggml_vec_dot_f16 keeps the tail in double */
    for (; i < n; i++) sum += (double)(qrt_fp16_to_fp32(x[i]) * qrt_fp16_to_fp32(y[i]));
    return (float)sum;
}

static float sgemm_lanes16(int64_t n, const void *x, const void *y, float32x4_t (*load)(const void *, int64_t)) {
    float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
    for (int64_t i = 0; i < n; i += 16)
        for (int r = 0; r < 4; r++) acc[r] = vfmaq_f32(acc[r], load(x, i + 4 * r), load(y, i + 4 * r));
    float lanes[16];
    for (int r = 0; r < 4; r++) vst1q_f32(lanes + 4 * r, acc[r]);
    return reduce16_tree(lanes);
}

static float batch_dot_f32(int64_t n, const void *x, const void *y) {
    return n % 16 ? dot_f32(n, x, y) : sgemm_lanes16(n, x, y, load4_f32);
}

static float batch_dot_f16(int64_t n, const void *x, const void *y) {
    return n % 16 ? dot_f16(n, x, y) : sgemm_lanes16(n, x, y, load4_f16);
}

/* ---- attention products (kernels.h) in the reference's lane orders: 64 lanes folded (vecdot) or 16 (sgemm), four
 * per register, the same fused multiply-adds, so bit-identical to qrt_attn_scores_scalar / _values_scalar. Head
 * sizes that are not a multiple of 16, or above QRT_NEON_ATTN_HD_MAX, go to the reference. ---- */

#define QRT_NEON_ATTN_HD_MAX 512

static inline float32x4_t load4_kv(const void *p, size_t i, int f16) {
    return f16 ? load4_f16(p, (int64_t)i) : load4_f32(p, (int64_t)i);
}

/* with an f16 cache ggml rounds the query and the attention weights to f16 before its products */
static inline float round_f16(float x, int f16) { return f16 ? qrt_fp16_to_fp32(qrt_fp32_to_fp16(x)) : x; }

void qrt_attn_scores_neon(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                          int vecdot, float scale) {
    if (hd % 16 || hd > QRT_NEON_ATTN_HD_MAX) {
        qrt_attn_scores_scalar(att, q, k, n_pos, stride, hd, f16, vecdot, scale);
        return;
    }
    float qr[QRT_NEON_ATTN_HD_MAX];
    for (int i = 0; i < hd; i++) qr[i] = round_f16(q[i], f16);
    const int np = vecdot ? hd & ~63 : hd, regs = vecdot ? 16 : 4;
    for (int t = 0; t < n_pos; t++) {
        const size_t row = (size_t)t * (size_t)stride;
        float32x4_t acc[16];
        for (int r = 0; r < regs; r++) acc[r] = vdupq_n_f32(0);
        for (int i = 0; i < np; i += 4 * regs)
            for (int r = 0; r < regs; r++)
                acc[r] = vfmaq_f32(acc[r], load4_kv(k, row + (size_t)(i + 4 * r), f16), vld1q_f32(qr + i + 4 * r));
        float lanes[64];
        for (int r = 0; r < regs; r++) vst1q_f32(lanes + 4 * r, acc[r]);
        float sum;
        if (vecdot) {
            for (int l = 0; l < 16; l++) {
                lanes[l] += lanes[32 + l];
                lanes[16 + l] += lanes[48 + l];
                lanes[l] += lanes[16 + l];
            }
            sum = reduce16_tree(lanes);
            for (int i = np; i < hd; i++) {
                const float kv = f16 ? qrt_fp16_to_fp32(((const qrt_half *)k)[row + (size_t)i])
                                     : ((const float *)k)[row + (size_t)i];
                sum = fmaf(kv, qr[i], sum);
            }
        } else {
            sum = reduce16_tree(lanes);
        }
        att[t] = sum * scale;
    }
}

/* reduce16_tree with each lane a register of 4 outputs */
static float32x4_t reduce16_tree_x4(const float32x4_t *v) {
    float32x4_t a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = vaddq_f32(v[i + 8], v[i]);
    for (int i = 0; i < 4; i++) b[i] = vaddq_f32(a[i + 4], a[i]);
    return vaddq_f32(vaddq_f32(b[0], b[2]), vaddq_f32(b[1], b[3]));
}

/* Position t feeds lane t % slots of every output, as in the reference; the lanes of all hd outputs sit in scratch
 * (slots x hd floats, only the slots some position reaches), then fold per 4 outputs. */
void qrt_attn_values_neon(float *out, const float *att, const void *v, int n_pos, int stride, int hd, int f16,
                          int vecdot, float *scratch) {
    if (hd % 16 || hd > QRT_NEON_ATTN_HD_MAX) {
        qrt_attn_values_scalar(out, att, v, n_pos, stride, hd, f16, vecdot, scratch);
        return;
    }
    const int slots = vecdot ? 64 : 16, used = n_pos < slots ? n_pos : slots;
    memset(scratch, 0, sizeof(float) * (size_t)used * (size_t)hd);
    for (int t = 0; t < n_pos; t++) {
        const float32x4_t a = vdupq_n_f32(round_f16(att[t], f16));
        float *lane = scratch + (size_t)(t % slots) * (size_t)hd;
        const size_t row = (size_t)t * (size_t)stride;
        for (int i = 0; i < hd; i += 4)
            vst1q_f32(lane + i, vfmaq_f32(vld1q_f32(lane + i), load4_kv(v, row + (size_t)i, f16), a));
    }
    const float32x4_t zero = vdupq_n_f32(0);
    for (int i = 0; i < hd; i += 4) {
        float32x4_t l[64];
        for (int s = 0; s < slots; s++) l[s] = s < used ? vld1q_f32(scratch + (size_t)s * (size_t)hd + i) : zero;
        if (vecdot)
            for (int s = 0; s < 16; s++) {
                l[s] = vaddq_f32(l[s], l[32 + s]);
                l[16 + s] = vaddq_f32(l[16 + s], l[48 + s]);
                l[s] = vaddq_f32(l[s], l[16 + s]);
            }
        vst1q_f32(out + i, reduce16_tree_x4(l));
    }
}

#if defined(__aarch64__)
/* bf16: the reference sums exact double products in order; here two double lanes per register (reordered
 * sums, within the float tolerance of the tests) */
static float dot_bf16(int64_t n, const void *vx, const void *vy) {
    const qrt_bf16 *x = vx, *y = vy;
    float64x2_t a0 = vdupq_n_f64(0), a1 = a0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t xf = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)x + i), 16));
        const float32x4_t yf = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)y + i), 16));
        a0 = vaddq_f64(a0, vmulq_f64(vcvt_f64_f32(vget_low_f32(xf)), vcvt_f64_f32(vget_low_f32(yf))));
        a1 = vaddq_f64(a1, vmulq_f64(vcvt_high_f64_f32(xf), vcvt_high_f64_f32(yf)));
    }
    double sum = vaddvq_f64(vaddq_f64(a0, a1));
    for (; i < n; i++) sum += (double)qrt_bf16_to_fp32(x[i]) * (double)qrt_bf16_to_fp32(y[i]);
    return (float)sum;
}
#endif

void qrt_kernels_register_neon(qrt_kernel_entry t[QRT_TYPE_COUNT]) {
    t[QRT_TYPE_F32].vec_dot[QRT_VARIANT_NEON] = dot_f32;
    t[QRT_TYPE_F16].vec_dot[QRT_VARIANT_NEON] = dot_f16;
#if defined(__aarch64__)
    t[QRT_TYPE_BF16].vec_dot[QRT_VARIANT_NEON] = dot_bf16;
#endif
    t[QRT_TYPE_F32].batch_dot[QRT_VARIANT_NEON] = batch_dot_f32;
    t[QRT_TYPE_F16].batch_dot[QRT_VARIANT_NEON] = batch_dot_f16;
    register_int_neon(t, QRT_VARIANT_NEON);
}
#else
typedef int qrt_kernels_neon_empty; /* ISO C forbids an empty translation unit */
#endif
