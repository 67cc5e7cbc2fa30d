"""The families of issue 11, converted at f32 from a random folder: llama.cpp and qrun on our file must agree with
transformers on the folder, on the same tokens."""

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


def _compare(folder, gguf_path, vocab, runtime=None):
    """(max abs logit diff / std of transformers' logits, top-1 agreement) of a runtime on our file (llama.cpp by
    default) against transformers on the folder, over N_TOKENS random tokens."""
    tokens = np.random.default_rng(3).integers(0, vocab, size=N_TOKENS).tolist()
    ours = runtime(gguf_path, tokens) if runtime else logits(load(gguf_path, n_ctx=256), tokens)
    expected = _transformers_logits(folder, tokens)
    assert expected.std() > 0.05, "random logits too flat for the comparison to mean anything"
    return float(np.abs(ours - expected).max() / expected.std()), top1_agreement(ours, expected)


def _qrun_logits(gguf_path, tokens):
    from qconv.runtime.model import Model

    return Model(gguf_path, threads=2, ctx=256, kv_f32=True).logits(tokens)


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    """family -> (random f32 HF folder, our f32 GGUF of it), built once for the llama.cpp and qrun checks."""
    built: dict[str, tuple] = {}

    def get(family: str):
        if family not in built:
            tmp = tmp_path_factory.mktemp(family)
            folder = build_random_model(tmp / "hf", dtype="f32", seed=7, **FAMILY_SHAPES[family])
            built[family] = (folder, convert_to_gguf(folder, tmp / f"{family}.gguf", "f32", progress=False).out_path)
        return built[family]

    return get


@pytest.mark.parametrize("family", list(FAMILY_SHAPES))
def test_llama_cpp_on_our_f32_equals_transformers(family_files, family):
    folder, out = family_files(family)
    relative, top1 = _compare(folder, out, FAMILY_SHAPES[family]["vocab"])
    print(f"{family}: llama.cpp max abs logit diff / logit std {relative:.2e}, top-1 {top1:.3f}")
    assert relative < 1e-2 and top1 >= 0.98


@pytest.mark.parametrize("family", list(FAMILY_SHAPES))
def test_qrun_on_our_f32_equals_transformers(family_files, family):
    folder, out = family_files(family)
    relative, top1 = _compare(folder, out, FAMILY_SHAPES[family]["vocab"], runtime=_qrun_logits)
    print(f"{family}: qrun max abs logit diff / logit std {relative:.2e}, top-1 {top1:.3f}")
    assert relative < 1e-2 and top1 >= 0.98


def test_the_comparison_catches_a_missing_gemma_norm_shift(tmp_path, monkeypatch):
    """Guard against a comparison too weak to fail: gemma3 norms stored without llama.cpp's +1 must differ."""
    import qconv.formats.architectures as architectures

    shape = FAMILY_SHAPES["gemma3"]
    folder = build_random_model(tmp_path / "hf", dtype="f32", seed=7, **shape)
    gemma3 = architectures.ARCHITECTURES["Gemma3ForCausalLM"]
    unshifted = tuple(architectures.TensorRow(r.hf, r.gguf, r.shape, r.when) for r in gemma3.rows)
    monkeypatch.setitem(
        architectures.ARCHITECTURES, "Gemma3ForCausalLM", type(gemma3)(**{**gemma3.__dict__, "rows": unshifted})
    )
    out = convert_to_gguf(folder, tmp_path / "broken.gguf", "f32", progress=False).out_path
    relative, _ = _compare(folder, out, shape["vocab"])
    assert relative > 1e-1
