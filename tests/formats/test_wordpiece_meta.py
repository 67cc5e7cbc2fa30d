"""WordPiece (BERT) tokenizers -> llama.cpp's bert vocabulary: the real all-MiniLM-L6-v2 tokenizer.json, the same
vocabulary from vocab.txt alone, sentence-transformers' pooling files, and the one-line refusals."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from qconv.formats.errors import FormatError
from qconv.formats.sentence_transformers import POOLING_CLS, POOLING_LAST, POOLING_MEAN, read_sentence_embedding
from qconv.formats.wordpiece_meta import phantom_space, read_wordpiece_tokenizer
from qconv.samples.synthetic_encoder import build_random_encoder

MINILM_VOCAB = 30522
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    from qconv.samples.minilm import cached_minilm

    return cached_minilm()


@pytest.fixture
def minilm_tokenizer(minilm_dir, tmp_path) -> Path:
    """The MiniLM tokenizer files alone, to edit."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_dir / name, tmp_path / name)
    return tmp_path


def test_minilm_tokenizer_json(minilm_dir):
    meta = read_wordpiece_tokenizer(minilm_dir, MINILM_VOCAB)
    assert (meta.model, meta.pre, len(meta.tokens)) == ("bert", "default", MINILM_VOCAB)
    # llama.cpp's phantom-space spelling: specials as they are, "##x" -> "x", any other token "▁" + token
    assert meta.tokens[:2] == ["[PAD]", "▁[unused0]"]
    assert meta.tokens[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert meta.tokens[1996] == "▁the" and meta.tokens[2015] == "s"  # "the", "##s"
    assert Counter(meta.token_types) == {1: MINILM_VOCAB - 5, 3: 5}
    ids = (meta.bos_id, meta.eos_id, meta.unk_id, meta.sep_id, meta.pad_id, meta.mask_id, meta.cls_id)
    assert ids == (101, 102, 100, 102, 0, 103, 101)
    assert (meta.add_bos, meta.add_eos, meta.lowercase, meta.strip_accents) == (True, True, True, True)


def test_vocab_txt_alone_gives_the_same_vocabulary(minilm_dir, minilm_tokenizer):
    (minilm_tokenizer / "tokenizer.json").unlink()
    assert read_wordpiece_tokenizer(minilm_tokenizer, MINILM_VOCAB) == read_wordpiece_tokenizer(
        minilm_dir, MINILM_VOCAB
    )


def test_phantom_space():
    assert [phantom_space(t, k) for t, k in (("[CLS]", 3), ("##ing", 1), ("walk", 1), ("[unused1]", 1))] == [
        "[CLS]",
        "ing",
        "▁walk",
        "▁[unused1]",
    ]


@pytest.mark.parametrize(
    ("strip_accents", "lowercase", "expected"), [(None, True, True), (None, False, False), (False, True, False)]
)
def test_strip_accents_resolved(minilm_tokenizer, strip_accents, lowercase, expected):
    """HF's null strips accents exactly when lower-casing; the GGUF stores the resolved value."""
    path = minilm_tokenizer / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["normalizer"] |= {"strip_accents": strip_accents, "lowercase": lowercase}
    path.write_text(json.dumps(tokenizer))
    meta = read_wordpiece_tokenizer(minilm_tokenizer, MINILM_VOCAB)
    assert (meta.lowercase, meta.strip_accents) == (lowercase, expected)


def _edit(folder: Path, change) -> None:
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    change(tokenizer)
    path.write_text(json.dumps(tokenizer))


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda t: t["model"].update(type="BPE"), ("tokenizer.json", "'BPE' is not WordPiece")),
        (lambda t: t["model"].update(type="Unigram"), ("tokenizer.json", "'Unigram' is not WordPiece")),
        (lambda t: t.update(normalizer={"type": "NFC"}), ("tokenizer.json", "NFC", "BertNormalizer")),
        (lambda t: t["normalizer"].update(handle_chinese_chars=False), ("handle_chinese_chars",)),
        (lambda t: t.update(pre_tokenizer={"type": "Whitespace"}), ("Whitespace", "BertPreTokenizer")),
        (lambda t: t.update(post_processor=None), ("post_processor", "[CLS]")),
        (lambda t: t["model"].update(continuing_subword_prefix="@@"), ("continuing_subword_prefix",)),
    ],
)
def test_refusals_are_one_line(minilm_tokenizer, change, fragments):
    _edit(minilm_tokenizer, change)
    with pytest.raises(FormatError) as e:
        read_wordpiece_tokenizer(minilm_tokenizer, MINILM_VOCAB)
    assert "\n" not in str(e.value)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_no_vocabulary(tmp_path):
    with pytest.raises(FormatError, match="no tokenizer.json and no vocab.txt"):
        read_wordpiece_tokenizer(tmp_path, 100)


def test_minilm_sentence_embedding(minilm_dir):
    """Mean pooling, a Normalize module without a 2_Normalize/ folder, 256 tokens (not tokenizer.json's 128)."""
    embedding = read_sentence_embedding(minilm_dir, 512)
    assert (embedding.pooling, embedding.normalize, embedding.max_seq_length) == (POOLING_MEAN, True, 256)
    assert read_sentence_embedding(minilm_dir, 128).max_seq_length == 128  # capped at the positions


@pytest.mark.parametrize(
    ("mode", "expected"), [("mean", POOLING_MEAN), ("cls", POOLING_CLS), ("lasttoken", POOLING_LAST)]
)
def test_pooling_modes(tmp_path, mode, expected):
    folder = build_random_encoder(tmp_path, hidden=32, n_heads=2, ffn=64, n_layers=1, vocab=256, pooling=mode)
    assert read_sentence_embedding(folder, 512).pooling == expected


def test_pooling_mode_refused(tmp_path):
    folder = build_random_encoder(tmp_path, hidden=32, n_heads=2, ffn=64, n_layers=1, vocab=256)
    config = json.loads((folder / "1_Pooling/config.json").read_text())
    (folder / "1_Pooling/config.json").write_text(json.dumps(config | {"pooling_mode_max_tokens": True}))
    with pytest.raises(FormatError) as e:
        read_sentence_embedding(folder, 512)
    assert "1_Pooling/config.json" in str(e.value) and "mean + max" in str(e.value)


def test_no_modules_json(tmp_path):
    folder = build_random_encoder(tmp_path, hidden=32, n_heads=2, ffn=64, n_layers=1, vocab=256, pooling=None)
    embedding = read_sentence_embedding(folder, 512)
    assert (embedding.pooling, embedding.normalize, embedding.max_seq_length) == (None, False, None)


def test_module_path_outside_the_folder(tmp_path):
    folder = build_random_encoder(tmp_path, hidden=32, n_heads=2, ffn=64, n_layers=1, vocab=256)
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["path"] = "../elsewhere"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(FormatError, match="modules.json: module path '../elsewhere'"):
        read_sentence_embedding(folder, 512)
