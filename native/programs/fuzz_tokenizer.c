/* fuzz_tokenizer.c — fuzz target for the tokenizer: arbitrary bytes through real vocabularies (not part of libqrt;
 * not in SOURCES).
 *
 * Vocabularies: every *.gguf in $QRT_FUZZ_VOCABS, loaded once at start, in name order. tests/fuzz_seeds.py writes
 * them: SmolLM2's byte-level BPE under each pre-tokenizer native/tokenizer/pretokenize.c implements, Gemma 3's
 * SentencePiece vocabulary and MiniLM's WordPiece (bert) vocabulary. Input: the first byte picks the vocabulary (modulo their count; its top bit asks for
 * BOS/EOS), the rest is the text, encoded without and with special-token parsing, then decoded, detokenized
 * token by token and streamed.
 *
 * libFuzzer:  bash tests/fuzz.sh tokenizer SECONDS (builds, writes the vocabularies and a seed corpus, runs).
 * Plain run over files (-DQRT_FUZZ_MAIN, any C compiler): QRT_FUZZ_VOCABS=DIR fuzz_tokenizer FILE...
 *
 * Besides sanitizer reports, a broken contract of qrt_tokenizer.h aborts: an id outside the vocabulary, a
 * "required capacity" that does not fit when given, or (byte-level BPE whose pre-tokenizer keeps spaces as
 * they are) a decode that does not give back the text it encoded.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrt.h"

#define MAX_VOCABS 32

static qrt_tokenizer *vocabs[MAX_VOCABS];
static uint8_t has_byte[MAX_VOCABS][256]; /* byte b has a token of its own (a one-byte piece) */
static int n_vocabs;
static volatile uint64_t sink;

static void broken(const char *what, const qrt_tokenizer *tok) {
    fprintf(stderr, "fuzz_tokenizer: %s (model %s, pre %s)\n", what, qrt_tokenizer_model_name(tok),
            qrt_tokenizer_pre_name(tok));
    abort();
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *dir = getenv("QRT_FUZZ_VOCABS");
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d) {
        fprintf(stderr, "fuzz_tokenizer: set QRT_FUZZ_VOCABS to a folder of tokenizer GGUFs (tests/fuzz_seeds.py)\n");
        exit(2);
    }
    char *names[MAX_VOCABS];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL && n < MAX_VOCABS;) {
        const size_t len = strlen(e->d_name);
        if (len > 5 && strcmp(e->d_name + len - 5, ".gguf") == 0) names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], by_name);
    for (int i = 0; i < n; i++) {
        char path[4096], err[512];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        vocabs[n_vocabs] = qrt_tokenizer_load(path, err, sizeof err);
        if (!vocabs[n_vocabs]) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", err);
            exit(2);
        }
        for (int32_t id = 0; id < qrt_tokenizer_n_vocab(vocabs[n_vocabs]); id++) {
            char piece[8];
            if (qrt_tokenizer_token_to_piece(vocabs[n_vocabs], id, piece, sizeof piece, 0) == 1)
                has_byte[n_vocabs][(uint8_t)piece[0]] = 1;
        }
        n_vocabs++;
        free(names[i]);
    }
    if (n_vocabs == 0) {
        fprintf(stderr, "fuzz_tokenizer: no .gguf in %s\n", dir);
        exit(2);
    }
    return 0;
}

/* Encode with the capacity protocol: a first call into a small buffer, then exactly the capacity it asked for. */
static int32_t encode(const qrt_tokenizer *tok, const char *text, size_t len, int add_special, int parse_special,
                      int32_t **ids) {
    int32_t cap = 16;
    *ids = malloc(sizeof(int32_t) * (size_t)cap);
    int32_t n = qrt_tokenizer_encode(tok, text, len, add_special, parse_special, *ids, cap);
    if (n == INT32_MIN) broken("encode ran out of memory", tok);
    if (n < 0) {
        cap = -n;
        *ids = realloc(*ids, sizeof(int32_t) * (size_t)cap);
        n = qrt_tokenizer_encode(tok, text, len, add_special, parse_special, *ids, cap);
        if (n != cap) broken("encode did not fill the capacity it asked for", tok);
    }
    const int32_t n_vocab = qrt_tokenizer_n_vocab(tok);
    for (int32_t i = 0; i < n; i++)
        if ((*ids)[i] < 0 || (*ids)[i] >= n_vocab) broken("encode gave an id outside the vocabulary", tok);
    return n;
}

/* Decode with the same protocol; the text (malloc'd, *len bytes). */
static char *decode(const qrt_tokenizer *tok, const int32_t *ids, int32_t n, int remove_special,
                    int unparse_special, int32_t *len) {
    int32_t cap = 8;
    char *out = malloc((size_t)cap);
    *len = qrt_tokenizer_decode(tok, ids, n, out, cap, remove_special, unparse_special);
    if (*len < 0) {
        cap = -*len;
        out = realloc(out, (size_t)cap);
        *len = qrt_tokenizer_decode(tok, ids, n, out, cap, remove_special, unparse_special);
        if (*len < 0 || *len > cap) broken("decode did not fit the capacity it asked for", tok);
    }
    return out;
}

static void pieces(const qrt_tokenizer *tok, const int32_t *ids, int32_t n, int special) {
    char small[4], *big = NULL;
    for (int32_t i = 0; i < n; i++) {
        int32_t len = qrt_tokenizer_token_to_piece(tok, ids[i], small, sizeof small, special);
        if (len < 0) {
            big = realloc(big, (size_t)-len);
            if (qrt_tokenizer_token_to_piece(tok, ids[i], big, -len, special) != -len)
                broken("token_to_piece did not fit the capacity it asked for", tok);
        }
        size_t text_len;
        sink += qrt_tokenizer_token_text(tok, ids[i], &text_len) != NULL ? text_len : 0;
        sink += (uint64_t)qrt_tokenizer_is_eog(tok, ids[i]) + (uint64_t)qrt_tokenizer_is_control(tok, ids[i]);
    }
    free(big);
}

static void stream(const qrt_tokenizer *tok, const int32_t *ids, int32_t n, int special) {
    qrt_detokenizer *d = qrt_detokenizer_new(tok, special);
    if (!d) return;
    size_t len;
    for (int32_t i = 0; i < n; i++) {
        const char *piece = qrt_detokenizer_feed(d, ids[i], &len);
        if (piece && len) sink += (uint8_t)piece[len - 1];
    }
    const char *rest = qrt_detokenizer_flush(d, &len);
    if (rest && len) sink += (uint8_t)rest[len - 1];
    qrt_detokenizer_free(d);
}

/* Text a byte-level vocabulary must give back: strictly valid UTF-8 (no overlong forms, surrogates or code points
 * past U+10FFFF; malformed bytes are tokenized as llama.cpp does, which does not promise to give them back) made of
 * bytes the vocabulary has a token for (SmolLM2's lacks 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xf2 and others it
 * never saw; llama.cpp and Hugging Face's tokenizers drop them alike). */
static int round_trip_text(const uint8_t *s, size_t len, const uint8_t *has_byte) {
    static const uint32_t SMALLEST[5] = {0, 0, 0x80, 0x800, 0x10000};
    for (size_t i = 0; i < len;) {
        const uint8_t c = s[i];
        const size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (n == 0 || i + n > len) return 0;
        uint32_t cp = n == 1 ? c : c & (0x7f >> n);
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < SMALLEST[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        for (size_t k = 0; k < n; k++)
            if (!has_byte[s[i + k]]) return 0;
        i += n;
    }
    return 1;
}

/* Byte-level BPE maps every byte to a token and these pre-tokenizers leave spaces alone (no clean-up), so decoding
 * what was encoded without specials must give valid text back byte for byte. */
static int round_trips(const qrt_tokenizer *tok) {
    static const char *const PRE_KEEPING_SPACES[] = {"smollm", "qwen2"};
    if (strcmp(qrt_tokenizer_model_name(tok), "gpt2") != 0) return 0;
    for (size_t i = 0; i < sizeof PRE_KEEPING_SPACES / sizeof PRE_KEEPING_SPACES[0]; i++)
        if (strcmp(qrt_tokenizer_pre_name(tok), PRE_KEEPING_SPACES[i]) == 0) return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const int pick = (data[0] & 0x7f) % n_vocabs;
    const qrt_tokenizer *tok = vocabs[pick];
    const int add_special = data[0] >> 7;
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    /* truncation: never more than asked, specials kept (data[0] also picks the bound) */
    int32_t truncated[64];
    const int32_t max_tokens = (int32_t)(data[0] % 64);
    const int32_t n_truncated = qrt_tokenizer_encode_truncated(tok, text, len, max_tokens, truncated, 64);
    if (n_truncated == INT32_MIN) broken("encode_truncated ran out of memory", tok);
    if (n_truncated < 0 || n_truncated > max_tokens) broken("encode_truncated gave more than max_tokens", tok);
    for (int32_t i = 0; i < n_truncated; i++)
        if (truncated[i] < 0 || truncated[i] >= qrt_tokenizer_n_vocab(tok)) broken("encode_truncated id", tok);
    if (qrt_tokenizer_wordpiece_words(tok, text, len, NULL, 0) > 0) broken("wordpiece_words wrote to no room", tok);
    for (int parse_special = 0; parse_special <= 1; parse_special++) {
        int32_t *ids;
        const int32_t n = encode(tok, text, len, add_special, parse_special, &ids);
        for (int special = 0; special <= 1; special++) {
            int32_t out_len;
            char *out = decode(tok, ids, n, special, special, &out_len);
            if (!parse_special && !add_special && special && round_trips(tok) &&
                round_trip_text(data + 1, len, has_byte[pick]) &&
                (out_len != (int32_t)len || memcmp(out, text, len) != 0))
                broken("decode(encode(text)) is not the text", tok);
            free(out);
            pieces(tok, ids, n, special);
            stream(tok, ids, n, special);
        }
        free(ids);
    }
    return 0;
}

#ifdef QRT_FUZZ_MAIN
#include "fuzz_file_main.h"
#endif
