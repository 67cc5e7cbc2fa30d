"""Generate native/tokenizer/wordpiece_tables.c: the per-codepoint data of the BERT normalizer and pre-tokenizer.

Run from the project root with Python 3.13 (its unicodedata is Unicode 15.1, as for gen_unicode_tables.py):
    python3.13 native/tokenizer/gen_wordpiece_tables.py > native/tokenizer/wordpiece_tables.c

The contract is Hugging Face tokenizers' BertNormalizer + BertPreTokenizer (the `tokenizer.json` of every BERT
folder), which wordpiece.c follows step by step:
  clean_text      drop NUL, U+FFFD and "control" characters (general category Cc, Cf, Co or Cs, except \\t \\n \\r);
                  turn White_Space characters (and \\t \\n \\r) into a space;
  chinese chars   put a space on both sides of each codepoint in BERT's CJK ideograph ranges;
  strip_accents   NFD, then drop nonspacing marks (Mn);
  lowercase       each codepoint's full lowercase mapping (no context: a lone capital sigma becomes sigma);
  pre-tokenizer   split on whitespace; each punctuation codepoint (ASCII 33-47, 58-64, 91-96, 123-126, or general
                  category P*) is a word of its own.
The tokenizers crate does not take all of that from one Unicode version, and the ids must match it codepoint for
codepoint, so this script starts from Python's unicodedata (15.1) and applies the differences as explicit lists:
  - categories (control, Mn, punctuation) come from the unicode_categories 0.1 crate, which is Unicode 8.0: the
    codepoints given those categories after 8.0 are listed below (*_AFTER_8), and the three that changed category;
  - lowercasing is Rust's char::to_lowercase of the toolchain that built the tokenizers wheel (Unicode 16.0): the
    16.0 mappings of codepoints unassigned in 15.1 are listed (LOWERCASE_16);
  - NFD is the unicode-normalization-alignments crate, which lacks the one canonical decomposition added since
    (U+11938, Unicode 13.0).
The lists were read off tokenizers 0.23 by running its normalizer and pre-tokenizer on every codepoint;
tests/native/test_wordpiece.py repeats that comparison against our C code, so a tokenizers release that changes
them fails there.

Output: a range table of per-codepoint classes (WPM_* bits of wordpiece.h) and two mappings, lowercase and
"NFD without marks", each as runs (codepoints start, start + stride, ... map to out, out + step, ...) plus a short
list of codepoints that map to several. Hangul syllables decompose by the Unicode algorithm in wordpiece.c.
"""

import sys
import unicodedata

MAX_CODEPOINTS = 0x110000

WPM_DROP = 0x01
WPM_SPACE = 0x02
WPM_PUNCT = 0x04
WPM_CJK = 0x08
WPM_MARK = 0x10
WPM_HAS_LOWER = 0x20
WPM_HAS_STRIP = 0x40

# White_Space (PropList.txt), what Rust's char::is_whitespace tests.
WHITESPACE = {*range(0x0009, 0x000D + 1), *range(0x2000, 0x200A + 1)}
WHITESPACE |= {0x0020, 0x0085, 0x00A0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}

# BERT's "Chinese character" ranges as the tokenizers crate writes them (it leaves out U+2B820..U+2B91F).
CJK_RANGES = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
]

# Codepoints whose general category is Cf in 15.1 but that Unicode 8.0 did not assign.
CF_AFTER_8 = [(0x0890, 0x0891), (0x08E2, 0x08E2), (0x110CD, 0x110CD), (0x13430, 0x1343F)]

# Mn in 15.1, not Mn in Unicode 8.0 (unassigned then, or U+111C9 which was Po).
MN_AFTER_8 = [
    (0x07FD, 0x07FD),
    (0x0898, 0x089F),
    (0x08CA, 0x08E1),
    (0x09FE, 0x09FE),
    (0x0AFA, 0x0AFF),
    (0x0B55, 0x0B55),
    (0x0C04, 0x0C04),
    (0x0C3C, 0x0C3C),
    (0x0D00, 0x0D00),
    (0x0D3B, 0x0D3C),
    (0x0D81, 0x0D81),
    (0x0EBA, 0x0EBA),
    (0x0ECE, 0x0ECE),
    (0x180F, 0x180F),
    (0x1885, 0x1886),
    (0x1ABF, 0x1ACE),
    (0x1DF6, 0x1DFB),
    (0xA82C, 0xA82C),
    (0xA8C5, 0xA8C5),
    (0xA8FF, 0xA8FF),
    (0xA9BD, 0xA9BD),
    (0x10D24, 0x10D27),
    (0x10EAB, 0x10EAC),
    (0x10EFD, 0x10EFF),
    (0x10F46, 0x10F50),
    (0x10F82, 0x10F85),
    (0x11070, 0x11070),
    (0x11073, 0x11074),
    (0x110C2, 0x110C2),
    (0x111C9, 0x111C9),
    (0x111CF, 0x111CF),
    (0x1123E, 0x1123E),
    (0x11241, 0x11241),
    (0x1133B, 0x1133B),
    (0x11438, 0x1143F),
    (0x11442, 0x11444),
    (0x11446, 0x11446),
    (0x1145E, 0x1145E),
    (0x1182F, 0x11837),
    (0x11839, 0x1183A),
    (0x1193B, 0x1193C),
    (0x1193E, 0x1193E),
    (0x11943, 0x11943),
    (0x119D4, 0x119D7),
    (0x119DA, 0x119DB),
    (0x119E0, 0x119E0),
    (0x11A01, 0x11A0A),
    (0x11A33, 0x11A38),
    (0x11A3B, 0x11A3E),
    (0x11A47, 0x11A47),
    (0x11A51, 0x11A56),
    (0x11A59, 0x11A5B),
    (0x11A8A, 0x11A96),
    (0x11A98, 0x11A99),
    (0x11C30, 0x11C36),
    (0x11C38, 0x11C3D),
    (0x11C3F, 0x11C3F),
    (0x11C92, 0x11CA7),
    (0x11CAA, 0x11CB0),
    (0x11CB2, 0x11CB3),
    (0x11CB5, 0x11CB6),
    (0x11D31, 0x11D36),
    (0x11D3A, 0x11D3A),
    (0x11D3C, 0x11D3D),
    (0x11D3F, 0x11D45),
    (0x11D47, 0x11D47),
    (0x11D90, 0x11D91),
    (0x11D95, 0x11D95),
    (0x11D97, 0x11D97),
    (0x11EF3, 0x11EF4),
    (0x11F00, 0x11F01),
    (0x11F36, 0x11F3A),
    (0x11F40, 0x11F40),
    (0x11F42, 0x11F42),
    (0x13440, 0x13440),
    (0x13447, 0x13455),
    (0x16F4F, 0x16F4F),
    (0x16FE4, 0x16FE4),
    (0x1CF00, 0x1CF2D),
    (0x1CF30, 0x1CF46),
    (0x1E000, 0x1E006),
    (0x1E008, 0x1E018),
    (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024),
    (0x1E026, 0x1E02A),
    (0x1E08F, 0x1E08F),
    (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE),
    (0x1E2EC, 0x1E2EF),
    (0x1E4EC, 0x1E4EF),
    (0x1E944, 0x1E94A),
]
MN_BEFORE = [0x1734]  # Mn in 8.0, Mc since 14.0

# P* in 15.1, not P* in Unicode 8.0.
P_AFTER_8 = [
    (0x061D, 0x061D),
    (0x09FD, 0x09FD),
    (0x0A76, 0x0A76),
    (0x0C77, 0x0C77),
    (0x0C84, 0x0C84),
    (0x1B7D, 0x1B7E),
    (0x2E43, 0x2E4F),
    (0x2E52, 0x2E5D),
    (0x10EAD, 0x10EAD),
    (0x10F55, 0x10F59),
    (0x10F86, 0x10F89),
    (0x1144B, 0x1144F),
    (0x1145A, 0x1145B),
    (0x1145D, 0x1145D),
    (0x11660, 0x1166C),
    (0x116B9, 0x116B9),
    (0x1183B, 0x1183B),
    (0x11944, 0x11946),
    (0x119E2, 0x119E2),
    (0x11A3F, 0x11A46),
    (0x11A9A, 0x11A9C),
    (0x11A9E, 0x11AA2),
    (0x11B00, 0x11B09),
    (0x11C41, 0x11C45),
    (0x11C70, 0x11C71),
    (0x11EF7, 0x11EF8),
    (0x11F43, 0x11F4F),
    (0x11FFF, 0x11FFF),
    (0x12FF1, 0x12FF2),
    (0x16E97, 0x16E9A),
    (0x16FE2, 0x16FE2),
    (0x1E95E, 0x1E95F),
]
P_BEFORE = [0x166D, 0x111C9]  # Po in 8.0: So since 12.0, Mn since 11.0

# Unicode 16.0 lowercase mappings of codepoints unassigned in 15.1: (first, last, first's lowercase).
LOWERCASE_16 = [
    (0x1C89, 0x1C89, 0x1C8A),
    (0xA7CB, 0xA7CB, 0x0264),
    (0xA7CC, 0xA7CC, 0xA7CD),
    (0xA7CE, 0xA7CE, 0xA7CF),
    (0xA7D2, 0xA7D2, 0xA7D3),
    (0xA7D4, 0xA7D4, 0xA7D5),
    (0xA7DA, 0xA7DA, 0xA7DB),
    (0xA7DC, 0xA7DC, 0x019B),
    (0x10D50, 0x10D65, 0x10D70),
    (0x16EA0, 0x16EB8, 0x16EBB),
]

NFD_UNKNOWN = {0x11938}  # decomposition added in Unicode 13.0, after the normalization crate's data

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


def expand(ranges):
    return {c for first, last in ranges for c in range(first, last + 1)}


def is_surrogate(cpt):
    return 0xD800 <= cpt <= 0xDFFF


def hf_sets():
    """The control, Mn and punctuation sets as the tokenizers crate sees them."""
    cf_after, mn_after, p_after = expand(CF_AFTER_8), expand(MN_AFTER_8), expand(P_AFTER_8)
    control, marks, punct = set(), set(), set()
    for cpt in range(MAX_CODEPOINTS):
        cat = unicodedata.category(chr(cpt))
        if cat in ("Cc", "Co", "Cs") or (cat == "Cf" and cpt not in cf_after):
            control.add(cpt)
        if cat == "Mn" and cpt not in mn_after:
            marks.add(cpt)
        if cat.startswith("P") and cpt not in p_after:
            punct.add(cpt)
    marks.update(MN_BEFORE)
    punct.update(P_BEFORE)
    punct.update(c for c in range(0x21, 0x7F) if chr(c) in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    control -= {0x09, 0x0A, 0x0D}
    return control, marks, punct


def lowercase(cpt):
    for first, last, out in LOWERCASE_16:
        if first <= cpt <= last:
            return [out + cpt - first]
    if is_surrogate(cpt):
        return [cpt]
    return [ord(c) for c in chr(cpt).lower()]


def strip(cpt, marks):
    """NFD without the marks (Hangul syllables are left to the algorithm in C)."""
    if is_surrogate(cpt) or cpt in NFD_UNKNOWN or HANGUL_FIRST <= cpt <= HANGUL_LAST:
        return [cpt]
    return [ord(c) for c in unicodedata.normalize("NFD", chr(cpt)) if ord(c) not in marks]


def classes(control, marks, punct, lower, stripped):
    cjk = expand(CJK_RANGES)
    out = []
    for cpt in range(MAX_CODEPOINTS):
        flags = 0
        if cpt == 0 or cpt == 0xFFFD or cpt in control:
            flags = WPM_DROP
        elif cpt in WHITESPACE or cpt in (0x09, 0x0A, 0x0D):
            flags = WPM_SPACE
        else:
            if cpt in punct:
                flags |= WPM_PUNCT
            if cpt in cjk:
                flags |= WPM_CJK
            if cpt in marks:
                flags |= WPM_MARK
            if lower[cpt] != [cpt]:
                flags |= WPM_HAS_LOWER
            if cpt not in marks and stripped[cpt] != [cpt]:
                flags |= WPM_HAS_STRIP
        out.append(flags)
    return out


def runs(single):
    """{cpt: out} as runs (start, count, stride, out, step): start + k*stride -> out + k*step, k < count. Runs
    grow in codepoint order by the next mapped codepoint only, so a codepoint a stride-2 run steps over is not in
    `single` and the spans of the runs are disjoint: the C lookup takes the last run starting at or before a
    codepoint."""
    result = []
    for cpt in sorted(single):
        if result:
            start, count, stride, first, step = result[-1]
            if count == 1 and cpt - start <= 2 and -128 <= single[cpt] - first <= 127:
                result[-1] = (start, 2, cpt - start, first, single[cpt] - first)
                continue
            if count > 1 and cpt == start + count * stride and single[cpt] == first + count * step and count < 0xFFFF:
                result[-1] = (start, count + 1, stride, first, step)
                continue
        result.append((cpt, 1, 1, single[cpt], 0))
    return result


def write_mapping(out, name, mapping):
    single = {c: m[0] for c, m in mapping.items() if len(m) == 1}
    multi = sorted((c, m) for c, m in mapping.items() if len(m) != 1)
    rs = runs(single)
    out(f"const uint32_t qrt_wpm_{name}_n_runs = {len(rs)};\n")
    out(f"const wpm_map_run qrt_wpm_{name}_runs[{len(rs)}] = {{\n")
    for i in range(0, len(rs), 3):
        row = " ".join(f"{{0x{s:05X}, {n}, {st}, {sp}, 0x{o:05X}}}," for s, n, st, o, sp in rs[i : i + 3])
        out("    " + row + "\n")
    out("};\n")
    out(f"const uint32_t qrt_wpm_{name}_n_multi = {len(multi)};\n")
    out(f"const wpm_map_multi qrt_wpm_{name}_multi[{max(len(multi), 1)}] = {{\n")
    for c, m in multi:
        assert 2 <= len(m) <= 3, (hex(c), m)
        padded = [*m, 0, 0][:3]
        out(f"    {{0x{c:05X}, {{0x{padded[0]:05X}, 0x{padded[1]:05X}, 0x{padded[2]:05X}}}, {len(m)}}},\n")
    if not multi:
        out("    {0, {0, 0, 0}, 0},\n")
    out("};\n\n")


def main() -> None:
    control, marks, punct = hf_sets()
    lower = [lowercase(c) for c in range(MAX_CODEPOINTS)]
    stripped = [strip(c, marks) for c in range(MAX_CODEPOINTS)]
    flags = classes(control, marks, punct, lower, stripped)
    starts = [0] + [c for c in range(1, MAX_CODEPOINTS) if flags[c] != flags[c - 1]]
    # what one codepoint can become: stripped, then each part lowercased (a Hangul syllable: 3 jamo)
    longest = max(3, *(sum(len(lower[d]) for d in stripped[c]) for c in range(MAX_CODEPOINTS)))
    out = sys.stdout.write
    out("/* wordpiece_tables.c — GENERATED by native/tokenizer/gen_wordpiece_tables.py; do not edit.\n")
    out(f" * Unicode {unicodedata.unidata_version} (Python {sys.version.split()[0]} unicodedata) with the tokenizers\n")
    out(" * crate's differences listed in the generator. */\n")
    out('#include "wordpiece.h"\n\n')
    out(f'_Static_assert(WPM_MAX_EXPANSION == {longest}, "regenerate wordpiece_tables.c");\n\n')
    out(f"const uint32_t qrt_wpm_n_ranges = {len(starts)};\n\n")
    out("/* Range i covers [qrt_wpm_range_start[i], qrt_wpm_range_start[i + 1]). */\n")
    out(f"const uint32_t qrt_wpm_range_start[{len(starts)}] = {{\n")
    for i in range(0, len(starts), 8):
        out("    " + " ".join(f"0x{s:06X}," for s in starts[i : i + 8]) + "\n")
    out("};\n\n")
    out(f"const uint8_t qrt_wpm_range_class[{len(starts)}] = {{\n")
    for i in range(0, len(starts), 16):
        out("    " + " ".join(f"0x{flags[s]:02X}," for s in starts[i : i + 16]) + "\n")
    out("};\n\n")
    write_mapping(out, "lower", {c: lower[c] for c in range(MAX_CODEPOINTS) if flags[c] & WPM_HAS_LOWER})
    write_mapping(out, "strip", {c: stripped[c] for c in range(MAX_CODEPOINTS) if flags[c] & WPM_HAS_STRIP})


if __name__ == "__main__":
    main()
