/* kernels_neon.c — baseline NEON kernels: the integer dot kernels of kernels_neon.inc with the widening-multiply
 * lanes, the f32/f16/bf16 dots, the attention products and softmax, the exp of 16 floats and the q8 activation
 * conversions, each bit-identical to its scalar reference. Registered in the "neon" slot (select.h binds the
 * attention, softmax and exp ones for every NEON variant). Every aarch64 CPU has them; in the 32-bit
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
#include "ops.h"

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

/* 1 when some lane of a comparison mask is set */
static inline int any_lane(uint32x4_t mask) {
#if defined(__aarch64__)
    return vmaxvq_u32(mask) != 0;
#else
    const uint32x2_t half = vorr_u32(vget_low_u32(mask), vget_high_u32(mask));
    return (vget_lane_u32(half, 0) | vget_lane_u32(half, 1)) != 0;
#endif
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

/* The query (or attention weights) rounded to f16 and back where the cache is f16. On aarch64 the conversion
 * instructions round as qrt_fp32_to_fp16 does (to nearest even, subnormal halves exact, inf from 65520 up); a NaN,
 * whose payload the reference drops, sends the whole row to the reference. */
static void round_row_f16(float *out, const float *x, int n, int f16) {
#if defined(__aarch64__)
    if (f16 && n % 4 == 0) {
        uint32x4_t nan = vdupq_n_u32(0);
        for (int i = 0; i < n; i += 4) {
            const float32x4_t v = vld1q_f32(x + i);
            nan = vorrq_u32(nan, vmvnq_u32(vceqq_f32(v, v)));
            vst1q_f32(out + i, vcvt_f32_f16(vcvt_f16_f32(v)));
        }
        if (!any_lane(nan)) return;
    }
#endif
    for (int i = 0; i < n; i++) out[i] = round_f16(x[i], f16);
}

/* reduce16_tree of lanes 0..15 held in four registers, with the same additions in the same order */
static inline float reduce16_regs(float32x4_t v0, float32x4_t v1, float32x4_t v2, float32x4_t v3) {
    const float32x4_t b = vaddq_f32(vaddq_f32(v3, v1), vaddq_f32(v2, v0));
    const float32x2_t c = vadd_f32(vget_low_f32(b), vget_high_f32(b));
    return vget_lane_f32(c, 0) + vget_lane_f32(c, 1);
}

/* att[t] for every position, in 16 registers of 4 lanes (the single-token order's 64) or 4 (the prompt's 16); each
 * call site fixes f16 and vecdot, so the loops hold no branch and the accumulators stay in registers */
static inline __attribute__((always_inline)) void scores_rows(float *att, const float *qr, const void *k, int n_pos,
                                                              int stride, int hd, int f16, int vecdot, float scale) {
    const int np = vecdot ? hd & ~63 : hd, regs = vecdot ? 16 : 4;
    for (int t = 0; t < n_pos; t++) {
        const size_t row = (size_t)t * (size_t)stride;
        const void *key = f16 ? (const void *)((const qrt_half *)k + row) : (const void *)((const float *)k + row);
        float32x4_t acc[16];
        for (int r = 0; r < regs; r++) acc[r] = vdupq_n_f32(0);
        for (int i = 0; i < np; i += 4 * regs)
            for (int r = 0; r < regs; r++)
                acc[r] = vfmaq_f32(acc[r], load4_kv(key, (size_t)(i + 4 * r), f16), vld1q_f32(qr + i + 4 * r));
        float sum;
        if (vecdot) {
            /* the 64 lanes folded as the reference folds them: l += l + 32, l + 16 += l + 48, l += l + 16 */
            for (int r = 0; r < 4; r++) {
                acc[r] = vaddq_f32(acc[r], acc[8 + r]);
                acc[4 + r] = vaddq_f32(acc[4 + r], acc[12 + r]);
                acc[r] = vaddq_f32(acc[r], acc[4 + r]);
            }
            sum = reduce16_regs(acc[0], acc[1], acc[2], acc[3]);
            for (int i = np; i < hd; i++) {
                const float kv = f16 ? qrt_fp16_to_fp32(((const qrt_half *)key)[i]) : ((const float *)key)[i];
                sum = fmaf(kv, qr[i], sum);
            }
        } else {
            sum = reduce16_regs(acc[0], acc[1], acc[2], acc[3]);
        }
        att[t] = sum * scale;
    }
}

void qrt_attn_scores_neon(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                          int vecdot, float scale) {
    if (hd % 16 || hd > QRT_NEON_ATTN_HD_MAX) {
        qrt_attn_scores_scalar(att, q, k, n_pos, stride, hd, f16, vecdot, scale);
        return;
    }
    float qr[QRT_NEON_ATTN_HD_MAX];
    round_row_f16(qr, q, hd, f16);
    if (vecdot && f16)
        scores_rows(att, qr, k, n_pos, stride, hd, 1, 1, scale);
    else if (vecdot)
        scores_rows(att, qr, k, n_pos, stride, hd, 0, 1, scale);
    else if (f16)
        scores_rows(att, qr, k, n_pos, stride, hd, 1, 0, scale);
    else
        scores_rows(att, qr, k, n_pos, stride, hd, 0, 0, scale);
}

/* reduce16_tree with each lane a register of 4 outputs */
static float32x4_t reduce16_tree_x4(const float32x4_t *v) {
    float32x4_t a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = vaddq_f32(v[i + 8], v[i]);
    for (int i = 0; i < 4; i++) b[i] = vaddq_f32(a[i + 4], a[i]);
    return vaddq_f32(vaddq_f32(b[0], b[2]), vaddq_f32(b[1], b[3]));
}

/* scratch row t % slots += att[t] * v row t, over hd values; each call site fixes f16 */
static inline __attribute__((always_inline)) void values_lanes(float *scratch, const float *att, const void *v,
                                                               int n_pos, int stride, int hd, int f16, int slots) {
    float weights[4];
    for (int t = 0; t < n_pos; t++) {
        if (t % 4 == 0) round_row_f16(weights, att + t, n_pos - t < 4 ? n_pos - t : 4, f16);
        const float32x4_t a = vdupq_n_f32(weights[t % 4]);
        float *lane = scratch + (size_t)(t % slots) * (size_t)hd;
        const size_t row = (size_t)t * (size_t)stride;
        const void *val = f16 ? (const void *)((const qrt_half *)v + row) : (const void *)((const float *)v + row);
        if (t < slots) /* the slot's first position: 0 + product, as the reference's fused multiply-add on +0 */
            for (int i = 0; i < hd; i += 4)
                vst1q_f32(lane + i, vfmaq_f32(vdupq_n_f32(0), load4_kv(val, (size_t)i, f16), a));
        else
            for (int i = 0; i < hd; i += 4)
                vst1q_f32(lane + i, vfmaq_f32(vld1q_f32(lane + i), load4_kv(val, (size_t)i, f16), a));
    }
}

/* Position t feeds lane t % slots of every output, as in the reference; the lanes of all hd outputs sit in scratch
 * (slots x hd floats), then fold per 4 outputs. A slot no position reaches is +0 in the reference: zeroed before the
 * fold where it reads it, and the single-token order's 48 upper slots are not read at all while no position reached
 * them (the fold then adds +0 to each lower slot, which is x but for -0). */
void qrt_attn_values_neon(float *out, const float *att, const void *v, int n_pos, int stride, int hd, int f16,
                          int vecdot, float *scratch) {
    if (hd % 16 || hd > QRT_NEON_ATTN_HD_MAX) {
        qrt_attn_values_scalar(out, att, v, n_pos, stride, hd, f16, vecdot, scratch);
        return;
    }
    const int slots = vecdot ? 64 : 16, used = n_pos < slots ? n_pos : slots;
    if (f16)
        values_lanes(scratch, att, v, n_pos, stride, hd, 1, slots);
    else
        values_lanes(scratch, att, v, n_pos, stride, hd, 0, slots);
    /* the fold reads slots 0..15, and 16..63 of the single-token order once a position reached them */
    const int read = vecdot && used > 16 ? 64 : 16;
    if (used < read) memset(scratch + (size_t)used * (size_t)hd, 0, sizeof(float) * (size_t)(read - used) * (size_t)hd);
    const float32x4_t zero = vdupq_n_f32(0);
    for (int i = 0; i < hd; i += 4) {
        const float *slot = scratch + i;
        float32x4_t l[16];
        if (read == 64) /* the reference's fold: l += l + 32, l + 16 += l + 48, l += l + 16 */
            for (int s = 0; s < 16; s++)
                l[s] = vaddq_f32(vaddq_f32(vld1q_f32(slot + (size_t)s * hd), vld1q_f32(slot + (size_t)(32 + s) * hd)),
                                 vaddq_f32(vld1q_f32(slot + (size_t)(16 + s) * hd),
                                           vld1q_f32(slot + (size_t)(48 + s) * hd)));
        else if (vecdot) /* the same fold with slots 16..63 at +0: (l + 0) + (0 + 0) is l + 0 */
            for (int s = 0; s < 16; s++) l[s] = vaddq_f32(vld1q_f32(slot + (size_t)s * hd), zero);
        else
            for (int s = 0; s < 16; s++) l[s] = vld1q_f32(slot + (size_t)s * hd);
        vst1q_f32(out + i, reduce16_tree_x4(l));
    }
}

/* ---- exp of 16 floats (kernels.h), bit-identical to qrt_expf16_scalar: its fused multiply-adds four lanes at a
 * time (vfmaq_f32 / vfmsq_f32 round once, as fmaf), and its ldexpf(j, n) as an add of n to the exponent bits of j,
 * exact wherever the result is a normal float: j lies in [0.7, 1.5), so for |n| <= 125 at least. Lanes with
 * |n| > 192 take the reference's 0 or inf; a vector with any other lane (a result near or past the ends of the
 * normal range, NaN: both comparisons false) goes to the reference whole. ARMv7 NEON flushes denormal operands and
 * results to zero: only inputs below 2^-63 in magnitude meet one (x itself, or b * b), and j rounds to 1 there
 * either way. ---- */

/* e^x of four lanes; *other gets the lanes that neither the exponent add nor the 0 / inf rule covers */
static inline float32x4_t expf4(float32x4_t x, uint32x4_t *other) {
    const float32x4_t r = vdupq_n_f32(0x1.8p23f);
    const float32x4_t n = vsubq_f32(vfmaq_f32(r, x, vdupq_n_f32(0x1.715476p+0f)), r);
    const float32x4_t b =
        vfmsq_f32(vfmsq_f32(x, n, vdupq_n_f32(0x1.62e4p-1f)), n, vdupq_n_f32(0x1.7f7d1cp-20f));
    const float32x4_t u = vmulq_f32(b, b);
    const float32x4_t high = vfmaq_f32(vfmaq_f32(vdupq_n_f32(0x1.fffdb6p-2f), b, vdupq_n_f32(0x1.555e66p-3f)),
                                       vfmaq_f32(vdupq_n_f32(0x1.573e2ep-5f), b, vdupq_n_f32(0x1.0e4020p-7f)), u);
    const float32x4_t j = vfmaq_f32(vfmaq_f32(vdupq_n_f32(1.0f), b, vdupq_n_f32(0x1.ffffecp-1f)), high, u);
    const int32x4_t n_bits = vshlq_n_s32(vcvtq_s32_f32(n), 23);
    const float32x4_t scaled = vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(j), n_bits));
    const float32x4_t n_abs = vabsq_f32(n);
    const uint32x4_t normal = vcleq_f32(n_abs, vdupq_n_f32(125.0f)), huge = vcgtq_f32(n_abs, vdupq_n_f32(192.0f));
    *other = vorrq_u32(*other, vmvnq_u32(vorrq_u32(normal, huge)));
    const float32x4_t zero_or_inf =
        vbslq_f32(vcleq_f32(n, vdupq_n_f32(0.0f)), vdupq_n_f32(0.0f), vdupq_n_f32(INFINITY));
    return vbslq_f32(huge, zero_or_inf, scaled);
}

void qrt_expf16_neon(float *y, const float *x) {
    uint32x4_t other = vdupq_n_u32(0);
    const float32x4_t e0 = expf4(vld1q_f32(x), &other), e1 = expf4(vld1q_f32(x + 4), &other);
    const float32x4_t e2 = expf4(vld1q_f32(x + 8), &other), e3 = expf4(vld1q_f32(x + 12), &other);
    if (any_lane(other)) {
        qrt_expf16_scalar(y, x);
        return;
    }
    vst1q_f32(y, e0);
    vst1q_f32(y + 4, e1);
    vst1q_f32(y + 8, e2);
    vst1q_f32(y + 12, e3);
}

/* op_softmax with these exps: the reference's softmax, bit for bit */
void qrt_attn_softmax_neon(float *x, int n) { op_softmax(x, n, qrt_expf16_neon); }

/* ---- activation conversion (act_conv), byte-identical to qrt_act_from_float: the largest magnitude as the integer
 * maximum of the bit patterns without sign (the order of non-negative floats, untouched by ARMv7 NEON's flushing
 * of denormals), the scale and its inverse in scalar code as the reference, the products rounded to nearest even.
 * A block whose largest magnitude is not finite, or below 2^-100 (zero blocks included), goes to the reference:
 * above it a denormal input's product stays below 1/2 and rounds to 0 whether flushed or not. ---- */

#define QRT_NEON_ACT_TINY 0x1p-100f

static inline uint32x4_t abs_bits(const float *x) {
    return vandq_u32(vld1q_u32((const uint32_t *)x), vdupq_n_u32(0x7fffffffu));
}

/* the largest |x| of n floats (n a multiple of 16) */
static float amax_of(const float *x, int n) {
    uint32x4_t m0 = abs_bits(x), m1 = abs_bits(x + 4), m2 = abs_bits(x + 8), m3 = abs_bits(x + 12);
    for (int k = 16; k < n; k += 16) {
        m0 = vmaxq_u32(m0, abs_bits(x + k));
        m1 = vmaxq_u32(m1, abs_bits(x + k + 4));
        m2 = vmaxq_u32(m2, abs_bits(x + k + 8));
        m3 = vmaxq_u32(m3, abs_bits(x + k + 12));
    }
    const uint32x4_t m = vmaxq_u32(vmaxq_u32(m0, m1), vmaxq_u32(m2, m3));
#if defined(__aarch64__)
    const uint32_t bits = vmaxvq_u32(m);
#else
    uint32x2_t h = vmax_u32(vget_low_u32(m), vget_high_u32(m));
    h = vpmax_u32(h, h);
    const uint32_t bits = vget_lane_u32(h, 0);
#endif
    float amax;
    memcpy(&amax, &bits, sizeof amax);
    return amax;
}

static inline int act_block_regular(float amax) { return amax >= QRT_NEON_ACT_TINY && amax <= 0x1.fffffep127f; }

/* nearest_int (lrintf, to nearest even) of 4 products, |v| < 2^22 */
static inline int32x4_t round_nearest(float32x4_t v) {
#if defined(__aarch64__)
    return vcvtnq_s32_f32(v);
#else
    const float32x4_t r = vdupq_n_f32(0x1.8p23f); /* adding 1.5 * 2^23 leaves the integer part, rounded to even */
    return vcvtq_s32_f32(vsubq_f32(vaddq_f32(v, r), r));
#endif
}

static inline int8x16_t narrow16(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    return vcombine_s8(vmovn_s16(vcombine_s16(vmovn_s32(a), vmovn_s32(b))),
                       vmovn_s16(vcombine_s16(vmovn_s32(c), vmovn_s32(d))));
}

/* 16 values times scale, rounded, as int8 (|x * scale| <= 127.5 here; top clamps at 127 as q8_K does) */
static inline int8x16_t quant16(const float *x, float scale, int32_t top) {
    const int32x4_t t = vdupq_n_s32(top);
    int32x4_t v[4];
    for (int k = 0; k < 4; k++) v[k] = vminq_s32(round_nearest(vmulq_n_f32(vld1q_f32(x + 4 * k), scale)), t);
    return narrow16(v[0], v[1], v[2], v[3]);
}

static inline int32_t sum16_s8(int8x16_t q) { return vaddvq_s32(vpaddlq_s16(vpaddlq_s8(q))); }

static void act_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        const float amax = amax_of(x, QK8_0);
        if (!act_block_regular(amax)) {
            qrt_act_from_float(QRT_TYPE_Q8_0, x, &y[i], QK8_0);
            continue;
        }
        const float id = 127.0f / amax;
        y[i].d = qrt_fp32_to_fp16(amax / 127.0f);
        vst1q_s8(y[i].qs, quant16(x, id, 127));
        vst1q_s8(y[i].qs + 16, quant16(x + 16, id, 127));
    }
}

static void act_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
        const float amax = amax_of(x, QK8_1);
        if (!act_block_regular(amax)) {
            qrt_act_from_float(QRT_TYPE_Q8_1, x, &y[i], QK8_1);
            continue;
        }
        const float d = amax / 127.0f, id = 127.0f / amax;
        const int8x16_t q0 = quant16(x, id, 127), q1 = quant16(x + 16, id, 127);
        vst1q_s8(y[i].qs, q0);
        vst1q_s8(y[i].qs + 16, q1);
        y[i].d = qrt_fp32_to_fp16(d);
        y[i].s = qrt_fp32_to_fp16((float)(sum16_s8(q0) + sum16_s8(q1)) * d);
    }
}

static void act_q8_K(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        const float amax = amax_of(x, QK_K);
        if (!act_block_regular(amax)) {
            qrt_act_from_float(QRT_TYPE_Q8_K, x, &y[i], QK_K);
            continue;
        }
        /* the reference keeps the first value of largest magnitude (strictly greater wins) */
        const uint32x4_t am = vreinterpretq_u32_f32(vdupq_n_f32(amax));
        int k = 0;
        while (!any_lane(vorrq_u32(vorrq_u32(vceqq_u32(abs_bits(x + k), am), vceqq_u32(abs_bits(x + k + 4), am)),
                                   vorrq_u32(vceqq_u32(abs_bits(x + k + 8), am), vceqq_u32(abs_bits(x + k + 12), am)))))
            k += 16;
        while (fabsf(x[k]) != amax) k++;
        const float iscale = -127.0f / x[k];
        for (int j = 0; j < QK_K / 16; j++) {
            const int8x16_t q = quant16(x + 16 * j, iscale, 127);
            vst1q_s8(y[i].qs + 16 * j, q);
            y[i].bsums[j] = (int16_t)sum16_s8(q);
        }
        y[i].d = 1.0f / iscale;
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
    t[QRT_TYPE_Q8_0].act_conv[QRT_VARIANT_NEON] = act_q8_0;
    t[QRT_TYPE_Q8_1].act_conv[QRT_VARIANT_NEON] = act_q8_1;
    t[QRT_TYPE_Q8_K].act_conv[QRT_VARIANT_NEON] = act_q8_K;
}
#else
typedef int qrt_kernels_neon_empty; /* ISO C forbids an empty translation unit */
#endif
