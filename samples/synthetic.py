"""Random-weight HF folders of every family in formats/architectures.py, for fast tests and benchmarks.

The config.json is written first; the tensors are then the ones the architecture table implies for it
(ModelSpec.expected_shapes), so a folder has exactly what the converter expects. Each tensor's values come from its
own generator (seeded by ``seed`` and the tensor's name), so a folder is written one tensor at a time, shard by
shard: a 1B-parameter folder needs memory for one tensor, not the model.
The tokenizer is a small byte-level BPE (256 byte tokens, merges learned from a built-in text and then filled up to
``vocab``, three ChatML specials) written as real tokenizer.json files. Encoders (BERT) are built by
samples/synthetic_encoder.py: a WordPiece tokenizer and sentence-transformers' pooling files.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.formats.architectures import FAMILIES, match_hf
from qconv.formats.errors import FormatError
from qconv.formats.hf_config import ModelSpec, read_model_spec
from qconv.formats.tokenizer_json import write_hf_tokenizer
from qconv.formats.tokenizer_meta import TOKEN_CONTROL, TOKEN_NORMAL, TokenizerMeta
from qconv.samples.safetensors_write import DTYPE_NAMES, TORCH_DTYPES, TensorEntry, write_safetensors


@dataclass(frozen=True)
class ArchTraits:
    """What a random folder of a family needs beyond the architecture table: its tokenizer's pre-tokenizer and the
    config keys transformers reads for it."""

    pre_tokenizer: str  # tokenizer.ggml.pre name of the byte-level pre-tokenizer the family uses
    extra_config: tuple[tuple[str, object], ...] = ()
    extra_specials: tuple[str, ...] = ()  # special tokens llama.cpp's vocabulary loader looks up for the family


TRAITS = {
    "llama": ArchTraits("gpt-2", (("mlp_bias", False), ("pretraining_tp", 1))),
    "mistral": ArchTraits("gpt-2", (("sliding_window", None),)),
    "qwen2": ArchTraits("qwen2", (("use_sliding_window", False), ("sliding_window", None))),
    "qwen3": ArchTraits("qwen2", (("use_sliding_window", False), ("sliding_window", None))),
    "gemma3": ArchTraits(
        "gpt-2",
        (
            ("hidden_activation", "gelu_pytorch_tanh"),
            ("final_logit_softcapping", None),
            ("attn_logit_softcapping", None),
            ("use_bidirectional_attention", False),
        ),
    ),  # fmt: skip
    "smollm3": ArchTraits("gpt-2", (("mlp_bias", False), ("use_sliding_window", False), ("no_rope_layer_interval", 4))),
    # llama.cpp sets attributes on <unk>, <s> and </s> of any model named phi3 and fails without them
    "phi3": ArchTraits("gpt-2", (("resid_pdrop", 0.0), ("embd_pdrop", 0.0)), ("<unk>", "<s>", "</s>")),
    "qwen3moe": ArchTraits(
        "qwen2",
        (
            ("use_sliding_window", False),
            ("sliding_window", None),
            ("norm_topk_prob", True),
            ("decoder_sparse_step", 1),
            ("mlp_only_layers", []),
            ("output_router_logits", False),
        ),
    ),  # fmt: skip
    "olmoe": ArchTraits("gpt-2", (("norm_topk_prob", False), ("clip_qkv", None), ("output_router_logits", False))),
    "bert": ArchTraits("default"),  # WordPiece, not byte-level: samples/synthetic_encoder.py writes the folder
}
ARCHS = {name: FAMILIES[name] for name in TRAITS}  # the families `qconv sample random --arch` builds

WEIGHT_STD = 0.02
ROUTER_STD = 0.5  # router logits far apart: top-k choices that rounding differences cannot flip
BIAS_STD = 0.1  # large enough that a dropped or misplaced bias changes the logits visibly
BLOCK_VALUES = 1 << 22  # values generated at a time: bounds memory for any tensor size
NORM_STD = 0.1  # norm gains are 1 + noise, so a norm applied to the wrong tensor shows

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MERGE_CORPUS = """\
The capital of France is Paris. The quick brown fox jumps over the lazy dog. Once upon a time there was a small
model that answered questions about the world: what is the weather, where is the station, how do you say hello in
another language? It counted 1, 2, 3, 10, 100 and 2024, wrote code like def main(): return 0, and printed
"Hello, world!" to the terminal. Tokens, merges and vocabularies are the things a tokenizer learns from text.
"""


def _tensor_entries(spec: ModelSpec, dtype: str) -> list[TensorEntry]:
    """The tensors the architecture table implies, embedding first and the output head last (the order of
    checkpoints on the Hub)."""
    st = DTYPE_NAMES[dtype]
    shapes = spec.expected_shapes()
    last = [n for n in ("model.norm.weight", "lm_head.weight") if n in shapes]
    order = [n for n in shapes if n not in last] + last
    return [TensorEntry(name, st, shapes[name]) for name in order]


def _random_values(entry: TensorEntry, seed: int, shifted: bool) -> Iterator[np.ndarray]:
    """The tensor's values in blocks of rows (at most about BLOCK_VALUES each), from its own generator.
    ``shifted``: a norm stored as w in x * (1 + w) (Gemma), so its gains are noise around 0, not 1."""
    rng = np.random.default_rng([seed, zlib.crc32(entry.name.encode())])
    row_shape = entry.shape[1:]
    row_values = int(np.prod(row_shape, dtype=np.int64))
    step = max(1, BLOCK_VALUES // row_values) if row_shape else entry.shape[0]
    for start in range(0, entry.shape[0], step):
        noise = rng.standard_normal((min(step, entry.shape[0] - start), *row_shape), dtype=np.float32)
        if entry.name.lower().endswith("norm.weight"):  # BERT spells it LayerNorm
            noise *= NORM_STD
            if not shifted:
                noise += 1.0
        elif entry.name.endswith(".mlp.gate.weight"):
            noise *= ROUTER_STD
        else:
            noise *= BIAS_STD if entry.name.endswith(".bias") else WEIGHT_STD
        yield noise


def _shards(entries: list[TensorEntry], shard_bytes: int | None) -> list[list[TensorEntry]]:
    if shard_bytes is None:
        return [entries]
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for entry in entries:
        if shard_bytes is not None and shards[-1] and size + entry.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE spells every byte as one visible character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def synthetic_bpe(n_merges: int) -> tuple[list[str], list[str]]:
    """(tokens, merges) of a byte-level BPE: 256 byte tokens, then one token per merge, in merge order.

    Merges are learned greedily from MERGE_CORPUS (most frequent pair first, ties by text); past what the corpus
    supports, pairs of existing tokens are merged in id order, which is still a valid BPE.
    """
    byte_char = _bytes_to_unicode()
    tokens = [byte_char[b] for b in range(256)]
    vocab = set(tokens)
    words = Counter(
        tuple(byte_char[b] for b in word.encode())
        for word in re.findall(r"'s|'t| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", MERGE_CORPUS)
    )
    merges: list[str] = []

    def add(left: str, right: str) -> None:
        merges.append(f"{left} {right}")
        tokens.append(left + right)
        vocab.add(left + right)

    while len(merges) < n_merges:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        candidates = [(-count, pair) for pair, count in pairs.items() if pair[0] + pair[1] not in vocab]
        if not candidates:
            break
        _, (left, right) = min(candidates)
        add(left, right)
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
                    out.append(left + right)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    # A merge's parts never contain a space (byte-level spells it Ġ), so "left right" stays unambiguous.
    left_id = 256
    while len(merges) < n_merges:
        for right_id in range(256, len(tokens)):
            left, right = tokens[left_id % len(tokens)], tokens[right_id]
            if left + right not in vocab:
                add(left, right)
                break
        left_id += 1
    return tokens, merges


def synthetic_tokenizer_fields(vocab: int, pre: str, extra_specials: tuple[str, ...] = ()) -> TokenizerMeta:
    specials = [*SPECIAL_TOKENS, *extra_specials]
    n_merges = vocab - 256 - len(specials)
    if n_merges < 0:
        raise ValueError(f"vocab {vocab} is too small: need at least {256 + len(specials)} (bytes + specials)")
    tokens, merges = synthetic_bpe(n_merges)
    specials_start = len(tokens)
    tokens += specials
    types = [TOKEN_NORMAL] * specials_start + [TOKEN_CONTROL] * len(specials)
    return TokenizerMeta(
        model="gpt2",
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=merges,
        scores=None,
        bos_id=specials_start,
        eos_id=specials_start + 2,
        pad_id=specials_start,
        add_bos=False,
        chat_template=CHATML_TEMPLATE,
    )


def random_model_config(
    arch: str,
    hidden: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int | None,
    ffn: int,
    vocab: int,
    tied: bool,
    dtype: str,
    rope_scaling: dict | None,
    n_experts: int = 8,
    n_experts_used: int = 2,
    expert_ffn: int | None = None,
    sliding_window: int = 32,
    context_length: int = 4096,
    extra_config: dict | None = None,
) -> dict:
    """config.json of a random folder; ``extra_config`` sets (or, with None, removes) any further key."""
    family, traits = ARCHS[arch], TRAITS[arch]
    special_start = vocab - len(SPECIAL_TOKENS) - len(traits.extra_specials)
    head_dim = head_dim or hidden // n_heads
    config = {
        "architectures": [family.hf_class],
        "model_type": family.model_type,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": context_length,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": rope_scaling,
        "attention_bias": family.qkv_bias,
        "attention_dropout": 0.0,
        "initializer_range": WEIGHT_STD,
        "use_cache": True,
        "tie_word_embeddings": tied,
        "vocab_size": vocab,
        "bos_token_id": special_start,
        "eos_token_id": special_start + 2,
        "pad_token_id": special_start,
        "torch_dtype": TORCH_DTYPES[dtype],
    }
    config.update(dict(traits.extra_config))
    if family.moe:
        config |= {"num_experts": n_experts, "num_experts_per_tok": n_experts_used}
        if family.expert_ffn_key != "intermediate_size":
            config[family.expert_ffn_key] = expert_ffn or ffn
    if family.sliding_pattern:  # Gemma 3: llama.cpp's layer pattern, the rope bases per layer type (transformers 5)
        n = family.sliding_pattern
        del config["rope_theta"]
        config |= {
            "sliding_window": sliding_window,
            "query_pre_attn_scalar": head_dim,
            "layer_types": ["sliding_attention" if (i + 1) % n else "full_attention" for i in range(n_layers)],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0, **(rope_scaling or {})},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        }
        del config["rope_scaling"]
    if family.gguf_arch == "phi3":
        config |= {"original_max_position_embeddings": context_length, "sliding_window": None}
    for key, value in (extra_config or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def build_random_model(
    out_dir: Path,
    arch: str = "llama",
    hidden: int = 256,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int | None = None,
    ffn: int = 512,
    vocab: int = 512,
    tied: bool = False,
    dtype: str = "bf16",
    seed: int = 0,
    shard_bytes: int | None = None,
    rope_scaling: dict | None = None,
    n_experts: int = 8,
    n_experts_used: int = 2,
    expert_ffn: int | None = None,
    sliding_window: int = 32,
    context_length: int = 4096,
    extra_config: dict | None = None,
) -> Path:
    """Write a random-weight HF folder of ``arch`` (a family of formats/architectures.py) into ``out_dir``.

    MoE families (qwen3moe, olmoe) take ``n_experts``, ``n_experts_used`` and ``expert_ffn`` (qwen3moe's
    moe_intermediate_size; olmoe's experts are ``ffn`` wide); gemma3 takes ``sliding_window``; phi3 LongRoPE is
    ``rope_scaling={"rope_type": "longrope", "long_factor": [...], "short_factor": [...]}`` with
    ``extra_config={"original_max_position_embeddings": N}``. ``extra_config`` sets any other config key.
    ``shard_bytes`` splits the weights into ``model-0000i-of-0000N.safetensors`` files of at most about that size
    plus ``model.safetensors.index.json``; without it the weights go to one ``model.safetensors``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}' (known: {', '.join(ARCHS)})")
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype '{dtype}' (known: {', '.join(TORCH_DTYPES)})")
    if ARCHS[arch].encoder:  # BERT: as many key/value heads as heads, learned positions up to the context
        from qconv.samples.synthetic_encoder import build_random_encoder

        return build_random_encoder(
            out_dir, hidden=hidden, n_layers=n_layers, n_heads=n_heads, ffn=ffn, vocab=vocab, dtype=dtype, seed=seed,
            context_length=context_length, extra_config=extra_config,
        )  # fmt: skip
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    tokenizer = synthetic_tokenizer_fields(
        vocab, TRAITS[arch].pre_tokenizer, TRAITS[arch].extra_specials
    )  # checks vocab before writing
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = random_model_config(
        arch, hidden, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab, tied, dtype, rope_scaling,
        n_experts, n_experts_used, expert_ffn, sliding_window, context_length, extra_config,
    )  # fmt: skip
    _write_json(out_dir / "config.json", config)
    try:
        spec = read_model_spec(out_dir)  # the table says which tensors this config implies
    except FormatError as e:
        raise ValueError(str(e)) from None
    entries = _tensor_entries(spec, dtype)
    shifted_names = {e.name for e in entries if match_hf(spec.arch, e.name).row.norm_shift}

    def produce(entry: TensorEntry) -> Iterator[np.ndarray]:
        return _random_values(entry, seed, entry.name in shifted_names)

    shards = _shards(entries, shard_bytes)
    if len(shards) == 1 and shard_bytes is None:
        write_safetensors(out_dir / "model.safetensors", entries, produce)
    else:
        weight_map = {}
        for number, shard in enumerate(shards, start=1):
            name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(out_dir / name, shard, produce)
            weight_map.update({entry.name: name for entry in shard})
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
        _write_json(out_dir / "model.safetensors.index.json", index)
    generation = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    _write_json(out_dir / "generation_config.json", generation)
    write_hf_tokenizer(tokenizer, out_dir, model_max_length=context_length)
    return out_dir


def _write_json(path: Path, content: dict) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(content, out, indent=2)
        out.write("\n")
