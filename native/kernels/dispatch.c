/* dispatch.c — CPU feature detection (once), the kernel table (for each weight type, the scalar reference and the
 * SIMD variants this build has), and the one selection point of select.h: the variant used is the best one the
 * CPU runs, unless forced by the QRT_KERNEL environment variable (scalar|avx2|avx512|neon|neon-i8mm|neon-dotprod)
 * or qrt_kernels_force() — the tests force each one.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "qrt.h"
#include "select.h"
#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
#elif defined(__arm__)
#include <sys/auxv.h>
#ifndef HWCAP_NEON
#define HWCAP_NEON (1 << 12)
#endif
#ifndef HWCAP_VFPv4
#define HWCAP_VFPv4 (1 << 16)
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
#elif defined(__arm__)
    /* 32-bit: NEON is optional (ARMv6 boards, VFP-only ARMv7 cores), and the kernels need VFPv4's fused
     * multiply-add for the reference's fmaf: Cortex-A8/A9 (NEON, VFPv3) run the scalar reference.
     * QRT_HWCAP_MASK clears bits as on aarch64 (1000: no NEON). */
    const char *mask_env = getenv("QRT_HWCAP_MASK");
    const unsigned long mask = mask_env ? strtoul(mask_env, NULL, 16) : 0;
    const unsigned long hwcap = getauxval(AT_HWCAP) & ~mask;
    supported[QRT_VARIANT_NEON] = (hwcap & HWCAP_NEON) && (hwcap & HWCAP_VFPv4);
#endif
    for (int t = 0; t < QRT_TYPE_COUNT; t++) table[t].act_type = -1;
    qrt_kernels_register_scalar(table);
#if defined(__x86_64__)
    if (supported[QRT_VARIANT_AVX2]) qrt_kernels_register_avx2(table);
    if (supported[QRT_VARIANT_AVX512]) qrt_kernels_register_avx512(table);
#endif
#if defined(__aarch64__) || defined(__arm__)
    if (supported[QRT_VARIANT_NEON]) qrt_kernels_register_neon(table);
#endif
#if defined(__aarch64__)
    if (supported[QRT_VARIANT_NEON_DOTPROD]) qrt_kernels_register_neon_dotprod(table);
    if (supported[QRT_VARIANT_NEON_I8MM]) qrt_kernels_register_neon_i8mm(table);
#endif
    const char *env = getenv("QRT_KERNEL");
    int v = variant_from_name(env);
    if (v >= 0 && supported[v]) forced = v;
}

static void init(void) { pthread_once(&once, detect); }

int qrt_variant_supported(int variant) {
    init();
    return variant >= 0 && variant < QRT_VARIANT_COUNT && supported[variant];
}

qrt_vec_dot_fn qrt_kernel_variant(int type, int variant) {
    init();
    if (type < 0 || type >= QRT_TYPE_COUNT || variant < 0 || variant >= QRT_VARIANT_COUNT) return NULL;
    return supported[variant] ? table[type].vec_dot[variant] : NULL;
}

qrt_act_from_float_fn qrt_act_conv_variant(int act_type, int variant) {
    init();
    if (act_type < 0 || act_type >= QRT_TYPE_COUNT || variant < 0 || variant >= QRT_VARIANT_COUNT) return NULL;
    return supported[variant] ? table[act_type].act_conv[variant] : NULL;
}

/* ---- the one selection point (select.h) ---- */

static int pick_from(int start, unsigned available) {
    for (int v = start; v >= 0; v--)
        if (supported[v] && (available & QRT_VARIANT_BIT(v))) return v;
    return -1;
}

int qrt_pick_variant(unsigned available) {
    init();
    return pick_from(forced >= 0 ? forced : QRT_VARIANT_COUNT - 1, available);
}

int qrt_best_variant(unsigned available) {
    init();
    return pick_from(QRT_VARIANT_COUNT - 1, available);
}

static unsigned dot_variants(int type) {
    unsigned mask = 0;
    for (int v = 0; v < QRT_VARIANT_COUNT; v++)
        if (table[type].vec_dot[v]) mask |= QRT_VARIANT_BIT(v);
    return mask;
}

static void act_scalar(int act_type, const float *x, void *y, int64_t n) { qrt_act_from_float(act_type, x, y, n); }
#define ACT_SCALAR(T) static void act_scalar_##T(const float *x, void *y, int64_t n) { act_scalar(QRT_TYPE_##T, x, y, n); }
ACT_SCALAR(F32)
ACT_SCALAR(F16)
ACT_SCALAR(BF16)
ACT_SCALAR(Q8_0)
ACT_SCALAR(Q8_1)
ACT_SCALAR(Q8_K)

static const qrt_act_from_float_fn ACT_SCALAR_BY_TYPE[QRT_TYPE_COUNT] = {
    [QRT_TYPE_F32] = act_scalar_F32,   [QRT_TYPE_F16] = act_scalar_F16,   [QRT_TYPE_BF16] = act_scalar_BF16,
    [QRT_TYPE_Q8_0] = act_scalar_Q8_0, [QRT_TYPE_Q8_1] = act_scalar_Q8_1, [QRT_TYPE_Q8_K] = act_scalar_Q8_K,
};

static qrt_act_from_float_fn act_converter(int act_type) {
    unsigned mask = QRT_VARIANT_BIT(QRT_VARIANT_SCALAR);
    for (int v = 1; v < QRT_VARIANT_COUNT; v++)
        if (table[act_type].act_conv[v]) mask |= QRT_VARIANT_BIT(v);
    const int v = qrt_pick_variant(mask);
    return v > 0 ? table[act_type].act_conv[v] : ACT_SCALAR_BY_TYPE[act_type];
}

/* The packed kernel of a type and its prep, both of the variant picked. Unlike the dot kernels, the packed ones
 * of the neon-i8mm slot are neon-dotprod's except where SMMLA pays (q4_0 prompts: packed_neon_tiles.inc), so on a
 * core with both, auto takes neon-i8mm first. */
static void packed_kernel(int type, qrt_matmul_kernels *out) {
    const qrt_packed_entry *e = qrt_packed_entry_for(type);
    if (!e) return;
    unsigned mask = 0;
    for (int v = 0; v < QRT_VARIANT_COUNT; v++)
        if (e->gemm[v]) mask |= QRT_VARIANT_BIT(v);
    const int i8mm = forced < 0 && supported[QRT_VARIANT_NEON_I8MM] && (mask & QRT_VARIANT_BIT(QRT_VARIANT_NEON_I8MM));
    const int v = i8mm ? QRT_VARIANT_NEON_I8MM : qrt_pick_variant(mask);
    if (v < 0) return;
    out->packed = e->gemm[v];
    out->packed_prep = e->prep[v];
}

int qrt_select_matmul(int type, qrt_matmul_kernels *out) {
    init();
    if (type < 0 || type >= QRT_TYPE_COUNT || table[type].act_type < 0) return -1;
    const qrt_kernel_entry *e = &table[type];
    const int v = qrt_pick_variant(dot_variants(type));
    if (v < 0) return -1;
    *out = (qrt_matmul_kernels){
        .variant = v,
        .act_type = e->act_type,
        .act_from_float = act_converter(e->act_type),
        .dot = e->vec_dot[v],
        .batch_dot = e->batch_dot[v] ? e->batch_dot[v] : e->vec_dot[v],
        .prompt_tile = e->tile[v],
        .prompt_tile_nr = e->tile_nr[v],
        .decode_tile = e->rows[v],
    };
    packed_kernel(type, out);
    return 0;
}

int qrt_select_matmul_float(int type, qrt_matmul_kernels *out) {
    const qrt_type_traits *traits = qrt_traits(type);
    if (!traits || !traits->dequantize_row || qrt_select_matmul(QRT_TYPE_F32, out) != 0) return -1;
    out->dequantize = type == QRT_TYPE_F32 ? NULL : traits->dequantize_row;
    return 0;
}

void qrt_select_pass(qrt_pass_kernels *out) {
    init();
    const unsigned scalar_or_avx512 = QRT_VARIANT_BIT(QRT_VARIANT_SCALAR) | QRT_VARIANT_BIT(QRT_VARIANT_AVX512);
    const int avx512 = qrt_pick_variant(scalar_or_avx512) == QRT_VARIANT_AVX512;
    *out = (qrt_pass_kernels){
        .attn_scores = avx512 ? qrt_attn_scores_avx512 : qrt_attn_scores_scalar,
        .attn_softmax = avx512 ? qrt_attn_softmax_avx512 : qrt_attn_softmax_scalar,
        .attn_values = avx512 ? qrt_attn_values_avx512 : qrt_attn_values_scalar,
        .attn_scores_group = avx512 ? qrt_attn_scores_group_avx512 : NULL,
        .attn_values_group = avx512 ? qrt_attn_values_group_avx512 : NULL,
        .expf16 = avx512 ? qrt_expf16_avx512 : qrt_expf16_scalar,
        .geglu = avx512 ? qrt_geglu_avx512 : qrt_geglu_scalar,
    };
#if defined(__aarch64__) || defined(__arm__)
    /* the attention products, softmax and exp on ARM: the baseline NEON ones under every NEON variant */
    const unsigned neon_variants = QRT_VARIANT_BIT(QRT_VARIANT_NEON) | QRT_VARIANT_BIT(QRT_VARIANT_NEON_DOTPROD) |
                                   QRT_VARIANT_BIT(QRT_VARIANT_NEON_I8MM);
    const int attn = qrt_pick_variant(QRT_VARIANT_BIT(QRT_VARIANT_SCALAR) | neon_variants);
    if (attn > 0 && (QRT_VARIANT_BIT(attn) & neon_variants)) {
        out->attn_scores = qrt_attn_scores_neon;
        out->attn_values = qrt_attn_values_neon;
        out->attn_softmax = qrt_attn_softmax_neon;
        out->expf16 = qrt_expf16_neon;
    }
#endif
}

qrt_vec_dot_fn qrt_kernel_for(int type, int *variant_out) {
    qrt_matmul_kernels k;
    if (qrt_select_matmul(type, &k) != 0) return NULL;
    if (variant_out) *variant_out = k.variant;
    return k.dot;
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
