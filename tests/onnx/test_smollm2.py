"""to-onnx on the SmolLM2 sample: the acceptance checks of the format (size, fusion, numerics, cache, genai)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from qconv.runtime.onnx_backend import OnnxModel
from tests.conftest import have
from tests.onnx.conftest import float_initializer_shapes, linear_shapes, matmulnbits_shapes, optimized_graph
from tests.onnx.numpy_reference import forward

pytestmark = pytest.mark.reference


def test_check_model_and_size(smollm2_onnx, smollm2_dir):
    """Within 10% of the strict bound: bits/8 x every parameter at --bits (the head too) + scales as stored."""
    from qconv.formats.hf_config import read_model_spec
    from tests.onnx.test_export import strict_size_bound

    onnx.checker.check_model(str(smollm2_onnx / "model.onnx"), full_check=True)
    expected = strict_size_bound(smollm2_dir, 4, 32, 16, symmetric=False)
    size = (smollm2_onnx / "model.onnx").stat().st_size
    params = sum(math.prod(s) for s in read_model_spec(smollm2_dir).expected_shapes().values())
    print(
        f"\nSmolLM2 4-bit b32 (head b16): {size / 2**20:.1f} MiB, bound {expected / 2**20:.1f} MiB "
        f"({size / expected:.3f}x), {8 * size / params:.2f} bits/weight"
    )
    assert size / expected < 1.10


def test_every_linear_layer_is_matmulnbits(smollm2_onnx, smollm2_dir, tmp_path):
    graph = optimized_graph(smollm2_onnx, tmp_path)
    # 30 layers x (q, k, v, o, gate, up, down) + the head: one MatMulNBits per linear layer
    expected = linear_shapes(smollm2_dir)
    assert len(expected) == 211
    assert matmulnbits_shapes(graph) == sorted(expected)
    assert not float_initializer_shapes(graph) & (set(expected) | {s[::-1] for s in expected})


def test_fuse_linear_fuses_groups_with_the_same_logits(smollm2_onnx, smollm2_onnx_fused, smollm2_dir, tmp_path):
    """--fuse-linear: 30 layers x (q/k/v, o, gate/up, down) + the head = 121 MatMulNBits, the same logits."""
    graph = optimized_graph(smollm2_onnx_fused, tmp_path)
    expected = linear_shapes(smollm2_dir, fused=True)
    assert len(expected) == 121
    assert matmulnbits_shapes(graph) == sorted(expected)
    assert not float_initializer_shapes(graph) & (set(expected) | {s[::-1] for s in expected})
    plain = OnnxModel(smollm2_onnx, threads=2, accuracy_level=0)
    fused = OnnxModel(smollm2_onnx_fused, threads=2, accuracy_level=0)
    ids = plain.tokenize("<|im_start|>user\nName three colours and say why the sky is blue.<|im_end|>\n")
    assert np.abs(fused.logits(ids) - plain.logits(ids)).max() < 1e-4


def test_logits_match_numpy_reference(smollm2_onnx, smollm2_dir, fixed_text):
    model = OnnxModel(smollm2_onnx, threads=2, accuracy_level=0)
    ids = model.tokenize(fixed_text)[:256]
    assert len(ids) == 256
    ours = model.logits(ids)
    reference = forward(smollm2_onnx, ids, smollm2_dir)
    assert np.abs(ours - reference).max() < 1e-3


def test_greedy_generation_with_cache_equals_without(smollm2_onnx):
    model = OnnxModel(smollm2_onnx, threads=2, accuracy_level=0)
    prompt = model.tokenize("<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n")
    assert model.generate_ids(prompt, 32, use_cache=True) == model.generate_ids(prompt, 32, use_cache=False)


def test_tokenizer_matches_hf(smollm2_onnx, fixed_text):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(smollm2_onnx / "tokenizer.json"))
    model = OnnxModel(smollm2_onnx, threads=1)
    assert model.tokenize(fixed_text) == hf.encode(fixed_text).ids
    assert model.detokenize(model.tokenize(fixed_text)) == fixed_text


@pytest.mark.skipif(not have("onnxruntime_genai"), reason="onnxruntime-genai is not installed")
def test_onnxruntime_genai_loads_the_folder(smollm2_onnx):
    import onnxruntime_genai as og

    model = og.Model(str(smollm2_onnx))
    ours = OnnxModel(smollm2_onnx, threads=2)
    prompt = ours.tokenize("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 12, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    assert tokens[:8] == ours.generate_ids(prompt, 8)
