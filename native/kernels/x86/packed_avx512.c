/* packed_avx512.c — the x16 kernels for AVX-512 with VNNI: a group's 16 rows in one 512-bit vector. */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <immintrin.h>
#include <string.h>

#include "packed.h"

#define LANES 16
#define K(name) name##_avx512
typedef __m512i VI;
typedef __m512 VF;
#define qrt_h2f(h) _cvtsh_ss(h)
#define V_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define V_LOADH(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define V_STOREF(p, v) _mm512_storeu_ps(p, v)
#define V_SET1(x) _mm512_set1_epi32(x)
#define V_SET1F(x) _mm512_set1_ps(x)
#define V_ZERO() _mm512_setzero_si512()
#define V_ZEROF() _mm512_setzero_ps()
#define V_AND(a, b) _mm512_and_si512(a, b)
#define V_OR(a, b) _mm512_or_si512(a, b)
#define V_SUB(a, b) _mm512_sub_epi32(a, b)
#define V_SRL32(a, n) _mm512_srli_epi32(a, n)
#define V_SLL32(a, n) _mm512_slli_epi32(a, n)
#define V_ADD(a, b) _mm512_add_epi32(a, b)
#define V_SRL16(a, n) _mm512_srli_epi16(a, n)
#define V_SLL16(a, n) _mm512_slli_epi16(a, n)
#define V_MULLO(a, b) _mm512_mullo_epi32(a, b)
#define V_MADDUBS(u, s) _mm512_maddubs_epi16(u, s)
#define V_MADD16(a, b) _mm512_madd_epi16(a, b)
#define V_U8_TO_I32(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p)))
#define V_I8_TO_I32(p) _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p)))
#define V_U8_TO_I16(p) _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p)))
#define V_CVT(a) _mm512_cvtepi32_ps(a)
/* the int8 scales of 16 rows at pa and pb as one int16 pair (pa[r], pb[r]) per 32-bit lane r */
#define V_I8_PAIRS(pa, pb)                                                                                         \
    _mm512_cvtepi8_epi16(_mm256_set_m128i(_mm_unpackhi_epi8(_mm_loadu_si128((const __m128i *)(pa)),                \
                                                            _mm_loadu_si128((const __m128i *)(pb))),               \
                                          _mm_unpacklo_epi8(_mm_loadu_si128((const __m128i *)(pa)),                \
                                                            _mm_loadu_si128((const __m128i *)(pb)))))
#define V_DOT16(acc, a, b) _mm512_dpwssd_epi32(acc, a, b) /* acc + int16 pair products, exact */
#define V_ADDF(a, b) _mm512_add_ps(a, b)
#define V_SUBF(a, b) _mm512_sub_ps(a, b)
#define V_MUL(a, b) _mm512_mul_ps(a, b)
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
/* unsigned weight bytes (<= 15 or 63) times signed activation bytes, 4 per lane, into int32 */
#define V_DOT_U4(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
/* Lane sums that become floats start at the bits of 1.5 * 2^23 (QRT_Q8_FLOAT_BIAS): the exact int32 sum q of a
 * lane (|q| < 2^22: at most 32 products of 4-bit or 8-bit weights) then lands in the mantissa of the float
 * 1.5 * 2^23 + q, and one subtraction gives float(q) exactly, as vcvtdq2ps would. vpdpbusd and vcvtdq2ps both
 * need port 0 of Intel's cores, which bounds batches of tokens; the subtraction runs on port 0 or 5.
 * q8_0 weights are stored as q + 128: the same vpdpbusd, started at -128 * sum(y) plus that bias, and q5_0's at
 * -16 * sum(y) plus the bias (both kept among the activation sums, packed.h, so a load broadcasts them). */
#define V_Q8_PREP(v) (v)
#define V_Q8_START(ys, k) _mm512_set1_epi32((ys)[QRT_Q8_0_STARTS + (k)])
#define V_Q5_START(ys, k) _mm512_set1_epi32((ys)[QRT_Q5_0_STARTS + (k)])
#define V_LANE_START() _mm512_set1_epi32(QRT_Q8_FLOAT_BIAS)
#define V_LANE_TO_F(s) _mm512_sub_ps(_mm512_castsi512_ps(s), _mm512_set1_ps(1.5f * (1 << 23)))
#define V_DOT_Q8(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
/* tokens per pass: accumulators + decoded weights within the 32 vector registers */
#define PK_NT_Q4_0 8
#define PK_NT_Q8_0 2
#define PK_NT_Q4_K 4
#define PK_NT_Q6_K 4

#include "packed_simd.inc"

void qrt_packed_register_avx512(qrt_packed_entry table[QRT_TYPE_COUNT]) {
    K(register_packed)(table, QRT_VARIANT_AVX512);
}
#endif
