/* model.c — open a GGUF as Config + Weights + RunState, and the llama-family forward pass.
 *
 * One forward call processes a batch of tokens (prompt chunks) or a single token (decode) with the same code:
 * every matmul takes n_tokens activation rows, so a weight row is read once per batch. Buffers are allocated at
 * open for n_batch tokens; the token loop allocates nothing.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/mman.h>
#include <unistd.h>

#include "model.h"
#include "ops.h"
#include "packed.h"
#include "qrt.h"
#include "size_math.h"


/* ---- errors ---- */

int model_set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- loading: Config ---- */

/* A family as the forward pass sees it: which optional steps run, and the values llama.cpp fixes for it rather
 * than reading from the file (a file key of the same meaning, where llama.cpp reads one, overrides them). */
typedef struct {
    const char *arch;
    int rope_style;
    int qkv_bias;      /* q/k/v biases required */
    int qk_norm;       /* enum qk_norm: q/k norms required */
    int ffn_act;       /* enum ffn_act */
    int post_norms;    /* attn_post_norm and post_ffw_norm required */
    int embd_scaled;   /* embeddings times sqrt(dim) */
    int swa_pattern;   /* with a sliding window: of every swa_pattern layers the last is global */
    int no_rope_step;  /* layers l with (l + 1) % no_rope_step == 0 run without rope; 0 = none */
    int q_prescaled;   /* q is scaled before attention (gemma, phi3: ggml_scale on q, then scores unscaled) */
    int fused_up;      /* ffn_up holds gate and up rows ([2 x ffn, dim], gate first) and there is no ffn_gate */
    int moe;           /* 0: dense FFN; 1: experts, top-k weights renormalised; 2: experts, weights as routed */
    int encoder;       /* BERT's layout (encoder.c): post-LayerNorm, learned positions, bidirectional, no cache */
    int pooling;       /* enum pooling of embed when the file names none ({arch}.pooling_type) */
} arch_row;

/* The architectures the forward pass runs, as data: adding a family is a row here (plus any new step). */
static const arch_row ARCHS[] = {
    /* arch       rope       bias qk_norm       ffn_act        post embd swa nope q_pre fused_up moe enc pooling */
    {"llama",     ROPE_NORM, 0,   QK_NORM_NONE, FFN_SILU,      0,   0,   0,  0,   0,    0,       0,  0,  POOL_MEAN},
    {"mistral",   ROPE_NORM, 0,   QK_NORM_NONE, FFN_SILU,      0,   0,   0,  0,   0,    0,       0,  0,  POOL_MEAN},
    {"qwen2",     ROPE_NEOX, 1,   QK_NORM_NONE, FFN_SILU,      0,   0,   0,  0,   0,    0,       0,  0,  POOL_MEAN},
    {"qwen3",     ROPE_NEOX, 0,   QK_NORM_HEAD, FFN_SILU,      0,   0,   0,  0,   0,    0,       0,  0,  POOL_MEAN},
    {"gemma3",    ROPE_NEOX, 0,   QK_NORM_HEAD, FFN_GELU_TANH, 1,   1,   6,  0,   1,    0,       0,  0,  POOL_MEAN},
    {"smollm3",   ROPE_NORM, 0,   QK_NORM_NONE, FFN_SILU,      0,   0,   0,  4,   0,    0,       0,  0,  POOL_MEAN},
    {"phi3",      ROPE_NEOX, 0,   QK_NORM_NONE, FFN_SILU,      0,   0,   0,  0,   1,    1,       0,  0,  POOL_MEAN},
    {"qwen3moe",  ROPE_NEOX, 0,   QK_NORM_HEAD, FFN_SILU,      0,   0,   0,  0,   0,    0,       1,  0,  POOL_MEAN},
    {"olmoe",     ROPE_NEOX, 0,   QK_NORM_FULL, FFN_SILU,      0,   0,   0,  0,   0,    0,       2,  0,  POOL_MEAN},
    /* llama.cpp's bert has no default pooling: its converter always writes bert.pooling_type */
    {"bert",      ROPE_NORM, 1,   QK_NORM_NONE, FFN_GELU_ERF,  0,   0,   0,  0,   0,    0,       0,  1,  POOL_NONE},
};

static int meta_u32(const gguf_file *f, const char *arch, const char *suffix, uint32_t *out, int required,
                    const char *path, char *err, size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int r = gguf_get_u32(f, key, out);
    if (r == GGUF_OK) return 0;
    if (r == GGUF_MISSING && !required) return 1;
    return model_set_err(err, errlen, "%s: metadata '%s' is %s", path, key,
                   r == GGUF_MISSING ? "missing" : "not an unsigned 32-bit integer");
}

static int meta_f32(const gguf_file *f, const char *arch, const char *suffix, float *out, const char *path,
                    char *err, size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int r = gguf_get_f32(f, key, out);
    if (r == GGUF_WRONG_TYPE) return model_set_err(err, errlen, "%s: metadata '%s' is not a number", path, key);
    return r == GGUF_OK ? 0 : 1;
}

/* Rotary parameters as llama.cpp derives them (llama_context's cparams): linear scaling divides the angles by
 * the factor; YaRN (rope.scaling.type yarn) also mixes unscaled angles back in for the high-frequency pairs and
 * scales cos/sin by 1 + 0.1 ln(factor), with beta_fast 32 and beta_slow 1 (llama.cpp's defaults for these
 * architectures) over rope.scaling.original_context_length positions. */
static int read_rope(const gguf_file *f, Config *c, const char *path, char *err, size_t errlen) {
    RopeParams *rope = &c->rope;
    *rope = (RopeParams){.theta = 10000.0f, .freq_scale = 1.0f, .ext_factor = 0.0f, .attn_factor = 1.0f};
    if (meta_f32(f, c->arch, "rope.freq_base", &rope->theta, path, err, errlen) < 0) return -1;
    if (!(rope->theta > 1.0f && rope->theta < 1e30f))
        return model_set_err(err, errlen, "%s: rope.freq_base %g is not a usable base", path, (double)rope->theta);
    float attn_factor = 1.0f;
    if (meta_f32(f, c->arch, "rope.scaling.attn_factor", &attn_factor, path, err, errlen) < 0) return -1;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", c->arch);
    gguf_str scaling;
    const int has_type = gguf_get_str(f, key, &scaling) == GGUF_OK;
    const int yarn = has_type && gguf_str_eq(scaling, "yarn");
    /* longrope: the per-pair factors are tensors (rope_factors_long/short, chosen at open by the context) */
    if (has_type && !gguf_str_eq(scaling, "none") && !gguf_str_eq(scaling, "linear") && !yarn &&
        !gguf_str_eq(scaling, "longrope"))
        return model_set_err(err, errlen,
                       "%s: rope scaling type '%.*s' is not supported (qrun runs: none, linear, yarn, longrope)", path,
                       (int)(scaling.len > 20 ? 20 : scaling.len), scaling.ptr);
    uint32_t n_ctx_orig = (uint32_t)c->n_ctx_train;
    if (meta_u32(f, c->arch, "rope.scaling.original_context_length", &n_ctx_orig, 0, path, err, errlen) < 0)
        return -1;
    if (n_ctx_orig == 0 || n_ctx_orig > (1u << 24))
        return model_set_err(err, errlen, "%s: rope.scaling.original_context_length %u is implausible", path, n_ctx_orig);
    c->n_ctx_orig = (int)n_ctx_orig;
    if (!has_type || !gguf_str_eq(scaling, "none")) { /* a factor without a type is linear, as in llama.cpp */
        float factor = 0.0f;
        if (meta_f32(f, c->arch, "rope.scaling.factor", &factor, path, err, errlen) < 0) return -1;
        if (factor != 0.0f && !(factor > 0.0f && factor < 1e6f))
            return model_set_err(err, errlen, "%s: rope.scaling.factor %g is not a usable factor", path, (double)factor);
        if (factor > 0.0f) rope->freq_scale = 1.0f / factor;
    }
    if (yarn) {
        rope->ext_factor = 1.0f;
        op_rope_yarn_corr_dims(c->n_rot, (int)n_ctx_orig, rope->theta, 32.0f, 1.0f, rope->corr_dims);
        /* llama.cpp sets the factor to get_mscale(factor) and cancels it, times rope.scaling.attn_factor; its rope op
         * then multiplies by 1 + 0.1 ln(1 / freq_scale) once per position. The same float steps in the same order,
         * done once here, round as there. */
        const float factor = 1.0f / rope->freq_scale;
        const float mscale = factor <= 1.0f ? 1.0f : 0.1f * logf(factor) + 1.0f;
        rope->attn_factor = mscale * (1.0f / (1.0f + 0.1f * logf(factor))) * attn_factor;
        rope->attn_factor *= 1.0f + 0.1f * logf(1.0f / rope->freq_scale);
    } else {
        rope->attn_factor = attn_factor;
    }
    return 0;
}

/* Which layers slide and which skip rope. Sliding: the family's pattern (the last of every swa_pattern layers is
 * global) when the file has a sliding window, or the file's attention.sliding_window_pattern (a period, or one
 * flag per layer), as llama.cpp reads them; their rope base is rope.freq_base_swa, else llama.cpp's 10000. */
static int read_layer_kinds(const gguf_file *f, Config *c, const arch_row *row, const char *path, char *err,
                            size_t errlen) {
    memset(c->layer, 0, sizeof c->layer);
    if (row->no_rope_step)
        for (int l = 0; l < c->n_layers; l++)
            if ((l + 1) % row->no_rope_step == 0) c->layer[l] |= LAYER_NO_ROPE;
    c->n_swa = 0;
    if (!row->swa_pattern) return 0; /* families whose sliding window llama.cpp does not run */
    uint32_t window = 0;
    if (meta_u32(f, c->arch, "attention.sliding_window", &window, 0, path, err, errlen) < 0) return -1;
    if (window == 0) return 0;
    c->n_swa = window > (1u << 24) ? (1 << 24) : (int)window;
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", c->arch);
    uint32_t elem_type;
    uint64_t len;
    uint32_t period = (uint32_t)row->swa_pattern;
    if (gguf_get_arr(f, key, &elem_type, &len) == GGUF_OK) {
        if (elem_type == GGUF_VT_STRING || elem_type == GGUF_VT_ARRAY || elem_type == GGUF_VT_FLOAT32 ||
            elem_type == GGUF_VT_FLOAT64 || len != (uint64_t)c->n_layers)
            return model_set_err(err, errlen, "%s: metadata '%s' is not one flag per layer (%llu entries, %d layers)", path, key,
                           (unsigned long long)len, c->n_layers);
        const int64_t kv = gguf_find_key(f, key);
        for (int l = 0; l < c->n_layers; l++)
            if (gguf_arr_int(f, kv, (uint64_t)l) != 0) c->layer[l] |= LAYER_SWA;
    } else {
        if (meta_u32(f, c->arch, "attention.sliding_window_pattern", &period, 0, path, err, errlen) < 0) return -1;
        for (int l = 0; l < c->n_layers; l++)
            if (period == 0 || (uint32_t)l % period < period - 1) c->layer[l] |= LAYER_SWA;
    }
    c->rope_swa = (RopeParams){.theta = 10000.0f, .freq_scale = 1.0f, .ext_factor = 0.0f, .attn_factor = 1.0f};
    if (meta_f32(f, c->arch, "rope.freq_base_swa", &c->rope_swa.theta, path, err, errlen) < 0) return -1;
    if (!(c->rope_swa.theta > 1.0f && c->rope_swa.theta < 1e30f))
        return model_set_err(err, errlen, "%s: rope.freq_base_swa %g is not a usable base", path, (double)c->rope_swa.theta);
    return 0;
}

static int read_experts(const gguf_file *f, Config *c, const arch_row *row, const char *path, char *err,
                        size_t errlen) {
    c->n_expert = c->n_expert_used = c->expert_ffn = 0;
    c->expert_norm = row->moe == 1;
    if (!row->moe) return 0;
    uint32_t n, used, ffn;
    if (meta_u32(f, c->arch, "expert_count", &n, 1, path, err, errlen) ||
        meta_u32(f, c->arch, "expert_used_count", &used, 1, path, err, errlen) ||
        meta_u32(f, c->arch, "expert_feed_forward_length", &ffn, 1, path, err, errlen))
        return -1;
    if (n < 1 || n > QRT_MAX_EXPERTS || used < 1 || used > n || ffn < 1 || ffn > (1u << 18))
        return model_set_err(err, errlen, "%s: implausible experts (%u experts, %u used, ffn %u)", path, n, used, ffn);
    c->n_expert = (int)n;
    c->n_expert_used = (int)used;
    c->expert_ffn = (int)ffn;
    return 0;
}

/* What embed does: {arch}.pooling_type (else the family's default), L2 normalisation (qconv.embedding.normalize,
 * else on, as llama.cpp's embedding tools normalise by default), and the tokens one text may take
 * (qconv.embedding.max_seq_length, else the trained context). Encoders also read their LayerNorm epsilon. */
static int read_embedding(const gguf_file *f, Config *c, const arch_row *row, const char *path, char *err,
                          size_t errlen) {
    static const char *const pooling_names[] = {"none", "mean", "cls", "last", "rank"};
    uint32_t pooling = (uint32_t)row->pooling;
    if (meta_u32(f, c->arch, "pooling_type", &pooling, 0, path, err, errlen) < 0) return -1;
    if (pooling > POOL_LAST)
        return model_set_err(err, errlen, "%s: %s.pooling_type %u (%s) is not a pooling qrun runs (mean, cls, last)",
                             path, c->arch, pooling, pooling < 5 ? pooling_names[pooling] : "unknown");
    c->pooling = (int)pooling;
    c->normalize = 1;
    if (gguf_get_bool(f, "qconv.embedding.normalize", &c->normalize) == GGUF_WRONG_TYPE)
        return model_set_err(err, errlen, "%s: metadata 'qconv.embedding.normalize' is not a boolean", path);
    uint32_t max_seq = (uint32_t)c->n_ctx_train;
    const int r = gguf_get_u32(f, "qconv.embedding.max_seq_length", &max_seq);
    if (r == GGUF_WRONG_TYPE || (r == GGUF_OK && (max_seq < 1 || max_seq > (uint32_t)c->n_ctx_train)))
        return model_set_err(err, errlen, "%s: metadata 'qconv.embedding.max_seq_length' is not a count of 1..%d",
                             path, c->n_ctx_train);
    c->max_seq_len = (int)max_seq;
    c->encoder = row->encoder;
    c->norm_eps = 1e-12f;
    if (c->encoder) {
        if (meta_f32(f, c->arch, "attention.layer_norm_epsilon", &c->norm_eps, path, err, errlen) < 0) return -1;
        if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
            return model_set_err(err, errlen, "%s: %s.attention.layer_norm_epsilon %g is not usable", path, c->arch,
                                 (double)c->norm_eps);
        int causal = 0;
        char key[128];
        snprintf(key, sizeof key, "%s.attention.causal", c->arch);
        if (gguf_get_bool(f, key, &causal) == GGUF_OK && causal)
            return model_set_err(err, errlen, "%s: %s is causal: qrun runs %s encoders bidirectional only", path, key,
                                 c->arch);
    }
    return 0;
}

static int read_config(const gguf_file *f, Config *c, const char *path, char *err, size_t errlen) {
    gguf_str arch;
    if (gguf_get_str(f, "general.architecture", &arch) != GGUF_OK)
        return model_set_err(err, errlen, "%s: metadata 'general.architecture' is missing", path);
    const arch_row *row = NULL;
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (gguf_str_eq(arch, ARCHS[i].arch)) row = &ARCHS[i];
    if (!row) {
        char name[32], runs[256] = "";
        snprintf(name, sizeof name, "%.*s", (int)(arch.len > 31 ? 31 : arch.len), arch.ptr);
        for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
            snprintf(runs + strlen(runs), sizeof runs - strlen(runs), "%s%s", i ? ", " : "", ARCHS[i].arch);
        return model_set_err(err, errlen, "%s: architecture '%s' is not supported (qrun runs: %s)", path, name, runs);
    }
    snprintf(c->arch, sizeof c->arch, "%s", row->arch);
    c->rope_style = row->rope_style;
    c->has_qkv_bias = row->qkv_bias;
    c->has_qk_norm = row->qk_norm;
    c->ffn_act = row->ffn_act;
    c->post_norms = row->post_norms;
    c->fused_up = row->fused_up;

    uint32_t v;
    if (meta_u32(f, c->arch, "embedding_length", &v, 1, path, err, errlen)) return -1;
    c->dim = (int)v;
    if (meta_u32(f, c->arch, "feed_forward_length", &v, 1, path, err, errlen)) return -1;
    c->hidden_dim = (int)v;
    if (meta_u32(f, c->arch, "block_count", &v, 1, path, err, errlen)) return -1;
    c->n_layers = (int)v;
    if (meta_u32(f, c->arch, "attention.head_count", &v, 1, path, err, errlen)) return -1;
    c->n_heads = (int)v;
    c->n_kv_heads = c->n_heads;
    int r = meta_u32(f, c->arch, "attention.head_count_kv", &v, 0, path, err, errlen);
    if (r < 0) return -1;
    if (r == 0) c->n_kv_heads = (int)v;
    if (c->dim <= 0 || c->dim > (1 << 16) || c->hidden_dim <= 0 || c->hidden_dim > (1 << 18) || c->n_layers <= 0 ||
        c->n_layers > QRT_MAX_LAYERS || c->n_heads <= 0 || c->n_heads > 1024 || c->n_kv_heads <= 0 ||
        c->n_heads % c->n_kv_heads != 0)
        return model_set_err(err, errlen, "%s: implausible shape (dim %d, ffn %d, layers %d, heads %d/%d)", path, c->dim,
                       c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads);
    c->head_dim = c->dim / c->n_heads;
    r = meta_u32(f, c->arch, "attention.key_length", &v, 0, path, err, errlen);
    if (r < 0) return -1;
    if (r == 0) c->head_dim = (int)v;
    uint32_t vlen;
    r = meta_u32(f, c->arch, "attention.value_length", &vlen, 0, path, err, errlen);
    if (r < 0) return -1;
    if (r == 0 && (int)vlen != c->head_dim)
        return model_set_err(err, errlen, "%s: key_length %d != value_length %u is not supported", path, c->head_dim, vlen);
    if (c->head_dim <= 0 || c->head_dim > 1024 || c->head_dim % 2)
        return model_set_err(err, errlen, "%s: implausible head size %d", path, c->head_dim);
    c->n_rot = c->head_dim;
    r = meta_u32(f, c->arch, "rope.dimension_count", &v, 0, path, err, errlen);
    if (r < 0) return -1;
    if (r == 0) c->n_rot = (int)v;
    if (c->n_rot <= 0 || c->n_rot > c->head_dim || c->n_rot % 2)
        return model_set_err(err, errlen, "%s: rope dimension %d does not fit head size %d", path, c->n_rot, c->head_dim);
    c->n_ctx_train = 2048;
    r = meta_u32(f, c->arch, "context_length", &v, 0, path, err, errlen);
    if (r < 0) return -1;
    if (r == 0 && v > 0) c->n_ctx_train = v > (1u << 24) ? (1 << 24) : (int)v;
    c->rms_eps = 1e-5f;
    if (meta_f32(f, c->arch, "attention.layer_norm_rms_epsilon", &c->rms_eps, path, err, errlen) < 0) return -1;
    if (read_rope(f, c, path, err, errlen) < 0) return -1;
    if (read_layer_kinds(f, c, row, path, err, errlen) < 0) return -1;
    if (read_experts(f, c, row, path, err, errlen) < 0) return -1;
    if (read_embedding(f, c, row, path, err, errlen) < 0) return -1;
    c->embd_scale = row->embd_scaled ? sqrtf((float)c->dim) : 0.0f;
    /* llama.cpp scales q by 1/sqrt(head size), except for gemma3's 62-layer (27B) model: 1/sqrt(dim / heads) */
    c->q_scale = !row->q_prescaled ? 0.0f
                 : row->embd_scaled && c->n_layers == 62 ? 1.0f / sqrtf((float)(c->dim / c->n_heads))
                                                         : 1.0f / sqrtf((float)c->head_dim);
    c->logit_softcap = 0.0f;
    if (meta_f32(f, c->arch, "final_logit_softcapping", &c->logit_softcap, path, err, errlen) < 0) return -1;
    if (!(c->logit_softcap >= 0.0f && c->logit_softcap < 1e30f))
        return model_set_err(err, errlen, "%s: final_logit_softcapping %g is not usable", path, (double)c->logit_softcap);
    /* vocabulary size: the embedding's rows are authoritative; checked against the tensor below */
    c->vocab_size = 0;
    return 0;
}

/* ---- loading: Weights ---- */

static const gguf_tensor *find(loader *L, const char *name, int required) {
    const gguf_tensor *t = gguf_find_tensor(L->f, name);
    if (!t && required) model_set_err(L->err, L->errlen, "%s: tensor '%s' is missing", L->path, name);
    return t;
}

static int select_matmul(const loader *L, int type, qrt_matmul_kernels *out) {
    return L->float_act ? qrt_select_matmul_float(type, out) : qrt_select_matmul(type, out);
}

int model_get_matrix(loader *L, Matrix *m, const char *name, int64_t cols, int64_t rows, int required) {
    memset(m, 0, sizeof *m);
    const gguf_tensor *t = find(L, name, required);
    if (!t) return required ? -1 : 1;
    if (t->ne[0] != (uint64_t)cols || (rows >= 0 && t->ne[1] != (uint64_t)rows) || t->ne[2] != 1 || t->ne[3] != 1)
        return model_set_err(L->err, L->errlen, "%s: tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%lld, %lld]",
                       L->path, name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                       (unsigned long long)t->ne[2], (unsigned long long)t->ne[3], (long long)cols, (long long)rows);
    if (!qrt_traits((int)t->type) || select_matmul(L, (int)t->type, &m->kernels) != 0) {
        const char *tn = gguf_type_name(t->type);
        return model_set_err(L->err, L->errlen,
                       "%s: tensor '%s' has type %s, which qrun does not run (it runs f32, f16, bf16, q4_0, q4_1, "
                       "q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl)",
                       L->path, name, tn ? tn : "?");
    }
    m->data = t->data;
    m->type = (int)t->type;
    m->cols = (int64_t)t->ne[0];
    m->rows = (int64_t)t->ne[1];
    m->row_bytes = qrt_row_bytes(m->type, m->cols);
    m->name = t->name.ptr; /* not NUL-terminated; only for debugging */
    m->name_len = t->name.len;
    return 0;
}

/* A vector of n floats: in place when stored as aligned f32, else converted once into an owned buffer. */
int model_get_vector(loader *L, const float **out, const char *name, int64_t n, int required) {
    *out = NULL;
    const gguf_tensor *t = find(L, name, required);
    if (!t) return required ? -1 : 1;
    if (t->ne[0] != (uint64_t)n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        return model_set_err(L->err, L->errlen, "%s: tensor '%s' has %llu x %llu values, expected %lld", L->path, name,
                       (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (long long)n);
    if (t->type == QRT_TYPE_F32 && ((uintptr_t)t->data % 4) == 0) {
        *out = t->data;
        return 0;
    }
    if (!qrt_traits((int)t->type) || t->type == QRT_TYPE_Q8_K)
        return model_set_err(L->err, L->errlen, "%s: tensor '%s' has unsupported type %s", L->path, name,
                       gguf_type_name(t->type) ? gguf_type_name(t->type) : "?");
    float *buf = malloc((size_t)n * sizeof(float));
    float **grown = realloc(L->w->owned, (size_t)(L->w->n_owned + 1) * sizeof(float *));
    if (!buf || !grown) {
        free(buf);
        if (grown) L->w->owned = grown;
        return model_set_err(L->err, L->errlen, "%s: out of memory", L->path);
    }
    L->w->owned = grown;
    L->w->owned[L->w->n_owned++] = buf;
    if (qrt_dequantize_row((int)t->type, t->data, buf, n) != 0)
        return model_set_err(L->err, L->errlen, "%s: cannot convert tensor '%s'", L->path, name);
    *out = buf;
    return 0;
}

/* A stacked expert tensor [cols, rows, n_expert] as one matrix per expert (views into the file's data). */
static int get_experts(loader *L, Matrix **out, const char *name, int64_t cols, int64_t rows, const Config *c) {
    const gguf_tensor *t = find(L, name, 1);
    if (!t) return -1;
    if (t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows || t->ne[2] != (uint64_t)c->n_expert || t->ne[3] != 1)
        return model_set_err(L->err, L->errlen, "%s: tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%lld, %lld, %d]",
                       L->path, name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                       (unsigned long long)t->ne[2], (unsigned long long)t->ne[3], (long long)cols, (long long)rows,
                       c->n_expert);
    Matrix whole;
    memset(&whole, 0, sizeof whole);
    if (!qrt_traits((int)t->type) || select_matmul(L, (int)t->type, &whole.kernels) != 0)
        return model_set_err(L->err, L->errlen, "%s: tensor '%s' has type %s, which qrun does not run", L->path, name,
                       gguf_type_name(t->type) ? gguf_type_name(t->type) : "?");
    *out = calloc((size_t)c->n_expert, sizeof **out);
    if (!*out) return model_set_err(L->err, L->errlen, "%s: out of memory", L->path);
    whole.type = (int)t->type;
    whole.cols = cols;
    whole.rows = rows;
    whole.row_bytes = qrt_row_bytes(whole.type, cols);
    whole.name = t->name.ptr;
    whole.name_len = t->name.len;
    whole.input_recorded = 1; /* moe_ffn records expert inputs per expert (record_expert_inputs) */
    for (int e = 0; e < c->n_expert; e++) {
        (*out)[e] = whole;
        (*out)[e].data = t->data + (size_t)e * (size_t)rows * whole.row_bytes;
    }
    return 0;
}

/* Consecutive row ranges of a fused tensor as matrices of their own (views into the same data). The later parts
 * share the first's input: calibration records it once, under the fused tensor's name, as llama-imatrix does. */
static void split_fused(const Matrix *whole, Matrix *const parts[], const int64_t rows[], int n) {
    int64_t row = 0;
    for (int i = 0; i < n; i++) {
        *parts[i] = *whole;
        parts[i]->data = whole->data + (size_t)row * whole->row_bytes;
        parts[i]->rows = rows[i];
        parts[i]->input_recorded = i > 0;
        row += rows[i];
    }
}

static int load_weights(loader *L, Config *c) {
    Weights *w = L->w;
    const gguf_tensor *embd = find(L, "token_embd.weight", 1);
    if (!embd) return -1;
    if (embd->ne[1] == 0 || embd->ne[1] > (1u << 24))
        return model_set_err(L->err, L->errlen, "%s: token_embd.weight has %llu rows", L->path,
                       (unsigned long long)embd->ne[1]);
    c->vocab_size = (int)embd->ne[1];
    if (model_get_matrix(L, &w->token_embd, "token_embd.weight", c->dim, c->vocab_size, 1)) return -1;
    if (c->encoder) return encoder_load_weights(L, c);
    if (model_get_vector(L, &w->output_norm, "output_norm.weight", c->dim, 1)) return -1;
    int r = model_get_matrix(L, &w->output, "output.weight", c->dim, c->vocab_size, 0);
    if (r < 0) return -1;
    if (r == 1) w->output = w->token_embd; /* tied head */
    if (model_get_vector(L, &w->rope_freqs, "rope_freqs.weight", c->n_rot / 2, 0) < 0 ||
        model_get_vector(L, &w->rope_long, "rope_factors_long.weight", c->n_rot / 2, 0) < 0 ||
        model_get_vector(L, &w->rope_short, "rope_factors_short.weight", c->n_rot / 2, 0) < 0)
        return -1;

    w->layers = calloc((size_t)c->n_layers, sizeof(LayerWeights));
    if (!w->layers) return model_set_err(L->err, L->errlen, "%s: out of memory", L->path);
    const int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights *lw = &w->layers[l];
        char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", l, suffix), name)
        if (model_get_vector(L, &lw->attn_norm, NAME("attn_norm.weight"), c->dim, 1) ||
            model_get_vector(L, &lw->ffn_norm, NAME("ffn_norm.weight"), c->dim, 1) ||
            model_get_matrix(L, &lw->wo, NAME("attn_output.weight"), q_dim, c->dim, 1))
            return -1;
        /* q, k and v: three tensors, or one fused attn_qkv (phi3) whose row ranges they become */
        Matrix qkv;
        r = model_get_matrix(L, &qkv, NAME("attn_qkv.weight"), c->dim, q_dim + 2 * kv_dim, 0);
        if (r < 0) return -1;
        if (r == 0) {
            Matrix *parts[] = {&lw->wq, &lw->wk, &lw->wv};
            const int64_t rows[] = {q_dim, kv_dim, kv_dim};
            split_fused(&qkv, parts, rows, 3);
        } else if (model_get_matrix(L, &lw->wq, NAME("attn_q.weight"), c->dim, q_dim, 1) ||
                   model_get_matrix(L, &lw->wk, NAME("attn_k.weight"), c->dim, kv_dim, 1) ||
                   model_get_matrix(L, &lw->wv, NAME("attn_v.weight"), c->dim, kv_dim, 1)) {
            return -1;
        }
        if (c->n_expert) {
            if (model_get_matrix(L, &lw->router, NAME("ffn_gate_inp.weight"), c->dim, c->n_expert, 1) ||
                get_experts(L, &lw->gate_exps, NAME("ffn_gate_exps.weight"), c->dim, c->expert_ffn, c) ||
                get_experts(L, &lw->up_exps, NAME("ffn_up_exps.weight"), c->dim, c->expert_ffn, c) ||
                get_experts(L, &lw->down_exps, NAME("ffn_down_exps.weight"), c->expert_ffn, c->dim, c))
                return -1;
        } else if (model_get_matrix(L, &lw->w_down, NAME("ffn_down.weight"), c->hidden_dim, c->dim, 1)) {
            return -1;
        } else if (c->fused_up) { /* gate and up in one ffn_up, gate rows first (ggml_swiglu's halves) */
            Matrix up;
            if (model_get_matrix(L, &up, NAME("ffn_up.weight"), c->dim, 2 * (int64_t)c->hidden_dim, 1)) return -1;
            Matrix *parts[] = {&lw->w_gate, &lw->w_up};
            const int64_t rows[] = {c->hidden_dim, c->hidden_dim};
            split_fused(&up, parts, rows, 2);
        } else if (model_get_matrix(L, &lw->w_gate, NAME("ffn_gate.weight"), c->dim, c->hidden_dim, 1) ||
                   model_get_matrix(L, &lw->w_up, NAME("ffn_up.weight"), c->dim, c->hidden_dim, 1)) {
            return -1;
        }
        /* biases: required for qwen2, honoured for any arch that has them */
        if (model_get_vector(L, &lw->bq, NAME("attn_q.bias"), q_dim, c->has_qkv_bias) < 0 ||
            model_get_vector(L, &lw->bk, NAME("attn_k.bias"), kv_dim, c->has_qkv_bias) < 0 ||
            model_get_vector(L, &lw->bv, NAME("attn_v.bias"), kv_dim, c->has_qkv_bias) < 0)
            return -1;
        const int full = c->has_qk_norm == QK_NORM_FULL;
        if (model_get_vector(L, &lw->q_norm, NAME("attn_q_norm.weight"), full ? q_dim : c->head_dim, c->has_qk_norm) < 0 ||
            model_get_vector(L, &lw->k_norm, NAME("attn_k_norm.weight"), full ? kv_dim : c->head_dim, c->has_qk_norm) < 0)
            return -1;
        if (c->post_norms && (model_get_vector(L, &lw->attn_post_norm, NAME("post_attention_norm.weight"), c->dim, 1) ||
                              model_get_vector(L, &lw->ffn_post_norm, NAME("post_ffw_norm.weight"), c->dim, 1)))
            return -1;
#undef NAME
    }
    return 0;
}

/* Every matrix a forward pass multiplies with, experts included, the head last (token_embd itself is only read
 * row by row), as a list to free; NULL when out of memory. Matrices a family lacks (an encoder's gate and head)
 * are left out. */
static Matrix **weight_matrices(const Weights *w, const Config *c, int *n_out) {
    const size_t per_layer = c->n_expert ? 5 + 3 * (size_t)c->n_expert : 7;
    Matrix **out = malloc(((size_t)c->n_layers * per_layer + 1) * sizeof *out);
    if (!out) return NULL;
    int n = 0;
#define ADD(mat) (void)((mat)->data ? (out[n++] = (mat)) : NULL)
    for (int l = 0; l < c->n_layers; l++) {
        LayerWeights *lw = &w->layers[l];
        ADD(&lw->wq), ADD(&lw->wk), ADD(&lw->wv), ADD(&lw->wo);
        if (c->n_expert) {
            ADD(&lw->router);
            for (int e = 0; e < c->n_expert; e++) ADD(&lw->gate_exps[e]), ADD(&lw->up_exps[e]), ADD(&lw->down_exps[e]);
        } else {
            ADD(&lw->w_gate), ADD(&lw->w_up), ADD(&lw->w_down);
        }
    }
    ADD((Matrix *)&w->output);
#undef ADD
    *n_out = n;
    return out;
}

/* ---- RunState ---- */

static int alloc_expert_jobs(qrt_model *m); /* below, beside the matmul jobs */

static size_t act_bytes_for(const Matrix *m) { return qrt_row_bytes(m->kernels.act_type, m->cols); }

static int alloc_state(qrt_model *mod, int n_batch, int n_ctx, int n_seq, int kv_f32, char *err, size_t errlen) {
    const Config *c = &mod->config;
    RunState *s = &mod->state;
    s->n_batch = n_batch;
    s->n_ctx = n_ctx;
    s->n_seq = n_seq;
    s->kv_f32 = kv_f32;
    /* every size below comes from file values: saturating products (size_math.h) keep a 32-bit build from
     * wrapping them into small buffers */
    const size_t q_dim = qrt_size_mul((size_t)c->n_heads, (size_t)c->head_dim);
    const size_t kv_dim = qrt_size_mul((size_t)c->n_kv_heads, (size_t)c->head_dim);
    const size_t wide = q_dim > (size_t)c->dim ? q_dim : (size_t)c->dim;
    size_t act = 0;
    int n_matrices;
    Matrix **all = weight_matrices(&mod->weights, c, &n_matrices);
    if (!all) return model_set_err(err, errlen, "%s: out of memory for the run state", mod->path);
    s->rows_f32_per_thread = 0; /* one tile of dequantized rows per thread, for float-activation matrices */
    s->prep_per_thread = 0;
    for (int i = 0; i < n_matrices; i++) {
        if (act_bytes_for(all[i]) > act) act = act_bytes_for(all[i]);
        const qrt_matmul_kernels *k = &all[i]->kernels;
        const size_t tile = k->dequantize ? qrt_size_mul((size_t)(k->prompt_tile_nr > QRT_ROWS_NR ? k->prompt_tile_nr : QRT_ROWS_NR),
                                                        (size_t)all[i]->cols) : 0;
        if (tile > s->rows_f32_per_thread) s->rows_f32_per_thread = tile;
        const size_t prep = k->packed_prep ? QRT_PREP_BYTES(all[i]->cols, QRT_PREP_TOKENS) : 0;
        if (all[i]->packed && prep > s->prep_per_thread) s->prep_per_thread = qrt_size_round64(prep);
    }
    free(all);
    s->act_row_bytes = qrt_size_round64(act);
#define ALLOC(ptr, rows, width)                                                                                     \
    do {                                                                                                            \
        const size_t bytes_ = qrt_size_round64(qrt_size_mul3((rows), (width), sizeof(*(ptr))));                     \
        (ptr) = qrt_size_ok(bytes_) ? aligned_alloc(64, bytes_ ? bytes_ : 64) : NULL;                               \
        if (!(ptr)) return model_set_err(err, errlen, "%s: out of memory for the run state", mod->path);            \
        memset((ptr), 0, bytes_); /* touched now: the first batch pays no page faults */                            \
    } while (0)
    ALLOC(s->x, (size_t)n_batch, (size_t)c->dim);
    ALLOC(s->xb, (size_t)n_batch, wide);
    ALLOC(s->xb2, (size_t)n_batch, wide);
    ALLOC(s->q, (size_t)n_batch, q_dim);
    ALLOC(s->k, (size_t)n_batch, kv_dim);
    ALLOC(s->v, (size_t)n_batch, kv_dim);
    ALLOC(s->hb, (size_t)n_batch, (size_t)c->hidden_dim);
    ALLOC(s->hb2, (size_t)n_batch, (size_t)c->hidden_dim);
    ALLOC(s->att, (size_t)mod->n_threads,
          c->encoder ? QRT_ENCODER_ATT_FLOATS(n_ctx, c->head_dim)
                     : qrt_size_mul(QRT_ATTN_GROUP_MAX, qrt_size_add((size_t)n_ctx, (size_t)c->head_dim)));
    ALLOC(s->attn_scratch, (size_t)mod->n_threads, qrt_size_mul(64, (size_t)c->head_dim));
    ALLOC(s->rope_cos, (size_t)n_batch, (size_t)(c->n_rot / 2));
    ALLOC(s->rope_sin, (size_t)n_batch, (size_t)(c->n_rot / 2));
    if (c->n_swa) {
        ALLOC(s->rope_cos_swa, (size_t)n_batch, (size_t)(c->n_rot / 2));
        ALLOC(s->rope_sin_swa, (size_t)n_batch, (size_t)(c->n_rot / 2));
    }
    if (!c->encoder) ALLOC(s->logits, 1, (size_t)c->vocab_size);
    if (s->rows_f32_per_thread) ALLOC(s->rows_f32, (size_t)mod->n_threads, s->rows_f32_per_thread);
    if (s->prep_per_thread) ALLOC(s->prep, (size_t)mod->n_threads, s->prep_per_thread);
    ALLOC(s->seq_start, (size_t)n_batch + 1, 1);
    ALLOC(s->row_seq, (size_t)n_batch, 1);
    ALLOC(s->row_pos, (size_t)n_batch, 1);
    ALLOC(s->swa_base, (size_t)n_seq, 1);
    ALLOC(mod->n_past, (size_t)n_seq, 1);
    ALLOC(s->pooled, 1, (size_t)c->dim);
    ALLOC(s->act, (size_t)n_batch, s->act_row_bytes);
    /* the most block sums any activation row needs (qrt_packed_sums_per_row of the widest row) */
    int64_t widest = (int64_t)(wide > (size_t)c->hidden_dim ? wide : (size_t)c->hidden_dim);
    if (c->expert_ffn > widest) widest = c->expert_ffn;
    const int64_t sums_q8_0 = qrt_packed_sums_per_row(QRT_TYPE_Q8_0, widest / 32 * 32);
    const int64_t sums_q8_K = qrt_packed_sums_per_row(QRT_TYPE_Q8_K, widest / QK_K * QK_K);
    s->act_sums_stride = (size_t)(sums_q8_0 > sums_q8_K ? sums_q8_0 : sums_q8_K) + 16;
    ALLOC(s->act_sums, (size_t)n_batch, s->act_sums_stride);
    if (c->n_expert) {
        const size_t used = (size_t)c->n_expert_used;
        ALLOC(s->router_probs, (size_t)n_batch, (size_t)c->n_expert);
        ALLOC(s->expert_weight, (size_t)n_batch, used);
        ALLOC(s->expert_id, (size_t)n_batch, used);
        ALLOC(s->expert_pairs, (size_t)n_batch, used);
        ALLOC(s->expert_slot, (size_t)n_batch, used);
        ALLOC(s->expert_first, 1, (size_t)c->n_expert + 1);
        const size_t pairs = qrt_size_mul((size_t)n_batch, used);
        ALLOC(s->expert_x, pairs, (size_t)c->dim);
        ALLOC(s->expert_h, pairs, (size_t)c->expert_ffn);
        ALLOC(s->expert_h2, pairs, (size_t)c->expert_ffn);
        ALLOC(s->expert_out, pairs, (size_t)c->dim);
        ALLOC(s->expert_act, pairs, s->act_row_bytes);
        ALLOC(s->expert_act2, pairs, s->act_row_bytes);
        ALLOC(s->expert_act_sums, pairs, s->act_sums_stride);
        ALLOC(s->expert_act_sums2, pairs, s->act_sums_stride);
        if (alloc_expert_jobs(mod)) return model_set_err(err, errlen, "%s: out of memory for the run state", mod->path);
    }
#undef ALLOC
    if (c->encoder) return 0; /* no cache: each embed batch is whole */
    /* the rows each layer keeps (sliding layers: the window plus one batch, at most the context) and where they
     * start; layers x positions x kv width x element: 64 layers of 16 heads x 1024 at 2048 positions is 2^32
     * bytes, which wrapped to 0 on 32-bit builds before */
    s->kv_offset = calloc((size_t)c->n_layers, sizeof *s->kv_offset);
    s->kv_rows = calloc((size_t)c->n_layers, sizeof *s->kv_rows);
    if (!s->kv_offset || !s->kv_rows) return model_set_err(err, errlen, "%s: out of memory for the run state", mod->path);
    size_t cache_values = 0;
    for (int l = 0; l < c->n_layers; l++) {
        /* what a batch sees, from a multiple of 64 on (see slide_window) */
        const int64_t window = ((int64_t)c->n_swa + n_batch + 63 + 63) / 64 * 64;
        s->kv_rows[l] = (c->layer[l] & LAYER_SWA) && window < n_ctx ? (int)window : n_ctx;
        s->kv_offset[l] = cache_values;
        cache_values = qrt_size_add(cache_values, qrt_size_mul((size_t)s->kv_rows[l], kv_dim));
    }
    s->kv_seq_values = cache_values;
    const size_t cache_bytes = qrt_size_mul3(cache_values, (size_t)n_seq, kv_f32 ? 4 : 2);
    s->key_cache = qrt_size_ok(cache_bytes) ? calloc(1, cache_bytes ? cache_bytes : 1) : NULL;
    s->value_cache = qrt_size_ok(cache_bytes) ? calloc(1, cache_bytes ? cache_bytes : 1) : NULL;
    if (!s->key_cache || !s->value_cache) {
        double rows = 0.0;
        for (int l = 0; l < c->n_layers; l++) rows += s->kv_rows[l];
        const double mib = 2.0 * rows * n_seq * (double)kv_dim * (kv_f32 ? 4 : 2) / (1 << 20);
        char seqs[32] = "";
        if (n_seq > 1) snprintf(seqs, sizeof seqs, "%d sequences x ", n_seq);
        return model_set_err(err, errlen,
                       "%s: out of memory for a KV cache of %s%d tokens x %d layers x %zu values (%.0f MiB; a smaller "
                       "context, -c%s, needs less)",
                       mod->path, seqs, n_ctx, c->n_layers, kv_dim, mib, n_seq > 1 ? ", or fewer sequences" : "");
    }
    return 0;
}

static void free_state(RunState *s) {
    free(s->x), free(s->xb), free(s->xb2), free(s->q), free(s->k), free(s->v), free(s->hb), free(s->hb2);
    free(s->att), free(s->attn_scratch), free(s->rope_cos), free(s->rope_sin), free(s->logits), free(s->act);
    free(s->rope_cos_swa), free(s->rope_sin_swa), free(s->act_sums), free(s->kv_offset), free(s->kv_rows);
    free(s->router_probs), free(s->expert_weight), free(s->expert_id), free(s->expert_pairs), free(s->expert_first);
    free(s->expert_x), free(s->expert_h), free(s->expert_h2), free(s->expert_out), free(s->expert_slot);
    free(s->expert_act), free(s->expert_act2), free(s->expert_act_sums), free(s->expert_act_sums2);
    free(s->key_cache), free(s->value_cache), free(s->seq_start), free(s->pooled), free(s->rows_f32);
    free(s->prep);
    free(s->row_seq), free(s->row_pos), free(s->swa_base);
}

/* ---- repacking (packed.h) ---- */

/* The matrices a forward pass multiplies with (the head last; token_embd itself is only read row by row). */
/* Give the pages of a stored matrix back to the kernel once its packed copy exists (file-backed: they are
 * re-read from the file if anything touches them again), so the resident size stays one copy of the weights. */
static void release_pages(const uint8_t *data, size_t bytes) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t start = ((uintptr_t)data + page - 1) / page * page, end = ((uintptr_t)data + bytes) / page * page;
    if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
}

/* The packed weights' buffer: anonymous pages, on Linux marked for transparent huge pages. Decoding streams
 * every weight byte once per token, and with 4 KiB pages a 600 MB model costs ~150k TLB misses per token; with
 * 2 MiB pages a 1B model decodes about 30% faster on one core. (llama.cpp's repack buffer keeps 4 KiB pages.) */
static uint8_t *alloc_weights(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE); /* advice only: where THP is off the pages stay 4 KiB */
#endif
    return p;
}

/* Matrices run on converted activations (not dequantized rows) whose type has a worthwhile x16 layout. */
static int packable(const Matrix *m) { return !m->kernels.dequantize && qrt_packed_worthwhile(m->type); }

/* Repack every matrix whose type has an x16 layout with a SIMD kernel on this CPU into one owned buffer. */
static int pack_weights(qrt_model *m, char *err, size_t errlen) {
    const Config *c = &m->config;
    Weights *w = &m->weights;
    int n;
    Matrix **list = weight_matrices(w, c, &n);
    if (!list) return model_set_err(err, errlen, "%s: out of memory", m->path);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (packable(list[i]))
            total = qrt_size_add(total, qrt_size_round64(qrt_packed_bytes(list[i]->type, list[i]->rows, list[i]->cols)));
    if (total == 0) {
        free(list);
        return 0;
    }
    w->packed = qrt_size_ok(total) ? alloc_weights(total) : NULL;
    w->packed_bytes = w->packed ? total : 0;
    if (!w->packed) {
        free(list);
        return model_set_err(err, errlen, "%s: out of memory repacking %zu MB of weights (QRT_PACK=0 skips it)", m->path,
                       total >> 20);
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        Matrix *mat = list[i];
        const size_t bytes = packable(mat) ? qrt_packed_bytes(mat->type, mat->rows, mat->cols) : 0;
        if (bytes == 0) continue;
        qrt_pack_matrix(mat->type, mat->data, mat->row_bytes, mat->rows, mat->cols, w->packed + off);
        mat->packed = w->packed + off;
        mat->packed_group_bytes = bytes / (size_t)(mat->rows / QRT_PACK_ROWS);
        if (mat->data != w->token_embd.data) release_pages(mat->data, (size_t)mat->rows * mat->row_bytes);
        off += (bytes + 63) / 64 * 64;
    }
    free(list);
    return 0;
}

/* ---- open / free ---- */

qrt_model_params qrt_model_default_params(void) {
    qrt_model_params p = {2048, 0, 64, 0, 0, 1};
    return p;
}

void qrt_model_free(qrt_model *m) {
    if (!m) return;
    free_state(&m->state);
    free(m->n_past);
    free(m->expert_jobs), free(m->expert_first_task);
    for (int i = 0; i < m->weights.n_owned; i++) free(m->weights.owned[i]);
    free(m->weights.owned);
    if (m->weights.packed) munmap(m->weights.packed, m->weights.packed_bytes);
    for (int l = 0; m->weights.layers && l < m->config.n_layers; l++) {
        free(m->weights.layers[l].gate_exps);
        free(m->weights.layers[l].up_exps);
        free(m->weights.layers[l].down_exps);
    }
    free(m->weights.layers);
    if (m->pool) qrt_threadpool_destroy(m->pool);
    gguf_close(m->file);
    free(m);
}

qrt_model *qrt_model_open(const char *path, const qrt_model_params *params, char *err, size_t errlen) {
    qrt_model_params p = params ? *params : qrt_model_default_params();
    qrt_model *m = calloc(1, sizeof *m);
    if (!m) {
        model_set_err(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    m->file = gguf_open(path, err, errlen);
    if (!m->file) goto fail;
    if (read_config(m->file, &m->config, path, err, errlen)) goto fail;
    loader L = {m->file, path, err, errlen, &m->weights, m->config.encoder};
    if (load_weights(&L, &m->config)) goto fail;
    const char *pack_env = getenv("QRT_PACK");
    if (!p.no_pack && !(pack_env && strcmp(pack_env, "0") == 0) && pack_weights(m, err, errlen)) goto fail;

    m->pool = qrt_threadpool_create(p.n_threads);
    if (!m->pool) {
        model_set_err(err, errlen, "%s: cannot start the thread pool", path);
        goto fail;
    }
    m->n_threads = qrt_threadpool_size(m->pool);
    qrt_select_pass(&m->pass);
    int n_ctx = p.n_ctx > 0 ? p.n_ctx : 2048;
    if (n_ctx > m->config.n_ctx_train) n_ctx = m->config.n_ctx_train;
    int n_batch = p.n_batch > 0 ? p.n_batch : 64;
    if (n_batch > 512) n_batch = 512;
    if (m->config.encoder) {
        /* an encoder sees one sequence at a time (attention rows: max_seq_len) and runs as many sequences as fit
         * QRT_ENCODER_BATCH tokens through each matmul (a weight row read once for all of them) */
        n_ctx = m->config.max_seq_len;
        n_batch = n_ctx > QRT_ENCODER_BATCH ? n_ctx : QRT_ENCODER_BATCH;
    }
    if (alloc_state(m, n_batch, n_ctx, m->config.encoder || p.n_seq < 1 ? 1 : p.n_seq, p.kv_f32, err, errlen))
        goto fail;
    /* LongRoPE's factors: the long ones when the context exceeds the trained one, as llama.cpp picks them */
    if (!m->weights.rope_freqs)
        m->weights.rope_freqs = n_ctx > m->config.n_ctx_orig ? m->weights.rope_long : m->weights.rope_short;
    const Config *c = &m->config;
    snprintf(m->describe, sizeof m->describe, "%s%s, %d layers, %d hidden, %d ffn, %d/%d heads, vocab %d", c->arch,
             c->encoder ? " encoder" : "", c->n_layers, c->dim, c->hidden_dim, c->n_heads, c->n_kv_heads, c->vocab_size);
    return m;
fail:
    qrt_model_free(m);
    return NULL;
}

/* ---- the thread pool ---- */

double model_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Every pool run of the forward pass goes through here, so the time no worker can help with (the serial share:
 * eval time minus pool time) is measured rather than guessed. */
void model_pool_run(qrt_model *m, qrt_task_fn fn, void *ctx, int n_tasks) {
    const double t0 = model_now_s();
    qrt_threadpool_run(m->pool, fn, ctx, n_tasks);
    m->pool_s += model_now_s() - t0;
    m->pool_tasks += n_tasks;
}

/* ---- matmul over the thread pool ---- */

typedef struct matmul_job {
    const Matrix *w;
    const uint8_t *act; /* n_tok rows of act_row_bytes */
    size_t act_row_bytes;
    float *out;      /* [n_tok][out_stride] */
    int64_t out_stride;
    int n_tok;
    int64_t rows_per_task;
    /* a prompt whose rows alone give too few tasks also splits its tokens (matmul_split_tokens): task t runs row
     * chunk t / n_tok_blocks for the tok_per_task tokens of block t % n_tok_blocks (the last one may be short) */
    int n_tok_blocks, tok_per_task;
    qrt_vec_dot_fn dot;
    qrt_tile_fn tile; /* optional: tile_nr rows x tile_nt tokens per call, results equal to dot's */
    int tile_nr, tile_nt;
    qrt_packed_fn packed; /* set when w->packed: one call per 16-row group for all tokens */
    qrt_packed_prep_fn packed_prep; /* and its prep, into this thread's prep_per_thread bytes of prep */
    uint8_t *prep;
    size_t prep_per_thread;
    const int32_t *sums;
    size_t sums_stride;
    qrt_batch_pos batch; /* where these tokens sit in llama.cpp's batching of the same eval */
    /* float activations (w->kernels.dequantize): each task dequantizes the rows of one tile (or one row) at a
     * time into its thread's rows of `rows_f32` and runs the f32 kernels on them */
    qrt_dequantize_row_fn dequantize;
    float *rows_f32;
    size_t rows_f32_per_thread; /* floats */
    /* the tokens are single-token steps of different sequences (model.decode_rows): the kernels above are the
     * one-token ones, run token by token over each 16-row block (its weights read from memory once) */
    int per_token;
} matmul_job;

/* matmul_task for weights dequantized to f32 rows as they are used (float activations): the same tiles and dots
 * as an f32 matrix, over a tile of rows made f32 in this thread's scratch. */
static void matmul_dequantized_task(const matmul_job *j, int64_t r0, int64_t r1, int thread) {
    const int64_t cols = j->w->cols;
    const size_t rb = j->w->row_bytes, ab = j->act_row_bytes, os = (size_t)j->out_stride, fb = (size_t)cols * 4;
    float *rows = j->rows_f32 + (size_t)thread * j->rows_f32_per_thread;
    const int nr = j->tile ? j->tile_nr : 1, nt = j->tile ? j->tile_nt : 1;
    const int b_tiled = j->tile ? j->n_tok / nt * nt : 0;
    for (int64_t r = r0; r < r1; r += nr) {
        const int n_rows = r + nr <= r1 ? nr : (int)(r1 - r);
        for (int rr = 0; rr < n_rows; rr++) j->dequantize(j->w->data + (size_t)(r + rr) * rb, rows + (size_t)rr * cols, cols);
        if (n_rows == nr)
            for (int b = 0; b < b_tiled; b += nt) j->tile(cols, rows, fb, j->act + (size_t)b * ab, ab, j->out + (size_t)b * os + r, os);
        for (int rr = 0; rr < n_rows; rr++)
            for (int b = n_rows == nr ? b_tiled : 0; b < j->n_tok; b++)
                j->out[(size_t)b * os + r + rr] = j->dot(cols, rows + (size_t)rr * cols, j->act + (size_t)b * ab);
    }
}

/* Rows r0..r1-1 of the job for all its tokens. */
static void matmul_rows(const matmul_job *j, int64_t r0, int64_t r1, int thread) {
    const int64_t cols = j->w->cols;
    const size_t rb = j->w->row_bytes, ab = j->act_row_bytes, os = (size_t)j->out_stride;
    if (j->dequantize) {
        matmul_dequantized_task(j, r0, r1, thread);
        return;
    }
    int64_t r = r0;
    if (j->packed) { /* rows_per_task is a multiple of 16, and so are the rows of a packed matrix */
        uint8_t *prep = j->prep ? j->prep + (size_t)thread * j->prep_per_thread : NULL; /* none without preps */
        qrt_packed_run(j->packed, j->packed_prep, prep, cols,
                       j->w->packed + (size_t)(r0 / QRT_PACK_ROWS) * j->w->packed_group_bytes, j->w->packed_group_bytes,
                       (r1 - r0) / QRT_PACK_ROWS, j->act, ab, j->sums, j->sums_stride, j->n_tok, j->out + r0, os,
                       j->batch);
        return;
    }
    if (j->tile) {
        const int nr = j->tile_nr, nt = j->tile_nt;
        const int b_tiled = j->n_tok / nt * nt;
        for (; r + nr <= r1; r += nr) {
            const uint8_t *wrow = j->w->data + (size_t)r * rb;
            for (int b = 0; b < b_tiled; b += nt)
                j->tile(cols, wrow, rb, j->act + (size_t)b * ab, ab, j->out + (size_t)b * os + r, os);
            for (int rr = 0; rr < nr; rr++)
                for (int b = b_tiled; b < j->n_tok; b++)
                    j->out[(size_t)b * os + r + rr] = j->dot(cols, wrow + (size_t)rr * rb, j->act + (size_t)b * ab);
        }
    }
    for (; r < r1; r++) {
        const uint8_t *wrow = j->w->data + (size_t)r * rb;
        for (int b = 0; b < j->n_tok; b++) j->out[(size_t)b * os + r] = j->dot(cols, wrow, j->act + (size_t)b * ab);
    }
}

/* The job's tokens t0..t0 + n_tok - 1 as a job of their own: the same kernels, and the packed kernels told where
 * these tokens sit in llama.cpp's batch (q4_K and q6_K take their order from it). */
static matmul_job matmul_token_block(const matmul_job *j, int t0, int n_tok) {
    matmul_job block = *j;
    block.n_tok = n_tok;
    block.act += (size_t)t0 * j->act_row_bytes;
    block.out += (size_t)t0 * (size_t)j->out_stride;
    if (j->sums) block.sums += (size_t)t0 * j->sums_stride;
    block.batch.first += t0;
    return block;
}

static void matmul_task(void *ctx, int task, int thread) {
    const matmul_job *j = ctx;
    const int64_t r0 = task / j->n_tok_blocks * j->rows_per_task;
    const int64_t r1 = r0 + j->rows_per_task < j->w->rows ? r0 + j->rows_per_task : j->w->rows;
    if (j->n_tok_blocks > 1) {
        const int t0 = task % j->n_tok_blocks * j->tok_per_task;
        const matmul_job block =
            matmul_token_block(j, t0, t0 + j->tok_per_task < j->n_tok ? j->tok_per_task : j->n_tok - t0);
        matmul_rows(&block, r0, r1, thread);
        return;
    }
    /* the packed kernels give each token the products and order of a one-token call, whatever the number of
     * tokens (their token tiles only share the weights' decoding): one call for all */
    if (!j->per_token || j->packed) {
        matmul_rows(j, r0, r1, thread);
        return;
    }
    matmul_job one = *j;
    one.n_tok = 1;
    for (int64_t r = r0; r < r1; r += QRT_PACK_ROWS) { /* r0 and rows_per_task are multiples of 16 */
        const int64_t end = r + QRT_PACK_ROWS < r1 ? r + QRT_PACK_ROWS : r1;
        for (int b = 0; b < j->n_tok; b++) {
            one.act = j->act + (size_t)b * j->act_row_bytes;
            one.out = j->out + (size_t)b * (size_t)j->out_stride;
            one.sums = j->sums ? j->sums + (size_t)b * j->sums_stride : NULL;
            matmul_rows(&one, r, end, thread);
        }
    }
}


/* ---- per-token steps over the pool ----
 * Everything between two matmuls is per token row (residual adds, norms, SwiGLU, activation conversion, rope,
 * KV stores), so a prompt's rows are split across the pool like the matmuls' rows are; a row's steps are the same
 * code in the same order whichever thread runs them, so the bits do not depend on the thread count. Single-token
 * decode runs them on the calling thread: one row is less work than a pool hand-off. */

int model_split_rows(const qrt_model *m, row_split *split, int first, int end) {
    const int n = end - first, most_tasks = 4 * m->n_threads;
    split->first = first;
    split->end = end;
    split->per_task = n > most_tasks ? (n + most_tasks - 1) / most_tasks : 1;
    return (n + split->per_task - 1) / split->per_task;
}

void model_task_rows(const row_split *split, int task, int *b0, int *b1) {
    *b0 = split->first + task * split->per_task;
    *b1 = *b0 + split->per_task < split->end ? *b0 + split->per_task : split->end;
}

void model_run_rows(qrt_model *m, qrt_task_fn fn, void *job, int n_tasks) {
    if (n_tasks == 1)
        fn(job, 0, 0);
    else
        model_pool_run(m, fn, job, n_tasks);
}

/* The steps between matmuls, each run when its field is set, in this order per row b:
 *   residual[b] = rmsnorm(residual[b]) * residual_norm (gemma's post-norms); x[b] += residual[b];
 *   xb[b] = rmsnorm(x[b]) * norm; hb[b] = act(hb[b]) * hb2[b] (silu or gelu, the family's);
 *   act[b] = act_src[b] converted to act_type (and its block sums for the packed kernels). */
typedef struct {
    row_split split;
    qrt_model *m;
    float *residual;
    const float *residual_norm;
    const float *norm;
    int glu;
    const float *act_src;
    int64_t act_cols;
    int act_type, sums;
    qrt_act_from_float_fn conv;
} rows_job;

static void rows_task(void *ctx, int task, int thread) {
    (void)thread;
    const rows_job *j = ctx;
    const Config *c = &j->m->config;
    RunState *s = &j->m->state;
    int b0, b1;
    model_task_rows(&j->split, task, &b0, &b1);
    for (int b = b0; b < b1; b++) {
        float *x = s->x + (size_t)b * c->dim, *xb = s->xb + (size_t)b * c->dim;
        if (j->residual) {
            float *r = j->residual + (size_t)b * c->dim;
            if (j->residual_norm) op_rmsnorm(r, r, j->residual_norm, c->dim, c->rms_eps);
            op_add(x, r, c->dim);
        }
        if (j->norm) op_rmsnorm(xb, x, j->norm, c->dim, c->rms_eps);
        if (j->glu) {
            float *gate = s->hb + (size_t)b * c->hidden_dim, *up = s->hb2 + (size_t)b * c->hidden_dim;
            if (c->ffn_act == FFN_GELU_TANH)
                j->m->pass.geglu(gate, up, c->hidden_dim);
            else
                op_swiglu(gate, up, c->hidden_dim, j->m->pass.expf16);
        }
        if (j->act_src) {
            uint8_t *act = s->act + (size_t)b * s->act_row_bytes;
            j->conv(j->act_src + (size_t)b * j->act_cols, act, j->act_cols);
            if (j->sums)
                qrt_packed_act_sums(j->act_type, act, j->act_cols, s->act_sums + (size_t)b * s->act_sums_stride);
        }
    }
}

/* Run the steps of j over rows first..end-1; when it converts, the cache then holds the result. */
static void steps(qrt_model *m, act_cache *cache, rows_job *j, int first, int end) {
    j->m = m;
    model_run_rows(m, rows_task, j, model_split_rows(m, &j->split, first, end));
    /* a converted input is kept; otherwise a step may have rewritten the rows the cache describes */
    *cache = j->act_src ? (act_cache){j->act_src, j->act_type, end, j->sums} : (act_cache){0};
}

/* The conversion of the input these matmuls share (the first one's act type), and whether block sums are needed. */
static void convert_for(rows_job *j, const Matrix *const ws[], int n) {
    j->act_type = ws[0]->kernels.act_type;
    j->conv = ws[0]->kernels.act_from_float;
    j->sums = 0;
    for (int k = 0; k < n; k++) j->sums |= ws[k]->packed != NULL;
}

static void prepare_act(qrt_model *m, act_cache *cache, const float *x, int n_tok, const Matrix *w) {
    const int sums = w->packed != NULL;
    if (cache->src == x && cache->act_type == w->kernels.act_type && cache->n_tok == n_tok && (cache->has_sums || !sums))
        return;
    rows_job j = {.act_src = x, .act_cols = w->cols};
    convert_for(&j, &w, 1);
    steps(m, cache, &j, 0, n_tok);
}

/* Set up out[b][r] = dot(w row r, x[b]) for b < n_tok (x rows are w->cols floats apart, out rows out_stride
 * apart) as a job; returns its number of tasks. */
/* The job out[b][r] = dot(w row r, act row b) for b < n_tok over activation rows already converted (act rows
 * state.act_row_bytes apart, their block sums state.act_sums_stride apart); returns its number of tasks. */
static int matmul_job_for(qrt_model *m, matmul_job *j, float *out, int64_t out_stride, const Matrix *w,
                          const uint8_t *act, const int32_t *sums, int n_tok) {
    const qrt_matmul_kernels *k = &w->kernels;
    const int batch = n_tok > 1 && !m->decode_rows; /* the prompt kernels, else each token runs the one-token ones */
    *j = (matmul_job){.w = w,
                      .act = act,
                      .act_row_bytes = m->state.act_row_bytes,
                      .out = out,
                      .out_stride = out_stride,
                      .n_tok = n_tok,
                      .n_tok_blocks = 1,
                      .tok_per_task = n_tok,
                      .dot = batch ? k->batch_dot : k->dot,
                      .per_token = n_tok > 1 && !batch};
    if (w->packed) {
        j->packed = k->packed;
        j->packed_prep = k->packed_prep;
        j->prep = m->state.prep;
        j->prep_per_thread = m->state.prep_per_thread;
        j->sums = sums;
        j->sums_stride = m->state.act_sums_stride;
        j->batch = batch ? m->batch : (qrt_batch_pos){0, 1};
    }
    j->tile = batch ? k->prompt_tile : k->decode_tile;
    j->tile_nr = batch ? k->prompt_tile_nr : QRT_ROWS_NR;
    j->tile_nt = batch ? QRT_TILE_NT : 1;
    if (j->tile && batch && n_tok < QRT_TILE_NT) j->tile = NULL;
    if (k->dequantize) {
        j->dequantize = k->dequantize;
        j->rows_f32 = m->state.rows_f32;
        j->rows_f32_per_thread = m->state.rows_f32_per_thread;
    }
    /* enough tasks to balance the threads, each a whole number of 16-row groups (cache-line friendly output) */
    const int64_t target = (int64_t)m->n_threads * 4;
    int64_t per = (w->rows + target - 1) / target;
    per = (per + 15) / 16 * 16;
    j->rows_per_task = per;
    return (int)((w->rows + per - 1) / per);
}

/* Token blocks: whole tiles of every prompt kernel (QRT_TILE_NT tokens for the tile kernels, up to 8 for the
 * packed ones, whose tiles start at the first token of each call), and long enough that each block's reading of
 * its rows' weights stays a small cost (SmolLM2-135M q4_K_M pp512 at 1 thread with every matmul split: 32-token
 * blocks -4%, 16 -10%); 24 still splits a 62-token chunk (llama-bench's pp62, a prompt's tail) in two. */
#define MATMUL_TOKEN_TILE 8
#define MATMUL_TOKEN_BLOCK_MIN 24
_Static_assert(MATMUL_TOKEN_TILE % QRT_TILE_NT == 0, "token blocks hold whole prompt tiles");
_Static_assert(MATMUL_TOKEN_BLOCK_MIN % MATMUL_TOKEN_TILE == 0, "token blocks hold whole packed tiles");

/* A prompt matmul whose rows give row_tasks tasks (its own, or those of the matmuls of its pool run), fewer than
 * the 4 per thread that balance the threads (a small model's 576 rows are 36 groups of 16 for 16 threads; its k
 * and v projections 4 to 12), splits its tokens into blocks as well, so that row chunks x token blocks reach
 * them; returns the job's tasks. Every token's products and order are those of the whole job's call: the
 * blocks start on tile boundaries (the tile kernels' last partial tile is the same tokens), and the packed
 * kernels see each block's place in the batch. Single-token steps (per_token) keep their own order. */
static int matmul_split_tokens(const qrt_model *m, matmul_job *j, int row_tasks) {
    const int target = 4 * m->n_threads;
    const int row_chunks = (int)((j->w->rows + j->rows_per_task - 1) / j->rows_per_task);
    if (m->n_threads == 1 || j->per_token || row_tasks >= target || j->n_tok < 2 * MATMUL_TOKEN_BLOCK_MIN)
        return row_chunks;
    int n_blocks = (target + row_tasks - 1) / row_tasks;
    if (n_blocks > j->n_tok / MATMUL_TOKEN_BLOCK_MIN) n_blocks = j->n_tok / MATMUL_TOKEN_BLOCK_MIN;
    int per = (j->n_tok + n_blocks - 1) / n_blocks;
    per = (per + MATMUL_TOKEN_TILE - 1) / MATMUL_TOKEN_TILE * MATMUL_TOKEN_TILE;
    j->tok_per_task = per;
    j->n_tok_blocks = (j->n_tok + per - 1) / per;
    return row_chunks * j->n_tok_blocks;
}

/* The same for x's n_tok rows of floats, converted first (or taken from the cache). */
static int matmul_setup(qrt_model *m, act_cache *cache, matmul_job *j, float *out, int64_t out_stride,
                        const Matrix *w, const float *x, int n_tok) {
    if (m->imatrix && !w->input_recorded) qrt_imatrix_add(m->imatrix, w->name, w->name_len, x, n_tok, w->cols);
    prepare_act(m, cache, x, n_tok, w);
    return matmul_job_for(m, j, out, out_stride, w, m->state.act, m->state.act_sums, n_tok);
}

void model_matmul(qrt_model *m, act_cache *cache, float *out, int64_t out_stride, const Matrix *w, const float *x,
                   int n_tok) {
    matmul_job j;
    const int row_tasks = matmul_setup(m, cache, &j, out, out_stride, w, x, n_tok);
    model_pool_run(m, matmul_task, &j, matmul_split_tokens(m, &j, row_tasks));
}

/* Up to 3 matmuls of the same input (q/k/v, gate/up) in one pool run: one synchronisation instead of several.
 * Each output is computed exactly as by model_matmul(). */
typedef struct {
    matmul_job jobs[3];
    int first_task[4];
} matmul_group;

static void matmul_group_task(void *ctx, int task, int thread) {
    matmul_group *g = ctx;
    int k = 0;
    while (task >= g->first_task[k + 1]) k++;
    matmul_task(&g->jobs[k], task - g->first_task[k], thread);
}

void model_matmul_many(qrt_model *m, act_cache *cache, int n, float *const outs[], const int64_t strides[],
                        const Matrix *const ws[], const float *x, int n_tok) {
    int same = 1;
    for (int k = 1; k < n; k++) same &= ws[k]->kernels.act_type == ws[0]->kernels.act_type;
    if (!same || m->n_threads == 1) { /* one act buffer; and nothing to save without threads */
        for (int k = 0; k < n; k++) model_matmul(m, cache, outs[k], strides[k], ws[k], x, n_tok);
        return;
    }
    matmul_group g;
    int row_tasks = 0; /* the run's, so that its token blocks balance the threads over all of its matmuls */
    for (int k = 0; k < n; k++) row_tasks += matmul_setup(m, cache, &g.jobs[k], outs[k], strides[k], ws[k], x, n_tok);
    g.first_task[0] = 0;
    for (int k = 0; k < n; k++) g.first_task[k + 1] = g.first_task[k] + matmul_split_tokens(m, &g.jobs[k], row_tasks);
    model_pool_run(m, matmul_group_task, &g, g.first_task[n]);
}

/* ---- attention ---- */

typedef struct {
    qrt_model *m;
    int layer, n_tok;
    int heads_per_task; /* 1, or a prompt's heads that share a kv head (pass.attn_scores_group) */
} attn_job;

/* The cache row of a sequence's position: sliding layers hold positions from the sequence's swa_base on
 * (slide_window keeps it there). */
static int kv_row(const RunState *s, int layer, int seq, int pos) {
    return s->kv_rows[layer] < s->n_ctx ? pos - s->swa_base[seq] : pos;
}

/* The first value of a sequence's rows of a layer. */
static size_t kv_first(const RunState *s, int layer, int seq) {
    return (size_t)seq * s->kv_seq_values + s->kv_offset[layer];
}

/* Before a batch at positions pos0..pos0+n_tok-1: drop from the sliding layers' rows the positions no token of
 * the batch sees, when the batch would not fit otherwise. The kept rows move to the front in one memmove per
 * layer, every few batches; base stays a multiple of 64 (see attention_task), so a window never wraps. */
static void slide_window(qrt_model *m, int seq, int pos0, int n_tok) {
    const Config *c = &m->config;
    RunState *s = &m->state;
    int *base = &s->swa_base[seq];
    if (pos0 == 0) *base = 0;
    const int first_seen = pos0 - c->n_swa + 1 > 0 ? (pos0 - c->n_swa + 1) & ~63 : 0;
    const size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim, elem = s->kv_f32 ? 4 : 2;
    for (int l = 0; l < c->n_layers; l++) {
        const int rows = s->kv_rows[l];
        if (rows == s->n_ctx || pos0 + n_tok - *base <= rows || first_seen <= *base) continue;
        const size_t keep = (size_t)(pos0 - first_seen) * kv_dim * elem, drop = (size_t)(first_seen - *base);
        uint8_t *kc = (uint8_t *)s->key_cache + kv_first(s, l, seq) * elem;
        uint8_t *vc = (uint8_t *)s->value_cache + kv_first(s, l, seq) * elem;
        memmove(kc, kc + drop * kv_dim * elem, keep);
        memmove(vc, vc + drop * kv_dim * elem, keep);
    }
    for (int l = 0; l < c->n_layers; l++)
        if (s->kv_rows[l] < s->n_ctx && pos0 + n_tok - *base > s->kv_rows[l]) {
            *base = first_seen;
            break;
        }
}

static void attention_task(void *ctx, int task, int thread) {
    const attn_job *j = ctx;
    const Config *c = &j->m->config;
    RunState *s = &j->m->state;
    const int n_tasks_per_row = c->n_heads / j->heads_per_task;
    const int b = task / n_tasks_per_row, h0 = task % n_tasks_per_row * j->heads_per_task;
    const int hd = c->head_dim, kv_dim = c->n_kv_heads * hd;
    const int kvh = h0 / (c->n_heads / c->n_kv_heads);
    const int pos = s->row_pos[b], seq = s->row_seq[b];
    /* positions first..pos are seen: all of them, or the last n_swa in a sliding layer. ggml's lanes and blocks
     * count from cache cell 0, masked cells included: the products start at a multiple of 64 (rows of a ring
     * are too), the positions before `first` masked, so that the sums round as there */
    const int first = (c->layer[j->layer] & LAYER_SWA) && pos >= c->n_swa ? pos - c->n_swa + 1 : 0;
    const int start = first & ~63, n_masked = first - start;
    const int n_pos = pos - start + 1;
    const size_t att_stride = (size_t)s->n_ctx + (size_t)hd;
    float *att = s->att + (size_t)thread * QRT_ATTN_GROUP_MAX * att_stride;
    const float scale = c->q_scale != 0.0f ? 1.0f : 1.0f / sqrtf((float)hd);
    /* ggml's paths: prompt batches go through tinyBLAS (except f32 scores: the permuted query is not contiguous),
     * single tokens through ggml_vec_dot; with an f16 cache the query and the weights are rounded to f16 */
    const int f16 = !s->kv_f32, decode = j->n_tok == 1 || j->m->decode_rows;
    const int scores_vecdot = decode || !f16;
    const size_t elem = f16 ? 2 : 4;
    const uint8_t *kc = (const uint8_t *)s->key_cache + (kv_first(s, j->layer, seq) + (size_t)kvh * hd) * elem;
    const uint8_t *vc = (const uint8_t *)s->value_cache + (kv_first(s, j->layer, seq) + (size_t)kvh * hd) * elem;
    const size_t row_bytes = (size_t)kv_dim * elem;
    const int row0 = kv_row(s, j->layer, seq, start);
    const uint8_t *keys = kc + (size_t)row0 * row_bytes, *values = vc + (size_t)row0 * row_bytes;
    /* with an f16 cache the kernels round q and the weights to f16 themselves, as ggml does */
    const qrt_pass_kernels *k = &j->m->pass;
    float *scratch = s->attn_scratch + (size_t)thread * 64 * hd;
    for (int h = h0; h < h0 + j->heads_per_task; h += QRT_ATTN_GROUP_MAX) {
        const int n_q = h0 + j->heads_per_task - h < QRT_ATTN_GROUP_MAX ? h0 + j->heads_per_task - h
                                                                         : QRT_ATTN_GROUP_MAX;
        const float *q = s->q + (size_t)b * c->n_heads * hd + (size_t)h * hd;
        float *out = s->xb2 + (size_t)b * c->n_heads * hd + (size_t)h * hd;
        if (j->heads_per_task > 1)
            k->attn_scores_group(att, att_stride, q, n_q, keys, n_pos, kv_dim, hd, f16, scores_vecdot, scale);
        else
            k->attn_scores(att, q, keys, n_pos, kv_dim, hd, f16, scores_vecdot, scale);
        for (int i = 0; i < n_q; i++) {
            float *row = att + (size_t)i * att_stride;
            for (int t = 0; t < n_masked; t++) row[t] = -INFINITY;
            k->attn_softmax(row, n_pos);
        }
        if (j->heads_per_task > 1)
            k->attn_values_group(out, att, att_stride, n_q, values, n_pos, kv_dim, hd, f16, decode, scratch);
        else
            k->attn_values(out, att, values, n_pos, kv_dim, hd, f16, decode, scratch);
    }
}

/* Token rows: the embedding row and the rotary angles of each position. */
typedef struct {
    row_split split;
    qrt_model *m;
    const int32_t *tokens;
} embed_job;

static void embed_task(void *ctx, int task, int thread) {
    (void)thread;
    const embed_job *j = ctx;
    const Config *c = &j->m->config;
    const Weights *w = &j->m->weights;
    RunState *s = &j->m->state;
    const int half_rot = c->n_rot / 2;
    int b0, b1;
    model_task_rows(&j->split, task, &b0, &b1);
    for (int b = b0; b < b1; b++) {
        const uint8_t *row = w->token_embd.data + (size_t)j->tokens[b] * w->token_embd.row_bytes;
        float *x = s->x + (size_t)b * c->dim;
        qrt_dequantize_row(w->token_embd.type, row, x, c->dim);
        if (c->embd_scale != 0.0f)
            for (int i = 0; i < c->dim; i++) x[i] *= c->embd_scale;
        op_rope_angles(s->rope_cos + (size_t)b * half_rot, s->rope_sin + (size_t)b * half_rot, s->row_pos[b], c->n_rot,
                       &c->rope, w->rope_freqs);
        if (s->rope_cos_swa)
            op_rope_angles(s->rope_cos_swa + (size_t)b * half_rot, s->rope_sin_swa + (size_t)b * half_rot,
                           s->row_pos[b], c->n_rot, &c->rope_swa, NULL);
    }
}

/* Token rows after the q/k/v matmuls: biases, q/k norms, rope, and the row's keys and values into the cache. */
typedef struct {
    row_split split;
    qrt_model *m;
    const LayerWeights *lw;
    int layer;
} qkv_job;

static void store_kv_row(qrt_model *m, int layer, int seq, int pos, const float *k, const float *v) {
    RunState *s = &m->state;
    const int kv_dim = m->config.n_kv_heads * m->config.head_dim;
    const size_t off = kv_first(s, layer, seq) + (size_t)kv_row(s, layer, seq, pos) * kv_dim;
    if (s->kv_f32) {
        memcpy((float *)s->key_cache + off, k, (size_t)kv_dim * sizeof(float));
        memcpy((float *)s->value_cache + off, v, (size_t)kv_dim * sizeof(float));
    } else {
        qrt_half *kc = (qrt_half *)s->key_cache + off, *vc = (qrt_half *)s->value_cache + off;
        for (int i = 0; i < kv_dim; i++) {
            kc[i] = qrt_fp32_to_fp16(k[i]);
            vc[i] = qrt_fp32_to_fp16(v[i]);
        }
    }
}

static void qkv_task(void *ctx, int task, int thread) {
    (void)thread;
    const qkv_job *j = ctx;
    const Config *c = &j->m->config;
    const LayerWeights *lw = j->lw;
    RunState *s = &j->m->state;
    const int hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd, half_rot = c->n_rot / 2;
    int b0, b1;
    model_task_rows(&j->split, task, &b0, &b1);
    for (int b = b0; b < b1; b++) {
        float *q = s->q + (size_t)b * q_dim, *k = s->k + (size_t)b * kv_dim, *v = s->v + (size_t)b * kv_dim;
        if (lw->bq) op_add(q, lw->bq, q_dim), op_add(k, lw->bk, kv_dim), op_add(v, lw->bv, kv_dim);
        if (c->has_qk_norm == QK_NORM_FULL) {
            op_rmsnorm(q, q, lw->q_norm, q_dim, c->rms_eps);
            op_rmsnorm(k, k, lw->k_norm, kv_dim, c->rms_eps);
        } else if (lw->q_norm) {
            for (int h = 0; h < c->n_heads; h++) op_rmsnorm(q + h * hd, q + h * hd, lw->q_norm, hd, c->rms_eps);
            for (int h = 0; h < c->n_kv_heads; h++) op_rmsnorm(k + h * hd, k + h * hd, lw->k_norm, hd, c->rms_eps);
        }
        const int kind = c->layer[j->layer];
        if (!(kind & LAYER_NO_ROPE)) {
            const int swa = kind & LAYER_SWA;
            const float *cs = (swa ? s->rope_cos_swa : s->rope_cos) + (size_t)b * half_rot;
            const float *sn = (swa ? s->rope_sin_swa : s->rope_sin) + (size_t)b * half_rot;
            op_rope(q, c->n_heads, hd, c->n_rot, cs, sn, c->rope_style == ROPE_NEOX);
            op_rope(k, c->n_kv_heads, hd, c->n_rot, cs, sn, c->rope_style == ROPE_NEOX);
        }
        if (c->q_scale != 0.0f)
            for (int i = 0; i < q_dim; i++) q[i] *= c->q_scale;
        store_kv_row(j->m, j->layer, s->row_seq[b], s->row_pos[b], k, v);
    }
}

/* Rows converted to activations into other buffers than state.act (the experts' gathered rows): first, when
 * glu_up is set, src = silu(src) * glu_up; then dst row = src row converted, and its block sums when sums. */
typedef struct {
    row_split split;
    float *src;          /* rows of cols floats */
    const float *glu_up; /* or NULL */
    int64_t cols;
    uint8_t *dst;  /* rows of state.act_row_bytes */
    int32_t *sums; /* rows of state.act_sums_stride, or NULL */
    size_t dst_stride, sums_stride;
    int act_type;
    qrt_act_from_float_fn conv;
    qrt_expf16_fn exp16;
} convert_job;

static void convert_task(void *ctx, int task, int thread) {
    (void)thread;
    const convert_job *j = ctx;
    int b0, b1;
    model_task_rows(&j->split, task, &b0, &b1);
    for (int b = b0; b < b1; b++) {
        float *row = j->src + (size_t)b * j->cols;
        if (j->glu_up) op_swiglu(row, j->glu_up + (size_t)b * j->cols, (int)j->cols, j->exp16);
        uint8_t *act = j->dst + (size_t)b * j->dst_stride;
        j->conv(row, act, j->cols);
        if (j->sums) qrt_packed_act_sums(j->act_type, act, j->cols, j->sums + (size_t)b * j->sums_stride);
    }
}

/* Convert n_rows of j->src for the matrices like w (its act type; block sums when it is packed). */
static void convert_rows(qrt_model *m, convert_job *j, int n_rows, const Matrix *w, uint8_t *dst, int32_t *sums) {
    j->act_type = w->kernels.act_type;
    j->conv = w->kernels.act_from_float;
    j->dst = dst;
    j->sums = w->packed ? sums : NULL;
    j->dst_stride = m->state.act_row_bytes;
    j->sums_stride = m->state.act_sums_stride;
    j->exp16 = m->pass.expf16;
    model_run_rows(m, convert_task, j, model_split_rows(m, &j->split, 0, n_rows));
}

static int alloc_expert_jobs(qrt_model *m) {
    m->expert_jobs = calloc(2 * (size_t)m->config.n_expert, sizeof *m->expert_jobs);
    m->expert_first_task = calloc(2 * (size_t)m->config.n_expert + 1, sizeof *m->expert_first_task);
    return m->expert_jobs && m->expert_first_task ? 0 : -1;
}

/* Many matmuls in one pool run (a layer's experts): task t belongs to the job whose first task is the largest
 * one <= t. */
typedef struct {
    matmul_job *jobs;
    int *first_task; /* [n + 1] */
    int n;
} matmul_batch;

static void matmul_batch_task(void *ctx, int task, int thread) {
    const matmul_batch *g = ctx;
    int lo = 0, hi = g->n - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (g->first_task[mid] <= task)
            lo = mid;
        else
            hi = mid - 1;
    }
    matmul_task(&g->jobs[lo], task - g->first_task[lo], thread);
}

/* ---- mixture of experts ---- */

/* Per token: softmax of the router's logits, the n_expert_used most probable experts (ties to the lower index)
 * and their weights, renormalised to sum 1 for families that do (the sum clamped as llama.cpp clamps it). */
static void route_tokens(qrt_model *m, int n_tok) {
    const Config *c = &m->config;
    RunState *s = &m->state;
    const int n = c->n_expert, k = c->n_expert_used;
    for (int b = 0; b < n_tok; b++) {
        float *p = s->router_probs + (size_t)b * n;
        op_softmax(p, n, m->pass.expf16);
        int32_t *ids = s->expert_id + (size_t)b * k;
        float *wt = s->expert_weight + (size_t)b * k;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < n; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= ids[i] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            ids[j] = best;
            wt[j] = p[best];
        }
        if (c->expert_norm) {
            float sum = 0.0f;
            for (int j = 0; j < k; j++) sum += wt[j];
            sum = sum < 6.103515625e-5f ? 6.103515625e-5f : sum;
            for (int j = 0; j < k; j++) wt[j] /= sum;
        }
    }
    /* the (token, slot) pairs of each expert, in token order: a counting sort (first[e] is advanced past each
     * placed pair, then shifted back to each expert's start) */
    int32_t *first = s->expert_first;
    memset(first, 0, (size_t)(n + 1) * sizeof *first);
    for (int i = 0; i < n_tok * k; i++) first[s->expert_id[i] + 1]++;
    for (int e = 0; e < n; e++) first[e + 1] += first[e];
    for (int i = 0; i < n_tok * k; i++) s->expert_pairs[first[s->expert_id[i]]++] = i;
    for (int e = n; e > 0; e--) first[e] = first[e - 1];
    first[0] = 0;
}

/* Calibration: each expert's gathered input rows (cols wide) into its row of the tensors' importance sums, as
 * llama-imatrix counts them per expert; a and b (when set) are experts of tensors that share these inputs. */
static void record_expert_inputs(qrt_model *m, const Matrix *a, const Matrix *b, const float *rows, int64_t cols) {
    const Config *c = &m->config;
    const RunState *s = &m->state;
    for (int e = 0; e < c->n_expert; e++) {
        const int f = s->expert_first[e], n = s->expert_first[e + 1] - f;
        if (n == 0) continue;
        const float *x = rows + (size_t)f * cols;
        qrt_imatrix_add_expert(m->imatrix, a[e].name, a[e].name_len, e, c->n_expert, x, n, cols);
        if (b) qrt_imatrix_add_expert(m->imatrix, b[e].name, b[e].name_len, e, c->n_expert, x, n, cols);
    }
}

/* The MoE FFN of xb's n_tok rows into xb. The rows of all (token, slot) pairs are gathered expert by expert and
 * converted once; every chosen expert's gate and up matmuls over its rows run in one pool run, its down matmuls
 * in another (experts no token chose are never read); each token's expert outputs are weighted and added in slot
 * order, as llama.cpp adds its views. */
static void moe_ffn(qrt_model *m, act_cache *cache, const LayerWeights *lw, int n_tok) {
    const Config *c = &m->config;
    RunState *s = &m->state;
    const int dim = c->dim, ffn = c->expert_ffn, k = c->n_expert_used, n_pairs = n_tok * k;
    const size_t ab = s->act_row_bytes, ss = s->act_sums_stride;
    model_matmul(m, cache, s->router_probs, c->n_expert, &lw->router, s->xb, n_tok);
    *cache = (act_cache){0};
    route_tokens(m, n_tok);
    for (int i = 0; i < n_pairs; i++)
        memcpy(s->expert_x + (size_t)i * dim, s->xb + (size_t)(s->expert_pairs[i] / k) * dim, (size_t)dim * 4);

    if (m->imatrix) record_expert_inputs(m, lw->gate_exps, lw->up_exps, s->expert_x, dim);
    convert_job in = {.src = s->expert_x, .cols = dim};
    convert_rows(m, &in, n_pairs, &lw->gate_exps[0], s->expert_act, s->expert_act_sums);
    const uint8_t *up_act = s->expert_act;
    const int32_t *up_sums = s->expert_act_sums;
    if (lw->up_exps[0].kernels.act_type != lw->gate_exps[0].kernels.act_type) {
        convert_rows(m, &in, n_pairs, &lw->up_exps[0], s->expert_act2, s->expert_act_sums2);
        up_act = s->expert_act2;
        up_sums = s->expert_act_sums2;
    }
    matmul_batch g = {m->expert_jobs, m->expert_first_task, 0};
    g.first_task[0] = 0;
    for (int e = 0; e < c->n_expert; e++) {
        const int f = s->expert_first[e], n = s->expert_first[e + 1] - f;
        if (n == 0) continue;
        const Matrix *ws[2] = {&lw->gate_exps[e], &lw->up_exps[e]};
        float *outs[2] = {s->expert_h + (size_t)f * ffn, s->expert_h2 + (size_t)f * ffn};
        const uint8_t *acts[2] = {s->expert_act + (size_t)f * ab, up_act + (size_t)f * ab};
        const int32_t *sums[2] = {s->expert_act_sums + (size_t)f * ss, up_sums + (size_t)f * ss};
        for (int h = 0; h < 2; h++, g.n++)
            g.first_task[g.n + 1] = g.first_task[g.n] + matmul_job_for(m, &g.jobs[g.n], outs[h], ffn, ws[h],
                                                                        acts[h], sums[h], n);
    }
    model_pool_run(m, matmul_batch_task, &g, g.first_task[g.n]);

    convert_job mid = {.src = s->expert_h, .glu_up = s->expert_h2, .cols = ffn};
    convert_rows(m, &mid, n_pairs, &lw->down_exps[0], s->expert_act, s->expert_act_sums);
    if (m->imatrix) record_expert_inputs(m, lw->down_exps, NULL, s->expert_h, ffn);
    g.n = 0;
    for (int e = 0; e < c->n_expert; e++) {
        const int f = s->expert_first[e], n = s->expert_first[e + 1] - f;
        if (n == 0) continue;
        g.first_task[g.n + 1] =
            g.first_task[g.n] + matmul_job_for(m, &g.jobs[g.n], s->expert_out + (size_t)f * dim, dim,
                                               &lw->down_exps[e], s->expert_act + (size_t)f * ab,
                                               s->expert_act_sums + (size_t)f * ss, n);
        g.n++;
    }
    model_pool_run(m, matmul_batch_task, &g, g.first_task[g.n]);

    /* slot j of token b is pair expert_slot[b * k + j]: its output times its weight, added in slot order */
    for (int i = 0; i < n_pairs; i++) s->expert_slot[s->expert_pairs[i]] = i;
    for (int b = 0; b < n_tok; b++) {
        float *sum = s->xb + (size_t)b * dim;
        for (int j = 0; j < k; j++) {
            const float *row = s->expert_out + (size_t)s->expert_slot[b * k + j] * dim;
            const float wt = s->expert_weight[b * k + j];
            if (j == 0)
                for (int d = 0; d < dim; d++) sum[d] = row[d] * wt;
            else
                for (int d = 0; d < dim; d++) sum[d] += row[d] * wt;
        }
    }
}

/* ---- the forward pass ---- */

/* x = cap * tanh(x / cap), as llama.cpp's scale, tanh, scale */
static void softcap(float *x, size_t n, float cap) {
    for (size_t i = 0; i < n; i++) x[i] = tanhf(x[i] * (1.0f / cap)) * cap;
}

/* Run n_tok token rows, each at the sequence and position state.row_seq/row_pos give it; logits of every token go to all_logits (if not NULL), the last token's
 * to state.logits; with hidden set, no logits: state.xb holds every row's hidden state after output_norm. Each layer: attention then SwiGLU, each a norm, matmuls and a residual add; the residual add
 * of one block is the first step of the next block's norm (one pass over the rows instead of two).
 * outputs: how many of the last rows are read after the last layer (n_tok with all_logits or hidden, 1 for the
 * last token's logits, 0 for none). As llama.cpp's graph does (inp_out_ids), the last layer's dense feed-forward
 * runs on those rows only, as a batch of their own (a single row takes the one-token kernels, as ggml's does);
 * with none, neither it nor the head runs. */
static void forward(qrt_model *m, const int32_t *tokens, int n_tok, float *all_logits, int hidden, int outputs) {
    const Config *c = &m->config;
    const Weights *w = &m->weights;
    RunState *s = &m->state;
    const int dim = c->dim, hd = c->head_dim, ffn = c->hidden_dim;
    const int q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd;
    act_cache cache = {0};

    if (c->n_swa) {
        if (m->decode_rows)
            for (int b = 0; b < n_tok; b++) slide_window(m, s->row_seq[b], s->row_pos[b], 1);
        else
            slide_window(m, s->row_seq[0], s->row_pos[0], n_tok);
    }
    embed_job ej = {.m = m, .tokens = tokens};
    model_run_rows(m, embed_task, &ej, model_split_rows(m, &ej.split, 0, n_tok));
    float *residual = NULL;             /* the last block's output, not yet added to x */
    const float *residual_norm = NULL;  /* and the norm it takes first (gemma's post-FFN norm) */

    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *lw = &w->layers[l];
        /* attention */
        {
            const Matrix *const ws[] = {&lw->wq, &lw->wk, &lw->wv};
            rows_job norm = {.residual = residual, .residual_norm = residual_norm, .norm = lw->attn_norm,
                             .act_src = s->xb, .act_cols = dim};
            convert_for(&norm, ws, 3);
            steps(m, &cache, &norm, 0, n_tok);
            float *const outs[] = {s->q, s->k, s->v};
            const int64_t strides[] = {q_dim, kv_dim, kv_dim};
            model_matmul_many(m, &cache, 3, outs, strides, ws, s->xb, n_tok);
        }
        qkv_job qj = {.m = m, .lw = lw, .layer = l};
        model_run_rows(m, qkv_task, &qj, model_split_rows(m, &qj.split, 0, n_tok));
        /* a prompt's heads that share a kv head in one task, when the kernels read their keys once for all */
        const int group = n_tok > 1 && !m->decode_rows && m->pass.attn_scores_group ? c->n_heads / c->n_kv_heads : 1;
        attn_job aj = {m, l, n_tok, group};
        model_pool_run(m, attention_task, &aj, n_tok * (c->n_heads / group));
        model_matmul(m, &cache, s->xb, dim, &lw->wo, s->xb2, n_tok);

        if (c->n_expert) { /* mixture of experts */
            rows_job norm = {.residual = s->xb, .residual_norm = lw->attn_post_norm, .norm = lw->ffn_norm};
            steps(m, &cache, &norm, 0, n_tok);
            moe_ffn(m, &cache, lw, n_tok);
            residual = s->xb;
            residual_norm = lw->ffn_post_norm;
            continue;
        }
        /* SwiGLU feed-forward, of rows first..n_tok-1 (the output rows, in the last layer) */
        const int first = l == c->n_layers - 1 ? n_tok - outputs : 0;
        if (first == n_tok) return;
        {
            const Matrix *const ws[] = {&lw->w_gate, &lw->w_up};
            rows_job norm = {.residual = s->xb, .residual_norm = lw->attn_post_norm, .norm = lw->ffn_norm,
                             .act_src = s->xb, .act_cols = dim};
            convert_for(&norm, ws, 2);
            if (first) norm.act_src = NULL; /* the matmuls convert their rows themselves (act rows from 0) */
            steps(m, &cache, &norm, first, n_tok);
            float *const outs[] = {s->hb + (size_t)first * ffn, s->hb2 + (size_t)first * ffn};
            const int64_t strides[] = {ffn, ffn};
            model_matmul_many(m, &cache, 2, outs, strides, ws, s->xb + (size_t)first * dim, n_tok - first);
        }
        {
            const Matrix *const ws[] = {&lw->w_down};
            rows_job glu = {.glu = 1, .act_src = s->hb, .act_cols = ffn};
            convert_for(&glu, ws, 1);
            if (first) glu.act_src = NULL;
            steps(m, &cache, &glu, first, n_tok);
        }
        model_matmul(m, &cache, s->xb + (size_t)first * dim, dim, &lw->w_down, s->hb + (size_t)first * ffn,
                     n_tok - first);
        residual = s->xb;
        residual_norm = lw->ffn_post_norm;
    }

    /* head: all rows when asked for (or their hidden states), else only the last token */
    const int first = all_logits || hidden ? 0 : n_tok - 1;
    rows_job final = {.residual = residual, .residual_norm = residual_norm, .norm = w->output_norm};
    steps(m, &cache, &final, first, n_tok); /* x is not read again past this pass: only these rows are needed */
    if (hidden) return;
    if (all_logits) {
        model_matmul(m, &cache, all_logits, c->vocab_size, &w->output, s->xb, n_tok);
        if (c->logit_softcap != 0.0f) softcap(all_logits, (size_t)n_tok * c->vocab_size, c->logit_softcap);
        memcpy(s->logits, all_logits + (size_t)(n_tok - 1) * c->vocab_size, (size_t)c->vocab_size * sizeof(float));
    } else {
        model_matmul(m, &cache, s->logits, c->vocab_size, &w->output, s->xb + (size_t)(n_tok - 1) * dim, 1);
        if (c->logit_softcap != 0.0f) softcap(s->logits, (size_t)c->vocab_size, c->logit_softcap);
    }
}

/* n tokens of sequence seq from its n_past on, in chunks; all_logits as qrt_model_eval's. With pooled set (a
 * decoder's embed), no logits: each chunk's hidden rows are pooled into it (op_pool_rows; n is the whole sequence). */
static void run_chunks(qrt_model *m, int seq, const int32_t *tokens, int n, float *all_logits, float *pooled) {
    /* llama.cpp runs an eval in ubatches of QRT_LLAMA_UBATCH tokens; within one, qrun runs chunks of n_batch
     * tokens, never a 1-token tail (ggml treats single tokens differently: decode), and the packed kernels get
     * each chunk's place in the ubatch (their orders depend on it, as llama.cpp's kernel choice does) */
    for (int done = 0; done < n;) {
        const int ubatch0 = done / QRT_LLAMA_UBATCH * QRT_LLAMA_UBATCH;
        const int ubatch_n = n - ubatch0 < QRT_LLAMA_UBATCH ? n - ubatch0 : QRT_LLAMA_UBATCH;
        const int left = ubatch0 + ubatch_n - done;
        int chunk = left < m->state.n_batch ? left : m->state.n_batch;
        if (left - chunk == 1) chunk--;
        m->batch = (qrt_batch_pos){done - ubatch0, ubatch_n};
        for (int b = 0; b < chunk; b++) m->state.row_seq[b] = seq, m->state.row_pos[b] = m->n_past[seq] + b;
        /* the rows read after the last layer: all of them for all_logits, pooling or an importance matrix (whose
         * statistics take every row, as llama-imatrix's all-logits run does), else the eval's last token only */
        const int outputs = all_logits || pooled || m->imatrix ? chunk : done + chunk == n;
        forward(m, tokens + done, chunk, all_logits ? all_logits + (size_t)done * m->config.vocab_size : NULL,
                pooled != NULL, outputs);
        if (pooled) op_pool_rows(pooled, m->state.xb, chunk, m->config.dim, done, n, m->config.pooling);
        m->n_past[seq] += chunk;
        done += chunk;
    }
}

static void count_time(qrt_model *m, double t0, int n_tok, int prompt) {
    const double dt = model_now_s() - t0;
    if (prompt) {
        m->prompt_s += dt;
        m->prompt_tokens += n_tok;
    } else {
        m->gen_s += dt;
        m->gen_tokens += n_tok;
    }
}

static int refuse_encoder(qrt_model *m) {
    return model_set_err(m->error, sizeof m->error, "%s: %s is an embedding model: use embed", m->path, m->config.arch);
}

static int check_token(qrt_model *m, int32_t token, int index) {
    if (token >= 0 && token < m->config.vocab_size) return 0;
    return model_set_err(m->error, sizeof m->error, "token id %d at index %d is outside the vocabulary (0..%d)", token,
                         index, m->config.vocab_size - 1);
}

static int check_room(qrt_model *m, int seq, int n) {
    if (n <= m->state.n_ctx - m->n_past[seq]) return 0;
    return model_set_err(m->error, sizeof m->error, "context full: %d tokens in the cache + %d new > context %d",
                         m->n_past[seq], n, m->state.n_ctx);
}

int qrt_model_eval(qrt_model *m, const int32_t *tokens, int n, float *all_logits) {
    if (m->config.encoder) return refuse_encoder(m);
    if (n <= 0) return model_set_err(m->error, sizeof m->error, "eval: no tokens");
    if (check_room(m, 0, n)) return -1;
    for (int i = 0; i < n; i++)
        if (check_token(m, tokens[i], i)) return -1;
    const double t0 = model_now_s();
    run_chunks(m, 0, tokens, n, all_logits, NULL);
    m->has_logits = 1;
    count_time(m, t0, n, n > 1);
    return 0;
}

/* ---- several sequences in one call ---- */

/* One forward over single-token steps of different sequences (rows b < n_rows: seqs[b], tokens[b]), their logits
 * rows into logits. */
static void decode_rows(qrt_model *m, const int32_t *tokens, const int *seqs, int n_rows, float *logits) {
    RunState *s = &m->state;
    for (int first = 0; first < n_rows; first += s->n_batch) {
        const int n = n_rows - first < s->n_batch ? n_rows - first : s->n_batch;
        for (int b = 0; b < n; b++) s->row_seq[b] = seqs[first + b], s->row_pos[b] = m->n_past[seqs[first + b]];
        m->batch = (qrt_batch_pos){0, 1};
        m->decode_rows = n > 1;
        forward(m, tokens + first, n, logits + (size_t)first * m->config.vocab_size, 0, n);
        m->decode_rows = 0;
        for (int b = 0; b < n; b++) m->n_past[seqs[first + b]] += 1;
    }
}

int qrt_model_decode(qrt_model *m, const qrt_batch_entry *e, int n, float *logits) {
    if (m->config.encoder) return refuse_encoder(m);
    if (n <= 0) return model_set_err(m->error, sizeof m->error, "decode: no entries");
    const int n_seq = m->state.n_seq;
    const size_t vocab = (size_t)m->config.vocab_size;
    int *count = calloc((size_t)n_seq, sizeof *count);  /* entries per sequence */
    int *out_row = malloc((size_t)n * sizeof *out_row);  /* per entry its logits row, or -1 */
    int32_t *run = malloc((size_t)n * sizeof *run);      /* the tokens of one forward */
    int *run_entry = malloc((size_t)n * sizeof *run_entry); /* and the entry of each */
    int *run_seq = malloc((size_t)n * sizeof *run_seq);     /* and its sequence */
    float *rows = NULL;
    int status = 0, n_out = 0;
    if (!count || !out_row || !run || !run_entry || !run_seq) {
        status = model_set_err(m->error, sizeof m->error, "decode: out of memory");
        goto done;
    }
    for (int i = 0; i < n && !status; i++) {
        if (e[i].seq < 0 || e[i].seq >= n_seq) {
            status = model_set_err(m->error, sizeof m->error, "decode: entry %d names sequence %d (expected 0..%d)", i,
                                   e[i].seq, n_seq - 1);
        } else if (!(status = check_token(m, e[i].token, i)) && e[i].pos != m->n_past[e[i].seq] + count[e[i].seq]) {
            status = model_set_err(m->error, sizeof m->error,
                                   "decode: entry %d is at position %d of sequence %d (expected %d: it continues the "
                                   "sequence)", i, e[i].pos, e[i].seq, m->n_past[e[i].seq] + count[e[i].seq]);
        }
        if (!status) count[e[i].seq]++;
        out_row[i] = e[i].logits ? n_out++ : -1;
    }
    for (int q = 0; q < n_seq && !status; q++)
        if (count[q]) status = check_room(m, q, count[q]);
    if (status) goto done;

    const double t0 = model_now_s();
    int n_prompt = 0, n_single = 0;
    /* sequences adding several tokens: their own prompt pass each (all rows' logits when a row before the last
     * is asked for) */
    for (int q = 0; q < n_seq; q++) {
        if (count[q] < 2) continue;
        int k = 0, want_inner = 0;
        for (int i = 0; i < n; i++) {
            if (e[i].seq != q) continue;
            if (k < count[q] - 1 && e[i].logits) want_inner = 1;
            run_entry[k] = i;
            run[k++] = e[i].token;
        }
        float *all = NULL;
        if (want_inner && !(all = malloc((size_t)k * vocab * sizeof *all))) {
            status = model_set_err(m->error, sizeof m->error, "decode: out of memory");
            goto done;
        }
        run_chunks(m, q, run, k, all, NULL);
        for (int r = 0; r < k; r++) {
            const int row = out_row[run_entry[r]];
            if (row < 0) continue;
            const float *src = all ? all + (size_t)r * vocab : m->state.logits;
            memcpy(logits + (size_t)row * vocab, src, vocab * sizeof *src);
        }
        free(all);
        n_prompt += k;
    }
    /* sequences adding one token: rows of one forward (mixtures of experts group tokens by expert, which would
     * change a row's kernels with the batch: they run one at a time) */
    for (int i = 0; i < n; i++) {
        if (count[e[i].seq] != 1) continue;
        run[n_single] = e[i].token;
        run_seq[n_single] = e[i].seq;
        run_entry[n_single++] = i;
    }
    if (n_single) {
        if (!(rows = malloc((size_t)n_single * vocab * sizeof *rows))) {
            status = model_set_err(m->error, sizeof m->error, "decode: out of memory");
            goto done;
        }
        if (m->config.n_expert)
            for (int b = 0; b < n_single; b++) decode_rows(m, run + b, run_seq + b, 1, rows + (size_t)b * vocab);
        else
            decode_rows(m, run, run_seq, n_single, rows);
        for (int b = 0; b < n_single; b++) {
            const int row = out_row[run_entry[b]];
            if (row >= 0) memcpy(logits + (size_t)row * vocab, rows + (size_t)b * vocab, vocab * sizeof *rows);
        }
        memcpy(m->state.logits, rows + (size_t)(n_single - 1) * vocab, vocab * sizeof *rows);
    }
    m->has_logits = 1;
    if (n_prompt) count_time(m, t0, n_prompt, 1);
    if (n_single && !n_prompt) count_time(m, t0, n_single, 0);
done:
    free(count), free(out_row), free(run), free(run_entry), free(run_seq), free(rows);
    return status;
}

/* ---- embeddings ---- */

int qrt_model_n_embd(const qrt_model *m) { return m->config.dim; }
int qrt_model_is_encoder(const qrt_model *m) { return m->config.encoder; }
int qrt_model_embed_max_tokens(const qrt_model *m) {
    return m->config.encoder ? m->config.max_seq_len : m->state.n_ctx;
}

int qrt_model_embed(qrt_model *m, const int32_t *tokens, const int32_t *seq_lens, int n_seq, float *out) {
    const Config *c = &m->config;
    if (c->pooling == POOL_NONE)
        return model_set_err(m->error, sizeof m->error,
                             "%s: %s.pooling_type is absent or 0 (none): the file names no way to pool a text into one "
                             "vector",
                             m->path, c->arch);
    if (n_seq < 0) return model_set_err(m->error, sizeof m->error, "embed: %d sequences", n_seq);
    const int max_len = qrt_model_embed_max_tokens(m);
    size_t total = 0;
    for (int i = 0; i < n_seq; i++) {
        if (seq_lens[i] < 1 || seq_lens[i] > max_len)
            return model_set_err(m->error, sizeof m->error, "embed: sequence %d has %d tokens (expected 1..%d)", i,
                                 seq_lens[i], max_len);
        total += (size_t)seq_lens[i];
    }
    for (size_t i = 0; i < total; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return model_set_err(m->error, sizeof m->error,
                                 "token id %d at index %zu is outside the vocabulary (0..%d)", tokens[i], i,
                                 c->vocab_size - 1);
    const double t0 = model_now_s();
    const size_t dim = (size_t)c->dim;
    if (c->encoder) {
        /* as many whole sequences per forward as fit the batch's rows */
        size_t first_token = 0;
        for (int i = 0; i < n_seq;) {
            int n = 0, n_tok = 0;
            while (i + n < n_seq && n_tok + seq_lens[i + n] <= m->state.n_batch) n_tok += seq_lens[i + n++];
            m->batch = (qrt_batch_pos){0, n_tok};
            encoder_forward(m, tokens + first_token, seq_lens + i, n, out + (size_t)i * dim);
            first_token += (size_t)n_tok;
            i += n;
        }
    } else {
        /* each sequence from an empty cache; what was cached before is gone */
        size_t first_token = 0;
        for (int i = 0; i < n_seq; i++) {
            m->n_past[0] = 0;
            run_chunks(m, 0, tokens + first_token, seq_lens[i], NULL, out + (size_t)i * dim);
            first_token += (size_t)seq_lens[i];
        }
        m->n_past[0] = 0;
        m->has_logits = 0;
    }
    if (c->normalize)
        for (int i = 0; i < n_seq; i++) op_l2_normalize(out + (size_t)i * dim, c->dim);
    m->prompt_s += model_now_s() - t0;
    m->prompt_tokens += (int)(total < INT32_MAX ? total : INT32_MAX);
    return 0;
}

/* ---- small accessors ---- */

void qrt_model_set_imatrix(qrt_model *m, qrt_imatrix *im) { m->imatrix = im; }

const char *qrt_model_error(const qrt_model *m) { return m->error; }
const gguf_file *qrt_model_gguf(const qrt_model *m) { return m->file; }
int qrt_model_n_vocab(const qrt_model *m) { return m->config.vocab_size; }
int qrt_model_n_ctx(const qrt_model *m) { return m->state.n_ctx; }
int qrt_model_n_ctx_train(const qrt_model *m) { return m->config.n_ctx_train; }
int qrt_model_n_threads(const qrt_model *m) { return m->n_threads; }
int qrt_model_n_past(const qrt_model *m) { return m->n_past ? m->n_past[0] : 0; }
const char *qrt_model_describe(const qrt_model *m) { return m->describe; }
const float *qrt_model_logits(const qrt_model *m) { return m->has_logits ? m->state.logits : NULL; }
size_t qrt_model_file_bytes(const qrt_model *m) { return m->file->size; }

int qrt_model_set_n_past(qrt_model *m, int n_past) { return qrt_model_seq_set_n_past(m, 0, n_past); }
int qrt_model_n_seq(const qrt_model *m) { return m->state.n_seq; }
int qrt_model_seq_n_past(const qrt_model *m, int seq) {
    return seq >= 0 && seq < m->state.n_seq ? m->n_past[seq] : -1;
}

int qrt_model_seq_set_n_past(qrt_model *m, int seq, int n_past) {
    if (seq < 0 || seq >= m->state.n_seq)
        return model_set_err(m->error, sizeof m->error, "set_n_past: sequence %d (expected 0..%d)", seq,
                             m->state.n_seq - 1);
    if (n_past < 0 || n_past > m->n_past[seq])
        return model_set_err(m->error, sizeof m->error, "set_n_past: %d is outside 0..%d", n_past, m->n_past[seq]);
    /* sliding layers keep positions from swa_base on: going back is possible while the window before the new
     * position is still there (or to 0) */
    const int first_seen = n_past - m->config.n_swa + 1, needed = first_seen > 0 ? first_seen & ~63 : 0;
    if (n_past > 0 && m->config.n_swa && needed < m->state.swa_base[seq])
        return model_set_err(m->error, sizeof m->error,
                       "set_n_past: %d needs positions from %d on, and the sliding-window layers keep them from %d on "
                       "(only 0 is possible)", n_past, needed, m->state.swa_base[seq]);
    m->n_past[seq] = n_past;
    if (n_past == 0 && seq == 0) m->has_logits = 0;
    return 0;
}

size_t qrt_model_kv_bytes(const qrt_model *m) {
    const Config *c = &m->config;
    const size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim; /* the cache exists, so these products fit */
    size_t rows = 0;
    if (!m->state.kv_rows) return 0; /* an encoder */
    for (int l = 0; l < c->n_layers; l++) rows += (size_t)m->state.kv_rows[l];
    return 2 * rows * (size_t)m->state.n_seq * kv_dim * (m->state.kv_f32 ? 4 : 2);
}

int qrt_model_meta_str(const qrt_model *m, const char *key, const char **ptr, size_t *len) {
    gguf_str s;
    if (gguf_get_str(m->file, key, &s) != GGUF_OK) return -1;
    *ptr = s.ptr;
    *len = (size_t)s.len;
    return 0;
}

int qrt_model_meta_int(const qrt_model *m, const char *key, int64_t *out) {
    int64_t i = gguf_find_key(m->file, key);
    if (i < 0) return -1;
    const gguf_kv *kv = &m->file->kvs[i];
    switch (kv->type) {
    case GGUF_VT_INT8: case GGUF_VT_INT16: case GGUF_VT_INT32: case GGUF_VT_INT64: *out = kv->num.i64; return 0;
    case GGUF_VT_UINT8: case GGUF_VT_UINT16: case GGUF_VT_UINT32: case GGUF_VT_UINT64: case GGUF_VT_BOOL:
        *out = kv->num.u64 > INT64_MAX ? INT64_MAX : (int64_t)kv->num.u64;
        return 0;
    default: return -1;
    }
}

void qrt_model_timings(const qrt_model *m, double *prompt_s, int *prompt_tokens, double *gen_s, int *gen_tokens) {
    *prompt_s = m->prompt_s;
    *prompt_tokens = m->prompt_tokens;
    *gen_s = m->gen_s;
    *gen_tokens = m->gen_tokens;
}

double qrt_model_pool_seconds(const qrt_model *m) { return m->pool_s; }

int64_t qrt_model_pool_tasks(const qrt_model *m) { return m->pool_tasks; }

void qrt_model_reset_timings(qrt_model *m) {
    m->prompt_s = m->gen_s = m->pool_s = 0.0;
    m->pool_tasks = 0;
    m->prompt_tokens = m->gen_tokens = 0;
}

int qrt_model_type_packed(const qrt_model *m, int type) {
    int n, packed = 0;
    Matrix **all = weight_matrices(&m->weights, &m->config, &n);
    for (int i = 0; all && i < n; i++) packed |= all[i]->type == type && all[i]->packed;
    free(all);
    return packed;
}

int qrt_model_weight_types(const qrt_model *m, int *types, int cap) {
    int seen[QRT_TYPE_COUNT] = {0}, n = 0, n_matrices;
    seen[m->weights.token_embd.type] = 1;
    Matrix **all = weight_matrices(&m->weights, &m->config, &n_matrices);
    for (int i = 0; all && i < n_matrices; i++) seen[all[i]->type] = 1;
    free(all);
    for (int t = 0; t < QRT_TYPE_COUNT; t++)
        if (seen[t]) {
            if (n < cap) types[n] = t;
            n++;
        }
    return n < cap ? n : cap;
}
