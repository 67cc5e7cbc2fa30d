"""formats.tokenizer_meta: HF tokenizer.json -> GGUF tokenizer metadata.

Unit tests run on small hand-made tokenizer.json files. The reference tests (``-m reference``) check the claim that
matters: for every string of tests/data/tokenizer_strings.json, llama.cpp tokenizing with the metadata we wrote gives
exactly the ids HF ``tokenizers`` gives for the tokenizer.json, on tokenizers trained here for every supported
pre-tokenizer and space handling, and on the real SmolLM2 and Gemma 3 vocabularies.
"""

from __future__ import annotations

import json
import re
import tempfile
import unicodedata
from pathlib import Path

import gguf
import pytest

from qconv.formats.errors import FormatError
from qconv.formats.tokenizer_meta import (
    BYTE_LEVEL_PRE_TOKENIZERS,
    LLAMA3_REGEX,
    QWEN2_REGEX,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
    TokenizerMeta,
    read_hf_tokenizer,
)

DATA = Path(__file__).resolve().parents[1] / "data"
SPIECE_SPACE = "\u2581"
STRINGS: list[str] = json.loads((DATA / "tokenizer_strings.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by unit and reference tests.


def write_folder(folder: Path, tokenizer_json: dict, files: dict[str, dict | str] | None = None) -> Path:
    """An HF model folder with tokenizer.json and other files (dicts are written as JSON, strings as text)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    for name, content in (files or {}).items():
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def n_tokens(tokenizer_json: dict) -> int:
    ids = list(tokenizer_json["model"]["vocab"].values()) + [t["id"] for t in tokenizer_json.get("added_tokens", [])]
    return max(ids) + 1


def write_vocab_gguf(meta: TokenizerMeta, path: Path) -> Path:
    """A GGUF with a llama architecture header, our tokenizer metadata and no tensors (llama.cpp's vocab_only load
    reads nothing more)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    meta.add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def byte_level(use_regex: bool = True, add_prefix_space: bool = False) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": use_regex}


def split_isolated(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def sequence(*steps: dict) -> dict:
    return {"type": "Sequence", "pretokenizers": list(steps)}


# The HF pre-tokenizers of the families each tokenizer.ggml.pre name stands for, as their tokenizer.json files
# spell them.
HF_PRE_TOKENIZERS = {
    "gpt-2": byte_level(),
    "smollm": sequence({"type": "Digits", "individual_digits": True}, byte_level()),
    "llama-bpe": sequence(split_isolated(LLAMA3_REGEX), byte_level(use_regex=False)),
    "qwen2": sequence(split_isolated(QWEN2_REGEX), byte_level(use_regex=False)),
}


def added(token_id: int, content: str, special: bool, normalized: bool = False) -> dict:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": normalized,
        "special": special,
    }


def tiny_byte_level(pre_tokenizer: dict | None = None, merge_lists: bool = False) -> dict:
    vocab = {"a": 0, "b": 1, "c": 2, "\u0120": 3, "ab": 4, "abc": 5, "\u0120a": 6, "<|endoftext|>": 7}
    merges = [["a", "b"], ["ab", "c"], ["\u0120", "a"]]
    return {
        "version": "1.0",
        "added_tokens": [added(7, "<|endoftext|>", special=True), added(8, "<tool>", special=False)],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer if pre_tokenizer is not None else HF_PRE_TOKENIZERS["smollm"],
        "post_processor": byte_level(),
        "decoder": byte_level(),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges if merge_lists else [" ".join(pair) for pair in merges],
        },
    }


BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
METASPACE_ALWAYS = {"type": "Metaspace", "replacement": SPIECE_SPACE, "prepend_scheme": "always", "split": True}
LLAMA2_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": SPIECE_SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_SPACE},
    ],
}
SPIECE_DECODER = {
    "type": "Sequence",
    "decoders": [
        {"type": "Replace", "pattern": {"String": SPIECE_SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ],
}


def tiny_sentencepiece(normalizer: dict | None = None, pre_tokenizer: dict | None = METASPACE_ALWAYS) -> dict:
    """<unk> <s> </s>, the 256 byte tokens, then characters and merged pieces."""
    pieces = ["<unk>", "<s>", "</s>", *BYTE_TOKENS, SPIECE_SPACE, "a", "b", "c", "ab", f"{SPIECE_SPACE}a", "abc"]
    pieces.append(f"{SPIECE_SPACE}{SPIECE_SPACE}")  # a normalized user-defined token: two spaces
    vocab = {piece: token_id for token_id, piece in enumerate(pieces)}
    return {
        "version": "1.0",
        "added_tokens": [
            added(0, "<unk>", special=True),
            added(1, "<s>", special=True),
            added(2, "</s>", special=True),
            added(len(pieces) - 1, pieces[-1], special=False, normalized=True),
        ],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": SPIECE_DECODER,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": ["a b", f"{SPIECE_SPACE} a", "ab c"],
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Byte-level BPE (gpt2).


def test_byte_level_tokens_types_merges(tmp_path):
    meta = read_hf_tokenizer(write_folder(tmp_path, tiny_byte_level()), vocab_size=9)
    assert meta.model == "gpt2"
    assert meta.pre == "smollm"
    assert meta.tokens == ["a", "b", "c", "\u0120", "ab", "abc", "\u0120a", "<|endoftext|>", "<tool>"]
    assert meta.token_types == [TOKEN_NORMAL] * 7 + [TOKEN_CONTROL, TOKEN_USER_DEFINED]
    assert meta.merges == ["a b", "ab c", "\u0120 a"]
    assert meta.scores is None
    assert meta.add_space_prefix is None
    # A ByteLevel post-processor adds nothing.
    assert (meta.add_bos, meta.add_eos) == (False, False)


def test_merges_list_form_equals_string_form(tmp_path):
    as_strings = read_hf_tokenizer(write_folder(tmp_path / "s", tiny_byte_level()), vocab_size=9)
    as_lists = read_hf_tokenizer(write_folder(tmp_path / "l", tiny_byte_level(merge_lists=True)), vocab_size=9)
    assert as_lists.merges == as_strings.merges == ["a b", "ab c", "\u0120 a"]


@pytest.mark.parametrize("name", sorted(HF_PRE_TOKENIZERS))
def test_pre_tokenizer_names_from_structure(tmp_path, name):
    meta = read_hf_tokenizer(write_folder(tmp_path, tiny_byte_level(HF_PRE_TOKENIZERS[name])), vocab_size=9)
    assert meta.pre == name


def test_every_table_row_has_a_structure_test():
    assert {row.name for row in BYTE_LEVEL_PRE_TOKENIZERS} == set(HF_PRE_TOKENIZERS)


def test_qwen2_nfc_normalizer_accepted_but_not_for_others(tmp_path):
    qwen = tiny_byte_level(HF_PRE_TOKENIZERS["qwen2"])
    qwen["normalizer"] = {"type": "NFC"}
    assert read_hf_tokenizer(write_folder(tmp_path / "q", qwen), vocab_size=9).pre == "qwen2"
    gpt2 = tiny_byte_level(HF_PRE_TOKENIZERS["gpt-2"])
    gpt2["normalizer"] = {"type": "NFC"}
    with pytest.raises(FormatError, match="unknown byte-level pre-tokenizer"):
        read_hf_tokenizer(write_folder(tmp_path / "g", gpt2), vocab_size=9)


@pytest.mark.parametrize(
    "pre_tokenizer",
    [
        sequence({"type": "Digits", "individual_digits": False}, byte_level()),  # grouped digits
        sequence(split_isolated(r"\p{N}{1,2}"), byte_level(use_regex=False)),  # another regex
        byte_level(add_prefix_space=True),  # llama.cpp never adds a prefix space for BPE
        sequence(byte_level(), {"type": "Punctuation", "behavior": "Isolated"}),
    ],
    ids=["digits-grouped", "other-regex", "prefix-space", "punctuation"],
)
def test_unknown_pre_tokenizer_lists_supported(tmp_path, pre_tokenizer):
    with pytest.raises(FormatError) as error:
        read_hf_tokenizer(write_folder(tmp_path, tiny_byte_level(pre_tokenizer)), vocab_size=9)
    message = str(error.value)
    assert "tokenizer.json" in message and "unknown byte-level pre-tokenizer" in message
    for row in BYTE_LEVEL_PRE_TOKENIZERS:
        assert row.name in message


def test_vocab_padded_with_unused_tokens(tmp_path):
    meta = read_hf_tokenizer(write_folder(tmp_path, tiny_byte_level()), vocab_size=12)
    assert meta.tokens[9:] == ["[PAD9]", "[PAD10]", "[PAD11]"]
    assert meta.token_types[9:] == [TOKEN_UNUSED] * 3
    assert len(meta.merges) == 3


def test_id_gap_inside_vocab_is_padded(tmp_path):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["added_tokens"][1]["id"] = 10  # <tool> at 10 leaves 8 and 9 empty
    meta = read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=11)
    assert meta.tokens[8:] == ["[PAD8]", "[PAD9]", "<tool>"]
    assert meta.token_types[8:] == [TOKEN_UNUSED, TOKEN_UNUSED, TOKEN_USER_DEFINED]


def test_fewer_embedding_rows_than_tokens_is_an_error(tmp_path):
    with pytest.raises(FormatError, match=r"tokenizer.json: token id 8 .* vocab_size 8"):
        read_hf_tokenizer(write_folder(tmp_path, tiny_byte_level()), vocab_size=8)


def test_merge_with_space_cannot_be_stored(tmp_path):
    tokenizer_json = tiny_byte_level(merge_lists=True)
    tokenizer_json["model"]["vocab"]["a b"] = 9
    tokenizer_json["model"]["merges"].append(["a", " b"])
    with pytest.raises(FormatError, match="contains a space"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=10)


def test_malformed_merge(tmp_path):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["model"]["merges"].append("abc")
    with pytest.raises(FormatError, match="merge 3 'abc'"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=9)


def test_added_token_contradicting_vocab(tmp_path):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["added_tokens"][0]["id"] = 0  # vocab says id 0 is "a"
    with pytest.raises(FormatError, match="added token '<|endoftext|>' has id 0"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=9)


def test_added_token_repeating_vocab_text(tmp_path):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["added_tokens"][1]["content"] = "abc"  # id 8, while the vocab has "abc" at 5
    with pytest.raises(FormatError, match="tokens 5 and 8 are both 'abc'"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=9)


# ---------------------------------------------------------------------------------------------------------------
# Errors about the file and the model type.


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FormatError, match=r"tokenizer.json: missing"):
        read_hf_tokenizer(tmp_path, vocab_size=10)


def test_invalid_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(FormatError, match=r"tokenizer.json: cannot read JSON"):
        read_hf_tokenizer(tmp_path, vocab_size=10)


def test_invalid_tokenizer_config(tmp_path):
    write_folder(tmp_path, tiny_byte_level(), {"tokenizer_config.json": "[1, 2]"})
    with pytest.raises(FormatError, match=r"tokenizer_config.json: expected a JSON object"):
        read_hf_tokenizer(tmp_path, vocab_size=9)


@pytest.mark.parametrize("model_type", ["WordPiece", "Unigram", "WordLevel"])
def test_unsupported_model_type(tmp_path, model_type):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["model"]["type"] = model_type
    with pytest.raises(FormatError, match=rf"tokenizer.json: tokenizer model type '{model_type}' is not supported"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=9)


def test_bpe_without_byte_level_or_byte_fallback(tmp_path):
    tokenizer_json = tiny_byte_level({"type": "Whitespace"})
    with pytest.raises(FormatError, match="without a ByteLevel pre-tokenizer and without byte_fallback"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=9)


@pytest.mark.parametrize(
    "option, value", [("continuing_subword_prefix", "##"), ("end_of_word_suffix", "</w>"), ("dropout", 0.1)]
)
def test_unsupported_bpe_options(tmp_path, option, value):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["model"][option] = value
    with pytest.raises(FormatError, match=option):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=9)


# ---------------------------------------------------------------------------------------------------------------
# SentencePiece-style BPE with byte fallback (llama).


def test_sentencepiece_tokens_types_scores(tmp_path):
    tokenizer_json = tiny_sentencepiece()
    meta = read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=n_tokens(tokenizer_json))
    assert meta.model == "llama"
    assert meta.pre is None and meta.merges is None
    ids = tokenizer_json["model"]["vocab"]
    assert meta.token_types[0] == TOKEN_UNKNOWN
    assert meta.token_types[1:3] == [TOKEN_CONTROL, TOKEN_CONTROL]
    assert meta.token_types[3:259] == [TOKEN_BYTE] * 256
    assert [meta.token_types[ids[p]] for p in (SPIECE_SPACE, "a", "ab", "abc")] == [TOKEN_NORMAL] * 4
    # Merge rank r -> score -r; tokens no merge makes score below every merge.
    assert meta.scores[ids["ab"]] == 0.0
    assert meta.scores[ids[f"{SPIECE_SPACE}a"]] == -1.0
    assert meta.scores[ids["abc"]] == -2.0
    assert meta.scores[ids["a"]] == meta.scores[ids["<0x41>"]] == -3.0
    assert meta.unk_id == 0
    assert meta.add_space_prefix is True
    # Without tokenizer_config.json, bos is the token the TemplateProcessing post-processor puts first.
    assert (meta.add_bos, meta.bos_id, meta.add_eos, meta.eos_id) == (True, 1, False, None)


def test_sentencepiece_special_ids_and_template(tmp_path):
    tokenizer_json = tiny_sentencepiece()
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "unk_token": "<unk>"}
    folder = write_folder(tmp_path, tokenizer_json, {"tokenizer_config.json": config})
    meta = read_hf_tokenizer(folder, vocab_size=n_tokens(tokenizer_json))
    assert (meta.bos_id, meta.eos_id, meta.unk_id, meta.pad_id) == (1, 2, 0, None)
    assert (meta.add_bos, meta.add_eos) == (True, False)


@pytest.mark.parametrize(
    "normalizer, pre_tokenizer, add_space_prefix",
    [
        (LLAMA2_NORMALIZER, None, True),
        ({"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_SPACE}, None, False),  # gemma
        (None, METASPACE_ALWAYS, True),
        (None, {**METASPACE_ALWAYS, "prepend_scheme": "first"}, True),
        (None, {**METASPACE_ALWAYS, "prepend_scheme": "never"}, False),
        (None, {"type": "Metaspace", "replacement": SPIECE_SPACE, "add_prefix_space": False}, False),  # old format
        (None, {"type": "Metaspace", "replacement": SPIECE_SPACE, "add_prefix_space": True}, True),
    ],
    ids=["llama2", "gemma", "always", "first", "never", "legacy-false", "legacy-true"],
)
def test_add_space_prefix(tmp_path, normalizer, pre_tokenizer, add_space_prefix):
    tokenizer_json = tiny_sentencepiece(normalizer, pre_tokenizer)
    meta = read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=n_tokens(tokenizer_json))
    assert meta.add_space_prefix is add_space_prefix


def test_normalized_user_defined_token_gets_plain_spaces(tmp_path):
    """With a Replace(' ', '▁') normalizer HF matches a normalized added token against '▁'-text; llama.cpp matches
    user-defined tokens in the raw text."""
    folder = write_folder(tmp_path / "n", tiny_sentencepiece(LLAMA2_NORMALIZER, None))
    last = n_tokens(tiny_sentencepiece())
    meta = read_hf_tokenizer(folder, vocab_size=last)
    assert (meta.tokens[-1], meta.token_types[-1]) == ("  ", TOKEN_USER_DEFINED)
    # With Metaspace the normalizer leaves spaces alone, so the token is matched literally: keep it.
    meta = read_hf_tokenizer(write_folder(tmp_path / "m", tiny_sentencepiece()), vocab_size=last)
    assert meta.tokens[-1] == SPIECE_SPACE * 2


def test_sentencepiece_missing_byte_tokens(tmp_path):
    tokenizer_json = tiny_sentencepiece()
    del tokenizer_json["model"]["vocab"]["<0x80>"]
    with pytest.raises(FormatError, match=r"1 byte tokens are missing \(first: <0x80>\)"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=n_tokens(tokenizer_json))


def test_sentencepiece_merge_result_not_in_vocab(tmp_path):
    tokenizer_json = tiny_sentencepiece()
    tokenizer_json["model"]["merges"].append("b c")
    with pytest.raises(FormatError, match="merge 3 \\('b', 'c'\\) makes 'bc', not in the vocab"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=n_tokens(tokenizer_json))


@pytest.mark.parametrize(
    "normalizer, pre_tokenizer",
    [
        ({"type": "NFKC"}, METASPACE_ALWAYS),
        (None, None),
        (None, byte_level()),
    ],
    ids=["nfkc", "no-space-marking", "byte-level"],
)
def test_sentencepiece_unsupported_space_handling(tmp_path, normalizer, pre_tokenizer):
    tokenizer_json = tiny_sentencepiece(normalizer, pre_tokenizer)
    with pytest.raises(FormatError, match="tokenizer.json: "):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), vocab_size=n_tokens(tokenizer_json))


# ---------------------------------------------------------------------------------------------------------------
# Special tokens, add_bos/add_eos, chat templates.


def test_special_tokens_from_config_map_and_generation_config(tmp_path):
    files = {
        "tokenizer_config.json": {"bos_token": {"content": "<|endoftext|>"}, "pad_token": None},
        "special_tokens_map.json": {"unk_token": "<|endoftext|>", "pad_token": "<tool>"},
        "generation_config.json": {"eos_token_id": [5, 7], "bos_token_id": 4},
    }
    meta = read_hf_tokenizer(write_folder(tmp_path, tiny_byte_level(), files), vocab_size=9)
    assert (meta.bos_id, meta.eos_id, meta.unk_id, meta.pad_id) == (7, 5, 7, 8)


def test_special_token_not_in_vocab(tmp_path):
    folder = write_folder(tmp_path, tiny_byte_level(), {"tokenizer_config.json": {"eos_token": "<|im_end|>"}})
    with pytest.raises(FormatError, match="tokenizer_config.json: eos_token '<|im_end|>' is not a token"):
        read_hf_tokenizer(folder, vocab_size=9)


def test_generation_config_id_outside_vocab(tmp_path):
    folder = write_folder(tmp_path, tiny_byte_level(), {"generation_config.json": {"eos_token_id": 99}})
    with pytest.raises(FormatError, match="generation_config.json: eos_token_id 99 is outside"):
        read_hf_tokenizer(folder, vocab_size=9)


def bos_eos_template(bos: bool, eos: bool) -> dict:
    single = [{"Sequence": {"id": "A", "type_id": 0}}]
    if bos:
        single.insert(0, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}})
    if eos:
        single.append({"SpecialToken": {"id": "<tool>", "type_id": 0}})
    return {"type": "TemplateProcessing", "single": single, "pair": [], "special_tokens": {}}


@pytest.mark.parametrize("bos, eos", [(True, False), (False, True), (True, True), (False, False)])
def test_add_bos_eos_from_post_processor(tmp_path, bos, eos):
    tokenizer_json = tiny_byte_level()
    # Llama 3 style: ByteLevel then TemplateProcessing.
    tokenizer_json["post_processor"] = {
        "type": "Sequence",
        "processors": [byte_level(), bos_eos_template(bos, eos)],
    }
    config = {"bos_token": "<|endoftext|>", "eos_token": "<tool>"}
    meta = read_hf_tokenizer(write_folder(tmp_path, tokenizer_json, {"tokenizer_config.json": config}), 9)
    assert (meta.add_bos, meta.add_eos) == (bos, eos)


def test_post_processor_adding_another_token_than_bos(tmp_path):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["post_processor"] = bos_eos_template(True, False)
    config = {"bos_token": "<tool>"}
    with pytest.raises(FormatError, match="post_processor adds token 7 but bos_token is 8"):
        read_hf_tokenizer(write_folder(tmp_path, tokenizer_json, {"tokenizer_config.json": config}), 9)


def test_add_bos_eos_config_overrides_post_processor(tmp_path):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["post_processor"] = bos_eos_template(True, False)
    config = {"bos_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": True}
    meta = read_hf_tokenizer(write_folder(tmp_path, tokenizer_json, {"tokenizer_config.json": config}), 9)
    assert (meta.add_bos, meta.add_eos) == (False, True)


def test_unknown_post_processor_leaves_add_bos_unset(tmp_path):
    tokenizer_json = tiny_byte_level()
    tokenizer_json["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]}
    meta = read_hf_tokenizer(write_folder(tmp_path, tokenizer_json), 9)
    assert (meta.add_bos, meta.add_eos) == (None, None)


def test_chat_template_sources(tmp_path):
    config = {"chat_template": "{{ messages }}"}
    meta = read_hf_tokenizer(write_folder(tmp_path / "c", tiny_byte_level(), {"tokenizer_config.json": config}), 9)
    assert meta.chat_template == "{{ messages }}" and meta.named_chat_templates == {}
    # A chat_template.jinja file is what transformers uses when both exist.
    files = {"tokenizer_config.json": config, "chat_template.jinja": "{% for m in messages %}{{ m }}{% endfor %}"}
    meta = read_hf_tokenizer(write_folder(tmp_path / "j", tiny_byte_level(), files), 9)
    assert meta.chat_template == files["chat_template.jinja"]
    named = {"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]}
    meta = read_hf_tokenizer(write_folder(tmp_path / "n", tiny_byte_level(), {"tokenizer_config.json": named}), 9)
    assert meta.chat_template == "D" and meta.named_chat_templates == {"tool_use": "T"}
    meta = read_hf_tokenizer(write_folder(tmp_path / "none", tiny_byte_level()), 9)
    assert meta.chat_template is None


# ---------------------------------------------------------------------------------------------------------------
# Writing: every key lands in the GGUF under llama.cpp's name.


def read_back(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))  # a file this test wrote
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


def test_add_to_writes_gpt2_keys(tmp_path):
    files = {
        "tokenizer_config.json": {"bos_token": "<|endoftext|>", "eos_token": "<tool>", "chat_template": "T"},
    }
    meta = read_hf_tokenizer(write_folder(tmp_path, tiny_byte_level(), files), 10)
    keys = read_back(write_vocab_gguf(meta, tmp_path / "v.gguf"))
    assert keys == {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": meta.tokens,
        "tokenizer.ggml.token_type": meta.token_types,
        "tokenizer.ggml.merges": meta.merges,
        "tokenizer.ggml.bos_token_id": 7,
        "tokenizer.ggml.eos_token_id": 8,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": "T",
    }


def test_add_to_writes_llama_keys(tmp_path):
    tokenizer_json = tiny_sentencepiece()
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "add_eos_token": True}
    meta = read_hf_tokenizer(write_folder(tmp_path, tokenizer_json, {"tokenizer_config.json": config}), 270)
    meta.named_chat_templates = {"rag": "R"}
    meta.chat_template = "D"
    keys = read_back(write_vocab_gguf(meta, tmp_path / "v.gguf"))
    assert keys["tokenizer.ggml.model"] == "llama"
    assert "tokenizer.ggml.pre" not in keys and "tokenizer.ggml.merges" not in keys
    assert keys["tokenizer.ggml.scores"] == pytest.approx(meta.scores)
    assert keys["tokenizer.ggml.token_type"] == meta.token_types
    assert len(keys["tokenizer.ggml.tokens"]) == 270
    assert [keys[f"tokenizer.ggml.{k}"] for k in ("bos_token_id", "eos_token_id", "unknown_token_id")] == [1, 2, 0]
    assert keys["tokenizer.ggml.padding_token_id"] == 0
    assert (keys["tokenizer.ggml.add_bos_token"], keys["tokenizer.ggml.add_eos_token"]) == (True, True)
    assert keys["tokenizer.ggml.add_space_prefix"] is True
    assert keys["tokenizer.chat_template"] == "D"
    assert keys["tokenizer.chat_template.rag"] == "R"


# ---------------------------------------------------------------------------------------------------------------
# Reference: llama.cpp with our metadata vs HF tokenizers with tokenizer.json, on every test string.

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# Without the special-token look-alikes: llama.cpp turns a normal token spelled like an end-of-turn marker (e.g. a
# learned "<end_of_turn>") into a control token, which no real vocabulary needs and HF would not follow.
TRAINING_TEXTS = [text for text in STRINGS if not re.search(r"<[^<>\s]+>", text)]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference tokenizer) is not installed")


@pytest.fixture(scope="module")
def hf_tokenizers():
    return pytest.importorskip("tokenizers", reason="HF tokenizers (the reference) is not installed")


def compare_with_llama_cpp(llama_cpp, hf_tokenizers, folder: Path, vocab_size: int) -> list[tuple[str, list, list]]:
    """(string, llama.cpp ids, HF ids) for every test string where the two disagree."""
    meta = read_hf_tokenizer(folder, vocab_size)
    model = llama_cpp.Llama(str(write_vocab_gguf(meta, folder / "vocab.gguf")), vocab_only=True, verbose=False)
    hf = hf_tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    mismatches = []
    for text in STRINGS:
        ours = model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        reference = hf.encode(text, add_special_tokens=False).ids
        if ours != reference:
            mismatches.append((text, ours, reference))
    return mismatches


def describe(mismatches: list[tuple[str, list, list]]) -> str:
    return "\n".join(f"{text!r}: llama.cpp {ours[:16]} HF {reference[:16]}" for text, ours, reference in mismatches)


def train(hf_tokenizers, skeleton: dict, trainer_options: dict) -> dict:
    """Train a BPE tokenizer.json on the test strings; ``skeleton`` gives the model options, normalizer and
    pre-tokenizer as tokenizer.json spells them."""
    skeleton = {"version": "1.0", **skeleton}
    skeleton["model"] = {"type": "BPE", "vocab": {}, "merges": [], **skeleton["model"]}
    tokenizer = hf_tokenizers.Tokenizer.from_str(json.dumps(skeleton))
    trainer = hf_tokenizers.trainers.BpeTrainer(show_progress=False, **trainer_options)
    tokenizer.train_from_iterator(TRAINING_TEXTS, trainer)
    return json.loads(tokenizer.to_str())


def train_byte_level(hf_tokenizers, pre: str) -> dict:
    # Llama 3's tokenizer.json sets ignore_merges, as llama.cpp does for llama-bpe.
    model = {"ignore_merges": pre == "llama-bpe"}
    trained = train(
        hf_tokenizers,
        {"model": model, "pre_tokenizer": HF_PRE_TOKENIZERS[pre], "decoder": byte_level()},
        {
            "vocab_size": 1500,
            "special_tokens": SPECIALS,
            "initial_alphabet": hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        },
    )
    trained["added_tokens"].append(added(n_tokens(trained), "<tool_call>", special=False))
    return trained


def train_sentencepiece(hf_tokenizers, normalizer: dict | None, pre_tokenizer: dict | None) -> dict:
    """Byte-fallback BPE as SentencePiece builds it: the special tokens, the 256 byte tokens, then the pieces; the
    alphabet is limited so that rare characters fall back to bytes."""
    trained = train(
        hf_tokenizers,
        {
            "model": {"unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True},
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "decoder": SPIECE_DECODER,
        },
        {"vocab_size": 1200, "special_tokens": SPECIALS, "limit_alphabet": 200},
    )
    vocab = trained["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.get)
    pieces = pieces[: len(SPECIALS)] + BYTE_TOKENS + pieces[len(SPECIALS) :]
    trained["model"]["vocab"] = {piece: token_id for token_id, piece in enumerate(pieces)}
    return trained


@pytest.mark.reference
@pytest.mark.parametrize("pre", sorted(HF_PRE_TOKENIZERS))
def test_trained_byte_level_matches_hf(tmp_path, llama_cpp, hf_tokenizers, pre):
    trained = train_byte_level(hf_tokenizers, pre)
    folder = write_folder(tmp_path, trained)
    assert read_hf_tokenizer(folder, n_tokens(trained)).pre == pre
    mismatches = compare_with_llama_cpp(llama_cpp, hf_tokenizers, folder, n_tokens(trained) + 3)
    assert not mismatches, f"{len(mismatches)}/{len(STRINGS)} strings differ:\n{describe(mismatches)}"


@pytest.mark.reference
def test_trained_qwen2_nfc_differs_only_on_non_nfc_text(tmp_path, llama_cpp, hf_tokenizers):
    """Qwen2's tokenizer.json normalizes to NFC, llama.cpp does not: exactly the strings not in NFC differ."""
    trained = train_byte_level(hf_tokenizers, "qwen2")
    trained["normalizer"] = {"type": "NFC"}
    folder = write_folder(tmp_path, trained)
    mismatches = compare_with_llama_cpp(llama_cpp, hf_tokenizers, folder, n_tokens(trained))
    not_nfc = [text for text in STRINGS if unicodedata.normalize("NFC", text) != text]
    assert not_nfc and [text for text, _, _ in mismatches] == not_nfc


SENTENCEPIECE_STYLES = {
    "llama2-normalizer": (LLAMA2_NORMALIZER, None),
    "metaspace-never": (None, {**METASPACE_ALWAYS, "prepend_scheme": "never"}),
}


@pytest.mark.reference
@pytest.mark.parametrize("style", sorted(SENTENCEPIECE_STYLES))
def test_trained_sentencepiece_matches_hf(tmp_path, llama_cpp, hf_tokenizers, style):
    trained = train_sentencepiece(hf_tokenizers, *SENTENCEPIECE_STYLES[style])
    folder = write_folder(tmp_path, trained)
    mismatches = compare_with_llama_cpp(llama_cpp, hf_tokenizers, folder, n_tokens(trained))
    assert not mismatches, f"{len(mismatches)}/{len(STRINGS)} strings differ:\n{describe(mismatches)}"


def complete_merges(tokenizer_json: dict) -> dict:
    """The same vocabulary with the merge list SentencePiece-derived tokenizer.json files have: every split of a
    piece into two pieces, ranked by the piece's score, as HF's SentencePieceExtractor writes them."""
    from qconv.formats.tokenizer_json import sentencepiece_merges

    with tempfile.TemporaryDirectory() as scratch:
        meta = read_hf_tokenizer(write_folder(Path(scratch), tokenizer_json), n_tokens(tokenizer_json))
    completed = json.loads(json.dumps(tokenizer_json))
    completed["model"]["merges"] = sentencepiece_merges(meta.tokens, meta.token_types, meta.scores)
    return completed


@pytest.mark.reference
def test_sentencepiece_limit_incomplete_merge_list(tmp_path, llama_cpp, hf_tokenizers):
    """The boundary of the scores-from-ranks claim: llama.cpp's SPM tokenizer merges *any* adjacent pair whose
    concatenation is a token, HF only the pairs of the list. With merges (b c), (a b), (ab c), HF turns "abc" into
    a + bc and stops ((a, bc) is no merge); llama.cpp goes on to abc. No choice of scores can avoid this; a merge list
    holding every split of every piece (as in tokenizer.json files converted from SentencePiece) can."""
    incomplete = tiny_sentencepiece(None, {**METASPACE_ALWAYS, "prepend_scheme": "never"})
    vocab = incomplete["model"]["vocab"]
    incomplete["added_tokens"].pop()  # the user-defined "▁▁" gives its id to "bc"
    vocab["bc"] = vocab.pop(SPIECE_SPACE * 2)
    incomplete["model"]["merges"] = ["b c", "a b", "ab c"]
    size = n_tokens(incomplete)

    def ids(tokenizer_json: dict, folder: Path) -> tuple[list[int], list[int]]:
        write_folder(folder, tokenizer_json)
        meta = read_hf_tokenizer(folder, size)
        model = llama_cpp.Llama(str(write_vocab_gguf(meta, folder / "v.gguf")), vocab_only=True, verbose=False)
        hf = hf_tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        return model.tokenize(b"abc", add_bos=False, special=True), hf.encode("abc", add_special_tokens=False).ids

    ours, reference = ids(incomplete, tmp_path / "incomplete")
    assert reference == [vocab["a"], vocab["bc"]] and ours == [vocab["abc"]]
    ours, reference = ids(complete_merges(incomplete), tmp_path / "complete")
    assert ours == reference == [vocab["abc"]]


def metaspace_prefix_differs(text: str, scheme: str) -> bool:
    """Where llama.cpp's SPM tokenizer cannot follow HF's Metaspace pre-tokenizer: llama.cpp puts a space before
    every text segment (the text and each piece after a special token), while Metaspace prepends nothing to a segment
    that already starts with a space or '▁', and with prepend_scheme 'first' only to the very first segment."""
    segments = re.split("|".join(re.escape(s) for s in SPECIALS), text)
    if any(segment.startswith((" ", SPIECE_SPACE)) for segment in segments):
        return True
    return scheme == "first" and any(segments[1:])


@pytest.mark.reference
@pytest.mark.parametrize("scheme", ["always", "first"])
def test_trained_metaspace_differs_only_where_llama_cpp_cannot_follow(tmp_path, llama_cpp, hf_tokenizers, scheme):
    trained = train_sentencepiece(hf_tokenizers, None, {**METASPACE_ALWAYS, "prepend_scheme": scheme})
    folder = write_folder(tmp_path, trained)
    mismatches = compare_with_llama_cpp(llama_cpp, hf_tokenizers, folder, n_tokens(trained))
    unexplained = [m for m in mismatches if not metaspace_prefix_differs(m[0], scheme)]
    assert not unexplained, f"{len(unexplained)} strings differ for another reason:\n{describe(unexplained)}"
    assert mismatches, "the known Metaspace prefix difference did not show: has llama.cpp changed? update the docs"
    assert sum(not metaspace_prefix_differs(text, scheme) for text in STRINGS) >= 200


def gguf_tokenizer_folder(gguf_path: Path, folder: Path) -> Path:
    """The HF tokenizer files the samples rebuild from a GGUF (as in the sample model folders)."""
    from qconv.formats.tokenizer_json import write_hf_tokenizer
    from qconv.samples.gguf_tokenizer import read_tokenizer_fields

    write_hf_tokenizer(read_tokenizer_fields(gguf.GGUFReader(str(gguf_path))), folder)
    return folder


def original_gguf_disagreements(llama_cpp, original: Path, ours: Path) -> list[str]:
    """Strings that llama.cpp tokenizes differently with the package's own GGUF than with our metadata."""
    original_model = llama_cpp.Llama(str(original), vocab_only=True, verbose=False)
    our_model = llama_cpp.Llama(str(ours), vocab_only=True, verbose=False)
    return [
        text
        for text in STRINGS
        if original_model.tokenize(text.encode(), add_bos=False, special=True)
        != our_model.tokenize(text.encode(), add_bos=False, special=True)
    ]


@pytest.mark.reference
def test_smollm2_matches_hf_and_original_gguf(tmp_path, llama_cpp, hf_tokenizers):
    from qconv.samples.smollm2 import smollm2_gguf_path

    original = smollm2_gguf_path()
    folder = gguf_tokenizer_folder(original, tmp_path)
    meta = read_hf_tokenizer(folder, 49152)
    assert (meta.model, meta.pre, meta.bos_id, meta.eos_id) == ("gpt2", "smollm", 1, 2)
    mismatches = compare_with_llama_cpp(llama_cpp, hf_tokenizers, folder, 49152)
    assert not mismatches, f"{len(mismatches)}/{len(STRINGS)} strings differ:\n{describe(mismatches)}"
    assert original_gguf_disagreements(llama_cpp, original, folder / "vocab.gguf") == []


@pytest.mark.reference
def test_gemma3_matches_hf_and_original_gguf(tmp_path, llama_cpp, hf_tokenizers):
    """Gemma 3's 262k SentencePiece vocabulary: the merge-rank scores we derive make llama.cpp tokenize as HF does
    and as it does with Gemma's own SentencePiece scores."""
    from qconv.samples.gemma3 import gemma3_gguf_path

    original = gemma3_gguf_path()
    folder = gguf_tokenizer_folder(original, tmp_path)
    vocab_size = n_tokens(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")))
    meta = read_hf_tokenizer(folder, vocab_size)
    assert (meta.model, meta.add_space_prefix) == ("llama", False)
    mismatches = compare_with_llama_cpp(llama_cpp, hf_tokenizers, folder, vocab_size)
    assert not mismatches, f"{len(mismatches)}/{len(STRINGS)} strings differ:\n{describe(mismatches)}"
    assert original_gguf_disagreements(llama_cpp, original, folder / "vocab.gguf") == []
