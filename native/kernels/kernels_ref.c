/* kernels_ref.c — the scalar reference dot products for every weight type, the k-quant block decoders the
 * reference (and some SIMD kernels) share, and activation conversion (f32 -> f16 / bf16 / q8_0 / q8_1 / q8_K).
 *
 * The references are written for clarity: decode a block to integers, sum exactly, combine in float with the
 * expression every variant uses (see kernels.h).
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "kernels.h"
#include "ops.h"

/* ---- activation conversion ---- */

/* Activation quantizers follow ggml's x86 path (the one llama.cpp runs here): scale 127/amax, round half to
 * even (ggml's nearest_int and _mm256_round_ps agree), so our q8 blocks equal llama.cpp's bit for bit. */
/* round half to even, as ggml's nearest_int (the q8_K quantizer uses it) */
static inline int nearest_int(float v) { return (int)lrintf(v); }

static void act_f32(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

static void act_f16(const float *x, void *vy, int64_t n) {
    qrt_half *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = qrt_fp32_to_fp16(x[i]);
}

static void act_bf16(const float *x, void *vy, int64_t n) {
    qrt_bf16 *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = qrt_fp32_to_bf16(x[i]);
}

static float block_amax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) amax = fmaxf(amax, fabsf(x[j]));
    return amax;
}

static void act_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        const float amax = block_amax(x, QK8_0);
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[i].d = qrt_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) y[i].qs[j] = (int8_t)nearest_int(x[j] * id);
    }
}

static void act_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
        const float amax = block_amax(x, QK8_1);
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[i].qs[j] = (int8_t)nearest_int(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].d = qrt_fp32_to_fp16(d);
        y[i].s = qrt_fp32_to_fp16((float)sum * d);
    }
}


static void act_q8_K(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* the largest-magnitude value maps to -127, so every quant fits int8 without clamping below */
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v > 127 ? 127 : v);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int k = 0; k < 16; k++) sum += y[i].qs[j * 16 + k];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

void qrt_act_from_float(int act_type, const float *x, void *y, int64_t n) {
    switch (act_type) {
    case QRT_TYPE_F32: act_f32(x, y, n); break;
    case QRT_TYPE_F16: act_f16(x, y, n); break;
    case QRT_TYPE_BF16: act_bf16(x, y, n); break;
    case QRT_TYPE_Q8_0: act_q8_0(x, y, n); break;
    case QRT_TYPE_Q8_1: act_q8_1(x, y, n); break;
    case QRT_TYPE_Q8_K: act_q8_K(x, y, n); break;
    default: break;
    }
}

/* ---- float types ---- */

/* ggml_vec_dot_f32/f16 order: 4 accumulators of 16 lanes over blocks of 64, folded (0+2, 1+3, 0+1) and reduced
 * in _mm512_reduce_add_ps's tree; the tail after the last block of 64 is added one product at a time. */
static float reduce16_tree(const float *v) {
    float a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = v[i + 8] + v[i];
    for (int i = 0; i < 4; i++) b[i] = a[i + 4] + a[i];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

static float vecdot_order(int64_t n, float (*at)(const void *, int64_t), const void *x, const void *y, int tail_double) {
    float lanes[64] = {0};
    const int64_t np = n & ~(int64_t)63;
    for (int64_t i = 0; i < np; i++) lanes[i & 63] = fmaf(at(x, i), at(y, i), lanes[i & 63]);
    for (int l = 0; l < 16; l++) {
        lanes[l] += lanes[32 + l];
        lanes[16 + l] += lanes[48 + l];
        lanes[l] += lanes[16 + l];
    }
    float sum = reduce16_tree(lanes);
    if (tail_double) { /* ggml_vec_dot_f16 keeps its sum in double */
        double d = sum;
        for (int64_t i = np; i < n; i++) d += (double)(at(x, i) * at(y, i));
        return (float)d;
    }
    for (int64_t i = np; i < n; i++) sum = fmaf(at(x, i), at(y, i), sum);
    return sum;
}

/* tinyBLAS order: one 16-lane accumulator over the whole row (n % 16 == 0, else ggml falls back to vec_dot) */
static float sgemm_order(int64_t n, float (*at)(const void *, int64_t), const void *x, const void *y) {
    float lanes[16] = {0};
    for (int64_t i = 0; i < n; i++) lanes[i & 15] = fmaf(at(x, i), at(y, i), lanes[i & 15]);
    return reduce16_tree(lanes);
}

static float at_f32(const void *p, int64_t i) { return ((const float *)p)[i]; }
static float at_f16(const void *p, int64_t i) { return qrt_fp16_to_fp32(((const qrt_half *)p)[i]); }

static float dot_f32(int64_t n, const void *x, const void *y) { return vecdot_order(n, at_f32, x, y, 0); }
static float dot_f16(int64_t n, const void *x, const void *y) { return vecdot_order(n, at_f16, x, y, 1); }
static float batch_dot_f32(int64_t n, const void *x, const void *y) {
    return n % 16 ? dot_f32(n, x, y) : sgemm_order(n, at_f32, x, y);
}
static float batch_dot_f16(int64_t n, const void *x, const void *y) {
    return n % 16 ? dot_f16(n, x, y) : sgemm_order(n, at_f16, x, y);
}

static float dot_bf16(int64_t n, const void *vx, const void *vy) {
    const qrt_bf16 *x = vx, *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)qrt_bf16_to_fp32(x[i]) * (double)qrt_bf16_to_fp32(y[i]);
    return (float)sum;
}

/* ---- 32-value block types: decode to int8 values, then the lane accumulation of kernels.h ---- */

/* acc[l] = fma(scale, lane sum l, acc[l]) over the 32 products of one block */
static inline void lanes_fma(float acc[8], float scale, const int8_t *xq, const int8_t *yq) {
    for (int l = 0; l < 8; l++) {
        int32_t lane = 0;
        for (int k = 4 * l; k < 4 * l + 4; k++) lane += xq[k] * yq[k];
        acc[l] = fmaf(scale, (float)lane, acc[l]);
    }
}

/* element j < 16 is the low nibble of byte j, element j + 16 its high nibble */
static inline void unpack_nibbles(const uint8_t *qs, int8_t *out, int offset) {
    for (int j = 0; j < 16; j++) {
        out[j] = (int8_t)((qs[j] & 0xF) - offset);
        out[j + 16] = (int8_t)((qs[j] >> 4) - offset);
    }
}

static inline void unpack_q5(const uint8_t *qs, const uint8_t *qh_bytes, int8_t *out, int offset) {
    uint32_t qh;
    memcpy(&qh, qh_bytes, 4);
    for (int j = 0; j < 16; j++) {
        out[j] = (int8_t)(((qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4)) - offset);
        out[j + 16] = (int8_t)(((qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4)) - offset);
    }
}

static float dot_q4_0(int64_t n, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc[8] = {0};
    int8_t q[32];
    for (int64_t i = 0; i < n / QK4_0; i++) {
        unpack_nibbles(x[i].qs, q, 8);
        lanes_fma(acc, qrt_h2f(x[i].d) * qrt_h2f(y[i].d), q, y[i].qs);
    }
    return qrt_hsum8(acc);
}

static float dot_q4_1(int64_t n, const void *vx, const void *vy) {
    const block_q4_1 *x = vx;
    const block_q8_1 *y = vy;
    float acc[8] = {0}, summs = 0.0f;
    int8_t q[32];
    for (int64_t i = 0; i < n / QK4_1; i++) {
        summs = fmaf(qrt_h2f(x[i].m), qrt_h2f(y[i].s), summs); /* ggml's build contracts this to an FMA */
        unpack_nibbles(x[i].qs, q, 0);
        lanes_fma(acc, qrt_h2f(x[i].d) * qrt_h2f(y[i].d), q, y[i].qs);
    }
    return qrt_hsum8(acc) + summs;
}

static float dot_q5_0(int64_t n, const void *vx, const void *vy) {
    const block_q5_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc[8] = {0};
    int8_t q[32];
    for (int64_t i = 0; i < n / QK5_0; i++) {
        unpack_q5(x[i].qs, x[i].qh, q, 16);
        lanes_fma(acc, qrt_h2f(x[i].d) * qrt_h2f(y[i].d), q, y[i].qs);
    }
    return qrt_hsum8(acc);
}

static float dot_q5_1(int64_t n, const void *vx, const void *vy) {
    const block_q5_1 *x = vx;
    const block_q8_1 *y = vy;
    float acc[8] = {0}, summs = 0.0f;
    int8_t q[32];
    for (int64_t i = 0; i < n / QK5_1; i++) {
        summs = fmaf(qrt_h2f(x[i].m), qrt_h2f(y[i].s), summs); /* ggml's build contracts this to an FMA */
        unpack_q5(x[i].qs, x[i].qh, q, 0);
        lanes_fma(acc, qrt_h2f(x[i].d) * qrt_h2f(y[i].d), q, y[i].qs);
    }
    return qrt_hsum8(acc) + summs;
}

static float dot_q8_0(int64_t n, const void *vx, const void *vy) {
    const block_q8_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc[8] = {0};
    for (int64_t i = 0; i < n / QK8_0; i++) lanes_fma(acc, qrt_h2f(x[i].d) * qrt_h2f(y[i].d), x[i].qs, y[i].qs);
    return qrt_hsum8(acc);
}

static float dot_iq4_nl(int64_t n, const void *vx, const void *vy) {
    const block_iq4_nl *x = vx;
    const block_q8_0 *y = vy;
    float acc[8] = {0};
    int8_t q[32];
    for (int64_t i = 0; i < n / QK4_NL; i++) {
        for (int j = 0; j < 16; j++) {
            q[j] = qrt_kvalues_iq4nl[x[i].qs[j] & 0xF];
            q[j + 16] = qrt_kvalues_iq4nl[x[i].qs[j] >> 4];
        }
        lanes_fma(acc, qrt_h2f(x[i].d) * qrt_h2f(y[i].d), q, y[i].qs);
    }
    return qrt_hsum8(acc);
}

/* ---- k-quants: decode a super-block to (q, scale, min), then one exact integer sum ---- */

void qrt_decode_q2_K(const block_q2_K *x, qrt_kblock *b) {
    b->d = qrt_h2f(x->d);
    b->dmin = qrt_h2f(x->dmin);
    for (int s = 0; s < 16; s++) {
        b->scale[s] = x->scales[s] & 0xF;
        b->min[s] = x->scales[s] >> 4;
    }
    /* each 128-value half reads 32 bytes of qs four times, two bits at a time */
    for (int half = 0; half < 2; half++) {
        const uint8_t *q = x->qs + 32 * half;
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) b->q[128 * half + 32 * j + l] = (int8_t)((q[l] >> (2 * j)) & 3);
    }
}

void qrt_decode_q3_K(const block_q3_K *x, qrt_kblock *b) {
    b->d = qrt_h2f(x->d);
    b->dmin = 0.0f;
    int8_t sc[16];
    qrt_q3k_scales(x->scales, sc);
    for (int s = 0; s < 16; s++) {
        b->scale[s] = sc[s];
        b->min[s] = 0;
    }
    /* low 2 bits as q2_K; the high bit (hmask bit j of byte l, j counting 2-bit planes) set means no -4 */
    for (int half = 0; half < 2; half++) {
        const uint8_t *q = x->qs + 32 * half;
        for (int j = 0; j < 4; j++) {
            const int plane = 4 * half + j;
            for (int l = 0; l < 32; l++) {
                const int lo = (q[l] >> (2 * j)) & 3;
                const int hbit = (x->hmask[l] >> plane) & 1;
                b->q[128 * half + 32 * j + l] = (int8_t)(lo - (hbit ? 0 : 4));
            }
        }
    }
}

void qrt_decode_q4_K(const block_q4_K *x, qrt_kblock *b) {
    b->d = qrt_h2f(x->d);
    b->dmin = qrt_h2f(x->dmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        qrt_scale_min_k4(j, x->scales, &sc, &m);
        b->scale[2 * j] = b->scale[2 * j + 1] = sc;
        b->min[2 * j] = b->min[2 * j + 1] = m;
    }
    for (int c = 0; c < 4; c++) /* 64 values per 32 bytes: low nibbles first, then high */
        for (int l = 0; l < 32; l++) {
            b->q[64 * c + l] = (int8_t)(x->qs[32 * c + l] & 0xF);
            b->q[64 * c + 32 + l] = (int8_t)(x->qs[32 * c + l] >> 4);
        }
}

void qrt_decode_q5_K(const block_q5_K *x, qrt_kblock *b) {
    b->d = qrt_h2f(x->d);
    b->dmin = qrt_h2f(x->dmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        qrt_scale_min_k4(j, x->scales, &sc, &m);
        b->scale[2 * j] = b->scale[2 * j + 1] = sc;
        b->min[2 * j] = b->min[2 * j + 1] = m;
    }
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            const int h0 = (x->qh[l] >> (2 * c)) & 1, h1 = (x->qh[l] >> (2 * c + 1)) & 1;
            b->q[64 * c + l] = (int8_t)((x->qs[32 * c + l] & 0xF) | (h0 << 4));
            b->q[64 * c + 32 + l] = (int8_t)((x->qs[32 * c + l] >> 4) | (h1 << 4));
        }
}

void qrt_decode_q6_K(const block_q6_K *x, qrt_kblock *b) {
    b->d = qrt_h2f(x->d);
    b->dmin = 0.0f;
    for (int s = 0; s < 16; s++) {
        b->scale[s] = x->scales[s];
        b->min[s] = 0;
    }
    for (int half = 0; half < 2; half++) {
        const uint8_t *ql = x->ql + 64 * half, *qh = x->qh + 32 * half;
        int8_t *q = b->q + 128 * half;
        for (int l = 0; l < 32; l++) {
            q[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            q[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            q[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            q[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

static float kblock_dot(const qrt_kblock *b, const block_q8_K *y) {
    int32_t sumi = 0, summ = 0;
    for (int s = 0; s < 16; s++) {
        int32_t part = 0;
        for (int k = 0; k < 16; k++) part += b->q[16 * s + k] * y->qs[16 * s + k];
        sumi += b->scale[s] * part;
        summ += b->min[s] * y->bsums[s];
    }
    return qrt_kq_term(b->d, b->dmin, y->d, sumi, summ);
}

#define KQUANT_DOT(name, block_t, decode)                                                                         \
    static float name(int64_t n, const void *vx, const void *vy) {                                              \
        const block_t *x = vx;                                                                                   \
        const block_q8_K *y = vy;                                                                                \
        float sum = 0.0f;                                                                                        \
        qrt_kblock b;                                                                                            \
        for (int64_t i = 0; i < n / QK_K; i++) {                                                                 \
            decode(&x[i], &b);                                                                                   \
            sum += kblock_dot(&b, &y[i]);                                                                        \
        }                                                                                                        \
        return sum;                                                                                              \
    }

KQUANT_DOT(dot_q2_K, block_q2_K, qrt_decode_q2_K)
KQUANT_DOT(dot_q3_K, block_q3_K, qrt_decode_q3_K)
KQUANT_DOT(dot_q5_K, block_q5_K, qrt_decode_q5_K)

/* q4_K and q6_K, the k-quants of llama.cpp's common mixtures, accumulate exactly as ggml's x86 kernels: 8
 * integer lanes per super-block (lane l: values 4l..4l+3 of every 32-value chunk, times their sub-block scale),
 * fused into 8 float lanes with the super-block scale; q4_K's mins go to 4 more lanes (kernels.h). */
void qrt_q4k_mins(const block_q4_K *x, const block_q8_K *y, float accm[4]) {
    uint8_t sc, m[8];
    for (int j = 0; j < 8; j++) qrt_scale_min_k4(j, x->scales, &sc, &m[j]);
    const float dmin = -y->d * qrt_h2f(x->dmin);
    for (int p = 0; p < 4; p++) {
        const int32_t prod = m[2 * p] * (y->bsums[4 * p] + y->bsums[4 * p + 1]) +
                             m[2 * p + 1] * (y->bsums[4 * p + 2] + y->bsums[4 * p + 3]);
        accm[p] = fmaf(dmin, (float)prod, accm[p]);
    }
}

static float dot_q4_K(int64_t n, const void *vx, const void *vy) {
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    float acc[8] = {0}, accm[4] = {0};
    qrt_kblock b;
    for (int64_t i = 0; i < n / QK_K; i++) {
        qrt_decode_q4_K(&x[i], &b);
        qrt_q4k_mins(&x[i], &y[i], accm);
        int32_t lanes[8] = {0};
        for (int c = 0; c < 8; c++) /* 32-value chunks, sub-blocks 2c and 2c+1 share a scale here */
            for (int l = 0; l < 8; l++) {
                int32_t part = 0;
                for (int k = 4 * l; k < 4 * l + 4; k++) part += b.q[32 * c + k] * y[i].qs[32 * c + k];
                lanes[l] += b.scale[2 * c] * part;
            }
        const float d = y[i].d * b.d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)lanes[l], acc[l]);
    }
    return qrt_hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

static float dot_q6_K(int64_t n, const void *vx, const void *vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    float acc[8] = {0};
    qrt_kblock b;
    for (int64_t i = 0; i < n / QK_K; i++) {
        qrt_decode_q6_K(&x[i], &b);
        const int8_t *sc = x[i].scales;
        int32_t lanes[8];
        for (int l = 0; l < 8; l++) /* the -32 of every quant, per lane as ggml takes it out */
            lanes[l] = -32 * (y[i].bsums[2 * l] * sc[2 * l] + y[i].bsums[2 * l + 1] * sc[2 * l + 1]);
        for (int c = 0; c < 8; c++)
            for (int l = 0; l < 8; l++) {
                int32_t part = 0;
                for (int k = 4 * l; k < 4 * l + 4; k++) part += (b.q[32 * c + k] + 32) * y[i].qs[32 * c + k];
                lanes[l] += sc[2 * c + (l >= 4)] * part;
            }
        const float d = y[i].d * b.d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)lanes[l], acc[l]);
    }
    return qrt_hsum8(acc);
}

void qrt_kernels_register_scalar(qrt_kernel_entry t[QRT_TYPE_COUNT]) {
    static const struct {
        int type, act;
        qrt_vec_dot_fn fn;
    } rows[] = {
        {QRT_TYPE_F32, QRT_TYPE_F32, dot_f32},       {QRT_TYPE_F16, QRT_TYPE_F16, dot_f16},
        {QRT_TYPE_BF16, QRT_TYPE_BF16, dot_bf16},    {QRT_TYPE_Q4_0, QRT_TYPE_Q8_0, dot_q4_0},
        {QRT_TYPE_Q4_1, QRT_TYPE_Q8_1, dot_q4_1},    {QRT_TYPE_Q5_0, QRT_TYPE_Q8_0, dot_q5_0},
        {QRT_TYPE_Q5_1, QRT_TYPE_Q8_1, dot_q5_1},    {QRT_TYPE_Q8_0, QRT_TYPE_Q8_0, dot_q8_0},
        {QRT_TYPE_IQ4_NL, QRT_TYPE_Q8_0, dot_iq4_nl}, {QRT_TYPE_Q2_K, QRT_TYPE_Q8_K, dot_q2_K},
        {QRT_TYPE_Q3_K, QRT_TYPE_Q8_K, dot_q3_K},    {QRT_TYPE_Q4_K, QRT_TYPE_Q8_K, dot_q4_K},
        {QRT_TYPE_Q5_K, QRT_TYPE_Q8_K, dot_q5_K},    {QRT_TYPE_Q6_K, QRT_TYPE_Q8_K, dot_q6_K},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        t[rows[i].type].act_type = rows[i].act;
        t[rows[i].type].vec_dot[QRT_VARIANT_SCALAR] = rows[i].fn;
    }
    t[QRT_TYPE_F32].batch_dot[QRT_VARIANT_SCALAR] = batch_dot_f32;
    t[QRT_TYPE_F16].batch_dot[QRT_VARIANT_SCALAR] = batch_dot_f16;
}

/* ---- ggml's vector expf, one lane at a time (fmaf is exactly the fused multiply-add of the SIMD version) ---- */

void qrt_expf16_scalar(float *y, const float *x) {
    for (int i = 0; i < 16; i++) {
        const float r = 0x1.8p23f;
        const float z = fmaf(x[i], 0x1.715476p+0f, r);
        const float n = z - r;
        const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x[i]));
        const float u = b * b;
        const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                             u, fmaf(0x1.ffffecp-1f, b, 1.0f));
        if (n != n)
            y[i] = n;
        else if (fabsf(n) > 192.0f)
            y[i] = n <= 0.0f ? 0.0f : INFINITY;
        else
            y[i] = ldexpf(j, (int)n);
    }
}

/* ---- attention products in ggml's orders (kernels.h) ---- */

static float reduce16(const float *v) {
    float a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = v[i + 8] + v[i];
    for (int i = 0; i < 4; i++) b[i] = a[i + 4] + a[i];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* fold ggml's four 16-lane accumulators (rows 0..63 of lanes) and reduce */
static float fold64(float lanes[64]) {
    for (int l = 0; l < 16; l++) {
        lanes[l] += lanes[32 + l];
        lanes[16 + l] += lanes[48 + l];
        lanes[l] += lanes[16 + l];
    }
    return reduce16(lanes);
}

static inline float kv_at(const void *base, size_t index, int f16) {
    return f16 ? qrt_fp16_to_fp32(((const qrt_half *)base)[index]) : ((const float *)base)[index];
}

/* with an f16 cache ggml rounds the query and the attention weights to f16 before its products */
static inline float f16_round(float x, int f16) { return f16 ? qrt_fp16_to_fp32(qrt_fp32_to_fp16(x)) : x; }

void qrt_attn_scores_scalar(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                            int vecdot, float scale) {
    for (int t = 0; t < n_pos; t++) {
        const size_t row = (size_t)t * stride;
        float lanes[64] = {0};
        float sum;
        if (vecdot) {
            const int np = hd & ~63;
            for (int i = 0; i < np; i++) lanes[i & 63] = fmaf(kv_at(k, row + i, f16), f16_round(q[i], f16), lanes[i & 63]);
            sum = fold64(lanes);
            for (int i = np; i < hd; i++) sum = fmaf(kv_at(k, row + i, f16), f16_round(q[i], f16), sum);
        } else {
            for (int i = 0; i < hd; i++) lanes[i & 15] = fmaf(kv_at(k, row + i, f16), f16_round(q[i], f16), lanes[i & 15]);
            sum = reduce16(lanes);
        }
        att[t] = sum * scale;
    }
}

void qrt_attn_values_scalar(float *out, const float *att, const void *v, int n_pos, int stride, int hd, int f16,
                            int vecdot, float *scratch) {
    (void)scratch;
    for (int i = 0; i < hd; i++) {
        float lanes[64] = {0};
        const int mask = vecdot ? 63 : 15;
        for (int t = 0; t < n_pos; t++)
            lanes[t & mask] = fmaf(kv_at(v, (size_t)t * stride + i, f16), f16_round(att[t], f16), lanes[t & mask]);
        out[i] = vecdot ? fold64(lanes) : reduce16(lanes);
    }
}

/* op_softmax (ops.c), the reference of the AVX-512 version */
void qrt_attn_softmax_scalar(float *x, int n) { op_softmax(x, n, qrt_expf16_scalar); }

/* ggml fills its table in a C file built with FMA and GCC's default -ffp-contract=fast, which fuses
 * 1 + a x x into fmaf(a x, x, 1): written out here, since this build does not contract (-std=c11). One f16 step
 * of difference in a few entries is enough to move q8_0 activations of gemma3's GeGLU output off llama.cpp's. */
static float gelu_f16_table[1 << 16];
static pthread_once_t gelu_f16_once = PTHREAD_ONCE_INIT;

static void fill_gelu_f16_table(void) {
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f, coef_a = 0.044715f;
    for (int i = 0; i < 1 << 16; i++) {
        const float x = qrt_fp16_to_fp32((qrt_half)i);
        const float gelu = 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * x * fmaf(coef_a * x, x, 1.0f)));
        gelu_f16_table[i] = qrt_fp16_to_fp32(qrt_fp32_to_fp16(gelu));
    }
}

const float *qrt_gelu_f16_table(void) {
    pthread_once(&gelu_f16_once, fill_gelu_f16_table);
    return gelu_f16_table;
}

void qrt_geglu_scalar(float *gate, const float *up, int n) {
    const float *table = qrt_gelu_f16_table();
    for (int i = 0; i < n; i++) {
        const float g = gate[i];
        gate[i] = g <= -10.0f ? 0.0f : g >= 10.0f ? g * up[i] : table[qrt_fp32_to_fp16(g)] * up[i];
    }
}
