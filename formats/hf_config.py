"""HF `config.json` -> ModelSpec: the architecture and shapes of a llama-family checkpoint.

Supported families are rows of ARCHITECTURES; adding one means adding a row (and its tensor rows in
tensor_names.py), not a branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.printable import shown

CONFIG_FILE = "config.json"


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
    path = Path(model_dir) / CONFIG_FILE
    if not Path(model_dir).is_dir():
        raise FormatError(f"{model_dir}: not a folder (expected a Hugging Face model folder with config.json)")
    if not folder_files.entry_exists(model_dir, CONFIG_FILE):
        raise FormatError(f"{path}: missing (a Hugging Face model folder needs config.json)")
    config = folder_files.read_json(model_dir, CONFIG_FILE)
    if not isinstance(config, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return config


# ---------------------------------------------------------------------------------------------------------------
# Field checks: every number that sizes something or is written into a GGUF is checked here, by key, before use.

MAX_CONFIG_INT = 2**31 - 1  # the C runtime's int fields; GGUF stores these as uint32


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_CONFIG_INT


def _token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_CONFIG_INT


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _boolean(value) -> bool:
    return isinstance(value, bool)


def _text(value) -> bool:
    return isinstance(value, str)


EXPECTED = {
    _positive_int: f"a positive integer up to {MAX_CONFIG_INT}",
    _token_id: f"a token id (an integer from 0 to {MAX_CONFIG_INT})",
    _positive_number: "a positive finite number",
    _number: "a finite number",
    _boolean: "true or false",
    _text: "a string",
}
REQUIRED = object()


def _field(config: dict, key: str, check, path: Path, default=REQUIRED, within: str = ""):
    """config[key] checked by `check`; a missing or null key gives `default` (or an error when required)."""
    name = f"{within}.{key}" if within else key
    value = config.get(key)
    if value is None:
        if default is REQUIRED:
            raise FormatError(f"{path}: '{name}' is missing; expected {EXPECTED[check]}")
        return default
    if not check(value):
        raise FormatError(f"{path}: '{name}' must be {EXPECTED[check]}, found {shown(value)}")
    return value


def _required(config: dict, key: str, path: Path) -> int:
    return _field(config, key, _positive_int, path)


# rope_scaling fields per type, checked when present; REQUIRED ones must be there (as transformers requires them).
# yarn's original_max_position_embeddings defaults to max_position_embeddings, as in transformers.
ROPE_SCALING_FIELDS: dict[str, dict[str, tuple]] = {
    "linear": {"factor": (_positive_number, REQUIRED)},
    "llama3": {
        "factor": (_positive_number, None),
        "low_freq_factor": (_positive_number, None),
        "high_freq_factor": (_positive_number, None),
        "original_max_position_embeddings": (_positive_int, None),
    },
    "yarn": {
        "factor": (_positive_number, REQUIRED),
        "original_max_position_embeddings": (_positive_int, None),
        "attention_factor": (_positive_number, None),
        "mscale": (_positive_number, None),
        "mscale_all_dim": (_positive_number, None),
        "beta_fast": (_positive_number, None),
        "beta_slow": (_positive_number, None),
        "truncate": (_boolean, None),
    },
}


def _rope_scaling(config: dict, path: Path, context_length: int) -> dict:
    # transformers 5 folds rope_theta and the scaling into `rope_parameters`
    key = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
    scaling = config.get(key) or {}
    if not isinstance(scaling, dict):
        raise FormatError(f"{path}: '{key}' must be an object, found {shown(scaling)}")
    if not scaling:
        return {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default" or (kind is None and key == "rope_parameters"):
        return {}
    if kind not in ROPE_SCALING_TYPES:
        raise FormatError(
            f"{path}: rope_scaling type '{shown(kind)}' is not supported; supported: {', '.join(ROPE_SCALING_TYPES)}"
        )
    for field_name, (check, default) in ROPE_SCALING_FIELDS[kind].items():
        _field(scaling, field_name, check, path, default, within=key)
    checked = dict(scaling, rope_type=kind)
    if kind == "yarn" and scaling.get("original_max_position_embeddings") is None:
        checked["original_max_position_embeddings"] = context_length
    return checked


def _architecture(config: dict, path: Path) -> str:
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise FormatError(f"{path}: 'architectures' must be a list of class names, found {shown(architectures)}")
    supported = [a for a in architectures if a in ARCHITECTURES]
    if not supported:
        found = architectures or config.get("model_type")
        raise FormatError(
            f"{path}: architecture {shown(found)} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )
    return supported[0]


def _eos_token_id(config: dict, path: Path) -> int | None:
    eos = config.get("eos_token_id")
    if isinstance(eos, list):  # several end tokens: the first is the GGUF's eos
        for item in eos:
            _field({"eos_token_id": item}, "eos_token_id", _token_id, path)
        return eos[0] if eos else None
    return _field(config, "eos_token_id", _token_id, path, None)


def _rope_theta(config: dict, path: Path) -> float:
    parameters = config.get("rope_parameters")
    default = 10000.0
    if isinstance(parameters, dict):
        default = _field(parameters, "rope_theta", _positive_number, path, default, within="rope_parameters")
    return float(_field(config, "rope_theta", _positive_number, path, default))


def read_model_spec(model_dir: Path) -> ModelSpec:
    model_dir = Path(model_dir)
    config = _load_config(model_dir)
    path = model_dir / CONFIG_FILE
    architecture = _architecture(config, path)
    arch = ARCHITECTURES[architecture]
    hidden = _required(config, "hidden_size", path)
    n_heads = _required(config, "num_attention_heads", path)
    n_kv_heads = _field(config, "num_key_value_heads", _positive_int, path, n_heads)
    explicit_head_dim = _field(config, "head_dim", _positive_int, path, None)
    if n_heads % n_kv_heads:
        raise FormatError(
            f"{path}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}"
        )
    if explicit_head_dim is None and hidden % n_heads:
        raise FormatError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")
    context_length = _field(config, "max_position_embeddings", _positive_int, path, 2048)
    return ModelSpec(
        architecture=architecture,
        arch=arch,
        name=_field(config, "_name_or_path", _text, path, "") or model_dir.resolve().name,
        n_layers=_required(config, "num_hidden_layers", path),
        hidden=hidden,
        ffn=_required(config, "intermediate_size", path),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=explicit_head_dim or hidden // n_heads,
        vocab_size=_required(config, "vocab_size", path),
        rms_eps=float(_field(config, "rms_norm_eps", _positive_number, path, 1e-6)),
        rope_theta=_rope_theta(config, path),
        context_length=context_length,
        tied_embeddings=_field(config, "tie_word_embeddings", _boolean, path, False),
        attention_bias=arch.qkv_bias or _field(config, "attention_bias", _boolean, path, False),
        rope_scaling=_rope_scaling(config, path, context_length),
        bos_token_id=_field(config, "bos_token_id", _token_id, path, None),
        eos_token_id=_eos_token_id(config, path),
    )
