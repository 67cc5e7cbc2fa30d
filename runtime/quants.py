"""GGUF block types from Python: the type table, row sizes, quantize and dequantize (native/quant_*.c).

Type names are spelled as llama.cpp and gguf-py spell them ("Q4_K", "IQ4_NL", "F16") and matched
case-insensitively. Quantization runs in C, threaded over rows, without the GIL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from qconv.runtime._native import ffi, lib


@dataclass(frozen=True)
class QuantType:
    name: str  # canonical spelling, e.g. "Q4_K"
    type_id: int  # GGUF / ggml type id
    block_size: int  # values per block
    block_bytes: int  # bytes per block
    is_quantized: bool  # False for F32/F16/BF16
    takes_importance: bool  # quantizer minimises an importance-weighted error


def _load_types() -> dict[str, QuantType]:
    table = {}
    info = ffi.new("qrt_type_info_t *")
    for type_id in range(64):
        if lib.qrt_type_info(type_id, info) != 0:
            continue
        name = ffi.string(info.name).decode()
        table[name] = QuantType(
            name, type_id, info.block_size, info.block_bytes, bool(info.is_quantized), bool(info.takes_importance)
        )
    return table


TYPES: dict[str, QuantType] = _load_types()


def get_type(type_name: str) -> QuantType:
    """The type named type_name (case-insensitive); ValueError listing the valid names otherwise."""
    found = TYPES.get(type_name.upper())
    if found is None:
        raise ValueError(f"unknown tensor type {type_name!r}; valid types: {', '.join(sorted(TYPES))}")
    return found


def row_bytes(type_name: str, n: int) -> int:
    """Bytes of one row of n values in this type; ValueError if n is not a multiple of the block size."""
    t = get_type(type_name)
    if n <= 0 or n % t.block_size:
        raise ValueError(f"{t.name} needs rows that are a multiple of {t.block_size} values, got {n}")
    return n // t.block_size * t.block_bytes


def _threads(threads: int | None) -> int:
    return threads if threads and threads > 0 else (os.cpu_count() or 1)


def quantize(
    array: np.ndarray, type_name: str, importance: np.ndarray | None = None, threads: int | None = None
) -> np.ndarray:
    """Quantize a 2-D float32 array row by row; returns uint8 of shape (rows, row_bytes).

    importance: one non-negative weight per column (E[x^2] of the activations feeding that column) or None.
    Raises ValueError naming the row and column of the first NaN/Inf.
    """
    t = get_type(type_name)
    src = np.ascontiguousarray(array, dtype=np.float32)
    if src.ndim == 1:
        src = src.reshape(1, -1)
    if src.ndim != 2:
        raise ValueError(f"quantize expects a 2-D array, got shape {array.shape}")
    nrows, ncols = src.shape
    out = np.empty((nrows, row_bytes(t.name, ncols)), dtype=np.uint8)
    imp_ptr = ffi.NULL
    if importance is not None:
        imp = np.ascontiguousarray(importance, dtype=np.float32).reshape(-1)
        if imp.shape[0] != ncols:
            raise ValueError(f"importance has {imp.shape[0]} values, the rows have {ncols}")
        imp_ptr = ffi.from_buffer("float[]", imp)
    err = ffi.new("char[]", 512)
    rc = lib.qrt_quantize_rows(
        t.type_id,
        ffi.from_buffer("float[]", src),
        ffi.from_buffer(out),
        nrows,
        ncols,
        imp_ptr,
        _threads(threads),
        err,
        len(err),
    )
    if rc != 0:
        raise ValueError(f"cannot quantize to {t.name}: {ffi.string(err).decode()}")
    return out


def dequantize(data: np.ndarray, type_name: str, shape, threads: int | None = None) -> np.ndarray:
    """Float32 array of `shape` (rows along the last axis) from its blocks in this type."""
    t = get_type(type_name)
    shape = tuple(int(s) for s in shape)
    ncols = shape[-1]
    nrows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    expected = nrows * row_bytes(t.name, ncols)
    if raw.size != expected:
        raise ValueError(f"{t.name} data of shape {shape} needs {expected} bytes, got {raw.size}")
    out = np.empty(shape, dtype=np.float32)
    if nrows == 0:
        return out
    rc = lib.qrt_dequantize_rows(
        t.type_id, ffi.from_buffer(raw), ffi.from_buffer("float[]", out), nrows, ncols, _threads(threads)
    )
    if rc != 0:
        raise ValueError(f"cannot dequantize {t.name} rows of {ncols} values")
    return out
