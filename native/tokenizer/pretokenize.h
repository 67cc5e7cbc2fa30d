/* pretokenize.h — the pre-tokenizer regexes of byte-level BPE vocabularies, as hand-written matchers.
 *
 * llama.cpp splits text with a list of regexes per `tokenizer.ggml.pre` (llama-vocab.cpp), each applied in
 * turn inside the pieces the previous one produced; the common ones run through hand-written matchers in its
 * unicode.cpp and the rest through std::regex on a category-collapsed copy of the text. We implement each regex
 * we support as a matcher over codepoints with llama.cpp's exact semantics (including its quirks), so our
 * pieces equal llama.cpp's. No regex engine.
 */
#ifndef QRT_PRETOKENIZE_H
#define QRT_PRETOKENIZE_H
#include <stddef.h>
#include <stdint.h>

/* One regex of a pre-tokenizer. */
typedef enum {
    PRETOK_END = 0,         /* terminates a stage list */
    PRETOK_GPT2,            /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
    PRETOK_LLAMA3,          /* (?i:'s|..|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    PRETOK_QWEN2,           /* as LLAMA3 with \p{N} instead of \p{N}{1,3} */
    PRETOK_DIGIT_ISOLATED,  /* \p{N} (each number codepoint its own piece) */
    PRETOK_NUMBER_RUNS,     /* \p{N}+ */
    PRETOK_PUNCT_RUNS,      /* [\p{P}\$\+<=>\^~\|]+ */
    PRETOK_ASCII_DIGIT_3,   /* [0-9][0-9][0-9] */
} pretok_regex;

/* Decode UTF-8 as llama.cpp does (unicode_cpts_from_utf8): a malformed sequence yields U+FFFD and skips one
 * byte; lead bytes are trusted for the sequence length (no overlong/surrogate checks). `cpts` must hold `len`
 * entries; returns the number of codepoints. */
size_t utf8_decode_lenient(const char *text, size_t len, uint32_t *cpts);

/* Encode one codepoint as UTF-8 into out (4 bytes room); returns its length (0 for values past U+10FFFF). */
int utf8_encode(uint32_t cpt, char *out);

/* Split cpts[0..n) with the regexes of `stages` (PRETOK_END-terminated), each applied inside the pieces of the
 * previous one. `flags` holds unicode_cpt_flags() of each codepoint. Piece lengths (in codepoints) are written
 * to `lengths`; `lengths` and `scratch` each have room for n entries. Returns the number of pieces. */
size_t pretokenize(const pretok_regex *stages, const uint32_t *cpts, const uint16_t *flags, size_t n,
                   uint32_t *lengths, uint32_t *scratch);

#endif
