"""Stream tensors out of a Hugging Face checkpoint (single file or sharded), one at a time.

Each shard is memory-mapped; `read_f32` copies one tensor out as float32 and then tells the kernel to drop the
mapped pages (MADV_DONTNEED), so file-backed pages do not pile up in the resident set while a large model is
converted. Every offset in a shard header is checked against the file size before it is used.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.formats.errors import FormatError

# safetensors dtype name -> (numpy dtype of the stored bits, bytes per element)
STORED_DTYPES = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # decoded by shifting into the high half of a float32
}
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec caps the JSON header at 100 MB


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    end: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated safetensors file ({size} bytes, no header length)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise FormatError(
                f"{path}: truncated or not a safetensors file (header of {header_len} bytes, file of {size} bytes)"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + header_len


def _entries_of(path: Path) -> dict[str, TensorEntry]:
    header, data_start = _read_header(path)
    size = path.stat().st_size
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: tensor '{name}' has a malformed header entry") from None
        if dtype not in STORED_DTYPES:
            raise FormatError(f"{path}: tensor '{name}' has dtype {dtype}; supported: {', '.join(STORED_DTYPES)}")
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or not (0 <= begin <= end) or end - begin != n * STORED_DTYPES[dtype][1]:
            raise FormatError(
                f"{path}: tensor '{name}' of shape {list(shape)} {dtype} has data offsets [{begin}, {end}], "
                f"expected {n * STORED_DTYPES[dtype][1]} bytes"
            )
        if data_start + end > size:
            raise FormatError(
                f"{path}: truncated file: tensor '{name}' ends at byte {data_start + end}, the file has {size}"
            )
        entries[name] = TensorEntry(name, dtype, shape, path, data_start + begin, data_start + end)
    return entries


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The shard files of a checkpoint folder, checking that every shard the index names exists."""
    index = model_dir / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise FormatError(f"{index}: not a valid safetensors index (expected a 'weight_map' object)") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (model_dir / name).is_file():
                raise FormatError(f"{index} lists shard '{name}', which is missing from {model_dir}")
        return [model_dir / name for name in files]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FormatError(f"{model_dir}: no *.safetensors file and no {INDEX_FILE}")
    return files


class SafetensorsSource:
    """All tensors of a checkpoint folder, read one at a time; use as a context manager."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self.entries: dict[str, TensorEntry] = {}
        for path in checkpoint_files(self.model_dir):
            for name, entry in _entries_of(path).items():
                if name in self.entries:
                    raise FormatError(f"{path}: tensor '{name}' is also in {self.entries[name].file.name}")
                self.entries[name] = entry
        self._maps: dict[Path, mmap.mmap] = {}

    def __enter__(self) -> SafetensorsSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    @property
    def total_bytes(self) -> int:
        return sum(e.end - e.start for e in self.entries.values())

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[path]

    def read_f32(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """A float32 copy of the tensor, or of rows [start, stop) of its first axis; the mapped pages are released
        before returning."""
        entry = self.entries[name]
        m = self._map(entry.file)
        stored, itemsize = STORED_DTYPES[entry.dtype]
        shape, start, count = entry.shape, entry.start, entry.n_elements
        if rows is not None:
            row_elements = count // shape[0]
            shape = (rows[1] - rows[0], *shape[1:])
            start += rows[0] * row_elements * itemsize
            count = shape[0] * row_elements
        raw = np.frombuffer(m, dtype=stored, count=count, offset=start)
        out = raw.astype(np.uint32 if entry.dtype == "BF16" else np.float32)
        del raw
        self._release(m, start, start + count * itemsize)
        if entry.dtype == "BF16":
            out <<= 16  # in place: the bf16 bits become the high half of a float32
            out = out.view(np.float32)
        return out.reshape(shape)

    @staticmethod
    def _release(m: mmap.mmap, start: int, end: int) -> None:
        page = mmap.PAGESIZE
        aligned = start - start % page
        if hasattr(m, "madvise") and end > aligned:
            m.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)
