"""Where the weights come from: an HF folder, or a GGUF file to re-quantize. Both give the converter the same view:
GGUF tensor names and shapes in writing order, f32 values one tensor at a time, and the metadata to copy."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from qconv.formats.architectures import Architecture, TensorRow, checkpoint_name, match_hf, unknown_tensor
from qconv.formats.errors import FormatError
from qconv.formats.gguf_read import GGUFFile, read_gguf
from qconv.formats.gguf_write import add_model_metadata, copy_metadata, llama3_rope_factors
from qconv.formats.hf_config import read_model_spec
from qconv.formats.printable import shown
from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.formats.tensor_names import permute_rope_rows
from qconv.formats.tokenizer_meta import read_hf_tokenizer

ROPE_FREQS = "rope_freqs.weight"
ROPE_FACTORS_LONG = "rope_factors_long.weight"  # Phi-3 LongRoPE: divisors beyond the original context
ROPE_FACTORS_SHORT = "rope_factors_short.weight"  # ... and within it
GENERATED = (ROPE_FREQS, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT)  # written from config.json, not read
CHUNK_BYTES = 64 * 2**20  # f32 bytes read, checked and quantized at a time: bounds memory on large tensors
FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)


def row_chunks(shape: tuple[int, ...], chunk_bytes: int = CHUNK_BYTES):
    """[start, stop) row ranges of a 2-D tensor holding at most chunk_bytes of f32 each."""
    rows = shape[0]
    step = max(1, chunk_bytes // (4 * max(1, shape[-1])))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def writing_order(name: str) -> tuple:
    """token_embd (and an encoder's other embeddings and their norm), rope tensors, the blocks in order,
    output_norm, output: the order llama.cpp's converter uses."""
    if name.startswith("blk."):
        return (2, int(name.split(".")[1]), name)
    embeddings = ("token_embd.weight", "position_embd.weight", "token_types.weight", "token_embd_norm.weight",
                  "token_embd_norm.bias")  # fmt: skip
    first = {**dict.fromkeys(embeddings, 0), ROPE_FREQS: 1, ROPE_FACTORS_LONG: 1, ROPE_FACTORS_SHORT: 1}
    return ({**first, "output_norm.weight": 3, "output.weight": 4}.get(name, 5), 0, name)


def _layer_name(arch: Architecture) -> re.Pattern:
    """The checkpoint prefix of a block's tensors (`model.layers.N.`, BERT's `encoder.layer.N.`), from the rows."""
    prefixes = sorted({row.hf.split("{bid}")[0] for row in arch.rows if row.per_block})
    return re.compile("|".join(re.escape(p) + r"(\d{1,9})\." for p in prefixes))


@dataclass
class _Tensor:
    """One GGUF tensor of an HF folder: its row in the architecture table and the HF tensor(s) it is made of
    (one per expert, in expert order, for a stacked expert tensor)."""

    row: TensorRow
    hf: list[str | None]


class HFSource:
    """An HF folder: config.json -> ModelSpec, tokenizer files -> metadata, safetensors -> tensors."""

    def __init__(self, model_dir: Path):
        self.path = Path(model_dir)
        self.spec = read_model_spec(self.path)
        self.arch = self.spec.gguf_arch
        self.n_layers = self.spec.n_layers
        self.n_gqa = self.spec.n_heads // self.spec.n_kv_heads
        self.n_experts = self.spec.n_experts
        self.safetensors = SafetensorsSource(self.path)
        try:
            # config.json's numbers size the tokenizer (vocab_size) and the tensor table (num_hidden_layers):
            # checked against the tensor headers before either is built
            self.tensors = self._map_tensors()
            self.tokenizer = read_hf_tokenizer(self.path, self.spec.vocab_size, self.spec.arch.tokenizer)
            if self._skipped:  # said once the folder has passed every check (an error stays the only line)
                print(f"qconv: {self.path}: skipping {self._skipped} tensors of {self.spec.arch.skipped_what}",
                      file=sys.stderr)  # fmt: skip
        except BaseException:
            self.safetensors.close()
            raise
        self.hf_names = {g: t.hf[0] for g, t in self.tensors.items()}
        self.shapes = {g: self.spec.gguf_shape(t.row) for g, t in self.tensors.items()}
        self.shapes |= self._generated_shapes()
        self.shapes = dict(sorted(self.shapes.items(), key=lambda kv: writing_order(kv[0])))
        self.source_types = {name: "F32" for name in self.shapes}

    def _generated_shapes(self) -> dict[str, tuple[int, ...]]:
        kind = self.spec.rope_scaling.get("rope_type")
        if kind == "llama3":
            return {ROPE_FREQS: (self.spec.head_dim // 2,)}
        if kind == "longrope":
            half = (self.spec.rotary_dim // 2,)
            return {ROPE_FACTORS_LONG: half, ROPE_FACTORS_SHORT: half}
        return {}

    def _map_tensors(self) -> dict[str, _Tensor]:
        """GGUF name -> its row and HF tensors; checks names, shapes and the expert count against config.json."""
        spec, source, arch = self.spec, self.safetensors, self.spec.arch
        self._check_layer_count()
        self._check_experts()
        expected = spec.expected_shapes()
        tensors: dict[str, _Tensor] = {}
        found: set[str] = set()
        skipped = 0
        for name, entry in source.entries.items():
            spelled = checkpoint_name(arch, name)
            if spelled is None:
                skipped += any(name.startswith(p) for p in arch.skipped_prefixes)
                continue
            match = match_hf(arch, spelled)
            if match is None:
                raise FormatError(f"{entry.file}: {unknown_tensor(arch, shown(name))}")
            if match.xid is not None and match.xid >= spec.n_experts:
                raise FormatError(
                    f"{entry.file}: tensor '{shown(name)}' is expert {match.xid}; config.json's num_experts is "
                    f"{spec.n_experts}"
                )
            if spelled not in expected:
                if spelled == "lm_head.weight" and spec.tied_embeddings:
                    continue  # a tied checkpoint may still carry the copy; llama.cpp uses token_embd
                raise FormatError(
                    f"{entry.file}: tensor '{shown(name)}' is not part of a {spec.architecture} with this config.json"
                )
            if tuple(entry.shape) != expected[spelled]:
                raise FormatError(
                    f"{entry.file}: tensor '{name}' has shape {list(entry.shape)}, config.json implies "
                    f"{list(expected[spelled])}"
                )
            tensor = tensors.setdefault(match.gguf, _Tensor(match.row, [None] * (spec.n_experts or 1)))
            tensor.hf[match.xid or 0] = name
            found.add(spelled)
        missing = [hf for hf in expected if hf not in found]
        buffers = {checkpoint_name(arch, name): entry for name, entry in source.buffers.items()}
        stored_as_integers = [hf for hf in missing if hf in buffers]
        if stored_as_integers:
            entry = buffers[stored_as_integers[0]]
            raise FormatError(
                f"{entry.file}: tensor '{shown(entry.name)}' is {entry.dtype}; a weight must be F32, F16 or BF16 "
                "(integer tensors are read only as buffers, which the converter skips)"
            )
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FormatError(f"{source.model_dir}: tensor '{missing[0]}'{more} is missing from the checkpoint")
        self._skipped = skipped
        return tensors

    def _check_experts(self) -> None:
        """An expert count in config.json that the checkpoint contradicts is one line naming both, checked before
        the router's shape (which would say the same less plainly)."""
        arch, n_experts = self.spec.arch, self.spec.n_experts
        experts: dict[str, tuple[set[int], str, Path]] = {}
        for name, entry in self.safetensors.entries.items():
            spelled = checkpoint_name(arch, name)
            match = match_hf(arch, spelled) if spelled else None
            if match is not None and match.row.per_expert:
                template = match.row.hf.format(bid=match.bid, xid="N")
                experts.setdefault(match.gguf, (set(), template, entry.file))[0].add(match.xid)
        for found, template, file in experts.values():
            if found != set(range(n_experts)):
                held = f"{len(found)} experts" + (
                    "" if found == set(range(len(found))) else f" (ids up to {max(found)})"
                )
                raise FormatError(f"{file}: tensor '{template}' has {held}, config.json's num_experts is {n_experts}")

    def _check_layer_count(self) -> None:
        """num_hidden_layers against the layers the checkpoint holds, before a table of that many is built."""
        layer_name = _layer_name(self.spec.arch)
        layers = set()
        for hf in self.safetensors.entries:
            spelled = checkpoint_name(self.spec.arch, hf)
            match = layer_name.match(spelled) if spelled else None
            if match:
                layers.add(int(next(g for g in match.groups() if g is not None)))
        if self.spec.n_layers > len(layers):
            raise FormatError(
                f"{self.path / 'config.json'}: num_hidden_layers is {self.spec.n_layers}, the checkpoint holds "
                f"{len(layers)} layers"
            )

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        add_model_metadata(writer, self.spec)
        self.tokenizer.add_to(writer)

    def _generated(self, name: str) -> np.ndarray:
        if name == ROPE_FREQS:
            return llama3_rope_factors(self.spec)
        key = "long_factor" if name == ROPE_FACTORS_LONG else "short_factor"
        return np.asarray(self.spec.rope_scaling[key], dtype=np.float32)

    def _read_hf(self, name: str, hf: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """One HF tensor as llama.cpp stores it: norm shift added, q/k rows permuted for llama-style rope."""
        row = self.tensors[name].row
        weights = self.safetensors.read_f32(hf, rows)
        if row.norm_shift:
            weights += np.float32(row.norm_shift)
        if row.rope_heads and self.spec.arch.rope_permute:
            weights = permute_rope_rows(weights, getattr(self.spec, row.rope_heads))
        return weights

    def read_f32(self, name: str) -> np.ndarray:
        """The f32 values of one GGUF tensor, as llama.cpp expects them (experts stacked)."""
        if name in GENERATED:
            return self._generated(name)
        tensor = self.tensors[name]
        if tensor.row.per_expert:
            return np.stack([self._read_hf(name, hf) for hf in tensor.hf])
        return self._read_hf(name, tensor.hf[0])

    def read_f32_chunks(self, name: str):
        """The tensor as consecutive pieces: row ranges, one expert (1, rows, cols) at a time for stacked experts,
        whole when rows are permuted or it is 1-D."""
        if name in GENERATED:
            yield self._generated(name)
            return
        tensor, shape = self.tensors[name], self.shapes[name]
        if tensor.row.per_expert:
            for hf in tensor.hf:
                yield self._read_hf(name, hf)[None]
            return
        if len(shape) == 1 or (self.spec.arch.rope_permute and tensor.row.rope_heads):
            yield self.read_f32(name)
            return
        for rows in row_chunks(shape):
            yield self._read_hf(name, tensor.hf[0], rows)

    def describe(self, name: str) -> str:
        tensor = self.tensors.get(name)
        if tensor is not None and tensor.row.per_expert:
            return f"tensor '{tensor.row.hf.format(bid=name.split('.')[1], xid='N')}' (stacked as {name})"
        return f"tensor '{self.hf_names.get(name, name)}'"

    def close(self) -> None:
        self.safetensors.close()


# Metadata of the input GGUF that describes its old quantization, not the new file.
NOT_COPIED = ("general.file_type", "general.quantization_version", "quantize.")


class GGUFSource:
    """A GGUF file (f32/f16/bf16, or quantized with allow_requantize) whose tensors are re-encoded."""

    def __init__(self, path: Path, allow_requantize: bool = False):
        from qconv.runtime import quants  # the C dequantizers

        self.path = Path(path)
        self._quants = quants
        self.gguf: GGUFFile = read_gguf(self.path)
        arch = self.gguf.architecture
        if arch is None:
            raise FormatError(f"{self.path}: no general.architecture; not a model file")
        self.arch = arch
        self.n_layers = self._count(f"{arch}.block_count", 1)
        heads = self._count(f"{arch}.attention.head_count", 1)
        kv_heads = self._count(f"{arch}.attention.head_count_kv", heads) or heads
        self.n_gqa = max(1, heads // max(1, kv_heads))
        self.n_experts = self._count(f"{arch}.expert_count", 0)
        self.shapes = {name: t.shape for name, t in self.gguf.tensors.items()}
        self.source_types = {name: t.type_name for name, t in self.gguf.tensors.items()}
        quantized = [t for t in self.gguf.tensors.values() if t.ggml_type not in FLOAT_TYPES]
        if quantized and not allow_requantize:
            raise FormatError(
                f"{self.path}: tensor '{quantized[0].name}' is already {quantized[0].type_name}; re-quantizing loses "
                "quality twice. Start from an f32/f16/bf16 file, or pass --allow-requantize"
            )

    def _count(self, key: str, default: int) -> int:
        value = self.gguf.metadata.get(key, default)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise FormatError(f"{self.path}: metadata '{key}' must be a non-negative integer, found {shown(value)}")
        return int(value)

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        copy_metadata(self.gguf, writer, skip=lambda key: key.startswith(NOT_COPIED))

    def read_f32(self, name: str) -> np.ndarray:
        t = self.gguf.tensors[name]
        raw = self.gguf.tensor_data(name)
        if t.ggml_type == gguf.GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(t.shape).copy()
        return self._quants.dequantize(raw, t.type_name, t.shape)

    def read_f32_chunks(self, name: str):
        t = self.gguf.tensors[name]
        if len(t.shape) == 1:
            yield self.read_f32(name)
            return
        if len(t.shape) == 3:  # stacked experts: one at a time (each has its own importance row)
            for expert in range(t.shape[0]):
                yield self._read_rows(t, (expert, expert + 1))
            return
        for rows in row_chunks(t.shape):
            yield self._read_rows(t, rows)

    def _read_rows(self, t, rows: tuple[int, int]) -> np.ndarray:
        """An f32 copy of rows [start, stop): no view of the map outlives the call (a suspended generator holding
        one would make close() fail with BufferError, hiding the error that stopped the conversion)."""
        row_bytes = t.nbytes // t.shape[0]
        chunk = self.gguf.tensor_data(t.name)[rows[0] * row_bytes : rows[1] * row_bytes]
        shape = (rows[1] - rows[0], *t.shape[1:])
        if t.ggml_type == gguf.GGMLQuantizationType.F32:
            return chunk.view(np.float32).reshape(shape).copy()
        return self._quants.dequantize(chunk, t.type_name, shape)

    def describe(self, name: str) -> str:
        return f"tensor '{name}' of {self.path.name}"

    def close(self) -> None:
        self.gguf.close()


def open_source(path: Path, allow_requantize: bool = False):
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return GGUFSource(path, allow_requantize)
        raise FormatError(f"{path}: not a GGUF file nor a Hugging Face model folder")
    return HFSource(path)
