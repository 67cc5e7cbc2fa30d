"""GGUF tokenizer metadata -> Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json,
special_tokens_map.json).

The inverse of what llama.cpp's converter does, used to rebuild the HF folder a user would download from the data
inside a GGUF. Two tokenizer families:

- ``gpt2``: byte-level BPE. The GGUF tokens are already in byte-level (GPT-2 ``bytes_to_unicode``) spelling and its
  merges are "left right" strings, so vocab and merges carry over; the pre-tokenizer follows ``tokenizer.ggml.pre``.
- ``llama``: SentencePiece-style BPE with byte fallback (llama, gemma). GGUF keeps only token scores, so the merges
  are derived from them as HF's ``SentencePieceExtractor`` does: every split of a piece into two vocab pieces, ranked
  by the merged piece's score.
"""

from __future__ import annotations

import json
from pathlib import Path

from qconv.formats.errors import FormatError
from qconv.formats.tokenizer_meta import (  # noqa: F401 - the token types are shared by both directions
    SPIECE_SPACE,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
    TokenizerMeta,
)

# Pre-tokenizers of the byte-level families, keyed by tokenizer.ggml.pre. The regexes are the ones llama.cpp's
# llama-vocab.cpp uses for the same names (and the families' own tokenizer.json files).
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split_isolated(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


BYTE_LEVEL_PRE_TOKENIZERS: dict[str, dict] = {
    "gpt-2": _byte_level(True),
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
    },
    "llama-bpe": {"type": "Sequence", "pretokenizers": [_split_isolated(LLAMA3_REGEX), _byte_level(False)]},
    "qwen2": {"type": "Sequence", "pretokenizers": [_split_isolated(QWEN2_REGEX), _byte_level(False)]},
}


def _added_tokens(fields: TokenizerMeta) -> list[dict]:
    added = []
    for token_id, (text, kind) in enumerate(zip(fields.tokens, fields.token_types, strict=True)):
        if kind not in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN):
            continue
        added.append(
            {
                "id": token_id,
                "content": text,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": kind != TOKEN_USER_DEFINED,
            }
        )
    return added


def _vocab(fields: TokenizerMeta) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token_id, text in enumerate(fields.tokens):
        if text in vocab:
            raise FormatError(f"tokenizer: token {token_id} {text!r} repeats token {vocab[text]}")
        vocab[text] = token_id
    return vocab


def _bos_template(fields: TokenizerMeta) -> dict | None:
    """A TemplateProcessing post-processor adding bos/eos when the GGUF asks for them, else None."""
    prefix = [fields.bos_id] if fields.add_bos and fields.bos_id is not None else []
    suffix = [fields.eos_id] if fields.add_eos and fields.eos_id is not None else []
    if not prefix and not suffix:
        return None

    def template(sequence_id: str, type_id: int) -> list[dict]:
        def special(ids: list[int]) -> list[dict]:
            return [{"SpecialToken": {"id": fields.tokens[i], "type_id": type_id}} for i in ids]

        return special(prefix) + [{"Sequence": {"id": sequence_id, "type_id": type_id}}] + special(suffix)

    special_tokens = {
        fields.tokens[i]: {"id": fields.tokens[i], "ids": [i], "tokens": [fields.tokens[i]]} for i in prefix + suffix
    }
    return {
        "type": "TemplateProcessing",
        "single": template("A", 0),
        "pair": template("A", 0) + template("B", 1),
        "special_tokens": special_tokens,
    }


def _gpt2_tokenizer(fields: TokenizerMeta) -> dict:
    pre = fields.pre
    if pre not in BYTE_LEVEL_PRE_TOKENIZERS:
        known = ", ".join(sorted(BYTE_LEVEL_PRE_TOKENIZERS))
        raise FormatError(f"tokenizer: byte-level pre-tokenizer '{pre}' is not supported (known: {known})")
    if fields.merges is None:
        raise FormatError("tokenizer: model 'gpt2' needs tokenizer.ggml.merges")
    merges = []
    for index, merge in enumerate(fields.merges):
        left, sep, right = merge.partition(" ")
        if not sep:
            raise FormatError(f"tokenizer: merge {index} {merge!r} is not 'left right'")
        merges.append([left, right])
    post: dict = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    template = _bos_template(fields)
    if template is not None:
        post = {"type": "Sequence", "processors": [post, template]}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(fields),
        "normalizer": None,
        "pre_tokenizer": BYTE_LEVEL_PRE_TOKENIZERS[pre],
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": _vocab(fields),
            "merges": merges,
        },
    }


def sentencepiece_merges(tokens: list[str], token_types: list[int], scores: list[float]) -> list[list[str]]:
    """BPE merges equivalent to SentencePiece's score-driven merging.

    Every split of a normal piece into two pieces of the vocab is a merge; merges are ranked by the merged
    piece's score (higher first), then by longer left part, then longer right part, as HF's
    ``SentencePieceExtractor`` ranks them, so the result matches the tokenizer.json files HF ships.
    """
    vocab = {text: token_id for token_id, text in enumerate(tokens)}
    ranked = []
    for token_id, piece in enumerate(tokens):
        if token_types[token_id] != TOKEN_NORMAL:
            continue
        local = []
        for split in range(1, len(piece)):
            left, right = piece[:split], piece[split:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        score = scores[token_id]
        ranked.extend((score, len(left), len(right), left, right) for _, _, left, right in local)
    ranked.sort(key=lambda merge: merge[:3], reverse=True)
    return [[left, right] for _, _, _, left, right in ranked]


def _llama_tokenizer(fields: TokenizerMeta) -> dict:
    if fields.scores is None:
        raise FormatError("tokenizer: model 'llama' needs tokenizer.ggml.scores")
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_SPACE}]
    decoders = [
        {"type": "Replace", "pattern": {"String": SPIECE_SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if fields.add_space_prefix:
        normalizers.insert(0, {"type": "Prepend", "prepend": SPIECE_SPACE})
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    unk = fields.tokens[fields.unk_id] if fields.unk_id is not None else None
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(fields),
        "normalizer": normalizers[0] if len(normalizers) == 1 else {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": _bos_template(fields),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": _vocab(fields),
            "merges": sentencepiece_merges(fields.tokens, fields.token_types, fields.scores),
        },
    }


TOKENIZER_BUILDERS = {"gpt2": _gpt2_tokenizer, "llama": _llama_tokenizer}


def hf_tokenizer_json(fields: TokenizerMeta) -> dict:
    if len(fields.tokens) != len(fields.token_types):
        raise FormatError(f"tokenizer: {len(fields.tokens)} tokens but {len(fields.token_types)} token types")
    builder = TOKENIZER_BUILDERS.get(fields.model)
    if builder is None:
        raise FormatError(
            f"tokenizer: model '{fields.model}' is not supported (supported: {', '.join(TOKENIZER_BUILDERS)})"
        )
    return builder(fields)


def _special_tokens(fields: TokenizerMeta) -> dict[str, str]:
    named = {
        "bos_token": fields.bos_id,
        "eos_token": fields.eos_id,
        "unk_token": fields.unk_id,
        "pad_token": fields.pad_id,
    }
    return {key: fields.tokens[token_id] for key, token_id in named.items() if token_id is not None}


def hf_tokenizer_config(fields: TokenizerMeta, model_max_length: int | None = None) -> dict:
    added = {
        str(entry["id"]): {key: value for key, value in entry.items() if key != "id"} for entry in _added_tokens(fields)
    }
    config: dict = {
        "added_tokens_decoder": added,
        "add_bos_token": bool(fields.add_bos),
        "add_eos_token": bool(fields.add_eos),
        "clean_up_tokenization_spaces": False,
        **_special_tokens(fields),
        # The generic fast tokenizer: tokenization is exactly tokenizer.json, with no class-specific extras.
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    if fields.chat_template is not None:
        config["chat_template"] = fields.chat_template
    return config


def write_hf_tokenizer(fields: TokenizerMeta, out_dir: Path, model_max_length: int | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "tokenizer.json": hf_tokenizer_json(fields),
        "tokenizer_config.json": hf_tokenizer_config(fields, model_max_length),
        "special_tokens_map.json": _special_tokens(fields),
    }
    for name, content in files.items():
        with open(out_dir / name, "w", encoding="utf-8") as out:
            json.dump(content, out, ensure_ascii=False, indent=2 if name != "tokenizer.json" else None)
            out.write("\n")
