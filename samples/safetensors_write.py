"""Write safetensors files tensor by tensor: the header first (from the declared shapes), then each tensor's bytes.

The sample builders produce tensors one at a time (dequantized, rotated or random), so a file is never held in
memory whole. Format: 8-byte little-endian header length, a JSON header padded with spaces to a multiple of 8,
then the raw little-endian tensor data in header order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
DTYPE_NAMES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype name: F32, F16 or BF16
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return ITEM_BYTES[self.dtype] * int(np.prod(self.shape, dtype=np.int64))


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even; NaN stays a quiet NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


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
    raise ValueError(f"unsupported safetensors dtype {dtype}")


def write_safetensors(
    path: Path,
    entries: Iterable[TensorEntry],
    produce: Callable[[TensorEntry], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``entries`` to ``path``; ``produce(entry)`` returns each tensor's float values when its turn comes.

    Written to ``path.partial`` then renamed, so a failed run leaves no file that looks complete.
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
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as out:
            out.write(len(header_bytes).to_bytes(8, "little"))
            out.write(header_bytes)
            for entry in entries:
                values = produce(entry)
                if tuple(values.shape) != entry.shape:
                    raise ValueError(
                        f"{path}: tensor '{entry.name}' produced shape {values.shape}, declared {entry.shape}"
                    )
                stored = encode_tensor(values, entry.dtype)
                out.write(stored.data)
                del values, stored
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
