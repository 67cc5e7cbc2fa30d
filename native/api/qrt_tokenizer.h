/* qrt_tokenizer.h — tokenizer, streaming detokenizer and sampler (part of the public C API, see qrt.h).
 *
 * Plain C declarations only (cffi parses this file). Token ids are int32_t; -1 means "none".
 * Text is bytes (UTF-8 expected; malformed input is tokenized as llama.cpp does, never rejected).
 */

/* ---- tokenizer ------------------------------------------------------------------------------------------ */

typedef struct qrt_tokenizer qrt_tokenizer;
struct gguf_file; /* the loader's open file (qrt_model.h: qrt_model_gguf()) */

/* Build the tokenizer from a GGUF file's tokenizer.ggml.* metadata (byte-level BPE "gpt2" with the
 * pre-tokenizer named by tokenizer.ggml.pre, SentencePiece-style "llama", or BERT WordPiece "bert"). Returns NULL
 * and writes a message (naming the file and e.g. the unsupported model/pre) into err on failure. */
qrt_tokenizer *qrt_tokenizer_load(const char *gguf_path, char *err, size_t errlen);
/* The same from a GGUF file already open (the model's: qrt_model_gguf()); `name` is used in messages. The
 * tokenizer copies what it needs: the file may be closed afterwards. */
qrt_tokenizer *qrt_tokenizer_from_gguf(const struct gguf_file *file, const char *name, char *err, size_t errlen);
void qrt_tokenizer_free(qrt_tokenizer *tok);

/* Tokenize text[0..len). add_special adds BOS/EOS as the vocabulary's add_bos/add_eos say; parse_special
 * matches control tokens written in the text (user-defined tokens are always matched whole, as in
 * llama.cpp). Writes up to `capacity` ids; returns the number of ids, or -(required capacity) when
 * `capacity` is too small (nothing useful is written then), or INT32_MIN on out-of-memory. */
int32_t qrt_tokenizer_encode(const qrt_tokenizer *tok, const char *text, size_t len, int add_special,
                             int parse_special, int32_t *out, int32_t capacity);

/* ids of text[0..len) cut as Hugging Face truncates one text: the vocabulary's specials (BOS/EOS as add_bos/add_eos
 * say; [CLS]/[SEP] for bert) are kept and the text's own ids cut so that the total is <= max_tokens (when
 * max_tokens cannot hold the specials, BOS is kept before EOS). Special tokens written in the text are matched
 * (as Hugging Face and llama.cpp's embedding tools do). Returns the number of ids, -(required capacity), or
 * INT32_MIN on out-of-memory, as qrt_tokenizer_encode. */
int32_t qrt_tokenizer_encode_truncated(const qrt_tokenizer *tok, const char *text, size_t len, int32_t max_tokens,
                                       int32_t *out, int32_t capacity);

/* bert vocabularies: the words WordPiece sees (normalized and pre-tokenized text, words joined by one space, each
 * cut at 100 characters) for tests and debugging. Returns the length, -(required capacity), or INT32_MIN for
 * another vocabulary (or a result over INT32_MAX bytes). */
int32_t qrt_tokenizer_wordpiece_words(const qrt_tokenizer *tok, const char *text, size_t len, char *out,
                                      int32_t capacity);

/* The bytes of one token (byte-level BPE decoded, SentencePiece ▁ -> space and <0xXX> -> the byte). Control
 * and unknown tokens give their text when `special` is set, else nothing. Returns the length, or -(length)
 * when `capacity` is too small; 0 for an id out of range. */
int32_t qrt_tokenizer_token_to_piece(const qrt_tokenizer *tok, int32_t id, char *buf, int32_t capacity,
                                     int special);

/* Detokenize a whole sequence as llama.cpp's llama_detokenize does (remove_special drops a leading BOS / a
 * trailing EOS the vocabulary adds; the SentencePiece leading space is stripped; clean-up of spaces before
 * punctuation for the vocabularies that ask for it). Returns the length or -(required capacity). */
int32_t qrt_tokenizer_decode(const qrt_tokenizer *tok, const int32_t *ids, int32_t n_ids, char *out,
                             int32_t capacity, int remove_special, int unparse_special);

int32_t qrt_tokenizer_n_vocab(const qrt_tokenizer *tok);
int32_t qrt_tokenizer_bos(const qrt_tokenizer *tok);
int32_t qrt_tokenizer_eos(const qrt_tokenizer *tok);
int qrt_tokenizer_add_bos(const qrt_tokenizer *tok);
int qrt_tokenizer_add_eos(const qrt_tokenizer *tok);
/* End of generation: EOS, EOT, EOM and the other end-of-turn tokens llama.cpp recognizes. */
int qrt_tokenizer_is_eog(const qrt_tokenizer *tok, int32_t id);
/* Control or unknown token (hidden when detokenizing without `special`). */
int qrt_tokenizer_is_control(const qrt_tokenizer *tok, int32_t id);
/* The token's raw vocabulary text (not NUL-terminated; *len receives its length); NULL if out of range. */
const char *qrt_tokenizer_token_text(const qrt_tokenizer *tok, int32_t id, size_t *len);
/* tokenizer.ggml.model and tokenizer.ggml.pre ("" if absent). */
const char *qrt_tokenizer_model_name(const qrt_tokenizer *tok);
const char *qrt_tokenizer_pre_name(const qrt_tokenizer *tok);

/* ---- streaming detokenizer ------------------------------------------------------------------------------ */

/* Feeds token ids one at a time and hands back only complete UTF-8: bytes of a character split across
 * tokens are held until the character is complete; bytes that cannot start or continue a valid sequence come
 * out as U+FFFD. */
typedef struct qrt_detokenizer qrt_detokenizer;

qrt_detokenizer *qrt_detokenizer_new(const qrt_tokenizer *tok, int special);
void qrt_detokenizer_free(qrt_detokenizer *d);
/* Returns a pointer to the newly completed text (valid until the next call) and its length in *len. */
const char *qrt_detokenizer_feed(qrt_detokenizer *d, int32_t id, size_t *len);
/* End of stream: whatever incomplete sequence is pending, as U+FFFD. */
const char *qrt_detokenizer_flush(qrt_detokenizer *d, size_t *len);

/* ---- sampler -------------------------------------------------------------------------------------------- */

typedef struct qrt_sampler_params {
    float temperature;     /* <= 0: greedy (argmax after penalties) */
    int32_t top_k;         /* <= 0: off */
    float top_p;           /* >= 1: off */
    float min_p;           /* <= 0: off */
    float repeat_penalty;  /* 1: off; logits of recent tokens: positive / penalty, negative * penalty */
    int32_t repeat_last_n; /* window of accepted tokens the penalties look at */
    float frequency_penalty;
    float presence_penalty;
    uint64_t seed;
} qrt_sampler_params;

typedef struct qrt_sampler qrt_sampler;

/* Defaults as llama.cpp's common params: temp 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0
 * over 64 tokens, seed 0. */
qrt_sampler_params qrt_sampler_default_params(void);
/* All buffers are allocated here; sampling allocates nothing. NULL on bad params or out-of-memory. */
qrt_sampler *qrt_sampler_new(const qrt_sampler_params *params, int32_t n_vocab);
void qrt_sampler_free(qrt_sampler *s);
/* Pick a token from logits[0..n_vocab) (not modified); -1 if n_vocab does not match the sampler's. */
int32_t qrt_sampler_sample(qrt_sampler *s, const float *logits, int32_t n_vocab);
/* Record a token as generated (or part of the prompt) for the repetition penalties. */
void qrt_sampler_accept(qrt_sampler *s, int32_t token);
/* Forget accepted tokens and restart the random stream from the seed. */
void qrt_sampler_reset(qrt_sampler *s);
