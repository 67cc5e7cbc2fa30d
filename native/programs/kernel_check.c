/* kernel_check.c — every SIMD dot kernel this build and CPU have, against the scalar reference (a device-side
 * test driver: the cross-built copy runs under qemu in tests/arm/, where Python is not available).
 *
 *   kernel-check [MODEL.gguf]
 *
 * For each weight type and each variant the CPU runs: rows quantized from random normal values (with small-scale
 * and outlier rows), rows of random bytes (finite fp16 scales), and, given a GGUF, rows of each of its weight
 * tensors. Integer kernels and the NEON/AVX-512 f32/f16 kernels must equal the reference exactly; the AVX2 float
 * kernels and bf16 within 1e-5 of the sum of |products|. Prints one line per type and variant
 * ("q4_K neon-dotprod: 96 rows, 0 mismatches") and exits 1 on any mismatch. Then the same for the packed
 * kernels ("packed q4_K neon-dotprod: 3 matmuls of 32 rows, 0 mismatches (exact)"), the attention products, the exp
 * of 16 floats and the softmax on it, and the q8 activation conversions ("act q8_K neon: 36 rows, 0 mismatches").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "kernels.h"
#include "qrt.h"

enum { N = 2560, ROWS = 32 }; /* 80 blocks of 32: past the 64-block chunks of the NEON prompt tiles */

static const int TYPES[] = {QRT_TYPE_F32,  QRT_TYPE_F16,  QRT_TYPE_BF16, QRT_TYPE_Q4_0, QRT_TYPE_Q4_1,
                            QRT_TYPE_Q5_0, QRT_TYPE_Q5_1, QRT_TYPE_Q8_0, QRT_TYPE_Q2_K, QRT_TYPE_Q3_K,
                            QRT_TYPE_Q4_K, QRT_TYPE_Q5_K, QRT_TYPE_Q6_K, QRT_TYPE_IQ4_NL};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) { /* xorshift64*: deterministic across architectures */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static float uniform(void) { return (float)((next_u64() >> 40) + 0.5) / 16777216.0f; }
static float normal(void) { return sqrtf(-2.0f * logf(uniform())) * cosf(6.2831853f * uniform()); }

static void random_floats(float *x, int row) {
    for (int i = 0; i < N; i++) x[i] = normal();
    if (row % 4 == 1)
        for (int i = 0; i < N; i++) x[i] *= 1e-3f;
    if (row % 4 == 2)
        for (int i = 0; i < N; i += 7) x[i] *= 40.0f;
}

static int is_exact(int type, int variant) {
    if (type == QRT_TYPE_BF16) return 0;
    if (type == QRT_TYPE_F32 || type == QRT_TYPE_F16) return variant != QRT_VARIANT_AVX2;
    return 1;
}

/* random bytes with every fp16 scale field replaced by a finite value (all block structs start with theirs) */
static void random_blocks(int type, uint8_t *row, size_t bytes) {
    for (size_t i = 0; i < bytes; i++) row[i] = (uint8_t)next_u64();
    if (type == QRT_TYPE_F32 || type == QRT_TYPE_F16 || type == QRT_TYPE_BF16) {
        float x[N];
        random_floats(x, 0);
        qrt_quantize_rows(type, x, row, 1, N, NULL, 1, NULL, 0);
        return;
    }
    qrt_type_info_t info;
    qrt_type_info(type, &info);
    for (size_t b = 0; b + (size_t)info.block_bytes <= bytes; b += (size_t)info.block_bytes) {
        uint8_t *blk = row + b;
        const qrt_half scale = qrt_fp32_to_fp16(ldexpf(uniform() + 0.5f, -8));
        switch (type) {
        case QRT_TYPE_Q2_K: memcpy(blk + 80, &scale, 2); memcpy(blk + 82, &scale, 2); break;
        case QRT_TYPE_Q3_K: memcpy(blk + 108, &scale, 2); break;
        case QRT_TYPE_Q6_K: memcpy(blk + 208, &scale, 2); break;
        case QRT_TYPE_Q4_1: case QRT_TYPE_Q5_1: case QRT_TYPE_Q4_K: case QRT_TYPE_Q5_K: /* d, then m/dmin */
            memcpy(blk, &scale, 2); memcpy(blk + 2, &scale, 2); break;
        default: memcpy(blk, &scale, 2); break;
        }
    }
}

typedef struct {
    long rows, bad;
    double worst;
} tally;

static void check_row(int type, int variant, const void *w, const float *x, int64_t n, tally *t) {
    float ref = 0, got = 0;
    qrt_kernel_dot(type, "scalar", w, x, n, &ref);
    qrt_kernel_dot(type, qrt_variant_name(variant), w, x, n, &got);
    t->rows++;
    if (is_exact(type, variant)) {
        if (memcmp(&ref, &got, sizeof ref) != 0) {
            if (t->bad < 3) fprintf(stderr, "  %s %s: %.9g != %.9g\n", gguf_type_name(type), qrt_variant_name(variant), got, ref);
            t->bad++;
        }
    } else {
        float wf[N];
        qrt_dequantize_row(type, w, wf, n);
        double mag = 0;
        for (int i = 0; i < n; i++) mag += fabs((double)wf[i] * x[i]);
        const double err = fabs((double)got - ref) / (mag > 0 ? mag : 1);
        if (err > t->worst) t->worst = err;
        if (!(err <= 1e-5)) t->bad++;
    }
}

/* The x16 packed kernels (packed.h) of every variant against packed.c's scalar reference, bit for bit, on 32
 * quantized-then-random rows and 1, 3, 9 and 65 activation rows (the decode orders and the batch ones; 65: a whole
 * chunk of QRT_PREP_TOKENS and a one-token tail through the preps). */
static const int PACKED_TYPES[] = {QRT_TYPE_Q4_0, QRT_TYPE_Q4_1, QRT_TYPE_Q5_0, QRT_TYPE_Q5_1,
                                   QRT_TYPE_Q8_0, QRT_TYPE_Q4_K, QRT_TYPE_Q6_K};

#define PACKED_TOKENS_MAX 65
static long check_packed(float vals[ROWS][N], long *checked) {
    static uint8_t rows[ROWS * N * 2];
    static float acts[PACKED_TOKENS_MAX][N], ref[PACKED_TOKENS_MAX * ROWS], got[PACKED_TOKENS_MAX * ROWS];
    const int n_toks[] = {1, 3, 9, PACKED_TOKENS_MAX};
    for (int t = 0; t < PACKED_TOKENS_MAX; t++) random_floats(acts[t], t + 1);
    long failures = 0;
    for (size_t ti = 0; ti < sizeof PACKED_TYPES / sizeof PACKED_TYPES[0]; ti++) {
        const int type = PACKED_TYPES[ti];
        const size_t bytes = qrt_row_bytes(type, N);
        qrt_quantize_rows(type, &vals[0][0], rows, ROWS / 2, N, NULL, 1, NULL, 0);
        for (int r = ROWS / 2; r < ROWS; r++) random_blocks(type, rows + (size_t)r * bytes, bytes);
        for (int v = 1; v < QRT_VARIANT_COUNT; v++) {
            const char *name = qrt_variant_name(v);
            long bad = 0, runs = 0;
            for (size_t k = 0; k < sizeof n_toks / sizeof n_toks[0]; k++) {
                const int n_tok = n_toks[k];
                if (qrt_packed_matmul(type, name, rows, ROWS, N, &acts[0][0], n_tok, got) != 0) break;
                qrt_packed_matmul(type, "scalar", rows, ROWS, N, &acts[0][0], n_tok, ref);
                runs++;
                for (int i = 0; i < n_tok * ROWS; i++)
                    if (memcmp(&ref[i], &got[i], sizeof ref[i]) != 0) {
                        if (bad < 3) fprintf(stderr, "  packed %s %s, %d tokens, output %d: %.9g != %.9g\n",
                                             gguf_type_name(type), name, n_tok, i, got[i], ref[i]);
                        bad++;
                    }
            }
            if (!runs) continue;
            printf("packed %s %s: %ld matmuls of %d rows, %ld mismatches (exact)\n", gguf_type_name(type), name, runs,
                   ROWS, bad);
            failures += bad;
            (*checked)++;
        }
    }
    return failures;
}

/* The attention products of the variants that have their own (avx512, neon) against the scalar reference, bit for
 * bit: head sizes 64, 80, 128 and 256, 1 to 130 positions (past the 64 lanes of the single-token order), f32 and f16
 * caches, both orders. */
static long check_attention(long *checked) {
    enum { HD_MAX = 256, POS_MAX = 130 };
    static float q[HD_MAX], kv[POS_MAX * HD_MAX], w[POS_MAX], ref[HD_MAX + POS_MAX], got[HD_MAX + POS_MAX];
    static qrt_half kv16[POS_MAX * HD_MAX];
    static const char *const variants[] = {"avx512", "neon"};
    const int hds[] = {64, 80, 128, 256}, positions[] = {1, 7, 40, 64, 130};
    for (int i = 0; i < HD_MAX; i++) q[i] = normal();
    /* queries at the ends of f16's range, which an f16 cache rounds them to: 65504, subnormal halves, 0 (a tie) */
    q[3] = 65519.0f, q[9] = 1e-6f, q[17] = 3e-8f, q[33] = -0x1p-25f, q[70] = 0x1.8p-24f;
    for (int i = 0; i < POS_MAX * HD_MAX; i++) kv16[i] = qrt_fp32_to_fp16(kv[i] = normal());
    for (int t = 0; t < POS_MAX; t++) w[t] = uniform() / 16.0f;
    long failures = 0;
    for (size_t vi = 0; vi < sizeof variants / sizeof variants[0]; vi++) {
        const char *v = variants[vi];
        if (qrt_kernel_attn_scores(v, got, q, kv, 1, 64, 64, 0, 1, 1.0f) != 0) continue;
        long calls = 0, bad = 0;
        for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++)
            for (size_t p = 0; p < sizeof positions / sizeof positions[0]; p++)
                for (int f16 = 0; f16 < 2; f16++)
                    for (int vecdot = 0; vecdot < 2; vecdot++) {
                        const int hd = hds[h], n_pos = positions[p];
                        const void *k = f16 ? (const void *)kv16 : (const void *)kv;
                        qrt_kernel_attn_scores("scalar", ref, q, k, n_pos, hd, hd, f16, vecdot, 0.125f);
                        qrt_kernel_attn_scores(v, got, q, k, n_pos, hd, hd, f16, vecdot, 0.125f);
                        qrt_kernel_attn_values("scalar", ref + n_pos, w, k, n_pos, hd, hd, f16, vecdot);
                        qrt_kernel_attn_values(v, got + n_pos, w, k, n_pos, hd, hd, f16, vecdot);
                        calls += 2;
                        if (memcmp(ref, got, sizeof(float) * (size_t)(n_pos + hd)) != 0) {
                            if (bad < 3)
                                fprintf(stderr, "  attention %s: hd %d, %d positions, f16 %d, vecdot %d differ\n", v,
                                        hd, n_pos, f16, vecdot);
                            bad++;
                        }
                    }
        printf("attention %s: %ld calls, %ld mismatches (exact)\n", v, calls, bad);
        failures += bad;
        (*checked)++;
    }
    return failures;
}

/* The exps of the variants that have their own (avx512, neon) against the scalar reference, bit for bit: a sweep of
 * -110..100 (ggml's range is about -104..89: denormal results below -87.3, overflow above 88.7), random bit
 * patterns (NaN, inf, denormal and huge inputs, mostly among ordinary lanes), and listed edge values; then the
 * softmax built on them at lengths around its blocks of 16. */
static long check_expf(long *checked) {
    enum { SWEEP = 1 << 16, RANDOM = 1 << 16, COUNT = 2 * SWEEP + RANDOM };
    static float x[COUNT], ref[COUNT], got[COUNT];
    static const float edges[] = {0.0f, -0.0f, 0x1p-149f, -0x1p-149f, 0x1p-127f, 0x1p-126f, 1e-30f, -1e-20f,
                                  0x1.fffffep127f, -0x1.fffffep127f, INFINITY, -INFINITY, NAN, -NAN,
                                  88.0f, 88.37f, 88.72f, 88.7228394f, 89.0f, -87.33f, -87.3365479f, -100.0f,
                                  -103.97f, -104.0f, -133.0f, 133.0f, -133.2f, 133.2f, 0.5f, -0.5f, 1.0f, -1.0f};
    static const char *const variants[] = {"avx512", "neon"};
    for (int i = 0; i < SWEEP; i++) x[i] = -110.0f + 210.0f * (float)i / SWEEP;
    static const float edge_from[4] = {-105.0f, 87.0f, 131.0f, -135.0f}, edge_width[4] = {19.0f, 3.0f, 4.0f, 4.0f};
    for (int i = 0; i < SWEEP; i++) /* the ends of the range, and |n| near 192, denser */
        x[SWEEP + i] = edge_from[i % 4] + edge_width[i % 4] * uniform();
    for (int i = 0; i < RANDOM; i++) {
        const uint32_t bits = (uint32_t)next_u64();
        memcpy(&x[2 * SWEEP + i], &bits, sizeof bits);
    }
    /* the edge values among ordinary lanes, in several vectors and lanes */
    for (size_t e = 0; e < sizeof edges / sizeof edges[0]; e++)
        for (int k = 0; k < 4; k++) x[(size_t)(next_u64() % SWEEP)] = edges[e];
    long failures = 0;
    for (size_t vi = 0; vi < sizeof variants / sizeof variants[0]; vi++) {
        const char *v = variants[vi];
        if (qrt_kernel_expf16(v, got, x, 16) != 0) continue;
        qrt_kernel_expf16("scalar", ref, x, COUNT);
        qrt_kernel_expf16(v, got, x, COUNT);
        long bad = 0;
        for (int i = 0; i < COUNT; i++)
            if (memcmp(&ref[i], &got[i], sizeof ref[i]) != 0) {
                if (bad < 3) fprintf(stderr, "  expf16 %s: e^%.9g = %.9g != %.9g\n", v, x[i], got[i], ref[i]);
                bad++;
            }
        printf("expf16 %s: %d values, %ld mismatches (exact)\n", v, COUNT, bad);
        long soft_bad = 0, lengths = 0;
        for (int n = 1; n <= 140; n += n < 40 ? 1 : 33, lengths++) {
            for (int i = 0; i < n; i++) ref[i] = got[i] = 8.0f * normal();
            qrt_kernel_attn_softmax("scalar", ref, n);
            qrt_kernel_attn_softmax(v, got, n);
            soft_bad += memcmp(ref, got, sizeof(float) * (size_t)n) != 0;
        }
        printf("softmax %s: %ld lengths, %ld mismatches (exact)\n", v, lengths, soft_bad);
        failures += bad + soft_bad;
        (*checked)++;
    }
    return failures;
}

/* The activation conversions of the variants that have their own (q8_0, q8_1, q8_K) against qrt_act_from_float,
 * byte for byte: the random rows, rows of halves (ties of the rounding: amax 127, so scale 1), rows whose largest
 * magnitude appears with both signs, and blocks of zeros, of tiny values (denormals among them) and of a single
 * nonzero value. Not blocks of denormals alone: their inverse scale overflows to inf, and the x86 conversions pack
 * the resulting NaN/inf quants as ggml's do, not as the reference's lrintf. */
static long check_act(float acts[ROWS][N], long *checked) {
    static const int types[] = {QRT_TYPE_Q8_0, QRT_TYPE_Q8_1, QRT_TYPE_Q8_K};
    static float edge[4][N];
    static uint8_t ref[N * 2], got[N * 2];
    for (int i = 0; i < N; i++) {
        edge[0][i] = i % 32 == 5 ? 127.0f : (float)((int)(next_u64() % 255) - 127) + 0.5f;
        edge[1][i] = acts[0][i];
        edge[2][i] = i < 256 ? 0.0f : i < 512 ? ldexpf(normal(), -130 + (int)(next_u64() % 40))
                                    : i < 544 ? ldexpf(normal(), -112) : 0.0f;
        edge[3][i] = acts[1][i];
    }
    for (int b = 0; b < N; b += 256) { /* both signs of the largest magnitude, the negative one first or second */
        edge[1][b + 17] = b % 512 ? 50.0f : -50.0f;
        edge[1][b + 200] = b % 512 ? -50.0f : 50.0f;
    }
    edge[2][700] = 3.0f;
    long failures = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (int v = 1; v < QRT_VARIANT_COUNT; v++) {
            const int type = types[ti];
            const char *name = qrt_variant_name(v);
            if (qrt_kernel_act_convert(name, type, acts[0], got, N) != 0) continue;
            const size_t bytes = qrt_row_bytes(type, N);
            long rows = 0, bad = 0;
            for (int r = 0; r < ROWS + 4; r++, rows++) {
                const float *x = r < ROWS ? acts[r] : edge[r - ROWS];
                memset(ref, 0, bytes);
                memset(got, 0xAA, bytes);
                qrt_kernel_act_convert("scalar", type, x, ref, N);
                qrt_kernel_act_convert(name, type, x, got, N);
                if (memcmp(ref, got, bytes) != 0) {
                    if (bad < 3) fprintf(stderr, "  act %s %s: row %d differs\n", gguf_type_name(type), name, r);
                    bad++;
                }
            }
            printf("act %s %s: %ld rows, %ld mismatches (exact)\n", gguf_type_name(type), name, rows, bad);
            failures += bad;
            (*checked)++;
        }
    return failures;
}

int main(int argc, char **argv) {
    gguf_file *model = NULL;
    char err[512];
    if (argc > 1 && !(model = gguf_open(argv[1], err, sizeof err))) {
        fprintf(stderr, "kernel-check: %s\n", err);
        return 2;
    }
    long failures = 0, checked = 0;
    static uint8_t row[ROWS][N * 4];
    static float acts[ROWS][N], vals[ROWS][N];
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        const int type = TYPES[ti];
        const size_t bytes = qrt_row_bytes(type, N);
        for (int r = 0; r < ROWS; r++) {
            random_floats(acts[r], r + 1);
            random_floats(vals[r], r);
        }
        if (qrt_quantize_rows(type, &vals[0][0], row, ROWS / 2, N, NULL, 1, err, sizeof err) != 0) {
            fprintf(stderr, "kernel-check: quantize %s: %s\n", gguf_type_name(type), err);
            return 2;
        }
        /* rows stay packed at `bytes` apart after quantize: move them to their slots */
        for (int r = ROWS / 2 - 1; r >= 0; r--) memmove(row[r], (uint8_t *)row + (size_t)r * bytes, bytes);
        for (int r = ROWS / 2; r < ROWS; r++) random_blocks(type, row[r], bytes);
        for (int v = 1; v < QRT_VARIANT_COUNT; v++) {
            if (!qrt_variant_supported(v) || !qrt_kernel_variant(type, v)) continue;
            tally t = {0, 0, 0};
            for (int r = 0; r < ROWS; r++) check_row(type, v, row[r], acts[r], N, &t);
            long real = 0;
            for (uint64_t k = 0; model && k < model->n_tensors; k++) {
                const gguf_tensor *g = &model->tensors[k];
                /* the first n values of each row: the largest multiple of 256 up to N that the row holds */
                const int64_t n = (int64_t)(g->ne[0] < N ? g->ne[0] : N) / 256 * 256;
                if (g->type != (uint32_t)type || n == 0 || g->n_dims < 2) continue;
                const size_t row_bytes = qrt_row_bytes(type, (int64_t)g->ne[0]);
                for (int r = 0; r < 4 && (uint64_t)r < g->ne[1]; r++, real++)
                    check_row(type, v, (const uint8_t *)g->data + (size_t)r * 97 % g->ne[1] * row_bytes,
                              acts[r], n, &t);
            }
            printf("%s %s: %ld rows (%ld from the model), %ld mismatches%s", gguf_type_name(type),
                   qrt_variant_name(v), t.rows, real, t.bad, is_exact(type, v) ? " (exact)\n" : "");
            if (!is_exact(type, v)) printf(" (worst relative error %.2g)\n", t.worst);
            failures += t.bad;
            checked++;
        }
    }
    for (int r = 0; r < ROWS; r++) random_floats(vals[r], r);
    failures += check_packed(vals, &checked);
    failures += check_attention(&checked);
    failures += check_expf(&checked);
    for (int r = 0; r < ROWS; r++) random_floats(acts[r], r + 1);
    failures += check_act(acts, &checked);
    printf("kernel-check: %ld type/variant pairs, %ld mismatches\n", checked, failures);
    if (model) gguf_close(model);
    return failures ? 1 : 0;
}
