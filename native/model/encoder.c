/* encoder.c — BERT-family encoders (llama.cpp's `bert` architecture): load, and the forward pass of a batch of
 * sequences for embed.
 *
 * The tokens of all sequences of a batch are concatenated into one set of rows, so every weight matmul runs on
 * all of them at once (model.c's matmuls, packed kernels and pool); only attention is per sequence: each
 * (sequence, head) pair is one pool task, bidirectional within its sequence. Post-norm BERT:
 *   x = LN(tok + pos + type0); per layer: a = LN(x + Wo attn(q, k, v) + bo); x = LN(a + Wdown gelu(Wup a + bup) + bdown)
 * and the hidden state is x after the last layer, pooled per sequence (op_pool_rows). Buffers are the run state's,
 * allocated at open for state.n_batch rows; nothing is allocated here.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "ops.h"
#include "packed.h"

/* ---- loading ---- */

int encoder_load_weights(loader *L, Config *c) {
    Weights *w = L->w;
    if (c->n_kv_heads != c->n_heads || c->head_dim * c->n_heads != c->dim)
        return model_set_err(L->err, L->errlen, "%s: %s with %d/%d heads of %d: qrun runs encoders with dim = heads x "
                             "head size and as many key heads as query heads", L->path, c->arch, c->n_heads,
                             c->n_kv_heads, c->head_dim);
    if (model_get_matrix(L, &w->position_embd, "position_embd.weight", c->dim, -1, 1) ||
        model_get_matrix(L, &w->token_types, "token_types.weight", c->dim, -1, 1) ||
        model_get_vector(L, &w->embd_norm, "token_embd_norm.weight", c->dim, 1) ||
        model_get_vector(L, &w->embd_norm_b, "token_embd_norm.bias", c->dim, 1))
        return -1;
    if (w->position_embd.rows < c->max_seq_len)
        return model_set_err(L->err, L->errlen, "%s: position_embd.weight has %lld positions, fewer than the %d tokens a "
                             "text may take", L->path, (long long)w->position_embd.rows, c->max_seq_len);
    if (w->token_types.rows < 1)
        return model_set_err(L->err, L->errlen, "%s: token_types.weight has no rows", L->path);

    w->layers = calloc((size_t)c->n_layers, sizeof(LayerWeights));
    if (!w->layers) return model_set_err(L->err, L->errlen, "%s: out of memory", L->path);
    const int64_t dim = c->dim, ffn = c->hidden_dim;
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights *lw = &w->layers[l];
        char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", l, suffix), name)
        if (model_get_matrix(L, &lw->wq, NAME("attn_q.weight"), dim, dim, 1) ||
            model_get_matrix(L, &lw->wk, NAME("attn_k.weight"), dim, dim, 1) ||
            model_get_matrix(L, &lw->wv, NAME("attn_v.weight"), dim, dim, 1) ||
            model_get_matrix(L, &lw->wo, NAME("attn_output.weight"), dim, dim, 1) ||
            model_get_matrix(L, &lw->w_up, NAME("ffn_up.weight"), dim, ffn, 1) ||
            model_get_matrix(L, &lw->w_down, NAME("ffn_down.weight"), ffn, dim, 1) ||
            model_get_vector(L, &lw->bq, NAME("attn_q.bias"), dim, 1) ||
            model_get_vector(L, &lw->bk, NAME("attn_k.bias"), dim, 1) ||
            model_get_vector(L, &lw->bv, NAME("attn_v.bias"), dim, 1) ||
            model_get_vector(L, &lw->bo, NAME("attn_output.bias"), dim, 1) ||
            model_get_vector(L, &lw->b_up, NAME("ffn_up.bias"), ffn, 1) ||
            model_get_vector(L, &lw->b_down, NAME("ffn_down.bias"), dim, 1) ||
            model_get_vector(L, &lw->attn_out_norm, NAME("attn_output_norm.weight"), dim, 1) ||
            model_get_vector(L, &lw->attn_out_norm_b, NAME("attn_output_norm.bias"), dim, 1) ||
            model_get_vector(L, &lw->layer_out_norm, NAME("layer_output_norm.weight"), dim, 1) ||
            model_get_vector(L, &lw->layer_out_norm_b, NAME("layer_output_norm.bias"), dim, 1))
            return -1;
#undef NAME
    }
    return 0;
}

/* ---- per-row steps ---- */

/* The sequence of row b: the last i with seq_start[i] <= b. */
static int sequence_of(const int32_t *seq_start, int n_seq, int b) {
    int lo = 0, hi = n_seq - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (seq_start[mid] <= b)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Per row b, the steps between two matmuls, each when its field is set, in this order:
 *   x[b] = LN(tok + pos + type0) (tokens set);
 *   x[b] = LN(x[b] + add[b] + bias) with norm/norm_b;
 *   gelu[b] = gelu(gelu[b] + gelu_bias);
 *   the row act_src[b] converted for the matmul `conv` (its block sums too when it is packed). */
typedef struct {
    row_split split;
    qrt_model *m;
    int n_seq;
    const int32_t *tokens;
    const float *add, *bias, *norm, *norm_b;
    float *gelu;
    const float *gelu_bias;
    const float *act_src;
    const Matrix *conv;
} encoder_rows_job;

static void encoder_rows_task(void *ctx, int task, int thread) {
    (void)thread;
    const encoder_rows_job *j = ctx;
    const Config *c = &j->m->config;
    const Weights *w = &j->m->weights;
    RunState *s = &j->m->state;
    const int dim = c->dim;
    int b0, b1;
    model_task_rows(&j->split, task, &b0, &b1);
    float *tmp = s->xb2; /* rows of xb2 are free between the attention output matmul and the next attention */
    for (int b = b0; b < b1; b++) {
        float *x = s->x + (size_t)b * dim;
        if (j->tokens) {
            const int pos = b - s->seq_start[sequence_of(s->seq_start, j->n_seq, b)];
            float *row = tmp + (size_t)b * dim;
            qrt_dequantize_row(w->token_embd.type, w->token_embd.data + (size_t)j->tokens[b] * w->token_embd.row_bytes,
                               x, dim);
            qrt_dequantize_row(w->position_embd.type, w->position_embd.data + (size_t)pos * w->position_embd.row_bytes,
                               row, dim);
            op_add(x, row, dim);
            qrt_dequantize_row(w->token_types.type, w->token_types.data, row, dim); /* token type 0 */
            op_add(x, row, dim);
            op_layernorm(x, x, w->embd_norm, w->embd_norm_b, dim, c->norm_eps);
        }
        if (j->norm) {
            const float *a = j->add + (size_t)b * dim;
            for (int i = 0; i < dim; i++) x[i] += a[i] + j->bias[i];
            op_layernorm(x, x, j->norm, j->norm_b, dim, c->norm_eps);
        }
        if (j->gelu) op_gelu_erf(j->gelu + (size_t)b * c->hidden_dim, j->gelu_bias, c->hidden_dim);
        if (j->conv) {
            const Matrix *mat = j->conv;
            uint8_t *act = s->act + (size_t)b * s->act_row_bytes;
            mat->kernels.act_from_float(j->act_src + (size_t)b * mat->cols, act, mat->cols);
            if (mat->packed)
                qrt_packed_act_sums(mat->kernels.act_type, act, mat->cols, s->act_sums + (size_t)b * s->act_sums_stride);
        }
    }
}

/* Run j's steps over rows 0..n_tok-1; when it converts, the cache then holds the converted rows for the matmuls. */
static void encoder_rows(qrt_model *m, act_cache *cache, encoder_rows_job *j, int n_tok) {
    j->m = m;
    model_run_rows(m, encoder_rows_task, j, model_split_rows(m, &j->split, 0, n_tok));
    *cache = j->conv ? (act_cache){j->act_src, j->conv->kernels.act_type, n_tok, j->conv->packed != NULL}
                     : (act_cache){0};
}

/* ---- attention ---- */

typedef struct {
    qrt_model *m;
    const LayerWeights *lw;
    int n_seq;
} encoder_attn_job;

/* x = (x + bias) * scale over n values (restrict: the loop vectorises without an overlap check) */
static inline void add_bias(float *restrict x, const float *restrict bias, int n, float scale) {
    for (int i = 0; i < n; i++) x[i] = (x[i] + bias[i]) * scale;
}

/* The largest of n floats, n a multiple of 16, compared as integers (a float's bits made monotonic: flip all
 * but the sign bit of negative values) so that the loop vectorises. */
static inline float block_max(const float *x, int n) {
    int32_t key[16];
    for (int b = 0; b < 16; b++) key[b] = INT32_MIN;
    for (int u0 = 0; u0 < n; u0 += 16)
        for (int b = 0; b < 16; b++) {
            int32_t bits;
            memcpy(&bits, &x[u0 + b], sizeof bits);
            const int32_t k = bits ^ ((bits >> 31) & 0x7FFFFFFF);
            key[b] = k > key[b] ? k : key[b];
        }
    int32_t best = key[0];
    for (int b = 1; b < 16; b++) best = key[b] > best ? key[b] : best;
    best ^= (best >> 31) & 0x7FFFFFFF;
    float out;
    memcpy(&out, &best, sizeof out);
    return out;
}

/* 16 floats as one value: GCC and clang lower the arithmetic to the widest registers of each clone (one AVX-512
 * register, two AVX2 ones, four SSE or NEON ones) */
typedef float f32x16 __attribute__((vector_size(64)));
/* the same for loads and stores at any float's address (no function passes one by value: its ABI would differ
 * between the clones) */
typedef float f32x16_unaligned __attribute__((vector_size(64), aligned(4), may_alias));
#define load16(p) (*(const f32x16_unaligned *)(p))
#define store16(p, v) (*(f32x16_unaligned *)(p) = (v))

#define QUERIES 4 /* queries of one head per pass over its keys and values */

/* The softmax numerators of a row of n scores in place (len16: n rounded up to 16, the padding left 0); returns
 * 1 / their sum. */
static inline float softmax_numerators(float *row, int n, int len16) {
    for (int u = n; u < len16; u++) row[u] = row[0]; /* the padding changes no maximum */
    op_exp_shifted(row, len16, block_max(row, len16));
    for (int u = n; u < len16; u++) row[u] = 0.0f;
    f32x16 part = {0};
    for (int u0 = 0; u0 < len16; u0 += 16) part += load16(row + u0);
    float sum = 0.0f;
    for (int b = 0; b < 16; b++) sum += part[b];
    return 1.0f / sum;
}

/* One (sequence, head): that head's slices of q, k and v for the sequence's rows get their biases (q also the
 * 1/sqrt(head_dim) scale: no other task touches these slices), then each query row attends to every row of its
 * sequence; the output goes to xb2. */
QRT_SIMD_CLONES static void encoder_attn_task(void *ctx, int task, int thread) {
    const encoder_attn_job *j = ctx;
    const Config *c = &j->m->config;
    RunState *s = &j->m->state;
    const int seq = task / c->n_heads, h = task % c->n_heads;
    const int hd = c->head_dim, dim = c->dim;
    const int first = s->seq_start[seq], len = s->seq_start[seq + 1] - first;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *bq = j->lw->bq + h * hd, *bk = j->lw->bk + h * hd, *bv = j->lw->bv + h * hd;
    float *q = s->q + (size_t)first * dim + h * hd;
    float *k = s->k + (size_t)first * dim + h * hd;
    float *v = s->v + (size_t)first * dim + h * hd;
    for (int t = 0; t < len; t++) {
        add_bias(q + (size_t)t * dim, bq, hd, scale);
        add_bias(k + (size_t)t * dim, bk, hd, 1.0f);
        add_bias(v + (size_t)t * dim, bv, hd, 1.0f);
    }
    /* k transposed ([hd][len16], zero-padded to whole blocks of 16): the scores of QUERIES queries accumulate 16
     * keys at a time in registers, and their weighted value sums 16 dims at a time, each key or value row loaded
     * once for all of them */
    const int len16 = (len + 15) & ~15;
    float *kt = s->att + (size_t)thread * QRT_ENCODER_ATT_FLOATS(s->n_ctx, hd);
    float *scores = kt + (size_t)hd * len16; /* [QUERIES][len16] */
    for (int i = 0; i < hd; i++) {
        float *row = kt + (size_t)i * len16;
        for (int t = 0; t < len; t++) row[t] = k[(size_t)t * dim + i];
        for (int t = len; t < len16; t++) row[t] = 0.0f;
    }
    for (int t0 = 0; t0 < len; t0 += QUERIES) {
        const float *qr[QUERIES]; /* past the last query: the last one again (computed, not written) */
        for (int j = 0; j < QUERIES; j++) qr[j] = q + (size_t)(t0 + j < len ? t0 + j : len - 1) * dim;
        for (int u0 = 0; u0 < len16; u0 += 16) {
            f32x16 acc[QUERIES] = {{0}};
            for (int i = 0; i < hd; i++) {
                const f32x16 key = load16(kt + (size_t)i * len16 + u0);
                for (int j = 0; j < QUERIES; j++) acc[j] += qr[j][i] * key;
            }
            for (int j = 0; j < QUERIES; j++) store16(scores + (size_t)j * len16 + u0, acc[j]);
        }
        float inv[QUERIES];
        for (int j = 0; j < QUERIES; j++) inv[j] = softmax_numerators(scores + (size_t)j * len16, len, len16);
        const int n_q = len - t0 < QUERIES ? len - t0 : QUERIES;
        int i0 = 0;
        for (; i0 + 16 <= hd; i0 += 16) {
            f32x16 acc[QUERIES] = {{0}};
            for (int u = 0; u < len; u++) {
                const f32x16 value = load16(v + (size_t)u * dim + i0);
                for (int j = 0; j < QUERIES; j++) acc[j] += scores[(size_t)j * len16 + u] * value;
            }
            for (int j = 0; j < n_q; j++) store16(s->xb2 + (size_t)(first + t0 + j) * dim + h * hd + i0, acc[j] * inv[j]);
        }
        for (; i0 < hd; i0++) /* a head size that is not a multiple of 16 */
            for (int j = 0; j < n_q; j++) {
                float acc = 0.0f;
                for (int u = 0; u < len; u++) acc += scores[(size_t)j * len16 + u] * v[(size_t)u * dim + i0];
                s->xb2[(size_t)(first + t0 + j) * dim + h * hd + i0] = acc * inv[j];
            }
    }
}

/* ---- the forward pass ---- */

void encoder_forward(qrt_model *m, const int32_t *tokens, const int32_t *seq_lens, int n_seq, float *out) {
    const Config *c = &m->config;
    const Weights *w = &m->weights;
    RunState *s = &m->state;
    const int dim = c->dim, ffn = c->hidden_dim;
    s->seq_start[0] = 0;
    for (int i = 0; i < n_seq; i++) s->seq_start[i + 1] = s->seq_start[i] + seq_lens[i];
    const int n_tok = s->seq_start[n_seq];
    act_cache cache = {0};

    encoder_rows_job embed = {.n_seq = n_seq, .tokens = tokens, .act_src = s->x, .conv = &w->layers[0].wq};
    encoder_rows(m, &cache, &embed, n_tok);
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *lw = &w->layers[l];
        {
            const Matrix *const ws[] = {&lw->wq, &lw->wk, &lw->wv};
            float *const outs[] = {s->q, s->k, s->v};
            const int64_t strides[] = {dim, dim, dim};
            model_matmul_many(m, &cache, 3, outs, strides, ws, s->x, n_tok);
        }
        encoder_attn_job aj = {m, lw, n_seq};
        model_pool_run(m, encoder_attn_task, &aj, n_seq * c->n_heads);
        model_matmul(m, &cache, s->xb, dim, &lw->wo, s->xb2, n_tok);
        encoder_rows_job attn_norm = {.add = s->xb, .bias = lw->bo, .norm = lw->attn_out_norm,
                                      .norm_b = lw->attn_out_norm_b, .act_src = s->x, .conv = &lw->w_up};
        encoder_rows(m, &cache, &attn_norm, n_tok);
        model_matmul(m, &cache, s->hb, ffn, &lw->w_up, s->x, n_tok);
        encoder_rows_job gelu = {.gelu = s->hb, .gelu_bias = lw->b_up, .act_src = s->hb, .conv = &lw->w_down};
        encoder_rows(m, &cache, &gelu, n_tok);
        model_matmul(m, &cache, s->xb, dim, &lw->w_down, s->hb, n_tok);
        encoder_rows_job ffn_norm = {.add = s->xb, .bias = lw->b_down, .norm = lw->layer_out_norm,
                                     .norm_b = lw->layer_out_norm_b, .act_src = s->x,
                                     .conv = l + 1 < c->n_layers ? &w->layers[l + 1].wq : NULL};
        encoder_rows(m, &cache, &ffn_norm, n_tok);
    }
    for (int i = 0; i < n_seq; i++)
        op_pool_rows(out + (size_t)i * dim, s->x + (size_t)s->seq_start[i] * dim, seq_lens[i], dim, 0, seq_lens[i],
                     c->pooling);
}
