"""Write safetensors files tensor by tensor: the header first (from the declared shapes), then each tensor's bytes.

The sample builders produce tensors one at a time (dequantized, rotated or random), so a file is never held in
memory whole. Format: 8-byte little-endian header length, a JSON header padded with spaces to a multiple of 8,
then the raw little-endian tensor data in header order.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.formats.atomic_write import AtomicFile

ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}  # I64: buffers such as BERT's position_ids
BF16_CHUNK = 1 << 18
DTYPE_NAMES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype name: F32, F16, BF16 (or I64 for an integer buffer)
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return ITEM_BYTES[self.dtype] * int(np.prod(self.shape, dtype=np.int64))


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even; NaN stays a quiet NaN."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint16)
    # In place on cache-sized chunks: a whole-array expression makes several full-size uint32 temporaries.
    for start in range(0, flat.size, BF16_CHUNK):
        chunk = flat[start : start + BF16_CHUNK]
        bits = chunk.view(np.uint32).copy()
        carry = bits >> 16
        carry &= 1
        carry += 0x7FFF
        bits += carry
        bits >>= 16
        rounded = out[start : start + BF16_CHUNK]
        rounded[...] = bits
        nan = np.isnan(chunk)
        if nan.any():
            rounded[nan] = 0x7FC0
    return out.reshape(np.shape(values))


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode_tensor(values: np.ndarray, dtype: str) -> np.ndarray:
    """The stored form of float values in safetensors dtype ``dtype`` (little-endian, C order)."""
    if dtype == "F32":
        return np.ascontiguousarray(values, dtype="<f4")
    if dtype == "F16":
        return np.ascontiguousarray(values, dtype="<f2")
    if dtype == "BF16":
        return f32_to_bf16_bits(values)
    if dtype == "I64":
        return np.ascontiguousarray(values, dtype="<i8")
    raise ValueError(f"unsupported safetensors dtype {dtype}")


def _write_tensor(out, path: Path, entry: TensorEntry, values: np.ndarray | Iterable[np.ndarray]) -> None:
    if isinstance(values, np.ndarray):
        if tuple(values.shape) != entry.shape:
            raise ValueError(f"{path}: tensor '{entry.name}' produced shape {values.shape}, declared {entry.shape}")
        values = [values]
    expected = entry.nbytes // ITEM_BYTES[entry.dtype]
    written = 0
    for block in values:
        stored = encode_tensor(block, entry.dtype)
        out.write(stored.data)
        written += stored.size
        del block, stored
    if written != expected:
        raise ValueError(f"{path}: tensor '{entry.name}' produced {written} values, declared {expected} {entry.shape}")


def write_safetensors(
    path: Path,
    entries: Iterable[TensorEntry],
    produce: Callable[[TensorEntry], np.ndarray | Iterable[np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``entries`` to ``path``; ``produce(entry)`` gives each tensor's float values when its turn comes.

    ``produce`` returns the whole tensor, or an iterable of C-order blocks (e.g. groups of rows) so that a large
    tensor never exists in memory at once.

    Written to a hidden temporary file beside ``path`` then renamed (formats.atomic_write), so a failed run leaves
    no file that looks complete.
    """
    entries = list(entries)
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    path = Path(path)
    with AtomicFile(path) as tmp, open(tmp, "wb") as out:
        out.write(len(header_bytes).to_bytes(8, "little"))
        out.write(header_bytes)
        for entry in entries:
            _write_tensor(out, path, entry, produce(entry))


TORCH_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}  # config.json's torch_dtype per stored dtype
# the files a weights-only variant of a folder takes from its source unchanged
FOLDER_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
)  # fmt: skip


def write_variant_folder_files(src_dir: Path, out_dir: Path, config: dict, dtype: str) -> None:
    """A variant folder's config.json (with the stored dtype) and its source's other files, copied."""
    config = dict(config, torch_dtype=TORCH_DTYPES[dtype])
    with open(Path(out_dir) / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    for name in FOLDER_FILES:
        if (Path(src_dir) / name).is_file():
            shutil.copyfile(Path(src_dir) / name, Path(out_dir) / name)
