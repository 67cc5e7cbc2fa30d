"""Random-weight HF folders of the llama family (llama, mistral, qwen2, qwen3) for fast tests and benchmarks.

Each tensor's values come from its own generator (seeded by ``seed`` and the tensor's position), so a folder is
written one tensor at a time, shard by shard: a 1B-parameter folder needs memory for one tensor, not the model.
The tokenizer is a small byte-level BPE (256 byte tokens, merges learned from a built-in text and then filled up to
``vocab``, three ChatML specials) written as real tokenizer.json files.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.formats.tokenizer_json import write_hf_tokenizer
from qconv.formats.tokenizer_meta import TOKEN_CONTROL, TOKEN_NORMAL, TokenizerMeta
from qconv.samples.safetensors_write import DTYPE_NAMES, TensorEntry, write_safetensors


@dataclass(frozen=True)
class ArchTraits:
    architecture: str
    model_type: str
    qkv_bias: bool  # Qwen2 always carries q/k/v biases
    qk_norm: bool  # Qwen3 RMS-normalises each head of q and k
    pre_tokenizer: str  # tokenizer.ggml.pre name of the byte-level pre-tokenizer the family uses
    extra_config: tuple[tuple[str, object], ...] = ()


ARCHS = {
    "llama": ArchTraits(
        "LlamaForCausalLM", "llama", False, False, "gpt-2", (("mlp_bias", False), ("pretraining_tp", 1))
    ),
    "mistral": ArchTraits("MistralForCausalLM", "mistral", False, False, "gpt-2", (("sliding_window", None),)),
    "qwen2": ArchTraits(
        "Qwen2ForCausalLM", "qwen2", True, False, "qwen2", (("use_sliding_window", False), ("sliding_window", None))
    ),
    "qwen3": ArchTraits(
        "Qwen3ForCausalLM", "qwen3", False, True, "qwen2", (("use_sliding_window", False), ("sliding_window", None))
    ),
}
TORCH_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}

WEIGHT_STD = 0.02
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


def _tensor_entries(config: dict, traits: ArchTraits, dtype: str) -> list[TensorEntry]:
    hidden, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim, n_heads, n_kv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    st = DTYPE_NAMES[dtype]
    entries = [TensorEntry("model.embed_tokens.weight", st, (vocab, hidden))]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        entries.append(TensorEntry(p + "input_layernorm.weight", st, (hidden,)))
        for proj, rows in (("q_proj", n_heads * head_dim), ("k_proj", n_kv * head_dim), ("v_proj", n_kv * head_dim)):
            entries.append(TensorEntry(f"{p}self_attn.{proj}.weight", st, (rows, hidden)))
            if traits.qkv_bias:
                entries.append(TensorEntry(f"{p}self_attn.{proj}.bias", st, (rows,)))
        if traits.qk_norm:
            entries.append(TensorEntry(p + "self_attn.q_norm.weight", st, (head_dim,)))
            entries.append(TensorEntry(p + "self_attn.k_norm.weight", st, (head_dim,)))
        entries.append(TensorEntry(p + "self_attn.o_proj.weight", st, (hidden, n_heads * head_dim)))
        entries.append(TensorEntry(p + "post_attention_layernorm.weight", st, (hidden,)))
        entries.append(TensorEntry(p + "mlp.gate_proj.weight", st, (ffn, hidden)))
        entries.append(TensorEntry(p + "mlp.up_proj.weight", st, (ffn, hidden)))
        entries.append(TensorEntry(p + "mlp.down_proj.weight", st, (hidden, ffn)))
    entries.append(TensorEntry("model.norm.weight", st, (hidden,)))
    if not config["tie_word_embeddings"]:
        entries.append(TensorEntry("lm_head.weight", st, (vocab, hidden)))
    return entries


def _random_values(entry: TensorEntry, seed: int, index: int) -> Iterator[np.ndarray]:
    """The tensor's values in blocks of rows (at most about BLOCK_VALUES each), from its own generator."""
    rng = np.random.default_rng([seed, index])
    row_shape = entry.shape[1:]
    row_values = int(np.prod(row_shape, dtype=np.int64))
    step = max(1, BLOCK_VALUES // row_values) if row_shape else entry.shape[0]
    for start in range(0, entry.shape[0], step):
        noise = rng.standard_normal((min(step, entry.shape[0] - start), *row_shape), dtype=np.float32)
        if entry.name.endswith("norm.weight"):
            noise *= NORM_STD
            noise += 1.0
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


def synthetic_tokenizer_fields(vocab: int, pre: str) -> TokenizerMeta:
    n_merges = vocab - 256 - len(SPECIAL_TOKENS)
    if n_merges < 0:
        raise ValueError(f"vocab {vocab} is too small: need at least {256 + len(SPECIAL_TOKENS)} (bytes + specials)")
    tokens, merges = synthetic_bpe(n_merges)
    specials_start = len(tokens)
    tokens += SPECIAL_TOKENS
    types = [TOKEN_NORMAL] * specials_start + [TOKEN_CONTROL] * len(SPECIAL_TOKENS)
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
) -> dict:
    traits = ARCHS[arch]
    special_start = vocab - len(SPECIAL_TOKENS)
    config = {
        "architectures": [traits.architecture],
        "model_type": traits.model_type,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim or hidden // n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": rope_scaling,
        "attention_bias": traits.qkv_bias,
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
) -> Path:
    """Write a random-weight HF folder of ``arch`` into ``out_dir`` and return it.

    ``shard_bytes`` splits the weights into ``model-0000i-of-0000N.safetensors`` files of at most about that size
    plus ``model.safetensors.index.json``; without it the weights go to one ``model.safetensors``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}' (known: {', '.join(ARCHS)})")
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype '{dtype}' (known: {', '.join(TORCH_DTYPES)})")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    traits = ARCHS[arch]
    config = random_model_config(
        arch, hidden, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab, tied, dtype, rope_scaling
    )
    entries = _tensor_entries(config, traits, dtype)
    index_of = {entry.name: index for index, entry in enumerate(entries)}

    def produce(entry: TensorEntry) -> Iterator[np.ndarray]:
        return _random_values(entry, seed, index_of[entry.name])

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
    _write_json(out_dir / "config.json", config)
    generation = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    _write_json(out_dir / "generation_config.json", generation)
    write_hf_tokenizer(synthetic_tokenizer_fields(vocab, traits.pre_tokenizer), out_dir, model_max_length=4096)
    return out_dir


def _write_json(path: Path, content: dict) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(content, out, indent=2)
        out.write("\n")
