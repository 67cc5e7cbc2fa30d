"""`qconv inspect`: what a GGUF or safetensors model holds — metadata, tensor table, size and bits per weight."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from qconv.formats import folder_files
from qconv.formats.errors import FormatError
from qconv.formats.gguf_read import read_gguf
from qconv.formats.printable import escaped
from qconv.formats.safetensors_stream import SafetensorsSource

ARRAY_PREVIEW = 8  # metadata arrays longer than this are shown as their length and first items


def _plain(value):
    """Metadata value -> JSON-friendly value, long arrays summarised."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list) and len(value) > ARRAY_PREVIEW:
        return {"array_length": len(value), "first": [_plain(v) for v in value[:ARRAY_PREVIEW]]}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def inspect_file(path: Path) -> dict:
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return _inspect_safetensors(path)
    folder_files.check_regular_file(path)
    with read_gguf(path) as g:
        tensors = [
            {"name": t.name, "shape": list(t.shape), "type": t.type_name, "bytes": t.nbytes} for t in g.tensors.values()
        ]
        metadata = {k: _plain(v) for k, v in g.metadata.items()}
        header = {"format": "gguf", "version": g.version, "alignment": g.alignment}
    return _summary(path, header, metadata, tensors)


def _inspect_safetensors(path: Path) -> dict:
    folder = path if path.is_dir() else path.parent
    source = SafetensorsSource(folder)
    # weights and integer buffers (position_ids: listed with their dtype, never converted), in file order
    entries = sorted([*source.entries.values(), *source.buffers.values()], key=lambda e: (str(e.file), e.start))
    if path.is_file():
        entries = [e for e in entries if e.file == path]
        if not entries:
            raise FormatError(f"{path}: holds no tensors")
    tensors = [{"name": e.name, "shape": list(e.shape), "type": e.dtype, "bytes": e.end - e.start} for e in entries]
    return _summary(path, {"format": "safetensors", "files": len({e.file for e in entries})}, {}, tensors)


def _summary(path: Path, header: dict, metadata: dict, tensors: list[dict]) -> dict:
    total_bytes = sum(t["bytes"] for t in tensors)
    n_params = sum(int(np.prod(t["shape"], dtype=np.int64)) for t in tensors)
    by_type = Counter()
    for t in tensors:
        by_type[t["type"]] += t["bytes"]
    return {
        "path": str(path),
        **header,
        "metadata": metadata,
        "tensors": tensors,
        "n_tensors": len(tensors),
        "n_parameters": n_params,
        "tensor_bytes": total_bytes,
        "bits_per_weight": round(8 * total_bytes / max(1, n_params), 4),
        "bytes_by_type": dict(by_type),
    }


def format_report(info: dict, show_tensors: bool = True) -> str:
    """The text report; every key, value and name from the file is escaped (a "\\x1b]0;..." in a GGUF string
    would otherwise retitle or rewrite the terminal)."""
    lines = [f"{escaped(info['path'])}  ({info['format']})"]
    for key, value in info["metadata"].items():
        if isinstance(value, dict) and "array_length" in value:
            value = f"[{value['array_length']} items] {value['first'][:4]} ..."
        text = escaped(str(value))
        lines.append(f"  {escaped(key)} = {text if len(text) <= 100 else text[:97] + '...'}")
    if show_tensors:
        names = [escaped(t["name"]) for t in info["tensors"]]
        width = max((len(name) for name in names), default=4)
        lines.append(f"\n  {'tensor':<{width}}  {'shape':<18} {'type':<6} {'bytes':>12}")
        for name, t in zip(names, info["tensors"], strict=True):
            lines.append(f"  {name:<{width}}  {str(t['shape']):<18} {escaped(t['type']):<6} {t['bytes']:>12,}")
    by_type = ", ".join(f"{escaped(k)} {v / 2**20:.1f} MiB" for k, v in sorted(info["bytes_by_type"].items()))
    lines.append(
        f"\n  {info['n_tensors']} tensors, {info['n_parameters']:,} parameters, "
        f"{info['tensor_bytes'] / 2**20:.1f} MiB, {info['bits_per_weight']:.2f} bits per weight ({by_type})"
    )
    return "\n".join(lines)
