"""What the exported decoder computes for a family, as data: derived from ModelSpec and the architecture table
(formats/architectures.py), read by onnx_export.DecoderGraph. Facts are transformers 5's (modeling_llama, _qwen3,
_gemma3, _phi3, _smollm3), which is what the exported graph is tested against.

- norms are addressed by their GGUF role (attn_norm, ffn_norm, post_attention_norm, ...): HF names say different
  things per family (Llama's `post_attention_layernorm` is the FFN's input norm, Gemma 3's the attention output's).
  A row's norm_shift is added to the stored gain (Gemma's RMSNorm computes x * (1 + w)).
- layers: per layer, the rope table it uses (the global base, Gemma 3's local base on sliding-window layers, none
  on SmolLM3's every 4th layer) and its attention window (Gemma 3's sliding layers; Phi-3's `sliding_window`, on
  every layer as transformers applies it; a key is seen while query - key < window, transformers' overlay).
- rope frequencies: the default, linear, llama3, yarn and longrope inverse frequencies over the rotated dimensions
  (partial_rotary_factor: the first rotary_dim of each head, the rest passed through).
- LongRoPE (Phi-3): transformers picks the long factors when max(position_ids) + 1 passes
  original_max_position_embeddings, the short ones otherwise, per forward call; the graph does the same with a
  Where on that length (onnxruntime-genai's phi3 export switches caches with an If on the sequence length). With the
  KV cache a call is one step, so the keys cached before the switch keep their short-factor rotation, as in
  transformers' and onnxruntime-genai's own caches: a generation that crosses the length matches a full recompute
  only up to it. The attention factor sqrt(1 + ln(factor) / ln(original)) scales cos and sin either way.
- Gemma's embedding scale sqrt(hidden) is rounded to the dtype of the checkpoint's embedding table, as
  Gemma3ScaledWordEmbedding multiplies in the weights' dtype (bf16 checkpoints: 25.25 for 640, not 25.298); an
  f32 checkpoint keeps the exact value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qconv.formats.errors import FormatError
from qconv.formats.gguf_write import llama3_rope_factors
from qconv.formats.hf_config import ModelSpec

# transformers' ACT2FN names of the FFN activations the graph spells -> the graph's activation
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
# fused checkpoint linear layers (Phi-3) -> the ModelSpec widths of their parts, in order
FUSED_PART_DIMS = {"self_attn.qkv_proj": ("q_dim", "kv_dim", "kv_dim"), "mlp.gate_up_proj": ("ffn", "ffn")}
GLOBAL_ROPE, LOCAL_ROPE = "global", "local"


@dataclass(frozen=True)
class RopeFrequencies:
    """Inverse frequencies [rotary_dim / 2] and the factor on cos/sin; LongRoPE adds the long set and the length
    past which it replaces the short one."""

    inv_freq: np.ndarray
    factor: float = 1.0
    long_inv_freq: np.ndarray | None = None
    long_after: int | None = None  # long_inv_freq when max(position_ids) + 1 > long_after


@dataclass(frozen=True)
class LayerPlan:
    rope: str | None  # GLOBAL_ROPE, LOCAL_ROPE or None (no rope in this layer)
    window: int | None  # sliding-window attention over this many positions (the query's own included); None: all


@dataclass(frozen=True)
class DecoderLayout:
    spec: ModelSpec
    layers: tuple[LayerPlan, ...]
    activation: str  # "silu" or "gelu_tanh"
    attention_scale: float
    embedding_scale: float | None
    logit_softcap: float | None

    def norm(self, role: str, bid: int | None = None) -> tuple[str, float] | None:
        """(HF name, shift) of the norm with GGUF role `role` (attn_norm, ffn_norm, post_attention_norm,
        post_ffw_norm, attn_q_norm, attn_k_norm, output_norm), None when the family has none."""
        template = f"blk.{{bid}}.{role}.weight" if bid is not None else f"{role}.weight"
        for row in self.spec.arch.rows:
            if row.gguf == template and self.spec.row_present(row):
                return row.hf.format(bid=bid), row.norm_shift
        return None

    def stored_fused(self, group: str) -> bool:
        """The checkpoint stores the linear layers of `group` (self_attn.qkv_proj, mlp.gate_up_proj) as one."""
        return any(row.hf == f"model.layers.{{bid}}.{group}.weight" for row in self.spec.arch.rows)

    def part_sizes(self, group: str) -> list[int]:
        return [int(getattr(self.spec, dim)) for dim in FUSED_PART_DIMS[group]]

    @property
    def rope_kinds(self) -> list[str]:
        return sorted({layer.rope for layer in self.layers if layer.rope})

    @property
    def windows(self) -> list[int | None]:
        return sorted({layer.window for layer in self.layers}, key=lambda w: -1 if w is None else w)


def _rounded_to(value: float, dtype: str) -> float:
    """value as the checkpoint's dtype holds it (safetensors names: BF16, F16, F32)."""
    if dtype == "BF16":  # round to nearest even on the top 16 bits, as torch's cast does
        bits = int(np.float32(value).view(np.uint32))
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return float(np.uint32(bits).view(np.float32))
    if dtype == "F16":
        return float(np.float16(value))
    return float(np.float32(value))


def graph_activation(spec: ModelSpec) -> str:
    """The FFN activation the graph spells for the config's; one it cannot spell is a one-line error (checked
    before the export reads a tensor)."""
    activation = ACTIVATIONS.get(spec.hidden_act)
    if activation is None:
        raise FormatError(
            f"{spec.architecture}: FFN activation '{spec.hidden_act}' has no ONNX spelling; supported: "
            f"{', '.join(ACTIVATIONS)}"
        )
    return activation


def decoder_layout(spec: ModelSpec, embedding_dtype: str = "F32") -> DecoderLayout:
    """The family's graph for `spec` (one plan per layer: only once the tensors have confirmed the layer count);
    `embedding_dtype` is the checkpoint's dtype of the embedding table."""
    arch = spec.arch
    activation = graph_activation(spec)
    layers = []
    for i in range(spec.n_layers):
        sliding = bool(arch.sliding_pattern) and (i + 1) % arch.sliding_pattern != 0
        if arch.no_rope_step and (i + 1) % arch.no_rope_step == 0:
            rope = None
        else:
            rope = LOCAL_ROPE if sliding and spec.rope_theta_swa is not None else GLOBAL_ROPE
        window = spec.sliding_window if (sliding or not arch.sliding_pattern) else None
        layers.append(LayerPlan(rope, window))
    scalar = spec.query_pre_attn_scalar or spec.head_dim
    return DecoderLayout(
        spec=spec,
        layers=tuple(layers),
        activation=activation,
        attention_scale=1.0 / math.sqrt(scalar),
        embedding_scale=_rounded_to(math.sqrt(spec.hidden), embedding_dtype) if arch.scaled_embeddings else None,
        logit_softcap=spec.final_logit_softcapping,
    )


# ---------------------------------------------------------------- rope frequencies


def rope_frequencies(spec: ModelSpec, kind: str = GLOBAL_ROPE) -> RopeFrequencies:
    """As transformers' rope init functions compute them, over spec.rotary_dim; LOCAL_ROPE is Gemma 3's
    sliding-window base, unscaled (hf_config refuses scaling there)."""
    dim = spec.rotary_dim
    base = spec.rope_theta_swa if kind == LOCAL_ROPE else spec.rope_theta
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = {} if kind == LOCAL_ROPE else spec.rope_scaling
    rope_type = scaling.get("rope_type")
    if rope_type == "linear":
        return RopeFrequencies((inv_freq / float(scaling["factor"])).astype(np.float32))
    if rope_type == "llama3":
        return RopeFrequencies((inv_freq / llama3_rope_factors(spec).astype(np.float64)).astype(np.float32))
    if rope_type == "yarn":
        return _yarn(spec, inv_freq)
    if rope_type == "longrope":
        return _longrope(spec, base)
    return RopeFrequencies(inv_freq.astype(np.float32))


def rope_inv_freq(spec: ModelSpec) -> tuple[np.ndarray, float]:
    """The global layers' inverse frequencies and cos/sin factor (LongRoPE: the short set)."""
    found = rope_frequencies(spec)
    return found.inv_freq, found.factor


def _yarn(spec: ModelSpec, inv_freq: np.ndarray) -> RopeFrequencies:
    """YaRN (Peng et al. 2023) as transformers implements it: blend interpolated and extrapolated frequencies
    over a ramp of dimensions, and scale cos/sin by the attention factor."""
    s, dim, base = spec.rope_scaling, spec.rotary_dim, spec.rope_theta
    factor = float(s["factor"])
    original = float(s.get("original_max_position_embeddings") or spec.context_length)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention = mscale(factor)
    beta_fast, beta_slow = float(s.get("beta_fast") or 32), float(s.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    blended = inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation
    return RopeFrequencies(blended.astype(np.float32), float(attention))


def _longrope(spec: ModelSpec, base: float) -> RopeFrequencies:
    """LongRoPE (Phi-3): per-frequency divisors, short and long; the attention factor from factor =
    max_position_embeddings / original_max_position_embeddings unless the config gives them."""
    s, dim = spec.rope_scaling, spec.rotary_dim
    original = int(s["original_max_position_embeddings"])
    factor = float(s.get("factor") or spec.context_length / original)
    attention = s.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    powers = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)

    def inv_freq(key: str) -> np.ndarray:
        return (1.0 / (np.asarray(s[key], dtype=np.float64) * powers)).astype(np.float32)

    return RopeFrequencies(inv_freq("short_factor"), float(attention), inv_freq("long_factor"), original)
