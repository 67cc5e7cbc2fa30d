/* neon_armv7.h — what the NEON kernels need beyond arm_neon.h, for both ARM targets (included after it by
 * kernels_neon.inc and packed_neon.inc).
 *
 * On ARMv7 (32-bit) it supplies the AArch64-only intrinsics the kernels are written with, from ARMv7 NEON ones
 * with the same results: the integer ones are exact either way, and vfmaq_n_f32 is the same fused multiply-add
 * (VFPv4's VFMA, which dispatch.c requires with NEON). One difference stays: ARMv7 NEON float arithmetic always
 * flushes subnormal operands and results to zero, so a kernel could differ from the scalar reference only where
 * a product or partial sum falls below 2^-126 — scales times exact integers, and products of model weights and
 * activations, stay far above it (kernel-check's random, small-scale and real rows included).
 *
 * qrt_f16x4_to_f32 is the conversion of 4 halves on both: arm_neon.h declares ARMv7's float16 types only under
 * -mfp16-format=ieee, a flag the build does not need anywhere else, so there it is the instruction itself
 * (VCVT.F32.F16 converts subnormal halves exactly: FPSCR.FZ applies to single and double precision only).
 */
#ifndef QRT_NEON_ARMV7_H
#define QRT_NEON_ARMV7_H
#include <arm_neon.h>

#if defined(__aarch64__)
static inline float32x4_t qrt_f16x4_to_f32(uint16x4_t h) { return vcvt_f32_f16(vreinterpret_f16_u16(h)); }
#else
static inline float32x4_t qrt_f16x4_to_f32(uint16x4_t h) {
    float32x4_t f;
    __asm__("vcvt.f32.f16 %q0, %P1" : "=w"(f) : "w"(h));
    return f;
}

static inline int32x4_t vpaddq_s32(int32x4_t a, int32x4_t b) {
    return vcombine_s32(vpadd_s32(vget_low_s32(a), vget_high_s32(a)), vpadd_s32(vget_low_s32(b), vget_high_s32(b)));
}
static inline int16x8_t vpaddq_s16(int16x8_t a, int16x8_t b) {
    return vcombine_s16(vpadd_s16(vget_low_s16(a), vget_high_s16(a)), vpadd_s16(vget_low_s16(b), vget_high_s16(b)));
}
static inline int32_t vaddvq_s32(int32x4_t v) {
    const int32x2_t pair = vadd_s32(vget_low_s32(v), vget_high_s32(v));
    return vget_lane_s32(vpadd_s32(pair, pair), 0);
}
static inline int16x8_t vmull_high_s8(int8x16_t a, int8x16_t b) { return vmull_s8(vget_high_s8(a), vget_high_s8(b)); }
static inline int32x4_t vmull_high_s16(int16x8_t a, int16x8_t b) {
    return vmull_s16(vget_high_s16(a), vget_high_s16(b));
}
static inline uint16x8_t vmovl_high_u8(uint8x16_t a) { return vmovl_u8(vget_high_u8(a)); }
static inline int16x8_t vmovl_high_s8(int8x16_t a) { return vmovl_s8(vget_high_s8(a)); }
static inline int8x8_t vzip1_s8(int8x8_t a, int8x8_t b) { return vzip_s8(a, b).val[0]; }
/* table lookup of 16 bytes by indices below 16, as vqtbl1q_s8 with in-range indices */
static inline int8x16_t vqtbl1q_s8(int8x16_t table, uint8x16_t idx) {
    const int8x8x2_t t = {{vget_low_s8(table), vget_high_s8(table)}};
    return vcombine_s8(vtbl2_s8(t, vreinterpret_s8_u8(vget_low_u8(idx))),
                       vtbl2_s8(t, vreinterpret_s8_u8(vget_high_u8(idx))));
}
static inline float32x4_t vfmaq_n_f32(float32x4_t acc, float32x4_t a, float s) {
    return vfmaq_f32(acc, a, vdupq_n_f32(s));
}
#endif

#endif
