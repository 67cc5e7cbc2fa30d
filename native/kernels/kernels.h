/* kernels.h — dot-product kernels (internal header): one table indexed by GGUF weight type, with one slot per
 * instruction-set variant (scalar reference, AVX2, AVX-512, NEON), filled by dispatch.c from CPU features.
 *
 * A matmul row is `dot(weight row, activation row)`, where the activation row was first converted to the
 * weight type's `act_type` (f32 for f32, f16 for f16, bf16 for bf16, q8_0 for q4_0/q5_0/q8_0/iq4_nl, q8_1 for
 * q4_1/q5_1, q8_K for the k-quants) — the same pairing as ggml, so results track llama.cpp's.
 *
 * Exactness rule shared by all variants of one integer kernel: the integer sum of each block (or super-block)
 * is exact, and the float result is accumulated block by block, in block order, with the same expression
 * (see the combine helpers below). So every SIMD variant returns bit-identical results to the scalar
 * reference; the tests compare with ==. Float kernels (f32/f16/bf16) reorder additions and match within 1e-5.
 */
#ifndef QRT_KERNELS_H
#define QRT_KERNELS_H
#include <stddef.h>
#include <stdint.h>

#include "quant_types.h"
#pragma GCC visibility push(hidden)

enum qrt_variant {
    QRT_VARIANT_SCALAR = 0,
    QRT_VARIANT_AVX2 = 1,
    QRT_VARIANT_AVX512 = 2, /* AVX-512 F/BW/VL, plus VNNI dot instructions where the CPU has them */
    QRT_VARIANT_NEON = 3,
    /* aarch64 extensions; auto dispatch tries the highest slot first, so dotprod (faster per row) sits above
     * i8mm, whose SMMLA only pays off on 2x2 row tiles */
    QRT_VARIANT_NEON_I8MM = 4,
    QRT_VARIANT_NEON_DOTPROD = 5,
    QRT_VARIANT_COUNT = 6,
};

/* s = dot(weight row x of n values, activation row y already in act_type). */
typedef float (*qrt_vec_dot_fn)(int64_t n, const void *x, const void *y);
/* Convert n floats (a multiple of the act type's block size) to the activation type. */
typedef void (*qrt_act_from_float_fn)(const float *x, void *y, int64_t n);

/* Tile of nr weight rows (x_stride bytes apart) times nt activation rows (y_stride bytes apart):
 * out[t * out_stride + r] = dot(row r, activation t), each bit-identical to vec_dot of the same variant. */
typedef void (*qrt_tile_fn)(int64_t n, const void *x, size_t x_stride, const void *y, size_t y_stride, float *out,
                            size_t out_stride);
#define QRT_TILE_NT 4 /* activation rows per prompt tile */
#define QRT_ROWS_NR 4 /* weight rows per decode tile (one activation row) */

typedef struct {
    int act_type;                               /* activation type id; -1: no kernel for this weight type */
    qrt_vec_dot_fn vec_dot[QRT_VARIANT_COUNT]; /* NULL where a variant has no kernel for this type */
    /* f32/f16 only: the dot used for prompt batches, in the order of ggml's tinyBLAS sgemm (one 16-lane
     * accumulator), where vec_dot follows ggml_vec_dot (4 x 16 lanes) as llama.cpp's single-token decode does */
    qrt_vec_dot_fn batch_dot[QRT_VARIANT_COUNT];
    /* integer types, optional: prompt tiles of tile_nr rows x QRT_TILE_NT tokens, decode tiles of QRT_ROWS_NR
     * rows x 1 token */
    qrt_tile_fn tile[QRT_VARIANT_COUNT];
    int tile_nr[QRT_VARIANT_COUNT];
    qrt_tile_fn rows[QRT_VARIANT_COUNT];
    /* indexed by activation type: vectorized conversion from float, byte-identical to qrt_act_from_float */
    qrt_act_from_float_fn act_conv[QRT_VARIANT_COUNT];
} qrt_kernel_entry;

/* Filled by each kernel file: entries for the types that file implements (others left NULL). */
void qrt_kernels_register_scalar(qrt_kernel_entry table[QRT_TYPE_COUNT]);
void qrt_kernels_register_avx2(qrt_kernel_entry table[QRT_TYPE_COUNT]);
void qrt_kernels_register_avx512(qrt_kernel_entry table[QRT_TYPE_COUNT]);
void qrt_kernels_register_neon(qrt_kernel_entry table[QRT_TYPE_COUNT]);
void qrt_kernels_register_neon_dotprod(qrt_kernel_entry table[QRT_TYPE_COUNT]);
void qrt_kernels_register_neon_i8mm(qrt_kernel_entry table[QRT_TYPE_COUNT]);
/* f32/f16 prompt tiles (kernels_float_tiles.c), called at the end of the AVX-512 / AVX2 registration */
void qrt_float_tiles_register_avx512(qrt_kernel_entry table[QRT_TYPE_COUNT]);
void qrt_float_tiles_register_avx2(qrt_kernel_entry table[QRT_TYPE_COUNT]);

/* Activation conversion, scalar (done once per matmul input, shared by all variants so they see equal inputs). */
void qrt_act_from_float(int act_type, const float *x, void *y, int64_t n);

/* exp of 16 floats, bit-identical to ggml's AVX-512 ggml_v_expf (which llama.cpp's silu and softmax use on this
 * class of CPU): matching it keeps the q8 activation rounding of both runtimes in step. The NEON one returns the
 * scalar reference's bits for every input (ARM builds only). */
typedef void (*qrt_expf16_fn)(float *y, const float *x);
void qrt_expf16_scalar(float *y, const float *x);
void qrt_expf16_avx512(float *y, const float *x);
void qrt_expf16_neon(float *y, const float *x);

/* gate = gelu(gate) * up over n values, gelu's tanh form as ggml's CPU op computes it (GGML_GELU_FP16): the input
 * rounded to f16 and looked up in a table of f16 results, exact outside (-10, 10); 0 at or below -10. */
typedef void (*qrt_geglu_fn)(float *gate, const float *up, int n);
void qrt_geglu_scalar(float *gate, const float *up, int n);
void qrt_geglu_avx512(float *gate, const float *up, int n);
/* The table: gelu of each f16 value, rounded to f16, as floats (65536 of them, filled once). */
const float *qrt_gelu_f16_table(void);

/* Attention products in ggml's summation orders (so f32/f16 KV-cache results equal llama.cpp's):
 *   vecdot = 1: ggml_vec_dot (4 accumulators x 16 lanes over blocks of 64, folded 0+2, 1+3, 0+1, then reduced),
 *               what ggml runs for single-token decode, and for f32 scores;
 *   vecdot = 0: tinyBLAS sgemm (one 16-lane accumulator over the reduced dimension), prompt batches.
 * att[t] = scale * dot(q, k row t) for t < n_pos; out[i] = sum_t att[t] * v[t][i]. k/v rows are `stride`
 * elements apart, f32 or f16 (f16 = 1). With f16 = 1 the kernels round q and att to f16 before the products, as
 * ggml does (values already rounded pass unchanged). scratch holds 64 * hd floats. */
typedef void (*qrt_attn_scores_fn)(float *att, const float *q, const void *k, int n_pos, int stride, int hd,
                                   int f16, int vecdot, float scale);
typedef void (*qrt_attn_values_fn)(float *out, const float *att, const void *v, int n_pos, int stride, int hd,
                                   int f16, int vecdot, float *scratch);
void qrt_attn_scores_scalar(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                            int vecdot, float scale);
void qrt_attn_values_scalar(float *out, const float *att, const void *v, int n_pos, int stride, int hd, int f16,
                            int vecdot, float *scratch);
void qrt_attn_scores_avx512(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                            int vecdot, float scale);
void qrt_attn_values_avx512(float *out, const float *att, const void *v, int n_pos, int stride, int hd, int f16,
                            int vecdot, float *scratch);
void qrt_attn_scores_neon(float *att, const float *q, const void *k, int n_pos, int stride, int hd, int f16,
                          int vecdot, float scale);
void qrt_attn_values_neon(float *out, const float *att, const void *v, int n_pos, int stride, int hd, int f16,
                          int vecdot, float *scratch);
/* The same products for n_q (<= QRT_ATTN_GROUP_MAX) query heads that share a kv head, so the same keys, values and
 * positions: att rows att_stride floats apart, q and out rows hd apart. Each head's results equal attn_scores /
 * attn_values of it alone, bit for bit; in the prompt order the key and value rows are read once for all the heads
 * (ggml's tinyBLAS multiplies them as one matrix). With f16 = 1 the weights in att are rounded to f16 in place.
 * Variants without one leave it NULL in qrt_pass_kernels, and the heads run one by one. */
#define QRT_ATTN_GROUP_MAX 4
typedef void (*qrt_attn_scores_group_fn)(float *att, size_t att_stride, const float *q, int n_q, const void *k,
                                         int n_pos, int stride, int hd, int f16, int vecdot, float scale);
typedef void (*qrt_attn_values_group_fn)(float *out, float *att, size_t att_stride, int n_q, const void *v, int n_pos,
                                         int stride, int hd, int f16, int vecdot, float *scratch);
void qrt_attn_scores_group_avx512(float *att, size_t att_stride, const float *q, int n_q, const void *k, int n_pos,
                                  int stride, int hd, int f16, int vecdot, float scale);
void qrt_attn_values_group_avx512(float *out, float *att, size_t att_stride, int n_q, const void *v, int n_pos,
                                  int stride, int hd, int f16, int vecdot, float *scratch);
/* In-place softmax of n attention scores in ops.c's op_softmax order (ggml_vec_soft_max_f32), bit-equal to it. */
typedef void (*qrt_attn_softmax_fn)(float *x, int n);
void qrt_attn_softmax_scalar(float *x, int n);
void qrt_attn_softmax_avx512(float *x, int n);
void qrt_attn_softmax_neon(float *x, int n);

/* ---- dispatch (dispatch.c; the choosing itself is select.h) ---- */

/* The dot kernel chosen for a weight type under the current variant setting, and its variant; NULL if the type
 * has no kernel at all. */
qrt_vec_dot_fn qrt_kernel_for(int type, int *variant_out);
int qrt_kernel_act_type(int type);
const char *qrt_variant_name(int variant);
/* 1 when the CPU runs this variant. */
int qrt_variant_supported(int variant);
/* One variant's kernel for a type, or NULL. */
qrt_vec_dot_fn qrt_kernel_variant(int type, int variant);
/* One variant's own conversion to an activation type, or NULL (the scalar slot is qrt_act_from_float). */
qrt_act_from_float_fn qrt_act_conv_variant(int act_type, int variant);

/* ---- shared pieces of the integer kernels ---- */

/* The 32-value block types (q4_0, q4_1, q5_0, q5_1, q8_0, iq4_nl) accumulate like ggml's x86 kernels, so our
 * dot products equal llama.cpp's bit for bit: 8 float lanes, lane l takes the exact integer sum of values
 * 4l..4l+3 of each block times the block's scale with one fused multiply-add, and the lanes are summed in the
 * tree order of ggml's hsum_float_8 at the end. */
static inline float qrt_hsum8(const float a[8]) {
    const float r0 = a[4] + a[0], r1 = a[5] + a[1], r2 = a[6] + a[2], r3 = a[7] + a[3];
    return (r0 + r2) + (r1 + r3);
}

static inline float qrt_h2f(qrt_half h) { return qrt_fp16_to_fp32(h); }

/* k-quant super-block decode into a common form: 256 int8 quants, 16 integer scales (one per 16 values) and
 * 16 integer mins, such that value_k = d * scale[k/16] * q[k] - dmin * min[k/16]. */
typedef struct {
    int8_t q[QK_K];
    int16_t scale[16];
    int16_t min[16];
    float d, dmin;
} qrt_kblock;

void qrt_decode_q2_K(const block_q2_K *x, qrt_kblock *b);
void qrt_decode_q3_K(const block_q3_K *x, qrt_kblock *b);
void qrt_decode_q4_K(const block_q4_K *x, qrt_kblock *b);
void qrt_decode_q5_K(const block_q5_K *x, qrt_kblock *b);
void qrt_decode_q6_K(const block_q6_K *x, qrt_kblock *b);

/* q4_K's min terms of one super-block into ggml's 4 float lanes (kernels_ref.c) */
void qrt_q4k_mins(const block_q4_K *x, const block_q8_K *y, float accm[4]);

/* The one float expression every variant of a k-quant kernel uses per super-block. */
static inline float qrt_kq_term(float d, float dmin, float yd, int32_t sumi, int32_t summ) {
    return (d * yd) * (float)sumi - (dmin * yd) * (float)summ;
}

/* 6-bit scale/min of sub-block j for q4_K/q5_K (ggml's get_scale_min_k4). */
static inline void qrt_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* q3_K's 16 6-bit scales (stored biased by 32) unpacked from 12 bytes. */
static inline void qrt_q3k_scales(const uint8_t *packed, int8_t out[16]) {
    uint32_t aux[4];
    memcpy(aux, packed, 12);
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    const uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    memcpy(out, aux, 16);
    for (int i = 0; i < 16; i++) out[i] = (int8_t)(out[i] - 32);
}

#pragma GCC visibility pop
#endif
