/* dispatch.c — CPU feature detection (once) and the kernel table: for each weight type, the scalar reference and
 * the SIMD variants this build has; the variant used is the best one the CPU runs, unless forced by the
 * QRT_KERNEL environment variable (scalar|avx2|avx512|neon|neon-i8mm|neon-dotprod) or qrt_kernels_force() — the tests force each one.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "qrt.h"
#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
#endif

static qrt_kernel_entry table[QRT_TYPE_COUNT];
static int supported[QRT_VARIANT_COUNT];
static int forced = -1;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static const char *const VARIANT_NAMES[QRT_VARIANT_COUNT] = {"scalar", "avx2", "avx512", "neon",
                                                                  "neon-i8mm", "neon-dotprod"};

const char *qrt_variant_name(int variant) {
    return variant >= 0 && variant < QRT_VARIANT_COUNT ? VARIANT_NAMES[variant] : "none";
}

static int variant_from_name(const char *name) {
    if (!name) return -2;
    if (strcmp(name, "auto") == 0 || name[0] == 0) return -1;
    for (int v = 0; v < QRT_VARIANT_COUNT; v++)
        if (strcmp(name, VARIANT_NAMES[v]) == 0) return v;
    return -2;
}

static void detect(void) {
    supported[QRT_VARIANT_SCALAR] = 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    supported[QRT_VARIANT_AVX2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                  __builtin_cpu_supports("f16c");
    supported[QRT_VARIANT_AVX512] = supported[QRT_VARIANT_AVX2] && __builtin_cpu_supports("avx512f") &&
                                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                                    __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__)
    /* QRT_HWCAP_MASK (hex) clears HWCAP bits, to test the fallback a CPU without dotprod/i8mm takes */
    const char *mask_env = getenv("QRT_HWCAP_MASK");
    const unsigned long mask = mask_env ? strtoul(mask_env, NULL, 16) : 0;
    const unsigned long hwcap = getauxval(AT_HWCAP) & ~mask, hwcap2 = getauxval(AT_HWCAP2);
    supported[QRT_VARIANT_NEON] = 1;
    supported[QRT_VARIANT_NEON_DOTPROD] = (hwcap & HWCAP_ASIMDDP) != 0;
    supported[QRT_VARIANT_NEON_I8MM] = supported[QRT_VARIANT_NEON_DOTPROD] && (hwcap2 & HWCAP2_I8MM) != 0;
#endif
    for (int t = 0; t < QRT_TYPE_COUNT; t++) table[t].act_type = -1;
    qrt_kernels_register_scalar(table);
#if defined(__x86_64__)
    if (supported[QRT_VARIANT_AVX2]) qrt_kernels_register_avx2(table);
    if (supported[QRT_VARIANT_AVX512]) qrt_kernels_register_avx512(table);
#endif
#if defined(__aarch64__)
    qrt_kernels_register_neon(table);
    if (supported[QRT_VARIANT_NEON_DOTPROD]) qrt_kernels_register_neon_dotprod(table);
    if (supported[QRT_VARIANT_NEON_I8MM]) qrt_kernels_register_neon_i8mm(table);
#endif
    const char *env = getenv("QRT_KERNEL");
    int v = variant_from_name(env);
    if (v >= 0 && supported[v]) forced = v;
}

static void init(void) { pthread_once(&once, detect); }

qrt_attn_scores_fn qrt_attn_scores(void) {
    init();
    const int v = forced >= 0 ? forced : QRT_VARIANT_AVX512;
    return v == QRT_VARIANT_AVX512 && supported[v] ? qrt_attn_scores_avx512 : qrt_attn_scores_scalar;
}

qrt_attn_values_fn qrt_attn_values(void) {
    init();
    const int v = forced >= 0 ? forced : QRT_VARIANT_AVX512;
    return v == QRT_VARIANT_AVX512 && supported[v] ? qrt_attn_values_avx512 : qrt_attn_values_scalar;
}

qrt_expf16_fn qrt_expf16(void) {
    init();
    return supported[QRT_VARIANT_AVX512] ? qrt_expf16_avx512 : qrt_expf16_scalar;
}

int qrt_variant_supported(int variant) {
    init();
    return variant >= 0 && variant < QRT_VARIANT_COUNT && supported[variant];
}

int qrt_kernels_forced(void) {
    init();
    return forced;
}

qrt_vec_dot_fn qrt_kernel_variant(int type, int variant) {
    init();
    if (type < 0 || type >= QRT_TYPE_COUNT || variant < 0 || variant >= QRT_VARIANT_COUNT) return NULL;
    return supported[variant] ? table[type].vec_dot[variant] : NULL;
}

qrt_vec_dot_fn qrt_kernel_for(int type, int *variant_out) {
    init();
    if (type < 0 || type >= QRT_TYPE_COUNT || table[type].act_type < 0) return NULL;
    int start = forced >= 0 ? forced : QRT_VARIANT_COUNT - 1;
    for (int v = start; v >= 0; v--) {
        if (supported[v] && table[type].vec_dot[v]) {
            if (variant_out) *variant_out = v;
            return table[type].vec_dot[v];
        }
    }
    return NULL;
}

qrt_vec_dot_fn qrt_kernel_for_batch(int type, int n_tok) {
    int v = 0;
    qrt_vec_dot_fn fn = qrt_kernel_for(type, &v);
    if (fn && n_tok > 1 && table[type].batch_dot[v]) return table[type].batch_dot[v];
    return fn;
}

qrt_tile_fn qrt_tile_for(int type, int n_tok, int *nr) {
    int v = 0;
    if (!qrt_kernel_for(type, &v)) return NULL;
    if (n_tok > 1) {
        *nr = table[type].tile_nr[v];
        return table[type].tile[v];
    }
    *nr = QRT_ROWS_NR;
    return table[type].rows[v];
}

static void act_scalar(int act_type, const float *x, void *y, int64_t n) { qrt_act_from_float(act_type, x, y, n); }
#define ACT_SCALAR(T) static void act_scalar_##T(const float *x, void *y, int64_t n) { act_scalar(QRT_TYPE_##T, x, y, n); }
ACT_SCALAR(F32)
ACT_SCALAR(F16)
ACT_SCALAR(BF16)
ACT_SCALAR(Q8_0)
ACT_SCALAR(Q8_1)
ACT_SCALAR(Q8_K)

qrt_act_from_float_fn qrt_act_converter(int act_type) {
    init();
    if (act_type < 0 || act_type >= QRT_TYPE_COUNT) return NULL;
    for (int v = forced >= 0 ? forced : QRT_VARIANT_COUNT - 1; v > 0; v--)
        if (supported[v] && table[act_type].act_conv[v]) return table[act_type].act_conv[v];
    switch (act_type) {
    case QRT_TYPE_F32: return act_scalar_F32;
    case QRT_TYPE_F16: return act_scalar_F16;
    case QRT_TYPE_BF16: return act_scalar_BF16;
    case QRT_TYPE_Q8_0: return act_scalar_Q8_0;
    case QRT_TYPE_Q8_1: return act_scalar_Q8_1;
    case QRT_TYPE_Q8_K: return act_scalar_Q8_K;
    default: return NULL;
    }
}

int qrt_kernel_act_type(int type) {
    init();
    return type >= 0 && type < QRT_TYPE_COUNT ? table[type].act_type : -1;
}

/* ---- public API (qrt_model.h) ---- */

int qrt_kernels_force(const char *variant) {
    init();
    int v = variant_from_name(variant);
    if (v == -2) return -1;
    if (v >= 0 && !supported[v]) return -1;
    forced = v; /* set before any model runs: matmuls read it when they pick their kernel */
    return 0;
}

int qrt_kernel_variant_supported(const char *variant) {
    int v = variant_from_name(variant);
    return v >= 0 && qrt_variant_supported(v);
}

const char *qrt_kernel_variant_for_type(int type) {
    int v = -1;
    if (!qrt_kernel_for(type, &v)) return NULL;
    return qrt_variant_name(v);
}

int qrt_kernel_has_variant(int type, const char *variant) {
    int v = variant_from_name(variant);
    return v >= 0 && qrt_kernel_variant(type, v) != NULL;
}

int qrt_kernel_dot_batch(int type, const char *variant, const void *w_row, const float *x, int64_t n, float *out) {
    init();
    int v = variant_from_name(variant);
    if (v < 0 || type < 0 || type >= QRT_TYPE_COUNT || !supported[v] || !table[type].batch_dot[v]) return -1;
    int act = qrt_kernel_act_type(type);
    size_t bytes = qrt_row_bytes(act, n);
    void *y = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!y) return -1;
    qrt_act_from_float(act, x, y, n);
    *out = table[type].batch_dot[v](n, w_row, y);
    free(y);
    return 0;
}

int qrt_kernel_dot(int type, const char *variant, const void *w_row, const float *x, int64_t n, float *out) {
    int v = variant_from_name(variant);
    qrt_vec_dot_fn fn = v >= 0 ? qrt_kernel_variant(type, v) : qrt_kernel_for(type, NULL);
    if (!fn) return -1;
    int act = qrt_kernel_act_type(type);
    size_t bytes = qrt_row_bytes(act, n);
    if (bytes == 0 || qrt_row_bytes(type, n) == 0) return -1;
    void *y = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!y) return -1;
    qrt_act_from_float(act, x, y, n);
    *out = fn(n, w_row, y);
    free(y);
    return 0;
}
