"""The function-preserving rotated variant of a llama-family HF folder (quantizer issue: weights on no grid).

1. Fold each RMSNorm gain into the linear layers that read its output: input_layernorm -> q/k/v,
   post_attention_layernorm -> gate/up, the final norm -> the output head (which unties a tied head).
   The norm weights become 1.
2. Rotate the residual stream by a random orthogonal Q: embedding rows E@Q; every layer reading the stream
   (q/k/v/gate/up, lm_head) W@Q; every layer writing it (o_proj, down_proj) Q^T@W.

An RMSNorm with unit gain commutes with an orthogonal rotation (it keeps the norm of each row), so the model computes
the same function up to rounding, while every weight moves off the grid of the file it was dequantized from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qconv.formats.errors import FormatError
from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.samples.safetensors_write import DTYPE_NAMES, TensorEntry, write_safetensors, write_variant_folder_files

READS_STREAM = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
READS_FFN_NORM = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
WRITES_STREAM = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal n x n matrix (float64): QR of a Gaussian matrix with R's diagonal made positive."""
    gaussian = np.random.default_rng(seed).standard_normal((n, n))
    q, r = np.linalg.qr(gaussian)
    return q * np.sign(np.diag(r))


def _layer_part(name: str) -> tuple[int, str] | None:
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        return int(parts[2]), parts[3]
    return None


def build_rotated(src_dir: Path, out_dir: Path, seed: int = 0, dtype: str = "bf16") -> Path:
    """Write the rotated variant of the HF folder ``src_dir`` into ``out_dir`` (weights stored as ``dtype``)."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    with open(src_dir / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    hidden = int(config["hidden_size"])
    rotation = random_orthogonal(hidden, seed)
    stored = DTYPE_NAMES[dtype]
    out_dir.mkdir(parents=True, exist_ok=True)

    with SafetensorsSource(src_dir) as source:
        names = set(source.entries)
        unexpected = [n for n in names if n.endswith(".bias") and any(w[: -len("weight")] in n for w in WRITES_STREAM)]
        if unexpected:
            raise FormatError(
                f"{src_dir}: bias on a layer writing the residual stream is not supported: {unexpected[0]}"
            )

        def gain_of(name: str) -> np.ndarray:
            if name not in names:
                raise FormatError(f"{src_dir}: tensor '{name}' is missing")
            return source.read_f32(name).astype(np.float64)

        def produce(entry: TensorEntry) -> np.ndarray:
            name = entry.name
            if name == "lm_head.weight":
                head_name = "lm_head.weight" if "lm_head.weight" in names else "model.embed_tokens.weight"
                head = source.read_f32(head_name).astype(np.float64)
                return (head * gain_of("model.norm.weight")) @ rotation
            if name == "model.embed_tokens.weight":
                return source.read_f32(name).astype(np.float64) @ rotation
            if name == "model.norm.weight":
                return np.ones(entry.shape)
            layer_part = _layer_part(name)
            if layer_part is not None:
                layer, part = layer_part
                if part in NORMS:
                    return np.ones(entry.shape)
                if part in READS_STREAM:
                    gain = gain_of(f"model.layers.{layer}.input_layernorm.weight")
                    return (source.read_f32(name).astype(np.float64) * gain) @ rotation
                if part in READS_FFN_NORM:
                    gain = gain_of(f"model.layers.{layer}.post_attention_layernorm.weight")
                    return (source.read_f32(name).astype(np.float64) * gain) @ rotation
                if part in WRITES_STREAM:
                    return rotation.T @ source.read_f32(name).astype(np.float64)
            # Everything else (q/k/v biases, Qwen3's per-head q/k norms) lives inside a block: unchanged.
            return source.read_f32(name)

        entries = [
            TensorEntry(name, stored, tuple(source.entries[name].shape)) for name in sorted(names - {"lm_head.weight"})
        ]
        entries.append(TensorEntry("lm_head.weight", stored, (int(config["vocab_size"]), hidden)))
        write_safetensors(out_dir / "model.safetensors", entries, lambda e: produce(e).astype(np.float32))

    config["tie_word_embeddings"] = False
    write_variant_folder_files(src_dir, out_dir, config, dtype)
    return out_dir
