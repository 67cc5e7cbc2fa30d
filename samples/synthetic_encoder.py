"""Random-weight BERT folders (BertModel, or BertForMaskedLM with its `bert.` prefix and `cls.*` head) as
sentence-transformers saves them, for fast tests: config.json, model.safetensors (with the I64 `position_ids`
buffer and the pooler that real checkpoints carry), a WordPiece tokenizer.json, vocab.txt, tokenizer_config.json,
special_tokens_map.json, and the module files that say how sentence vectors are pooled (modules.json,
1_Pooling/config.json, sentence_bert_config.json; no 2_Normalize/ folder, as all-MiniLM-L6-v2 ships it).

`qconv sample random --arch bert` calls build_random_encoder through samples/synthetic.py.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np

from qconv.formats.errors import FormatError
from qconv.formats.hf_config import read_model_spec
from qconv.samples.safetensors_write import DTYPE_NAMES, TORCH_DTYPES, TensorEntry, write_safetensors
from qconv.samples.synthetic import MERGE_CORPUS, WEIGHT_STD, _random_values, _write_json

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
SPECIAL_NAMES = dict(zip(("pad", "unk", "cls", "sep", "mask"), SPECIALS, strict=True))
CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation + "éü"
POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "lasttoken": "pooling_mode_lasttoken",
    "max": "pooling_mode_max_tokens",
}


def wordpiece_vocab(size: int) -> list[str]:
    """The specials, every character alone and as a continuation, the words of MERGE_CORPUS (and their tails as
    continuations, so words split into several pieces), then [unusedN] up to `size`."""
    tokens = list(SPECIALS)
    tokens += list(CHARACTERS) + ["##" + c for c in CHARACTERS if c not in string.punctuation]
    minimum = len(tokens)
    words = dict.fromkeys(re.findall(r"[a-z]+", MERGE_CORPUS.lower()))
    for word in words:
        for piece in (word, "##" + word[len(word) // 2 :]):
            if len(piece) > 1 and piece not in tokens and len(tokens) < size:
                tokens.append(piece)
    if size < minimum:
        raise ValueError(f"vocab {size} is too small for a WordPiece sample: need at least {minimum}")
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    return tokens


def _tokenizer_json(tokens: list[str], lowercase: bool) -> dict:
    ids = {t: i for i, t in enumerate(tokens)}

    def special(name: str) -> dict:
        return {"SpecialToken": {"id": name, "type_id": 0}}

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": ids[t],
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for t in SPECIALS
        ],  # fmt: skip
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": lowercase,
        },  # fmt: skip
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("[CLS]"), {"Sequence": {"id": "A", "type_id": 0}}, special("[SEP]")],
            "pair": [
                special("[CLS]"),
                {"Sequence": {"id": "A", "type_id": 0}},
                special("[SEP]"),
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in ("[CLS]", "[SEP]")},
        },  # fmt: skip
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": ids,
        },  # fmt: skip
    }


def write_wordpiece_tokenizer(out_dir: Path, tokens: list[str], context_length: int, lowercase: bool = True) -> None:
    """tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json of a BertTokenizer."""
    _write_json(out_dir / "tokenizer.json", _tokenizer_json(tokens, lowercase))
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    specials = {f"{name}_token": text for name, text in SPECIAL_NAMES.items()}
    _write_json(out_dir / "special_tokens_map.json", specials)
    _write_json(
        out_dir / "tokenizer_config.json",
        {"do_lower_case": lowercase, "strip_accents": None, "tokenize_chinese_chars": True, **specials,
         "tokenizer_class": "BertTokenizer", "model_max_length": context_length, "clean_up_tokenization_spaces": True},
    )  # fmt: skip


def write_sentence_modules(out_dir: Path, hidden: int, pooling: str, normalize: bool, max_seq_length: int) -> None:
    """sentence-transformers' pipeline files: Transformer -> Pooling (-> Normalize, no folder of its own)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    _write_json(out_dir / "modules.json", modules)  # type: ignore[arg-type]
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {
        "word_embedding_dimension": hidden,
        **{key: mode == pooling for mode, key in POOLING_KEYS.items()},
    }
    _write_json(out_dir / "1_Pooling" / "config.json", pooling_config)
    _write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})


def _extra_tensors(hidden: int, vocab: int, masked_lm: bool) -> tuple[list[tuple[str, tuple[int, ...]]], str]:
    """Tensors a real checkpoint holds beyond the encoder (the converter skips them), and the encoder's prefix."""
    if masked_lm:
        t = "cls.predictions.transform."
        head = [(t + "dense.weight", (hidden, hidden)), (t + "dense.bias", (hidden,)),
                (t + "LayerNorm.weight", (hidden,)), (t + "LayerNorm.bias", (hidden,)),
                ("cls.predictions.bias", (vocab,))]  # fmt: skip
        return head, "bert."
    return [("pooler.dense.weight", (hidden, hidden)), ("pooler.dense.bias", (hidden,))], ""


def build_random_encoder(
    out_dir: Path,
    hidden: int = 256,
    n_layers: int = 2,
    n_heads: int = 4,
    ffn: int = 512,
    vocab: int = 512,
    dtype: str = "f32",
    seed: int = 0,
    context_length: int = 512,
    masked_lm: bool = False,
    pooling: str | None = "mean",
    normalize: bool = True,
    max_seq_length: int = 128,
    extra_config: dict | None = None,
) -> Path:
    """A random BERT folder; ``pooling`` None writes no sentence-transformers module files."""
    tokens = wordpiece_vocab(vocab)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_class = "BertForMaskedLM" if masked_lm else "BertModel"
    config = {
        "architectures": [hf_class], "model_type": "bert", "hidden_size": hidden, "intermediate_size": ffn,
        "num_hidden_layers": n_layers, "num_attention_heads": n_heads, "hidden_act": "gelu",
        "max_position_embeddings": context_length, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "vocab_size": vocab, "pad_token_id": 0, "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": WEIGHT_STD, "torch_dtype": TORCH_DTYPES[dtype],
    }  # fmt: skip
    for key, value in (extra_config or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    _write_json(out_dir / "config.json", config)
    if pooling is not None:
        write_sentence_modules(out_dir, hidden, pooling, normalize, max_seq_length)
    write_wordpiece_tokenizer(out_dir, tokens, context_length)
    try:
        spec = read_model_spec(out_dir)
    except FormatError as e:
        raise ValueError(str(e)) from None
    extra, prefix = _extra_tensors(hidden, vocab, masked_lm)
    stored = DTYPE_NAMES[dtype]
    entries = [TensorEntry(prefix + "embeddings.position_ids", "I64", (1, spec.context_length))]
    entries += [TensorEntry(prefix + name, stored, shape) for name, shape in spec.expected_shapes().items()]
    entries += [TensorEntry(name, stored, shape) for name, shape in extra]

    def produce(entry: TensorEntry):
        if entry.dtype == "I64":
            return np.arange(spec.context_length, dtype=np.int64)[None]
        return _random_values(entry, seed, shifted=False)

    write_safetensors(out_dir / "model.safetensors", entries, produce)
    return out_dir
