"""llama.cpp judges the GGUF files of the families of issue 11: converted at f32 from a random folder, its logits
must agree with transformers' on the same tokens."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.samples.synthetic import build_random_model
from tests.conftest import requires_llama_cpp, requires_torch
from tests.family_shapes import FAMILY_SHAPES, N_TOKENS
from tests.llama_ref import load, logits, top1_agreement

pytestmark = [pytest.mark.reference, requires_llama_cpp, requires_torch]


def _transformers_logits(folder, tokens):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def _compare(folder, gguf_path, vocab):
    tokens = np.random.default_rng(3).integers(0, vocab, size=N_TOKENS).tolist()
    ours = logits(load(gguf_path, n_ctx=256), tokens)
    expected = _transformers_logits(folder, tokens)
    assert expected.std() > 0.05, "random logits too flat for the comparison to mean anything"
    return float(np.abs(ours - expected).max() / expected.std()), top1_agreement(ours, expected)


@pytest.mark.parametrize("family", list(FAMILY_SHAPES))
def test_llama_cpp_on_our_f32_equals_transformers(tmp_path, family):
    shape = FAMILY_SHAPES[family]
    folder = build_random_model(tmp_path / "hf", dtype="f32", seed=7, **shape)
    out = convert_to_gguf(folder, tmp_path / f"{family}.gguf", "f32", progress=False).out_path
    relative, top1 = _compare(folder, out, shape["vocab"])
    print(f"{family}: max abs logit diff / logit std {relative:.2e}, top-1 {top1:.3f}")
    assert relative < 1e-2 and top1 >= 0.98


def test_the_comparison_catches_a_missing_gemma_norm_shift(tmp_path, monkeypatch):
    """Guard against a comparison too weak to fail: gemma3 norms stored without llama.cpp's +1 must differ."""
    import qconv.formats.architectures as architectures

    shape = FAMILY_SHAPES["gemma3"]
    folder = build_random_model(tmp_path / "hf", dtype="f32", seed=7, **shape)
    gemma3 = architectures.ARCHITECTURES["Gemma3ForCausalLM"]
    unshifted = tuple(architectures.TensorRow(r.hf, r.gguf, r.shape, r.when) for r in gemma3.rows)
    monkeypatch.setitem(architectures.ARCHITECTURES, "Gemma3ForCausalLM", type(gemma3)(**{**gemma3.__dict__, "rows": unshifted}))
    out = convert_to_gguf(folder, tmp_path / "broken.gguf", "f32", progress=False).out_path
    relative, _ = _compare(folder, out, shape["vocab"])
    assert relative > 1e-1
