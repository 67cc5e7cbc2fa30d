/* select.h — the one place kernel variants are chosen (dispatch.c), and the kernel sets bound at load.
 *
 * One rule for everything that has variants (matmul dots and tiles, activation conversion, packed x16 kernels,
 * attention, softmax and exp, the logit statistics): qrt_pick_variant over the variants a consumer has. A model
 * asks once per weight matrix (qrt_select_matmul, at open) and once for its attention and element-wise steps
 * (qrt_select_pass); the token loop then calls through the bound pointers and looks nothing up. A variant forced
 * with QRT_KERNEL or qrt_kernels_force applies to models opened after it.
 */
#ifndef QRT_SELECT_H
#define QRT_SELECT_H

#include "kernels.h"
#include "packed.h"
#include "quant_types.h"
#pragma GCC visibility push(hidden)

#define QRT_VARIANT_BIT(v) (1u << (v))

/* The variant to run among `available` (a mask of QRT_VARIANT_BIT): the forced variant, or the best this CPU runs
 * when none is forced, falling back to lower slots (and to scalar) where the consumer lacks it; -1 if none. */
int qrt_pick_variant(unsigned available);
/* The same ignoring a forced variant: the best this CPU runs (layout decisions, such as repacking, use it so
 * that every forced variant computes on the same layout). */
int qrt_best_variant(unsigned available);

/* What a matmul with weights of one type runs. */
typedef struct {
    int variant;                          /* of the dot kernels */
    int act_type;                         /* activations are converted to this type first */
    qrt_act_from_float_fn act_from_float; /* byte-identical to qrt_act_from_float in every variant */
    qrt_vec_dot_fn dot;                   /* one token */
    qrt_vec_dot_fn batch_dot;             /* prompt batches (ggml's sgemm order for f32/f16), else dot */
    qrt_tile_fn prompt_tile;              /* prompt_tile_nr rows x QRT_TILE_NT tokens, or NULL */
    int prompt_tile_nr;
    qrt_tile_fn decode_tile;              /* QRT_ROWS_NR rows x 1 token, or NULL */
    qrt_packed_fn packed;                 /* on x16 groups (packed.h), or NULL when the type has no packed layout */
    qrt_packed_prep_fn packed_prep;       /* its prep (packed.h), NULL where it reads the activation rows */
    /* float activations only: weight rows are dequantized to f32 (a few rows at a time, per thread) and run
     * through the f32 kernels above; NULL when the weights are f32 already or activations are converted */
    qrt_dequantize_row_fn dequantize;
} qrt_matmul_kernels;

/* 0 and *out filled, or -1 when no variant has a kernel for this weight type. */
int qrt_select_matmul(int type, qrt_matmul_kernels *out);
/* The same with f32 activations whatever the weight type: the f32 kernels, on rows dequantized as they are used.
 * Encoders run this way: the LayerNorm outputs a BERT multiplies carry a few outlier channels, and one q8_0 block
 * scale shared with them costs short texts 0.002 of cosine at q8_0 weights (llama.cpp converts them). */
int qrt_select_matmul_float(int type, qrt_matmul_kernels *out);

/* The forward pass's other kernels: attention products and softmax, the exp of SwiGLU, GeGLU. */
typedef struct {
    qrt_attn_scores_fn attn_scores;
    qrt_attn_softmax_fn attn_softmax;
    qrt_attn_values_fn attn_values;
    qrt_attn_scores_group_fn attn_scores_group; /* NULL: the heads of a kv head run one by one */
    qrt_attn_values_group_fn attn_values_group;
    qrt_expf16_fn expf16;
    qrt_geglu_fn geglu;
} qrt_pass_kernels;

void qrt_select_pass(qrt_pass_kernels *out);

#pragma GCC visibility pop
#endif
