"""`qconv eval` over a `qconv to-onnx` folder: the same suites, tasks, gates and report as for a GGUF, with the
quantized side run by ONNX Runtime (runtime.onnx_backend.OnnxModel) and the reference by the C runtime.

The folder's tokenizer.gguf carries the architecture, shape and vocabulary metadata of our GGUF files, so the
compatibility check and the cache sizing read it exactly as they read a GGUF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qconv.converter.quality.runner import Runner
from qconv.runtime.onnx_backend import (
    ENCODER_MODEL,
    MODEL_FILE,
    TOKENIZER_GGUF,
    is_onnx_encoder_folder,
    is_onnx_folder,
)

DATA_FILE = "model.onnx.data"


class OnnxRunner(Runner):
    """Runner's scoring, runs and greedy continuations over an ONNX folder. ONNX Runtime's default session
    (int8 activations in the fused MatMulNBits) is measured: it is what users of the folder run."""

    def __init__(self, path: Path, ctx: int, threads: int | None):  # ctx: the ONNX cache grows as needed
        from qconv.runtime.onnx_backend import OnnxModel

        super().__init__(path, ctx, threads, model=OnnxModel(Path(path), threads=threads))


def open_runner(path: Path, ctx: int, threads: int | None) -> Runner:
    """The runner for a GGUF file (C runtime) or a `qconv to-onnx` folder (ONNX Runtime)."""
    return OnnxRunner(path, ctx, threads) if is_onnx_folder(path) else Runner(path, ctx, threads)


def metadata_gguf(path: Path) -> Path:
    """The GGUF whose metadata describes the model: the file itself, or an ONNX folder's tokenizer.gguf (decoder
    or encoder: both carry the architecture, shape and vocabulary)."""
    path = Path(path)
    return path / TOKENIZER_GGUF if is_onnx_folder(path) or is_onnx_encoder_folder(path) else path


def model_bytes(path: Path) -> int:
    """Bytes of the weights: the GGUF file, an ONNX decoder folder's model.onnx and its external data, or an
    encoder folder's onnx/ files (sentence-transformers' layout)."""
    path = Path(path)
    if is_onnx_folder(path):
        return sum((path / name).stat().st_size for name in (MODEL_FILE, DATA_FILE) if (path / name).is_file())
    if is_onnx_encoder_folder(path):
        return sum(p.stat().st_size for p in (path / ENCODER_MODEL).parent.iterdir() if p.is_file())
    return path.stat().st_size


def onnx_layer_errors(folder: Path, ref: Path) -> dict:
    """{role: {layer: relative RMSE}} of every quantized blk.N matmul of an ONNX folder against the reference
    GGUF's weights (report.layer_weight_errors for GGUF files)."""
    import onnx
    from onnx import numpy_helper

    from qconv.converter.onnx_export import FUSED_LINEAR
    from qconv.formats.architectures import ARCHITECTURES
    from qconv.formats.gguf_read import read_gguf
    from qconv.formats.tensor_names import gguf_name, permute_rope_rows, rope_permute_heads

    model = onnx.load(str(Path(folder) / MODEL_FILE))  # external data is read from beside the file
    arrays = {t.name: t for t in model.graph.initializer}
    out: dict[str, dict[str, float]] = {}
    with read_gguf(ref) as r:
        arch = r.architecture
        # the family's table (phi3's fused qkv_proj / gate_up_proj are names of their own), llama's when unknown
        family = next((a for a in ARCHITECTURES.values() if a.gguf_arch == arch), None)
        permutes = family is not None and family.rope_permute
        heads = {"n_heads": r.metadata.get(f"{arch}.attention.head_count")}
        heads["n_kv_heads"] = r.metadata.get(f"{arch}.attention.head_count_kv") or heads["n_heads"]
        for node in model.graph.node:
            stem = node.name.removesuffix("_DequantizeLinear")
            if node.op_type != "DequantizeLinear" or not stem.startswith("model.layers.") or stem == node.name:
                continue
            layer, _, kind = stem.removeprefix("model.layers.").partition(".")
            names = [
                gguf_name(f"model.layers.{layer}.{part}.weight", family) for part in FUSED_LINEAR.get(kind, (kind,))
            ]
            if any(name not in r.tensors or r.tensors[name].type_name != "F32" for name in names):
                continue
            block = next(a.i for a in node.attribute if a.name == "block_size")
            q, scales = (numpy_helper.to_array(arrays[n]) for n in node.input[:2])
            zp = numpy_helper.to_array(arrays[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
            deq_all = _dequantize_kn(q, scales, zp, block).T  # HF layout [out, in]; fused parts one after another
            start = 0
            for name in names:
                t = r.tensors[name]
                deq, start = deq_all[start : start + t.shape[0]], start + t.shape[0]
                role = rope_permute_heads(name) if permutes else None
                if role:
                    deq = permute_rope_rows(deq, int(heads[role]))
                ref_values = r.tensor_data(name).view(np.float32).reshape(t.shape).astype(np.float64)
                denom = float(np.sqrt((ref_values**2).mean())) or 1.0
                parts = name.split(".")
                out.setdefault(parts[2], {})[parts[1]] = float(np.sqrt(((deq - ref_values) ** 2).mean())) / denom
    return out


def _dequantize_kn(q: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, block: int) -> np.ndarray:
    """DequantizeLinear with axis 0: q [K, N], scales/zero points [ceil(K / block), N]."""
    levels = q.astype(np.float64)
    if zp is not None:
        levels -= np.repeat(zp.astype(np.float64), block, axis=0)[: q.shape[0]]
    return levels * np.repeat(scales.astype(np.float64), block, axis=0)[: q.shape[0]]
