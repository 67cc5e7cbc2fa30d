/* pretokenize.c — pre-tokenizer regexes as hand-written matchers with llama.cpp's semantics.
 *
 * The GPT-2, llama-3 and qwen2 matchers follow llama.cpp's unicode_regex_split_custom_* (unicode.cpp) step for
 * step, quirks included (e.g. the letter rule accepts any non-\r\n non-number prefix, and a lone trailing space
 * may become its own piece), because the goal is token ids identical to llama.cpp's, not to a regex engine's.
 * The simple single-class regexes (\p{N}, \p{N}+, [\p{P}$+<=>^~|]+, [0-9]{3}) are what llama.cpp runs through
 * std::regex on its category-collapsed text: every match is its own piece and so is every gap between matches.
 */
#include "pretokenize.h"

#include "unicode_tables.h"

#define OUT_OF_RANGE 0xFFFFFFFFu

uint16_t unicode_cpt_flags(uint32_t cpt) {
    if (cpt > UCPT_MAX_CODEPOINT) return UCPT_UNDEFINED;
    /* last range whose start <= cpt */
    uint32_t lo = 0, hi = qrt_unicode_n_ranges;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (qrt_unicode_range_start[mid] <= cpt) lo = mid;
        else hi = mid;
    }
    return qrt_unicode_range_flags[lo];
}

size_t utf8_decode_lenient(const char *text, size_t len, uint32_t *cpts) {
    const unsigned char *s = (const unsigned char *)text;
    size_t n = 0, i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            cpts[n++] = c;
            i += 1;
        } else if (!(c & 0x40)) { /* stray continuation byte */
            cpts[n++] = 0xFFFD;
            i += 1;
        } else if (!(c & 0x20)) {
            if (i + 1 < len && (s[i + 1] & 0xC0) == 0x80) {
                cpts[n++] = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
                i += 2;
            } else {
                cpts[n++] = 0xFFFD;
                i += 1;
            }
        } else if (!(c & 0x10)) {
            if (i + 2 < len && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80) {
                cpts[n++] = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
                i += 3;
            } else {
                cpts[n++] = 0xFFFD;
                i += 1;
            }
        } else if (!(c & 0x08)) {
            if (i + 3 < len && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 && (s[i + 3] & 0xC0) == 0x80) {
                cpts[n++] = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) |
                            (s[i + 3] & 0x3Fu);
                i += 4;
            } else {
                cpts[n++] = 0xFFFD;
                i += 1;
            }
        } else {
            cpts[n++] = 0xFFFD;
            i += 1;
        }
    }
    return n;
}

int utf8_encode(uint32_t cpt, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cpt <= 0x7F) {
        o[0] = (unsigned char)cpt;
        return 1;
    }
    if (cpt <= 0x7FF) {
        o[0] = (unsigned char)(0xC0 | (cpt >> 6));
        o[1] = (unsigned char)(0x80 | (cpt & 0x3F));
        return 2;
    }
    if (cpt <= 0xFFFF) {
        o[0] = (unsigned char)(0xE0 | (cpt >> 12));
        o[1] = (unsigned char)(0x80 | ((cpt >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cpt & 0x3F));
        return 3;
    }
    if (cpt <= UCPT_MAX_CODEPOINT) {
        o[0] = (unsigned char)(0xF0 | (cpt >> 18));
        o[1] = (unsigned char)(0x80 | ((cpt >> 12) & 0x3F));
        o[2] = (unsigned char)(0x80 | ((cpt >> 6) & 0x3F));
        o[3] = (unsigned char)(0x80 | (cpt & 0x3F));
        return 4;
    }
    return 0;
}

/* One piece from the previous stage being split: positions outside [ini, end) read as OUT_OF_RANGE with no
 * flags, exactly like llama.cpp's _get_cpt/_get_flags. */
typedef struct {
    const uint32_t *cpts;
    const uint16_t *flags;
    size_t ini, end;
    size_t prev_end;
    uint32_t *out;
    size_t n_out;
} segment;

static inline uint32_t seg_cpt(const segment *s, size_t pos) {
    return (pos >= s->ini && pos < s->end) ? s->cpts[pos] : OUT_OF_RANGE;
}

static inline uint16_t seg_flags(const segment *s, size_t pos) {
    return (pos >= s->ini && pos < s->end) ? s->flags[pos] : 0;
}

static inline size_t seg_emit(segment *s, size_t end) {
    size_t len = end - s->prev_end;
    if (len > 0) s->out[s->n_out++] = (uint32_t)len;
    s->prev_end = end;
    return len;
}

/* The contractions compare against ASCII letters only, and no non-ASCII codepoint lowercases (simple mapping)
 * to s, t, r, e, v, m, l or d, so ASCII lowering equals llama.cpp's unicode_tolower here. */
static inline uint32_t lower_ascii(uint32_t c) {
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive: length of the match at pos, or 0. */
static size_t match_contraction(const segment *s, size_t pos, int ignore_case) {
    if (s->cpts[pos] != '\'' || pos + 1 >= s->end) return 0;
    uint32_t next = seg_cpt(s, pos + 1);
    if (ignore_case) next = lower_ascii(next);
    if (next == 's' || next == 't' || next == 'm' || next == 'd') return 2;
    if (pos + 2 < s->end) {
        uint32_t next2 = seg_cpt(s, pos + 2);
        if (ignore_case) next2 = lower_ascii(next2);
        if ((next == 'r' && next2 == 'e') || (next == 'v' && next2 == 'e') || (next == 'l' && next2 == 'l')) return 3;
    }
    return 0;
}

#define F_LNW (UCPT_LETTER | UCPT_NUMBER | UCPT_WHITESPACE)

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
static void split_gpt2(segment *s) {
    for (size_t pos = s->ini; pos < s->end;) {
        const uint32_t cpt = s->cpts[pos];
        const uint16_t flags = s->flags[pos];
        size_t contraction = match_contraction(s, pos, 0);
        if (contraction) {
            pos += seg_emit(s, pos + contraction);
            continue;
        }
        uint16_t flags2 = (cpt == ' ') ? seg_flags(s, pos + 1) : flags;
        if (flags2 & UCPT_LETTER) {
            pos += (cpt == ' ');
            while (flags2 & UCPT_LETTER) flags2 = seg_flags(s, ++pos);
            seg_emit(s, pos);
            continue;
        }
        if (flags2 & UCPT_NUMBER) {
            pos += (cpt == ' ');
            while (flags2 & UCPT_NUMBER) flags2 = seg_flags(s, ++pos);
            seg_emit(s, pos);
            continue;
        }
        if (!(flags2 & F_LNW) && flags2) {
            pos += (cpt == ' ');
            while (!(flags2 & F_LNW) && flags2) flags2 = seg_flags(s, ++pos);
            seg_emit(s, pos);
            continue;
        }
        size_t n_ws = 0;
        while (seg_flags(s, pos + n_ws) & UCPT_WHITESPACE) n_ws++;
        if (n_ws > 1 && seg_cpt(s, pos + n_ws) != OUT_OF_RANGE) { /* \s+(?!\S) leaves the last space */
            pos += n_ws - 1;
            seg_emit(s, pos);
            continue;
        }
        if (n_ws > 0) {
            pos += n_ws;
            seg_emit(s, pos);
            continue;
        }
        seg_emit(s, ++pos); /* no rule matched: a piece of its own */
    }
}

/* llama-3 (max_digits = 3) and qwen2 (max_digits = 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static void split_llama3(segment *s, size_t max_digits) {
    for (size_t pos = s->ini; pos < s->end;) {
        const uint32_t cpt = s->cpts[pos];
        const uint16_t flags = s->flags[pos];
        size_t contraction = match_contraction(s, pos, 1);
        if (contraction) {
            pos += seg_emit(s, pos + contraction);
            continue;
        }
        if (!(cpt == '\r' || cpt == '\n' || (flags & UCPT_NUMBER))) {
            if ((flags & UCPT_LETTER) || (seg_flags(s, pos + 1) & UCPT_LETTER)) {
                pos++;
                while (seg_flags(s, pos) & UCPT_LETTER) pos++;
                seg_emit(s, pos);
                continue;
            }
        }
        if (flags & UCPT_NUMBER) {
            size_t ini = pos;
            while (seg_flags(s, pos) & UCPT_NUMBER) {
                if (++pos - ini >= max_digits) {
                    seg_emit(s, pos);
                    ini = pos;
                }
            }
            seg_emit(s, pos);
            continue;
        }
        uint16_t flags2 = (cpt == ' ') ? seg_flags(s, pos + 1) : flags;
        if (!(flags2 & F_LNW) && flags) {
            pos += (cpt == ' ');
            while (!(flags2 & F_LNW) && flags2) flags2 = seg_flags(s, ++pos);
            uint32_t cpt2 = seg_cpt(s, pos);
            while (cpt2 == '\r' || cpt2 == '\n') cpt2 = seg_cpt(s, ++pos);
            seg_emit(s, pos);
            continue;
        }
        size_t n_ws = 0, last_end_r_or_n = 0;
        while (seg_flags(s, pos + n_ws) & UCPT_WHITESPACE) {
            uint32_t cpt2 = seg_cpt(s, pos + n_ws);
            if (cpt2 == '\r' || cpt2 == '\n') last_end_r_or_n = pos + n_ws + 1;
            n_ws++;
        }
        if (last_end_r_or_n > 0) { /* \s*[\r\n]+ */
            pos = last_end_r_or_n;
            seg_emit(s, pos);
            continue;
        }
        if (n_ws > 1 && seg_cpt(s, pos + n_ws) != OUT_OF_RANGE) {
            pos += n_ws - 1;
            seg_emit(s, pos);
            continue;
        }
        if (n_ws > 0) {
            pos += n_ws;
            seg_emit(s, pos);
            continue;
        }
        seg_emit(s, ++pos);
    }
}

/* Single-class regexes: a predicate per codepoint and whether a match is one codepoint or a maximal run. */
static int is_number(uint32_t cpt, uint16_t flags) {
    (void)cpt;
    return (flags & UCPT_NUMBER) != 0;
}

static int is_punct_or_extra(uint32_t cpt, uint16_t flags) {
    /* [\p{P}\$\+<=>\^~\|] — ASCII keeps its own category in llama.cpp's collapsed text, so \p{P} is exactly
     * the punctuation category; the extra ASCII symbols are listed in the regex. */
    if (flags & UCPT_PUNCTUATION) return 1;
    switch (cpt) {
    case '$': case '+': case '<': case '=': case '>': case '^': case '~': case '|': return 1;
    default: return 0;
    }
}

static void split_class(segment *s, int (*in_class)(uint32_t, uint16_t), int runs) {
    for (size_t pos = s->ini; pos < s->end;) {
        if (!in_class(s->cpts[pos], s->flags[pos])) {
            pos++;
            continue;
        }
        seg_emit(s, pos); /* the gap before the match */
        size_t end = pos + 1;
        if (runs)
            while (end < s->end && in_class(s->cpts[end], s->flags[end])) end++;
        seg_emit(s, end);
        pos = end;
    }
    seg_emit(s, s->end);
}

static void split_ascii_digit_triples(segment *s) {
    for (size_t pos = s->ini; pos + 3 <= s->end;) {
        const uint32_t *c = s->cpts + pos;
        if (c[0] >= '0' && c[0] <= '9' && c[1] >= '0' && c[1] <= '9' && c[2] >= '0' && c[2] <= '9') {
            seg_emit(s, pos);
            seg_emit(s, pos + 3);
            pos += 3;
        } else {
            pos++;
        }
    }
    seg_emit(s, s->end);
}

size_t pretokenize(const pretok_regex *stages, const uint32_t *cpts, const uint16_t *flags, size_t n,
                   uint32_t *lengths, uint32_t *scratch) {
    if (n == 0) return 0;
    /* pieces of the previous stage live in `in`, the new ones go to `out`; the buffers swap per stage */
    uint32_t *in = scratch, *out = lengths;
    size_t n_in = 1;
    in[0] = (uint32_t)n;
    for (const pretok_regex *stage = stages; *stage != PRETOK_END; stage++) {
        segment s = {.cpts = cpts, .flags = flags, .out = out, .n_out = 0};
        size_t start = 0;
        for (size_t i = 0; i < n_in; i++) {
            s.ini = s.prev_end = start;
            s.end = start + in[i];
            start = s.end;
            switch (*stage) {
            case PRETOK_GPT2: split_gpt2(&s); break;
            case PRETOK_LLAMA3: split_llama3(&s, 3); break;
            case PRETOK_QWEN2: split_llama3(&s, 1); break;
            case PRETOK_DIGIT_ISOLATED: split_class(&s, is_number, 0); break;
            case PRETOK_NUMBER_RUNS: split_class(&s, is_number, 1); break;
            case PRETOK_PUNCT_RUNS: split_class(&s, is_punct_or_extra, 1); break;
            case PRETOK_ASCII_DIGIT_3: split_ascii_digit_triples(&s); break;
            case PRETOK_END: break;
            }
        }
        n_in = s.n_out;
        uint32_t *t = in;
        in = out;
        out = t;
    }
    if (in != lengths)
        for (size_t i = 0; i < n_in; i++) lengths[i] = in[i];
    return n_in;
}
