/* model.h — the model as three plain structs (internal header):
 *   Config   — the shape, read from GGUF metadata;
 *   Weights  — matrices pointing into the mapped file (used in place);
 *   RunState — activation buffers for one batch and the KV cache, allocated once at open.
 * model.c holds the loader glue and the forward pass; ops.c the small numeric helpers it calls.
 */
#ifndef QRT_MODEL_INTERNAL_H
#define QRT_MODEL_INTERNAL_H
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "kernels.h"
#include "ops.h"
#include "qrt.h"
#include "select.h"
#include "threadpool.h"
#pragma GCC visibility push(hidden)

enum rope_style {
    ROPE_NORM = 0, /* rotate adjacent pairs (x[2i], x[2i+1]): llama, mistral, smollm3 */
    ROPE_NEOX = 2, /* rotate halves (x[i], x[i + n_rot/2]): qwen2, qwen3, gemma3, phi3, the MoE families */
};

enum ffn_act {
    FFN_SILU = 0,      /* SwiGLU: silu(gate) * up */
    FFN_GELU_TANH = 1, /* GeGLU: gelu(gate) * up, gelu's tanh form (gemma3) */
    FFN_GELU_ERF = 2,  /* no gate: gelu(up), gelu's erf form (BERT, as transformers computes it) */
};


enum qk_norm {
    QK_NORM_NONE = 0,
    QK_NORM_HEAD = 1, /* [head_dim] weights, each head normalised alone */
    QK_NORM_FULL = 2, /* [q_dim] and [kv_dim] weights, all heads normalised together */
};

#define QRT_MAX_LAYERS 1024 /* read_config refuses more */
#define QRT_MAX_EXPERTS 512 /* read_config refuses more */
#define QRT_ENCODER_BATCH 1024 /* rows of an encoder's forward (whole sequences; more when one sequence is longer) */
/* an encoder's attention buffer per thread: one head's keys transposed ([head_dim][n_ctx rounded up to 16]) and
 * four rows of scores (encoder.c's QUERIES) */
#define QRT_ENCODER_ATT_FLOATS(n_ctx, head_dim) (((size_t)(n_ctx) + 15) / 16 * 16 * ((size_t)(head_dim) + 4))

/* What a layer does besides the common steps, per layer: set at open from the family's row and the file's keys. */
enum layer_flags {
    LAYER_SWA = 1,     /* sliding-window attention: keys older than n_swa positions are not seen, nor kept */
    LAYER_NO_ROPE = 2, /* no rotary embedding on q and k (smollm3's every 4th layer) */
};

typedef struct {
    char arch[32];
    int dim;          /* embedding width */
    int hidden_dim;   /* FFN width */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;     /* key/value width per head */
    int n_rot;        /* rotated dims per head (<= head_dim) */
    int vocab_size;
    int n_ctx_train;
    int n_ctx_orig;    /* rope.scaling.original_context_length, else n_ctx_train */
    float rms_eps;
    RopeParams rope;
    int rope_style;
    int has_qkv_bias;  /* qwen2 */
    int has_qk_norm;   /* enum qk_norm: per-head RMSNorm of q and k (qwen3, gemma3), or over all of q and k (olmoe) */
    int ffn_act;       /* enum ffn_act */
    int post_norms;    /* gemma3: RMSNorm of the attention and FFN outputs before their residual adds */
    float embd_scale;  /* gemma3: embedding rows times sqrt(dim); 0 = none */
    float q_scale;     /* a scale applied to q before attention instead of 1/sqrt(head_dim) in it; 0 = none */
    float logit_softcap; /* final logits = cap * tanh(logits / cap); 0 = none */
    int n_swa;         /* sliding window in positions (LAYER_SWA layers), 0 = none */
    RopeParams rope_swa; /* the rotary parameters of LAYER_SWA layers (their own frequency base, unscaled) */
    int fused_up;      /* phi3: ffn_up holds the gate rows, then the up rows */
    /* mixture of experts (0 experts: a dense FFN): softmax over the router's logits, the top n_expert_used,
     * their weights renormalised to sum 1 when expert_norm */
    int n_expert, n_expert_used, expert_ffn, expert_norm;
    unsigned char layer[QRT_MAX_LAYERS]; /* enum layer_flags per layer */
    /* embeddings (qrt_model_embed): pooling, L2 normalisation, the tokens one text may take */
    int pooling, normalize, max_seq_len;
    /* encoders (BERT): bidirectional attention within each sequence, post-LayerNorm with bias, learned positions,
     * no KV cache (encoder.c) */
    int encoder;
    float norm_eps; /* LayerNorm epsilon */
} Config;

/* A weight matrix of `rows` output rows, each `cols` values of GGUF type `type` (row_bytes bytes per row). */
typedef struct {
    const uint8_t *data;
    int type;
    int64_t rows, cols;
    size_t row_bytes;
    const char *name;
    size_t name_len; /* name is not NUL-terminated (it points into the file) */
    /* the same rows repacked into x16 groups (packed.h) at open, or NULL: matmuls then use the packed kernels */
    const uint8_t *packed;
    size_t packed_group_bytes;
    qrt_matmul_kernels kernels; /* chosen once at open (select.h) */
    int input_recorded; /* a later row range of a fused tensor: calibration recorded its input with the first */
} Matrix;

typedef struct {
    const float *attn_norm, *ffn_norm;       /* [dim] */
    const float *attn_post_norm, *ffn_post_norm; /* [dim] (gemma3) or NULL */
    const float *q_norm, *k_norm;            /* [head_dim] (qwen3) or NULL */
    const float *bq, *bk, *bv;               /* biases (qwen2) or NULL */
    Matrix wq, wk, wv, wo;                   /* attention */
    Matrix w_gate, w_up, w_down;             /* SwiGLU FFN */
    Matrix router;                           /* MoE: [n_expert rows, dim] */
    Matrix *gate_exps, *up_exps, *down_exps; /* MoE: n_expert matrices each, views into the stacked tensors */
    /* encoders: the other biases, and the LayerNorms after the attention and FFN residual adds */
    const float *bo, *b_up, *b_down;
    const float *attn_out_norm, *attn_out_norm_b, *layer_out_norm, *layer_out_norm_b;
} LayerWeights;

typedef struct {
    Matrix token_embd; /* rows = vocab, cols = dim; any type, dequantized one row per token */
    /* encoders: learned position and token-type rows (read like token_embd) and the LayerNorm of their sum */
    Matrix position_embd, token_types;
    const float *embd_norm, *embd_norm_b;
    LayerWeights *layers;
    const float *output_norm;
    Matrix output; /* the head: its own tensor, or token_embd when tied */
    const float *rope_freqs; /* [n_rot/2] frequency divisors, or NULL */
    const float *rope_long, *rope_short; /* LongRoPE's divisors (phi3), one of them becomes rope_freqs at open */
    /* f32 copies of small vectors whose stored type is not f32 (norms/biases stored as f16) */
    float **owned;
    int n_owned;
    uint8_t *packed; /* one buffer holding every packed matrix (packed_bytes long, mapped by alloc_weights) */
    size_t packed_bytes;
} Weights;

typedef struct {
    int n_batch;       /* rows of every activation buffer */
    float *x;          /* [n_batch][dim] residual stream */
    float *xb, *xb2;   /* [n_batch][max(dim, q_dim)] */
    float *q, *k, *v;  /* [n_batch][q_dim], [n_batch][kv_dim] x2 */
    float *hb, *hb2;   /* [n_batch][hidden_dim] */
    float *att;        /* [n_threads][n_ctx] attention scores */
    float *attn_scratch; /* [n_threads][64 * head_dim] accumulators of the weighted value sum */
    float *rope_cos, *rope_sin; /* [n_batch][n_rot/2] */
    float *rope_cos_swa, *rope_sin_swa; /* the same for LAYER_SWA layers' own base, or NULL when no layer is one */
    float *logits;     /* [vocab] last token */
    /* MoE: router probabilities [n_batch][n_expert]; per token its experts and weights [n_batch][n_expert_used];
     * the (token, slot) pairs expert by expert (expert e's from expert_first[e]) and the pair of each slot; per
     * pair its input row [dim], FFN rows [expert_ffn] x2 and output row [dim], in pair order */
    float *router_probs, *expert_weight, *expert_x, *expert_h, *expert_h2, *expert_out;
    int32_t *expert_id, *expert_pairs, *expert_first, *expert_slot;
    uint8_t *expert_act, *expert_act2; /* [n_batch * n_expert_used][act_row_bytes]: gathered rows converted */
    int32_t *expert_act_sums, *expert_act_sums2;
    uint8_t *act;      /* [n_batch][largest activation row in any act type] */
    float *rows_f32;   /* [n_threads][rows_f32_per_thread]: weight rows dequantized for float-activation matmuls */
    size_t rows_f32_per_thread;
    uint8_t *prep;     /* [n_threads][prep_per_thread]: prompt activations rearranged for the packed kernels */
    size_t prep_per_thread;
    size_t act_row_bytes;
    int32_t *act_sums; /* [n_batch][act_sums_stride]: block sums of act for the packed kernels */
    size_t act_sums_stride;
    /* KV cache: per layer kv_rows[l] rows of kv_dim f32 or f16 values from element kv_offset[l]. Full-attention
     * layers hold n_ctx rows (position p in row p); sliding-window layers only their window plus one batch
     * (position p in row p - swa_base; a batch's keys are all stored before its first token's attention). */
    void *key_cache, *value_cache;
    size_t *kv_offset;
    int *kv_rows;
    int *swa_base; /* per sequence: the position in row 0 of the sliding layers' rows */
    int kv_f32;
    int n_ctx;         /* positions per sequence */
    int n_seq;         /* sequences the cache holds: each has its own rows, kv_seq_values values from the first's */
    size_t kv_seq_values;
    /* the running forward's rows: the sequence and position of each (one sequence's consecutive positions, or one
     * position of each of several sequences: model.decode_rows) */
    int32_t *row_seq, *row_pos;
    int32_t *seq_start; /* embed: [n_batch + 1] first row of each sequence of a batch */
    float *pooled;      /* embed of a decoder: [dim] running sum of a sequence's rows */
} RunState;

/* ---- the model, and the pieces of model.c that encoder.c runs too ---- */

struct matmul_job;

struct qrt_model {
    gguf_file *file;
    Config config;
    Weights weights;
    RunState state;
    qrt_threadpool *pool;
    int n_threads;
    int *n_past; /* per sequence: the tokens in its cache (the position of its next token) */
    int has_logits;
    /* the running forward's rows are single-token steps of different sequences: each row runs the kernels it runs
     * alone (the one-token matmuls, token by token over each block of weight rows; decode attention), so a
     * sequence's logits do not depend on what else is in the batch */
    int decode_rows;
    char path[512];
    char describe[160];
    char error[512];
    double prompt_s, gen_s;
    int prompt_tokens, gen_tokens;
    double pool_s; /* of prompt_s + gen_s, the time spent inside pool runs; the rest is the calling thread alone */
    int64_t pool_tasks; /* the tasks of those runs */
    qrt_imatrix *imatrix; /* when set, every weight matmul's input rows are added to it (calibration) */
    qrt_batch_pos batch;  /* the running forward chunk's place in llama.cpp's ubatch of this eval (packed.h) */
    qrt_pass_kernels pass; /* attention, softmax and exp variants, chosen once at open (select.h) */
    struct matmul_job *expert_jobs; /* MoE: room for the gate and up (or down) matmuls of every expert */
    int *expert_first_task;         /* [2 n_expert + 1] */
};

__attribute__((format(printf, 3, 4))) int model_set_err(char *err, size_t errlen, const char *fmt, ...);
double model_now_s(void);

/* loading */
typedef struct {
    const gguf_file *f;
    const char *path;
    char *err;
    size_t errlen;
    Weights *w;
    int float_act; /* matrices multiply f32 activations (qrt_select_matmul_float): encoders */
} loader;
/* 0, or 1 when absent and not required, or -1 with the error set */
int model_get_matrix(loader *L, Matrix *m, const char *name, int64_t cols, int64_t rows, int required);
int model_get_vector(loader *L, const float **out, const char *name, int64_t n, int required);
int encoder_load_weights(loader *L, Config *c); /* encoder.c */

/* The activation rows converted for a matmul; reused by consecutive matmuls with the same input. */
typedef struct {
    const float *src;
    int act_type;
    int n_tok;
    int has_sums; /* state.act_sums holds the block sums of these rows */
} act_cache;

/* Rows first..end-1 split into tasks for the pool. */
typedef struct {
    int first, end, per_task; /* rows first..end-1, per_task rows per task */
} row_split;
int model_split_rows(const qrt_model *m, row_split *split, int first, int end); /* returns the number of tasks */
void model_task_rows(const row_split *split, int task, int *b0, int *b1);
void model_run_rows(qrt_model *m, qrt_task_fn fn, void *job, int n_tasks); /* one task: on the calling thread */
void model_pool_run(qrt_model *m, qrt_task_fn fn, void *ctx, int n_tasks);
/* out[b][r] = dot(w row r, x[b]) for b < n_tok (x rows w->cols floats apart, out rows out_stride apart); the
 * conversion of x is kept in cache for the next matmul of the same input */
void model_matmul(qrt_model *m, act_cache *cache, float *out, int64_t out_stride, const Matrix *w, const float *x,
                  int n_tok);
/* up to 3 matmuls of the same input in one pool run */
void model_matmul_many(qrt_model *m, act_cache *cache, int n, float *const outs[], const int64_t strides[],
                       const Matrix *const ws[], const float *x, int n_tok);

/* encoder.c: n_seq sequences (seq_lens tokens each, their tokens concatenated, sum <= state.n_batch) through the
 * encoder; out receives n_seq pooled rows of dim floats (not normalised) */
void encoder_forward(qrt_model *m, const int32_t *tokens, const int32_t *seq_lens, int n_seq, float *out);

#pragma GCC visibility pop
#endif
