/* qrt_model.h — public API of the model runtime: open a GGUF, evaluate tokens, read logits, pick kernels.
 *
 * Part of qrt.h (inlined into the cffi cdef: plain declarations only). Functions returning int give 0 on
 * success and a negative value on error; the message is then available from qrt_model_error() (or written to
 * err for qrt_model_open).
 */

typedef struct qrt_model qrt_model;
/* The loaded GGUF file behind a model (also what the tokenizer reads its vocabulary from). */
typedef struct gguf_file gguf_file;

typedef struct {
    int n_ctx;      /* KV-cache length in tokens; <= 0: 2048 (capped to the model's context length) */
    int n_threads;  /* <= 0: all online CPUs */
    int n_batch;    /* tokens per forward chunk during prompt processing; <= 0: 64 */
    int kv_f32;     /* 1: f32 KV cache (exact comparisons); 0: f16 (half the memory, as llama.cpp) */
    int no_pack;    /* 1: keep the weights as stored; 0: repack q4_0/q4_1/q5_0/q5_1/q8_0/q4_K/q6_K matrices into 16-row groups
                       where this CPU has a kernel for them (faster; QRT_PACK=0 in the environment
                       also turns it off) */
    int n_seq;      /* sequences the KV cache holds at once (n_ctx positions each); <= 0: 1 */
} qrt_model_params;

qrt_model_params qrt_model_default_params(void);

/* NULL on failure with a one-line message in err naming the file and the problem (unsupported architecture or
 * tensor type, missing tensor, corrupt file). */
qrt_model *qrt_model_open(const char *path, const qrt_model_params *params, char *err, size_t errlen);
void qrt_model_free(qrt_model *m);
const char *qrt_model_error(const qrt_model *m);

const gguf_file *qrt_model_gguf(const qrt_model *m);
int qrt_model_n_vocab(const qrt_model *m);
int qrt_model_n_ctx(const qrt_model *m);
int qrt_model_n_ctx_train(const qrt_model *m);
int qrt_model_n_threads(const qrt_model *m);
/* Number of tokens currently in the KV cache (the position of the next token). */
int qrt_model_n_past(const qrt_model *m);
/* Forget the cache from position n_past on (0: start over). */
int qrt_model_set_n_past(qrt_model *m, int n_past);
/* Bytes of the KV cache and of the weights in the file. */
size_t qrt_model_kv_bytes(const qrt_model *m);
size_t qrt_model_file_bytes(const qrt_model *m);
/* A short description: "llama 30 layers, 576 hidden, 9/3 heads, vocab 49152". */
const char *qrt_model_describe(const qrt_model *m);

/* Run n tokens at positions n_past.. and append them to the cache. If all_logits is non-NULL it receives
 * n * n_vocab floats (row i = logits after token i); the last row is always kept in qrt_model_logits(). */
int qrt_model_eval(qrt_model *m, const int32_t *tokens, int n, float *all_logits);
/* Logits of the last evaluated token (n_vocab floats), NULL before any eval. */
const float *qrt_model_logits(const qrt_model *m);

/* ---- several sequences (KV slots), the way llama_batch feeds llama.cpp ----
 * qrt_model_eval, qrt_model_n_past and qrt_model_set_n_past act on sequence 0. */

typedef struct {
    int32_t token;
    int32_t seq;    /* 0 .. qrt_model_n_seq() - 1 */
    int32_t pos;    /* must continue the sequence: its n_past, then +1 for each later entry of the same sequence */
    int32_t logits; /* nonzero: a row of logits for this entry */
} qrt_batch_entry;

int qrt_model_n_seq(const qrt_model *m);
int qrt_model_seq_n_past(const qrt_model *m, int seq);
/* Forget sequence seq's cache from position n_past on (0: empty); an error when a sliding window cannot go back. */
int qrt_model_seq_set_n_past(qrt_model *m, int seq, int n_past);
/* Evaluate n entries of any sequences in one call; logits receives one n_vocab row per entry with logits set, in
 * entry order. The sequences that add one token each run as the rows of one forward pass (every weight read once
 * for all of them: a decode step of several streams); a sequence adding several runs its own prompt pass. Each
 * row runs the kernels it runs alone, so a sequence's logits are bit-identical whatever else is in the batch
 * (mixture-of-experts models run single-token sequences one after the other). Nothing is evaluated when an entry
 * is invalid (sequence, token, position, or the context full). */
int qrt_model_decode(qrt_model *m, const qrt_batch_entry *entries, int n, float *logits);

/* ---- embeddings ---- */

/* Width of an embedding (the hidden size). */
int qrt_model_n_embd(const qrt_model *m);
/* 1 for encoder families (bert): they answer embed only; eval is an error. */
int qrt_model_is_encoder(const qrt_model *m);
/* The most tokens one sequence may have in embed: the file's embedding length for encoders
 * (qconv.embedding.max_seq_length, else the trained context), the context for decoders. */
int qrt_model_embed_max_tokens(const qrt_model *m);
/* Embed n_seq sequences: tokens holds their ids one after the other (seq_lens[i] of sequence i, each 1..
 * qrt_model_embed_max_tokens); out receives n_seq x qrt_model_n_embd floats, each row the sequence's hidden states
 * pooled as the file says ({arch}.pooling_type: mean, cls or last; decoders: mean of the rows after output_norm)
 * and L2-normalised unless qconv.embedding.normalize is false. Encoders run many sequences per forward pass;
 * decoders run each from an empty cache (what was cached before is forgotten). Sequences do not see each other. */
int qrt_model_embed(qrt_model *m, const int32_t *tokens, const int32_t *seq_lens, int n_seq, float *out);

/* The distinct GGUF types of the weight matrices (for reporting kernels); returns how many (<= cap written). */
int qrt_model_weight_types(const qrt_model *m, int *types, int cap);
/* 1 if matrices of this type were repacked into 16-row groups at open (their matmuls run the packed kernels). */
int qrt_model_type_packed(const qrt_model *m, int type);

/* Metadata helpers for the bindings: a string value (pointer into the mapping, not NUL-terminated). */
int qrt_model_meta_str(const qrt_model *m, const char *key, const char **ptr, size_t *len);
int qrt_model_meta_int(const qrt_model *m, const char *key, int64_t *out);

/* Time spent (seconds) and tokens in prompt (n > 1) and single-token evals since open / the last reset. */
void qrt_model_timings(const qrt_model *m, double *prompt_s, int *prompt_tokens, double *gen_s, int *gen_tokens);
/* Of that time, the seconds spent in thread-pool runs (every thread working); the rest ran on the calling thread
 * alone (the serial share of an eval is 1 - pool / (prompt_s + gen_s)). */
double qrt_model_pool_seconds(const qrt_model *m);
/* The tasks those pool runs handed out (how finely the work was split across the threads). */
int64_t qrt_model_pool_tasks(const qrt_model *m);
void qrt_model_reset_timings(qrt_model *m);

/* ---- kernels ---- */

/* Force a kernel variant for all later matmuls: "scalar", "avx2", "avx512", "neon" or "auto". -1 if unknown or
 * this CPU cannot run it. The QRT_KERNEL environment variable does the same at start. */
int qrt_kernels_force(const char *variant);
int qrt_kernel_variant_supported(const char *variant);
/* The variant a matmul with weights of this GGUF type uses now ("avx512", ...), NULL if the type has no kernel. */
const char *qrt_kernel_variant_for_type(int type);
/* 1 if this build and CPU have that variant's kernel for that type. */
int qrt_kernel_has_variant(int type, const char *variant);
/* One dot product through a given variant (NULL or "auto": the dispatched one): the weight row w_row of n
 * values (GGUF type), the activation x (n floats) converted as a matmul would convert it. */
int qrt_kernel_dot(int type, const char *variant, const void *w_row, const float *x, int64_t n, float *out);
/* Test probe of the x16 packed kernels: pack rows x n weights of GGUF type `type` (row-major, rows a multiple of
 * 16), convert n_tok activation rows x (n floats each) as a matmul converts them, and run one variant's packed
 * kernel ("scalar", "avx2", "avx512"; NULL or "auto": the dispatched one) into out[t * rows + r]. Returns 0, or
 * -1 when the type or the variant has no packed kernel, or the shape does not fit. */
int qrt_packed_matmul(int type, const char *variant, const void *w, int64_t rows, int64_t n, const float *x,
                      int n_tok, float *out);
/* The prompt-batch kernel of f32/f16 weights (another summation order); -1 where a variant has none. */
int qrt_kernel_dot_batch(int type, const char *variant, const void *w_row, const float *x, int64_t n, float *out);
