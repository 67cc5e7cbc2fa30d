/* packed.h — weights repacked at load into groups of 16 interleaved rows, for matmuls that read each weight
 * byte once per group instead of once per (row, token) pair (internal header).
 *
 * Why: a plain row-major quantized matrix makes the integer kernels reduce every (row, token) dot product on
 * its own — per 32 values: one multiply-add instruction, a conversion, a scale and a reduction per pair.
 * In an x16 layout the four consecutive quants of 16 rows fill one 512-bit register, so one vpdpbusd with four
 * broadcast activation bytes advances 16 rows at once, and the block's float step (convert, scale, add) is
 * shared by the 16 rows. llama.cpp repacks q4_0/q4_K the same way on x86 (ggml-cpu "repack" buffers).
 *
 * Each x16 block holds the same values as 16 GGUF blocks of the same column range, rearranged:
 *   chunk[k][r][0..3] = 4 consecutive quant bytes of row r (as stored in the GGUF block, nibbles still packed),
 * so a 64-byte chunk is one vector of 16 lanes (AVX-512) or two of 8 (AVX2: rows 0-7, then 8-15).
 *
 * Result rules shared by every variant (the scalar reference in packed.c and the SIMD ones), so all variants are
 * bit-identical and the tests compare with ==. Each follows the kernel llama.cpp runs for the type on x86, so
 * qrun's logits track llama.cpp's to the bit:
 *   q4_0, q4_K (llama.cpp repacks them by default): per row and token, each block's integer sum is exact, and
 *     the float result is accumulated block by block as acc = fma((float)sumi, d_row * d_act, acc) from 0. q4_K
 *     accumulates its mins term the same way in a second sum, subtracted at the end, and its float step takes
 *     each pair of sub-blocks for tokens in whole groups of 4 of the batch (llama.cpp's gemm), each super-block
 *     for the remaining 1-3 tokens of the batch (its gemv).
 *   q8_0, q5_0, q4_1, q5_1 (not repacked by llama.cpp): ggml_vec_dot_q8_0_q8_0's (and the others') order: 8
 *     float lanes per row, lane k accumulating fma((float)(exact sum of values 4k..4k+3), d_row * d_act) block
 *     by block, summed at the end in the tree order of ggml's hsum_float_8 (qrt_hsum8); q4_1 and q5_1 add
 *     summs = fma(m_row, s_act, summs), accumulated block by block, to that sum.
 *   q6_K (not repacked either): ggml_vec_dot_q6_K_q8_K's 8 integer lanes per row for batches under 8 tokens,
 *     and from 8 tokens on the order of llama.cpp's tiled k-quant matmul: one exact integer per super-block,
 *     then acc = fma((float)s1 * d_row, d_act, acc). The batch size picks the order (QRT_PACKED_BATCH_MIN).
 */
#ifndef QRT_PACKED_H
#define QRT_PACKED_H
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "quant_types.h"
#pragma GCC visibility push(hidden)

#define QRT_PACK_ROWS 16
/* q6_K matmuls of at least this many tokens use the batch order, fewer the lane order (see above) */
#define QRT_PACKED_BATCH_MIN 8

/* q4_0: qs[k][r] = bytes 4k..4k+3 of row r's qs: low nibbles are values 4k.., high nibbles values 16+4k.. */
typedef struct {
    qrt_half d[QRT_PACK_ROWS];
    uint8_t qs[4][QRT_PACK_ROWS][4];
} block_q4_0x16;
_Static_assert(sizeof(block_q4_0x16) == QRT_PACK_ROWS * sizeof(block_q4_0), "block_q4_0x16 size");

/* q8_0: qs[k][r] = values 4k..4k+3 of row r, stored as q ^ QRT_Q8_0X16_FLIP: on x86 q + 128 (unsigned: the left
 * operand of vpdpbusd), on ARM q itself (SDOT multiplies signed bytes) */
#if defined(__x86_64__) || defined(__i386__)
#define QRT_Q8_0X16_FLIP 0x80
#else
#define QRT_Q8_0X16_FLIP 0
#endif
typedef struct {
    qrt_half d[QRT_PACK_ROWS];
    uint8_t qs[8][QRT_PACK_ROWS][4];
} block_q8_0x16;
_Static_assert(sizeof(block_q8_0x16) == QRT_PACK_ROWS * sizeof(block_q8_0), "block_q8_0x16 size");

/* q5_0: qs as q4_0's; qh[k][r] = the fifth bits of row r's values 4k..4k+3 (bits 0-3) and 16+4k..16+4k+3 (bits
 * 4-7), the GGUF block's 32-bit qh regrouped by chunk (same size) */
typedef struct {
    qrt_half d[QRT_PACK_ROWS];
    uint8_t qh[4][QRT_PACK_ROWS];
    uint8_t qs[4][QRT_PACK_ROWS][4];
} block_q5_0x16;
_Static_assert(sizeof(block_q5_0x16) == QRT_PACK_ROWS * sizeof(block_q5_0), "block_q5_0x16 size");

/* q4_1, q5_1: as q4_0 / q5_0 (unsigned values, no offset) with each row's minimum m after d; the activations are
 * q8_1, whose s (d times the sum of its quants) pairs with m. */
typedef struct {
    qrt_half d[QRT_PACK_ROWS];
    qrt_half m[QRT_PACK_ROWS];
    uint8_t qs[4][QRT_PACK_ROWS][4];
} block_q4_1x16;
_Static_assert(sizeof(block_q4_1x16) == QRT_PACK_ROWS * sizeof(block_q4_1), "block_q4_1x16 size");

typedef struct {
    qrt_half d[QRT_PACK_ROWS];
    qrt_half m[QRT_PACK_ROWS];
    uint8_t qh[4][QRT_PACK_ROWS];
    uint8_t qs[4][QRT_PACK_ROWS][4];
} block_q5_1x16;
_Static_assert(sizeof(block_q5_1x16) == QRT_PACK_ROWS * sizeof(block_q5_1), "block_q5_1x16 size");

/* The four 32-value nibble types (q4_0, q5_0, q4_1, q5_1) follow one layout rule, so one packing function and one
 * kernel per variant read them all: in the GGUF block d, then m (types with minimums), qh[4] (types with a
 * fifth bit), qs[16]; in the x16 block d[16] at 0, then m[16] at 32, qh[4][16], qs[4][16][4]. */
#define QRT_NIBBLE_M_OFF 32
#define QRT_NIBBLE_QH_OFF(has_min) (32 + 32 * (has_min))
#define QRT_NIBBLE_QS_OFF(has_min, has_qh) (32 + 32 * (has_min) + 64 * (has_qh))
_Static_assert(offsetof(block_q4_0x16, qs) == QRT_NIBBLE_QS_OFF(0, 0), "block_q4_0x16 layout");
_Static_assert(offsetof(block_q5_0x16, qh) == QRT_NIBBLE_QH_OFF(0) && offsetof(block_q5_0x16, qs) == QRT_NIBBLE_QS_OFF(0, 1),
               "block_q5_0x16 layout");
_Static_assert(offsetof(block_q4_1x16, m) == QRT_NIBBLE_M_OFF && offsetof(block_q4_1x16, qs) == QRT_NIBBLE_QS_OFF(1, 0),
               "block_q4_1x16 layout");
_Static_assert(offsetof(block_q5_1x16, m) == QRT_NIBBLE_M_OFF && offsetof(block_q5_1x16, qh) == QRT_NIBBLE_QH_OFF(1) &&
                   offsetof(block_q5_1x16, qs) == QRT_NIBBLE_QS_OFF(1, 1),
               "block_q5_1x16 layout");
_Static_assert(offsetof(block_q4_0, qs) == 2 && offsetof(block_q5_0, qh) == 2 && offsetof(block_q5_0, qs) == 6 &&
                   offsetof(block_q4_1, m) == 2 && offsetof(block_q4_1, qs) == 4 && offsetof(block_q5_1, qh) == 4 &&
                   offsetof(block_q5_1, qs) == 8,
               "GGUF nibble block layouts");

/* q4_K: the 6-bit scales and mins unpacked to bytes (4 bytes more per row and super-block than the GGUF
 * block); mins in pairs (m[2p], m[2p+1]) per row, one 16-bit pair per 32-bit lane after widening;
 * qs[c][k][r] = bytes 32c+4k.. of row r: low nibbles are values 64c+4k.. (sub-block 2c), high nibbles values
 * 64c+32+4k.. (sub-block 2c+1). */
typedef struct {
    qrt_half d[QRT_PACK_ROWS];
    qrt_half dmin[QRT_PACK_ROWS];
    uint8_t sc[8][QRT_PACK_ROWS];
    uint8_t mins[4][QRT_PACK_ROWS][2];
    uint8_t qs[4][8][QRT_PACK_ROWS][4];
} block_q4_Kx16;
_Static_assert(sizeof(block_q4_Kx16) == QRT_PACK_ROWS * (sizeof(block_q4_K) + 4), "block_q4_Kx16 size");

/* q6_K: sc[j][r] = scale of sub-block j (16 values) of row r; ql[h][m1][k][r] = ql bytes 64h+32m1+4k.. of row
 * r; qh[h][k][r] = qh bytes 32h+4k.. of row r. Value 128h + 32m + l (l = 4k + b) has low bits in
 * ql[h][m & 1][k][r][b] >> 4(m >> 1) and high bits in qh[h][k][r][b] >> 2m, as in the GGUF block. */
typedef struct {
    qrt_half d[QRT_PACK_ROWS];
    int8_t sc[16][QRT_PACK_ROWS];
    uint8_t ql[2][2][8][QRT_PACK_ROWS][4];
    uint8_t qh[2][8][QRT_PACK_ROWS][4];
} block_q6_Kx16;
_Static_assert(sizeof(block_q6_Kx16) == QRT_PACK_ROWS * sizeof(block_q6_K), "block_q6_Kx16 size");

/* Activation sums the packed kernels need besides the activation blocks, per activation row:
 *   q8_0 rows: per block QRT_Q8_0_SUMS int32: the sums of quants 4k..4k+3 (k < 8: the +128 offset of q8_0 and
 *              the -16 of q5_0 per lane), then the sum of all 32 (q4_0's -8 offset), then (x86 builds only) the
 *              eight lanes' q8_0 starts QRT_Q8_FLOAT_BIAS - 128 * sum and their q5_0 starts QRT_Q8_FLOAT_BIAS - 16 * sum
 *              (packed_avx512.c reads these lane sums as floats' bits: kept here, a vector load broadcasts them,
 *              where one computed per block and lane would take the shuffle port the kernel needs), then q4_0's
 *              start -8 * sum and the block's d as a float (the NEON kernels');
 *   q8_K rows: per super-block QRT_Q8_K_SUMS int32: four words, each two int16 sums of 32 quants (sub-blocks
 *              2p, 2p+1), for q4_K's mins (vpmaddwd against the row's min pairs), then the same eight sums as
 *              floats (q4_K's float pairs), then -32 times each of the 16 bsums (q6_K's offsets, by lane). */
#define QRT_Q8_0_SUMS 27
#define QRT_Q8_0_STARTS 9            /* where the q8_0 starts begin in a block's sums */
#define QRT_Q5_0_STARTS 17           /* and the q5_0 starts */
#define QRT_Q4_0_START 25            /* q4_0's start -8 * sum (the NEON kernels load it into all lanes at once) */
#define QRT_Q8_0_D 26                /* the block's d as a float's bits (one load where a half needs two steps) */
#define QRT_Q8_FLOAT_BIAS 0x4B400000 /* the bits of 1.5 * 2^23 */
#define QRT_Q8_K_SUMS 28
#define QRT_Q8_K_FLOAT_SUMS 4 /* where the float sums begin */
#define QRT_Q8_K_NEG_BSUMS 12 /* -32 * bsums[j], j < 16: q6_K's lane offsets (the NEON kernels') */
int64_t qrt_packed_sums_per_row(int act_type, int64_t n);
void qrt_packed_act_sums(int act_type, const void *act_row, int64_t n, int32_t *sums);

/* Where the tokens of one matmul sit in the batch llama.cpp would have run them in (its ubatch of up to
 * QRT_LLAMA_UBATCH tokens): tokens first..first + n_tok - 1 of a batch of total. The q4_K and q6_K orders depend
 * on it (see above), whatever chunks qrun splits a prompt into. */
typedef struct {
    int first, total;
} qrt_batch_pos;
#define QRT_LLAMA_UBATCH 512

/* One group of 16 rows times n_tok activation rows: out[t * out_stride + r] for r < 16, t < n_tok.
 * group: the group's packed blocks (n / block values of them), act: activation rows act_stride bytes apart,
 * sums: their qrt_packed_act_sums rows sums_stride int32s apart. */
typedef void (*qrt_packed_fn)(int64_t n, const void *group, const void *act, size_t act_stride, const int32_t *sums,
                              size_t sums_stride, int n_tok, float *out, size_t out_stride, qrt_batch_pos batch);

/* A variant whose prompt kernels read the activations rearranged (token-interleaved records: NEON q4_0) has a
 * prep: it writes n_tok <= QRT_PREP_TOKENS activation rows (and their sums) rearranged into dst, at most
 * QRT_PREP_BYTES(n, n_tok) bytes, and the variant's gemm, called for more than one token, then reads act = dst
 * (act_stride and sums unused). The caller preps once for all the groups it runs (qrt_packed_run), where the
 * kernel would otherwise rearrange the same tokens once per group. */
typedef void (*qrt_packed_prep_fn)(int64_t n, const void *act, size_t act_stride, const int32_t *sums,
                                   size_t sums_stride, int n_tok, void *dst);
#define QRT_PREP_TOKENS 64
#define QRT_PREP_BYTES(n, n_tok) ((size_t)(((n_tok) + 7) / 8 * 8) * (size_t)(n) * 2) /* 2 bytes per value */

typedef struct {
    size_t block_bytes; /* bytes of one x16 block (16 GGUF blocks) */
    void (*pack)(const void *rows, size_t row_bytes, int64_t n, void *group); /* 16 GGUF rows -> one group */
    qrt_packed_fn gemm[QRT_VARIANT_COUNT]; /* NULL where a variant has no kernel; the scalar one always exists */
    qrt_packed_prep_fn prep[QRT_VARIANT_COUNT]; /* NULL where the variant's gemm reads the activation rows */
} qrt_packed_entry;

/* groups[0..n_groups-1] (group_bytes apart) times n_tok activation rows: out[t * out_stride + 16 g + r], through
 * prep where the kernel has one (prep_buf: QRT_PREP_BYTES(n, QRT_PREP_TOKENS) bytes); batch as for the kernel. */
void qrt_packed_run(qrt_packed_fn gemm, qrt_packed_prep_fn prep, void *prep_buf, int64_t n, const uint8_t *groups,
                    size_t group_bytes, int64_t n_groups, const void *act, size_t act_stride, const int32_t *sums,
                    size_t sums_stride, int n_tok, float *out, size_t out_stride, qrt_batch_pos batch);

void qrt_packed_register_avx2(qrt_packed_entry table[QRT_TYPE_COUNT]);
void qrt_packed_register_avx512(qrt_packed_entry table[QRT_TYPE_COUNT]);
void qrt_packed_register_neon(qrt_packed_entry table[QRT_TYPE_COUNT]);
void qrt_packed_register_neon_dotprod(qrt_packed_entry table[QRT_TYPE_COUNT], int variant);

/* The entry of a weight type, or NULL when the type has no packed layout. */
const qrt_packed_entry *qrt_packed_entry_for(int type);
/* Bytes of a matrix of rows x n packed (rows % 16 == 0), 0 if it cannot be packed. */
size_t qrt_packed_bytes(int type, int64_t rows, int64_t n);
/* Pack rows x n (row_bytes apart) into dst (qrt_packed_bytes of them). */
void qrt_pack_matrix(int type, const void *src, size_t row_bytes, int64_t rows, int64_t n, void *dst);
/* 1 when a variant this CPU runs (forced or not) has a SIMD packed kernel for the type (packing then pays off). */
int qrt_packed_worthwhile(int type);

#pragma GCC visibility pop
#endif
