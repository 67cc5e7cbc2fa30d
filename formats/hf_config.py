"""HF `config.json` -> ModelSpec: the architecture and shapes of a llama-family checkpoint.

Supported families are rows of ARCHITECTURES; adding one means adding a row (and its tensor rows in
tensor_names.py), not a branch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qconv.formats.errors import FormatError


@dataclass(frozen=True)
class ArchInfo:
    gguf_arch: str  # general.architecture in the GGUF
    rope_permute: bool  # llama.cpp's llama arch rotates interleaved pairs: q/k rows are permuted from HF's halves
    qkv_bias: bool  # q/k/v projections always carry biases (Qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k (Qwen3)


ARCHITECTURES: dict[str, ArchInfo] = {
    "LlamaForCausalLM": ArchInfo("llama", rope_permute=True, qkv_bias=False, qk_norm=False),
    "MistralForCausalLM": ArchInfo("llama", rope_permute=True, qkv_bias=False, qk_norm=False),
    "Qwen2ForCausalLM": ArchInfo("qwen2", rope_permute=False, qkv_bias=True, qk_norm=False),
    "Qwen3ForCausalLM": ArchInfo("qwen3", rope_permute=False, qkv_bias=False, qk_norm=True),
}

# rope_scaling types we translate, by the `rope_type` (or legacy `type`) field
ROPE_SCALING_TYPES = ("linear", "llama3", "yarn")


@dataclass(frozen=True)
class ModelSpec:
    architecture: str  # the HF class name, e.g. LlamaForCausalLM
    arch: ArchInfo
    name: str
    n_layers: int
    hidden: int
    ffn: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_eps: float
    rope_theta: float
    context_length: int
    tied_embeddings: bool
    attention_bias: bool  # q/k/v (and o for llama's attention_bias) carry biases
    rope_scaling: dict = field(default_factory=dict)
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @property
    def gguf_arch(self) -> str:
        return self.arch.gguf_arch

    @property
    def o_bias(self) -> bool:
        # Llama's `attention_bias` also puts a bias on o_proj; Qwen2's biases are on q/k/v only.
        return self.attention_bias and not self.arch.qkv_bias

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF tensor name -> shape, for every tensor this spec implies (torch order: out_features, in_features)."""
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, self.hidden),
            "model.norm.weight": (self.hidden,),
        }
        if not self.tied_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, self.hidden)
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            shapes |= {
                p + "input_layernorm.weight": (self.hidden,),
                p + "post_attention_layernorm.weight": (self.hidden,),
                p + "self_attn.q_proj.weight": (q_dim, self.hidden),
                p + "self_attn.k_proj.weight": (kv_dim, self.hidden),
                p + "self_attn.v_proj.weight": (kv_dim, self.hidden),
                p + "self_attn.o_proj.weight": (self.hidden, q_dim),
                p + "mlp.gate_proj.weight": (self.ffn, self.hidden),
                p + "mlp.up_proj.weight": (self.ffn, self.hidden),
                p + "mlp.down_proj.weight": (self.hidden, self.ffn),
            }
            if self.attention_bias:
                shapes |= {
                    p + "self_attn.q_proj.bias": (q_dim,),
                    p + "self_attn.k_proj.bias": (kv_dim,),
                    p + "self_attn.v_proj.bias": (kv_dim,),
                }
            if self.o_bias:
                shapes[p + "self_attn.o_proj.bias"] = (self.hidden,)
            if self.arch.qk_norm:
                shapes |= {
                    p + "self_attn.q_norm.weight": (self.head_dim,),
                    p + "self_attn.k_norm.weight": (self.head_dim,),
                }
        return shapes


def _load_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise FormatError(f"{model_dir}: not a folder (expected a Hugging Face model folder with config.json)")
    if not path.is_file():
        raise FormatError(f"{path}: missing (a Hugging Face model folder needs config.json)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return config


def _required(config: dict, key: str, path: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FormatError(f"{path}: '{key}' must be a positive integer, found {value!r}")
    return value


def _rope_scaling(config: dict, path: Path) -> dict:
    # transformers 5 folds rope_theta and the scaling into `rope_parameters`
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(scaling, dict):
        raise FormatError(f"{path}: rope_scaling must be an object, found {scaling!r}")
    if not scaling:
        return {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return {}
    if kind not in ROPE_SCALING_TYPES:
        raise FormatError(
            f"{path}: rope_scaling type {kind!r} is not supported; supported: {', '.join(ROPE_SCALING_TYPES)}"
        )
    return dict(scaling, rope_type=kind)


def read_model_spec(model_dir: Path) -> ModelSpec:
    model_dir = Path(model_dir)
    config = _load_config(model_dir)
    path = model_dir / "config.json"
    architectures = config.get("architectures") or []
    supported = [a for a in architectures if a in ARCHITECTURES]
    if not supported:
        raise FormatError(
            f"{path}: architecture {architectures or config.get('model_type')!r} is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    architecture = supported[0]
    arch = ARCHITECTURES[architecture]
    hidden = _required(config, "hidden_size", path)
    n_heads = _required(config, "num_attention_heads", path)
    n_kv_heads = config.get("num_key_value_heads") or n_heads
    head_dim = config.get("head_dim") or hidden // n_heads
    if n_heads % n_kv_heads:
        raise FormatError(
            f"{path}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}"
        )
    if not config.get("head_dim") and hidden % n_heads:
        raise FormatError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")
    eos = config.get("eos_token_id")
    return ModelSpec(
        architecture=architecture,
        arch=arch,
        name=config.get("_name_or_path") or model_dir.resolve().name,
        n_layers=_required(config, "num_hidden_layers", path),
        hidden=hidden,
        ffn=_required(config, "intermediate_size", path),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        vocab_size=_required(config, "vocab_size", path),
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(config.get("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
        context_length=int(config.get("max_position_embeddings", 2048)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=arch.qkv_bias or bool(config.get("attention_bias", False)),
        rope_scaling=_rope_scaling(config, path),
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) and eos else eos,
    )
