/* fuzz_quant.c — fuzz target for the quantizers on extreme finite values (not part of libqrt; not in SOURCES).
 *
 * libFuzzer:  bash tests/fuzz.sh quant SECONDS (builds, writes a seed corpus, runs).
 * Plain run over files (-DQRT_FUZZ_MAIN, any C compiler): fuzz_quant FILE...
 *
 * Input: a 5-byte header, then the values' bytes (read cyclically, so any length fills any shape):
 *   [0] which quantizer: below 0x80 a type of the table (qrt_type_info, modulo their count), else the ONNX
 *       block-wise one
 *   [1] rows - 1 (modulo 4)      [2] blocks per row - 1 (modulo 8; block-wise: columns - 1)
 *   [3] flags: bit 0 an importance vector (from the bytes after the rows' values); bits 1-2 how bytes become
 *       values (VALUE_CODES); block-wise: bit 3 4 or 8 bits, bit 4 symmetric, bits 5-7 the block size
 *   [4] a signed power of two scaling the integer codes (so huge, tiny, subnormal values and their mixtures)
 * Every value is finite: raw float bits with an all-ones exponent lose their lowest exponent bit (a NaN/Inf
 * becomes a huge finite value); a scaled code that overflows becomes +-FLT_MAX.
 *
 * The contract (qrt_quant.h, qrt_blockwise.h): no sanitizer report, and either success with finite dequantized
 * values (block-wise: finite scales, codes in range) or an error return with a message. Anything else aborts.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrt.h"

#define HEADER_BYTES 5
#define MAX_TYPES 64

static int types[MAX_TYPES];
static int n_types;
static volatile uint64_t sink;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    qrt_type_info_t info;
    for (int t = 0; t < MAX_TYPES; t++)
        if (qrt_type_info(t, &info) == 0) types[n_types++] = t;
    return 0;
}

static void broken(const char *quantizer, const char *what) {
    fprintf(stderr, "fuzz_quant: %s: %s\n", quantizer, what);
    abort();
}

/* The value stream: the input's value bytes read cyclically in one of four codes. */
typedef struct {
    const uint8_t *bytes;
    size_t len, pos;
    int code, shift;
} value_stream;

static uint8_t next_byte(value_stream *s) {
    if (s->len == 0) return 0;
    const uint8_t b = s->bytes[s->pos];
    s->pos = (s->pos + 1) % s->len;
    return b;
}

static float scaled(float code, int shift) {
    const float v = ldexpf(code, shift);
    return isinf(v) ? copysignf(FLT_MAX, v) : v;
}

static float raw_bits(value_stream *s) {
    uint32_t bits = 0;
    for (int k = 0; k < 4; k++) bits |= (uint32_t)next_byte(s) << (8 * k);
    if ((bits & 0x7f800000u) == 0x7f800000u) bits &= ~0x00800000u; /* NaN/Inf -> exponent 254: huge, finite */
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static float int8_code(value_stream *s) { return scaled((float)(int8_t)next_byte(s), s->shift); }

static float int16_code(value_stream *s) {
    const uint16_t lo = next_byte(s), hi = next_byte(s);
    return scaled((float)(int16_t)(lo | hi << 8), s->shift);
}

/* mostly small codes with a rare outlier: one weight of 1e20 among ordinary ones (the iq4_nl NaN scale) */
static float outlier_code(value_stream *s) {
    const uint8_t b = next_byte(s);
    return b == 0x7f ? raw_bits(s) : scaled((float)(int8_t)b, -7);
}

typedef float (*value_code)(value_stream *s);
static const value_code VALUE_CODES[4] = {raw_bits, int8_code, int16_code, outlier_code};

static float next_value(value_stream *s) { return VALUE_CODES[s->code](s); }

static void check_finite(const char *quantizer, const float *x, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) broken(quantizer, what);
}

static void fuzz_type(int type, int64_t nrows, int64_t blocks, int with_importance, value_stream *vs) {
    qrt_type_info_t info;
    qrt_type_info(type, &info);
    const int64_t ncols = blocks * info.block_size;
    const size_t n = (size_t)(nrows * ncols), row_bytes = qrt_row_bytes(type, ncols);
    float *src = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float)), *importance = NULL;
    uint8_t *dst = malloc((size_t)nrows * row_bytes);
    for (size_t i = 0; i < n; i++) src[i] = next_value(vs);
    if (with_importance) {
        importance = malloc((size_t)ncols * sizeof(float));
        for (int64_t i = 0; i < ncols; i++) importance[i] = fabsf(next_value(vs));
    }
    char err[256] = "";
    if (qrt_quantize_rows(type, src, dst, nrows, ncols, importance, 1, err, sizeof err) == 0) {
        if (qrt_dequantize_rows(type, dst, out, nrows, ncols, 1) != 0) broken(info.name, "dequantize failed");
        check_finite(info.name, out, n, "success with a non-finite dequantized value");
    } else if (err[0] == 0) {
        broken(info.name, "an error without a message");
    }
    free(src), free(out), free(importance), free(dst);
}

static void fuzz_blockwise(int64_t nrows, int64_t ncols, int flags, int with_importance, value_stream *vs) {
    static const int BLOCK_SIZES[8] = {8, 16, 32, 64, 128, 256, 24, 40};
    const int bits = flags & 8 ? 8 : 4, symmetric = (flags >> 4) & 1, block_size = BLOCK_SIZES[flags >> 5];
    const int64_t blocks = (ncols + block_size - 1) / block_size;
    const size_t n = (size_t)(nrows * ncols), nb = (size_t)(nrows * blocks);
    float *src = malloc(n * sizeof(float)), *scales = malloc(nb * sizeof(float)), *importance = NULL;
    uint8_t *q = malloc(n), *zero_points = symmetric ? NULL : malloc(nb);
    for (size_t i = 0; i < n; i++) src[i] = next_value(vs);
    if (with_importance) {
        importance = malloc((size_t)ncols * sizeof(float));
        for (int64_t i = 0; i < ncols; i++) importance[i] = fabsf(next_value(vs));
    }
    char err[256] = "";
    const int rc = qrt_quantize_blockwise(src, nrows, ncols, block_size, bits, symmetric, importance, q, scales,
                                          zero_points, 1, err, sizeof err);
    if (rc == 0) {
        check_finite("blockwise", scales, nb, "success with a non-finite scale");
        const int lo = symmetric ? -(1 << (bits - 1)) : 0, hi = symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
        for (size_t i = 0; i < n; i++) {
            const size_t block = i / (size_t)ncols * (size_t)blocks + i % (size_t)ncols / (size_t)block_size;
            const int code = symmetric ? (int8_t)q[i] : q[i], zero = symmetric ? 0 : zero_points[block];
            if (code < lo || code > hi || zero < lo || zero > hi) broken("blockwise", "a code out of range");
            if (!isfinite(scales[block] * (float)(code - zero))) broken("blockwise", "a non-finite dequantized value");
        }
        double error = qrt_blockwise_row_error(src, ncols, block_size, symmetric, q, scales, zero_points, importance);
        sink += isnan(error);
    } else if (err[0] == 0) {
        broken("blockwise", "an error without a message");
    }
    free(src), free(scales), free(importance), free(q), free(zero_points);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < HEADER_BYTES) return 0;
    const int flags = data[3];
    const int64_t nrows = 1 + data[1] % 4;
    value_stream vs = {data + HEADER_BYTES, size - HEADER_BYTES, 0, (flags >> 1) & 3, (int8_t)data[4]};
    if (data[0] & 0x80)
        fuzz_blockwise(nrows, 1 + data[2], flags, flags & 1, &vs);
    else
        fuzz_type(types[data[0] % n_types], nrows, 1 + data[2] % 8, flags & 1, &vs);
    return 0;
}

#ifdef QRT_FUZZ_MAIN
#include "fuzz_file_main.h"
#endif
