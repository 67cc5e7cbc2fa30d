"""samples.rotate: folding the norms and rotating the residual stream keeps the model's function.

Checked with transformers (an independent implementation of the forward pass): logits of the rotated folder
equal the original's up to rounding.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.samples.rotate import build_rotated, random_orthogonal
from qconv.samples.synthetic import build_random_model

requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)


def test_random_orthogonal_is_orthogonal_and_seeded():
    q = random_orthogonal(64, seed=1)
    np.testing.assert_allclose(q @ q.T, np.eye(64), atol=1e-12)
    np.testing.assert_array_equal(q, random_orthogonal(64, seed=1))
    assert not np.allclose(q, random_orthogonal(64, seed=2))


def test_rotated_folder_unties_the_head_and_sets_unit_norms(tmp_path):
    src = build_random_model(tmp_path / "src", tied=True, hidden=64, ffn=128)
    out = build_rotated(src, tmp_path / "out", dtype="f32")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    with SafetensorsSource(src) as before, SafetensorsSource(out) as after:
        assert set(after.entries) == set(before.entries) | {"lm_head.weight"}
        np.testing.assert_array_equal(after.read_f32("model.layers.1.post_attention_layernorm.weight"), np.ones(64))
        # The head is the embedding with the final norm folded in, rotated like every reader of the stream.
        embedding = before.read_f32("model.embed_tokens.weight").astype(np.float64)
        gain = before.read_f32("model.norm.weight").astype(np.float64)
        expected = (embedding * gain) @ random_orthogonal(64, seed=0)
        np.testing.assert_allclose(after.read_f32("lm_head.weight"), expected, rtol=1e-5, atol=1e-7)


def _logits(folder, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy().astype(np.float64)


@pytest.mark.reference
@requires_transformers
@pytest.mark.parametrize(
    "shape", [dict(arch="llama", tied=True), dict(arch="qwen2"), dict(arch="qwen3", head_dim=96)], ids=str
)
def test_rotation_preserves_random_models(tmp_path, shape):
    src = build_random_model(tmp_path / "src", dtype="f32", **shape)
    out = build_rotated(src, tmp_path / "out", seed=5, dtype="f32")
    ids = list(range(3, 40))
    original, rotated = _logits(src, ids), _logits(out, ids)
    assert np.abs(original - rotated).max() < 1e-4


@pytest.mark.reference
@requires_transformers
def test_rotated_smollm2_computes_the_same_function(smollm2_dir, fixed_text):
    # Exactness in f32 is checked on the random models above (the f32 SmolLM2 variant: max |diff| 1.5e-4 of
    # logits up to 37); here the variant users get, stored in bf16, which rounds every rotated weight afresh.
    from transformers import AutoTokenizer

    from qconv.samples.smollm2 import cached_smollm2_rotated

    ids = AutoTokenizer.from_pretrained(smollm2_dir).encode(fixed_text, add_special_tokens=False)[:64]
    original, rotated = _logits(smollm2_dir, ids), _logits(cached_smollm2_rotated(), ids)
    diff = np.abs(original - rotated).max()
    top1 = float((original.argmax(-1) == rotated.argmax(-1)).mean())
    print(
        f"bf16 rotated SmolLM2: max |logit diff| {diff:.3f} (|logits| <= {np.abs(original).max():.1f}), top-1 {top1:.3f}"
    )
    assert diff < 1.0 and top1 >= 0.97
