"""ModelSpec + --type -> TypePlan: the GGUF type of every tensor, and why.

The type mixtures follow the rules of the llama.cpp vendored in llama-cpp-python 0.3.36 (`llama_tensor_get_type`
in src/llama-quant.cpp), restated here as tables:
- FILE_TYPES: each --type name, its general.file_type and the default type of its 2-D weights;
- ROLE_RULES: per file type and tensor role, the first rule whose condition holds picks the type;
- ROW_FALLBACK: when a type's block does not divide the row length, the type llama.cpp falls back to.
Tensor roles are llama.cpp's categories, found by substring as it does: ffn_up/ffn_gate/ffn_down cover the stacked
experts (ffn_*_exps) too, and the fused attn_qkv follows attn_v's rules (llama.cpp's category_is_attn_v) and counts
with it. The expert router (ffn_gate_inp) is never quantized and stays f32, as llama.cpp's converter writes it; so
are BERT's learned position and token-type embeddings (position_embd, token_types: tensor_allows_quantization).
A BERT has no output.weight, so llama.cpp gives its token_embd the output head's type, as for a tied embedding.
Models with exactly 8 experts get llama.cpp's 8-expert bumps (attn_v, attn_qkv and attn_k to q8_0, attn_output to
q5_k). Rules for Falcon, 70B llamas and the IQ1/IQ2/IQ3 types we do not write are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import gguf

from qconv.formats.errors import FormatError

T = gguf.GGMLQuantizationType
F = gguf.LlamaFileType

# --type name -> (general.file_type, default type of 2-D weights)
FILE_TYPES: dict[str, tuple[F, T]] = {
    "f32": (F.ALL_F32, T.F32),
    "f16": (F.MOSTLY_F16, T.F16),
    "bf16": (F.MOSTLY_BF16, T.BF16),
    "q8_0": (F.MOSTLY_Q8_0, T.Q8_0),
    "q4_0": (F.MOSTLY_Q4_0, T.Q4_0),
    "q4_1": (F.MOSTLY_Q4_1, T.Q4_1),
    "q5_0": (F.MOSTLY_Q5_0, T.Q5_0),
    "q5_1": (F.MOSTLY_Q5_1, T.Q5_1),
    "iq4_nl": (F.MOSTLY_IQ4_NL, T.IQ4_NL),
    "q2_k": (F.MOSTLY_Q2_K, T.Q2_K),
    "q3_k_s": (F.MOSTLY_Q3_K_S, T.Q3_K),
    "q3_k_m": (F.MOSTLY_Q3_K_M, T.Q3_K),
    "q3_k_l": (F.MOSTLY_Q3_K_L, T.Q3_K),
    "q4_k_s": (F.MOSTLY_Q4_K_S, T.Q4_K),
    "q4_k_m": (F.MOSTLY_Q4_K_M, T.Q4_K),
    "q5_k_s": (F.MOSTLY_Q5_K_S, T.Q5_K),
    "q5_k_m": (F.MOSTLY_Q5_K_M, T.Q5_K),
    "q6_k": (F.MOSTLY_Q6_K, T.Q6_K),
}
# the short forms llama-quantize accepts
ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}

# When a type's block does not divide the row length; a 32-block type that does not fit becomes f16.
ROW_FALLBACK: dict[T, T] = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


@dataclass(frozen=True)
class Position:
    """Where a tensor sits, for the rules that depend on it."""

    layer: int  # block index (-1 for tensors outside the blocks)
    n_layers: int
    n_gqa: int  # attention heads per kv head
    has_imatrix: bool
    n_experts: int = 0


def use_more_bits(p: Position) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, and every third between."""
    i, n = p.layer, p.n_layers
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


Condition = Callable[[Position], bool]
ALWAYS: Condition = lambda p: True  # noqa: E731
GQA4: Condition = lambda p: p.n_gqa >= 4  # noqa: E731
FIRST_EIGHTH: Condition = lambda p: p.layer < p.n_layers // 8  # noqa: E731
FIRST_SIXTEENTH: Condition = lambda p: p.layer < p.n_layers // 16  # noqa: E731
FIRST_TWO: Condition = lambda p: p.layer < 2  # noqa: E731
FIRST_FOUR: Condition = lambda p: p.layer < 4  # noqa: E731
IMATRIX_FIRST_EIGHTH: Condition = lambda p: p.has_imatrix and p.layer < p.n_layers // 8  # noqa: E731
NO_IMATRIX_FIRST_EIGHTH: Condition = lambda p: not p.has_imatrix and p.layer < p.n_layers // 8  # noqa: E731

EIGHT_EXPERTS: Condition = lambda p: p.n_experts == 8  # noqa: E731
NOT_EIGHT_EXPERTS: Condition = lambda p: p.n_experts != 8  # noqa: E731

# (file type, tensor role) -> rules in order; the first whose condition holds gives the type.
ROLE_RULES: dict[tuple[str, str], list[tuple[Condition, T, str]]] = {
    ("q2_k", "attn_v"): [(GQA4, T.Q4_K, "n_gqa >= 4"), (ALWAYS, T.Q3_K, "attn_v")],
    ("q3_k_m", "attn_v"): [(FIRST_TWO, T.Q5_K, "first two attn_v"), (ALWAYS, T.Q4_K, "attn_v")],
    ("q3_k_l", "attn_v"): [(ALWAYS, T.Q5_K, "attn_v")],
    ("iq4_nl", "attn_v"): [(GQA4, T.Q5_K, "n_gqa >= 4")],
    ("q4_k_m", "attn_v"): [(use_more_bits, T.Q6_K, "attn_v in a more-bits layer")],
    ("q5_k_m", "attn_v"): [(use_more_bits, T.Q6_K, "attn_v in a more-bits layer")],
    ("q4_k_s", "attn_v"): [(FIRST_FOUR, T.Q5_K, "first four attn_v")],
    ("q2_k", "ffn_down"): [(ALWAYS, T.Q3_K, "ffn_down")],
    ("q3_k_m", "ffn_down"): [(FIRST_SIXTEENTH, T.Q5_K, "ffn_down, first sixteenth"), (ALWAYS, T.Q4_K, "ffn_down")],
    ("q3_k_l", "ffn_down"): [(ALWAYS, T.Q5_K, "ffn_down")],
    ("q4_k_m", "ffn_down"): [(use_more_bits, T.Q6_K, "ffn_down in a more-bits layer")],
    ("iq4_nl", "ffn_down"): [(NO_IMATRIX_FIRST_EIGHTH, T.Q5_K, "ffn_down, first eighth, no imatrix")],
    ("q5_k_m", "ffn_down"): [(use_more_bits, T.Q6_K, "ffn_down in a more-bits layer")],
    ("q4_k_s", "ffn_down"): [(FIRST_EIGHTH, T.Q5_K, "ffn_down, first eighth")],
    ("q4_0", "ffn_down"): [(IMATRIX_FIRST_EIGHTH, T.Q4_1, "ffn_down, first eighth, with imatrix")],
    ("q5_0", "ffn_down"): [(IMATRIX_FIRST_EIGHTH, T.Q5_1, "ffn_down, first eighth, with imatrix")],
    ("q2_k", "attn_output"): [(EIGHT_EXPERTS, T.Q5_K, "attn_output, 8 experts"), (ALWAYS, T.Q3_K, "attn_output")],
    ("q3_k_s", "attn_output"): [(EIGHT_EXPERTS, T.Q5_K, "attn_output, 8 experts")],
    ("q3_k_m", "attn_output"): [(EIGHT_EXPERTS, T.Q5_K, "attn_output, 8 experts"), (ALWAYS, T.Q4_K, "attn_output")],
    ("q3_k_l", "attn_output"): [(NOT_EIGHT_EXPERTS, T.Q5_K, "attn_output")],
    ("iq4_nl", "attn_output"): [(EIGHT_EXPERTS, T.Q5_K, "attn_output, 8 experts")],
    ("q4_k_s", "attn_output"): [(EIGHT_EXPERTS, T.Q5_K, "attn_output, 8 experts")],
    ("q4_k_m", "attn_output"): [(EIGHT_EXPERTS, T.Q5_K, "attn_output, 8 experts")],
}
# llama.cpp's 8-expert bump of attn_v (and attn_qkv) and attn_k to q8_0 comes after, and overrides, the rules above
for _type_name, (_, _default) in FILE_TYPES.items():
    if _default not in (T.F32, T.F16, T.BF16):
        ROLE_RULES[(_type_name, "attn_v")] = [
            (EIGHT_EXPERTS, T.Q8_0, "attn_v, 8 experts"),
            *ROLE_RULES.get((_type_name, "attn_v"), []),
        ]
        ROLE_RULES[(_type_name, "attn_k")] = [(EIGHT_EXPERTS, T.Q8_0, "attn_k, 8 experts")]

# Tensor roles, by substring of the GGUF name in llama.cpp's order (tensor_get_category); attn_qkv is attn_v-like.
ROLES = ("attn_qkv", "attn_v", "attn_k", "attn_q", "attn_output", "ffn_up", "ffn_gate", "ffn_down")
ATTN_V_LIKE = ("attn_v", "attn_qkv")
ROUTER = "ffn_gate_inp.weight"  # never quantized (llama.cpp's tensor_allows_quantization); f32 as converted
# 2-D tensors llama.cpp never quantizes (tensor_allows_quantization), which its converter writes f32 at any outtype
ALWAYS_F32 = {
    ROUTER: "expert router stays f32 (llama.cpp never quantizes it)",
    "position_embd.weight": "learned positions stay f32 (llama.cpp never quantizes them)",
    "token_types.weight": "token-type embeddings stay f32 (llama.cpp never quantizes them)",
}


def role_of(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    if name.endswith(ROUTER):
        return "router"
    for role in ROLES:
        if f"{role}." in name or f"{role}_" in name:
            return role
    return "other"


def _rules_role(role: str) -> str:
    return "attn_v" if role in ATTN_V_LIKE else role


@dataclass(frozen=True)
class TensorChoice:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order
    ggml_type: T
    reason: str
    fell_back: bool = False

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return row_bytes(self.ggml_type, self.shape[-1]) * (self.n_elements // self.shape[-1])


@dataclass
class TypePlan:
    type_name: str
    file_type: F
    choices: list[TensorChoice] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.choices)

    @property
    def n_elements(self) -> int:
        return sum(c.n_elements for c in self.choices)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / max(1, self.n_elements)

    def fallbacks(self) -> list[TensorChoice]:
        return [c for c in self.choices if c.fell_back]


def row_bytes(ggml_type: T, row_length: int) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
    return row_length // block * type_size


def block_size(ggml_type: T) -> int:
    return gguf.GGML_QUANT_SIZES[ggml_type][0]


def is_quantized(ggml_type: T) -> bool:
    return ggml_type not in (T.F32, T.F16, T.BF16)


def parse_type(type_name: str) -> str:
    name = ALIASES.get(type_name.lower(), type_name.lower())
    if name not in FILE_TYPES:
        valid = ", ".join(list(FILE_TYPES) + list(ALIASES))
        raise FormatError(f"unknown --type '{type_name}'; valid types: {valid}")
    return name


def parse_tensor_type(spec: str) -> tuple[re.Pattern, T]:
    """--tensor-type REGEX=TYPE (a ggml type name such as q6_k, q8_0, f16)."""
    pattern, sep, type_name = spec.rpartition("=")
    if not sep or not pattern:
        raise FormatError(f"--tensor-type '{spec}': expected REGEX=TYPE, e.g. 'attn_v=q6_k'")
    try:
        ggml_type = T[type_name.upper()]
    except KeyError:
        valid = ", ".join(sorted({t.name.lower() for _, t in FILE_TYPES.values()}))
        raise FormatError(f"--tensor-type '{spec}': unknown type '{type_name}'; valid: {valid}") from None
    try:
        return re.compile(pattern), ggml_type
    except re.error as e:
        raise FormatError(f"--tensor-type '{spec}': bad regular expression ({e})") from None


def fit_row(ggml_type: T, row_length: int) -> tuple[T, bool]:
    """The type after llama.cpp's fallbacks for a row length its block does not divide."""
    if row_length % block_size(ggml_type) == 0:
        return ggml_type, False
    fallback = ROW_FALLBACK.get(ggml_type, ggml_type)
    if row_length % block_size(fallback):
        fallback = T.F16
    return fallback, True


def _mixture_type(
    type_name: str, default: T, name: str, shape: tuple[int, ...], pos: Position, tied: bool
) -> tuple[T, str]:
    role = role_of(name)
    if role == "output" or (tied and role == "token_embd"):
        # the output head (or the tied embedding that serves as it) keeps more bits
        if shape[-1] % block_size(default):
            return T.Q8_0, "output head, row not a multiple of the block"
        if default != T.Q8_0:
            return T.Q6_K, "output head"
        return default, "output head"
    for condition, ggml_type, reason in ROLE_RULES.get((type_name, _rules_role(role)), []):
        if condition(pos):
            return ggml_type, reason.replace("attn_v", role)
    return default, f"--type {type_name}"


def make_plan(
    tensors: dict[str, tuple[int, ...]],
    type_name: str,
    n_layers: int = 1,
    n_gqa: int = 1,
    has_imatrix: bool = False,
    overrides: list[tuple[re.Pattern, T]] | None = None,
    pure: bool = False,
    n_experts: int = 0,
) -> TypePlan:
    """tensors: GGUF name -> numpy-order shape, in writing order (llama.cpp counts attn_v tensors in file order)."""
    type_name = parse_type(type_name)
    file_type, default = FILE_TYPES[type_name]
    tied = "output.weight" not in tensors
    plan = TypePlan(type_name, file_type)
    # llama.cpp counts attn_v.weight / attn_qkv.weight only (tensor_get_category): never the biases (Qwen2, BERT)
    n_attn_v = sum(1 for n in tensors if role_of(n) in ATTN_V_LIKE and n.endswith(".weight"))
    i_attn_v = 0
    for name, shape in tensors.items():
        if len(shape) < 2 or not name.endswith(".weight") or "_norm." in name:
            plan.choices.append(TensorChoice(name, shape, T.F32, "1-D and norm tensors stay f32"))
            continue
        kept = next((why for suffix, why in ALWAYS_F32.items() if name.endswith(suffix)), None)
        if kept is not None:
            plan.choices.append(TensorChoice(name, shape, T.F32, kept))
            continue
        chosen, reason = default, f"--type {type_name}"
        if is_quantized(default):
            layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
            if role_of(name) in ATTN_V_LIKE:  # llama.cpp counts attn_v (and attn_qkv) tensors, not layers
                layer, i_attn_v = i_attn_v, i_attn_v + 1
            n = n_attn_v if role_of(name) in ATTN_V_LIKE else n_layers
            pos = Position(layer, n, n_gqa, has_imatrix, n_experts)
            manual = next((t for pattern, t in overrides or [] if pattern.search(name)), None)
            if manual is not None:
                chosen, reason = manual, "--tensor-type"
            elif not pure:
                chosen, reason = _mixture_type(type_name, default, name, shape, pos, tied)
        wanted = chosen
        chosen, fell_back = fit_row(wanted, shape[-1])
        if fell_back:
            reason = f"fallback from {wanted.name.lower()} ({reason}): row length {shape[-1]} is not a multiple of {block_size(wanted)}"
        plan.choices.append(TensorChoice(name, shape, chosen, reason, fell_back))
    return plan
