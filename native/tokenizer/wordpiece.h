/* wordpiece.h — the BERT WordPiece tokenizer of a "bert" vocabulary (internal header).
 *
 * The contract is Hugging Face tokenizers' BertNormalizer + BertPreTokenizer + WordPiece (what a BERT folder's
 * tokenizer.json names), which is also what sentence-transformers feeds the model:
 *   normalize     drop NUL, U+FFFD and control characters, whitespace -> space, a space on both sides of each CJK
 *                 ideograph, strip accents (NFD without nonspacing marks) if asked, lowercase if asked;
 *   pre-tokenize  split on whitespace, each punctuation character a word of its own;
 *   WordPiece     per word, greedy longest match first from the left, continuation pieces marked "##"; a word
 *                 longer than 100 characters, or one the vocabulary cannot cover, is one [UNK].
 * The vocabulary is looked up in llama.cpp's GGUF form: a word-initial piece t as "\u2581" + t, a continuation
 * "##t" as t. Codepoint data comes from wordpiece_tables.c (gen_wordpiece_tables.py), including the places where
 * the tokenizers crate's Unicode data differs from the current standard.
 *
 * Not done: canonical reordering of combining marks after NFD (the marks are dropped; it could only reorder
 * marks that the vocabulary does not hold, whose words are [UNK] either way).
 */
#ifndef QRT_WORDPIECE_H
#define QRT_WORDPIECE_H
#include <stddef.h>
#include <stdint.h>

/* Per-codepoint class bits (wordpiece_tables.c). */
enum {
    WPM_DROP = 0x01,      /* removed by clean_text: NUL, U+FFFD, Cc/Cf/Co/Cs other than \t \n \r */
    WPM_SPACE = 0x02,     /* White_Space and \t \n \r: a word boundary */
    WPM_PUNCT = 0x04,     /* ASCII punctuation or P*: a word of its own */
    WPM_CJK = 0x08,       /* BERT's CJK ideograph ranges: a word of its own */
    WPM_MARK = 0x10,      /* Mn: dropped when stripping accents */
    WPM_HAS_LOWER = 0x20, /* lowercase mapping differs from the codepoint */
    WPM_HAS_STRIP = 0x40, /* NFD without marks differs from the codepoint (Hangul syllables: by algorithm) */
};

#define WPM_MAX_EXPANSION 3   /* codepoints one input codepoint can become (checked by the generated table) */
#define WPM_MAX_WORD_CHARS 100 /* tokenizers' max_input_chars_per_word: longer words are [UNK] */

/* start + k*stride -> out + k*step for k < count */
typedef struct {
    uint32_t start;
    uint16_t count;
    uint8_t stride;
    int8_t step;
    uint32_t out;
} wpm_map_run;

typedef struct {
    uint32_t cpt;
    uint32_t out[3];
    uint8_t len;
} wpm_map_multi;

extern const uint32_t qrt_wpm_n_ranges;
extern const uint32_t qrt_wpm_range_start[];
extern const uint8_t qrt_wpm_range_class[];
extern const uint32_t qrt_wpm_lower_n_runs, qrt_wpm_lower_n_multi, qrt_wpm_strip_n_runs, qrt_wpm_strip_n_multi;
extern const wpm_map_run qrt_wpm_lower_runs[], qrt_wpm_strip_runs[];
extern const wpm_map_multi qrt_wpm_lower_multi[], qrt_wpm_strip_multi[];

/* Class bits of one codepoint (WPM_DROP past U+10FFFF). */
uint8_t wpm_class(uint32_t cpt);

typedef struct {
    int lowercase, strip_accents;
    int32_t unk; /* id of [UNK] (-1: such words give nothing) */
    /* the vocabulary: id of a token text (GGUF form), or -1 */
    int32_t (*lookup)(const void *vocab, const char *text, size_t len);
    const void *vocab;
} wpm_config;

/* Tokenize text[0..len) (raw text between special tokens); each id goes to emit, which returns 0 to stop (out of
 * memory). Returns 1, or 0 if emit stopped. Malformed UTF-8 bytes become U+FFFD (then dropped). */
int wpm_tokenize(const wpm_config *cfg, const char *text, size_t len, int (*emit)(void *ctx, int32_t id), void *ctx);

/* The normalized words WordPiece would see, as UTF-8 joined by single spaces (a word over WPM_MAX_WORD_CHARS
 * characters is cut there), written into out[0..capacity); returns the full length, which may exceed capacity
 * (then the output is cut), or -1 if it would exceed INT32_MAX. */
int64_t wpm_words(const wpm_config *cfg, const char *text, size_t len, char *out, int64_t capacity);

#endif
