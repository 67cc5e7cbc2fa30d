"""An independent float64 numpy forward pass over the dequantized weights of an exported model.onnx.

It reads the initializers back (onnx.numpy_helper unpacks int4/uint4), dequantizes every block as ONNX's
DequantizeLinear defines it, and runs the family's forward pass (as transformers writes it) from config.json and
the checkpoint's norm gains alone, so a graph bug in the exporter (rope, masks, windows, GQA, norms) shows up as
a logits difference.
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


def _rope_parameters(cfg: dict) -> tuple[dict, dict]:
    """(global, sliding-window layers') rope parameters under transformers 4.x or 5.x spellings."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if "full_attention" in params:
        return params["full_attention"], params.get("sliding_attention") or {}
    return params, {}


def _inv_freq(cfg: dict, params: dict, rotary: int, n: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies over the rotated dimensions and the cos/sin factor: the default, or LongRoPE's short
    or long set by the sequence length n (transformers' rule), with its attention factor."""
    theta = params.get("rope_theta") or cfg.get("rope_theta", 10000.0)
    powers = theta ** (np.arange(0, rotary, 2) / rotary)
    if params.get("rope_type", params.get("type")) not in ("longrope", "su"):
        return 1.0 / powers, 1.0
    original = params.get("original_max_position_embeddings") or cfg["original_max_position_embeddings"]
    factor = params.get("factor") or cfg["max_position_embeddings"] / original
    attention = params.get("attention_factor") or (
        1.0 if factor <= 1 else np.sqrt(1 + np.log(factor) / np.log(original))
    )
    ext = np.asarray(params["long_factor"] if n > original else params["short_factor"])
    return 1.0 / (ext * powers), attention


def _rounded(value: float, torch_dtype: str | None) -> float:
    """value in the checkpoint's dtype (Gemma multiplies its embeddings by sqrt(hidden) in that dtype)."""
    if torch_dtype == "bfloat16":
        bits = int(np.float32(value).view(np.uint32))
        return float(np.uint32((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32))
    return float(np.float16(value)) if torch_dtype == "float16" else float(np.float32(value))


def forward(folder: Path, ids: list[int], config_dir: Path) -> np.ndarray:
    """Logits [len(ids), vocab] of the exported weights, by transformers' forward pass of the config's family
    (Llama, Qwen2/3, SmolLM3's rope-free layers, Phi-3's fused layers, partial rotary, LongRoPE and sliding window,
    Gemma 3's scaled embeddings, 1 + w norms, post norms, GeGLU, local rope and sliding layers, query scale and
    soft-capping); config_dir holds the source config.json, and the norm gains, read from the checkpoint (so a
    gain the exporter shifted wrongly shows). Linear, llama3 and yarn scaling are not spelled here: the scaled
    frequencies are checked against transformers separately."""
    from qconv.formats.safetensors_stream import SafetensorsSource

    cfg = json.loads((Path(config_dir) / "config.json").read_text())
    family = cfg["architectures"][0]
    gemma, phi3 = family.startswith("Gemma3"), family.startswith("Phi3")
    hidden, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    hd = cfg.get("head_dim") or hidden // n_heads
    sizes = {
        "self_attn.qkv_proj": [n_heads * hd, n_kv * hd, n_kv * hd],
        "mlp.gate_up_proj": [cfg["intermediate_size"]] * 2,
    }
    w = ExportedWeights(Path(folder) / "model.onnx", sizes)
    with SafetensorsSource(Path(config_dir)) as checkpoint:
        norms = {n: checkpoint.read_f32(n).astype(np.float64) for n in checkpoint.entries if n.endswith("norm.weight")}
    if gemma:
        norms = {n: 1.0 + g for n, g in norms.items()}
    eps = cfg.get("rms_norm_eps", 1e-6)
    n = len(ids)
    layer_types = cfg.get("layer_types") or ["full_attention"] * cfg["num_hidden_layers"]
    rope_layers = [1] * cfg["num_hidden_layers"]  # SmolLM3: 0 where a layer has no rope, by default every 4th
    if family.startswith("SmolLM3"):
        interval = cfg.get("no_rope_layer_interval") or 4
        rope_layers = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(len(rope_layers))]
    window = cfg.get("sliding_window") if (gemma or phi3) else None
    global_params, local_params = _rope_parameters(cfg)
    rotary = int(hd * (cfg.get("partial_rotary_factor") or global_params.get("partial_rotary_factor") or 1.0))
    tables = {}
    for kind, params in (("full_attention", global_params), ("sliding_attention", local_params or global_params)):
        inv, factor = _inv_freq(cfg, params, rotary, n)
        angles = np.arange(n)[:, None] * inv[None]
        tables[kind] = (
            factor * np.cos(np.concatenate([angles, angles], -1)),
            factor * np.sin(np.concatenate([angles, angles], -1)),
        )
    positions = np.arange(n)
    distance = positions[:, None] - positions[None, :]
    group = n_heads // n_kv
    scale = (cfg["query_pre_attn_scalar"] if gemma else hd) ** -0.5

    def bias(name: str):
        b = w.get(name)
        return 0.0 if b is None else b.astype(np.float64)

    def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        x_rot = x[..., :rotary]
        return np.concatenate([x_rot * cos[:, None] + rotate_half(x_rot) * sin[:, None], x[..., rotary:]], -1)

    def gelu_tanh(x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    x = w.embedding()[np.asarray(ids)]
    if gemma:
        x = x * _rounded(np.sqrt(hidden), cfg.get("torch_dtype") or cfg.get("dtype"))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, norms[p + "input_layernorm.weight"], eps)
        q = (h @ w.linear(p + "self_attn.q_proj") + bias(p + "self_attn.q_proj.bias")).reshape(n, n_heads, hd)
        k = (h @ w.linear(p + "self_attn.k_proj") + bias(p + "self_attn.k_proj.bias")).reshape(n, n_kv, hd)
        v = (h @ w.linear(p + "self_attn.v_proj") + bias(p + "self_attn.v_proj.bias")).reshape(n, n_kv, hd)
        if p + "self_attn.q_norm.weight" in norms:
            q = rms(q, norms[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, norms[p + "self_attn.k_norm.weight"], eps)
        if rope_layers[i]:
            cos, sin = tables[layer_types[i]]
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        visible = distance >= 0
        if window and (phi3 or layer_types[i] == "sliding_attention"):
            visible &= distance < window
        out = np.empty((n, n_heads, hd))
        for head in range(n_heads):
            scores = q[:, head] @ k[:, head // group].T * scale
            scores = np.where(visible, scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[:, head] = probs @ v[:, head // group]
        h = out.reshape(n, -1) @ w.linear(p + "self_attn.o_proj") + bias(p + "self_attn.o_proj.bias")
        if gemma:
            x = x + rms(h, norms[p + "post_attention_layernorm.weight"], eps)
            h = rms(x, norms[p + "pre_feedforward_layernorm.weight"], eps)
        else:
            x = x + h
            h = rms(x, norms[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ w.linear(p + "mlp.gate_proj"), h @ w.linear(p + "mlp.up_proj")
        h = ((gelu_tanh(gate) if gemma else gate / (1 + np.exp(-gate))) * up) @ w.linear(p + "mlp.down_proj")
        x = x + (rms(h, norms[p + "post_feedforward_layernorm.weight"], eps) if gemma else h)
    logits = rms(x, norms["model.norm.weight"], eps) @ w.head()
    cap = cfg.get("final_logit_softcapping") if gemma else None
    return cap * np.tanh(logits / cap) if cap else logits
