"""The bert vocabulary (native/tokenizer/wordpiece.c): ids equal Hugging Face tokenizers' on the MiniLM folder as
our converter writes it, on every text of tests/data/embed_sentences.txt and at the 256-token truncation; the
normalizer and pre-tokenizer agree with tokenizers' on every codepoint; unit cases on tiny vocabularies."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFWriter
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers, pre_tokenizers

from qconv.runtime.tokenizer import Tokenizer
from tests.qconv_cli import run

SENTENCES = Path(__file__).parent.parent / "data" / "embed_sentences.txt"
METASPACE = "\u2581"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences() -> list[str]:
    return SENTENCES.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    from qconv.samples.minilm import cached_minilm

    return Path(cached_minilm())


@pytest.fixture(scope="module")
def minilm(minilm_folder, tmp_path_factory) -> Tokenizer:
    """The tokenizer of the MiniLM folder converted by `qconv to-gguf` (what qrun and Model.embed load)."""
    out = tmp_path_factory.mktemp("minilm") / "minilm-f32.gguf"
    code, output = run("to-gguf", minilm_folder, "--type", "f32", "-o", out)
    assert code == 0, output
    return Tokenizer.from_gguf(out)


@pytest.fixture(scope="module")
def hf(minilm_folder) -> HFTokenizer:
    tok = HFTokenizer.from_file(str(minilm_folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def write_bert_vocab(path: Path, tokens: list[str], lowercase: bool | None, strip_accents: bool | None) -> Path:
    """A tokenizer-only GGUF of a WordPiece vocabulary (tokens in tokenizer.json's form) in llama.cpp's phantom-space
    form; a None flag leaves its key out."""
    writer = GGUFWriter(str(path), "bert")
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    phantom = [t if t in SPECIALS else t[2:] if t.startswith("##") else METASPACE + t for t in tokens]
    writer.add_token_list(phantom)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    for key, name in (("bos", "[CLS]"), ("eos", "[SEP]"), ("unk", "[UNK]")):
        getattr(writer, f"add_{key}_token_id")(tokens.index(name))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    if lowercase is not None:
        writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
    if strip_accents is not None:
        writer.add_bool("tokenizer.ggml.normalizer.strip_accents", strip_accents)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


TINY = [*SPECIALS, "hello", "world", "Hello", "cafe", "café", "naive", "un", "##aff", "##able", "a", "##a", "!", ",",
        "中", "文", "'", "s", "x", "##x"]  # fmt: skip


def tiny(tmp_path: Path, lowercase: bool | None = True, strip_accents: bool | None = None) -> Tokenizer:
    name = f"tiny-{lowercase}-{strip_accents}.gguf"
    return Tokenizer.from_gguf(write_bert_vocab(tmp_path / name, TINY, lowercase, strip_accents))


def ids(*words: str) -> list[int]:
    return [TINY.index(w) for w in words]


# ---- the MiniLM folder against tokenizers ---------------------------------------------------------------------


def test_ids_equal_hugging_face_on_every_sentence(minilm, hf):
    texts = sentences()
    assert len(texts) >= 220
    mismatched = [t for t in texts if minilm.encode(t, add_special=True, parse_special=True) != hf.encode(t).ids]
    assert mismatched == [], f"{len(mismatched)} of {len(texts)} differ, first: {mismatched[0]!r}"


def test_truncation_at_256_equals_hugging_face(minilm, hf, minilm_folder):
    truncating = HFTokenizer.from_file(str(minilm_folder / "tokenizer.json"))
    truncating.no_padding()
    truncating.enable_truncation(max_length=256)
    texts = sentences()
    long_texts = [t for t in texts if len(hf.encode(t).ids) > 256]
    assert len(long_texts) >= 5
    for text in texts:
        ours = minilm.encode_truncated(text, 256)
        assert ours == truncating.encode(text).ids, text[:60]
    assert all(len(minilm.encode_truncated(t, 256)) == 256 for t in long_texts)


def _words_agree(ours: Tokenizer, normalizer, codepoints: list[int]) -> list[int]:
    """Codepoints (each alone between two letters) whose words differ from tokenizers' normalizer+pre-tokenizer."""
    pre = pre_tokenizers.BertPreTokenizer()
    bad = []
    chunk = 4096
    for i in range(0, len(codepoints), chunk):
        part = codepoints[i : i + chunk]
        text = "".join(f"a{chr(c)}b " for c in part)
        theirs = [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))]
        if ours.wordpiece_words(text) != theirs:  # narrow down to the codepoints
            for c in part:
                one = f"a{chr(c)}b"
                if ours.wordpiece_words(one) != [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(one))]:
                    bad.append(c)
    return bad


ALL_CODEPOINTS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def test_normalizer_and_pre_tokenizer_agree_on_every_codepoint(minilm):
    bad = _words_agree(minilm, normalizers.BertNormalizer(lowercase=True), ALL_CODEPOINTS)
    assert bad == [], [hex(c) for c in bad[:20]]


def test_cased_normalizer_agrees_on_every_codepoint(tmp_path):
    cased = tiny(tmp_path, lowercase=False, strip_accents=False)
    normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    bad = _words_agree(cased, normalizer, ALL_CODEPOINTS)
    assert bad == [], [hex(c) for c in bad[:20]]


def test_lowercase_without_stripping_agrees_on_every_codepoint(tmp_path):
    keeping = tiny(tmp_path, lowercase=True, strip_accents=False)
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    bad = _words_agree(keeping, normalizer, ALL_CODEPOINTS)
    assert bad == [], [hex(c) for c in bad[:20]]


# ---- unit cases on a tiny vocabulary --------------------------------------------------------------------------


def test_cls_and_sep_wrap_the_pieces(tmp_path):
    tok = tiny(tmp_path)
    assert tok.model_name == "bert"
    assert tok.encode("Hello, world!") == ids("[CLS]", "hello", ",", "world", "!", "[SEP]")
    assert tok.encode("Hello, world!", add_special=False) == ids("hello", ",", "world", "!")
    assert tok.encode("") == ids("[CLS]", "[SEP]")


def test_greedy_longest_match_with_continuations(tmp_path):
    tok = tiny(tmp_path)
    assert tok.encode("unaffable", add_special=False) == ids("un", "##aff", "##able")
    assert tok.encode("aaa", add_special=False) == ids("a", "##a", "##a")
    assert tok.encode("unaffablez world", add_special=False) == ids("[UNK]", "world")  # not coverable: one [UNK]


def test_words_over_100_characters_are_unknown(tmp_path):
    tok = tiny(tmp_path)
    assert tok.encode("x" * 100, add_special=False) == ids("x") + ids("##x") * 99
    assert tok.encode("x" * 101 + " hello", add_special=False) == ids("[UNK]", "hello")


def test_accents_are_stripped_only_when_asked(tmp_path):
    assert tiny(tmp_path).encode("Café NAÏVE", add_special=False) == ids("cafe", "naive")  # absent key: as lowercase
    assert tiny(tmp_path, True, True).encode("café", add_special=False) == ids("cafe")
    assert tiny(tmp_path, True, False).encode("CAFÉ naïve", add_special=False) == ids("café", "[UNK]")


def test_lowercase_off_keeps_case(tmp_path):
    tok = tiny(tmp_path, lowercase=False, strip_accents=False)
    assert tok.encode("Hello hello HELLO", add_special=False) == ids("Hello", "hello", "[UNK]")
    assert tok.wordpiece_words("Café") == ["Café"]


def test_cjk_and_punctuation_split_into_words(tmp_path):
    tok = tiny(tmp_path)
    assert tok.wordpiece_words("中文abc!?x's") == ["中", "文", "abc", "!", "?", "x", "'", "s"]
    assert tok.encode("中文", add_special=False) == ids("中", "文")
    assert tok.wordpiece_words("a\u00a0b\u3000c\u200bd\te") == ["a", "b", "c" + "d", "e"]  # ZWSP is dropped


def test_special_tokens_in_the_text(tmp_path):
    tok = tiny(tmp_path)
    assert tok.encode("hello[SEP]world", add_special=False, parse_special=True) == ids("hello", "[SEP]", "world")
    assert tok.encode("hello[SEP]", add_special=False) == ids("hello", "[UNK]", "[UNK]", "[UNK]")


def test_encode_truncated_keeps_the_specials(tmp_path):
    tok = tiny(tmp_path)
    text = "hello world " * 10
    assert tok.encode_truncated(text, 5) == ids("[CLS]", "hello", "world", "hello", "[SEP]")
    assert tok.encode_truncated(text, 1000) == tok.encode(text)
    assert tok.encode_truncated(text, 2) == ids("[CLS]", "[SEP]")
    assert tok.encode_truncated(text, 1) == ids("[CLS]")
    assert tok.encode_truncated(text, 0) == []


def test_encode_truncated_on_decoder_vocabularies(smollm2_package_gguf):
    tok = Tokenizer.from_gguf(smollm2_package_gguf)
    text = "The quick brown fox jumps over the lazy dog. " * 5
    full = tok.encode(text)
    cut = tok.encode_truncated(text, 7)
    assert len(cut) == 7 and cut == full[: 7 - int(tok.add_eos)] + ([tok.eos] if tok.add_eos else [])
    assert tok.encode_truncated(text, 10_000) == full


def test_decode_joins_continuations(tmp_path):
    tok = tiny(tmp_path)
    assert tok.decode(tok.encode("unaffable, world!"), remove_special=True) == "unaffable, world!"


def test_hostile_bytes_do_not_break_it(tmp_path):
    tok = tiny(tmp_path)
    for data in (b"\xff\xfe", b"\xe4\xb8", b"a\x00b", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"x" * 100_000):
        out = tok.encode(data)
        assert out[0] == tok.bos and out[-1] == tok.eos and all(0 <= i < tok.n_vocab for i in out)
    assert tok.encode(b"a\xffa", add_special=False) == ids("a", "##a")  # U+FFFD is dropped


def test_fuzz_target_over_bert_seeds(tmp_path):
    """The tokenizer fuzz target's plain runner (ASan/UBSan) on a bert vocabulary over the seeds and sentences."""
    from tests.fuzz_seeds import TEXT_SEEDS
    from tests.native.test_fuzz_targets import plain_runner, run_clean, write_inputs
    from tests.native_sources import library_sources_in

    exe = plain_runner(tmp_path, "fuzz_tokenizer", library_sources_in("tokenizer", "loader", "base"))
    vocabs = tmp_path / "vocab"
    vocabs.mkdir()
    write_bert_vocab(vocabs / "tiny-bert.gguf", TINY, True, None)
    texts = [*TEXT_SEEDS, *(t.encode() for t in sentences()[::10]), b"x" * 300, "é".encode() * 200]
    inputs = {f"t{i}-{pick}": bytes([pick]) + text for i, text in enumerate(texts) for pick in (0, 0x85, 0xBF)}
    run_clean(exe, write_inputs(tmp_path, inputs), {"QRT_FUZZ_VOCABS": str(vocabs)})
