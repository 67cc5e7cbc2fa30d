"""Fixtures of the ONNX export tests: exported folders (built once per session) and ONNX Runtime helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")


def export(model_dir: Path, out_dir: Path, **options) -> Path:
    from qconv.converter.onnx_export import OnnxOptions, export_onnx

    export_onnx(model_dir, out_dir, OnnxOptions(**options))
    return out_dir


def optimized_graph(folder: Path, work: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs after its optimizations (what it fused, what it kept)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(work / "optimized.onnx")
    ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(work / "optimized.onnx"), load_external_data=False)


def float_initializer_shapes(model: onnx.ModelProto) -> set[tuple[int, ...]]:
    return {tuple(t.dims) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}


def linear_shapes(config_dir: Path, fused: bool = False) -> list[tuple[int, int]]:
    """K x N of every MatMulNBits the export implies: one per linear layer (the head included), or with
    fused=True (--fuse-linear) one per q/k/v and gate/up group of a layer."""
    from qconv.converter.onnx_export import FUSED_LINEAR
    from qconv.formats.hf_config import read_model_spec

    spec = read_model_spec(config_dir)
    shapes = spec.expected_shapes()
    part_of = {part: group for group, parts in FUSED_LINEAR.items() for part in parts} if fused else {}
    kernels: dict[str, tuple[int, int]] = {}
    for name, shape in shapes.items():
        if len(shape) != 2 or name == "model.embed_tokens.weight":
            continue
        stem = name.removesuffix(".weight")
        layer, _, kind = stem.removeprefix("model.layers.").partition(".")
        key = f"{layer}.{part_of[kind]}" if kind in part_of else stem
        k, n = kernels.get(key, (shape[1], 0))
        kernels[key] = (k, n + shape[0])
    return list(kernels.values()) + ([(spec.hidden, spec.vocab_size)] if spec.tied_embeddings else [])


def matmulnbits_shapes(graph: onnx.ModelProto) -> list[tuple[int, int]]:
    """Sorted K x N of the MatMulNBits nodes of an optimized graph."""

    def attr(node: onnx.NodeProto, name: str) -> int:
        return next(a.i for a in node.attribute if a.name == name)

    return sorted((attr(n, "K"), attr(n, "N")) for n in graph.graph.node if n.op_type == "MatMulNBits")


def kld(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean KL(ref || test) over positions, from logits."""

    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(ref), log_softmax(test)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


# Small random folders of every family to-onnx exports, each with its family's own step inside the 16 tokens of
# test_export.IDS: gemma3 five sliding layers (window 8) and a global one; phi3 fused q/k/v and gate/up, half of each
# head rotated, LongRoPE (short factors up to 64 tokens), a window of 12 on every layer; smollm3 layer 3 without rope.
LONGROPE = {
    "rope_type": "longrope",
    "long_factor": [1.0 + 0.5 * i for i in range(4)],
    "short_factor": [1.0 + 0.05 * i for i in range(4)],
}
FAMILIES = {
    "llama": dict(arch="llama", tied=True),
    "qwen2": dict(arch="qwen2"),  # q/k/v biases
    "qwen3": dict(arch="qwen3", head_dim=96),  # q/k norms, head_dim != hidden / heads
    "gemma3": dict(
        arch="gemma3", hidden=64, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=32, ffn=128, vocab=512, tied=True,
        sliding_window=8,
    ),
    "phi3": dict(
        arch="phi3", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, vocab=512, context_length=256,
        rope_scaling=LONGROPE,
        extra_config={"original_max_position_embeddings": 64, "partial_rotary_factor": 0.5, "sliding_window": 12},
    ),
    "smollm3": dict(arch="smollm3", hidden=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn=128, vocab=512, tied=True),
}  # fmt: skip


@pytest.fixture(scope="session")
def family_folder(tmp_path_factory):
    """family_folder(name, **changes) -> a random HF folder of FAMILIES[name] (memoised; shapes hold dicts, which
    the shared random_model_factory cannot key)."""
    import json

    from qconv.samples.synthetic import build_random_model

    built: dict[str, Path] = {}

    def build(name: str, **changes) -> Path:
        shape = {**FAMILIES[name], **changes}
        key = json.dumps(shape, sort_keys=True)
        if key not in built:
            built[key] = build_random_model(tmp_path_factory.mktemp(name), **shape)
        return built[key]

    return build


@pytest.fixture(scope="session")
def smollm2_onnx(smollm2_dir, tmp_path_factory) -> Path:
    """SmolLM2 exported with the defaults: 4-bit blocks of 32 with zero points, the shared embedding/head 4-bit
    in blocks of 16, importance weights from the built-in calibration text."""
    return export(smollm2_dir, tmp_path_factory.mktemp("onnx") / "smollm2-q4")


@pytest.fixture(scope="session")
def smollm2_onnx_fused(smollm2_dir, tmp_path_factory) -> Path:
    """The defaults with --fuse-linear: q/k/v and gate/up of each layer as one MatMulNBits each."""
    return export(smollm2_dir, tmp_path_factory.mktemp("onnx") / "smollm2-q4-fused", fuse_linear=True)
