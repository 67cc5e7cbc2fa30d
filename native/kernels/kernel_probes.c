/* kernel_probes.c — the test probes of qrt_kernel_probes.h: single calls of tile and attention kernels on caller
 * data, under a chosen or the dispatched variant. Not used by the forward pass. */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "qrt.h"
#include "select.h"

int qrt_kernel_tile(int type, const void *w_rows, size_t w_stride, const float *x, int64_t n, float *out,
                    int out_cap) {
    const int act = qrt_kernel_act_type(type);
    const size_t act_bytes = act >= 0 ? qrt_row_bytes(act, n) : 0;
    if (act_bytes == 0 || qrt_row_bytes(type, n) == 0 || w_stride < qrt_row_bytes(type, n)) return -1;
    qrt_matmul_kernels k;
    if (qrt_select_matmul(type, &k) != 0 || !k.prompt_tile) return 0;
    const qrt_tile_fn tile = k.prompt_tile;
    const int nr = k.prompt_tile_nr;
    if (nr * QRT_TILE_NT > out_cap) return -1;
    const size_t stride = (act_bytes + 63) / 64 * 64;
    uint8_t *y = aligned_alloc(64, stride * QRT_TILE_NT);
    if (!y) return -1;
    for (int t = 0; t < QRT_TILE_NT; t++) qrt_act_from_float(act, x + (size_t)t * n, y + (size_t)t * stride, n);
    tile(n, w_rows, w_stride, y, stride, out, (size_t)nr);
    free(y);
    return nr;
}

/* 1: scalar, 2: avx512, 3: neon (attention products only), 0: not runnable here */
static int attn_variant(const char *variant) {
    if (!variant) return 0;
    if (strcmp(variant, "scalar") == 0) return 1;
    if (strcmp(variant, "avx512") == 0 && qrt_variant_supported(QRT_VARIANT_AVX512)) return 2;
#if defined(__aarch64__) || defined(__arm__)
    if (strcmp(variant, "neon") == 0 && qrt_variant_supported(QRT_VARIANT_NEON)) return 3;
#endif
    return 0;
}

static qrt_attn_scores_fn scores_kernel(int v) {
#if defined(__aarch64__) || defined(__arm__)
    if (v == 3) return qrt_attn_scores_neon;
#endif
    return v == 2 ? qrt_attn_scores_avx512 : qrt_attn_scores_scalar;
}

static qrt_attn_values_fn values_kernel(int v) {
#if defined(__aarch64__) || defined(__arm__)
    if (v == 3) return qrt_attn_values_neon;
#endif
    return v == 2 ? qrt_attn_values_avx512 : qrt_attn_values_scalar;
}

int qrt_kernel_attn_scores(const char *variant, float *att, const float *q, const void *k, int n_pos, int stride,
                           int hd, int f16, int vecdot, float scale) {
    const int v = attn_variant(variant);
    if (!v || hd <= 0 || hd % 16 || n_pos < 0 || stride < hd) return -1;
    scores_kernel(v)(att, q, k, n_pos, stride, hd, f16, vecdot, scale);
    return 0;
}

int qrt_kernel_attn_scores_group(const char *variant, float *att, size_t att_stride, const float *q, int n_q,
                                 const void *k, int n_pos, int stride, int hd, int f16, int vecdot, float scale) {
    const int v = attn_variant(variant);
    if (!v || hd <= 0 || hd % 16 || n_pos < 0 || stride < hd || n_q < 1 || n_q > QRT_ATTN_GROUP_MAX ||
        att_stride < (size_t)n_pos)
        return -1;
    if (v == 2) {
        qrt_attn_scores_group_avx512(att, att_stride, q, n_q, k, n_pos, stride, hd, f16, vecdot, scale);
        return 0;
    }
    for (int j = 0; j < n_q; j++)
        scores_kernel(v)(att + j * att_stride, q + (size_t)j * hd, k, n_pos, stride, hd, f16, vecdot, scale);
    return 0;
}

int qrt_kernel_attn_values_group(const char *variant, float *out, float *w, size_t att_stride, int n_q,
                                 const void *vals, int n_pos, int stride, int hd, int f16, int vecdot) {
    const int v = attn_variant(variant);
    if (!v || hd <= 0 || hd % 16 || n_pos < 0 || stride < hd || n_q < 1 || n_q > QRT_ATTN_GROUP_MAX ||
        att_stride < (size_t)n_pos)
        return -1;
    float *scratch = malloc(sizeof(float) * 64 * (size_t)hd);
    if (!scratch) return -1;
    if (v == 2)
        qrt_attn_values_group_avx512(out, w, att_stride, n_q, vals, n_pos, stride, hd, f16, vecdot, scratch);
    else
        for (int j = 0; j < n_q; j++)
            values_kernel(v)(out + (size_t)j * hd, w + j * att_stride, vals, n_pos, stride, hd, f16, vecdot, scratch);
    free(scratch);
    return 0;
}

int qrt_kernel_attn_values(const char *variant, float *out, const float *w, const void *vals, int n_pos, int stride,
                           int hd, int f16, int vecdot) {
    const int v = attn_variant(variant);
    if (!v || hd <= 0 || hd % 16 || n_pos < 0 || stride < hd) return -1;
    float *scratch = malloc(sizeof(float) * 64 * (size_t)hd);
    if (!scratch) return -1;
    values_kernel(v)(out, w, vals, n_pos, stride, hd, f16, vecdot, scratch);
    free(scratch);
    return 0;
}

int qrt_kernel_geglu(const char *variant, float *gate, const float *up, int n) {
    const int v = attn_variant(variant);
    if (!v || v == 3 || n < 0) return -1;
    (v == 2 ? qrt_geglu_avx512 : qrt_geglu_scalar)(gate, up, n);
    return 0;
}

int qrt_kernel_attn_softmax(const char *variant, float *x, int n) {
    const int v = attn_variant(variant);
    if (!v || n <= 0) return -1;
#if defined(__aarch64__) || defined(__arm__)
    if (v == 3) {
        qrt_attn_softmax_neon(x, n);
        return 0;
    }
#endif
    (v == 2 ? qrt_attn_softmax_avx512 : qrt_attn_softmax_scalar)(x, n);
    return 0;
}

int qrt_kernel_expf16(const char *variant, float *y, const float *x, int n) {
    const int v = attn_variant(variant);
    if (!v || n < 0 || n % 16) return -1;
    qrt_expf16_fn exp16 = v == 2 ? qrt_expf16_avx512 : qrt_expf16_scalar;
#if defined(__aarch64__) || defined(__arm__)
    if (v == 3) exp16 = qrt_expf16_neon;
#endif
    for (int i = 0; i < n; i += 16) exp16(y + i, x + i);
    return 0;
}

int qrt_kernel_act_convert(const char *variant, int act_type, const float *x, void *y, int64_t n) {
    if (act_type != QRT_TYPE_Q8_0 && act_type != QRT_TYPE_Q8_1 && act_type != QRT_TYPE_Q8_K) return -1;
    if (n <= 0 || qrt_row_bytes(act_type, n) == 0) return -1;
    if (variant && strcmp(variant, "scalar") == 0) {
        qrt_act_from_float(act_type, x, y, n);
        return 0;
    }
    qrt_act_from_float_fn conv = NULL;
    for (int v = 1; v < QRT_VARIANT_COUNT && variant; v++)
        if (strcmp(variant, qrt_variant_name(v)) == 0) conv = qrt_act_conv_variant(act_type, v);
    if (!conv) return -1;
    conv(x, y, n);
    return 0;
}
