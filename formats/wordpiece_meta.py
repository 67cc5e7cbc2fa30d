"""BERT's WordPiece tokenizer (``tokenizer.json``, or ``vocab.txt`` + ``tokenizer_config.json``) -> the GGUF
``tokenizer.*`` metadata of llama.cpp's WPM vocabulary (``tokenizer.ggml.model = "bert"``).

llama.cpp's WPM tokenizer (src/llama-vocab.cpp, llm_tokenizer_wpm_session) finds a word's pieces by longest match
on "▁" + word, so the vocabulary is stored in "phantom space" form, as its converter (conversion/bert.py) writes it:
a control token ([CLS], [SEP], [PAD], [UNK], [MASK]) as is, a continuation piece "##x" as "x", any other token t as
"▁t". Its normaliser is the BertNormalizer (clean text, split CJK characters, lower-case, strip accents); the two
switches are stored (``tokenizer.ggml.normalizer.lowercase`` and ``.strip_accents``), the rest is fixed, so a
tokenizer whose normaliser or pre-tokenizer differs from BERT's is refused rather than converted to a file that
tokenizes otherwise. Encoding always adds [CLS] (bos) before and [SEP] after the text.

Compared with the file llama.cpp's converter writes for all-MiniLM-L6-v2 (test_same_as_llama_cpp_converter in
tests/converter/test_bert_convert.py), tokens, token types and special ids are the same; the differences are
deliberate:
- tokenizer.ggml.pre is "default", not the "jina-v2-en" its text-hash table guesses: llama.cpp reads pre only for
  BPE vocabularies (llama_vocab::impl::load), so the name has no effect on WPM.
- tokenizer.ggml.normalizer.strip_accents is written (resolved: HF's null means "as lowercase"); llama.cpp's
  converter leaves it out and its loader then defaults it to lowercase, the same value for null.
- tokenizer.ggml.add_sep_token is not written (llama.cpp's converter writes false): WPM encoding appends [SEP]
  whenever specials are added, whatever the flag says.
- tokenizer.ggml.cls_token_id is written (= bos) for readers that look it up; llama.cpp ignores it.
"""

from __future__ import annotations

from pathlib import Path

from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.printable import shown
from qconv.formats.tokenizer_meta import (
    SPECIAL_TOKENS_MAP,
    SPIECE_SPACE,
    TOKEN_CONTROL,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    TokenizerMeta,
    _check_unique,
    _flatten,
    _read_json,
    _read_vocab,
    _template_ends,
    _token_content,
    _Vocab,
)

VOCAB_TXT = "vocab.txt"
CONTINUATION = "##"  # llama.cpp's phantom-space form drops exactly this prefix
# BertTokenizer's special tokens and their defaults (transformers' tokenization_bert.py)
SPECIAL_DEFAULTS = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}


def phantom_space(token: str, token_type: int) -> str:
    """A WordPiece token as llama.cpp's WPM vocabulary spells it."""
    if token_type == TOKEN_CONTROL:
        return token
    if token.startswith(CONTINUATION):
        return token[len(CONTINUATION) :]
    return SPIECE_SPACE + token


def _normalizer_flags(tokenizer_json: dict, where: str) -> tuple[bool, bool]:
    """(lowercase, strip_accents) of a BertNormalizer; any other normaliser is refused."""
    steps = _flatten(tokenizer_json.get("normalizer"), "normalizers")
    if len(steps) != 1 or steps[0].get("type") != "BertNormalizer":
        found = [s.get("type") for s in steps] or "none"
        raise FormatError(f"{where}: normalizer {shown(found)} is not supported for WordPiece; expected BertNormalizer")
    normalizer = steps[0]
    for switch in ("clean_text", "handle_chinese_chars"):
        if normalizer.get(switch, True) is not True:
            raise FormatError(
                f"{where}: BertNormalizer {switch}={shown(normalizer[switch])}; llama.cpp always applies it"
            )
    lowercase = normalizer.get("lowercase", True)
    strip_accents = normalizer.get("strip_accents")
    for name, value in (("lowercase", lowercase), ("strip_accents", strip_accents)):
        if value is not None and not isinstance(value, bool):
            raise FormatError(f"{where}: BertNormalizer {name} must be true, false or null, found {shown(value)}")
    return lowercase, lowercase if strip_accents is None else strip_accents


def _template_specials(tokenizer_json: dict, vocab: _Vocab, where: str) -> tuple[int, int]:
    """(cls id, sep id) the post-processor puts around one text: llama.cpp's WPM always adds them."""
    steps = _flatten(tokenizer_json.get("post_processor"), "processors")
    if len(steps) == 1 and steps[0].get("type") == "BertProcessing":
        ids = []
        for key in ("cls", "sep"):
            pair = steps[0].get(key)
            if not (isinstance(pair, list) and len(pair) == 2 and vocab.ids.get(pair[0]) == pair[1]):
                raise FormatError(f"{where}: BertProcessing {key} {shown(pair)} is not [token, id] of the vocab")
            ids.append(pair[1])
        return ids[0], ids[1]
    ends = _template_ends(tokenizer_json.get("post_processor"), vocab, where)
    if not ends.known or ends.first is None or ends.last is None:
        raise FormatError(
            f"{where}: the post_processor does not put one special token before and one after a text ([CLS] ... "
            "[SEP]); llama.cpp's bert always adds them"
        )
    return ends.first, ends.last


def _special_id(name: str, sources: list[tuple[str, dict | None]], vocab: _Vocab) -> int | None:
    for file_name, source in sources:
        text = _token_content((source or {}).get(f"{name}_token"))
        if text is not None:
            if text not in vocab.ids:
                raise FormatError(f"{file_name}: {name}_token {text!r} is not a token of the vocabulary")
            return vocab.ids[text]
    return None


def _from_tokenizer_json(model_dir: Path, tokenizer_json: dict, vocab_size: int) -> TokenizerMeta:
    where = str(model_dir / TOKENIZER_JSON)
    model = tokenizer_json.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        found = model.get("type") if isinstance(model, dict) else None
        raise FormatError(
            f"{where}: tokenizer model type '{shown(found)}' is not WordPiece; a BERT encoder needs a WordPiece "
            "tokenizer (llama.cpp's bert vocabulary)"
        )
    prefix = model.get("continuing_subword_prefix", CONTINUATION)
    if prefix != CONTINUATION:
        raise FormatError(f"{where}: continuing_subword_prefix {shown(prefix)}; llama.cpp's bert vocabulary needs '##'")
    pre = _flatten(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
    if [p.get("type") for p in pre] != ["BertPreTokenizer"]:
        found = [p.get("type") for p in pre] or "none"
        raise FormatError(f"{where}: pre_tokenizer {shown(found)} is not supported; expected BertPreTokenizer")
    lowercase, strip_accents = _normalizer_flags(tokenizer_json, where)
    vocab = _read_vocab(tokenizer_json, vocab_size, where)
    cls_id, sep_id = _template_specials(tokenizer_json, vocab, where)
    unk = model.get("unk_token")
    if unk not in vocab.ids:
        raise FormatError(f"{where}: WordPiece unk_token {shown(unk)} is not a token of the vocabulary")
    config = _read_json(model_dir, TOKENIZER_CONFIG, required=False)
    special_map = _read_json(model_dir, SPECIAL_TOKENS_MAP, required=False)
    sources = [(TOKENIZER_CONFIG, config), (SPECIAL_TOKENS_MAP, special_map)]
    pad_id = _special_id("pad", sources, vocab)
    padding = tokenizer_json.get("padding")
    if pad_id is None and isinstance(padding, dict) and padding.get("pad_token") in vocab.ids:
        pad_id = vocab.ids[padding["pad_token"]]
    return _meta(vocab, where, lowercase, strip_accents, cls_id, sep_id, vocab.ids[unk], pad_id,
                 _special_id("mask", sources, vocab))  # fmt: skip


def _from_vocab_txt(model_dir: Path, vocab_size: int) -> TokenizerMeta:
    """vocab.txt (one token per line, the line number is the id) with BertTokenizer's settings from
    tokenizer_config.json, as transformers' slow BertTokenizer reads them."""
    where = str(model_dir / VOCAB_TXT)
    lines = folder_files.read_text(model_dir, VOCAB_TXT).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    config = _read_json(model_dir, TOKENIZER_CONFIG, required=False) or {}
    special_map = _read_json(model_dir, SPECIAL_TOKENS_MAP, required=False) or {}
    for switch in ("do_basic_tokenize", "tokenize_chinese_chars"):
        if config.get(switch, True) is not True:
            raise FormatError(f"{TOKENIZER_CONFIG}: {switch}={shown(config[switch])}; llama.cpp always applies it")
    specials = {
        name: _token_content(config.get(f"{name}_token")) or _token_content(special_map.get(f"{name}_token")) or text
        for name, text in SPECIAL_DEFAULTS.items()
    }
    ids = {token.rstrip("\r"): token_id for token_id, token in enumerate(lines)}  # a repeated line: the last id
    missing = [text for name, text in specials.items() if name in ("unk", "sep", "cls") and text not in ids]
    if missing:
        raise FormatError(f"{where}: special token {missing[0]!r} is not in the vocabulary")
    added = [{"id": ids[t], "content": t, "special": True} for t in specials.values() if t in ids]
    vocab = _read_vocab({"model": {"vocab": ids}, "added_tokens": added}, vocab_size, where)
    lowercase = config.get("do_lower_case", True)
    strip_accents = config.get("strip_accents")
    for name, value in (("do_lower_case", lowercase), ("strip_accents", strip_accents)):
        if value is not None and not isinstance(value, bool):
            raise FormatError(f"{TOKENIZER_CONFIG}: {name} must be true, false or null, found {shown(value)}")
    return _meta(vocab, where, lowercase, lowercase if strip_accents is None else strip_accents,
                 ids[specials["cls"]], ids[specials["sep"]], ids[specials["unk"]], ids.get(specials["pad"]),
                 ids.get(specials["mask"]))  # fmt: skip


def _meta(
    vocab: _Vocab, where: str, lowercase: bool, strip_accents: bool, cls_id: int, sep_id: int, unk_id: int,
    pad_id: int | None, mask_id: int | None,
) -> TokenizerMeta:  # fmt: skip
    tokens = [phantom_space(t, kind) for t, kind in zip(vocab.tokens, vocab.token_types, strict=True)]
    _check_unique(tokens, where)
    return TokenizerMeta(
        model="bert",
        pre="default",
        tokens=tokens,
        token_types=vocab.token_types,
        scores=None,
        merges=None,
        bos_id=cls_id,
        eos_id=sep_id,
        unk_id=unk_id,
        pad_id=pad_id,
        add_bos=True,
        add_eos=True,
        sep_id=sep_id,
        mask_id=mask_id,
        cls_id=cls_id,
        lowercase=lowercase,
        strip_accents=strip_accents,
    )


def read_wordpiece_tokenizer(model_dir: Path, vocab_size: int) -> TokenizerMeta:
    """The bert GGUF tokenizer of an HF folder: tokenizer.json when there is one, else vocab.txt."""
    model_dir = Path(model_dir)
    tokenizer_json = _read_json(model_dir, TOKENIZER_JSON, required=False)
    if tokenizer_json is not None:
        return _from_tokenizer_json(model_dir, tokenizer_json, vocab_size)
    if folder_files.entry_exists(model_dir, VOCAB_TXT):
        return _from_vocab_txt(model_dir, vocab_size)
    raise FormatError(
        f"{model_dir}: no {TOKENIZER_JSON} and no {VOCAB_TXT} (a BERT encoder needs its WordPiece vocabulary)"
    )
