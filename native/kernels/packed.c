/* packed.c — the x16 layouts of packed.h: repacking GGUF rows, the activation sums, the scalar reference kernels
 * (which define every packed kernel's result) and the per-type table with its dispatch. */
#include "packed.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "qrt.h"
#include "select.h"
#include "size_math.h"

/* ---- repacking: 16 GGUF rows -> one group of x16 blocks ---- */

/* q4_0, q5_0, q4_1, q5_1 through the layout rule of packed.h: qs copied in 4-byte chunks, the 32-bit qh
 * regrouped by chunk (qh[k][r]: bits 0-3 the fifth bits of values 4k.., bits 4-7 those of values 16 + 4k..) */
static void pack_nibbles(const void *rows, size_t row_bytes, int64_t n, void *group, int has_min, int has_qh) {
    const size_t src_bytes = 2 + 2 * (size_t)has_min + 4 * (size_t)has_qh + QK4_0 / 2;
    const size_t dst_bytes = QRT_PACK_ROWS * src_bytes;
    for (int64_t i = 0; i < n / QK4_0; i++)
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            const uint8_t *x = (const uint8_t *)rows + r * row_bytes + (size_t)i * src_bytes;
            uint8_t *dst = (uint8_t *)group + (size_t)i * dst_bytes;
            const uint8_t *x_qs = x + 2 + 2 * has_min + 4 * has_qh;
            uint8_t *qs = dst + QRT_NIBBLE_QS_OFF(has_min, has_qh), *qh = dst + QRT_NIBBLE_QH_OFF(has_min);
            memcpy(dst + 2 * r, x, 2);
            if (has_min) memcpy(dst + QRT_NIBBLE_M_OFF + 2 * r, x + 2, 2);
            uint32_t h = 0;
            if (has_qh) memcpy(&h, x + 2 + 2 * has_min, 4);
            for (int k = 0; k < 4; k++) {
                memcpy(qs + 64 * k + 4 * r, x_qs + 4 * k, 4);
                if (has_qh) qh[16 * k + r] = (uint8_t)(((h >> (4 * k)) & 0x0F) | (((h >> (16 + 4 * k)) & 0x0F) << 4));
            }
        }
}

static void pack_q4_0(const void *rows, size_t row_bytes, int64_t n, void *group) {
    pack_nibbles(rows, row_bytes, n, group, 0, 0);
}
static void pack_q5_0(const void *rows, size_t row_bytes, int64_t n, void *group) {
    pack_nibbles(rows, row_bytes, n, group, 0, 1);
}
static void pack_q4_1(const void *rows, size_t row_bytes, int64_t n, void *group) {
    pack_nibbles(rows, row_bytes, n, group, 1, 0);
}
static void pack_q5_1(const void *rows, size_t row_bytes, int64_t n, void *group) {
    pack_nibbles(rows, row_bytes, n, group, 1, 1);
}

static void pack_q8_0(const void *rows, size_t row_bytes, int64_t n, void *group) {
    block_q8_0x16 *dst = group;
    for (int64_t i = 0; i < n / QK8_0; i++)
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            const block_q8_0 *x = (const block_q8_0 *)((const uint8_t *)rows + r * row_bytes) + i;
            dst[i].d[r] = x->d;
            for (int k = 0; k < 8; k++)
                for (int b = 0; b < 4; b++) dst[i].qs[k][r][b] = (uint8_t)x->qs[4 * k + b] ^ QRT_Q8_0X16_FLIP;
        }
}

static void pack_q4_K(const void *rows, size_t row_bytes, int64_t n, void *group) {
    block_q4_Kx16 *dst = group;
    for (int64_t i = 0; i < n / QK_K; i++)
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            const block_q4_K *x = (const block_q4_K *)((const uint8_t *)rows + r * row_bytes) + i;
            dst[i].d[r] = x->d;
            dst[i].dmin[r] = x->dmin;
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                qrt_scale_min_k4(j, x->scales, &sc, &m);
                dst[i].sc[j][r] = sc;
                dst[i].mins[j / 2][r][j % 2] = m;
            }
            for (int c = 0; c < 4; c++)
                for (int k = 0; k < 8; k++) memcpy(dst[i].qs[c][k][r], x->qs + 32 * c + 4 * k, 4);
        }
}

static void pack_q6_K(const void *rows, size_t row_bytes, int64_t n, void *group) {
    block_q6_Kx16 *dst = group;
    for (int64_t i = 0; i < n / QK_K; i++)
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            const block_q6_K *x = (const block_q6_K *)((const uint8_t *)rows + r * row_bytes) + i;
            dst[i].d[r] = x->d;
            for (int j = 0; j < 16; j++) dst[i].sc[j][r] = x->scales[j];
            for (int h = 0; h < 2; h++)
                for (int k = 0; k < 8; k++) {
                    memcpy(dst[i].ql[h][0][k][r], x->ql + 64 * h + 4 * k, 4);
                    memcpy(dst[i].ql[h][1][k][r], x->ql + 64 * h + 32 + 4 * k, 4);
                    memcpy(dst[i].qh[h][k][r], x->qh + 32 * h + 4 * k, 4);
                }
        }
}

/* ---- activation sums ---- */

int64_t qrt_packed_sums_per_row(int act_type, int64_t n) {
    if (act_type == QRT_TYPE_Q8_0) return n / QK8_0 * QRT_Q8_0_SUMS;
    if (act_type == QRT_TYPE_Q8_K) return n / QK_K * QRT_Q8_K_SUMS;
    return 0;
}

void qrt_packed_act_sums(int act_type, const void *act_row, int64_t n, int32_t *sums) {
    if (act_type == QRT_TYPE_Q8_0) {
        const block_q8_0 *y = act_row;
        for (int64_t i = 0; i < n / QK8_0; i++) {
            int32_t *block = sums + QRT_Q8_0_SUMS * i, total = 0;
#if defined(__aarch64__) /* the 8 sums of 4 by two pairwise widening adds per 16 bytes */
            const int32x4_t lo = vpaddlq_s16(vpaddlq_s8(vld1q_s8(y[i].qs)));
            const int32x4_t hi = vpaddlq_s16(vpaddlq_s8(vld1q_s8(y[i].qs + 16)));
            vst1q_s32(block, lo), vst1q_s32(block + 4, hi);
            total = vaddvq_s32(vaddq_s32(lo, hi));
#else
            for (int k = 0; k < 8; k++) {
                const int8_t *q = y[i].qs + 4 * k;
                block[k] = q[0] + q[1] + q[2] + q[3];
                total += block[k];
            }
#endif
#if defined(__x86_64__) || defined(__i386__) /* packed_avx512.c's float-biased starts; no other variant reads them */
            for (int k = 0; k < 8; k++) {
                block[QRT_Q8_0_STARTS + k] = QRT_Q8_FLOAT_BIAS - 128 * block[k];
                block[QRT_Q5_0_STARTS + k] = QRT_Q8_FLOAT_BIAS - 16 * block[k];
            }
#endif
            block[8] = total;
            block[QRT_Q4_0_START] = -8 * total;
            const float d = qrt_fp16_to_fp32(y[i].d);
            memcpy(block + QRT_Q8_0_D, &d, sizeof d);
        }
    } else if (act_type == QRT_TYPE_Q8_K) {
        const block_q8_K *y = act_row;
        for (int64_t i = 0; i < n / QK_K; i++)
            for (int p = 0; p < 4; p++) {
                int32_t *block = sums + QRT_Q8_K_SUMS * i;
                const int16_t *b = y[i].bsums + 4 * p;
                const uint16_t lo = (uint16_t)(b[0] + b[1]), hi = (uint16_t)(b[2] + b[3]);
                block[p] = (int32_t)((uint32_t)lo | ((uint32_t)hi << 16));
                const float pair[2] = {(float)(int16_t)lo, (float)(int16_t)hi};
                memcpy(block + QRT_Q8_K_FLOAT_SUMS + 2 * p, pair, sizeof pair);
                for (int j = 4 * p; j < 4 * p + 4; j++) block[QRT_Q8_K_NEG_BSUMS + j] = -32 * y[i].bsums[j];
            }
    }
}

/* ---- scalar reference kernels: the result rule of packed.h, spelled out ---- */

static const block_q8_0 *act_q8_0(const void *act, size_t act_stride, int t) {
    return (const block_q8_0 *)((const uint8_t *)act + (size_t)t * act_stride);
}

static const block_q8_K *act_q8_K(const void *act, size_t act_stride, int t) {
    return (const block_q8_K *)((const uint8_t *)act + (size_t)t * act_stride);
}

static void gemm_q4_0_scalar(int64_t n, const void *group, const void *act, size_t as, const int32_t *sums,
                             size_t ss, int n_tok, float *out, size_t os, qrt_batch_pos bp) {
    (void)bp;
    const block_q4_0x16 *x = group;
    for (int t = 0; t < n_tok; t++) {
        const block_q8_0 *y = act_q8_0(act, as, t);
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < n / QK4_0; i++) {
                int32_t sumi = -8 * sums[t * ss + QRT_Q8_0_SUMS * i + 8];
                for (int k = 0; k < 4; k++)
                    for (int b = 0; b < 4; b++) {
                        const uint8_t q = x[i].qs[k][r][b];
                        sumi += (q & 0x0F) * y[i].qs[4 * k + b] + (q >> 4) * y[i].qs[16 + 4 * k + b];
                    }
                acc = fmaf((float)sumi, qrt_fp16_to_fp32(x[i].d[r]) * qrt_fp16_to_fp32(y[i].d), acc);
            }
            out[t * os + r] = acc;
        }
    }
}

/* q5_0, q4_1, q5_1 in ggml's 8 lanes: lane k < 4 takes values 4k.. (low nibbles of chunk k), lane 4 + k values
 * 16 + 4k.. (high nibbles); q5_0's values are offset by -16 and its activations are q8_0; q4_1 and q5_1 add the
 * minimums' sum and take q8_1 activations */
static void gemm_lanes_scalar(int64_t n, const uint8_t *group, int has_min, int has_qh, const void *act, size_t as,
                              int n_tok, float *out, size_t os) {
    const size_t bb = QRT_PACK_ROWS * (2 + 2 * (size_t)has_min + 4 * (size_t)has_qh + QK4_0 / 2);
    const int offset = has_min ? 0 : 16;
    for (int t = 0; t < n_tok; t++) {
        const uint8_t *yrow = (const uint8_t *)act + (size_t)t * as;
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            float acc[8] = {0}, summs = 0.0f;
            for (int64_t i = 0; i < n / QK8_0; i++) {
                const uint8_t *blk = group + (size_t)i * bb;
                const qrt_half *d = (const qrt_half *)blk, *m = (const qrt_half *)(blk + QRT_NIBBLE_M_OFF);
                const uint8_t *qh = blk + QRT_NIBBLE_QH_OFF(has_min), *qs = blk + QRT_NIBBLE_QS_OFF(has_min, has_qh);
                qrt_half yd;
                const int8_t *yq;
                if (has_min) {
                    const block_q8_1 *y = (const block_q8_1 *)yrow + i;
                    yd = y->d, yq = y->qs;
                    summs = fmaf(qrt_fp16_to_fp32(m[r]), qrt_fp16_to_fp32(y->s), summs);
                } else {
                    const block_q8_0 *y = (const block_q8_0 *)yrow + i;
                    yd = y->d, yq = y->qs;
                }
                const float dd = qrt_fp16_to_fp32(d[r]) * qrt_fp16_to_fp32(yd);
                for (int k = 0; k < 4; k++) {
                    int32_t lo = 0, hi = 0;
                    const int h = has_qh ? qh[16 * k + r] : 0;
                    for (int b = 0; b < 4; b++) {
                        const uint8_t q = qs[64 * k + 4 * r + b];
                        lo += (((q & 0x0F) | ((h >> b) & 1) << 4) - offset) * yq[4 * k + b];
                        hi += (((q >> 4) | ((h >> (4 + b)) & 1) << 4) - offset) * yq[16 + 4 * k + b];
                    }
                    acc[k] = fmaf((float)lo, dd, acc[k]);
                    acc[4 + k] = fmaf((float)hi, dd, acc[4 + k]);
                }
            }
            out[t * os + r] = has_min ? qrt_hsum8(acc) + summs : qrt_hsum8(acc);
        }
    }
}

static void gemm_q5_0_scalar(int64_t n, const void *group, const void *act, size_t as, const int32_t *sums,
                             size_t ss, int n_tok, float *out, size_t os, qrt_batch_pos bp) {
    (void)sums, (void)ss, (void)bp;
    gemm_lanes_scalar(n, group, 0, 1, act, as, n_tok, out, os);
}

static void gemm_q4_1_scalar(int64_t n, const void *group, const void *act, size_t as, const int32_t *sums,
                             size_t ss, int n_tok, float *out, size_t os, qrt_batch_pos bp) {
    (void)sums, (void)ss, (void)bp;
    gemm_lanes_scalar(n, group, 1, 0, act, as, n_tok, out, os);
}

static void gemm_q5_1_scalar(int64_t n, const void *group, const void *act, size_t as, const int32_t *sums,
                             size_t ss, int n_tok, float *out, size_t os, qrt_batch_pos bp) {
    (void)sums, (void)ss, (void)bp;
    gemm_lanes_scalar(n, group, 1, 1, act, as, n_tok, out, os);
}

static void gemm_q8_0_scalar(int64_t n, const void *group, const void *act, size_t as, const int32_t *sums,
                             size_t ss, int n_tok, float *out, size_t os, qrt_batch_pos bp) {
    (void)bp;
    (void)sums, (void)ss;
    const block_q8_0x16 *x = group;
    for (int t = 0; t < n_tok; t++) {
        const block_q8_0 *y = act_q8_0(act, as, t);
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            float acc[8] = {0};
            for (int64_t i = 0; i < n / QK8_0; i++) {
                const float d = qrt_fp16_to_fp32(x[i].d[r]) * qrt_fp16_to_fp32(y[i].d);
                for (int k = 0; k < 8; k++) {
                    int32_t lane = 0;
                    for (int b = 0; b < 4; b++) lane += (int8_t)(x[i].qs[k][r][b] ^ QRT_Q8_0X16_FLIP) * y[i].qs[4 * k + b];
                    acc[k] = fmaf((float)lane, d, acc[k]);
                }
            }
            out[t * os + r] = qrt_hsum8(acc);
        }
    }
}

static void gemm_q4_K_scalar(int64_t n, const void *group, const void *act, size_t as, const int32_t *sums,
                             size_t ss, int n_tok, float *out, size_t os, qrt_batch_pos bp) {
    (void)sums, (void)ss;
    const block_q4_Kx16 *x = group;
    const int n_full = bp.total - bp.total % 4; /* batch tokens in whole groups of 4: float step per sub-block pair */
    for (int t = 0; t < n_tok; t++) {
        const block_q8_K *y = act_q8_K(act, as, t);
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            float acc = 0.0f, accm = 0.0f;
            for (int64_t i = 0; i < n / QK_K; i++) {
                const float d = qrt_fp16_to_fp32(x[i].d[r]) * y[i].d, dm = qrt_fp16_to_fp32(x[i].dmin[r]) * y[i].d;
                int32_t sumi = 0, summ = 0;
                for (int c = 0; c < 4; c++) {
                    int32_t lo = 0, hi = 0;
                    for (int k = 0; k < 8; k++)
                        for (int b = 0; b < 4; b++) {
                            const uint8_t q = x[i].qs[c][k][r][b];
                            lo += (q & 0x0F) * y[i].qs[64 * c + 4 * k + b];
                            hi += (q >> 4) * y[i].qs[64 * c + 32 + 4 * k + b];
                        }
                    const int32_t pair = x[i].sc[2 * c][r] * lo + x[i].sc[2 * c + 1][r] * hi;
                    const int32_t pair_m = x[i].mins[c][r][0] * (y[i].bsums[4 * c] + y[i].bsums[4 * c + 1]) +
                                           x[i].mins[c][r][1] * (y[i].bsums[4 * c + 2] + y[i].bsums[4 * c + 3]);
                    if (bp.first + t < n_full) {
                        acc = fmaf((float)pair, d, acc);
                        accm = fmaf((float)pair_m, dm, accm);
                    } else {
                        sumi += pair;
                        summ += pair_m;
                    }
                }
                if (bp.first + t >= n_full) {
                    acc = fmaf((float)sumi, d, acc);
                    accm = fmaf((float)summ, dm, accm);
                }
            }
            out[t * os + r] = acc - accm;
        }
    }
}

/* q6_K value b of 4-byte chunk k of row r, sub-row half h, quarter m (value 128h + 32m + 4k + b) */
static inline int q6_value(const block_q6_Kx16 *x, int h, int m, int k, int r, int b) {
    const int lo = (x->ql[h][m & 1][k][r][b] >> (4 * (m >> 1))) & 0x0F;
    const int hi = (x->qh[h][k][r][b] >> (2 * m)) & 3;
    return lo | hi << 4;
}

static void gemm_q6_K_scalar(int64_t n, const void *group, const void *act, size_t as, const int32_t *sums,
                             size_t ss, int n_tok, float *out, size_t os, qrt_batch_pos bp) {
    (void)sums, (void)ss;
    const block_q6_Kx16 *x = group;
    for (int t = 0; t < n_tok; t++) {
        const block_q8_K *y = act_q8_K(act, as, t);
        for (int r = 0; r < QRT_PACK_ROWS; r++) {
            float acc = 0.0f, lanes[8] = {0};
            for (int64_t i = 0; i < n / QK_K; i++) {
                int32_t sumi = 0, lane[8];
                for (int l = 0; l < 8; l++)
                    lane[l] = -32 * (y[i].bsums[2 * l] * x[i].sc[2 * l][r] + y[i].bsums[2 * l + 1] * x[i].sc[2 * l + 1][r]);
                for (int j = 0; j < 16; j++) {
                    const int h = j / 8, m = (j % 8) / 2, half = j % 2;
                    int32_t isum = -32 * y[i].bsums[j];
                    for (int k = 4 * half; k < 4 * half + 4; k++) {
                        int32_t four = 0;
                        for (int b = 0; b < 4; b++)
                            four += q6_value(&x[i], h, m, k, r, b) * y[i].qs[128 * h + 32 * m + 4 * k + b];
                        isum += four;
                        lane[k] += x[i].sc[j][r] * four; /* lane k: bytes 4k..4k+3 of each 32-value chunk */
                    }
                    sumi += x[i].sc[j][r] * isum;
                }
                const float dx = qrt_fp16_to_fp32(x[i].d[r]);
                acc = fmaf((float)sumi * dx, y[i].d, acc);
                for (int l = 0; l < 8; l++) lanes[l] = fmaf(y[i].d * dx, (float)lane[l], lanes[l]);
            }
            out[t * os + r] = bp.total >= QRT_PACKED_BATCH_MIN ? acc : qrt_hsum8(lanes);
        }
    }
}

/* ---- the table ---- */

static qrt_packed_entry table[QRT_TYPE_COUNT];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void fill(void) {
    table[QRT_TYPE_Q4_0] = (qrt_packed_entry){sizeof(block_q4_0x16), pack_q4_0, {gemm_q4_0_scalar}, {NULL}};
    table[QRT_TYPE_Q8_0] = (qrt_packed_entry){sizeof(block_q8_0x16), pack_q8_0, {gemm_q8_0_scalar}, {NULL}};
    table[QRT_TYPE_Q5_0] = (qrt_packed_entry){sizeof(block_q5_0x16), pack_q5_0, {gemm_q5_0_scalar}, {NULL}};
    table[QRT_TYPE_Q4_1] = (qrt_packed_entry){sizeof(block_q4_1x16), pack_q4_1, {gemm_q4_1_scalar}, {NULL}};
    table[QRT_TYPE_Q5_1] = (qrt_packed_entry){sizeof(block_q5_1x16), pack_q5_1, {gemm_q5_1_scalar}, {NULL}};
    table[QRT_TYPE_Q4_K] = (qrt_packed_entry){sizeof(block_q4_Kx16), pack_q4_K, {gemm_q4_K_scalar}, {NULL}};
    table[QRT_TYPE_Q6_K] = (qrt_packed_entry){sizeof(block_q6_Kx16), pack_q6_K, {gemm_q6_K_scalar}, {NULL}};
#if defined(__x86_64__)
    if (qrt_variant_supported(QRT_VARIANT_AVX2)) qrt_packed_register_avx2(table);
    if (qrt_variant_supported(QRT_VARIANT_AVX512)) qrt_packed_register_avx512(table);
#elif defined(__aarch64__) || defined(__arm__)
    if (qrt_variant_supported(QRT_VARIANT_NEON)) qrt_packed_register_neon(table);
#endif
#if defined(__aarch64__)
    if (qrt_variant_supported(QRT_VARIANT_NEON_DOTPROD)) qrt_packed_register_neon_dotprod(table, QRT_VARIANT_NEON_DOTPROD);
    if (qrt_variant_supported(QRT_VARIANT_NEON_I8MM)) qrt_packed_register_neon_dotprod(table, QRT_VARIANT_NEON_I8MM);
#endif
}

const qrt_packed_entry *qrt_packed_entry_for(int type) {
    pthread_once(&once, fill);
    return type >= 0 && type < QRT_TYPE_COUNT && table[type].pack ? &table[type] : NULL;
}

static int64_t block_values(int type) { return type == QRT_TYPE_Q4_K || type == QRT_TYPE_Q6_K ? QK_K : QK8_0; }

size_t qrt_packed_bytes(int type, int64_t rows, int64_t n) {
    const qrt_packed_entry *e = qrt_packed_entry_for(type);
    if (!e || rows <= 0 || rows % QRT_PACK_ROWS || n <= 0 || n % block_values(type)) return 0;
    return qrt_size_mul3(qrt_size_from_u64((uint64_t)(rows / QRT_PACK_ROWS)),
                         qrt_size_from_u64((uint64_t)(n / block_values(type))), e->block_bytes);
}

void qrt_pack_matrix(int type, const void *src, size_t row_bytes, int64_t rows, int64_t n, void *dst) {
    const qrt_packed_entry *e = qrt_packed_entry_for(type);
    const size_t group_bytes = (size_t)(n / block_values(type)) * e->block_bytes;
    for (int64_t g = 0; g < rows / QRT_PACK_ROWS; g++)
        e->pack((const uint8_t *)src + (size_t)g * QRT_PACK_ROWS * row_bytes, row_bytes, n,
                (uint8_t *)dst + (size_t)g * group_bytes);
}

int qrt_packed_worthwhile(int type) {
    /* the CPU's best variant, not a forced one: a run forced to the scalar reference computes on the same
     * packed layout, so every variant gives the same logits for the same file */
    const qrt_packed_entry *e = qrt_packed_entry_for(type);
    if (!e) return 0;
    unsigned simd = 0;
    for (int v = 1; v < QRT_VARIANT_COUNT; v++)
        if (e->gemm[v]) simd |= QRT_VARIANT_BIT(v);
    return qrt_best_variant(simd) > 0;
}

void qrt_packed_run(qrt_packed_fn gemm, qrt_packed_prep_fn prep, void *prep_buf, int64_t n, const uint8_t *groups,
                    size_t group_bytes, int64_t n_groups, const void *act, size_t act_stride, const int32_t *sums,
                    size_t sums_stride, int n_tok, float *out, size_t out_stride, qrt_batch_pos batch) {
    if (!prep || n_tok == 1) {
        for (int64_t g = 0; g < n_groups; g++)
            gemm(n, groups + (size_t)g * group_bytes, act, act_stride, sums, sums_stride, n_tok,
                 out + g * QRT_PACK_ROWS, out_stride, batch);
        return;
    }
    /* chunks of QRT_PREP_TOKENS, each rearranged once for all the groups; a chunk of one token (the tail) reads
     * its row as a one-token call does (the packed rule gives both the same result) */
    for (int t0 = 0; t0 < n_tok; t0 += QRT_PREP_TOKENS) {
        const int nt = n_tok - t0 < QRT_PREP_TOKENS ? n_tok - t0 : QRT_PREP_TOKENS;
        const uint8_t *a = (const uint8_t *)act + (size_t)t0 * act_stride;
        const int32_t *s = sums + (size_t)t0 * sums_stride;
        const qrt_batch_pos bp = {batch.first + t0, batch.total};
        if (nt > 1) prep(n, a, act_stride, s, sums_stride, nt, prep_buf);
        for (int64_t g = 0; g < n_groups; g++)
            gemm(n, groups + (size_t)g * group_bytes, nt > 1 ? prep_buf : a, act_stride, s, sums_stride, nt,
                 out + (size_t)t0 * out_stride + g * QRT_PACK_ROWS, out_stride, bp);
    }
}

/* ---- test probe (qrt_model.h) ---- */

int qrt_packed_matmul(int type, const char *variant, const void *w, int64_t rows, int64_t n, const float *x,
                      int n_tok, float *out) {
    const qrt_packed_entry *e = qrt_packed_entry_for(type);
    const size_t bytes = qrt_packed_bytes(type, rows, n);
    if (!e || !bytes || n_tok <= 0) return -1;
    qrt_packed_fn fn = NULL;
    qrt_packed_prep_fn prep = NULL;
    qrt_matmul_kernels selected;
    if (!variant || strcmp(variant, "auto") == 0) {
        if (qrt_select_matmul(type, &selected) == 0) fn = selected.packed, prep = selected.packed_prep;
    } else {
        for (int v = 0; v < QRT_VARIANT_COUNT; v++)
            if (strcmp(variant, qrt_variant_name(v)) == 0 && qrt_variant_supported(v)) fn = e->gemm[v], prep = e->prep[v];
    }
    if (!fn) return -1;
    const int act_type = qrt_kernel_act_type(type);
    const size_t act_bytes = (qrt_row_bytes(act_type, n) + 63) / 64 * 64;
    const int64_t n_sums = qrt_packed_sums_per_row(act_type, n);
    uint8_t *packed = aligned_alloc(64, (bytes + 63) / 64 * 64);
    uint8_t *act = aligned_alloc(64, act_bytes * (size_t)n_tok);
    int32_t *sums = malloc(((size_t)n_sums + 1) * (size_t)n_tok * sizeof(int32_t));
    uint8_t *prep_buf = prep ? aligned_alloc(64, (QRT_PREP_BYTES(n, QRT_PREP_TOKENS) + 63) / 64 * 64) : NULL;
    int rc = -1;
    if (packed && act && sums && (prep_buf || !prep)) {
        const size_t row_bytes = qrt_row_bytes(type, n), group_bytes = bytes / (size_t)(rows / QRT_PACK_ROWS);
        qrt_pack_matrix(type, w, row_bytes, rows, n, packed);
        for (int t = 0; t < n_tok; t++) {
            qrt_act_from_float(act_type, x + (size_t)t * n, act + (size_t)t * act_bytes, n);
            qrt_packed_act_sums(act_type, act + (size_t)t * act_bytes, n, sums + (size_t)t * (n_sums + 1));
        }
        qrt_packed_run(fn, prep, prep_buf, n, packed, group_bytes, rows / QRT_PACK_ROWS, act, act_bytes, sums,
                       (size_t)n_sums + 1, n_tok, out, (size_t)rows, (qrt_batch_pos){0, n_tok});
        rc = 0;
    }
    free(packed), free(act), free(sums), free(prep_buf);
    return rc;
}
