/* quant_simd.h — 8-float vectors for the quantizers' inner loops (internal).
 *
 * GCC/Clang vector extensions: loops written on v8f become SIMD on any target (two SSE/NEON registers or one AVX
 * register) with exactly the scalar arithmetic per lane, so results never depend on the target. Reductions
 * sum the lanes in a fixed order. min/max use the target's instructions: written as masks, GCC lowers them back
 * to scalar branches.
 */
#ifndef QRT_QUANT_SIMD_H
#define QRT_QUANT_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__SSE__)
#include <xmmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

/* These helpers are static inline: their by-value vector ABI never crosses an exported call. */
#pragma GCC diagnostic ignored "-Wpsabi" /* GCC and Clang both know it */

/* No fused multiply-adds: results must not depend on the compiler (dequantized floats are compared bit for bit
 * with gguf-py). GCC does not contract under -std=c11; Clang does unless told. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f v8_load(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void v8_store(float *p, v8f v) { memcpy(p, &v, sizeof(v)); }

static inline v8f v8_splat(float f) { return (v8f){0} + f; }

static inline v8f v8_abs(v8f v) { return (v8f)((v8i)v & 0x7fffffff); }

static inline v8f v8_max(v8f a, v8f b) {
#if defined(__SSE__)
    typedef float v4f __attribute__((vector_size(16)));
    v4f ha[2], hb[2];
    memcpy(ha, &a, sizeof(a));
    memcpy(hb, &b, sizeof(b));
    for (int k = 0; k < 2; k++) ha[k] = (v4f)_mm_max_ps((__m128)ha[k], (__m128)hb[k]);
    memcpy(&a, ha, sizeof(a));
    return a;
#elif defined(__ARM_NEON)
    float32x4_t ha[2], hb[2];
    memcpy(ha, &a, sizeof(a));
    memcpy(hb, &b, sizeof(b));
    for (int k = 0; k < 2; k++) ha[k] = vmaxq_f32(ha[k], hb[k]);
    memcpy(&a, ha, sizeof(a));
    return a;
#else
    for (int j = 0; j < 8; j++) a[j] = a[j] > b[j] ? a[j] : b[j];
    return a;
#endif
}

static inline v8f v8_min(v8f a, v8f b) {
#if defined(__SSE__)
    typedef float v4f __attribute__((vector_size(16)));
    v4f ha[2], hb[2];
    memcpy(ha, &a, sizeof(a));
    memcpy(hb, &b, sizeof(b));
    for (int k = 0; k < 2; k++) ha[k] = (v4f)_mm_min_ps((__m128)ha[k], (__m128)hb[k]);
    memcpy(&a, ha, sizeof(a));
    return a;
#elif defined(__ARM_NEON)
    float32x4_t ha[2], hb[2];
    memcpy(ha, &a, sizeof(a));
    memcpy(hb, &b, sizeof(b));
    for (int k = 0; k < 2; k++) ha[k] = vminq_f32(ha[k], hb[k]);
    memcpy(&a, ha, sizeof(a));
    return a;
#else
    for (int j = 0; j < 8; j++) a[j] = a[j] < b[j] ? a[j] : b[j];
    return a;
#endif
}

static inline v8f v8_clamp(v8f v, float lo, float hi) { return v8_min(v8_max(v, v8_splat(lo)), v8_splat(hi)); }

/* Round to integers, ties to even, in float arithmetic: exact for |v| < 2^22. */
static inline v8f v8_round(v8f v) { return (v + 12582912.f) - 12582912.f; }

/* roundf (ties away from zero) to int32, exact for |v| < 2^31: what ggml's q8_0 uses. */
static inline v8i v8_roundf_to_int(v8f v) {
    v8i t = __builtin_convertvector(v, v8i); /* truncates toward zero */
    const v8f frac = v - __builtin_convertvector(t, v8f);
    return t - (frac >= 0.5f) + (frac <= -0.5f); /* comparisons give -1 where true */
}

/* Pairwise, in a fixed order: short dependency chains (these sums sit on critical paths). */
static inline float v8_sum(v8f v) {
    const float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

static inline float v8_hmax(v8f v) {
    float m = v[0];
    for (int j = 1; j < 8; j++) m = v[j] > m ? v[j] : m;
    return m;
}

#endif
