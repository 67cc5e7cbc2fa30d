/* wordpiece.c — BERT normalizer, pre-tokenizer and WordPiece (see wordpiece.h for the contract).
 *
 * One pass over the text: each codepoint is cleaned, normalized and fed to the current word; a word ends at
 * whitespace, punctuation or a CJK ideograph and then goes through WordPiece. Only the first WPM_MAX_WORD_CHARS
 * characters of a word are kept (a longer word is [UNK] whatever it holds), so memory does not grow with the text.
 */
#include "wordpiece.h"

#include <string.h>

#include "pretokenize.h"

/* ---- codepoint data ------------------------------------------------------------------------------------- */

uint8_t wpm_class(uint32_t cpt) {
    if (cpt > 0x10FFFF) return WPM_DROP;
    uint32_t lo = 0, hi = qrt_wpm_n_ranges; /* qrt_wpm_range_start[lo] <= cpt < qrt_wpm_range_start[hi] */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (qrt_wpm_range_start[mid] <= cpt) lo = mid;
        else hi = mid;
    }
    return qrt_wpm_range_class[lo];
}

/* The mapping of cpt (itself if unmapped) into out (room for 3); returns the count. */
static size_t map_cpt(const wpm_map_run *runs, uint32_t n_runs, const wpm_map_multi *multi, uint32_t n_multi,
                      uint32_t cpt, uint32_t *out) {
    uint32_t lo = 0, hi = n_multi;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (multi[mid].cpt < cpt) lo = mid + 1;
        else hi = mid;
    }
    if (lo < n_multi && multi[lo].cpt == cpt) {
        for (uint8_t i = 0; i < multi[lo].len; i++) out[i] = multi[lo].out[i];
        return multi[lo].len;
    }
    out[0] = cpt;
    if (n_runs == 0 || runs[0].start > cpt) return 1;
    lo = 0;
    hi = n_runs; /* runs[lo].start <= cpt */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (runs[mid].start <= cpt) lo = mid;
        else hi = mid;
    }
    const wpm_map_run *r = &runs[lo];
    uint32_t offset = cpt - r->start;
    if (offset % r->stride == 0 && offset / r->stride < r->count)
        out[0] = (uint32_t)((int64_t)r->out + (int64_t)(offset / r->stride) * r->step);
    return 1;
}

/* Hangul syllable -> its conjoining jamo (Unicode's algorithmic canonical decomposition). */
enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7 };
enum { HANGUL_V_COUNT = 21, HANGUL_T_COUNT = 28, HANGUL_N_COUNT = 21 * 28, HANGUL_S_COUNT = 19 * 21 * 28 };

static size_t strip_cpt(uint32_t cpt, uint8_t cls, uint32_t *out) {
    if (cls & WPM_MARK) return 0;
    if (cpt - HANGUL_S < HANGUL_S_COUNT) {
        uint32_t s = cpt - HANGUL_S;
        out[0] = HANGUL_L + s / HANGUL_N_COUNT;
        out[1] = HANGUL_V + (s % HANGUL_N_COUNT) / HANGUL_T_COUNT;
        if (s % HANGUL_T_COUNT == 0) return 2;
        out[2] = HANGUL_T + s % HANGUL_T_COUNT;
        return 3;
    }
    if (!(cls & WPM_HAS_STRIP)) {
        out[0] = cpt;
        return 1;
    }
    return map_cpt(qrt_wpm_strip_runs, qrt_wpm_strip_n_runs, qrt_wpm_strip_multi, qrt_wpm_strip_n_multi, cpt, out);
}

/* Strict UTF-8 (what a Python str encodes to): anything else is one U+FFFD per byte, which clean_text drops. */
static uint32_t next_cpt(const unsigned char *s, size_t len, size_t *pos) {
    size_t i = *pos;
    unsigned char c = s[i];
    *pos = i + 1;
    if (c < 0x80) return c;
    size_t need;
    uint32_t cpt;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
        cpt = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        cpt = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        cpt = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0xFFFD;
    }
    if (len - i - 1 < need) return 0xFFFD;
    for (size_t k = 1; k <= need; k++) {
        unsigned char b = s[i + k];
        if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return 0xFFFD;
        cpt = cpt << 6 | (b & 0x3F);
    }
    *pos = i + 1 + need;
    return cpt;
}

/* ---- normalizer and pre-tokenizer ----------------------------------------------------------------------- */

typedef int (*word_fn)(void *ctx, const uint32_t *cpts, size_t n_kept, size_t n_total);

typedef struct {
    uint32_t cpts[WPM_MAX_WORD_CHARS];
    size_t n; /* characters in the word so far (only the first WPM_MAX_WORD_CHARS are kept) */
    word_fn on_word;
    void *ctx;
} word_state;

static int end_word(word_state *w) {
    if (w->n == 0) return 1;
    size_t kept = w->n < WPM_MAX_WORD_CHARS ? w->n : WPM_MAX_WORD_CHARS;
    int ok = w->on_word(w->ctx, w->cpts, kept, w->n);
    w->n = 0;
    return ok;
}

/* One codepoint of the normalized text into the pre-tokenizer. */
static int feed(word_state *w, uint32_t cpt) {
    uint8_t cls = wpm_class(cpt);
    if (cls & WPM_SPACE) return end_word(w);
    if ((cls & WPM_PUNCT) && !end_word(w)) return 0;
    if (w->n < WPM_MAX_WORD_CHARS) w->cpts[w->n] = cpt;
    if (w->n < SIZE_MAX) w->n++;
    return (cls & WPM_PUNCT) ? end_word(w) : 1;
}

static int split_words(const wpm_config *cfg, const char *text, size_t len, word_state *w) {
    const unsigned char *s = (const unsigned char *)text;
    for (size_t pos = 0; pos < len;) {
        uint32_t cpt = next_cpt(s, len, &pos);
        uint8_t cls = wpm_class(cpt);
        if (cls & WPM_DROP) continue;
        if (cls & WPM_SPACE) {
            if (!end_word(w)) return 0;
            continue;
        }
        if ((cls & WPM_CJK) && !end_word(w)) return 0;
        /* the tokenizers order: strip accents, then lowercase */
        uint32_t parts[WPM_MAX_EXPANSION];
        size_t n_parts = 1;
        parts[0] = cpt;
        if (cfg->strip_accents) n_parts = strip_cpt(cpt, cls, parts);
        for (size_t i = 0; i < n_parts; i++) {
            uint32_t lowered[3];
            size_t n_lowered = 1;
            lowered[0] = parts[i];
            if (cfg->lowercase && (wpm_class(parts[i]) & WPM_HAS_LOWER))
                n_lowered = map_cpt(qrt_wpm_lower_runs, qrt_wpm_lower_n_runs, qrt_wpm_lower_multi,
                                    qrt_wpm_lower_n_multi, parts[i], lowered);
            for (size_t k = 0; k < n_lowered; k++)
                if (!feed(w, lowered[k])) return 0;
        }
        if ((cls & WPM_CJK) && !end_word(w)) return 0;
    }
    return end_word(w);
}

/* ---- WordPiece ------------------------------------------------------------------------------------------ */

typedef struct {
    const wpm_config *cfg;
    int (*emit)(void *ctx, int32_t id);
    void *ctx;
} piece_state;

static int emit_unknown(const piece_state *p) { return p->cfg->unk < 0 || p->emit(p->ctx, p->cfg->unk); }

/* Greedy longest match first. The word-initial piece is looked up with the U+2581 prefix, continuations bare
 * (llama.cpp's GGUF form of "t" and "##t"). */
static int wordpiece_word(void *ctx, const uint32_t *cpts, size_t n, size_t n_total) {
    const piece_state *p = ctx;
    if (n_total > WPM_MAX_WORD_CHARS) return emit_unknown(p);
    char buf[3 + 4 * WPM_MAX_WORD_CHARS];
    size_t off[WPM_MAX_WORD_CHARS + 1];
    memcpy(buf, "\xe2\x96\x81", 3);
    size_t m = 3;
    for (size_t i = 0; i < n; i++) {
        off[i] = m;
        m += (size_t)utf8_encode(cpts[i], buf + m);
    }
    off[n] = m;
    int32_t ids[WPM_MAX_WORD_CHARS];
    size_t n_ids = 0;
    for (size_t start = 0; start < n;) {
        int32_t id = -1;
        size_t end = n;
        for (; end > start; end--) {
            size_t from = start == 0 ? 0 : off[start];
            id = p->cfg->lookup(p->cfg->vocab, buf + from, off[end] - from);
            if (id >= 0) break;
        }
        if (id < 0) return emit_unknown(p);
        ids[n_ids++] = id;
        start = end;
    }
    for (size_t i = 0; i < n_ids; i++)
        if (!p->emit(p->ctx, ids[i])) return 0;
    return 1;
}

int wpm_tokenize(const wpm_config *cfg, const char *text, size_t len, int (*emit)(void *ctx, int32_t id),
                 void *ctx) {
    piece_state p = {cfg, emit, ctx};
    word_state w = {.n = 0, .on_word = wordpiece_word, .ctx = &p};
    return split_words(cfg, text, len, &w);
}

/* ---- the words as text ---------------------------------------------------------------------------------- */

typedef struct {
    char *out;
    int64_t capacity, n;
} text_state;

static int append_word(void *ctx, const uint32_t *cpts, size_t n, size_t n_total) {
    (void)n_total;
    text_state *t = ctx;
    for (size_t i = 0; i <= n; i++) {
        char utf8[4];
        int k = 1;
        if (i == 0) {
            if (t->n == 0) continue; /* no separator before the first word */
            utf8[0] = ' ';
        } else {
            k = utf8_encode(cpts[i - 1], utf8);
        }
        if (t->n > INT32_MAX) return 0;
        for (int j = 0; j < k; j++, t->n++)
            if (t->n < t->capacity) t->out[t->n] = utf8[j];
    }
    return 1;
}

int64_t wpm_words(const wpm_config *cfg, const char *text, size_t len, char *out, int64_t capacity) {
    text_state t = {out, capacity, 0};
    word_state w = {.n = 0, .on_word = append_word, .ctx = &t};
    if (!split_words(cfg, text, len, &w) || t.n > INT32_MAX) return -1;
    return t.n;
}
