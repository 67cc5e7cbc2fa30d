"""Block-wise int4/uint4/int8/uint8 quantization for ONNX DequantizeLinear (native/quant/quant_blockwise.c).

Rows are cut into blocks of `block_size` consecutive values (the last may be shorter); each block has one float32
scale and, when asymmetric, one integer zero point: x ~ scale * (q - zero_point). The scales and zero points
come from an importance-weighted search in C, threaded over rows, without the GIL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from qconv.runtime._native import ffi, lib

BITS = (4, 8)
BLOCK_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class BlockwiseQuant:
    """One matrix, quantized along its rows: q (rows, cols), scales and zero_points (rows, n_blocks)."""

    q: np.ndarray  # int8 when symmetric (values in the signed range of `bits`), uint8 when asymmetric
    scales: np.ndarray  # float32
    zero_points: np.ndarray | None  # uint8, None when symmetric
    bits: int
    block_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    def dequantize(self) -> np.ndarray:
        """Float32 values exactly as DequantizeLinear computes them: (q - zero_point) * scale in float32."""
        rows, cols = self.q.shape
        levels = self.q.astype(np.int32)
        if self.zero_points is not None:
            levels -= np.repeat(self.zero_points.astype(np.int32), self.block_size, axis=1)[:, :cols]
        scales = np.repeat(self.scales, self.block_size, axis=1)[:, :cols]
        return levels.astype(np.float32) * scales


def n_blocks(cols: int, block_size: int) -> int:
    return -(-cols // block_size)


def quantize_blockwise(
    array: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    importance: np.ndarray | None = None,
    threads: int | None = None,
) -> BlockwiseQuant:
    """Quantize a 2-D float32 array along its rows. importance: one non-negative weight per column or None.

    Raises ValueError for unsupported bits/block sizes (listing the valid ones) and for NaN/Inf (naming the row
    and column).
    """
    if bits not in BITS:
        raise ValueError(f"unsupported bits {bits}; valid: {', '.join(map(str, BITS))}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"unsupported block size {block_size}; valid: {', '.join(map(str, BLOCK_SIZES))}")
    src = np.ascontiguousarray(array, dtype=np.float32)
    if src.ndim != 2:
        raise ValueError(f"quantize_blockwise expects a 2-D array, got shape {array.shape}")
    rows, cols = src.shape
    nb = n_blocks(cols, block_size)
    q = np.empty((rows, cols), dtype=np.int8 if symmetric else np.uint8)
    scales = np.empty((rows, nb), dtype=np.float32)
    zero_points = None if symmetric else np.empty((rows, nb), dtype=np.uint8)
    imp_ptr = ffi.NULL
    if importance is not None:
        imp = np.ascontiguousarray(importance, dtype=np.float32).reshape(-1)
        if imp.shape[0] != cols:
            raise ValueError(f"importance has {imp.shape[0]} values, the rows have {cols}")
        imp_ptr = ffi.from_buffer("float[]", imp)
    err = ffi.new("char[]", 512)
    rc = lib.qrt_quantize_blockwise(
        ffi.from_buffer("float[]", src),
        rows,
        cols,
        block_size,
        bits,
        int(symmetric),
        imp_ptr,
        ffi.from_buffer(q),
        ffi.from_buffer("float[]", scales),
        ffi.NULL if zero_points is None else ffi.from_buffer("uint8_t[]", zero_points),
        threads if threads and threads > 0 else (os.cpu_count() or 1),
        err,
        len(err),
    )
    if rc != 0:
        raise ValueError(f"cannot quantize to {bits}-bit blocks of {block_size}: {ffi.string(err).decode()}")
    return BlockwiseQuant(q, scales, zero_points, bits, block_size)


def row_error(x: np.ndarray, quant: BlockwiseQuant, row: int, importance: np.ndarray | None = None) -> float:
    """The (importance-weighted) squared error of one row, as the search measures it."""
    src = np.ascontiguousarray(x[row], dtype=np.float32)
    imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    q = np.ascontiguousarray(quant.q[row])
    zp = None if quant.zero_points is None else np.ascontiguousarray(quant.zero_points[row])
    return lib.qrt_blockwise_row_error(
        ffi.from_buffer("float[]", src),
        src.shape[0],
        quant.block_size,
        int(quant.symmetric),
        ffi.from_buffer(q),
        ffi.from_buffer("float[]", np.ascontiguousarray(quant.scales[row])),
        ffi.NULL if zp is None else ffi.from_buffer("uint8_t[]", zp),
        ffi.NULL if imp is None else ffi.from_buffer("float[]", imp),
    )
