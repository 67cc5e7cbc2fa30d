"""The native tokenizer without a reference: loading, errors, round trips, streaming UTF-8, speed.

The ids themselves are checked against llama.cpp in test_tokenizer_reference.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from gguf import GGUFWriter

from qconv.formats.errors import FormatError
from qconv.runtime.tokenizer import Tokenizer

DATA = Path(__file__).parent.parent / "data"
STRINGS = json.loads((DATA / "tokenizer_strings.json").read_text())
METASPACE = "\u2581"


@pytest.fixture(scope="module")
def smollm(smollm2_package_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_package_gguf)


@pytest.fixture(scope="module")
def gemma() -> Tokenizer:
    from qconv.samples.gemma3 import gemma3_gguf_path

    return Tokenizer.from_gguf(gemma3_gguf_path())


def write_vocab(path: Path, model: str, pre: str | None, tokens: list[str], merges: list[str] | None = None) -> Path:
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    if merges is not None:
        writer.add_token_merges(merges)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_vocabularies_load_with_their_metadata(smollm, gemma):
    assert (smollm.model_name, smollm.pre_name, smollm.n_vocab) == ("gpt2", "smollm", 49152)
    assert (smollm.bos, smollm.eos, smollm.add_bos) == (1, 2, False)
    assert smollm.is_eog(2) and smollm.is_eog(0) and not smollm.is_eog(1)  # <|im_end|>, <|endoftext|>
    assert (gemma.model_name, gemma.n_vocab, gemma.bos, gemma.eos, gemma.add_bos) == ("llama", 262144, 2, 1, True)
    assert gemma.is_eog(1) and gemma.is_eog(106)  # <eos>, <end_of_turn>
    assert gemma.token_text(106) == b"<end_of_turn>" and gemma.is_control(106)


def test_unknown_model_and_pre_are_refused_by_name(tmp_path):
    with pytest.raises(FormatError, match="tokenizer.ggml.model 'wordpiece3'"):
        Tokenizer.from_gguf(write_vocab(tmp_path / "m.gguf", "wordpiece3", None, ["a", "b"]))
    with pytest.raises(FormatError, match="tokenizer.ggml.pre 'klingon'"):
        Tokenizer.from_gguf(write_vocab(tmp_path / "p.gguf", "gpt2", "klingon", ["a", "b"], ["a b"]))
    with pytest.raises(FormatError, match="tokenizer.ggml.merges"):
        Tokenizer.from_gguf(write_vocab(tmp_path / "n.gguf", "gpt2", "gpt2", ["a", "b"]))
    with pytest.raises(FormatError, match="missing.gguf"):
        Tokenizer.from_gguf(tmp_path / "missing.gguf")


def test_merges_apply_by_rank_on_a_tiny_vocabulary(tmp_path):
    # "a b" has rank 0, so "aab" -> "a" + "ab" even though "aa" is also a merge (rank 1).
    tokens = ["a", "b", "ab", "aa", "Ġ", "Ġa"]
    tok = Tokenizer.from_gguf(write_vocab(tmp_path / "t.gguf", "gpt2", "gpt2", tokens, ["a b", "a a", "Ġ a"]))
    assert tok.encode("aab", add_special=False) == [0, 2]
    assert tok.encode("aa a", add_special=False) == [3, 5]
    assert tok.decode([3, 5]) == "aa a"


def test_add_special_adds_bos_where_the_vocabulary_asks(smollm, gemma):
    assert smollm.encode("hi", add_special=True) == smollm.encode("hi", add_special=False)
    assert gemma.encode("hi", add_special=True) == [gemma.bos, *gemma.encode("hi", add_special=False)]


def test_special_tokens_match_whole_only_with_parse_special(smollm):
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = smollm.encode(text, add_special=False, parse_special=True)
    assert ids[0] == 1 and ids[-1] == 2
    plain = smollm.encode(text, add_special=False, parse_special=False)
    assert 1 not in plain and 2 not in plain
    assert smollm.decode(plain) == text


def test_small_capacity_reports_the_required_size(smollm):
    from qconv.runtime._native import ffi, lib

    data = b"Hello world, how are you?"
    out = ffi.new("int32_t[]", 1)
    needed = lib.qrt_tokenizer_encode(smollm._handle, data, len(data), 0, 0, out, 1)
    assert needed == -len(smollm.encode(data, add_special=False))


@pytest.mark.parametrize("which", ["smollm", "gemma"])
def test_detokenize_tokenize_round_trips(which, request):
    tok = request.getfixturevalue(which)
    spm = tok.model_name == "llama"
    # SentencePiece writes spaces as U+2581, so a literal U+2581 in the input comes back as a space.
    texts = [s for s in STRINGS if not (spm and METASPACE in s)]
    assert len(texts) > 300
    failures = [s for s in texts if tok.decode(tok.encode(s, add_special=False)) != s]
    assert failures == []
    failures = [s for s in texts if tok.decode(tok.encode(s, False, True), unparse_special=True) != s]
    assert failures == []


EMOJI_TEXT = "Emoji 😀👍🏽🇫🇷🫨 and 中文, ｆｕｌｌ, é\u0301, 𓀀ꙮ𐍈 — done"


@pytest.mark.parametrize("which", ["smollm", "gemma"])
def test_streaming_decoder_emits_only_complete_utf8(which, request):
    tok = request.getfixturevalue(which)
    ids = tok.encode(EMOJI_TEXT, add_special=False)
    stream = tok.stream()
    pieces = [stream.feed_bytes(t) for t in ids]
    for piece in pieces:
        piece.decode("utf-8")  # strict: raises on a partial or invalid sequence
    assert b"".join(pieces).decode() + stream.flush() == EMOJI_TEXT
    # the test is only meaningful if some token ended inside a character
    raw = [tok.token_to_piece(t) for t in ids]
    assert any(_incomplete_utf8(p) for p in raw)


def _incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_streaming_decoder_replaces_invalid_bytes(gemma):
    byte = {b: gemma.encode(bytes([b]), add_special=False) for b in (0x80, 0xE4, 0xFF)}
    assert all(len(ids) == 1 for ids in byte.values())  # <0x80>, <0xE4>, <0xFF> byte tokens
    stream = gemma.stream()
    assert stream.feed(byte[0x80][0]) == "\ufffd"  # a continuation byte cannot start a character
    assert stream.feed(byte[0xFF][0]) == "\ufffd"
    assert stream.feed(byte[0xE4][0]) == ""  # could start 中: wait
    assert stream.feed(gemma.encode("a", add_special=False)[0]) == "\ufffda"
    assert stream.feed(byte[0xE4][0]) == ""
    assert stream.flush() == "\ufffd"


def test_control_tokens_are_hidden_unless_special(smollm):
    stream, special = smollm.stream(), smollm.stream(special=True)
    assert stream.feed(2) == "" and special.feed(2) == "<|im_end|>"
    assert smollm.token_to_piece(2) == b"" and smollm.token_to_piece(2, special=True) == b"<|im_end|>"


@pytest.mark.parametrize("which", ["smollm", "gemma"])
def test_one_megabyte_tokenizes_well_under_a_second(which, request):
    tok = request.getfixturevalue(which)
    block = "\n".join(STRINGS).encode()
    text = (block * (1_000_000 // len(block) + 1))[:1_000_000]
    # CPU time: the shared test machine's load should not decide this
    start = time.process_time()
    ids = tok.encode(text, add_special=False, parse_special=True)
    seconds = time.process_time() - start
    print(f"{which}: 1 MB -> {len(ids)} tokens in {seconds:.3f} s CPU")
    assert len(ids) > 200_000
    assert seconds < 1.0


def test_tokenizer_from_the_models_open_gguf(smollm2_package_gguf, smollm):
    from qconv.runtime._native import ffi, lib

    if not hasattr(lib, "qrt_model_open"):
        pytest.skip("libqrt built without the model API")
    err = ffi.new("char[512]")
    params = lib.qrt_model_default_params()
    params.n_ctx = 64
    model = lib.qrt_model_open(str(smollm2_package_gguf).encode(), ffi.new("qrt_model_params *", params), err, 512)
    assert model != ffi.NULL, ffi.string(err)
    try:
        from_model = Tokenizer.from_open_gguf(lib.qrt_model_gguf(model), "smollm2")
    finally:
        lib.qrt_model_free(model)
    # the tokenizer copied what it needs: still usable after the model (and its mapping) is gone
    assert from_model.encode("Hello, world!", add_special=False) == smollm.encode("Hello, world!", add_special=False)
