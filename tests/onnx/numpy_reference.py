"""An independent float64 numpy forward pass over the dequantized weights of an exported model.onnx.

It reads the initializers back (onnx.numpy_helper unpacks int4/uint4), dequantizes every block as ONNX's
DequantizeLinear defines it, and runs the llama-family forward pass from config.json alone, so a graph bug in
the exporter (rope, masks, GQA, norms) shows up as a logits difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def dequantize_kn(q: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, block: int) -> np.ndarray:
    """q [K, N] with blocks along K; scales/zp [ceil(K/block), N]."""
    k = q.shape[0]
    levels = q.astype(np.float64)
    if zp is not None:
        levels = levels - np.repeat(zp.astype(np.float64), block, axis=0)[:k]
    return levels * np.repeat(scales.astype(np.float64), block, axis=0)[:k]


class ExportedWeights:
    def __init__(self, model_path: Path, fused_sizes: dict[str, list[int]] | None = None):
        model = onnx.load(str(model_path))  # external data is loaded from beside the file
        self.arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        # block size per quantized initializer (the head may use smaller blocks than the linear layers)
        self.blocks = {
            n.input[0]: a.i
            for n in model.graph.node
            if n.op_type == "DequantizeLinear"
            for a in n.attribute
            if a.name == "block_size"
        }
        self.parts = self._fused_parts(fused_sizes or {})

    def _fused_parts(self, fused_sizes: dict[str, list[int]]) -> dict[str, tuple[str, int, int]]:
        """Part stem (e.g. ...self_attn.k_proj) -> (fused stem, first column, end column) of every fused weight,
        given each fused kind's part widths."""
        from qconv.converter.onnx_export import FUSED_LINEAR

        parts = {}
        for name in self.blocks:
            stem = name.removesuffix("_q")
            layer, _, kind = stem.partition(".self_attn.") if ".self_attn." in stem else stem.partition(".mlp.")
            kind = ("self_attn." if ".self_attn." in stem else "mlp.") + kind
            if kind not in FUSED_LINEAR:
                continue
            ends = np.cumsum(fused_sizes[kind])
            for j, part in enumerate(FUSED_LINEAR[kind]):
                parts[f"{layer}.{part}"] = (stem, int(ends[j - 1]) if j else 0, int(ends[j]))
        return parts

    def get(self, name: str) -> np.ndarray | None:
        part = self.parts.get(name.removesuffix(".bias")) if name.endswith(".bias") else None
        if part is not None and part[0] + ".bias" in self.arrays:
            return self.arrays[part[0] + ".bias"][part[1] : part[2]]
        return self.arrays.get(name)

    def linear(self, stem: str) -> np.ndarray:
        """The float K x N weight of one linear layer (float32 exports keep HF names with '.weight')."""
        if stem in self.parts:
            fused, start, end = self.parts[stem]
            return self.linear(fused)[:, start:end]
        if stem + "_q" in self.arrays:
            return dequantize_kn(
                self.arrays[stem + "_q"], self.arrays[stem + "_scale"], self.get(stem + "_zp"), self.blocks[stem + "_q"]
            )
        return self.arrays[stem + ".weight"].astype(np.float64)

    def embedding(self) -> np.ndarray:
        """[vocab, hidden] rows, from the lookup scales."""
        if "embed_tokens_q" not in self.arrays:
            return self.arrays["model.embed_tokens.weight"].astype(np.float64)
        q = self.arrays["embed_tokens_q"]  # [hidden, vocab]
        block = self.blocks.get("embed_tokens_q") or next(iter(self.blocks.values()))
        if "embed_tokens_lookup_scale" not in self.arrays:  # tied: the lookup transposes the head's scales
            return dequantize_kn(q, self.arrays["lm_head_scale"], self.get("lm_head_zp"), block).T
        scales = self.arrays["embed_tokens_lookup_scale"].T
        zp = self.get("embed_tokens_lookup_zp")
        return dequantize_kn(q, scales, None if zp is None else zp.T, block).T

    def head(self) -> np.ndarray:
        if "lm_head_q" in self.arrays or "lm_head.weight" in self.arrays:
            return self.linear("lm_head")
        return dequantize_kn(
            self.arrays["embed_tokens_q"], self.arrays["lm_head_scale"], self.get("lm_head_zp"),
            self.blocks["embed_tokens_q"],
        )  # fmt: skip


def rms(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(folder: Path, ids: list[int], config_dir: Path) -> np.ndarray:
    """Logits [len(ids), vocab] of the exported weights; config_dir holds the source config.json (no rope
    scaling: the scaled frequencies are checked against transformers separately)."""
    cfg = json.loads((Path(config_dir) / "config.json").read_text())
    hidden, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    hd = cfg.get("head_dim") or hidden // n_heads
    sizes = {
        "self_attn.qkv_proj": [n_heads * hd, n_kv * hd, n_kv * hd],
        "mlp.gate_up_proj": [cfg["intermediate_size"]] * 2,
    }
    w = ExportedWeights(Path(folder) / "model.onnx", sizes)
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    qk_norm = "Qwen3" in cfg["architectures"][0]
    n = len(ids)
    x = w.embedding()[np.asarray(ids)]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    angles = np.arange(n)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    causal = np.tril(np.ones((n, n), dtype=bool))
    group = n_heads // n_kv

    def bias(name: str):
        b = w.get(name)
        return 0.0 if b is None else b.astype(np.float64)

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w.arrays[p + "input_layernorm.weight"], eps)
        q = (h @ w.linear(p + "self_attn.q_proj") + bias(p + "self_attn.q_proj.bias")).reshape(n, n_heads, hd)
        k = (h @ w.linear(p + "self_attn.k_proj") + bias(p + "self_attn.k_proj.bias")).reshape(n, n_kv, hd)
        v = (h @ w.linear(p + "self_attn.v_proj") + bias(p + "self_attn.v_proj.bias")).reshape(n, n_kv, hd)
        if qk_norm:
            q = rms(q, w.arrays[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, w.arrays[p + "self_attn.k_norm.weight"], eps)
        q = q * cos[:, None] + rotate_half(q) * sin[:, None]
        k = k * cos[:, None] + rotate_half(k) * sin[:, None]
        out = np.empty((n, n_heads, hd))
        for head in range(n_heads):
            scores = q[:, head] @ k[:, head // group].T / np.sqrt(hd)
            scores = np.where(causal, scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[:, head] = probs @ v[:, head // group]
        x = x + out.reshape(n, -1) @ w.linear(p + "self_attn.o_proj") + bias(p + "self_attn.o_proj.bias")
        h = rms(x, w.arrays[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w.linear(p + "mlp.gate_proj")
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w.linear(p + "mlp.up_proj"))) @ w.linear(p + "mlp.down_proj")
    return rms(x, w.arrays["model.norm.weight"], eps) @ w.head()
