/* quant_types.h — GGUF block types: one struct per type, byte-identical to ggml's (ggml-common.h), the GGUF
 * type ids, fp16/bf16 conversion, and the type table.
 *
 * Internal header (not seen by cffi): the public API is qrt_quant.h. Block layouts are file formats, so every
 * struct carries a static size assertion; only uint8_t/int8_t arrays and 16-bit halves appear, so no padding
 * is possible and the structs may be overlaid on unaligned file bytes read with memcpy-free pointer casts only
 * when the platform allows unaligned 16-bit loads (x86, arm64); the portable path is qrt_load_half().
 */
#ifndef QRT_QUANT_TYPES_H
#define QRT_QUANT_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* GGUF tensor type ids (ggml_type); ids not listed here are types we neither read nor write. */
enum qrt_type_id {
    QRT_TYPE_F32 = 0,
    QRT_TYPE_F16 = 1,
    QRT_TYPE_Q4_0 = 2,
    QRT_TYPE_Q4_1 = 3,
    QRT_TYPE_Q5_0 = 6,
    QRT_TYPE_Q5_1 = 7,
    QRT_TYPE_Q8_0 = 8,
    QRT_TYPE_Q8_1 = 9,
    QRT_TYPE_Q2_K = 10,
    QRT_TYPE_Q3_K = 11,
    QRT_TYPE_Q4_K = 12,
    QRT_TYPE_Q5_K = 13,
    QRT_TYPE_Q6_K = 14,
    QRT_TYPE_Q8_K = 15,
    QRT_TYPE_IQ4_NL = 20,
    QRT_TYPE_BF16 = 30,
    QRT_TYPE_COUNT = 31, /* size of the table indexed by id */
};

/* IEEE binary16 and bfloat16, stored as their bit patterns (file byte order is little-endian). */
typedef uint16_t qrt_half;
typedef uint16_t qrt_bf16;

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK4_NL 32
#define QK_K 256
#define K_SCALE_SIZE 12

/* x = d * (q - 8), q in 0..15; qs[j] holds element j (low nibble) and element j + 16 (high nibble). */
typedef struct {
    qrt_half d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 size");

/* x = d * q + m, q in 0..15; nibble order as q4_0. */
typedef struct {
    qrt_half d;
    qrt_half m;
    uint8_t qs[QK4_1 / 2];
} block_q4_1;
_Static_assert(sizeof(block_q4_1) == 4 + QK4_1 / 2, "block_q4_1 size");

/* x = d * (q - 16), q in 0..31; bit 4 of element j is bit j of the little-endian uint32 qh. */
typedef struct {
    qrt_half d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
_Static_assert(sizeof(block_q5_0) == 2 + 4 + QK5_0 / 2, "block_q5_0 size");

/* x = d * q + m, q in 0..31. */
typedef struct {
    qrt_half d;
    qrt_half m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;
_Static_assert(sizeof(block_q5_1) == 4 + 4 + QK5_1 / 2, "block_q5_1 size");

/* x = d * q, q in -127..127. */
typedef struct {
    qrt_half d;
    int8_t qs[QK8_0];
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 size");

/* Activation block for q4_1/q5_1 dot products: s = d * sum(qs). */
typedef struct {
    qrt_half d;
    qrt_half s;
    int8_t qs[QK8_1];
} block_q8_1;
_Static_assert(sizeof(block_q8_1) == 4 + QK8_1, "block_q8_1 size");

/* x = kvalues_iq4nl[q] * d, q in 0..15; nibble order as q4_0. */
typedef struct {
    qrt_half d;
    uint8_t qs[QK4_NL / 2];
} block_iq4_nl;
_Static_assert(sizeof(block_iq4_nl) == 2 + QK4_NL / 2, "block_iq4_nl size");

/* 16 sub-blocks of 16: x = d * (scales[i] & 15) * q - dmin * (scales[i] >> 4), q in 0..3. 2.625 bpw. */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    qrt_half d;
    qrt_half dmin;
} block_q2_K;
_Static_assert(sizeof(block_q2_K) == QK_K / 16 + QK_K / 4 + 4, "block_q2_K size");

/* 16 sub-blocks of 16: x = d * (s6[i] - 32) * (q - 4 * !hbit), q low 2 bits in qs; 6-bit scales packed in 12
 * bytes. 3.4375 bpw. */
typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    qrt_half d;
} block_q3_K;
_Static_assert(sizeof(block_q3_K) == QK_K / 8 + QK_K / 4 + 12 + 2, "block_q3_K size");

/* 8 sub-blocks of 32: x = d * sc[i] * q - dmin * m[i], 6-bit sc/m packed in scales[12], q in 0..15. 4.5 bpw. */
typedef struct {
    qrt_half d;
    qrt_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 4 + K_SCALE_SIZE + QK_K / 2, "block_q4_K size");

/* As q4_K with a fifth bit in qh, q in 0..31. 5.5 bpw. */
typedef struct {
    qrt_half d;
    qrt_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
_Static_assert(sizeof(block_q5_K) == 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, "block_q5_K size");

/* 16 sub-blocks of 16: x = d * scales[i] * (q - 32), q in 0..63 (4 low bits in ql, 2 high in qh). 6.5625 bpw. */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    qrt_half d;
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K size");

/* Activation block for k-quant dot products (never in files): x = d * q, bsums[i] = sum of qs[16i..16i+15]. */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
_Static_assert(sizeof(block_q8_K) == 4 + QK_K + QK_K / 16 * 2, "block_q8_K size");

/* The iq4_nl codebook (ggml-common.h kvalues_iq4nl): a non-uniform 4-bit grid. */
static const int8_t qrt_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                             1,    13,   25,  38,  53,  69,  89,  113};

/* ---- fp16 / bf16 conversion: exact, round to nearest even (bit-identical to ggml's and to F16C) ---- */

static inline uint32_t qrt_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float qrt_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float qrt_fp16_to_fp32(qrt_half h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) { /* inf / nan (quiet the nan, keep its payload like ggml) */
        return qrt_f32_from_bits(sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0));
    }
    if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in fp32 */
        const float v = (float)mant * 0x1.0p-24f;
        return qrt_f32_from_bits(sign | qrt_f32_bits(v));
    }
    return qrt_f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

static inline qrt_half qrt_fp32_to_fp16(float f) {
    const uint32_t x = qrt_f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (qrt_half)(sign | 0x7e00u); /* nan -> quiet nan */
    if (ax >= 0x477ff000u) return (qrt_half)(sign | 0x7c00u); /* rounds to >= 65536: inf */
    if (ax < 0x38800000u) {                                   /* below the smallest normal half 2^-14 */
        if (ax < 0x33000000u) return (qrt_half)sign;          /* < 2^-25 rounds to zero (2^-25 ties to 0) */
        /* subnormal half: value = m * 2^-24, round (1.mant * 2^(e-127)) / 2^-24 to nearest even */
        const uint32_t e = ax >> 23;
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e; /* 14..24+: bits to drop so that unit = 2^-24 */
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (qrt_half)(sign | q);
    }
    /* normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even (carry may bump exp) */
    uint32_t h = ((ax >> 13) - (112u << 10));
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (qrt_half)(sign | h);
}

static inline float qrt_bf16_to_fp32(qrt_bf16 h) { return qrt_f32_from_bits((uint32_t)h << 16); }

static inline qrt_bf16 qrt_fp32_to_bf16(float f) {
    const uint32_t x = qrt_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (qrt_bf16)((x >> 16) | 64u); /* nan -> quiet nan */
    return (qrt_bf16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* ---- the type table ---- */

/* Quantize one row of n values (n a multiple of the block size). importance: n weights or NULL. */
typedef void (*qrt_quantize_row_fn)(const float *x, void *y, int64_t n, const float *importance);
/* Dequantize one row of n values. */
typedef void (*qrt_dequantize_row_fn)(const void *x, float *y, int64_t n);

typedef struct {
    const char *name;  /* as gguf-py / llama.cpp spell it: "Q4_K", "IQ4_NL", "F16" */
    int block_size;    /* values per block */
    int block_bytes;   /* bytes per block */
    int is_quantized;  /* 0 for f32/f16/bf16 */
    qrt_quantize_row_fn quantize_row;
    qrt_dequantize_row_fn dequantize_row;
} qrt_type_traits;

/* Indexed by GGUF type id; entries with name == NULL are unsupported ids. Defined in quant_ref.c. */
extern const qrt_type_traits qrt_type_table[QRT_TYPE_COUNT];

static inline const qrt_type_traits *qrt_traits(int type) {
    if (type < 0 || type >= QRT_TYPE_COUNT || qrt_type_table[type].name == NULL) return NULL;
    return &qrt_type_table[type];
}

#endif
