/* expf_avx512.h — exp of 16 floats, ggml's AVX-512 ggml_v_expf operation for operation (internal header; include
 * it from a file compiled for avx512f/dq: ~1 ulp, 0 below -104, inf above 89). Its scalar twin is
 * qrt_expf16_scalar in kernels_ref.c; the kernels use it so their exps equal llama.cpp's. */
#ifndef QRT_EXPF_AVX512_H
#define QRT_EXPF_AVX512_H
#include <immintrin.h>
#include <math.h>

static inline __attribute__((always_inline)) __m512 qrt_v_expf(__m512 x) {
    const __m512 r = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
    const __m512 n = _mm512_sub_ps(z, r);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __mmask16 d = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
    const __m512 u = _mm512_mul_ps(b, b);
    const __m512 j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
                        _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
        u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
    __m512 res = _mm512_scalef_ps(j, n);
    if (!_mm512_kortestz(d, d)) {
        const __m512 alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ),
                                                _mm512_set1_ps(INFINITY), _mm512_setzero_ps());
        res = _mm512_mask_blend_ps(d, res, alt);
    }
    return res;
}

#endif
