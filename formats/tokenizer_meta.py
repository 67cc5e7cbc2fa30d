"""HF ``tokenizer.json`` (+ ``tokenizer_config.json``) -> the GGUF ``tokenizer.*`` metadata llama.cpp reads.

Two tokenizer families are supported, both HF ``BPE`` models:

- byte-level BPE (GPT-2 style, ``ByteLevel`` pre-tokenizer) -> GGUF model ``gpt2``: tokens, token types, merges and a
  ``tokenizer.ggml.pre`` name that selects llama.cpp's pre-tokenizer regexes. The name is chosen from the *structure*
  of the HF pre-tokenizer (table ``BYTE_LEVEL_PRE_TOKENIZERS``), not from a hash of tokenized text as llama.cpp's
  ``convert_hf_to_gguf.py`` does, so an unknown structure is reported instead of silently mis-tokenized.
- SentencePiece-style BPE with byte fallback (``▁`` for spaces, ``<0xXX>`` byte tokens) -> GGUF model ``llama``.
  llama.cpp's SPM tokenizer has no merge list: it repeatedly merges the adjacent pair whose concatenation is a vocab
  token, highest score first (leftmost on ties). HF merges the pair of lowest merge rank (leftmost on ties). Giving
  the token made by merge ``r`` the score ``-r`` makes the two orders the same. They can still differ where llama.cpp
  joins two pieces into a token through a pair that is not in the merge list; tokenizer.json files converted from
  SentencePiece list every split of every piece, so there they cannot (Gemma 3's 262k vocabulary: identical ids on
  all test strings).

Differences llama.cpp cannot express, measured by tests/formats/test_tokenizer_meta.py:
- a ``Metaspace`` pre-tokenizer prepends no ``▁`` to text that already starts with a space, and with
  ``prepend_scheme: first`` none after a special token; llama.cpp (``add_space_prefix``) always does. The llama-2
  style normalizer (``Prepend`` + ``Replace``) behaves as llama.cpp does.
- Qwen2's NFC normalizer is not applied by llama.cpp: only text not already in NFC differs.
- llama.cpp turns normal tokens spelled like end-of-turn markers (``<end_of_turn>``, ``<|im_end|>``, ...) into control
  tokens; real vocabularies already have them as special added tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.printable import shown

if TYPE_CHECKING:
    import gguf

# tokenizer.ggml.token_type values (gguf.TokenType / llama.cpp's llama_token_type); plain ints so that reading a
# tokenizer does not import gguf.
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

SPIECE_SPACE = "\u2581"
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# keys llama.cpp reads that gguf-py has no writer method for (src/llama-arch.cpp LLM_KV_TOKENIZER_*)
CLS_TOKEN_ID = "tokenizer.ggml.cls_token_id"  # deprecated there (bos is [CLS]); written for older readers
NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"


@dataclass
class TokenizerMeta:
    """Everything a GGUF file says about its tokenizer (the ``tokenizer.*`` keys)."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SentencePiece-style BPE), "bert" (WordPiece)
    pre: str | None  # tokenizer.ggml.pre, gpt2 (and, ignored by llama.cpp, bert) models only
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None  # llama models only
    merges: list[str] | None  # gpt2 models only, "left right"
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    named_chat_templates: dict[str, str] = field(default_factory=dict)  # tokenizer.chat_template.<name>
    # WordPiece (bert) only: the separator, mask and classifier tokens, and the BertNormalizer's two switches
    sep_id: int | None = None
    mask_id: int | None = None
    cls_id: int | None = None
    lowercase: bool | None = None
    strip_accents: bool | None = None  # resolved: the HF null (strip exactly when lower-casing) is never stored

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Write all ``tokenizer.*`` keys; keys whose value is None are left out (llama.cpp then uses its default)."""
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        for token_id, add in (
            (self.bos_id, writer.add_bos_token_id),
            (self.eos_id, writer.add_eos_token_id),
            (self.unk_id, writer.add_unk_token_id),
            (self.sep_id, writer.add_sep_token_id),
            (self.pad_id, writer.add_pad_token_id),
            (self.mask_id, writer.add_mask_token_id),
            (self.cls_id, lambda token_id: writer.add_uint32(CLS_TOKEN_ID, token_id)),
        ):
            if token_id is not None:
                add(token_id)
        for flag, key in ((self.lowercase, NORMALIZER_LOWERCASE), (self.strip_accents, NORMALIZER_STRIP_ACCENTS)):
            if flag is not None:
                writer.add_bool(key, flag)
        for flag, add in (
            (self.add_bos, writer.add_add_bos_token),
            (self.add_eos, writer.add_add_eos_token),
            (self.add_space_prefix, writer.add_add_space_prefix),
        ):
            if flag is not None:
                add(flag)
        if self.named_chat_templates:
            templates = [{"name": "default", "template": self.chat_template}] if self.chat_template else []
            templates += [{"name": name, "template": text} for name, text in self.named_chat_templates.items()]
            writer.add_chat_template(templates)
        elif self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


# ---------------------------------------------------------------------------------------------------------------
# Byte-level pre-tokenizers: HF structure -> tokenizer.ggml.pre.
#
# An HF pre-tokenizer is reduced to a tuple of canonical steps (``pre_tokenizer_steps``); each row names the steps
# that llama.cpp's regexes for that name reproduce (llama.cpp src/llama-vocab.cpp, llm_tokenizer_bpe). Adding a
# family means adding a row.

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ByteLevel(use_regex=True) splits with the GPT-2 regex itself.
BYTE_LEVEL_WITH_REGEX = "byte-level+gpt2-regex"
BYTE_LEVEL_ONLY = "byte-level"


def _split_step(regex: str) -> str:
    return f"split-isolated:{regex}"


@dataclass(frozen=True)
class PreTokenizerRow:
    name: str  # tokenizer.ggml.pre
    steps: tuple[str, ...]
    normalizers: tuple[str | None, ...] = (None,)  # HF normalizer types accepted with it
    family: str = ""  # models known to use it, for error messages


BYTE_LEVEL_PRE_TOKENIZERS: tuple[PreTokenizerRow, ...] = (
    PreTokenizerRow("gpt-2", (BYTE_LEVEL_WITH_REGEX,), family="GPT-2, plain ByteLevel"),
    PreTokenizerRow("smollm", ("digits-individual", BYTE_LEVEL_WITH_REGEX), family="SmolLM, StarCoder"),
    PreTokenizerRow("llama-bpe", (_split_step(LLAMA3_REGEX), BYTE_LEVEL_ONLY), family="Llama 3"),
    # Qwen2 ships an NFC normalizer that llama.cpp does not apply: texts already in NFC tokenize the same.
    PreTokenizerRow("qwen2", (_split_step(QWEN2_REGEX), BYTE_LEVEL_ONLY), normalizers=(None, "NFC"), family="Qwen2/3"),
)


def _flatten(node: dict | None, list_key: str) -> list[dict]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [step for child in node.get(list_key, []) for step in _flatten(child, list_key)]
    return [node]


def pre_tokenizer_steps(pre_tokenizer: dict | None) -> tuple[str, ...]:
    """The canonical steps of an HF pre-tokenizer; fields that do not change the token ids (offsets) are dropped."""
    steps = []
    for step in _flatten(pre_tokenizer, "pretokenizers"):
        kind = step.get("type")
        if kind == "ByteLevel":
            prefix = "+prefix-space" if step.get("add_prefix_space", False) else ""
            steps.append((BYTE_LEVEL_WITH_REGEX if step.get("use_regex", True) else BYTE_LEVEL_ONLY) + prefix)
        elif kind == "Digits":
            steps.append("digits-individual" if step.get("individual_digits", False) else "digits")
        elif kind == "Split" and "Regex" in step.get("pattern", {}):
            behavior = str(step.get("behavior", "")).lower()
            invert = "-inverted" if step.get("invert", False) else ""
            steps.append(f"split-{behavior}{invert}:{step['pattern']['Regex']}")
        else:
            steps.append(json.dumps(step, sort_keys=True, ensure_ascii=False))
    return tuple(steps)


def choose_pre(tokenizer_json: dict, where: str) -> str:
    """tokenizer.ggml.pre for a byte-level BPE tokenizer.json, from the table of known pre-tokenizer structures."""
    steps = pre_tokenizer_steps(tokenizer_json.get("pre_tokenizer"))
    normalizers = [node.get("type") for node in _flatten(tokenizer_json.get("normalizer"), "normalizers")]
    if len(normalizers) > 1:
        raise FormatError(f"{where}: normalizer sequence {normalizers} is not supported for byte-level BPE")
    normalizer = normalizers[0] if normalizers else None
    for row in BYTE_LEVEL_PRE_TOKENIZERS:
        if row.steps == steps and normalizer in row.normalizers:
            return row.name
    supported = "; ".join(f"{row.name} ({row.family}): {' + '.join(row.steps)}" for row in BYTE_LEVEL_PRE_TOKENIZERS)
    found = " + ".join(steps) or "none"
    raise FormatError(
        f"{where}: unknown byte-level pre-tokenizer {found} (normalizer {normalizer}); supported: {supported}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Reading the HF files.


def _read_json(model_dir: Path, name: str, required: bool) -> dict | None:
    if not folder_files.entry_exists(model_dir, name):
        if required:
            raise FormatError(f"{model_dir / name}: missing (needed for the tokenizer)")
        return None
    return folder_files.read_json_object(model_dir, name)


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class _Vocab:
    tokens: list[str]
    token_types: list[int]
    ids: dict[str, int]  # as tokenizer.json spells the tokens
    added: dict[int, dict]  # id -> added_tokens entry


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _added_tokens(tokenizer_json: dict, where: str) -> list[dict]:
    entries = tokenizer_json.get("added_tokens") or []
    if not isinstance(entries, list):
        raise FormatError(f"{where}: 'added_tokens' must be a list, found {shown(entries)}")
    for entry in entries:
        if not (isinstance(entry, dict) and _is_id(entry.get("id")) and isinstance(entry.get("content"), str)):
            raise FormatError(f"{where}: added token {shown(entry)} is not an object with an integer id and content")
    return entries


def _read_vocab(tokenizer_json: dict, vocab_size: int, where: str) -> _Vocab:
    model = tokenizer_json["model"]
    vocab = model.get("vocab", {})
    if not isinstance(vocab, dict):
        raise FormatError(f"{where}: model.vocab must be an object of token -> id, found {shown(vocab)}")
    by_id: dict[int, str] = {}
    for text, token_id in vocab.items():
        if not _is_id(token_id):
            raise FormatError(f"{where}: token {shown(text)} has id {shown(token_id)}; expected an integer >= 0")
        if token_id in by_id:
            raise FormatError(f"{where}: tokens {by_id[token_id]!r} and {text!r} both have id {token_id}")
        by_id[token_id] = text
    added: dict[int, dict] = {}
    for entry in _added_tokens(tokenizer_json, where):
        token_id, text = entry["id"], entry["content"]
        if token_id in by_id and by_id[token_id] != text:
            raise FormatError(
                f"{where}: added token {text!r} has id {token_id}, which the vocab gives {by_id[token_id]!r}"
            )
        by_id[token_id] = text
        added[token_id] = entry
    if not by_id:
        raise FormatError(f"{where}: the vocabulary is empty")
    n_tokens = max(by_id) + 1
    if n_tokens > vocab_size:
        raise FormatError(
            f"{where}: token id {n_tokens - 1} ({by_id[n_tokens - 1]!r}) does not fit the model's vocab_size "
            f"{vocab_size} (the embedding has fewer rows than the tokenizer has tokens)"
        )
    tokens, token_types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            # Rows of the embedding without a token (vocab padded to a multiple): as llama.cpp's converter does.
            tokens.append(f"[PAD{token_id}]")
            token_types.append(TOKEN_UNUSED)
        elif token_id in added:
            tokens.append(by_id[token_id])
            token_types.append(TOKEN_CONTROL if added[token_id].get("special", False) else TOKEN_USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            token_types.append(TOKEN_NORMAL)
    ids = {text: token_id for token_id, text in by_id.items()}
    return _Vocab(tokens, token_types, ids, added)


def _merge_pairs(model: dict, where: str) -> list[tuple[str, str]]:
    """Merges in rank order; tokenizer.json writes them as "a b" strings or (tokenizers >= 0.20) as [a, b] lists."""
    pairs = []
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise FormatError(f"{where}: model.merges must be a list, found {shown(merges)}")
    for rank, merge in enumerate(merges):
        if isinstance(merge, str):
            left, sep, right = merge.partition(" ")
            if not sep or not left or not right:
                raise FormatError(f"{where}: merge {rank} {merge!r} is not 'left right'")
        elif isinstance(merge, list) and len(merge) == 2 and all(isinstance(part, str) for part in merge):
            left, right = merge
        else:
            raise FormatError(f"{where}: merge {rank} {merge!r} is neither 'left right' nor [left, right]")
        pairs.append((left, right))
    return pairs


def _check_bpe_options(model: dict, where: str) -> None:
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise FormatError(f"{where}: BPE option {option}={model[option]!r} is not supported by llama.cpp")
    if model.get("dropout"):
        raise FormatError(f"{where}: BPE dropout {model['dropout']} makes tokenization random; expected null")


def _byte_level_meta(tokenizer_json: dict, vocab: _Vocab, where: str) -> TokenizerMeta:
    merges = []
    for rank, (left, right) in enumerate(_merge_pairs(tokenizer_json["model"], where)):
        # llama.cpp splits a merge at the first space after the first character.
        if " " in left[1:] or " " in right:
            raise FormatError(f"{where}: merge {rank} ({left!r}, {right!r}) contains a space; GGUF cannot store it")
        merges.append(f"{left} {right}")
    return TokenizerMeta(
        model="gpt2",
        pre=choose_pre(tokenizer_json, where),
        tokens=vocab.tokens,
        token_types=vocab.token_types,
        scores=None,
        merges=merges,
    )


@dataclass(frozen=True)
class _SpaceHandling:
    add_space_prefix: bool
    spaces_normalized: bool  # the normalizer turns " " into "▁" (so normalized added tokens see "▁")


def _sentencepiece_space_handling(tokenizer_json: dict, where: str) -> _SpaceHandling:
    """How a SentencePiece-style tokenizer.json marks spaces: the llama-2 style normalizer
    (Prepend("▁") + Replace(" ", "▁")) or the newer Metaspace pre-tokenizer."""
    normalizers = _flatten(tokenizer_json.get("normalizer"), "normalizers")
    pre_tokenizers = _flatten(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
    prepend = False
    replace = False
    for step in normalizers:
        if step.get("type") == "Prepend" and step.get("prepend") == SPIECE_SPACE:
            prepend = True
        elif (
            step.get("type") == "Replace"
            and step.get("pattern") == {"String": " "}
            and step.get("content") == SPIECE_SPACE
        ):
            replace = True
        else:
            raise FormatError(f"{where}: normalizer step {step.get('type')} is not supported for SentencePiece BPE")
    if replace and not pre_tokenizers:
        return _SpaceHandling(add_space_prefix=prepend, spaces_normalized=True)
    if (
        not normalizers
        and len(pre_tokenizers) == 1
        and pre_tokenizers[0].get("type") == "Metaspace"
        and pre_tokenizers[0].get("replacement") == SPIECE_SPACE
    ):
        metaspace = pre_tokenizers[0]
        if "prepend_scheme" in metaspace:
            prefix = metaspace["prepend_scheme"] != "never"
        else:  # tokenizers < 0.15
            prefix = bool(metaspace.get("add_prefix_space", True))
        return _SpaceHandling(add_space_prefix=prefix, spaces_normalized=False)
    raise FormatError(
        f"{where}: byte-fallback BPE needs spaces as '▁', from a Replace(' ', '▁') normalizer or a Metaspace "
        f"pre-tokenizer; found normalizer {[s.get('type') for s in normalizers]}, "
        f"pre-tokenizer {[s.get('type') for s in pre_tokenizers]}"
    )


def _sentencepiece_meta(tokenizer_json: dict, vocab: _Vocab, where: str) -> TokenizerMeta:
    spaces = _sentencepiece_space_handling(tokenizer_json, where)
    pairs = _merge_pairs(tokenizer_json["model"], where)
    # Tokens no merge makes (characters, bytes, specials) sort below every merged token.
    unmerged_score = -float(len(pairs))
    scores = [unmerged_score] * len(vocab.tokens)
    made = set()
    for rank, (left, right) in enumerate(pairs):
        token_id = vocab.ids.get(left + right)
        if token_id is None:
            raise FormatError(f"{where}: merge {rank} ({left!r}, {right!r}) makes {left + right!r}, not in the vocab")
        if token_id not in made:  # the first (best) merge making a token sets its score
            scores[token_id] = -float(rank)
            made.add(token_id)
    tokens, token_types = list(vocab.tokens), list(vocab.token_types)
    for token_id, text in enumerate(tokens):
        if token_types[token_id] == TOKEN_NORMAL and BYTE_TOKEN.fullmatch(text):
            token_types[token_id] = TOKEN_BYTE
        elif token_types[token_id] == TOKEN_USER_DEFINED and spaces.spaces_normalized:
            # A normalized added token is matched after " " became "▁"; llama.cpp matches user-defined tokens in
            # the raw text, so store them with plain spaces (as llama.cpp's converter does).
            if vocab.added[token_id].get("normalized", True):
                tokens[token_id] = text.replace(SPIECE_SPACE, " ")
    unk = tokenizer_json["model"].get("unk_token")
    if unk is not None and unk in vocab.ids:
        token_types[vocab.ids[unk]] = TOKEN_UNKNOWN
    missing_bytes = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab.ids]
    if missing_bytes:
        raise FormatError(
            f"{where}: byte_fallback is set but {len(missing_bytes)} byte tokens are missing "
            f"(first: {missing_bytes[0]}); llama.cpp needs all 256"
        )
    return TokenizerMeta(
        model="llama",
        pre=None,
        tokens=tokens,
        token_types=token_types,
        scores=scores,
        merges=None,
        add_space_prefix=spaces.add_space_prefix,
    )


@dataclass
class _TemplateEnds:
    """What the post-processor puts around a single sequence: ``known`` is False for processors we do not read."""

    known: bool
    first: int | None = None  # id of the special token added before the text
    last: int | None = None  # ... and after it


def _template_ends(post_processor: dict | None, vocab: _Vocab, where: str) -> _TemplateEnds:
    steps = [s for s in _flatten(post_processor, "processors") if s.get("type") != "ByteLevel"]
    if not steps:
        return _TemplateEnds(known=True)
    if len(steps) > 1 or steps[0].get("type") != "TemplateProcessing":
        return _TemplateEnds(known=False)
    template = steps[0]
    special_tokens = template.get("special_tokens") or {}

    def special_id(item: dict) -> int | None:
        if "SpecialToken" not in item:
            return None
        name = item["SpecialToken"]["id"]
        ids = special_tokens.get(name, {}).get("ids") or [vocab.ids.get(name)]
        if len(ids) != 1 or ids[0] is None:
            raise FormatError(f"{where}: post_processor special token {name!r} is not one token of the vocab")
        return ids[0]

    single = template.get("single") or []
    if not single:
        return _TemplateEnds(known=True)
    return _TemplateEnds(known=True, first=special_id(single[0]), last=special_id(single[-1]))


def _add_flag(name: str, added_id: int | None, token_id: int | None, where: str) -> tuple[bool, int | None]:
    """(add_<name>, <name>_id) from the token the template adds: llama.cpp can only add the <name> token itself."""
    if added_id is None:
        return False, token_id
    if token_id is None:
        return True, added_id
    if added_id != token_id:
        raise FormatError(
            f"{where}: post_processor adds token {added_id} but {name}_token is {token_id}; llama.cpp can only add "
            f"the {name} token"
        )
    return True, token_id


def _special_token(
    name: str, sources: list[tuple[str, dict | None]], vocab: _Vocab, generation: dict | None
) -> int | None:
    """The id of bos/eos/unk/pad: tokenizer_config.json, then special_tokens_map.json, then generation_config.json."""
    for file_name, source in sources:
        if source is None or source.get(f"{name}_token") is None:
            continue
        text = _token_content(source[f"{name}_token"])
        if text not in vocab.ids:
            raise FormatError(f"{file_name}: {name}_token {text!r} is not a token of {TOKENIZER_JSON}")
        return vocab.ids[text]
    token_id = (generation or {}).get(f"{name}_token_id")
    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    if token_id is not None and not (_is_id(token_id) and token_id < len(vocab.tokens)):
        raise FormatError(
            f"{GENERATION_CONFIG}: {name}_token_id {shown(token_id)} is outside the vocab of {len(vocab.tokens)}"
        )
    return token_id


def _named_templates(value: list) -> dict[str, str]:
    """tokenizer_config.json's [{"name": ..., "template": ...}, ...]."""
    named = {}
    for entry in value:
        if not (
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str)
        ):
            raise FormatError(
                f"{TOKENIZER_CONFIG}: chat_template entry {shown(entry)} is not an object with a name and a template"
            )
        named[entry["name"]] = entry["template"]
    return named


def _chat_templates(model_dir: Path, config: dict | None) -> tuple[str | None, dict[str, str]]:
    # The template reaches the GGUF (and to-onnx's tokenizer.gguf): read only from inside the folder.
    if folder_files.entry_exists(model_dir, CHAT_TEMPLATE_FILE):
        return folder_files.read_text(model_dir, CHAT_TEMPLATE_FILE), {}
    value = (config or {}).get("chat_template")
    if isinstance(value, list):
        named = _named_templates(value)
        return named.pop("default", None), named
    if value is not None and not isinstance(value, str):
        raise FormatError(f"{TOKENIZER_CONFIG}: chat_template must be a string or a list, found {shown(value)}")
    return value, {}


def _check_unique(tokens: list[str], where: str) -> None:
    """llama.cpp maps token text -> id and refuses a vocabulary where two ids share a text."""
    first_id: dict[str, int] = {}
    for token_id, text in enumerate(tokens):
        if text in first_id:
            raise FormatError(
                f"{where}: tokens {first_id[text]} and {token_id} are both {text!r} (an added token repeating a "
                f"vocab entry under another id?); GGUF needs unique token texts"
            )
        first_id[text] = token_id


def read_hf_tokenizer(model_dir: Path, vocab_size: int, kind: str = "bpe") -> TokenizerMeta:
    """The GGUF tokenizer metadata of the HF folder ``model_dir``, padded to the model's ``vocab_size``. ``kind`` is
    the family's tokenizer (formats/architectures.py): "bpe", or "wordpiece" for BERT encoders."""
    if kind == "wordpiece":
        from qconv.formats.wordpiece_meta import read_wordpiece_tokenizer  # it builds on this module's readers

        return read_wordpiece_tokenizer(model_dir, vocab_size)
    model_dir = Path(model_dir)
    where = str(model_dir / TOKENIZER_JSON)
    tokenizer_json = _read_json(model_dir, TOKENIZER_JSON, required=True)
    model = tokenizer_json.get("model")
    if not isinstance(model, dict) or "type" not in model:
        raise FormatError(f"{where}: no 'model' with a 'type'")
    if model["type"] != "BPE":
        raise FormatError(
            f"{where}: tokenizer model type {model['type']!r} is not supported (supported: BPE, as byte-level BPE or "
            f"SentencePiece-style BPE with byte_fallback)"
        )
    _check_bpe_options(model, where)
    vocab = _read_vocab(tokenizer_json, vocab_size, where)
    if model.get("byte_fallback", False):
        meta = _sentencepiece_meta(tokenizer_json, vocab, where)
    elif any(step.startswith(BYTE_LEVEL_ONLY) for step in pre_tokenizer_steps(tokenizer_json.get("pre_tokenizer"))):
        meta = _byte_level_meta(tokenizer_json, vocab, where)
    else:
        raise FormatError(
            f"{where}: BPE without a ByteLevel pre-tokenizer and without byte_fallback is not supported "
            f"(supported: byte-level BPE, SentencePiece-style BPE with byte_fallback)"
        )

    _check_unique(meta.tokens, where)

    config = _read_json(model_dir, TOKENIZER_CONFIG, required=False)
    special_map = _read_json(model_dir, SPECIAL_TOKENS_MAP, required=False)
    generation = _read_json(model_dir, GENERATION_CONFIG, required=False)
    sources = [(TOKENIZER_CONFIG, config), (SPECIAL_TOKENS_MAP, special_map)]
    meta.bos_id = _special_token("bos", sources, vocab, generation)
    meta.eos_id = _special_token("eos", sources, vocab, generation)
    meta.unk_id = _special_token("unk", sources, vocab, None)
    if meta.unk_id is None and model.get("unk_token") in vocab.ids:
        meta.unk_id = vocab.ids[model["unk_token"]]
    meta.pad_id = _special_token("pad", sources, vocab, None)

    ends = _template_ends(tokenizer_json.get("post_processor"), vocab, where)
    if ends.known:
        meta.add_bos, meta.bos_id = _add_flag("bos", ends.first, meta.bos_id, where)
        meta.add_eos, meta.eos_id = _add_flag("eos", ends.last, meta.eos_id, where)
    # tokenizer_config.json's flags are what transformers' tokenizer classes apply; they win.
    if config is not None and isinstance(config.get("add_bos_token"), bool):
        meta.add_bos = config["add_bos_token"]
    if config is not None and isinstance(config.get("add_eos_token"), bool):
        meta.add_eos = config["add_eos_token"]
    meta.chat_template, meta.named_chat_templates = _chat_templates(model_dir, config)
    return meta
