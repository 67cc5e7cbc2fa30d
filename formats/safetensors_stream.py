"""Stream tensors out of a Hugging Face checkpoint (single file or sharded), one at a time.

Each shard is memory-mapped; `read_f32` copies one tensor out as float32 and then tells the kernel to drop the
mapped pages (MADV_DONTNEED), so file-backed pages do not pile up in the resident set while a large model is
converted. Every offset in a shard header is checked against the file size before it is used; shards are opened
through formats.folder_files (inside the folder, regular files only).

Integer tensors (BERT's `embeddings.position_ids`, attention-mask buffers) are buffers some exporters save, not
weights: they are listed apart (`buffers`), shown by `qconv inspect` and never read as floats.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.folder_files import parse_json
from qconv.formats.printable import shown

# safetensors dtype name -> (numpy dtype of the stored bits, bytes per element)
STORED_DTYPES = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # decoded by shifting into the high half of a float32
}
# integer and boolean dtypes: bytes per element (buffers, listed but never converted)
INTEGER_DTYPES = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec caps the JSON header at 100 MB
MAX_HEADER_DEPTH = 4  # {name: {"shape": [...]}}: three levels; __metadata__ maps strings to strings
MAX_DIMS = 8
MAX_COUNT = 2**63 - 1  # dimensions and offsets as numpy and mmap can take them


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path  # as the folder names it (messages); opened through its real path
    start: int  # absolute byte offset in the file
    end: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def is_buffer(self) -> bool:
        """An integer or boolean tensor: a buffer (position ids, masks), not a weight."""
        return self.dtype in INTEGER_DTYPES


def _read_header(fd: int, path: Path) -> tuple[dict, int]:
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    if len(head) < 8:
        raise FormatError(f"{path}: truncated safetensors file ({size} bytes, no header length)")
    (header_len,) = struct.unpack("<Q", head)
    # The length is the file's first 8 bytes: an implausible one is described, not printed (it may be text).
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(f"{path}: not a safetensors file (its header length is over the 100 MB the format allows)")
    if 8 + header_len > size:
        raise FormatError(
            f"{path}: truncated or not a safetensors file (its header length passes the end of the {size}-byte file)"
        )
    header = parse_json(os.pread(fd, header_len, 8), f"{path} (safetensors header)", MAX_HEADER_DEPTH)
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + header_len


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _entry_fields(info, path: Path, name: str) -> tuple[str, tuple[int, ...], int, int]:
    """dtype, shape and data offsets of one header entry, as plain non-negative integers."""
    if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
        raise FormatError(
            f"{path}: tensor '{shown(name)}' has a malformed header entry (expected dtype, shape, data_offsets)"
        )
    dtype, shape, offsets = info.get("dtype"), info["shape"], info.get("data_offsets")
    if not all(_is_count(d) for d in shape) or len(shape) > MAX_DIMS:
        raise FormatError(
            f"{path}: tensor '{shown(name)}' has shape {shown(shape)}; expected at most {MAX_DIMS} integers in [0, 2^63)"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise FormatError(
            f"{path}: tensor '{shown(name)}' has data_offsets {shown(offsets)}; expected [begin, end] integers"
        )
    if dtype not in STORED_DTYPES and dtype not in INTEGER_DTYPES:
        raise FormatError(
            f"{path}: tensor '{shown(name)}' has dtype {shown(dtype)}; supported: {', '.join(STORED_DTYPES)} "
            f"(and integer buffers: {', '.join(INTEGER_DTYPES)})"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def _entries_of(fd: int, path: Path) -> dict[str, TensorEntry]:
    header, data_start = _read_header(fd, path)
    size = os.fstat(fd).st_size
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry_fields(info, path, name)
        itemsize = STORED_DTYPES[dtype][1] if dtype in STORED_DTYPES else INTEGER_DTYPES[dtype]
        nbytes = math.prod(shape) * itemsize  # Python integers: a shape of 2^64 cannot wrap
        if not begin <= end or end - begin != nbytes:
            raise FormatError(
                f"{path}: tensor '{shown(name)}' of shape {list(shape)} {dtype} has data offsets [{begin}, {end}], "
                f"expected {nbytes} bytes"
            )
        if data_start + end > size:
            raise FormatError(
                f"{path}: truncated file: tensor '{shown(name)}' ends at byte {data_start + end}, the file has {size}"
            )
        entries[name] = TensorEntry(name, dtype, shape, path, data_start + begin, data_start + end)
    return entries


def _index_shards(model_dir: Path) -> list[str]:
    """The shard names model.safetensors.index.json lists."""
    index = model_dir / INDEX_FILE
    weight_map = folder_files.read_json_object(model_dir, INDEX_FILE).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError(f"{index}: not a valid safetensors index (expected a 'weight_map' object of file names)")
    for name in sorted(set(weight_map.values())):
        if not folder_files.entry_exists(model_dir, name):
            raise FormatError(f"{index} lists shard '{shown(name)}', which is missing from {model_dir}")
    return sorted(set(weight_map.values()))


def checkpoint_files(model_dir: Path) -> dict[Path, Path]:
    """The shard files of a checkpoint folder, each as the folder names it -> its real path inside the folder
    (a shard that leaves the folder, is missing, or is not a regular file is refused)."""
    model_dir = Path(model_dir)
    if folder_files.entry_exists(model_dir, INDEX_FILE):
        names = _index_shards(model_dir)
    else:
        names = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not names:
        raise FormatError(f"{model_dir}: no *.safetensors file and no {INDEX_FILE}")
    return {model_dir / name: folder_files.resolve_in_folder(model_dir, name) for name in names}


class SafetensorsSource:
    """All tensors of a checkpoint folder, read one at a time; use as a context manager. `entries` are the float
    tensors (weights), `buffers` the integer ones (skipped by conversion, listed by inspect)."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self.entries: dict[str, TensorEntry] = {}
        self.buffers: dict[str, TensorEntry] = {}
        self._real = checkpoint_files(self.model_dir)
        for path, real in self._real.items():
            fd = folder_files.open_regular(real, path)
            try:
                entries = _entries_of(fd, path)
            finally:
                os.close(fd)
            for name, entry in entries.items():
                seen = self.entries.get(name) or self.buffers.get(name)
                if seen is not None:
                    raise FormatError(f"{path}: tensor '{shown(name)}' is also in {seen.file.name}")
                (self.buffers if entry.is_buffer else self.entries)[name] = entry
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
            fd = folder_files.open_regular(self._real[path], path)
            try:
                self._maps[path] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
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
        if start + count * itemsize > len(m):  # the header was checked against the file; the file shrank since
            raise FormatError(f"{entry.file}: tensor '{name}' lies past the end of the file (truncated while read?)")
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
