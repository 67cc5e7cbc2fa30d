/* kernels_avx512.c — AVX-512 (F/BW/VL/VNNI) kernels: integer dots use VNNI vpdpbusd on 256-bit registers (the
 * lane structure the exactness rule of kernels.h fixes), float dots use 512-bit registers; also ggml's vector
 * expf. Only called when dispatch.c saw AVX-512 with VNNI. */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <math.h>
#include <string.h>

#include "expf_avx512.h"
#include "kernels.h"

#define QRT_VNNI 1
#define QRT_SUFFIX avx512
#include "kernels_x86.inc"

static inline __m512 load_f16(const qrt_half *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m512 load_bf16(const qrt_bf16 *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* the orders of kernels_ref.c's vecdot_order / sgemm_order, as ggml's AVX-512 code runs them */
static float dot_f32(int64_t n, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t np = n & ~(int64_t)63;
    for (int64_t i = 0; i < np; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), a3);
    }
    a0 = _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
    float sum = _mm512_reduce_add_ps(a0);
    for (int64_t i = np; i < n; i++) sum = fmaf(x[i], y[i], sum);
    return sum;
}

static float dot_f16(int64_t n, const void *vx, const void *vy) {
    const qrt_half *x = vx, *y = vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t np = n & ~(int64_t)63;
    for (int64_t i = 0; i < np; i += 64) {
        a0 = _mm512_fmadd_ps(load_f16(x + i), load_f16(y + i), a0);
        a1 = _mm512_fmadd_ps(load_f16(x + i + 16), load_f16(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(load_f16(x + i + 32), load_f16(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(load_f16(x + i + 48), load_f16(y + i + 48), a3);
    }
    a0 = _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
    double sum = _mm512_reduce_add_ps(a0);
    for (int64_t i = np; i < n; i++) sum += (double)(qrt_fp16_to_fp32(x[i]) * qrt_fp16_to_fp32(y[i]));
    return (float)sum;
}

static float batch_dot_f32(int64_t n, const void *vx, const void *vy) {
    if (n % 16) return dot_f32(n, vx, vy);
    const float *x = vx, *y = vy;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc);
    return _mm512_reduce_add_ps(acc);
}

static float batch_dot_f16(int64_t n, const void *vx, const void *vy) {
    if (n % 16) return dot_f16(n, vx, vy);
    const qrt_half *x = vx, *y = vy;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(load_f16(x + i), load_f16(y + i), acc);
    return _mm512_reduce_add_ps(acc);
}

static float dot_bf16(int64_t n, const void *vx, const void *vy) {
    const qrt_bf16 *x = vx, *y = vy;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(load_bf16(x + i), load_bf16(y + i), a0);
        a1 = _mm512_fmadd_ps(load_bf16(x + i + 16), load_bf16(y + i + 16), a1);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(load_bf16(x + i), load_bf16(y + i), a0);
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    for (; i < n; i++) sum += qrt_bf16_to_fp32(x[i]) * qrt_bf16_to_fp32(y[i]);
    return sum;
}


void qrt_expf16_avx512(float *y, const float *x) { _mm512_storeu_ps(y, qrt_v_expf(_mm512_loadu_ps(x))); }

/* ---- attention in ggml's orders (scalar reference: kernels_ref.c) ---- */

static inline __m512 load_kv(const void *base, size_t index, int f16) {
    return f16 ? load_f16((const qrt_half *)base + index) : _mm512_loadu_ps((const float *)base + index);
}

/* x rounded to f16 and back (vcvtps2ph rounds to nearest even, subnormals included: qrt_fp32_to_fp16's rule) */
static inline __m512 round_f16(__m512 x) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
static inline float round_f16_1(float x) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph(_mm_set_ss(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
}

/* 16 lane vectors reduced each in _mm512_reduce_add_ps's tree at once; lane p of the result is the sum of v[p].
 * Every add pairs the partial sums the single-vector reduction pairs (see kernels_float_tiles.c). */
static inline __m512 reduce16x16(const __m512 v[16]) {
    __m512 l1[8], l2[4], l3[2];
    /* input order such that the result lands in lane order: slot 4r + j takes vector 4j + r */
    for (int k = 0; k < 8; k++) {
        const int m0 = 2 * k, m1 = 2 * k + 1;
        const __m512 a = v[(m0 % 4) * 4 + m0 / 4], b = v[(m1 % 4) * 4 + m1 / 4];
        l1[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int k = 0; k < 4; k++)
        l2[k] = _mm512_add_ps(_mm512_shuffle_f32x4(l1[2 * k], l1[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(l1[2 * k], l1[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int k = 0; k < 2; k++)
        l3[k] = _mm512_add_ps(_mm512_shuffle_ps(l2[2 * k], l2[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_ps(l2[2 * k], l2[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* the 16 lanes of one score before the final reduction: ggml_vec_dot's 4 accumulators folded, or tinyBLAS's one */
static inline __attribute__((always_inline)) __m512 score_lanes(const void *k, size_t row, const float *q, int hd,
                                                                int f16, int vecdot) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    if (vecdot) {
        for (int i = 0; i < hd; i += 64) {
            a0 = _mm512_fmadd_ps(load_kv(k, row + i, f16), _mm512_loadu_ps(q + i), a0);
            a1 = _mm512_fmadd_ps(load_kv(k, row + i + 16, f16), _mm512_loadu_ps(q + i + 16), a1);
            a2 = _mm512_fmadd_ps(load_kv(k, row + i + 32, f16), _mm512_loadu_ps(q + i + 32), a2);
            a3 = _mm512_fmadd_ps(load_kv(k, row + i + 48, f16), _mm512_loadu_ps(q + i + 48), a3);
        }
        return _mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3));
    }
    for (int i = 0; i < hd; i += 16) a0 = _mm512_fmadd_ps(load_kv(k, row + i, f16), _mm512_loadu_ps(q + i), a0);
    return a0;
}

static void scores_avx512(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                          int vecdot, float scale) {
    const __m512 vscale = _mm512_set1_ps(scale);
    int t = 0;
    for (; t + 16 <= n_pos; t += 16) { /* 16 positions, their reductions in one transposed pass */
        __m512 lanes[16];
        for (int p = 0; p < 16; p++) lanes[p] = score_lanes(k, (size_t)(t + p) * stride, q, hd, f16, vecdot);
        _mm512_storeu_ps(att + t, _mm512_mul_ps(reduce16x16(lanes), vscale));
    }
    for (; t < n_pos; t++) att[t] = _mm512_reduce_add_ps(score_lanes(k, (size_t)t * stride, q, hd, f16, vecdot)) * scale;
}

void qrt_attn_scores_avx512(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                            int vecdot, float scale) {
    if (hd % 64 != 0 || hd > 1024) {
        qrt_attn_scores_scalar(att, q, k, n_pos, stride, hd, f16, vecdot, scale);
        return;
    }
    float qr[1024];
    for (int i = 0; i < hd; i += 16) {
        const __m512 x = _mm512_loadu_ps(q + i);
        _mm512_storeu_ps(qr + i, f16 ? round_f16(x) : x);
    }
    /* one instantiation per (f16, vecdot): the loads and the fold are then straight-line code */
    if (f16 && vecdot) scores_avx512(att, qr, k, n_pos, stride, hd, 1, 1, scale);
    else if (f16) scores_avx512(att, qr, k, n_pos, stride, hd, 1, 0, scale);
    else if (vecdot) scores_avx512(att, qr, k, n_pos, stride, hd, 0, 1, scale);
    else scores_avx512(att, qr, k, n_pos, stride, hd, 0, 0, scale);
}

/* tinyBLAS order (16 accumulator lanes, position t into lane t mod 16), 16 output values at a time: the 16 lane
 * accumulators stay in registers over all positions */
static inline __attribute__((always_inline)) void values_sgemm(float *out, const float *att, const void *v,
                                                               int n_pos, int stride, int hd, int f16) {
    for (int i = 0; i < hd; i += 16) {
        __m512 lane[16];
        for (int l = 0; l < 16; l++) lane[l] = _mm512_setzero_ps();
        for (int t = 0; t < n_pos; t += 16) {
            const __mmask16 live = n_pos - t >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n_pos - t)) - 1);
            __m512 w16 = _mm512_maskz_loadu_ps(live, att + t);
            float w[16];
            _mm512_storeu_ps(w, f16 ? round_f16(w16) : w16);
            if (live == 0xFFFF) {
                for (int l = 0; l < 16; l++)
                    lane[l] = _mm512_fmadd_ps(load_kv(v, (size_t)(t + l) * stride + i, f16), _mm512_set1_ps(w[l]), lane[l]);
            } else { /* the last positions; constant lane indices keep the accumulators in registers */
#pragma GCC unroll 16
                for (int l = 0; l < 16; l++)
                    if (t + l < n_pos)
                        lane[l] = _mm512_fmadd_ps(load_kv(v, (size_t)(t + l) * stride + i, f16), _mm512_set1_ps(w[l]),
                                                  lane[l]);
            }
        }
        for (int l = 0; l < 8; l++) lane[l] = _mm512_add_ps(lane[l + 8], lane[l]);
        for (int l = 0; l < 4; l++) lane[l] = _mm512_add_ps(lane[l + 4], lane[l]);
        _mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_add_ps(lane[0], lane[2]), _mm512_add_ps(lane[1], lane[3])));
    }
}

void qrt_attn_values_avx512(float *out, const float *att, const void *v, int n_pos, int stride, int hd, int f16,
                            int vecdot, float *scratch) {
    if (hd % 16 != 0 || hd > 1024) {
        qrt_attn_values_scalar(out, att, v, n_pos, stride, hd, f16, vecdot, scratch);
        return;
    }
    if (!vecdot) {
        if (f16) values_sgemm(out, att, v, n_pos, stride, hd, 1);
        else values_sgemm(out, att, v, n_pos, stride, hd, 0);
        return;
    }
    /* ggml_vec_dot order: 64 accumulator rows of hd floats, position t added into row t mod 64 (positions in
     * order within a row), then the rows summed. Each row is accumulated in registers, 64 values at a time, and
     * stored once into scratch; rows from n_pos on would stay zeros: they are neither stored nor loaded (the sums
     * below still add them, as literal zeros: the same operations, so the same bits) */
    const int used = n_pos < 64 ? n_pos : 64;
    for (int i0 = 0; i0 < hd; i0 += 64) {
        const int width = hd - i0 < 64 ? hd - i0 : 64; /* a multiple of 16 */
        for (int r = 0; r < used; r++) {
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int t = r; t < n_pos; t += 64) {
                float a = att[t];
                if (f16) a = round_f16_1(a);
                const __m512 w = _mm512_set1_ps(a);
                const size_t row = (size_t)t * stride + (size_t)i0;
                for (int j = 0; j < width / 16; j++) acc[j] = _mm512_fmadd_ps(load_kv(v, row + 16 * j, f16), w, acc[j]);
            }
            for (int j = 0; j < width / 16; j++) _mm512_storeu_ps(scratch + (size_t)r * hd + i0 + 16 * j, acc[j]);
        }
    }
#define ROW(r) ((r) < used ? _mm512_loadu_ps(scratch + (size_t)(r) * hd + i) : _mm512_setzero_ps())
    for (int i = 0; i < hd; i += 16) {
        __m512 lane[16];
        for (int l = 0; l < 16; l++) {
            const __m512 s0 = ROW(l), s2 = ROW(32 + l);
            const __m512 s1 = ROW(16 + l), s3 = ROW(48 + l);
            lane[l] = _mm512_add_ps(_mm512_add_ps(s0, s2), _mm512_add_ps(s1, s3));
        }
        for (int l = 0; l < 8; l++) lane[l] = _mm512_add_ps(lane[l + 8], lane[l]);
        for (int l = 0; l < 4; l++) lane[l] = _mm512_add_ps(lane[l + 4], lane[l]);
        _mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_add_ps(lane[0], lane[2]), _mm512_add_ps(lane[1], lane[3])));
    }
#undef ROW
}

/* ---- the heads of one kv head together, in the prompt order: each key or value row is converted once per group
 * instead of once per head; every head's products and sums are those of its own call above ---- */

/* scores of NQ heads (q rows rounded already, hd apart) for 16 positions at a time, 4 positions x NQ heads of
 * accumulators in registers, then each head's 16 through the same transposed reduction */
static inline __attribute__((always_inline)) void scores_group_sgemm(float *att, size_t as, const float *q,
                                                                     const int NQ, const void *k, int n_pos,
                                                                     int stride, int hd, int f16, float scale) {
    const __m512 vscale = _mm512_set1_ps(scale);
    int t = 0;
    for (; t + 16 <= n_pos; t += 16) {
        __m512 lanes[QRT_ATTN_GROUP_MAX][16];
        for (int p0 = 0; p0 < 16; p0 += 4) {
            __m512 acc[QRT_ATTN_GROUP_MAX][4];
            for (int j = 0; j < NQ; j++)
                for (int p = 0; p < 4; p++) acc[j][p] = _mm512_setzero_ps();
            for (int i = 0; i < hd; i += 16) {
                __m512 key[4];
                for (int p = 0; p < 4; p++) key[p] = load_kv(k, (size_t)(t + p0 + p) * stride + i, f16);
                for (int j = 0; j < NQ; j++) {
                    const __m512 qv = _mm512_loadu_ps(q + (size_t)j * hd + i);
                    for (int p = 0; p < 4; p++) acc[j][p] = _mm512_fmadd_ps(key[p], qv, acc[j][p]);
                }
            }
            for (int j = 0; j < NQ; j++)
                for (int p = 0; p < 4; p++) lanes[j][p0 + p] = acc[j][p];
        }
        for (int j = 0; j < NQ; j++) _mm512_storeu_ps(att + j * as + t, _mm512_mul_ps(reduce16x16(lanes[j]), vscale));
    }
    for (; t < n_pos; t++)
        for (int j = 0; j < NQ; j++)
            att[j * as + t] =
                _mm512_reduce_add_ps(score_lanes(k, (size_t)t * stride, q + (size_t)j * hd, hd, f16, 0)) * scale;
}

void qrt_attn_scores_group_avx512(float *att, size_t att_stride, const float *q, int n_q, const void *k, int n_pos,
                                  int stride, int hd, int f16, int vecdot, float scale) {
    if (vecdot || hd % 64 != 0 || hd > 1024 || n_q < 1 || n_q > QRT_ATTN_GROUP_MAX) {
        for (int j = 0; j < n_q; j++)
            qrt_attn_scores_avx512(att + j * att_stride, q + (size_t)j * hd, k, n_pos, stride, hd, f16, vecdot, scale);
        return;
    }
    float qr[QRT_ATTN_GROUP_MAX * 1024];
    for (int i = 0; i < n_q * hd; i += 16) {
        const __m512 x = _mm512_loadu_ps(q + i);
        _mm512_storeu_ps(qr + i, f16 ? round_f16(x) : x);
    }
#define SCORES_GROUP(NQ)                                                                                           \
    (f16 ? scores_group_sgemm(att, att_stride, qr, NQ, k, n_pos, stride, hd, 1, scale)                            \
         : scores_group_sgemm(att, att_stride, qr, NQ, k, n_pos, stride, hd, 0, scale))
    switch (n_q) {
    case 1: SCORES_GROUP(1); break;
    case 2: SCORES_GROUP(2); break;
    case 3: SCORES_GROUP(3); break;
    default: SCORES_GROUP(4); break;
    }
#undef SCORES_GROUP
}

/* values_sgemm for NQ heads: lane l of a head takes positions t = l mod 16, so 4 lanes at a time for every head
 * keep NQ x 4 accumulators in registers and read each value row once */
static inline __attribute__((always_inline)) void values_group_sgemm(float *out, const float *att, size_t as,
                                                                     const int NQ, const void *v, int n_pos,
                                                                     int stride, int hd, int f16) {
    for (int i = 0; i < hd; i += 16) {
        __m512 lane[QRT_ATTN_GROUP_MAX][16];
        for (int l0 = 0; l0 < 16; l0 += 4) {
            __m512 acc[QRT_ATTN_GROUP_MAX][4];
            for (int j = 0; j < NQ; j++)
                for (int p = 0; p < 4; p++) acc[j][p] = _mm512_setzero_ps();
            for (int t = l0; t < n_pos; t += 16)
                for (int p = 0; p < 4 && t + p < n_pos; p++) {
                    const __m512 value = load_kv(v, (size_t)(t + p) * stride + i, f16);
                    for (int j = 0; j < NQ; j++)
                        acc[j][p] = _mm512_fmadd_ps(value, _mm512_set1_ps(att[j * as + t + p]), acc[j][p]);
                }
            for (int j = 0; j < NQ; j++)
                for (int p = 0; p < 4; p++) lane[j][l0 + p] = acc[j][p];
        }
        for (int j = 0; j < NQ; j++) { /* values_sgemm's tree */
            __m512 *ln = lane[j];
            for (int l = 0; l < 8; l++) ln[l] = _mm512_add_ps(ln[l + 8], ln[l]);
            for (int l = 0; l < 4; l++) ln[l] = _mm512_add_ps(ln[l + 4], ln[l]);
            const __m512 sum = _mm512_add_ps(_mm512_add_ps(ln[0], ln[2]), _mm512_add_ps(ln[1], ln[3]));
            _mm512_storeu_ps(out + (size_t)j * hd + i, sum);
        }
    }
}

void qrt_attn_values_group_avx512(float *out, float *att, size_t att_stride, int n_q, const void *v, int n_pos,
                                  int stride, int hd, int f16, int vecdot, float *scratch) {
    if (vecdot || hd % 16 != 0 || hd > 1024 || n_q < 1 || n_q > QRT_ATTN_GROUP_MAX) {
        for (int j = 0; j < n_q; j++)
            qrt_attn_values_avx512(out + (size_t)j * hd, att + j * att_stride, v, n_pos, stride, hd, f16, vecdot,
                                   scratch);
        return;
    }
    if (f16) /* the weights as values_sgemm rounds them */
        for (int j = 0; j < n_q; j++) {
            float *w = att + j * att_stride;
            int t = 0;
            for (; t + 16 <= n_pos; t += 16) _mm512_storeu_ps(w + t, round_f16(_mm512_loadu_ps(w + t)));
            for (; t < n_pos; t++) w[t] = round_f16_1(w[t]);
        }
#define VALUES_GROUP(NQ)                                                                                           \
    (f16 ? values_group_sgemm(out, att, att_stride, NQ, v, n_pos, stride, hd, 1)                                  \
         : values_group_sgemm(out, att, att_stride, NQ, v, n_pos, stride, hd, 0))
    switch (n_q) {
    case 1: VALUES_GROUP(1); break;
    case 2: VALUES_GROUP(2); break;
    case 3: VALUES_GROUP(3); break;
    default: VALUES_GROUP(4); break;
    }
#undef VALUES_GROUP
}

/* op_softmax's order (ggml_vec_soft_max_f32): exp in blocks of 16 (lanes past n are exp(-inf) = 0), each block
 * summed in _mm512_reduce_add_ps's tree, block sums accumulated in double, one float scale at the end */
void qrt_attn_softmax_avx512(float *x, int n) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 live = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), live, x + i));
    }
    const __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    double sum = 0.0;
    for (int i = 0; i < n; i += 16) {
        const __mmask16 live = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        const __m512 in = _mm512_mask_sub_ps(_mm512_set1_ps(-INFINITY), live, _mm512_maskz_loadu_ps(live, x + i), max);
        const __m512 e = qrt_v_expf(in);
        _mm512_mask_storeu_ps(x + i, live, e);
        sum += (double)_mm512_reduce_add_ps(e);
    }
    const __m512 inv = _mm512_set1_ps((float)(1.0 / sum));
    for (int i = 0; i < n; i += 16) {
        const __mmask16 live = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, live, _mm512_mul_ps(_mm512_maskz_loadu_ps(live, x + i), inv));
    }
}

/* qrt_geglu_scalar 16 at a time: F16C rounding, a gather from the table, the same two clamps */
void qrt_geglu_avx512(float *gate, const float *up, int n) {
    const float *table = qrt_gelu_f16_table();
    const __m512 lo = _mm512_set1_ps(-10.0f), hi = _mm512_set1_ps(10.0f);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(gate + i), u = _mm512_loadu_ps(up + i);
        const __m512i idx = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m512 y = _mm512_mul_ps(_mm512_i32gather_ps(idx, table, 4), u);
        y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, hi, _CMP_GE_OQ), _mm512_mul_ps(x, u));
        y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, lo, _CMP_LE_OQ), _mm512_setzero_ps());
        _mm512_storeu_ps(gate + i, y);
    }
    qrt_geglu_scalar(gate + i, up + i, n - i);
}

void qrt_kernels_register_avx512(qrt_kernel_entry t[QRT_TYPE_COUNT]) {
    t[QRT_TYPE_F32].vec_dot[QRT_VARIANT_AVX512] = dot_f32;
    t[QRT_TYPE_F16].vec_dot[QRT_VARIANT_AVX512] = dot_f16;
    t[QRT_TYPE_F32].batch_dot[QRT_VARIANT_AVX512] = batch_dot_f32;
    t[QRT_TYPE_F16].batch_dot[QRT_VARIANT_AVX512] = batch_dot_f16;
    t[QRT_TYPE_BF16].vec_dot[QRT_VARIANT_AVX512] = dot_bf16;
    register_int_avx512(t, QRT_VARIANT_AVX512);
    qrt_float_tiles_register_avx512(t);
}
#else
#include "kernels.h"

void qrt_kernels_register_avx512(qrt_kernel_entry t[QRT_TYPE_COUNT]) { (void)t; }
void qrt_expf16_avx512(float *y, const float *x) { qrt_expf16_scalar(y, x); }
void qrt_geglu_avx512(float *gate, const float *up, int n) { qrt_geglu_scalar(gate, up, n); }
void qrt_attn_scores_avx512(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                            int vecdot, float scale) {
    qrt_attn_scores_scalar(att, q, k, n_pos, stride, hd, f16, vecdot, scale);
}
void qrt_attn_values_avx512(float *out, const float *att, const void *v, int n_pos, int stride, int hd, int f16,
                            int vecdot, float *scratch) {
    qrt_attn_values_scalar(out, att, v, n_pos, stride, hd, f16, vecdot, scratch);
}
void qrt_attn_scores_group_avx512(float *att, size_t att_stride, const float *q, int n_q, const void *k, int n_pos,
                                  int stride, int hd, int f16, int vecdot, float scale) {
    for (int j = 0; j < n_q; j++)
        qrt_attn_scores_scalar(att + j * att_stride, q + (size_t)j * hd, k, n_pos, stride, hd, f16, vecdot, scale);
}
void qrt_attn_values_group_avx512(float *out, float *att, size_t att_stride, int n_q, const void *v, int n_pos,
                                  int stride, int hd, int f16, int vecdot, float *scratch) {
    for (int j = 0; j < n_q; j++)
        qrt_attn_values_scalar(out + (size_t)j * hd, att + j * att_stride, v, n_pos, stride, hd, f16, vecdot, scratch);
}
void qrt_attn_softmax_avx512(float *x, int n) { qrt_attn_softmax_scalar(x, n); }
#endif
