"""HF `config.json` -> ModelSpec: the architecture and shapes of a checkpoint.

Supported families are rows of formats/architectures.py; adding one means adding a row there, not a branch here.
What is read here is the config itself: every value checked by key, transformers' spellings of 4.x and 5.x
(`rope_theta` or `rope_parameters`, per layer type for Gemma 3), and the family's refusals (configs whose model
llama.cpp would run differently from transformers), all before a tensor is read or an output written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from qconv.formats import folder_files
from qconv.formats.architectures import ARCHITECTURES, REFUSED_CLASSES, REFUSED_MODEL_TYPES, Architecture
from qconv.formats.errors import FormatError
from qconv.formats.printable import shown
from qconv.formats.sentence_transformers import SentenceEmbedding, read_sentence_embedding

CONFIG_FILE = "config.json"
ArchInfo = Architecture  # the name older callers use


@dataclass(frozen=True)
class ModelSpec:
    architecture: str  # the HF class name, e.g. LlamaForCausalLM
    arch: Architecture
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
    rope_dim: int = 0  # dimensions rotated per head (partial rotary); 0: head_dim
    rope_theta_swa: float | None = None  # rope base of the sliding-window layers (Gemma 3's local base)
    sliding_window: int | None = None
    final_logit_softcapping: float | None = None
    n_experts: int = 0
    n_experts_used: int = 0
    expert_ffn: int = 0
    original_context_length: int | None = None  # Phi-3's original_max_position_embeddings (its converter writes it)
    hidden_act: str = "silu"  # the FFN's gate activation (Gemma's `hidden_activation`, else `hidden_act`)
    query_pre_attn_scalar: float | None = None  # Gemma: queries scaled by its inverse square root, not head_dim's
    # encoders (BERT): LayerNorm epsilon, rows of the token-type embedding, how sentence vectors are pooled
    layer_norm_eps: float | None = None
    n_token_types: int = 0
    embedding: SentenceEmbedding | None = None

    @property
    def gguf_arch(self) -> str:
        return self.arch.gguf_arch

    @property
    def o_bias(self) -> bool:
        # Llama's `attention_bias` also puts a bias on o_proj; Qwen2's biases are on q/k/v only.
        return self.attention_bias and not self.arch.qkv_bias

    @property
    def untied(self) -> bool:
        return not self.tied_embeddings

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def qkv_dim(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    @property
    def gate_up_dim(self) -> int:
        return 2 * self.ffn

    @property
    def rotary_dim(self) -> int:
        return self.rope_dim or self.head_dim

    def row_present(self, row) -> bool:
        return row.when is None or bool(getattr(self, row.when))

    def row_shape(self, row) -> tuple[int, ...]:
        """An HF tensor's shape (torch order: out_features, in_features) as the row states it."""
        return tuple(d if isinstance(d, int) else int(getattr(self, d)) for d in row.shape)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF tensor name -> shape, for every tensor this spec implies (torch order: out_features, in_features).
        Experts are listed one HF tensor each, as checkpoints store them."""
        shapes: dict[str, tuple[int, ...]] = {}
        rows = [r for r in self.arch.rows if self.row_present(r)]
        for row in rows:
            if not row.per_block:
                shapes[row.hf] = self.row_shape(row)
        for bid in range(self.n_layers):
            for row in rows:
                if row.per_expert:
                    for xid in range(self.n_experts):
                        shapes[row.hf.format(bid=bid, xid=xid)] = self.row_shape(row)
                elif row.per_block:
                    shapes[row.hf.format(bid=bid)] = self.row_shape(row)
        return shapes

    def gguf_shape(self, row) -> tuple[int, ...]:
        """The GGUF tensor's shape in numpy order: experts stacked on a leading axis."""
        return (self.n_experts, *self.row_shape(row)) if row.per_expert else self.row_shape(row)


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


def _number_list(value) -> bool:
    return isinstance(value, list) and all(_positive_number(v) for v in value)


EXPECTED[_number_list] = "a list of positive finite numbers"

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
    "longrope": {  # Phi-3: per-frequency divisors for short and long contexts
        "long_factor": (_number_list, REQUIRED),
        "short_factor": (_number_list, REQUIRED),
        "factor": (_positive_number, None),
        "attention_factor": (_positive_number, None),
        "original_max_position_embeddings": (_positive_int, None),
    },
}
ROPE_SCALING_ALIASES = {"su": "longrope"}  # Phi-3's early name
LAYER_TYPES = ("full_attention", "sliding_attention")


def _rope_parameters(config: dict, path: Path) -> tuple[str, dict, dict]:
    """(key, global parameters, sliding-window-layer parameters) under either spelling: transformers 4.x
    `rope_scaling`, 5.x `rope_parameters`, or 5.x `rope_parameters` per layer type (Gemma 3)."""
    key = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
    scaling = config.get(key) or {}
    if not isinstance(scaling, dict):
        raise FormatError(f"{path}: '{key}' must be an object, found {shown(scaling)}")
    if any(t in scaling for t in LAYER_TYPES):
        for t in LAYER_TYPES:
            if not isinstance(scaling.get(t) or {}, dict):
                raise FormatError(f"{path}: '{key}.{t}' must be an object, found {shown(scaling[t])}")
        return f"{key}.full_attention", scaling.get("full_attention") or {}, scaling.get("sliding_attention") or {}
    return key, scaling, {}


def _scaling_kind(scaling: dict) -> str | None:
    kind = scaling.get("rope_type", scaling.get("type"))
    return ROPE_SCALING_ALIASES.get(kind, kind) if isinstance(kind, str) else kind


def _rope_scaling(config: dict, path: Path, context_length: int, arch: Architecture) -> dict:
    key, scaling, _ = _rope_parameters(config, path)
    kind = _scaling_kind(scaling)
    if not scaling or kind == "default" or (kind is None and not key.startswith("rope_scaling")):
        return {}
    supported = tuple(ROPE_SCALING_ALIASES.get(t, t) for t in arch.rope_scaling_types)
    if kind not in supported:
        raise FormatError(
            f"{path}: rope_scaling type '{shown(kind)}' is not supported for {arch.hf_class}; "
            f"supported: {', '.join(arch.rope_scaling_types)}"
        )
    for field_name, (check, default) in ROPE_SCALING_FIELDS[kind].items():
        _field(scaling, field_name, check, path, default, within=key)
    checked = dict(scaling, rope_type=kind)
    if kind in ("yarn", "longrope") and scaling.get("original_max_position_embeddings") is None:
        original = config.get("original_max_position_embeddings") if kind == "longrope" else None
        checked["original_max_position_embeddings"] = original or context_length
    return checked


def _architecture(config: dict, path: Path) -> str:
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise FormatError(f"{path}: 'architectures' must be a list of class names, found {shown(architectures)}")
    supported = [a for a in architectures if a in ARCHITECTURES]
    refused = [a for a in architectures if a in REFUSED_CLASSES]
    if not supported and (refused or config.get("model_type") in REFUSED_MODEL_TYPES):
        name = refused[0] if refused else config.get("model_type")
        reason = REFUSED_CLASSES.get(name) or next(iter(REFUSED_CLASSES.values()))
        raise FormatError(f"{path}: architecture '{shown(name)}' is not supported: {reason}")
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


def _rope_theta(config: dict, path: Path) -> tuple[float, float | None]:
    """(rope base of the global layers, rope base of the sliding-window layers or None). A base inside
    `rope_parameters` wins over a top-level one, as transformers 5 reads them."""
    parameters = config.get("rope_parameters")
    parameters = parameters if isinstance(parameters, dict) else {}
    within = "rope_parameters"
    local = {}
    if any(t in parameters for t in LAYER_TYPES):
        local = parameters.get("sliding_attention") or {}
        parameters, within = parameters.get("full_attention") or {}, "rope_parameters.full_attention"
    theta = _field(parameters, "rope_theta", _positive_number, path, None, within=within)
    if theta is None:
        theta = _field(config, "rope_theta", _positive_number, path, 10000.0)
    local_theta = _field(config, "rope_local_base_freq", _positive_number, path, None)
    if local:
        within = "rope_parameters.sliding_attention"
        local_theta = _field(local, "rope_theta", _positive_number, path, local_theta, within=within)
        if _scaling_kind(local) not in (None, "default"):
            raise FormatError(
                f"{path}: '{within}.rope_type' is '{shown(_scaling_kind(local))}'; llama.cpp scales only the "
                "global layers' rope"
            )
    return float(theta), None if local_theta is None else float(local_theta)


def _text_config(config: dict, path: Path) -> dict:
    """A multimodal config's text model: `text_config` over the top level (whose `architectures` stays)."""
    text = config.get("text_config") or {}
    if not isinstance(text, dict):
        raise FormatError(f"{path}: 'text_config' must be an object, found {shown(text)}")
    return {**config, **{k: v for k, v in text.items() if k != "architectures"}}


def _check_refusals(config: dict, arch: Architecture, path: Path) -> None:
    for refusal in arch.refusals:
        value = config.get(refusal.key)
        if not refusal.allowed(value, config):
            found = f"'{shown(value)}'" if isinstance(value, str) else shown(value)
            raise FormatError(f"{path}: '{refusal.key}' is {found}: not supported, {refusal.why}")


def _check_sliding_pattern(config: dict, arch: Architecture, n_layers: int, path: Path) -> None:
    """llama.cpp's gemma3 makes every `sliding_pattern`-th layer global and the others sliding-window."""
    n = arch.sliding_pattern
    expected = ["sliding_attention" if (i + 1) % n else "full_attention" for i in range(n_layers)]
    layer_types = config.get("layer_types")
    if layer_types is not None and layer_types != expected:
        raise FormatError(
            f"{path}: 'layer_types' is not llama.cpp's {arch.gguf_arch} pattern ({n - 1} sliding-window layers, "
            f"then one global): found {shown(layer_types)}"
        )
    pattern = config.get("sliding_window_pattern", n)
    if layer_types is None and pattern != n:
        raise FormatError(
            f"{path}: 'sliding_window_pattern' is {shown(pattern)}; llama.cpp's {arch.gguf_arch} needs {n}"
        )


def _attention_scale_check(config: dict, arch: Architecture, spec_fields: dict, path: Path) -> None:
    """Gemma 3 scales queries by query_pre_attn_scalar ** -0.5; llama.cpp by head_dim ** -0.5 (hidden / heads for
    its 27B, recognised by 62 layers)."""
    if "query_pre_attn_scalar" not in dict(arch.config_defaults):
        return
    hidden, n_heads = spec_fields["hidden"], spec_fields["n_heads"]
    used = hidden // n_heads if spec_fields["n_layers"] == 62 else spec_fields["head_dim"]
    scalar = config.get("query_pre_attn_scalar")
    if scalar != used:
        raise FormatError(
            f"{path}: 'query_pre_attn_scalar' is {shown(scalar)}; llama.cpp's {arch.gguf_arch} scales queries by "
            f"1/sqrt({used}) for this shape"
        )


def _moe_fields(config: dict, arch: Architecture, path: Path) -> dict:
    if not arch.moe:
        return {}
    n_experts = _required(config, "num_experts", path)
    used = _required(config, "num_experts_per_tok", path)
    if used > n_experts:
        raise FormatError(f"{path}: 'num_experts_per_tok' {used} is more than 'num_experts' {n_experts}")
    return {"n_experts": n_experts, "n_experts_used": used, "expert_ffn": _required(config, arch.expert_ffn_key, path)}


def _rope_dim(config: dict, scaling: dict, head_dim: int, hidden: int, n_heads: int, path: Path) -> int:
    """Rotated dimensions per head: partial_rotary_factor as llama.cpp's converter reads it."""
    _, parameters, _ = _rope_parameters(config, path)
    factor = config.get("partial_rotary_factor", parameters.get("partial_rotary_factor"))
    if factor is None:
        return 0
    factor = _field({"partial_rotary_factor": factor}, "partial_rotary_factor", _positive_number, path)
    dim = int(factor * hidden) // n_heads
    if dim > head_dim or dim % 2:
        raise FormatError(
            f"{path}: 'partial_rotary_factor' {factor} gives {dim} rotated dimensions; expected an even number up to "
            f"head_dim {head_dim}"
        )
    return 0 if dim == head_dim else dim


def _encoder_fields(config: dict, arch: Architecture, model_dir: Path, context_length: int, path: Path) -> dict:
    if not arch.encoder:
        return {}
    return {
        "layer_norm_eps": float(_field(config, "layer_norm_eps", _positive_number, path)),
        "n_token_types": _required(config, "type_vocab_size", path),
        "embedding": read_sentence_embedding(model_dir, context_length),
    }


def _family_key(arch: Architecture, key: str, otherwise: str | None) -> str | None:
    """`key` where the family's transformers config defines it (the table lists its default), else `otherwise`."""
    return key if key in dict(arch.config_defaults) else otherwise


def read_model_spec(model_dir: Path) -> ModelSpec:
    model_dir = Path(model_dir)
    config = _load_config(model_dir)
    path = model_dir / CONFIG_FILE
    architecture = _architecture(config, path)
    arch = ARCHITECTURES[architecture]
    if arch.text_config:
        config = _text_config(config, path)
    config = {**dict(arch.config_defaults), **{k: v for k, v in config.items() if v is not None}}
    _check_refusals(config, arch, path)
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
    head_dim = explicit_head_dim or hidden // n_heads
    n_layers = _required(config, "num_hidden_layers", path)
    if arch.sliding_pattern:
        _check_sliding_pattern(config, arch, n_layers, path)
    _attention_scale_check(
        config, arch, dict(hidden=hidden, n_heads=n_heads, n_layers=n_layers, head_dim=head_dim), path
    )
    if arch.qk_norm == "full" and n_kv_heads != n_heads:
        # llama.cpp's olmoe sizes attn_k_norm by n_embd: grouped-query k norms do not load
        raise FormatError(
            f"{path}: 'num_key_value_heads' is {n_kv_heads}; llama.cpp's {arch.gguf_arch} needs it equal to "
            f"num_attention_heads ({n_heads})"
        )
    if arch.gguf_arch in ("phi3", "olmoe") and head_dim * n_heads != hidden:
        raise FormatError(
            f"{path}: 'head_dim' {head_dim} x {n_heads} heads is not hidden_size {hidden}; llama.cpp's "
            f"{arch.gguf_arch} needs them equal"
        )
    context_length = _field(config, "max_position_embeddings", _positive_int, path, 2048)
    rope_scaling = _rope_scaling(config, path, context_length, arch)
    rope_theta, rope_theta_swa = _rope_theta(config, path)
    rope_dim = _rope_dim(config, rope_scaling, head_dim, hidden, n_heads, path)
    if rope_scaling.get("rope_type") == "longrope":
        half = (rope_dim or head_dim) // 2
        for key in ("long_factor", "short_factor"):
            if len(rope_scaling[key]) != half:
                raise FormatError(
                    f"{path}: 'rope_scaling.{key}' has {len(rope_scaling[key])} values; the rotated dimensions need "
                    f"{half}"
                )
    softcap = config.get("final_logit_softcapping") if arch.sliding_pattern else None
    return ModelSpec(
        architecture=architecture,
        arch=arch,
        name=_field(config, "_name_or_path", _text, path, "") or model_dir.resolve().name,
        n_layers=n_layers,
        hidden=hidden,
        ffn=_required(config, "intermediate_size", path),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        vocab_size=_required(config, "vocab_size", path),
        rms_eps=float(_field(config, "rms_norm_eps", _positive_number, path, 1e-6)),
        rope_theta=rope_theta,
        context_length=context_length,
        tied_embeddings=_field(config, "tie_word_embeddings", _boolean, path, False),
        attention_bias=arch.qkv_bias or arch.encoder or _field(config, "attention_bias", _boolean, path, False),
        rope_scaling=rope_scaling,
        bos_token_id=_field(config, "bos_token_id", _token_id, path, None),
        eos_token_id=_eos_token_id(config, path),
        rope_dim=rope_dim,
        rope_theta_swa=rope_theta_swa if arch.sliding_pattern else None,
        sliding_window=_field(config, "sliding_window", _positive_int, path, None) if arch.sliding_window_key else None,
        final_logit_softcapping=(
            float(_field(config, "final_logit_softcapping", _positive_number, path)) if softcap is not None else None
        ),
        original_context_length=(
            _field(config, "original_max_position_embeddings", _positive_int, path, None)
            if "longrope" in arch.rope_scaling_types
            else None
        ),
        hidden_act=_field(config, _family_key(arch, "hidden_activation", "hidden_act"), _text, path, "silu"),
        query_pre_attn_scalar=(
            _field(config, "query_pre_attn_scalar", _positive_number, path)
            if _family_key(arch, "query_pre_attn_scalar", None)
            else None
        ),
        **_moe_fields(config, arch, path),
        **_encoder_fields(config, arch, model_dir, context_length, path),
    )
