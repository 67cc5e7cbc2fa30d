/* packed_avx2.c — the x16 kernels for AVX2: a group as two halves of 8 rows in 256-bit vectors; the integer dots
 * by vpmaddubsw (pairs into int16, exact: 15 or 63 times 127, twice, stays below 32767) and vpmaddwd. */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <string.h>

#include "packed.h"

#define LANES 8
#define K(name) name##_avx2
typedef __m256i VI;
typedef __m256 VF;
#define qrt_h2f(h) _cvtsh_ss(h)
#define V_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define V_LOADH(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define V_STOREF(p, v) _mm256_storeu_ps(p, v)
#define V_SET1(x) _mm256_set1_epi32(x)
#define V_SET1F(x) _mm256_set1_ps(x)
#define V_ZERO() _mm256_setzero_si256()
#define V_ZEROF() _mm256_setzero_ps()
#define V_AND(a, b) _mm256_and_si256(a, b)
#define V_OR(a, b) _mm256_or_si256(a, b)
#define V_SUB(a, b) _mm256_sub_epi32(a, b)
#define V_SRL32(a, n) _mm256_srli_epi32(a, n)
#define V_SLL32(a, n) _mm256_slli_epi32(a, n)
#define V_ADD(a, b) _mm256_add_epi32(a, b)
#define V_SRL16(a, n) _mm256_srli_epi16(a, n)
#define V_SLL16(a, n) _mm256_slli_epi16(a, n)
#define V_MULLO(a, b) _mm256_mullo_epi32(a, b)
#define V_MADDUBS(u, s) _mm256_maddubs_epi16(u, s)
#define V_MADD16(a, b) _mm256_madd_epi16(a, b)
#define V_U8_TO_I32(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#define V_I8_TO_I32(p) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#define V_U8_TO_I16(p) _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p)))
#define V_CVT(a) _mm256_cvtepi32_ps(a)
#define V_I8_PAIRS(pa, pb)                                                                                         \
    _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(pa)), _mm_loadl_epi64((const __m128i *)(pb))))
#define V_DOT16(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#define V_ADDF(a, b) _mm256_add_ps(a, b)
#define V_SUBF(a, b) _mm256_sub_ps(a, b)
#define V_MUL(a, b) _mm256_mul_ps(a, b)
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define V_DOT_U4(acc, u, s) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
/* q8_0: q + 128 would saturate vpmaddubsw, so the weights go back to signed and the sign moves to y */
#define V_Q8_PREP(v) _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80))
#define V_Q8_START(ys, k) ((void)(ys), (void)(k), _mm256_setzero_si256())
#define V_DOT_Q8(acc, q, s)                                                                                        \
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(s, q)), \
                                            _mm256_set1_epi16(1)))
#define PK_NT_Q4_0 4
#define PK_NT_Q8_0 1
#define PK_NT_Q4_K 2
#define PK_NT_Q6_K 2

#include "packed_simd.inc"

void qrt_packed_register_avx2(qrt_packed_entry table[QRT_TYPE_COUNT]) { K(register_packed)(table, QRT_VARIANT_AVX2); }
#endif
