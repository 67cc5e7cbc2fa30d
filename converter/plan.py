"""ModelSpec + --type -> TypePlan: the GGUF type of every tensor, and why.

The rules are tables: which tensors stay in float (norms, biases, rope factors), which file types exist, and the
fallback when a row length is not a multiple of the block size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf

from qconv.formats.errors import FormatError

T = gguf.GGMLQuantizationType

# --type name -> (GGUF general.file_type, the type of the 2-D weight tensors)
FILE_TYPES: dict[str, tuple[gguf.LlamaFileType, T]] = {
    "f32": (gguf.LlamaFileType.ALL_F32, T.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, T.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, T.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
}

# When a type's block does not divide a row, the next type that fits (llama.cpp's fallbacks); the last resort is f16.
ROW_FALLBACK: dict[T, T] = {T.Q8_0: T.F16}


@dataclass(frozen=True)
class TensorChoice:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order
    ggml_type: T
    reason: str

    @property
    def nbytes(self) -> int:
        return row_bytes(self.ggml_type, self.shape[-1]) * (self.n_elements // self.shape[-1])

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class TypePlan:
    type_name: str
    file_type: gguf.LlamaFileType
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
        return [c for c in self.choices if c.reason.startswith("fallback")]


def row_bytes(ggml_type: T, row_length: int) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
    return row_length // block * type_size


def _fits(ggml_type: T, row_length: int) -> bool:
    return row_length % gguf.GGML_QUANT_SIZES[ggml_type][0] == 0


def parse_type(type_name: str) -> str:
    name = type_name.lower()
    if name not in FILE_TYPES:
        raise FormatError(f"unknown --type '{type_name}'; valid types: {', '.join(FILE_TYPES)}")
    return name


def make_plan(tensors: dict[str, tuple[int, ...]], type_name: str) -> TypePlan:
    """tensors: GGUF name -> numpy-order shape, in writing order."""
    type_name = parse_type(type_name)
    file_type, weight_type = FILE_TYPES[type_name]
    plan = TypePlan(type_name, file_type)
    for name, shape in tensors.items():
        if len(shape) == 1:
            plan.choices.append(TensorChoice(name, shape, T.F32, "1-D tensors stay f32"))
            continue
        chosen, reason = weight_type, f"--type {type_name}"
        while not _fits(chosen, shape[-1]):
            fallback = ROW_FALLBACK.get(chosen, T.F16)
            reason = f"fallback: row length {shape[-1]} is not a multiple of {chosen.name}'s block"
            chosen = fallback
        plan.choices.append(TensorChoice(name, shape, chosen, reason))
    return plan
