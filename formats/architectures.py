"""The architecture table: one row per Hugging Face model class, and the tensor rows of each family.

Every other place that needs to know a family reads it from here: hf_config.py (which classes are supported, the
config refusals, ModelSpec.expected_shapes), tensor_names.py (HF <-> GGUF names, the q/k rope permutation),
converter/sources.py (norm shifts, stacked experts), the CLI's `sample random --arch` choices, onnx_export.py's
genai types, bundle.py's list of what qrun-native runs and samples/synthetic.py's random folders.

A tensor row says, as gguf-py's tensor_mapping.py does, which HF checkpoint name becomes which GGUF name; here it
also says the tensor's shape (a tuple of ModelSpec attribute names or integers, in torch order), when the tensor
exists (a boolean ModelSpec attribute), whether its values are stored shifted (Gemma's RMSNorm computes
x * (1 + w); llama.cpp's convert_hf_to_gguf.py stores w + 1) and which head count groups its rows for llama.cpp's
interleaved rope. `{bid}` stands for the block index, `{xid}` for the expert index: a row with `{xid}` is one HF
tensor per expert, stacked into one 3-D GGUF tensor (n_experts, rows, columns).

Adding a family is adding an Architecture row (and, where the forward pass has a genuinely new step, that step in
native/).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from qconv.formats.errors import FormatError


@dataclass(frozen=True)
class TensorRow:
    hf: str  # HF checkpoint name template ({bid}: block, {xid}: expert)
    gguf: str  # GGUF name template ({bid}: block)
    shape: tuple[str | int, ...]  # HF (torch) shape: ModelSpec attribute names or integers
    when: str | None = None  # a boolean ModelSpec attribute; the tensor exists only when it holds
    norm_shift: float = 0.0  # added to the stored values (Gemma's x * (1 + w) norms: +1)
    rope_heads: str | None = None  # ModelSpec head count grouping the rows for the llama rope permutation

    @property
    def per_block(self) -> bool:
        return "{bid}" in self.hf

    @property
    def per_expert(self) -> bool:
        return "{xid}" in self.hf


def _shifted(rows: tuple[TensorRow, ...]) -> tuple[TensorRow, ...]:
    return tuple(TensorRow(r.hf, r.gguf, r.shape, r.when, 1.0, r.rope_heads) for r in rows)


# --- row groups shared by families ------------------------------------------------------------------------------
L = "model.layers.{bid}."
B = "blk.{bid}."

EMBEDDING = (TensorRow("model.embed_tokens.weight", "token_embd.weight", ("vocab_size", "hidden")),)
OUTPUT_NORM = (TensorRow("model.norm.weight", "output_norm.weight", ("hidden",)),)
OUTPUT = (TensorRow("lm_head.weight", "output.weight", ("vocab_size", "hidden"), when="untied"),)
ATTN_NORM = (TensorRow(L + "input_layernorm.weight", B + "attn_norm.weight", ("hidden",)),)
FFN_NORM = (TensorRow(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", ("hidden",)),)


def _attention(rope_heads: bool) -> tuple[TensorRow, ...]:
    q_heads, k_heads = ("n_heads", "n_kv_heads") if rope_heads else (None, None)
    a = L + "self_attn."
    return (
        TensorRow(a + "q_proj.weight", B + "attn_q.weight", ("q_dim", "hidden"), rope_heads=q_heads),
        TensorRow(a + "k_proj.weight", B + "attn_k.weight", ("kv_dim", "hidden"), rope_heads=k_heads),
        TensorRow(a + "v_proj.weight", B + "attn_v.weight", ("kv_dim", "hidden")),
        TensorRow(a + "o_proj.weight", B + "attn_output.weight", ("hidden", "q_dim")),
        TensorRow(a + "q_proj.bias", B + "attn_q.bias", ("q_dim",), when="attention_bias", rope_heads=q_heads),
        TensorRow(a + "k_proj.bias", B + "attn_k.bias", ("kv_dim",), when="attention_bias", rope_heads=k_heads),
        TensorRow(a + "v_proj.bias", B + "attn_v.bias", ("kv_dim",), when="attention_bias"),
        TensorRow(a + "o_proj.bias", B + "attn_output.bias", ("hidden",), when="o_bias"),
    )


# per-head q/k RMSNorm (Qwen3, Gemma 3) and full-width q/k RMSNorm (OLMoE: over all heads at once)
QK_HEAD_NORM = (
    TensorRow(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", ("head_dim",)),
    TensorRow(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", ("head_dim",)),
)
QK_FULL_NORM = (
    TensorRow(L + "self_attn.q_norm.weight", B + "attn_q_norm.weight", ("q_dim",)),
    TensorRow(L + "self_attn.k_norm.weight", B + "attn_k_norm.weight", ("kv_dim",)),
)
GATED_FFN = (
    TensorRow(L + "mlp.gate_proj.weight", B + "ffn_gate.weight", ("ffn", "hidden")),
    TensorRow(L + "mlp.up_proj.weight", B + "ffn_up.weight", ("ffn", "hidden")),
    TensorRow(L + "mlp.down_proj.weight", B + "ffn_down.weight", ("hidden", "ffn")),
)
# Phi-3 keeps q/k/v and gate/up fused; llama.cpp's phi3 reads them fused (attn_qkv; ffn_up holds gate then up)
FUSED_ATTENTION = (
    TensorRow(L + "self_attn.qkv_proj.weight", B + "attn_qkv.weight", ("qkv_dim", "hidden")),
    TensorRow(L + "self_attn.o_proj.weight", B + "attn_output.weight", ("hidden", "q_dim")),
)
FUSED_FFN = (
    TensorRow(L + "mlp.gate_up_proj.weight", B + "ffn_up.weight", ("gate_up_dim", "hidden")),
    TensorRow(L + "mlp.down_proj.weight", B + "ffn_down.weight", ("hidden", "ffn")),
)
# Mixture of experts: the router, and one HF tensor per expert stacked into ffn_*_exps (n_experts, rows, cols)
MOE_FFN = (
    TensorRow(L + "mlp.gate.weight", B + "ffn_gate_inp.weight", ("n_experts", "hidden")),
    TensorRow(L + "mlp.experts.{xid}.gate_proj.weight", B + "ffn_gate_exps.weight", ("expert_ffn", "hidden")),
    TensorRow(L + "mlp.experts.{xid}.up_proj.weight", B + "ffn_up_exps.weight", ("expert_ffn", "hidden")),
    TensorRow(L + "mlp.experts.{xid}.down_proj.weight", B + "ffn_down_exps.weight", ("hidden", "expert_ffn")),
)
# Gemma 3: a norm after attention and after the FFN as well as before each; all norms (q/k too) stored +1
GEMMA3_NORMS = _shifted(
    (
        *OUTPUT_NORM,
        *ATTN_NORM,
        *QK_HEAD_NORM,
        TensorRow(L + "post_attention_layernorm.weight", B + "post_attention_norm.weight", ("hidden",)),
        TensorRow(L + "pre_feedforward_layernorm.weight", B + "ffn_norm.weight", ("hidden",)),
        TensorRow(L + "post_feedforward_layernorm.weight", B + "post_ffw_norm.weight", ("hidden",)),
    )
)

LLAMA_ROWS = (*EMBEDDING, *OUTPUT_NORM, *OUTPUT, *ATTN_NORM, *_attention(True), *FFN_NORM, *GATED_FFN)
NEOX_ROWS = (*EMBEDDING, *OUTPUT_NORM, *OUTPUT, *ATTN_NORM, *_attention(False), *FFN_NORM, *GATED_FFN)


def _bert_rows() -> tuple[TensorRow, ...]:
    """BERT (post-norm encoder): learned positions and token types, LayerNorms with bias, biased linears, GELU FFN;
    llama.cpp's `bert` names (conversion/bert.py, src/models/bert.cpp)."""
    e, layer = "embeddings.", "encoder.layer.{bid}."
    a, o = layer + "attention.self.", layer + "attention.output."

    def linear(hf: str, gguf: str, rows: str, cols: str) -> tuple[TensorRow, TensorRow]:
        return TensorRow(hf + ".weight", B + gguf + ".weight", (rows, cols)), TensorRow(
            hf + ".bias", B + gguf + ".bias", (rows,)
        )

    def layer_norm(hf: str, gguf: str) -> tuple[TensorRow, TensorRow]:
        return TensorRow(hf + ".weight", gguf + ".weight", ("hidden",)), TensorRow(
            hf + ".bias", gguf + ".bias", ("hidden",)
        )

    return (
        TensorRow(e + "word_embeddings.weight", "token_embd.weight", ("vocab_size", "hidden")),
        TensorRow(e + "position_embeddings.weight", "position_embd.weight", ("context_length", "hidden")),
        TensorRow(e + "token_type_embeddings.weight", "token_types.weight", ("n_token_types", "hidden")),
        *layer_norm(e + "LayerNorm", "token_embd_norm"),
        *linear(a + "query", "attn_q", "q_dim", "hidden"),
        *linear(a + "key", "attn_k", "kv_dim", "hidden"),
        *linear(a + "value", "attn_v", "kv_dim", "hidden"),
        *linear(o + "dense", "attn_output", "hidden", "q_dim"),
        *layer_norm(o + "LayerNorm", B + "attn_output_norm"),
        *linear(layer + "intermediate.dense", "ffn_up", "ffn", "hidden"),
        *linear(layer + "output.dense", "ffn_down", "hidden", "ffn"),
        *layer_norm(layer + "output.LayerNorm", B + "layer_output_norm"),
    )


BERT_ROWS = _bert_rows()


# --- config refusals ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Refusal:
    """config[key] must satisfy `allowed` (given the value and the whole config); otherwise the conversion stops
    before anything is written, naming the key and `why`."""

    key: str
    allowed: object  # Callable[[value, config], bool]
    why: str


def _absent_or(*values):
    return lambda value, config: value is None or value in values


def _smollm3_rope_layers(value, config) -> bool:
    # llama.cpp's smollm3 skips rope on every 4th layer, (il + 1) % 4 == 0 (n_no_rope_layer_step = 4)
    if value is None:
        return True  # transformers derives it from no_rope_layer_interval, refused on its own
    n = config.get("num_hidden_layers")
    return isinstance(value, list) and value == [int((i + 1) % 4 != 0) for i in range(n if isinstance(n, int) else 0)]


# --- the table ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    family: str  # the short name (`qconv sample random --arch`)
    hf_class: str  # config.json `architectures`
    model_type: str  # config.json `model_type`
    gguf_arch: str  # general.architecture
    rows: tuple[TensorRow, ...]
    rope_permute: bool = False  # llama.cpp's rope pairs 2j, 2j+1: q/k rows permuted from HF's rotate-half layout
    qkv_bias: bool = False  # q/k/v always carry biases (Qwen2)
    qk_norm: str | None = None  # "head": per-head RMSNorm of q and k; "full": over all heads (OLMoE)
    expert_ffn_key: str | None = None  # mixture of experts: the config key of one expert's FFN width
    sliding_pattern: int = 0  # every n-th layer global, the others sliding-window (llama.cpp's gemma3: 6)
    rope_scaling_types: tuple[str, ...] = ("linear", "yarn")  # rope_scaling types llama.cpp applies for it
    sliding_window_key: bool = False  # writes {arch}.attention.sliding_window (0 when none, as llama.cpp's phi3)
    config_defaults: tuple[tuple[str, object], ...] = ()  # transformers' defaults for keys real configs omit
    refusals: tuple[Refusal, ...] = ()
    # checkpoint prefixes renamed before lookup (multimodal wrappers), and prefixes skipped with a notice
    renamed_prefixes: tuple[tuple[str, str], ...] = ()
    skipped_prefixes: tuple[str, ...] = ()
    text_config: bool = False  # hyperparameters sit under config.json's `text_config`
    genai_type: str | None = None  # onnxruntime-genai model type (qconv to-onnx), None: no ONNX export
    scaled_embeddings: bool = False  # embedding rows times sqrt(hidden) (Gemma)
    no_rope_step: int = 0  # every n-th layer has no rope (llama.cpp's n_no_rope_layer_step; SmolLM3: 4)
    native: bool = False  # qrun-native runs it (native/model/model.c's table)
    # A bidirectional encoder (BERT): learned positions instead of rope, LayerNorm with bias (eps from
    # layer_norm_eps), no output head; the GGUF says causal = false and how sentence vectors are pooled.
    encoder: bool = False
    tokenizer: str = "bpe"  # the tokenizer.json model the family's GGUF tokenizer is made from: "bpe", "wordpiece"
    skipped_what: str = "the vision tower and multi_modal_projector (converting the text model)"  # the notice

    @property
    def norm_shift(self) -> bool:
        return any(r.norm_shift for r in self.rows)

    @property
    def moe(self) -> bool:
        return self.expert_ffn_key is not None


_LLAMA_SCALING = ("linear", "llama3", "yarn")
_MOE_COMMON = (
    Refusal("use_sliding_window", _absent_or(False), "llama.cpp runs it with full attention"),
    Refusal("decoder_sparse_step", _absent_or(1), "llama.cpp puts experts in every layer"),
    Refusal("mlp_only_layers", _absent_or([]), "llama.cpp has no dense layers in this family"),
    Refusal("shared_expert_intermediate_size", _absent_or(0), "llama.cpp's graph has no shared experts"),
    Refusal("num_shared_experts", _absent_or(0), "llama.cpp's graph has no shared experts"),
)

_ROWS = (
    Architecture("llama", "LlamaForCausalLM", "llama", "llama", LLAMA_ROWS, rope_permute=True,
                 rope_scaling_types=_LLAMA_SCALING, genai_type="llama", native=True),
    Architecture("mistral", "MistralForCausalLM", "mistral", "llama", LLAMA_ROWS, rope_permute=True,
                 rope_scaling_types=_LLAMA_SCALING, genai_type="llama", native=True),
    Architecture("qwen2", "Qwen2ForCausalLM", "qwen2", "qwen2", NEOX_ROWS, qkv_bias=True,
                 rope_scaling_types=_LLAMA_SCALING, genai_type="qwen2", native=True),
    Architecture("qwen3", "Qwen3ForCausalLM", "qwen3", "qwen3", (*NEOX_ROWS, *QK_HEAD_NORM), qk_norm="head",
                 rope_scaling_types=_LLAMA_SCALING, genai_type="qwen3", native=True),
    Architecture(
        "gemma3", "Gemma3ForCausalLM", "gemma3_text", "gemma3",
        (*EMBEDDING, *OUTPUT, *_attention(False), *GEMMA3_NORMS, *GATED_FFN),
        qk_norm="head", rope_scaling_types=("linear",), sliding_window_key=True, sliding_pattern=6, native=True,
        scaled_embeddings=True, genai_type="gemma3_text",
        config_defaults=(  # transformers' Gemma3TextConfig defaults (released configs leave many out)
            ("vocab_size", 262208), ("num_attention_heads", 8), ("num_key_value_heads", 4), ("head_dim", 256),
            ("rms_norm_eps", 1e-6), ("max_position_embeddings", 131072), ("query_pre_attn_scalar", 256),
            ("sliding_window", 4096), ("rope_theta", 1_000_000.0), ("rope_local_base_freq", 10_000.0),
            ("tie_word_embeddings", True), ("hidden_activation", "gelu_pytorch_tanh"),
        ),
        refusals=(
            Refusal("attn_logit_softcapping", _absent_or(), "llama.cpp's gemma3 has no attention softcapping"),
            Refusal("hidden_activation", _absent_or("gelu_pytorch_tanh"), "llama.cpp's gemma3 FFN is tanh-GELU"),
            Refusal("attention_bias", _absent_or(False), "llama.cpp's gemma3 has no attention output bias"),
            Refusal("use_bidirectional_attention", _absent_or(False), "llama.cpp's gemma3 is causal"),
        ),
        renamed_prefixes=(("language_model.model.", "model."), ("model.language_model.", "model."),
                          ("language_model.lm_head.", "lm_head.")),
        skipped_prefixes=("vision_tower.", "model.vision_tower.", "multi_modal_projector.",
                          "model.multi_modal_projector."),
    ),
    Architecture(
        "smollm3", "SmolLM3ForCausalLM", "smollm3", "smollm3", LLAMA_ROWS, rope_permute=True, native=True,
        no_rope_step=4, genai_type="smollm3",
        refusals=(
            Refusal("no_rope_layers", _smollm3_rope_layers,
                    "llama.cpp's smollm3 skips rope on every 4th layer ((il + 1) % 4 == 0) and nowhere else"),
            Refusal("no_rope_layer_interval", _absent_or(4), "llama.cpp's smollm3 skips rope on every 4th layer"),
            Refusal("use_sliding_window", _absent_or(False), "llama.cpp's smollm3 has no sliding window"),
        ),
    ),
    Architecture(
        "phi3", "Phi3ForCausalLM", "phi3", "phi3",
        (*EMBEDDING, *OUTPUT_NORM, *OUTPUT, *ATTN_NORM, *FUSED_ATTENTION, *FFN_NORM, *FUSED_FFN),
        rope_scaling_types=("longrope", "su"), sliding_window_key=True, genai_type="phi3", native=True,
        refusals=(Refusal("hidden_act", _absent_or("silu"), "llama.cpp's phi3 FFN is SwiGLU"),),
    ),
    Architecture(
        "qwen3moe", "Qwen3MoeForCausalLM", "qwen3_moe", "qwen3moe",
        (*EMBEDDING, *OUTPUT_NORM, *OUTPUT, *ATTN_NORM, *_attention(False), *QK_HEAD_NORM, *FFN_NORM, *MOE_FFN),
        qk_norm="head", expert_ffn_key="moe_intermediate_size", native=True,
        refusals=(
            Refusal("norm_topk_prob", lambda v, c: v is True,
                    "llama.cpp always renormalises the top-k expert weights of qwen3moe (needs true)"),
            *_MOE_COMMON,
        ),
    ),
    Architecture(
        "olmoe", "OlmoeForCausalLM", "olmoe", "olmoe",
        (*EMBEDDING, *OUTPUT_NORM, *OUTPUT, *ATTN_NORM, *_attention(False), *QK_FULL_NORM, *FFN_NORM, *MOE_FFN),
        qk_norm="full", expert_ffn_key="intermediate_size", native=True,
        refusals=(
            Refusal("norm_topk_prob", _absent_or(False), "llama.cpp never renormalises the top-k weights of olmoe"),
            Refusal("clip_qkv", _absent_or(), "llama.cpp's olmoe does not clip q/k/v"),
            Refusal("tie_word_embeddings", _absent_or(False), "llama.cpp's olmoe needs its own output.weight"),
            *_MOE_COMMON,
        ),
    ),
)  # fmt: skip

_BERT = Architecture(
    "bert",
    "BertModel",
    "bert",
    "bert",
    BERT_ROWS,
    encoder=True,
    tokenizer="wordpiece",
    native=True,
    rope_scaling_types=(),
    config_defaults=(  # transformers' BertConfig defaults
        ("hidden_act", "gelu"),
        ("layer_norm_eps", 1e-12),
        ("type_vocab_size", 2),
        ("max_position_embeddings", 512),
        ("position_embedding_type", "absolute"),
    ),
    refusals=(
        Refusal(
            "position_embedding_type",
            _absent_or("absolute"),
            "llama.cpp's bert adds learned absolute positions (no relative position embeddings)",
        ),
        Refusal("hidden_act", _absent_or("gelu"), "the bert FFN is GELU (erf form)"),
        Refusal("is_decoder", _absent_or(False), "llama.cpp's bert is a bidirectional encoder"),
        Refusal("add_cross_attention", _absent_or(False), "llama.cpp's bert has no cross-attention"),
        Refusal(
            "num_key_value_heads",
            lambda v, c: v is None or v == c.get("num_attention_heads"),
            "BERT attention has as many key/value heads as query heads",
        ),
    ),
    # BertForMaskedLM (and BertModel weights saved from it) keep the encoder under `bert.`; the pooler (a tanh layer
    # over [CLS] for next-sentence prediction) and the masked-LM head `cls.*` are not part of sentence embeddings
    renamed_prefixes=(("bert.", ""),),
    skipped_prefixes=("pooler.", "bert.pooler.", "cls."),
    skipped_what="the pooler and masked-LM head (unused for sentence embeddings)",
)
_BERT_MASKED_LM = Architecture(**{**_BERT.__dict__, "hf_class": "BertForMaskedLM"})

# RoBERTa-family encoders look like BERT but are not converted as one: their positions start at padding_idx + 1
# (llama.cpp's converter trims the table) and their tokenizers are byte-level BPE or SentencePiece, not WordPiece.
REFUSED_CLASSES: dict[str, str] = {
    name: "RoBERTa-family encoders offset positions by padding_idx + 1 and tokenize with BPE/SentencePiece; "
    "qconv converts BERT (WordPiece) encoders only"
    for name in (
        "RobertaModel", "RobertaForMaskedLM", "XLMRobertaModel", "XLMRobertaForMaskedLM", "CamembertModel",
        "CamembertForMaskedLM", "XLMRobertaXLModel", "RobertaPreLayerNormModel",
    )
}  # fmt: skip
REFUSED_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "roberta-prelayernorm")

# A multimodal Gemma 3 folder converts as its text model (llama.cpp writes the vision tower to a separate mmproj).
_GEMMA3 = next(a for a in _ROWS if a.family == "gemma3")
_GEMMA3_MULTIMODAL = Architecture(
    **{**_GEMMA3.__dict__, "hf_class": "Gemma3ForConditionalGeneration", "model_type": "gemma3", "text_config": True}
)

ARCHITECTURES: dict[str, Architecture] = {a.hf_class: a for a in (*_ROWS, _GEMMA3_MULTIMODAL, _BERT, _BERT_MASKED_LM)}
FAMILIES: dict[str, Architecture] = {a.family: a for a in (*_ROWS, _BERT)}
DEFAULT_ARCHITECTURE = "LlamaForCausalLM"
NATIVE_GGUF_ARCHS = frozenset(a.gguf_arch for a in FAMILIES.values() if a.native)
ENCODER_GGUF_ARCHS = frozenset(a.gguf_arch for a in FAMILIES.values() if a.encoder)


def architecture(hf_class: str | None) -> Architecture:
    return ARCHITECTURES[hf_class or DEFAULT_ARCHITECTURE]


# --- names derived from the rows ----------------------------------------------------------------------------------
# Checkpoint entries that carry no weights (buffers some exporters save); skipped, never an error.
IGNORED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)")
    return re.compile(escaped + "$")


@dataclass(frozen=True)
class NameMatch:
    row: TensorRow
    gguf: str  # the GGUF tensor name
    bid: int | None
    xid: int | None


@dataclass
class _Patterns:
    hf: list = field(default_factory=list)
    gguf: list = field(default_factory=list)


_PATTERNS: dict[int, _Patterns] = {}


def _patterns(arch: Architecture) -> _Patterns:
    if id(arch) not in _PATTERNS:
        p = _Patterns()
        for row in arch.rows:
            p.hf.append((_pattern(row.hf), row))
            if not any(r.gguf == row.gguf for _, r in p.gguf):
                p.gguf.append((_pattern(row.gguf), row))
        _PATTERNS[id(arch)] = p
    return _PATTERNS[id(arch)]


def checkpoint_name(arch: Architecture, name: str) -> str | None:
    """A checkpoint name as the rows spell it (multimodal prefixes renamed); None for entries to skip."""
    if any(name.startswith(p) for p in arch.skipped_prefixes) or any(p.fullmatch(name) for p in IGNORED):
        return None
    for old, new in arch.renamed_prefixes:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def match_hf(arch: Architecture, name: str) -> NameMatch | None:
    """The row an HF tensor name (as the rows spell it) belongs to, or None."""
    for pattern, row in _patterns(arch).hf:
        m = pattern.match(name)
        if m:
            bid = int(m.group("bid")) if "bid" in pattern.groupindex else None
            xid = int(m.group("xid")) if "xid" in pattern.groupindex else None
            return NameMatch(row, row.gguf.format(bid=bid), bid, xid)
    return None


def match_gguf(arch: Architecture, name: str) -> tuple[TensorRow, int | None] | None:
    for pattern, row in _patterns(arch).gguf:
        m = pattern.match(name)
        if m:
            return row, int(m.group("bid")) if "bid" in pattern.groupindex else None
    return None


def unknown_tensor(arch: Architecture, name: str) -> FormatError:
    return FormatError(f"tensor '{name}' has no GGUF name in the {arch.family} table ({arch.hf_class})")
