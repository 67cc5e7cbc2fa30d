"""formats.tokenizer_json: GGUF tokenizer metadata -> HF tokenizer files.

Reference checks: for SmolLM2 (byte-level BPE, pre "smollm") and Gemma 3 (262k SentencePiece BPE with byte
fallback), HF's tokenization of the shared test strings equals llama.cpp's tokenization of the original GGUF.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from qconv.formats.errors import FormatError
from qconv.formats.tokenizer_json import (
    BYTE_LEVEL_PRE_TOKENIZERS,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TokenizerMeta,
    sentencepiece_merges,
    write_hf_tokenizer,
)
from qconv.samples.synthetic import synthetic_tokenizer_fields

DATA = Path(__file__).parent.parent / "data"
requires_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)
requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)


def test_sentencepiece_merges_rank_by_merged_score_then_longer_left():
    tokens = ["<unk>", "a", "b", "c", "ab", "bc", "abc", "<0x41>"]
    types = [TOKEN_CONTROL] + [TOKEN_NORMAL] * 6 + [TOKEN_BYTE]
    scores = [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -4.5, 0.0]
    # "ab" (-4.0) first; "abc" (-4.5) splits as ab+c and a+bc: longer left part first; "bc" (-5.0) last.
    assert sentencepiece_merges(tokens, types, scores) == [["a", "b"], ["ab", "c"], ["a", "bc"], ["b", "c"]]


def test_synthetic_byte_level_tokenizer_loads_and_round_trips(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    write_hf_tokenizer(synthetic_tokenizer_fields(600, "gpt-2"), tmp_path)
    tokenizer = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 600
    text = "Hello, world! <|im_start|>user\nnaïve 東京 🤗 123<|im_end|>"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert ids.count(598) == 1 and ids.count(599) == 1  # the two specials stay whole
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and "chat_template" in config
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["bos_token"] == "<|endoftext|>"


@pytest.mark.parametrize("pre", sorted(BYTE_LEVEL_PRE_TOKENIZERS))
def test_pre_tokenizer_names_agree_with_the_gguf_writer(tmp_path, pre):
    # The reverse direction (tokenizer.json -> tokenizer.ggml.pre) must give back the name we started from.
    from qconv.formats.tokenizer_meta import choose_pre

    write_hf_tokenizer(synthetic_tokenizer_fields(300, pre), tmp_path)
    assert choose_pre(json.loads((tmp_path / "tokenizer.json").read_text()), "test") == pre
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "It's 12345 apples,\n\n  and   naïve 東京!"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_bad_metadata_is_a_format_error(tmp_path):
    fields = synthetic_tokenizer_fields(300, "gpt-2")
    with pytest.raises(FormatError, match="pre-tokenizer 'nonesuch' is not supported"):
        write_hf_tokenizer(TokenizerMeta(**{**fields.__dict__, "pre": "nonesuch"}), tmp_path)
    with pytest.raises(FormatError, match="model 'rwkv' is not supported"):
        write_hf_tokenizer(TokenizerMeta(**{**fields.__dict__, "model": "rwkv"}), tmp_path)
    tokens = list(fields.tokens)
    tokens[299] = tokens[5]
    with pytest.raises(FormatError, match="token 299 .* repeats token 5"):
        write_hf_tokenizer(TokenizerMeta(**{**fields.__dict__, "tokens": tokens}), tmp_path)


def _test_strings(extra: list[str]) -> list[str]:
    strings = json.loads((DATA / "tokenizer_strings.json").read_text())
    assert len(strings) >= 200
    return strings + extra


def _compare_with_llama_cpp(gguf_path: Path, tokenizer_dir: Path, strings: list[str]) -> None:
    import llama_cpp
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    mismatches = []
    for text in strings:
        ours = tokenizer.encode(text, add_special_tokens=False).ids
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        if ours != theirs:
            mismatches.append((text, ours[:16], theirs[:16]))
    assert not mismatches, f"{len(mismatches)} of {len(strings)} strings differ, first: {mismatches[:3]}"


def _compare_with_transformers(tokenizer_dir: Path, strings: list[str]) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    reference = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(tokenizer_dir)
    for text in strings:
        assert auto.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False).ids, text


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory):
    from gguf import GGUFReader

    from qconv.samples.gguf_tokenizer import read_tokenizer_fields
    from qconv.samples.smollm2 import smollm2_gguf_path

    gguf_path = smollm2_gguf_path()
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    write_hf_tokenizer(read_tokenizer_fields(GGUFReader(gguf_path)), out)
    return gguf_path, out


@pytest.fixture(scope="module")
def gemma3_tokenizer():
    from qconv.samples.gemma3 import cached_gemma3_tokenizer, gemma3_gguf_path

    return gemma3_gguf_path(), cached_gemma3_tokenizer()


SMOLLM2_EXTRA = ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|><repo_name>x<file_sep>"]
GEMMA3_EXTRA = ["<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<bos>a<eos>", "  \n\n\t\t  x"]


@pytest.mark.reference
@requires_llama_cpp
def test_smollm2_tokenizer_matches_llama_cpp(smollm2_tokenizer):
    gguf_path, tokenizer_dir = smollm2_tokenizer
    _compare_with_llama_cpp(gguf_path, tokenizer_dir, _test_strings(SMOLLM2_EXTRA))


@pytest.mark.reference
@requires_llama_cpp
def test_gemma3_tokenizer_matches_llama_cpp(gemma3_tokenizer):
    gguf_path, tokenizer_dir = gemma3_tokenizer
    _compare_with_llama_cpp(gguf_path, tokenizer_dir, _test_strings(GEMMA3_EXTRA))


@pytest.mark.reference
@requires_transformers
def test_autotokenizer_loads_and_agrees(smollm2_tokenizer, gemma3_tokenizer):
    for (_, tokenizer_dir), extra in ((smollm2_tokenizer, SMOLLM2_EXTRA), (gemma3_tokenizer, GEMMA3_EXTRA)):
        _compare_with_transformers(tokenizer_dir, _test_strings(extra))


@pytest.mark.reference
@requires_llama_cpp
def test_decoding_llama_cpp_ids_gives_back_the_text(smollm2_tokenizer, gemma3_tokenizer):
    # Compared with the input text rather than llama-cpp-python's detokenize, which cuts pieces at 32 bytes.
    import llama_cpp
    from tokenizers import Tokenizer

    for gguf_path, tokenizer_dir in (smollm2_tokenizer, gemma3_tokenizer):
        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
        for text in _test_strings([]):
            if gguf_path == gemma3_tokenizer[0] and "\u2581" in text:
                continue  # SentencePiece spells a space as U+2581, so a literal U+2581 decodes to a space
            ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert tokenizer.decode(ids, skip_special_tokens=False) == text, (gguf_path.name, text)
