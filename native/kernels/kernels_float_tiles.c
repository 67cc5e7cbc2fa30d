/* kernels_float_tiles.c — prompt tiles for f32/f16 weights (AVX-512 and AVX2): 4 weight rows x QRT_TILE_NT
 * tokens per call, registered in the kernel table's tile slot by the AVX2/AVX-512 kernel files.
 *
 * (AVX-512 calls take 8 rows: two such register tiles.) Every (row, token) pair keeps its own accumulator, fed in the order of the variant's batch_dot (tinyBLAS: one
 * 16-lane accumulator over k, lane l taking k = l mod 16 in increasing k, one fused multiply-add per product)
 * and reduced in the same tree (kernels_ref.c's reduce16_tree, which is _mm512_reduce_add_ps's): so a tile's
 * outputs are bit-identical to batch_dot's, and f32 prompt logits stay equal to llama.cpp's. The win is reuse:
 * each loaded weight vector feeds 4 tokens and each activation vector 4 rows, where batch_dot loads both per
 * product. AVX2 has no tinyBLAS kernel of its own here, so this file also gives it a batch_dot in the same
 * 16-lane order (two 8-lane halves), which makes f32/f16 prompt results equal across scalar, AVX2 and AVX-512.
 * Rows whose length is not a multiple of 16 take the variant's own batch_dot for every pair (ggml falls back to
 * vec_dot there too).
 */
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TILE_NR 4        /* rows per register tile (4 rows x 4 tokens of accumulators) */
#define TILE_NR_AVX512 8 /* rows per AVX-512 call: two register tiles over the same 4 activation rows, the second
                          * reading them from L1 (halves the L2 traffic of the activations, which dominates) */
_Static_assert(QRT_TILE_NT == 4, "the reductions below hold 4 rows x 4 tokens");

/* every pair through the variant's own dot (compiled for the baseline ISA: AVX2 machines call it too) */
static void tile_pairs(qrt_vec_dot_fn dot, int nr, int64_t n, const uint8_t *x, size_t xs, const uint8_t *y,
                       size_t ys, float *out, size_t os) {
    for (int t = 0; t < QRT_TILE_NT; t++)
        for (int r = 0; r < nr; r++) out[(size_t)t * os + r] = dot(n, x + (size_t)r * xs, y + (size_t)t * ys);
}

/* ---------------------------------------------------------------- AVX-512 */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")

static qrt_vec_dot_fn batch_f32_avx512, batch_f16_avx512; /* the table's batch_dot, for lengths % 16 != 0 */

static inline __attribute__((always_inline)) __m512 load16(const uint8_t *row, int64_t i, int f16) {
    return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const qrt_half *)row + i)))
               : _mm512_loadu_ps((const float *)row + i);
}

/* The 16 accumulators acc[4 * r + t] reduced each in _mm512_reduce_add_ps's tree (v[i] + v[i + 8], then
 * a[i] + a[i + 4], then (b0 + b2) + (b1 + b3)), all at once: every add below pairs the same two partial sums
 * the single-vector reduction pairs, only several accumulators share a register. Ends with 128-bit chunk t
 * holding rows 0..3 of token t. */
static inline __attribute__((always_inline)) void reduce_store_avx512(const __m512 acc[16], float *out, size_t os) {
    __m512 l1[8], l2[4], l3[2];
    for (int k = 0; k < 8; k++) { /* [A0+A2, A1+A3, B0+B2, B1+B3] in 128-bit chunks: 8-lane halves added */
        const __m512 a = acc[2 * k], b = acc[2 * k + 1];
        l1[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int k = 0; k < 4; k++) { /* chunk j: accumulator 4k + j, its 4-lane halves added */
        const __m512 x = l1[2 * k], y = l1[2 * k + 1];
        l2[k] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    for (int k = 0; k < 2; k++) { /* per chunk: [P.b0+P.b2, P.b1+P.b3, Q.b0+Q.b2, Q.b1+Q.b3] */
        const __m512 p = l2[2 * k], q = l2[2 * k + 1];
        l3[k] = _mm512_add_ps(_mm512_shuffle_ps(p, q, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_ps(p, q, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    /* chunk j, lane r: accumulator 4r + j = row r, token j */
    const __m512 sum = _mm512_add_ps(_mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm_storeu_ps(out, _mm512_extractf32x4_ps(sum, 0));
    _mm_storeu_ps(out + os, _mm512_extractf32x4_ps(sum, 1));
    _mm_storeu_ps(out + 2 * os, _mm512_extractf32x4_ps(sum, 2));
    _mm_storeu_ps(out + 3 * os, _mm512_extractf32x4_ps(sum, 3));
}

static inline __attribute__((always_inline)) void tile_avx512(int64_t n, const uint8_t *x, size_t xs,
                                                               const uint8_t *y, size_t ys, float *out, size_t os,
                                                               int f16) {
    __m512 acc[16];
    for (int k = 0; k < 16; k++) acc[k] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __m512 w0 = load16(x, i, f16), w1 = load16(x + xs, i, f16);
        const __m512 w2 = load16(x + 2 * xs, i, f16), w3 = load16(x + 3 * xs, i, f16);
        for (int t = 0; t < 4; t++) {
            const __m512 a = load16(y + (size_t)t * ys, i, f16);
            acc[t] = _mm512_fmadd_ps(w0, a, acc[t]);
            acc[4 + t] = _mm512_fmadd_ps(w1, a, acc[4 + t]);
            acc[8 + t] = _mm512_fmadd_ps(w2, a, acc[8 + t]);
            acc[12 + t] = _mm512_fmadd_ps(w3, a, acc[12 + t]);
        }
    }
    reduce_store_avx512(acc, out, os);
}

static void tile_f32_avx512(int64_t n, const void *x, size_t xs, const void *y, size_t ys, float *out, size_t os) {
    if (n % 16) {
        tile_pairs(batch_f32_avx512, TILE_NR_AVX512, n, x, xs, y, ys, out, os);
        return;
    }
    tile_avx512(n, x, xs, y, ys, out, os, 0);
    tile_avx512(n, (const uint8_t *)x + 4 * xs, xs, y, ys, out + 4, os, 0);
}

static void tile_f16_avx512(int64_t n, const void *x, size_t xs, const void *y, size_t ys, float *out, size_t os) {
    if (n % 16) {
        tile_pairs(batch_f16_avx512, TILE_NR_AVX512, n, x, xs, y, ys, out, os);
        return;
    }
    tile_avx512(n, x, xs, y, ys, out, os, 1);
    tile_avx512(n, (const uint8_t *)x + 4 * xs, xs, y, ys, out + 4, os, 1);
}

#pragma GCC pop_options

/* ---------------------------------------------------------------- AVX2 */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

static qrt_vec_dot_fn dot_f32_avx2, dot_f16_avx2; /* the table's vec_dot, for lengths % 16 != 0 */

static inline __attribute__((always_inline)) __m256 load8(const uint8_t *row, int64_t i, int f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const qrt_half *)row + i)))
               : _mm256_loadu_ps((const float *)row + i);
}

/* reduce16_tree of the 16 lanes lo (k mod 16 < 8) and hi: (lo + hi), its 128-bit halves, then (b0+b2)+(b1+b3) */
static inline __attribute__((always_inline)) float reduce_avx2(__m256 lo, __m256 hi) {
    const __m256 a = _mm256_add_ps(lo, hi);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) float batch_avx2(int64_t n, const uint8_t *x, const uint8_t *y,
                                                              int f16) {
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    for (int64_t i = 0; i < n; i += 16) {
        lo = _mm256_fmadd_ps(load8(x, i, f16), load8(y, i, f16), lo);
        hi = _mm256_fmadd_ps(load8(x, i + 8, f16), load8(y, i + 8, f16), hi);
    }
    return reduce_avx2(lo, hi);
}

static float batch_dot_f32_avx2(int64_t n, const void *x, const void *y) {
    return n % 16 ? dot_f32_avx2(n, x, y) : batch_avx2(n, x, y, 0);
}

static float batch_dot_f16_avx2(int64_t n, const void *x, const void *y) {
    return n % 16 ? dot_f16_avx2(n, x, y) : batch_avx2(n, x, y, 1);
}

/* 16 ymm registers cannot hold 16 pairs x 2 halves of accumulators: each half of the 16 lanes is an independent
 * sum, so a pass over k accumulates one half for 2 rows x 4 tokens (8 registers, plus 2 weights and 4 activations) */
static inline __attribute__((always_inline)) void half_pass_avx2(int64_t n, int half, const uint8_t *x, size_t xs,
                                                                 const uint8_t *y, size_t ys, __m256 acc[8], int f16) {
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int64_t i = half; i < n; i += 16) {
        const __m256 w0 = load8(x, i, f16), w1 = load8(x + xs, i, f16);
        for (int t = 0; t < 4; t++) {
            const __m256 a = load8(y + (size_t)t * ys, i, f16);
            acc[t] = _mm256_fmadd_ps(w0, a, acc[t]);
            acc[4 + t] = _mm256_fmadd_ps(w1, a, acc[4 + t]);
        }
    }
}

static inline __attribute__((always_inline)) void tile_avx2(int64_t n, const uint8_t *x, size_t xs, const uint8_t *y,
                                                            size_t ys, float *out, size_t os, int f16) {
    for (int r = 0; r < TILE_NR; r += 2) {
        __m256 lo[8], hi[8];
        half_pass_avx2(n, 0, x + (size_t)r * xs, xs, y, ys, lo, f16);
        half_pass_avx2(n, 8, x + (size_t)r * xs, xs, y, ys, hi, f16);
        for (int t = 0; t < 4; t++) {
            out[(size_t)t * os + r] = reduce_avx2(lo[t], hi[t]);
            out[(size_t)t * os + r + 1] = reduce_avx2(lo[4 + t], hi[4 + t]);
        }
    }
}

static void tile_f32_avx2(int64_t n, const void *x, size_t xs, const void *y, size_t ys, float *out, size_t os) {
    if (n % 16) tile_pairs(dot_f32_avx2, TILE_NR, n, x, xs, y, ys, out, os);
    else tile_avx2(n, x, xs, y, ys, out, os, 0);
}

static void tile_f16_avx2(int64_t n, const void *x, size_t xs, const void *y, size_t ys, float *out, size_t os) {
    if (n % 16) tile_pairs(dot_f16_avx2, TILE_NR, n, x, xs, y, ys, out, os);
    else tile_avx2(n, x, xs, y, ys, out, os, 1);
}

#pragma GCC pop_options

/* ---------------------------------------------------------------- registration */

void qrt_float_tiles_register_avx512(qrt_kernel_entry t[QRT_TYPE_COUNT]) {
    batch_f32_avx512 = t[QRT_TYPE_F32].batch_dot[QRT_VARIANT_AVX512];
    batch_f16_avx512 = t[QRT_TYPE_F16].batch_dot[QRT_VARIANT_AVX512];
    if (batch_f32_avx512) {
        t[QRT_TYPE_F32].tile[QRT_VARIANT_AVX512] = tile_f32_avx512;
        t[QRT_TYPE_F32].tile_nr[QRT_VARIANT_AVX512] = TILE_NR_AVX512;
    }
    if (batch_f16_avx512) {
        t[QRT_TYPE_F16].tile[QRT_VARIANT_AVX512] = tile_f16_avx512;
        t[QRT_TYPE_F16].tile_nr[QRT_VARIANT_AVX512] = TILE_NR_AVX512;
    }
}

void qrt_float_tiles_register_avx2(qrt_kernel_entry t[QRT_TYPE_COUNT]) {
    dot_f32_avx2 = t[QRT_TYPE_F32].vec_dot[QRT_VARIANT_AVX2];
    dot_f16_avx2 = t[QRT_TYPE_F16].vec_dot[QRT_VARIANT_AVX2];
    if (dot_f32_avx2) {
        t[QRT_TYPE_F32].batch_dot[QRT_VARIANT_AVX2] = batch_dot_f32_avx2;
        t[QRT_TYPE_F32].tile[QRT_VARIANT_AVX2] = tile_f32_avx2;
        t[QRT_TYPE_F32].tile_nr[QRT_VARIANT_AVX2] = TILE_NR;
    }
    if (dot_f16_avx2) {
        t[QRT_TYPE_F16].batch_dot[QRT_VARIANT_AVX2] = batch_dot_f16_avx2;
        t[QRT_TYPE_F16].tile[QRT_VARIANT_AVX2] = tile_f16_avx2;
        t[QRT_TYPE_F16].tile_nr[QRT_VARIANT_AVX2] = TILE_NR;
    }
}
#endif /* __x86_64__ */
