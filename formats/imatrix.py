"""llama.cpp importance-matrix files: the GGUF form and the legacy `.dat` form.

An importance matrix holds, for every matmul weight, the sum over calibration tokens of the squared activation
feeding each input column (`<tensor>.in_sum2`) and the number of tokens summed (`<tensor>.counts`). Quantizers
weight each column's rounding error by the mean, sum / count (what llama-quantize does on load).

For a stacked expert tensor (n_experts, rows, columns) llama-imatrix keeps one row of sums and one count per expert
(`in_sum2` n_experts x columns, `counts` n_experts x 1); each expert is quantized with its own means. The legacy
`.dat` form stores the experts' means one after another under one call count.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from qconv.formats.atomic_write import AtomicFile
from qconv.formats.errors import FormatError
from qconv.formats.gguf_read import read_gguf

SUM2_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


@dataclass
class ImportanceMatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # tensor -> sum of x^2 per input column (f32)
    counts: dict[str, float] = field(default_factory=dict)  # tensor -> tokens summed
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    path: Path | None = None
    expert_counts: dict[str, np.ndarray] = field(default_factory=dict)  # expert tensor -> tokens summed per expert

    def mean_squares(self, tensor: str, n_experts: int = 0) -> np.ndarray | None:
        """E[x^2] per input column, or None if the tensor has no entry (1.0 where no token was seen). For an expert
        tensor (n_experts > 0): one row per expert, (n_experts, columns)."""
        if tensor not in self.sums:
            return None
        sums = self.sums[tensor]
        if tensor in self.expert_counts:
            counts = self.expert_counts[tensor].astype(np.float32)
            per_expert = sums.reshape(counts.size, -1)
            means = np.ones_like(per_expert)
            seen = counts > 0
            means[seen] = per_expert[seen] / counts[seen, None]
            return means.astype(np.float32)
        count = self.counts.get(tensor, 0.0)
        means = np.ones_like(sums) if count <= 0 else (sums / count).astype(np.float32)
        return means.reshape(n_experts, -1) if n_experts else means

    def check_against(self, row_lengths: dict[str, int | tuple[int, int]]) -> None:
        """Every entry must name a weight of this model with that row length (the input width), and, for stacked
        expert tensors (given as (n_experts, width)), that many experts; the first mismatch in the model's tensor
        order is reported."""
        for name, size in row_lengths.items():
            n_experts, width = size if isinstance(size, tuple) else (0, size)
            if name not in self.sums:
                continue
            found = self.sums[name].size
            if found != max(1, n_experts) * width:
                what = f"{n_experts} experts x {width}" if n_experts else f"{width}"
                raise FormatError(
                    f"{self.path}: imatrix entry '{name}' has {found} values, the tensor's rows have {what}; "
                    "is it for another model?"
                )
            counts = self.expert_counts.get(name)
            if counts is not None and counts.size != n_experts:
                raise FormatError(
                    f"{self.path}: imatrix entry '{name}' has {counts.size} expert counts, the tensor has "
                    f"{n_experts} experts; is it for another model?"
                )
        for name in self.sums:
            if name not in row_lengths:
                raise FormatError(
                    f"{self.path}: imatrix entry '{name}' is not a tensor of this model; is it for another model?"
                )


def read_imatrix(path: Path) -> ImportanceMatrix:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such imatrix file")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_gguf_imatrix(path) if magic == b"GGUF" else _read_legacy_imatrix(path)


def _read_gguf_imatrix(path: Path) -> ImportanceMatrix:
    result = ImportanceMatrix(path=path)
    with read_gguf(path) as g:
        result.datasets = [str(d) for d in g.metadata.get(KEY_DATASETS, [])]
        result.chunk_count = int(g.metadata.get(KEY_CHUNK_COUNT, 0))
        result.chunk_size = int(g.metadata.get(KEY_CHUNK_SIZE, 0))
        sums, counts = {}, {}
        for name, t in g.tensors.items():
            if t.ggml_type != gguf.GGMLQuantizationType.F32:
                raise FormatError(f"{path}: imatrix tensor '{name}' is {t.type_name}, expected F32")
            values = g.tensor_data(name).view(np.float32).copy()
            if name.endswith(SUM2_SUFFIX):
                sums[name[: -len(SUM2_SUFFIX)]] = values
            elif name.endswith(COUNTS_SUFFIX):
                counts[name[: -len(COUNTS_SUFFIX)]] = values
    if not sums:
        raise FormatError(f"{path}: no '*{SUM2_SUFFIX}' tensors; not an importance matrix")
    for name in sums.keys() | counts.keys():
        if name not in sums or name not in counts:
            raise FormatError(
                f"{path}: imatrix entry '{name}' lacks its {SUM2_SUFFIX if name not in sums else COUNTS_SUFFIX} tensor"
            )
        result.sums[name] = sums[name]
        if counts[name].size == 1:
            result.counts[name] = float(counts[name][0])
            continue
        if sums[name].size % counts[name].size:
            raise FormatError(
                f"{path}: imatrix entry '{name}' has {sums[name].size} values for {counts[name].size} expert counts"
            )
        result.expert_counts[name] = counts[name]
    return result


def _read_legacy_imatrix(path: Path) -> ImportanceMatrix:
    """int32 n_entries; per entry: int32 name length, name, int32 ncall, int32 nval, float32[nval] (mean x^2 * ncall);
    then optionally int32 chunk count, int32 dataset length, dataset name."""
    data = path.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise FormatError(f"{path}: truncated or not an imatrix file ({what} at byte {pos})")
        pos += n
        return data[pos - n : pos]

    def int32(what: str) -> int:
        return struct.unpack("<i", take(4, what))[0]

    result = ImportanceMatrix(path=path)
    n_entries = int32("entry count")
    if n_entries < 1 or n_entries > len(data) // 16:
        raise FormatError(f"{path}: not an imatrix file ({n_entries} entries)")
    for _ in range(n_entries):
        try:
            name = take(int32("name length"), "name").decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{path}: not an imatrix file (entry name is not UTF-8)") from None
        ncall, nval = int32("call count"), int32("value count")
        if nval < 1:
            raise FormatError(f"{path}: imatrix entry '{name}' has {nval} values")
        values = np.frombuffer(take(4 * nval, f"values of '{name}'"), dtype="<f4").astype(np.float32)
        # the legacy file stores mean x^2 scaled by ncall: as a sum over ncall "tokens" it normalises the same way
        result.sums[name] = values
        result.counts[name] = float(ncall)
    if len(data) - pos >= 4:
        result.chunk_count = int32("chunk count")
        if len(data) - pos >= 4:
            length = int32("dataset length")
            if 0 < length <= len(data) - pos:
                result.datasets.append(take(length, "dataset").decode("utf-8", "replace"))
    return result


def write_imatrix(path: Path, imatrix: ImportanceMatrix) -> Path:
    """The GGUF form llama-imatrix writes (general.type = imatrix), via a temporary file renamed at the end."""
    path = Path(path)
    with AtomicFile(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="")
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix files carry no architecture
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(KEY_DATASETS, imatrix.datasets or ["qconv"])
        writer.add_uint32(KEY_CHUNK_COUNT, imatrix.chunk_count)
        writer.add_uint32(KEY_CHUNK_SIZE, imatrix.chunk_size)
        for name in sorted(imatrix.sums):
            if name in imatrix.expert_counts:  # llama-imatrix's layout: a row of sums and a count per expert
                counts = np.asarray(imatrix.expert_counts[name], dtype=np.float32).reshape(-1, 1)
            else:
                counts = np.array([[imatrix.counts[name]]], dtype=np.float32)
            sums = np.asarray(imatrix.sums[name], dtype=np.float32).reshape(counts.shape[0], -1)
            writer.add_tensor(name + SUM2_SUFFIX, sums)
            writer.add_tensor(name + COUNTS_SUFFIX, counts)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path
