"""Quality of 4-bit blocks of 32 against the f32 model (transformers), on SmolLM2 and its rotated variant:
mean KLD no worse than llama.cpp's q4_0 GGUF of the same folder and lower than ONNX Runtime's own
MatMulNBitsQuantizer (QDQ, same bits and block, zero points as ours) applied to an fp32 export."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from qconv.runtime.onnx_backend import OnnxModel
from tests.conftest import requires_torch
from tests.onnx.conftest import export, kld
from tests.onnx.kld_reference import WINDOW, gguf_weights, heads_of, llama_cpp_logits, transformers_logits

pytestmark = [pytest.mark.reference, requires_torch]

RESULTS: dict[str, dict[str, float]] = {}


def ort_quantizer_folder(model_dir: Path, work: Path) -> Path:
    """ONNX Runtime's own quantizer on our float32 export; the head stays float32 (the harder comparison)."""
    matmul_nbits = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
    from onnxruntime.quantization.quant_utils import QuantFormat

    from qconv.converter.onnx_export import ROPE_MATMUL

    fp32 = export(model_dir, work / "fp32", quantize=False)
    model = onnx.load(str(fp32 / "model.onnx"))
    rope = [n.name for n in model.graph.node if n.name.startswith(ROPE_MATMUL)]  # x @ R of rope: not a weight
    quantizer = matmul_nbits.MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=32,
        is_symmetric=False,
        quant_format=QuantFormat.QDQ,
        nodes_to_exclude=["lm_head_MatMul", *rope],
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(fp32 / "model.onnx"), use_external_data_format=False)
    return fp32


@pytest.fixture(scope="module", params=["smollm2", "rotated"])
def variant(request, smollm2_dir, tmp_path_factory):
    """(name, HF folder, our default export of it)."""
    if request.param == "smollm2":
        return request.param, smollm2_dir, request.getfixturevalue("smollm2_onnx")
    from qconv.samples.rotate import build_rotated

    work = tmp_path_factory.mktemp("rotated")
    model_dir = build_rotated(smollm2_dir, work / "hf", seed=0)
    return request.param, model_dir, export(model_dir, work / "onnx", bits=4, block_size=32)


def test_kld_4bit_block32(variant, tmp_path, fixed_text):
    from qconv.converter.convert import ConvertOptions, convert_to_gguf

    name, model_dir, ours_dir = variant
    ours_model = OnnxModel(ours_dir, threads=2)
    ids = ours_model.tokenize(fixed_text)[:WINDOW]
    reference = transformers_logits(model_dir, ids)
    results = {"ours (ORT default)": kld(reference, ours_model.logits(ids))}
    results["ours (fp32 accuracy)"] = kld(reference, OnnxModel(ours_dir, threads=2, accuracy_level=0).logits(ids))
    ort_dir = ort_quantizer_folder(model_dir, tmp_path)
    results["ORT MatMulNBitsQuantizer"] = kld(reference, OnnxModel(ort_dir, threads=2).logits(ids))
    gguf = convert_to_gguf(model_dir, tmp_path / "q4_0.gguf", ConvertOptions(type_name="q4_0"), progress=False).out_path
    llama = llama_cpp_logits(gguf, ids, tmp_path)
    if llama is not None:
        results["llama.cpp q4_0"] = kld(reference, llama)
    else:  # llama.cpp unavailable: the same q4_0 weights in f32 arithmetic (no activation rounding: a stricter bar)
        weights = gguf_weights(gguf, *heads_of(model_dir))
        results["q4_0 weights, f32"] = kld(reference, transformers_logits(model_dir, ids, weights))
    RESULTS[name] = results
    print(f"\nmean KLD to f32 over {len(ids)} tokens ({name}):")
    for label, value in results.items():
        print(f"  {label:28s} {value:.4f}")
    ours = results["ours (ORT default)"]
    q4_0 = results["llama.cpp q4_0"] if "llama.cpp q4_0" in results else results["q4_0 weights, f32"]
    assert ours <= q4_0
    assert ours < results["ORT MatMulNBitsQuantizer"]
