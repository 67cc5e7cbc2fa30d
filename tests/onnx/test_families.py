"""to-onnx on the families of issue 11 beyond the checks every family shares (test_export.py): transformers' own
forward pass on the float export past Gemma 3's window and Phi-3's original context, Phi-3's long/short rope switch,
Gemma's embedding scale in the checkpoint's dtype, onnxruntime-genai loading the folders, and the mixtures of experts
refused by name before any output exists."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qconv.converter.onnx_families import decoder_layout
from qconv.formats.hf_config import read_model_spec
from qconv.runtime.onnx_backend import OnnxModel
from tests.conftest import have, requires_torch
from tests.family_shapes import FAMILY_SHAPES, multimodal_gemma3_folder
from tests.onnx.conftest import export
from tests.onnx.numpy_reference import forward
from tests.qconv_cli import assert_user_error, run

NEW_FAMILIES = ("gemma3", "phi3", "smollm3")
N_TOKENS = 100  # past gemma3's window (8) and phi3's original context (64): long factors
LONG_IDS = np.random.default_rng(3).integers(0, 509, size=N_TOKENS).tolist()


@pytest.mark.parametrize("family", ["qwen3moe", "olmoe"])
def test_mixture_of_experts_is_refused_by_name_before_any_output(tmp_path, family):
    from qconv.samples.synthetic import build_random_model

    folder = build_random_model(tmp_path / "hf", **FAMILY_SHAPES[family])
    hf_class = read_model_spec(folder).architecture
    out = tmp_path / "out"
    code, output = run("to-onnx", folder, "-o", out)
    assert_user_error(code, output, out, hf_class, "mixture of experts", "no ONNX export", "Phi3ForCausalLM")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_phi3_switches_to_long_factors_past_the_original_context(family_folder, tmp_path):
    """LongRoPE as transformers picks it per call: the short factors while max(position_ids) + 1 <= 64, the long
    ones past it (so a prefix's logits change once the sequence is longer), each as the numpy reference computes."""
    model_dir = family_folder("phi3")
    folder = export(model_dir, tmp_path / "out", calibrate=False)
    model = OnnxModel(folder, threads=2, accuracy_level=0)
    short, long = model.logits(LONG_IDS[:16]), model.logits(LONG_IDS)
    assert np.abs(long - forward(folder, LONG_IDS, model_dir)).max() < 1e-4
    assert np.abs(short - forward(folder, LONG_IDS[:16], model_dir)).max() < 1e-4
    assert np.abs(model.logits(LONG_IDS[:64])[:16] - short).max() < 1e-5  # 64 tokens: still short
    assert np.abs(model.logits(LONG_IDS[:65])[:16] - short).max() > 1e-4  # 65: long (noise here: 0)


def test_gemma_embedding_scale_is_rounded_to_the_checkpoint_dtype(family_folder):
    """sqrt(hidden) as Gemma3ScaledWordEmbedding multiplies it: in the embedding's dtype (bf16: 25.25 for 640)."""
    spec = dataclasses.replace(read_model_spec(family_folder("gemma3")), hidden=640)
    assert decoder_layout(spec, "BF16").embedding_scale == 25.25
    assert decoder_layout(spec, "F16").embedding_scale == float(np.float16(640**0.5))
    assert decoder_layout(spec, "F32").embedding_scale == float(np.float32(640**0.5))
    assert decoder_layout(read_model_spec(family_folder("phi3"))).embedding_scale is None


@pytest.mark.reference
@requires_torch
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_float_export_matches_transformers(family_folder, tmp_path, family):
    """The unquantized graph (every weight as stored) against transformers' f32 forward pass over 100 tokens, at
    both opsets; the quantized graphs face the numpy reference (test_export.py)."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = family_folder(family, dtype="f32")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([LONG_IDS])).logits[0].numpy()
    assert expected.std() > 0.05, "random logits too flat for the comparison to mean anything"
    for opset in (21, 23):
        folder = export(model_dir, tmp_path / f"opset{opset}", quantize=False, opset=opset)
        ours = OnnxModel(folder, threads=2, accuracy_level=0).logits(LONG_IDS)
        relative = float(np.abs(ours - expected).max() / expected.std())
        assert relative < 1e-4, (opset, relative)
        assert (ours.argmax(-1) == expected.argmax(-1)).mean() >= 0.98


@pytest.mark.reference
@pytest.mark.skipif(not have("onnxruntime_genai"), reason="onnxruntime-genai is not installed")
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_onnxruntime_genai_runs_the_folder(family_folder, tmp_path, family):
    """genai_config.json's model type loads in onnxruntime-genai and its greedy tokens are ours (until it stops at
    the end token)."""
    import onnxruntime_genai as og

    folder = export(family_folder(family), tmp_path / "out", calibrate=False)
    prompt = LONG_IDS[:6]
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 8, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    assert tokens and tokens == OnnxModel(folder, threads=2).generate_ids(prompt, 8)[: len(tokens)]


def test_gemma3_multimodal_folder_exports_its_text_model(family_folder, tmp_path):
    """A Gemma3ForConditionalGeneration folder (text_config, transformers 5's model.language_model. prefix, a vision
    tower) exports the same decoder as its text model alone."""
    import json

    import onnx
    from onnx import numpy_helper

    text = family_folder("gemma3")
    folder = multimodal_gemma3_folder(text, tmp_path / "mm")

    def weights(out):
        model = onnx.load(str(out / "model.onnx"))
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    ours = export(folder, tmp_path / "mm-onnx", calibrate=False)
    alone = export(text, tmp_path / "text-onnx", calibrate=False)
    assert json.loads((ours / "genai_config.json").read_text())["model"]["type"] == "gemma3_text"
    mm, reference = weights(ours), weights(alone)
    assert mm.keys() == reference.keys() and all(np.array_equal(mm[n], reference[n]) for n in mm)
    ids = LONG_IDS[:16]
    assert np.array_equal(OnnxModel(ours, threads=2).logits(ids), OnnxModel(alone, threads=2).logits(ids))
