"""A bounds-checked GGUF reader for files a user hands us (gguf-py's GGUFReader trusts length fields).

Reads the header, metadata and tensor table; tensor data is returned as read-only views of a memory map.
Every count, string length and tensor extent is checked against the bytes that remain before it is used, so a
truncated or corrupt file raises FormatError instead of hanging or allocating gigabytes.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from qconv.formats.errors import FormatError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 2

# GGUF metadata value type -> (struct format, size) for scalars
SCALARS = {
    gguf.GGUFValueType.UINT8: ("<B", 1),
    gguf.GGUFValueType.INT8: ("<b", 1),
    gguf.GGUFValueType.UINT16: ("<H", 2),
    gguf.GGUFValueType.INT16: ("<h", 2),
    gguf.GGUFValueType.UINT32: ("<I", 4),
    gguf.GGUFValueType.INT32: ("<i", 4),
    gguf.GGUFValueType.FLOAT32: ("<f", 4),
    gguf.GGUFValueType.BOOL: ("<?", 1),
    gguf.GGUFValueType.UINT64: ("<Q", 8),
    gguf.GGUFValueType.INT64: ("<q", 8),
    gguf.GGUFValueType.FLOAT64: ("<d", 8),
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, row_length); GGUF stores it reversed
    ggml_type: gguf.GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def type_name(self) -> str:
        return self.ggml_type.name


@dataclass
class GGUFFile:
    path: Path
    version: int
    alignment: int
    metadata: dict[str, object] = field(default_factory=dict)
    value_types: dict[str, gguf.GGUFValueType] = field(default_factory=dict)
    array_types: dict[str, gguf.GGUFValueType] = field(default_factory=dict)  # item type of array values
    tensors: dict[str, GGUFTensor] = field(default_factory=dict)
    _map: mmap.mmap | None = None

    def tensor_data(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor (uint8 view of the mapping)."""
        t = self.tensors[name]
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what} (at byte {self.pos} of {self.size})")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"truncated or corrupt GGUF: {what} needs {n} bytes, {self.size - self.pos} remain")
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def unpack(self, fmt: str, size: int, what: str):
        return struct.unpack(fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", 8, f"length of {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0, array_types: dict | None = None):
    try:
        vtype = gguf.GGUFValueType(vtype)
    except ValueError:
        raise cur.fail(f"metadata key '{key}' has unknown value type {vtype}") from None
    if vtype in SCALARS:
        fmt, size = SCALARS[vtype]
        return cur.unpack(fmt, size, f"value of '{key}'")
    if vtype == gguf.GGUFValueType.STRING:
        return cur.string(f"value of '{key}'")
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.fail(f"metadata key '{key}' nests arrays deeper than {MAX_ARRAY_DEPTH}")
    item_type = cur.unpack("<I", 4, f"array type of '{key}'")
    count = cur.unpack("<Q", 8, f"array length of '{key}'")
    if array_types is not None and depth == 0 and item_type in gguf.GGUFValueType._value2member_map_:
        array_types[key] = gguf.GGUFValueType(item_type)
    if item_type in SCALARS:
        fmt, size = SCALARS[gguf.GGUFValueType(item_type)]
        raw = cur.take(count * size if count <= cur.size else -1, f"array '{key}' of {count} items")
        return np.frombuffer(raw, dtype=np.dtype(fmt)).copy()
    # every string or array item takes at least 8 bytes, which bounds the count before the loop
    if count > (cur.size - cur.pos) // 8:
        raise cur.fail(f"truncated or corrupt GGUF: array '{key}' claims {count} items")
    return [_value(cur, item_type, key, depth + 1) for _ in range(count)]


def read_gguf(path: Path) -> GGUFFile:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise FormatError(f"{path}: empty file, not a GGUF model")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(buf, path)
    if cur.take(4, "magic") != GGUF_MAGIC:
        raise FormatError(f"{path}: not a GGUF file (bad magic)")
    version = cur.unpack("<I", 4, "version")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{path}: GGUF version {version} is not supported; supported: {SUPPORTED_VERSIONS}")
    n_tensors = cur.unpack("<Q", 8, "tensor count")
    n_kv = cur.unpack("<Q", 8, "metadata count")
    # each key-value pair takes at least 8+4 bytes, each tensor entry at least 8+4+8+4+8
    if n_kv > cur.size // 12 or n_tensors > cur.size // 32:
        raise cur.fail(f"corrupt GGUF: {n_kv} metadata entries and {n_tensors} tensors cannot fit")
    result = GGUFFile(path=path, version=version, alignment=gguf.GGUF_DEFAULT_ALIGNMENT)
    for _ in range(n_kv):
        key = cur.string("metadata key")
        if key in result.metadata:  # llama.cpp refuses this; readers keeping the first or last copy would disagree
            raise cur.fail(f"metadata key {key!r} appears more than once")
        vtype = cur.unpack("<I", 4, f"type of '{key}'")
        result.metadata[key] = _value(cur, vtype, key, array_types=result.array_types)
        result.value_types[key] = gguf.GGUFValueType(vtype)
    alignment = result.metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise FormatError(f"{path}: general.alignment {alignment!r} is not a power of two")
    result.alignment = alignment
    entries = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        n_dims = cur.unpack("<I", 4, f"dimension count of '{name}'")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor '{name}' has {n_dims} dimensions, expected 1 to {MAX_DIMS}")
        dims = [cur.unpack("<Q", 8, f"dimension of '{name}'") for _ in range(n_dims)]
        raw_type = cur.unpack("<I", 4, f"type of '{name}'")
        offset = cur.unpack("<Q", 8, f"offset of '{name}'")
        try:
            ggml_type = gguf.GGMLQuantizationType(raw_type)
            block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor '{name}' has unknown type id {raw_type}") from None
        if any(d == 0 or d > 1 << 40 for d in dims) or dims[0] % block:
            raise cur.fail(f"tensor '{name}' has invalid dimensions {dims} for type {ggml_type.name}")
        n = int(np.prod(dims, dtype=object))
        entries.append((name, tuple(reversed(dims)), ggml_type, offset, n // block * type_size))
    data_start = -(-cur.pos // alignment) * alignment
    for name, shape, ggml_type, offset, nbytes in entries:
        if name in result.tensors:
            raise FormatError(f"{path}: tensor '{name}' appears twice")
        start = data_start + offset
        if offset % alignment or start + nbytes > cur.size:
            raise FormatError(
                f"{path}: tensor '{name}' ({ggml_type.name}, {nbytes} bytes at offset {offset}) lies outside the "
                f"file of {cur.size} bytes or is misaligned; the file is truncated or corrupt"
            )
        result.tensors[name] = GGUFTensor(name, shape, ggml_type, start, nbytes)
    # tensors sharing bytes are no model llama.cpp loads (and made repacking copy one range per tensor)
    extents = sorted((t.offset, t.offset + t.nbytes, t.name) for t in result.tensors.values() if t.nbytes)
    for (_, end, before), (begin, _, after) in zip(extents, extents[1:]):
        if begin < end:
            raise FormatError(f"{path}: tensors '{before}' and '{after}' overlap in the data section")
    buf.close()
    return result
