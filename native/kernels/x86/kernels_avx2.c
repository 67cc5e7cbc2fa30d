/* kernels_avx2.c — AVX2 + FMA + F16C dot kernels (256-bit). Integer kernels come from kernels_x86.inc with the
 * maddubs/madd product; float kernels keep 4 vector accumulators. Only called when dispatch.c saw AVX2. */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#include <math.h>
#include <string.h>

#include "kernels.h"

#define QRT_VNNI 0
#define QRT_SUFFIX avx2
#include "kernels_x86.inc"

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float dot_f32(int64_t n, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) sum += x[i] * y[i];
    return sum;
}

static inline __m256 load_f16(const qrt_half *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline __m256 load_bf16(const qrt_bf16 *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static float dot_f16(int64_t n, const void *vx, const void *vy) {
    const qrt_half *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(load_f16(x + i), load_f16(y + i), a0);
        a1 = _mm256_fmadd_ps(load_f16(x + i + 8), load_f16(y + i + 8), a1);
    }
    float sum = hsum_ps(_mm256_add_ps(a0, a1));
    for (; i < n; i++) sum += qrt_fp16_to_fp32(x[i]) * qrt_fp16_to_fp32(y[i]);
    return sum;
}

static float dot_bf16(int64_t n, const void *vx, const void *vy) {
    const qrt_bf16 *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(load_bf16(x + i), load_bf16(y + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16(x + i + 8), load_bf16(y + i + 8), a1);
    }
    float sum = hsum_ps(_mm256_add_ps(a0, a1));
    for (; i < n; i++) sum += qrt_bf16_to_fp32(x[i]) * qrt_bf16_to_fp32(y[i]);
    return sum;
}

void qrt_kernels_register_avx2(qrt_kernel_entry t[QRT_TYPE_COUNT]) {
    t[QRT_TYPE_F32].vec_dot[QRT_VARIANT_AVX2] = dot_f32;
    t[QRT_TYPE_F16].vec_dot[QRT_VARIANT_AVX2] = dot_f16;
    t[QRT_TYPE_BF16].vec_dot[QRT_VARIANT_AVX2] = dot_bf16;
    register_int_avx2(t, QRT_VARIANT_AVX2);
    qrt_float_tiles_register_avx2(t);
}
#else
#include "kernels.h"
void qrt_kernels_register_avx2(qrt_kernel_entry t[QRT_TYPE_COUNT]) { (void)t; }
#endif
