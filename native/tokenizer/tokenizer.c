/* tokenizer.c — byte-level BPE ("gpt2"), SentencePiece-style BPE ("llama") and BERT WordPiece ("bert") tokenizers
 * from GGUF metadata.
 *
 * The contract is llama.cpp's tokenizer (src/llama-vocab.cpp): same ids for the same text and flags. So the
 * pieces below mirror its steps, in its order:
 *   1. special-token partition: each special token (control/user-defined/unknown; control and unknown only with
 *      parse_special), longest first, is cut out of the remaining raw text fragments, leftmost first;
 *   2. gpt2: pre-tokenize each raw fragment (pretokenize.c), byte-level encode each piece, merge by rank;
 *      llama: escape spaces to U+2581 (with a space prefix after BOS/special tokens), merge by score, unknown
 *      pieces fall back to <0xXX> byte tokens;
 *      bert: BERT normalizer, pre-tokenizer and WordPiece (wordpiece.c), whose contract is Hugging Face
 *      tokenizers' (what sentence-transformers runs) rather than llama.cpp's;
 *   3. BOS/EOS as the vocabulary asks ([CLS]/[SEP] for bert).
 * Lookups are hash maps (token text -> id, merge pair -> rank) and merging uses a binary heap, so work is
 * O(n log n) in the text length.
 */
#include "tokenizer.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pretokenize.h"
#include "size_math.h"
#include "unicode_tables.h"
#include "wordpiece.h"

typedef enum { VOCAB_BPE, VOCAB_SPM, VOCAB_WPM } vocab_kind;

/* ---- hashing ------------------------------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 32;
    return x;
}

static uint64_t hash_bytes(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = (const unsigned char *)data;
    uint64_t h = seed ^ (n * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ mix64(v)) * 0x9E3779B97F4A7C15ull;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ mix64(v ^ (0xA5ull << 56))) * 0x9E3779B97F4A7C15ull;
    return mix64(h);
}

static uint32_t table_size_for(uint64_t n) {
    uint32_t size = 16;
    while (size < n * 2) size <<= 1;
    return size;
}

/* ---- the tokenizer -------------------------------------------------------------------------------------- */

typedef struct {
    uint32_t left_off, left_len, right_off, right_len; /* in merge_arena */
} bpe_merge;

typedef struct {
    int32_t first_child, next_sibling, special; /* special: index in tok->specials, or -1 */
    unsigned char byte;
} trie_node;

struct qrt_tokenizer {
    vocab_kind kind;
    char model_name[32];
    char pre_name[64];
    const pretok_regex *pre_stages;
    int ignore_merges, clean_spaces, add_space_prefix, add_bos, add_eos;
    int lowercase, strip_accents; /* bert normalizer */

    int32_t n_vocab;
    char *text_arena;
    uint64_t *text_off;
    uint32_t *text_len;
    float *scores;
    uint16_t *attr;
    uint8_t *is_eog;
    uint32_t *id_slots; /* open addressing: id + 1, 0 = empty */
    uint32_t id_mask;

    char *merge_arena;
    bpe_merge *merges;
    uint32_t n_merges;
    uint32_t *merge_slots; /* merge index + 1 (the rank is the index) */
    uint32_t merge_mask;

    int32_t bos, eos, eot, eom, unk, pad;
    int32_t byte_token[256]; /* SPM byte fallback */
    uint32_t byte_to_cpt[256]; /* byte-level BPE alphabet (GPT-2's bytes_to_unicode) */
    int16_t cpt_to_byte[324];

    int32_t *specials; /* matched whole before BPE; longest text first */
    uint32_t n_specials;
    trie_node *trie;
    uint32_t n_trie;
    int32_t trie_root[256];

    char *piece_arena; /* token_to_piece with special = 1, precomputed */
    uint64_t *piece_off;
    uint32_t *piece_len;
    uint32_t max_piece_len;
};

static inline const char *tok_text(const qrt_tokenizer *t, int32_t id) {
    return t->text_arena + t->text_off[id];
}

static int32_t text_to_id(const qrt_tokenizer *t, const char *s, size_t n) {
    uint32_t i = (uint32_t)hash_bytes(s, n, 0) & t->id_mask;
    for (;; i = (i + 1) & t->id_mask) {
        uint32_t slot = t->id_slots[i];
        if (!slot) return -1;
        int32_t id = (int32_t)slot - 1;
        if (t->text_len[id] == n && memcmp(tok_text(t, id), s, n) == 0) return id;
    }
}

/* Later duplicates win, as llama.cpp's token_to_id[word] = i. */
static void id_map_insert(qrt_tokenizer *t, int32_t id) {
    const char *s = tok_text(t, id);
    size_t n = t->text_len[id];
    uint32_t i = (uint32_t)hash_bytes(s, n, 0) & t->id_mask;
    for (;; i = (i + 1) & t->id_mask) {
        uint32_t slot = t->id_slots[i];
        if (!slot) break;
        int32_t other = (int32_t)slot - 1;
        if (t->text_len[other] == n && memcmp(tok_text(t, other), s, n) == 0) break;
    }
    t->id_slots[i] = (uint32_t)id + 1;
}

static inline uint64_t merge_hash(const char *l, size_t ln, const char *r, size_t rn) {
    return hash_bytes(r, rn, hash_bytes(l, ln, 0x51ED27A1ull));
}

/* Rank of merging (l, r), or -1. */
static int32_t merge_rank(const qrt_tokenizer *t, const char *l, size_t ln, const char *r, size_t rn) {
    if (!t->merge_slots) return -1;
    uint32_t i = (uint32_t)merge_hash(l, ln, r, rn) & t->merge_mask;
    for (;; i = (i + 1) & t->merge_mask) {
        uint32_t slot = t->merge_slots[i];
        if (!slot) return -1;
        const bpe_merge *m = &t->merges[slot - 1];
        if (m->left_len == ln && m->right_len == rn && memcmp(t->merge_arena + m->left_off, l, ln) == 0 &&
            memcmp(t->merge_arena + m->right_off, r, rn) == 0)
            return (int32_t)(slot - 1);
    }
}

/* ---- byte-level BPE alphabet (GPT-2's bytes_to_unicode) -------------------------------------------------- */

/* Printable bytes stand for themselves; the other 68 map, in byte order, to U+0100 and up (so below 324). */
static void init_byte_alphabet(qrt_tokenizer *t) {
    uint32_t next = 256;
    for (int i = 0; i < 324; i++) t->cpt_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_to_cpt[b] = printable ? (uint32_t)b : next++;
        t->cpt_to_byte[t->byte_to_cpt[b]] = (int16_t)b;
    }
}

/* ---- pre-tokenizer table: tokenizer.ggml.pre -> regexes and vocabulary flags (llama-vocab.cpp) ----------- */

static const pretok_regex PRE_DEFAULT[] = {PRETOK_PUNCT_RUNS, PRETOK_GPT2, PRETOK_NUMBER_RUNS, PRETOK_ASCII_DIGIT_3,
                                           PRETOK_END};
static const pretok_regex PRE_GPT2[] = {PRETOK_GPT2, PRETOK_END};
static const pretok_regex PRE_SMOLLM[] = {PRETOK_DIGIT_ISOLATED, PRETOK_GPT2, PRETOK_END};
static const pretok_regex PRE_LLAMA3[] = {PRETOK_LLAMA3, PRETOK_END};
static const pretok_regex PRE_QWEN2[] = {PRETOK_QWEN2, PRETOK_END};

typedef struct {
    const char *name;
    const pretok_regex *stages;
    int ignore_merges, clean_spaces, add_bos;
} pre_type;

static const pre_type PRE_TYPES[] = {
    {"default", PRE_DEFAULT, 0, 1, 0},
    {"gpt-2", PRE_GPT2, 0, 1, 0},
    {"gpt2", PRE_GPT2, 0, 1, 0}, /* spelling some converters write */
    {"phi-2", PRE_GPT2, 0, 1, 0},
    {"mpt", PRE_GPT2, 0, 1, 0},
    {"olmo", PRE_GPT2, 0, 1, 0},
    {"jais", PRE_GPT2, 0, 1, 0},
    {"exaone4", PRE_GPT2, 0, 1, 0},
    {"smollm", PRE_SMOLLM, 0, 0, 0},
    {"starcoder", PRE_SMOLLM, 0, 1, 0},
    {"refact", PRE_SMOLLM, 0, 1, 0},
    {"command-r", PRE_SMOLLM, 0, 0, 0},
    {"codeshell", PRE_SMOLLM, 0, 1, 0},
    {"exaone", PRE_SMOLLM, 0, 1, 0},
    {"minerva-7b", PRE_SMOLLM, 0, 1, 0},
    {"llama3", PRE_LLAMA3, 1, 1, 1},
    {"llama-v3", PRE_LLAMA3, 1, 1, 1},
    {"llama-bpe", PRE_LLAMA3, 1, 1, 1},
    {"falcon3", PRE_LLAMA3, 1, 1, 1},
    {"pixtral", PRE_LLAMA3, 1, 1, 1},
    {"dbrx", PRE_LLAMA3, 0, 1, 0},
    {"smaug-bpe", PRE_LLAMA3, 0, 1, 0},
    {"qwen2", PRE_QWEN2, 0, 0, 0},
    {"deepseek-r1-qwen", PRE_QWEN2, 0, 0, 0},
    {"megrez", PRE_QWEN2, 0, 1, 0},
    {"stablelm2", PRE_QWEN2, 0, 1, 0},
};

static const pre_type *find_pre_type(const char *name) {
    for (size_t i = 0; i < sizeof PRE_TYPES / sizeof PRE_TYPES[0]; i++)
        if (strcmp(PRE_TYPES[i].name, name) == 0) return &PRE_TYPES[i];
    return NULL;
}

/* ---- end-of-generation and other special tokens recognized by text (llama-vocab.cpp) --------------------- */

static const char *const EOG_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "[e~[",
};
static const char *const EOT_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
    "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "<end_of_utterance>",
};
static const char *const FIM_PAD_TEXTS[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"};
static const char *const FIM_REP_TEXTS[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"};
static const char *const FIM_SEP_TEXTS[] = {"<|file_sep|>"};
static const char *const FIM_PRE_TEXTS[] = {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>",
                                            "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>"};
static const char *const FIM_SUF_TEXTS[] = {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>",
                                            "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>"};
static const char *const FIM_MID_TEXTS[] = {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>",
                                            "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>"};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static int32_t find_any(const qrt_tokenizer *t, const char *const *texts, size_t n) {
    int32_t best = -1;
    for (size_t i = 0; i < n; i++) {
        int32_t id = text_to_id(t, texts[i], strlen(texts[i]));
        if (id >= 0 && (best < 0 || id < best)) best = id;
    }
    return best;
}

static void mark_control(qrt_tokenizer *t, int32_t id) {
    if (id >= 0) t->attr[id] |= TOK_ATTR_CONTROL;
}

static int text_is(const qrt_tokenizer *t, int32_t id, const char *s) {
    return t->text_len[id] == strlen(s) && memcmp(tok_text(t, id), s, t->text_len[id]) == 0;
}

/* ---- loading -------------------------------------------------------------------------------------------- */

void qrt_tokenizer_free(qrt_tokenizer *t) {
    if (!t) return;
    free(t->text_arena);
    free(t->text_off);
    free(t->text_len);
    free(t->scores);
    free(t->attr);
    free(t->is_eog);
    free(t->id_slots);
    free(t->merge_arena);
    free(t->merges);
    free(t->merge_slots);
    free(t->specials);
    free(t->trie);
    free(t->piece_arena);
    free(t->piece_off);
    free(t->piece_len);
    free(t);
}

static void copy_gguf_str(char *dst, size_t cap, gguf_str s) {
    size_t n = s.len < cap - 1 ? (size_t)s.len : cap - 1;
    memcpy(dst, s.ptr, n);
    dst[n] = 0;
}

static int32_t read_token_id(const gguf_file *f, const char *key, int32_t fallback, int32_t n_vocab) {
    uint32_t v;
    if (fallback >= n_vocab) fallback = -1;
    if (gguf_get_u32(f, key, &v) != GGUF_OK) return fallback;
    return v < (uint32_t)n_vocab ? (int32_t)v : fallback;
}

static int read_flag(const gguf_file *f, const char *key, int fallback) {
    int v;
    return gguf_get_bool(f, key, &v) == GGUF_OK ? (v != 0) : fallback;
}

static int build_specials(qrt_tokenizer *t);
static int build_pieces(qrt_tokenizer *t);

/* Each loading step returns 1, or 0 with a message in err. */
#define FAIL(...)                                                                                              \
    do {                                                                                                       \
        snprintf(err, errlen, __VA_ARGS__);                                                                    \
        return 0;                                                                                              \
    } while (0)

/* tokenizer.ggml.model / .pre -> the tokenizer kind, pre-tokenizer and llama.cpp's per-kind defaults. */
static int read_kind(qrt_tokenizer *t, const gguf_file *f, const char *name, char *err, size_t errlen) {
    gguf_str model, pre = {"", 0};
    if (gguf_get_str(f, "tokenizer.ggml.model", &model) != GGUF_OK)
        FAIL("%s: no tokenizer.ggml.model string in the metadata", name);
    gguf_get_str(f, "tokenizer.ggml.pre", &pre);
    copy_gguf_str(t->model_name, sizeof t->model_name, model);
    copy_gguf_str(t->pre_name, sizeof t->pre_name, pre);
    t->pad = t->eot = t->eom = -1;
    if (gguf_str_eq(model, "gpt2")) {
        t->kind = VOCAB_BPE;
        const char *pre_name = t->pre_name[0] ? t->pre_name : "default"; /* llama.cpp: missing pre -> default */
        const pre_type *p = find_pre_type(pre_name);
        if (!p || pre.len >= sizeof t->pre_name)
            FAIL("%s: unsupported tokenizer.ggml.pre '%.*s' for a gpt2 (byte-level BPE) vocabulary (supported: "
                 "default, gpt-2, smollm, llama-bpe/llama3, qwen2 and their aliases)",
                 name, (int)pre.len, pre.ptr);
        t->pre_stages = p->stages;
        t->ignore_merges = p->ignore_merges;
        t->clean_spaces = p->clean_spaces;
        t->add_bos = p->add_bos;
        t->add_space_prefix = 0;
        t->bos = t->eos = 11;
        t->unk = -1;
    } else if (gguf_str_eq(model, "llama")) {
        t->kind = VOCAB_SPM;
        t->add_space_prefix = 1;
        t->add_bos = 1;
        t->bos = 1;
        t->eos = 2;
        t->unk = 0;
    } else if (gguf_str_eq(model, "bert")) {
        /* llama.cpp's defaults; its separator token ends the text as our EOS ([SEP]) does */
        t->kind = VOCAB_WPM;
        t->add_bos = t->add_eos = 1;
        t->clean_spaces = 1;
        t->bos = 101;
        t->eos = -1;
        t->unk = 100;
        /* absent lowercase: BERT uncased, as llama.cpp assumes; absent strip_accents: as lowercase (the
         * tokenizers rule for strip_accents null) */
        t->lowercase = read_flag(f, "tokenizer.ggml.normalizer.lowercase", 1);
        t->strip_accents = read_flag(f, "tokenizer.ggml.normalizer.strip_accents", t->lowercase);
    } else {
        FAIL("%s: unsupported tokenizer.ggml.model '%.*s' (supported: gpt2, llama, bert)", name, (int)model.len,
             model.ptr);
    }
    t->add_space_prefix = read_flag(f, "tokenizer.ggml.add_space_prefix", t->add_space_prefix);
    return 1;
}

/* GGUF token types -> llama.cpp attributes */
static uint16_t attr_of_token_type(int64_t type) {
    switch (type) {
    case 1: return TOK_ATTR_NORMAL;
    case 2: return TOK_ATTR_UNKNOWN;
    case 3: return TOK_ATTR_CONTROL;
    case 4: return TOK_ATTR_USER_DEFINED;
    case 5: return TOK_ATTR_UNUSED;
    case 6: return TOK_ATTR_BYTE;
    default: return 0;
    }
}

/* tokenizer.ggml.tokens / .scores / .token_type, and the text -> id map. */
static int read_tokens(qrt_tokenizer *t, const gguf_file *f, const char *name, char *err, size_t errlen) {
    int64_t k_tokens = gguf_find_key(f, "tokenizer.ggml.tokens");
    if (k_tokens < 0 || f->kvs[k_tokens].type != GGUF_VT_ARRAY || f->kvs[k_tokens].arr_type != GGUF_VT_STRING)
        FAIL("%s: tokenizer.ggml.tokens is missing or not an array of strings", name);
    uint64_t n_vocab = f->kvs[k_tokens].arr_len;
    if (n_vocab == 0 || n_vocab > (1u << 30))
        FAIL("%s: tokenizer.ggml.tokens has %llu entries", name, (unsigned long long)n_vocab);
    t->n_vocab = (int32_t)n_vocab;
    int64_t k_scores = gguf_find_key(f, "tokenizer.ggml.scores");
    if (k_scores >= 0 && (f->kvs[k_scores].type != GGUF_VT_ARRAY || f->kvs[k_scores].arr_len < n_vocab ||
                          (f->kvs[k_scores].arr_type != GGUF_VT_FLOAT32 && f->kvs[k_scores].arr_type != GGUF_VT_INT32)))
        FAIL("%s: tokenizer.ggml.scores must be a float32/int32 array of at least %llu entries", name,
             (unsigned long long)n_vocab);
    int64_t k_types = gguf_find_key(f, "tokenizer.ggml.token_type");
    if (k_types >= 0 && (f->kvs[k_types].type != GGUF_VT_ARRAY || f->kvs[k_types].arr_len < n_vocab ||
                         f->kvs[k_types].arr_type != GGUF_VT_INT32))
        FAIL("%s: tokenizer.ggml.token_type must be an int32 array of at least %llu entries", name,
             (unsigned long long)n_vocab);

    uint64_t arena_bytes = 0;
    for (uint64_t i = 0; i < n_vocab; i++) {
        uint64_t len = f->kvs[k_tokens].arr_strs[i].len;
        if (len > UINT32_MAX) FAIL("%s: token %llu is %llu bytes long", name, (unsigned long long)i,
                                   (unsigned long long)len);
        arena_bytes += len ? len : 32; /* room for "[EMPTY_i]" */
    }
    t->text_arena = qrt_malloc(qrt_size_add(qrt_size_from_u64(arena_bytes), 1));
    t->text_off = qrt_malloc(qrt_array_bytes(n_vocab, sizeof *t->text_off));
    t->text_len = qrt_malloc(qrt_array_bytes(n_vocab, sizeof *t->text_len));
    t->scores = qrt_malloc(qrt_array_bytes(n_vocab, sizeof *t->scores));
    t->attr = qrt_malloc(qrt_array_bytes(n_vocab, sizeof *t->attr));
    t->is_eog = calloc(qrt_size_from_u64(n_vocab), 1);
    uint32_t id_slots = table_size_for(n_vocab);
    t->id_slots = calloc(id_slots, sizeof *t->id_slots);
    t->id_mask = id_slots - 1;
    if (!t->text_arena || !t->text_off || !t->text_len || !t->scores || !t->attr || !t->is_eog || !t->id_slots)
        FAIL("%s: out of memory for a %llu-token vocabulary", name, (unsigned long long)n_vocab);
    uint64_t off = 0;
    for (uint64_t i = 0; i < n_vocab; i++) {
        gguf_str s = f->kvs[k_tokens].arr_strs[i];
        t->text_off[i] = off;
        if (s.len == 0) { /* llama.cpp renames empty tokens so they stay distinct */
            t->text_len[i] = (uint32_t)snprintf(t->text_arena + off, 32, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(t->text_arena + off, s.ptr, s.len);
            t->text_len[i] = (uint32_t)s.len;
        }
        off += t->text_len[i];
        t->scores[i] = k_scores >= 0 ? (float)gguf_arr_float(f, k_scores, i) : 0.0f;
        t->attr[i] = k_types >= 0 ? attr_of_token_type(gguf_arr_int(f, k_types, i)) : TOK_ATTR_NORMAL;
        id_map_insert(t, (int32_t)i);
    }
    return 1;
}

/* tokenizer.ggml.merges ("left right" strings, rank = index) into the pair -> rank map. */
static int read_merges(qrt_tokenizer *t, const gguf_file *f, const char *name, char *err, size_t errlen) {
    int64_t k_merges = gguf_find_key(f, "tokenizer.ggml.merges");
    if (k_merges < 0 || f->kvs[k_merges].type != GGUF_VT_ARRAY || f->kvs[k_merges].arr_type != GGUF_VT_STRING)
        FAIL("%s: tokenizer.ggml.merges is missing or not an array of strings (needed by a gpt2 vocabulary)", name);
    uint64_t n_merges = f->kvs[k_merges].arr_len;
    if (n_merges > (1u << 30)) FAIL("%s: %llu merges", name, (unsigned long long)n_merges);
    uint64_t merge_bytes = 0;
    for (uint64_t i = 0; i < n_merges; i++) merge_bytes += f->kvs[k_merges].arr_strs[i].len;
    if (merge_bytes > UINT32_MAX) FAIL("%s: %llu bytes of merges", name, (unsigned long long)merge_bytes);
    t->merge_arena = qrt_malloc(qrt_size_add(qrt_size_from_u64(merge_bytes), 1));
    t->merges = qrt_malloc(qrt_array_bytes(n_merges + 1, sizeof *t->merges));
    uint32_t merge_slots = table_size_for(n_merges);
    t->merge_slots = calloc(merge_slots, sizeof *t->merge_slots);
    t->merge_mask = merge_slots - 1;
    if (!t->merge_arena || !t->merges || !t->merge_slots)
        FAIL("%s: out of memory for %llu merges", name, (unsigned long long)n_merges);
    uint64_t off = 0;
    for (uint64_t i = 0; i < n_merges; i++) {
        gguf_str s = f->kvs[k_merges].arr_strs[i];
        /* split at the first space after the first byte (llama.cpp: word.find(' ', 1)) */
        const char *space = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        bpe_merge m = {0, 0, 0, 0};
        t->merges[i] = m;
        if (!space) continue;
        size_t left_len = (size_t)(space - s.ptr);
        memcpy(t->merge_arena + off, s.ptr, s.len);
        m.left_off = (uint32_t)off;
        m.left_len = (uint32_t)left_len;
        m.right_off = (uint32_t)(off + left_len + 1);
        m.right_len = (uint32_t)(s.len - left_len - 1);
        off += s.len;
        t->merges[i] = m;
        /* the first occurrence of a pair keeps its rank (llama.cpp: bpe_ranks.emplace) */
        const char *l = t->merge_arena + m.left_off, *r = t->merge_arena + m.right_off;
        if (merge_rank(t, l, m.left_len, r, m.right_len) >= 0) continue;
        uint32_t j = (uint32_t)merge_hash(l, m.left_len, r, m.right_len) & t->merge_mask;
        while (t->merge_slots[j]) j = (j + 1) & t->merge_mask;
        t->merge_slots[j] = (uint32_t)i + 1;
    }
    t->n_merges = (uint32_t)n_merges;
    return 1;
}

#undef FAIL

/* Special ids from the metadata, then llama.cpp's detection by text: end-of-turn and fill-in-the-middle tokens
 * (forced to control), the end-of-generation set, and its exceptions. */
static void find_special_tokens(qrt_tokenizer *t, const gguf_file *f) {
    int32_t nv = t->n_vocab;
    t->bos = read_token_id(f, "tokenizer.ggml.bos_token_id", t->bos, nv);
    t->eos = read_token_id(f, "tokenizer.ggml.eos_token_id", t->eos, nv);
    t->eot = read_token_id(f, "tokenizer.ggml.eot_token_id", -1, nv);
    t->eom = read_token_id(f, "tokenizer.ggml.eom_token_id", -1, nv);
    t->unk = read_token_id(f, "tokenizer.ggml.unknown_token_id", t->unk, nv);
    t->pad = read_token_id(f, "tokenizer.ggml.padding_token_id", -1, nv);
    int32_t fim_pad = read_token_id(f, "tokenizer.ggml.fim_pad_token_id", -1, nv);
    int32_t fim_rep = read_token_id(f, "tokenizer.ggml.fim_rep_token_id", -1, nv);
    int32_t fim_sep = read_token_id(f, "tokenizer.ggml.fim_sep_token_id", -1, nv);
    int32_t fim_pre = read_token_id(f, "tokenizer.ggml.fim_pre_token_id", -1, nv);
    int32_t fim_suf = read_token_id(f, "tokenizer.ggml.fim_suf_token_id", -1, nv);
    int32_t fim_mid = read_token_id(f, "tokenizer.ggml.fim_mid_token_id", -1, nv);
    t->add_bos = read_flag(f, "tokenizer.ggml.add_bos_token", t->add_bos);
    t->add_eos = read_flag(f, "tokenizer.ggml.add_eos_token", t->add_eos);

    if (t->eot < 0 && (t->eot = find_any(t, EOT_TEXTS, COUNT_OF(EOT_TEXTS))) >= 0) mark_control(t, t->eot);
    if (t->eom < 0) {
        static const char *const eom[] = {"<|eom_id|>"};
        if ((t->eom = find_any(t, eom, 1)) >= 0) mark_control(t, t->eom);
    }
    if (fim_pre < 0) mark_control(t, find_any(t, FIM_PRE_TEXTS, COUNT_OF(FIM_PRE_TEXTS)));
    if (fim_suf < 0) mark_control(t, find_any(t, FIM_SUF_TEXTS, COUNT_OF(FIM_SUF_TEXTS)));
    if (fim_mid < 0) mark_control(t, find_any(t, FIM_MID_TEXTS, COUNT_OF(FIM_MID_TEXTS)));
    if (fim_pad < 0 && (fim_pad = find_any(t, FIM_PAD_TEXTS, COUNT_OF(FIM_PAD_TEXTS))) >= 0) mark_control(t, fim_pad);
    if (fim_rep < 0 && (fim_rep = find_any(t, FIM_REP_TEXTS, COUNT_OF(FIM_REP_TEXTS))) >= 0) mark_control(t, fim_rep);
    if (fim_sep < 0 && (fim_sep = find_any(t, FIM_SEP_TEXTS, COUNT_OF(FIM_SEP_TEXTS))) >= 0) mark_control(t, fim_sep);
    if (fim_pad >= 0) t->is_eog[fim_pad] = 1;
    if (fim_rep >= 0) t->is_eog[fim_rep] = 1;
    if (fim_sep >= 0) t->is_eog[fim_sep] = 1;
    for (size_t i = 0; i < COUNT_OF(EOG_TEXTS); i++) {
        int32_t id = text_to_id(t, EOG_TEXTS[i], strlen(EOG_TEXTS[i]));
        if (id >= 0) {
            t->is_eog[id] = 1;
            mark_control(t, id);
        }
    }
    static const char *const always_rendered[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"};
    for (size_t i = 0; i < COUNT_OF(always_rendered); i++) {
        int32_t id = text_to_id(t, always_rendered[i], strlen(always_rendered[i]));
        if (id >= 0) t->attr[id] = TOK_ATTR_USER_DEFINED;
    }
    if (t->kind == VOCAB_WPM && t->eos < 0) t->eos = read_token_id(f, "tokenizer.ggml.seperator_token_id", 102, nv);
    if (t->eos >= 0) t->is_eog[t->eos] = 1;
    if (t->eot >= 0) t->is_eog[t->eot] = 1;
    if (t->eom >= 0) t->is_eog[t->eom] = 1;

    /* o200k_harmony / solar-open: "<|end|>" is not end-of-generation when return/call tokens exist */
    int has_return = 0, has_call = 0, has_flush = 0;
    int32_t end_id = -1;
    for (int32_t id = 0; id < nv; id++) {
        if (!t->is_eog[id]) continue;
        if (text_is(t, id, "<|return|>")) has_return = 1;
        else if (text_is(t, id, "<|call|>") || text_is(t, id, "<|calls|>")) has_call = 1;
        else if (text_is(t, id, "<|flush|>")) has_flush = 1;
        else if (text_is(t, id, "<|end|>")) end_id = id;
    }
    if (end_id >= 0 && ((has_return && has_call) || (has_call && has_flush))) {
        t->is_eog[end_id] = 0;
        t->attr[end_id] = TOK_ATTR_USER_DEFINED;
    }
    /* gemma4 / plamo: "</s>" is a normal token */
    int has_normal_s_marker = 0;
    int32_t s_id = -1;
    for (int32_t id = 0; id < nv; id++) {
        if (!t->is_eog[id]) continue;
        if (text_is(t, id, "<|tool_response>") || text_is(t, id, "<|plamo:eos|>")) has_normal_s_marker = 1;
        else if (text_is(t, id, "</s>")) s_id = id;
    }
    if (has_normal_s_marker && s_id >= 0) {
        t->is_eog[s_id] = 0;
        t->attr[s_id] = TOK_ATTR_NORMAL;
    }
}

/* SentencePiece byte fallback: <0xXX>, else the byte itself as a token (llama.cpp's byte_to_token). */
static void find_byte_tokens(qrt_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        int32_t id = text_to_id(t, hex, 6);
        if (id < 0) {
            char c = (char)b;
            id = text_to_id(t, &c, 1);
        }
        t->byte_token[b] = id;
    }
}

qrt_tokenizer *qrt_tokenizer_from_gguf(const gguf_file *f, const char *name, char *err, size_t errlen) {
    qrt_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "%s: out of memory for the tokenizer", name);
        return NULL;
    }
    init_byte_alphabet(t);
    if (!read_kind(t, f, name, err, errlen) || !read_tokens(t, f, name, err, errlen) ||
        (t->kind == VOCAB_BPE && !read_merges(t, f, name, err, errlen))) {
        qrt_tokenizer_free(t);
        return NULL;
    }
    find_special_tokens(t, f);
    find_byte_tokens(t);
    if (!build_specials(t) || !build_pieces(t)) {
        snprintf(err, errlen, "%s: out of memory building the tokenizer tables", name);
        qrt_tokenizer_free(t);
        return NULL;
    }
    return t;
}

qrt_tokenizer *qrt_tokenizer_load(const char *gguf_path, char *err, size_t errlen) {
    gguf_file *f = gguf_open(gguf_path, err, errlen);
    if (!f) return NULL;
    qrt_tokenizer *t = qrt_tokenizer_from_gguf(f, gguf_path, err, errlen);
    gguf_close(f);
    return t;
}

/* Special tokens in llama.cpp's matching order: longer text first (ties by id, which llama.cpp leaves to an
 * unstable sort), and a byte trie over them to find which occur in a text in one pass. */
static int compare_specials_by_priority(const void *a, const void *b, void *ctx) {
    const qrt_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->text_len[x] != t->text_len[y]) return t->text_len[x] > t->text_len[y] ? -1 : 1;
    return (x > y) - (x < y);
}

static int build_specials(qrt_tokenizer *t) {
    uint32_t n = 0;
    uint64_t trie_bytes = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) {
            n++;
            trie_bytes += t->text_len[id];
        }
    t->specials = qrt_malloc(qrt_array_bytes((uint64_t)n + 1, sizeof *t->specials));
    t->trie = qrt_malloc(qrt_array_bytes(trie_bytes + 1, sizeof *t->trie));
    if (!t->specials || !t->trie) return 0;
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) t->specials[n++] = id;
    qsort_r(t->specials, n, sizeof *t->specials, compare_specials_by_priority, t);
    t->n_specials = n;

    for (int b = 0; b < 256; b++) t->trie_root[b] = -1;
    t->n_trie = 0;
    for (uint32_t k = 0; k < n; k++) {
        const unsigned char *s = (const unsigned char *)tok_text(t, t->specials[k]);
        uint32_t len = t->text_len[t->specials[k]];
        int32_t *link = &t->trie_root[s[0]];
        int32_t node = -1;
        for (uint32_t i = 0; i < len; i++) {
            if (i > 0) {
                link = &t->trie[node].first_child;
                while (*link >= 0 && t->trie[*link].byte != s[i]) link = &t->trie[*link].next_sibling;
            }
            if (*link < 0) {
                trie_node fresh = {-1, -1, -1, s[i]};
                t->trie[t->n_trie] = fresh;
                *link = (int32_t)t->n_trie++;
            }
            node = *link;
        }
        if (t->trie[node].special < 0) t->trie[node].special = (int32_t)k;
    }
    return 1;
}

/* ---- token -> bytes -------------------------------------------------------------------------------------- */

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return 0;
}

/* <0xXX> -> the byte (llama.cpp reads characters 3 and 4 of the text) */
static unsigned char byte_token_value(const qrt_tokenizer *t, int32_t id) {
    const char *s = tok_text(t, id);
    if (t->text_len[id] < 5) return 0;
    return (unsigned char)(hex_digit(s[3]) * 16 + hex_digit(s[4]));
}

/* llama.cpp's marker for an unmappable codepoint repeats the token's text, which is quadratic in its length;
 * past this length (never seen in real vocabularies) the text is left out so a hostile file cannot make the
 * piece table huge. */
#define MARKER_TEXT_MAX 32

/* Room make_piece needs for a token text of len bytes. */
static uint64_t piece_bound(vocab_kind kind, uint64_t len) {
    if (kind != VOCAB_BPE) return len + 8;
    return len * (21 + (len <= MARKER_TEXT_MAX ? len : 0)) + 64;
}

/* The piece of a token as llama.cpp's token_to_piece(special = true). Writes to out (piece_bound bytes) and
 * returns the length. */
static size_t make_piece(const qrt_tokenizer *t, int32_t id, char *out) {
    const char *text = tok_text(t, id);
    size_t len = t->text_len[id];
    uint16_t attr = t->attr[id];
    if (attr & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED)) {
        memcpy(out, text, len);
        return len;
    }
    if (attr & TOK_ATTR_NORMAL) {
        size_t n = 0;
        if (t->kind != VOCAB_BPE) { /* U+2581 -> space (a bert continuation piece is stored without "##") */
            for (size_t i = 0; i < len;) {
                if (i + 3 <= len && memcmp(text + i, "\xe2\x96\x81", 3) == 0) {
                    out[n++] = ' ';
                    i += 3;
                } else {
                    out[n++] = text[i++];
                }
            }
            return n;
        }
        /* byte-level: each codepoint of the text stands for one byte */
        uint32_t cpts_small[64];
        uint32_t *cpts = len <= 64 ? cpts_small : qrt_malloc(qrt_array_bytes(len, sizeof *cpts));
        if (!cpts) return 0;
        size_t n_cpts = utf8_decode_lenient(text, len, cpts);
        for (size_t i = 0; i < n_cpts; i++) {
            uint32_t c = cpts[i];
            if (c < 324 && t->cpt_to_byte[c] >= 0) {
                out[n++] = (char)t->cpt_to_byte[c];
            } else { /* llama.cpp's marker for a codepoint outside the byte alphabet */
                char utf8[4];
                int k = utf8_encode(c, utf8);
                n += (size_t)sprintf(out + n, "[UNK_BYTE_0x");
                for (int j = 0; j < k; j++) n += (size_t)sprintf(out + n, "%02x", (unsigned char)utf8[j]);
                if (len <= MARKER_TEXT_MAX) { /* llama.cpp appends the whole token text to each marker */
                    memcpy(out + n, text, len);
                    n += len;
                }
                out[n++] = ']';
            }
        }
        if (cpts != cpts_small) free(cpts);
        return n;
    }
    if (attr & TOK_ATTR_BYTE) {
        out[0] = (char)byte_token_value(t, id);
        return 1;
    }
    return 0;
}

static int build_pieces(qrt_tokenizer *t) {
    uint64_t total = 0;
    size_t longest = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint64_t bound = piece_bound(t->kind, t->text_len[id]);
        if (bound > longest) longest = (size_t)bound;
    }
    char *buf = malloc(longest);
    t->piece_off = malloc((size_t)t->n_vocab * sizeof *t->piece_off);
    t->piece_len = malloc((size_t)t->n_vocab * sizeof *t->piece_len);
    if (!buf || !t->piece_off || !t->piece_len) {
        free(buf);
        return 0;
    }
    for (int32_t id = 0; id < t->n_vocab; id++) total += make_piece(t, id, buf);
    t->piece_arena = qrt_malloc(qrt_size_add(qrt_size_from_u64(total), 1));
    if (!t->piece_arena) {
        free(buf);
        return 0;
    }
    uint64_t off = 0;
    t->max_piece_len = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n = make_piece(t, id, buf);
        memcpy(t->piece_arena + off, buf, n);
        t->piece_off[id] = off;
        t->piece_len[id] = (uint32_t)n;
        if (n > t->max_piece_len) t->max_piece_len = (uint32_t)n;
        off += n;
    }
    free(buf);
    return 1;
}

/* ---- encoding: growable id list ------------------------------------------------------------------------ */

typedef struct {
    int32_t *ids;
    size_t n, cap;
    int oom;
} id_list;

static void push_id(id_list *l, int32_t id) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? qrt_size_mul(l->cap, 2) : 256;
        int32_t *ids = qrt_realloc(l->ids, qrt_array_bytes(cap, sizeof *ids));
        if (!ids) {
            l->oom = 1;
            return;
        }
        l->ids = ids;
        l->cap = cap;
    }
    l->ids[l->n++] = id;
}

/* ---- merging (shared by BPE and SPM) ------------------------------------------------------------------- */

typedef struct {
    int32_t prev, next;
    uint32_t start, n; /* bytes in the word buffer; n == 0 once merged away */
} symbol;

typedef struct {
    int32_t left, right;
    float priority; /* higher merges first: -rank (BPE) or the score (SPM) */
    uint32_t size;
} bigram;

typedef struct {
    symbol *symbols;
    bigram *heap;
    size_t n_heap, cap_heap;
} merge_work;

static inline int bigram_before(const bigram *a, const bigram *b) {
    /* both tokenizers pop the best pair and, on ties, the leftmost */
    return a->priority > b->priority || (a->priority == b->priority && a->left < b->left);
}

static int heap_push(merge_work *w, bigram b) {
    if (w->n_heap == w->cap_heap) {
        size_t cap = w->cap_heap ? qrt_size_mul(w->cap_heap, 2) : 64;
        bigram *heap = qrt_realloc(w->heap, qrt_array_bytes(cap, sizeof *heap));
        if (!heap) return 0;
        w->heap = heap;
        w->cap_heap = cap;
    }
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_before(&b, &w->heap[parent])) break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = b;
    return 1;
}

static bigram heap_pop(merge_work *w) {
    bigram top = w->heap[0];
    bigram last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_before(&w->heap[c + 1], &w->heap[c])) c++;
        if (!bigram_before(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

/* Length of the UTF-8 sequence a lead byte announces, as llama.cpp's unicode_len_utf8 (trusting the byte). */
static inline size_t utf8_len_from_lead(unsigned char c) {
    static const unsigned char lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

/* Split word[0..len) into one symbol per (lead-byte-delimited) character; returns the count. */
static size_t split_symbols(symbol *symbols, const char *word, size_t len) {
    size_t n = 0;
    for (size_t off = 0; off < len;) {
        size_t clen = utf8_len_from_lead((unsigned char)word[off]);
        if (clen > len - off) clen = len - off;
        symbols[n].start = (uint32_t)off;
        symbols[n].n = (uint32_t)clen;
        symbols[n].prev = (int32_t)n - 1;
        off += clen;
        symbols[n].next = off == len ? -1 : (int32_t)n + 1;
        n++;
    }
    return n;
}

static int bpe_try_bigram(const qrt_tokenizer *t, merge_work *w, const char *word, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return 1;
    const symbol *l = &w->symbols[left], *r = &w->symbols[right];
    int32_t rank = merge_rank(t, word + l->start, l->n, word + r->start, r->n);
    if (rank < 0) return 1;
    bigram b = {left, right, -(float)rank, l->n + r->n};
    return heap_push(w, b);
}

static int spm_try_bigram(const qrt_tokenizer *t, merge_work *w, const char *word, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return 1;
    const symbol *l = &w->symbols[left], *r = &w->symbols[right];
    int32_t id = text_to_id(t, word + l->start, l->n + r->n);
    if (id < 0) return 1;
    bigram b = {left, right, t->scores[id], l->n + r->n};
    return heap_push(w, b);
}

/* Merge adjacent symbols, best pair first, until no pair qualifies. */
static int merge_symbols(const qrt_tokenizer *t, merge_work *w, const char *word, size_t n_symbols) {
    int spm = t->kind == VOCAB_SPM;
    w->n_heap = 0;
    for (size_t i = 1; i < n_symbols; i++) {
        int ok = spm ? spm_try_bigram(t, w, word, (int32_t)i - 1, (int32_t)i)
                     : bpe_try_bigram(t, w, word, (int32_t)i - 1, (int32_t)i);
        if (!ok) return 0;
    }
    while (w->n_heap) {
        bigram b = heap_pop(w);
        symbol *l = &w->symbols[b.left], *r = &w->symbols[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale: a side was merged since */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w->symbols[r->next].prev = b.left;
        int ok = spm ? spm_try_bigram(t, w, word, l->prev, b.left) && spm_try_bigram(t, w, word, b.left, l->next)
                     : bpe_try_bigram(t, w, word, l->prev, b.left) && bpe_try_bigram(t, w, word, b.left, l->next);
        if (!ok) return 0;
    }
    return 1;
}

/* ---- byte-level BPE over one raw fragment ------------------------------------------------------------- */

typedef struct {
    uint32_t *cpts;
    uint16_t *flags;
    uint32_t *lengths, *scratch;
    char *word; /* a byte-level encoded piece: at most 2 bytes per input byte */
    merge_work merge;
} bpe_work;

static int bpe_fragment(const qrt_tokenizer *t, const char *text, size_t len, bpe_work *w, id_list *out) {
    size_t n = utf8_decode_lenient(text, len, w->cpts);
    for (size_t i = 0; i < n; i++) w->flags[i] = unicode_cpt_flags(w->cpts[i]);
    size_t n_pieces = pretokenize(t->pre_stages, w->cpts, w->flags, n, w->lengths, w->scratch);
    size_t pos = 0;
    for (size_t p = 0; p < n_pieces; p++) {
        /* the piece re-encoded to UTF-8 (malformed input became U+FFFD), each byte mapped to its codepoint */
        size_t m = 0;
        for (size_t i = pos; i < pos + w->lengths[p]; i++) {
            char utf8[4];
            int k = utf8_encode(w->cpts[i], utf8);
            for (int j = 0; j < k; j++) m += (size_t)utf8_encode(t->byte_to_cpt[(unsigned char)utf8[j]], w->word + m);
        }
        pos += w->lengths[p];
        if (t->ignore_merges) {
            int32_t id = text_to_id(t, w->word, m);
            if (id >= 0) {
                push_id(out, id);
                continue;
            }
        }
        size_t n_symbols = split_symbols(w->merge.symbols, w->word, m);
        if (!merge_symbols(t, &w->merge, w->word, n_symbols)) return 0;
        for (int32_t i = 0; i != -1 && n_symbols; i = w->merge.symbols[i].next) {
            const symbol *s = &w->merge.symbols[i];
            if (s->n == 0) continue;
            int32_t id = text_to_id(t, w->word + s->start, s->n);
            if (id >= 0) {
                push_id(out, id);
                continue;
            }
            for (uint32_t j = 0; j < s->n; j++) { /* llama.cpp looks up each byte as a one-byte token */
                int32_t byte_id = text_to_id(t, w->word + s->start + j, 1);
                if (byte_id >= 0) push_id(out, byte_id);
            }
        }
    }
    return 1;
}

/* ---- SentencePiece BPE over one raw fragment -------------------------------------------------------------- */

static int spm_fragment(const qrt_tokenizer *t, const char *text, size_t len, int space_prefix, char *word,
                        merge_work *w, id_list *out) {
    size_t m = 0;
    if (space_prefix) {
        memcpy(word, "\xe2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(word + m, "\xe2\x96\x81", 3);
            m += 3;
        } else {
            word[m++] = text[i];
        }
    }
    size_t n_symbols = split_symbols(w->symbols, word, m);
    if (!merge_symbols(t, w, word, n_symbols)) return 0;
    for (int32_t i = 0; i != -1 && n_symbols; i = w->symbols[i].next) {
        const symbol *s = &w->symbols[i];
        int32_t id = text_to_id(t, word + s->start, s->n);
        if (id >= 0) {
            push_id(out, id);
            continue;
        }
        for (uint32_t j = 0; j < s->n; j++) {
            int32_t byte_id = t->byte_token[(unsigned char)word[s->start + j]];
            if (byte_id >= 0) push_id(out, byte_id);
        }
    }
    return 1;
}

/* ---- special-token partition ------------------------------------------------------------------------------ */

typedef struct {
    size_t off, len;
    int32_t token; /* -1: raw text */
} fragment;

typedef struct {
    fragment *items;
    size_t n, cap;
} fragment_list;

static int push_fragment(fragment_list *l, size_t off, size_t len, int32_t token) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? qrt_size_mul(l->cap, 2) : 16;
        fragment *items = qrt_realloc(l->items, qrt_array_bytes(cap, sizeof *items));
        if (!items) return 0;
        l->items = items;
        l->cap = cap;
    }
    fragment f = {off, len, token};
    l->items[l->n++] = f;
    return 1;
}

/* llama.cpp's tokenizer_st_partition: for each special token in priority order, cut every leftmost
 * non-overlapping occurrence out of the raw fragments. Only tokens that occur in the text (found with the
 * trie in one pass) are searched for. Returns 0 on out-of-memory. */
static int partition_specials(const qrt_tokenizer *t, const char *text, size_t len, int parse_special,
                              fragment_list *frags) {
    frags->n = 0;
    if (len == 0) return 1;
    if (!push_fragment(frags, 0, len, -1)) return 0;
    if (t->n_specials == 0) return 1;
    uint8_t *occurs = calloc(t->n_specials, 1);
    if (!occurs) return 0;
    const unsigned char *s = (const unsigned char *)text;
    size_t n_occurring = 0;
    for (size_t pos = 0; pos < len; pos++) {
        int32_t node = t->trie_root[s[pos]];
        for (size_t i = pos; node >= 0;) {
            int32_t k = t->trie[node].special;
            if (k >= 0 && !occurs[k]) {
                uint16_t attr = t->attr[t->specials[k]];
                if (parse_special || !(attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) {
                    occurs[k] = 1;
                    n_occurring++;
                }
            }
            if (++i >= len) break;
            node = t->trie[node].first_child;
            while (node >= 0 && t->trie[node].byte != s[i]) node = t->trie[node].next_sibling;
        }
    }
    fragment_list next = {0};
    int ok = 1;
    for (uint32_t k = 0; k < t->n_specials && n_occurring && ok; k++) {
        if (!occurs[k]) continue;
        n_occurring--;
        int32_t id = t->specials[k];
        const char *needle = tok_text(t, id);
        size_t needle_len = t->text_len[id];
        uint16_t attr = t->attr[id];
        next.n = 0;
        for (size_t f = 0; f < frags->n && ok; f++) {
            fragment fr = frags->items[f];
            if (fr.token >= 0) {
                ok = push_fragment(&next, fr.off, fr.len, fr.token);
                continue;
            }
            size_t base = fr.off, remaining = fr.len;
            for (;;) {
                const char *hit = remaining >= needle_len ? memmem(text + base, remaining, needle, needle_len) : NULL;
                if (!hit) {
                    if (remaining > 0) ok = push_fragment(&next, base, remaining, -1);
                    break;
                }
                size_t match = (size_t)(hit - text);
                size_t left_len = match - base;
                if (attr & TOK_ATTR_LSTRIP)
                    while (left_len > 0 && isspace((unsigned char)text[base + left_len - 1])) left_len--;
                if (left_len > 0) ok = ok && push_fragment(&next, base, left_len, -1);
                ok = ok && push_fragment(&next, match, needle_len, id);
                size_t right = match + needle_len, end = base + remaining;
                if (attr & TOK_ATTR_RSTRIP)
                    while (right < end && isspace((unsigned char)text[right])) right++;
                base = right;
                remaining = end - right;
                if (!ok) break;
            }
        }
        fragment_list swap = *frags;
        *frags = next;
        next = swap;
    }
    free(next.items);
    free(occurs);
    return ok;
}

/* ---- encode --------------------------------------------------------------------------------------------- */

static int32_t lookup_text(const void *tok, const char *s, size_t n) { return text_to_id(tok, s, n); }

static int emit_id(void *ids, int32_t id) {
    push_id(ids, id);
    return !((id_list *)ids)->oom;
}

static int encode_into(const qrt_tokenizer *t, const char *text, size_t len, int add_special, int parse_special,
                       id_list *out) {
    fragment_list frags = {0};
    if (!partition_specials(t, text, len, parse_special, &frags)) return 0;
    size_t longest = 0;
    for (size_t i = 0; i < frags.n; i++)
        if (frags.items[i].token < 0 && frags.items[i].len > longest) longest = frags.items[i].len;
    int ok = 1;
    if (t->kind == VOCAB_BPE) {
        bpe_work w = {0};
        size_t n = qrt_size_add(longest, 1);
        w.cpts = qrt_malloc(qrt_array_bytes(n, sizeof *w.cpts));
        w.flags = qrt_malloc(qrt_array_bytes(n, sizeof *w.flags));
        w.lengths = qrt_malloc(qrt_array_bytes(n, sizeof *w.lengths));
        w.scratch = qrt_malloc(qrt_array_bytes(n, sizeof *w.scratch));
        w.word = qrt_malloc(qrt_size_mul(n, 8)); /* U+FFFD (3 bytes) per input byte, each byte mapped to 2 bytes */
        w.merge.symbols = qrt_malloc(qrt_size_mul3(n, 8, sizeof *w.merge.symbols));
        ok = w.cpts && w.flags && w.lengths && w.scratch && w.word && w.merge.symbols;
        if (ok && add_special && t->add_bos && t->bos >= 0) push_id(out, t->bos);
        for (size_t i = 0; i < frags.n && ok; i++) {
            const fragment *f = &frags.items[i];
            if (f->token >= 0) push_id(out, f->token);
            else ok = bpe_fragment(t, text + f->off, f->len, &w, out);
        }
        if (ok && add_special && t->add_eos && t->eos >= 0) push_id(out, t->eos);
        free(w.cpts);
        free(w.flags);
        free(w.lengths);
        free(w.scratch);
        free(w.word);
        free(w.merge.symbols);
        free(w.merge.heap);
    } else if (t->kind == VOCAB_WPM) {
        wpm_config cfg = {t->lowercase, t->strip_accents, t->unk, lookup_text, t};
        if (add_special && t->add_bos && t->bos >= 0) push_id(out, t->bos);
        for (size_t i = 0; i < frags.n && ok; i++) {
            const fragment *f = &frags.items[i];
            if (f->token >= 0) push_id(out, f->token);
            else ok = wpm_tokenize(&cfg, text + f->off, f->len, emit_id, out);
        }
        if (ok && add_special && t->add_eos && t->eos >= 0) push_id(out, t->eos);
    } else {
        merge_work w = {0};
        size_t n = qrt_size_add(longest, 1);
        char *word = qrt_malloc(qrt_size_add(qrt_size_mul(n, 3), 3));
        w.symbols = qrt_malloc(qrt_array_bytes(qrt_size_add(qrt_size_mul(n, 3), 3), sizeof *w.symbols));
        ok = word && w.symbols;
        int prev_special = 1; /* the first fragment gets the space prefix too */
        if (ok && add_special && t->add_bos && t->bos >= 0) push_id(out, t->bos);
        for (size_t i = 0; i < frags.n && ok; i++) {
            const fragment *f = &frags.items[i];
            if (f->token >= 0) {
                push_id(out, f->token);
                prev_special = 1;
            } else {
                ok = spm_fragment(t, text + f->off, f->len, t->add_space_prefix && prev_special, word, &w, out);
                prev_special = 0;
            }
        }
        if (ok && add_special && t->add_eos && t->eos >= 0) push_id(out, t->eos);
        free(word);
        free(w.symbols);
        free(w.heap);
    }
    free(frags.items);
    return ok && !out->oom;
}

int32_t qrt_tokenizer_encode(const qrt_tokenizer *t, const char *text, size_t len, int add_special,
                             int parse_special, int32_t *out, int32_t capacity) {
    id_list ids = {0};
    if (!encode_into(t, text, len, add_special, parse_special, &ids)) {
        free(ids.ids);
        return INT32_MIN;
    }
    if (ids.n > (size_t)INT32_MAX) {
        free(ids.ids);
        return INT32_MIN;
    }
    int32_t n = (int32_t)ids.n;
    if (n > capacity) {
        free(ids.ids);
        return -n;
    }
    if (n) memcpy(out, ids.ids, (size_t)n * sizeof *out);
    free(ids.ids);
    return n;
}

/* HF truncation of a single text: its pieces are cut so that they and the specials the vocabulary adds fit in
 * max_tokens (specials are kept; when max_tokens cannot hold them all, BOS goes first). */
int32_t qrt_tokenizer_encode_truncated(const qrt_tokenizer *t, const char *text, size_t len, int32_t max_tokens,
                                       int32_t *out, int32_t capacity) {
    id_list ids = {0};
    if (!encode_into(t, text, len, 0, 1, &ids)) {
        free(ids.ids);
        return INT32_MIN;
    }
    size_t budget = max_tokens > 0 ? (size_t)max_tokens : 0;
    int bos = t->add_bos && t->bos >= 0 && budget > 0;
    budget -= (size_t)bos;
    int eos = t->add_eos && t->eos >= 0 && budget > 0;
    budget -= (size_t)eos;
    size_t n_text = ids.n < budget ? ids.n : budget;
    int32_t n = (int32_t)(n_text + (size_t)bos + (size_t)eos); /* <= max_tokens */
    if (n > capacity) {
        free(ids.ids);
        return -n;
    }
    int32_t k = 0;
    if (bos) out[k++] = t->bos;
    if (n_text) memcpy(out + k, ids.ids, n_text * sizeof *out);
    k += (int32_t)n_text;
    if (eos) out[k++] = t->eos;
    free(ids.ids);
    return n;
}

int32_t qrt_tokenizer_wordpiece_words(const qrt_tokenizer *t, const char *text, size_t len, char *out,
                                      int32_t capacity) {
    if (t->kind != VOCAB_WPM) return INT32_MIN;
    wpm_config cfg = {t->lowercase, t->strip_accents, t->unk, lookup_text, t};
    int64_t n = wpm_words(&cfg, text, len, out, capacity > 0 ? capacity : 0);
    if (n < 0) return INT32_MIN;
    return n > capacity ? -(int32_t)n : (int32_t)n;
}

/* ---- decode --------------------------------------------------------------------------------------------- */

static inline int hidden_piece(const qrt_tokenizer *t, int32_t id, int special) {
    return !special && (t->attr[id] & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL));
}

int32_t qrt_tokenizer_token_to_piece(const qrt_tokenizer *t, int32_t id, char *buf, int32_t capacity,
                                     int special) {
    if (id < 0 || id >= t->n_vocab || hidden_piece(t, id, special)) return 0;
    int32_t n = (int32_t)t->piece_len[id];
    if (n > capacity) return -n;
    memcpy(buf, t->piece_arena + t->piece_off[id], (size_t)n);
    return n;
}

/* llama.cpp's clean_up_tokenization_spaces passes over the decoded text, in place; returns the new length. */
static int32_t clean_spaces(char *text, int32_t total) {
    /* " ?", " !", " .", " ," lose the space */
    int32_t n = total, out = total ? 1 : 0;
    for (int32_t i = 1; i < n; i++) {
        char x = text[i];
        if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) out--;
        text[out++] = x;
    }
    /* " ' " -> "'" */
    n = out;
    out = n ? 1 : 0;
    for (int32_t i = 1; i < n; i++) {
        char x = text[i];
        if (x == '\'' && i + 1 < n && text[i - 1] == ' ' && text[i + 1] == ' ') {
            out--;
            text[++i] = '\0';
        }
        text[out++] = x;
    }
    /* " 's", " 'm", " 're", " 've" lose the space */
    n = out;
    out = n ? 1 : 0;
    for (int32_t i = 1; i < n; i++) {
        char x = text[i];
        if (text[i - 1] == ' ' && x == '\'' && i + 1 < n) {
            char x1 = text[i + 1];
            if (x1 == 's' || x1 == 'm') out--;
            else if (i + 2 < n && ((x1 == 'r' && text[i + 2] == 'e') || (x1 == 'v' && text[i + 2] == 'e'))) out--;
        }
        text[out++] = x;
    }
    return out;
}

int32_t qrt_tokenizer_decode(const qrt_tokenizer *t, const int32_t *ids, int32_t n_ids, char *out,
                             int32_t capacity, int remove_special, int unparse_special) {
    int remove_space = t->add_space_prefix || t->kind == VOCAB_WPM; /* bert: no space before the first word */
    if (remove_special && t->add_bos && n_ids > 0 && ids[0] == t->bos) {
        remove_space = t->kind == VOCAB_WPM; /* as llama.cpp: the space after a removed BOS stays */
        n_ids--;
        ids++;
    }
    if (remove_special && t->add_eos && n_ids > 0 && ids[n_ids - 1] == t->eos) n_ids--;
    int64_t total = 0;
    for (int32_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab || hidden_piece(t, id, unparse_special)) {
            remove_space = 0;
            continue;
        }
        const char *piece = t->piece_arena + t->piece_off[id];
        int64_t n = t->piece_len[id];
        if (remove_space && n > 0 && piece[0] == ' ') {
            piece++;
            n--;
        }
        remove_space = 0;
        if (total + n <= capacity) memcpy(out + total, piece, (size_t)n);
        total += n;
        if (total > INT32_MAX) return INT32_MIN;
    }
    if (total > capacity) return -(int32_t)total;
    if (t->clean_spaces) total = clean_spaces(out, (int32_t)total);
    return (int32_t)total;
}

/* ---- accessors ------------------------------------------------------------------------------------------ */

int32_t qrt_tokenizer_n_vocab(const qrt_tokenizer *t) { return t->n_vocab; }
int32_t qrt_tokenizer_bos(const qrt_tokenizer *t) { return t->bos; }
int32_t qrt_tokenizer_eos(const qrt_tokenizer *t) { return t->eos; }
int qrt_tokenizer_add_bos(const qrt_tokenizer *t) { return t->add_bos; }
int qrt_tokenizer_add_eos(const qrt_tokenizer *t) { return t->add_eos; }
int qrt_tokenizer_is_eog(const qrt_tokenizer *t, int32_t id) { return id >= 0 && id < t->n_vocab && t->is_eog[id]; }
int qrt_tokenizer_is_control(const qrt_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN)) != 0;
}
const char *qrt_tokenizer_token_text(const qrt_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    *len = t->text_len[id];
    return tok_text(t, id);
}
const char *qrt_tokenizer_model_name(const qrt_tokenizer *t) { return t->model_name; }
const char *qrt_tokenizer_pre_name(const qrt_tokenizer *t) { return t->pre_name; }

/* ---- streaming detokenizer ------------------------------------------------------------------------------ */

struct qrt_detokenizer {
    const qrt_tokenizer *tok;
    int special;
    unsigned char pending[4]; /* an incomplete UTF-8 sequence carried to the next token */
    size_t n_pending;
    unsigned char *in;  /* pending + piece */
    char *out;          /* at most 3 bytes (U+FFFD) per input byte */
};

qrt_detokenizer *qrt_detokenizer_new(const qrt_tokenizer *tok, int special) {
    qrt_detokenizer *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->tok = tok;
    d->special = special;
    size_t room = (size_t)tok->max_piece_len + 8;
    d->in = malloc(room);
    d->out = qrt_malloc(qrt_size_mul(room, 3));
    if (!d->in || !d->out) {
        qrt_detokenizer_free(d);
        return NULL;
    }
    return d;
}

void qrt_detokenizer_free(qrt_detokenizer *d) {
    if (!d) return;
    free(d->in);
    free(d->out);
    free(d);
}

/* Bytes allowed after a lead byte, per Unicode Table 3-7 (well-formed UTF-8): the second byte's range depends
 * on the lead; the rest are 80..BF. Returns the sequence length, or 0 for a byte that cannot lead. */
static int utf8_lead(unsigned char c, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

static const char REPLACEMENT[3] = {'\xEF', '\xBF', '\xBD'};

/* Emit the complete, valid sequences of in[0..n) into d->out; keep a trailing incomplete one pending. */
static size_t emit_valid(qrt_detokenizer *d, const unsigned char *in, size_t n, int final) {
    size_t o = 0, i = 0;
    d->n_pending = 0;
    while (i < n) {
        unsigned char lo, hi;
        int need = utf8_lead(in[i], &lo, &hi);
        if (need == 0) {
            memcpy(d->out + o, REPLACEMENT, 3);
            o += 3;
            i++;
            continue;
        }
        size_t k = 1;
        while (k < (size_t)need && i + k < n) {
            unsigned char c = in[i + k];
            if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) break;
            k++;
        }
        if (k == (size_t)need) {
            memcpy(d->out + o, in + i, k);
            o += k;
        } else if (i + k == n && !final) { /* a valid prefix cut by the end of this token: wait for more */
            memcpy(d->pending, in + i, k);
            d->n_pending = k;
        } else { /* a maximal invalid subpart becomes one U+FFFD */
            memcpy(d->out + o, REPLACEMENT, 3);
            o += 3;
        }
        i += k;
    }
    return o;
}

const char *qrt_detokenizer_feed(qrt_detokenizer *d, int32_t id, size_t *len) {
    const qrt_tokenizer *t = d->tok;
    size_t n = d->n_pending;
    memcpy(d->in, d->pending, n);
    if (id >= 0 && id < t->n_vocab && !hidden_piece(t, id, d->special)) {
        memcpy(d->in + n, t->piece_arena + t->piece_off[id], t->piece_len[id]);
        n += t->piece_len[id];
    }
    *len = emit_valid(d, d->in, n, 0);
    return d->out;
}

const char *qrt_detokenizer_flush(qrt_detokenizer *d, size_t *len) {
    size_t n = d->n_pending;
    memcpy(d->in, d->pending, n);
    *len = emit_valid(d, d->in, n, 1);
    return d->out;
}
