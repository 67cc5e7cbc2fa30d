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
        float *qr = q + (size_t)t * dim, *kr = k + (size_t)t * dim, *vr = v + (size_t)t * dim;
        for (int i = 0; i < hd; i++) {
            qr[i] = (qr[i] + bq[i]) * scale;
            kr[i] += bk[i];
            vr[i] += bv[i];
        }
    }
    /* k transposed ([hd][len]) so that a query's scores and its weighted value sum are both contiguous loops */
    float *kt = s->att + (size_t)thread * QRT_ENCODER_ATT_FLOATS(s->n_ctx, hd);
    float *scores = kt + (size_t)hd * s->n_ctx;
    for (int t = 0; t < len; t++)
        for (int i = 0; i < hd; i++) kt[(size_t)i * len + t] = k[(size_t)t * dim + i];
    for (int t = 0; t < len; t++) {
        const float *qr = q + (size_t)t * dim;
        for (int u = 0; u < len; u++) scores[u] = 0.0f;
        for (int i = 0; i < hd; i++) {
            const float qi = qr[i];
            const float *kr = kt + (size_t)i * len;
            for (int u = 0; u < len; u++) scores[u] += qi * kr[u];
        }
        float max = scores[0];
        for (int u = 1; u < len; u++) max = scores[u] > max ? scores[u] : max;
        op_exp_shifted(scores, len, max);
        float sum = 0.0f;
        for (int u = 0; u < len; u++) sum += scores[u];
        const float inv = 1.0f / sum;
        float *o = s->xb2 + (size_t)(first + t) * dim + h * hd;
        for (int i = 0; i < hd; i++) o[i] = 0.0f;
        for (int u = 0; u < len; u++) {
            const float a = scores[u] * inv;
            const float *vr = v + (size_t)u * dim;
            for (int i = 0; i < hd; i++) o[i] += a * vr[i];
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
