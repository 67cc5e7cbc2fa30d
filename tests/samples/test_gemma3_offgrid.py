"""samples.gemma3_offgrid: the Gemma 3 sample with seeded noise on every weight matrix, so no tensor stays on the
grid of the Q4_K_M file it was dequantized from; the norms unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.samples.gemma3_offgrid import perturbed_rows, tensor_rng

# HF tensor -> the type the package file stores it in (layer 0; `qconv plan` of the sample shows the same)
SOURCE_TYPES = {
    "model.embed_tokens.weight": "Q8_0",
    "model.layers.0.self_attn.q_proj.weight": "Q5_0",
    "model.layers.0.self_attn.v_proj.weight": "Q8_0",
    "model.layers.0.self_attn.o_proj.weight": "Q4_K",
    "model.layers.0.mlp.down_proj.weight": "Q6_K",
    "model.layers.0.mlp.up_proj.weight": "Q5_0",
}


@pytest.fixture(scope="module")
def sample_dir():
    from qconv.samples.gemma3 import cached_gemma3

    return cached_gemma3()


@pytest.fixture(scope="module")
def offgrid_dir():
    from qconv.samples.gemma3_offgrid import cached_gemma3_offgrid

    return cached_gemma3_offgrid()


def test_noise_is_seeded_and_relative_to_each_row():
    rows = np.stack([np.full(4096, 1.0, np.float32), np.full(4096, 100.0, np.float32)])
    a = perturbed_rows(rows, 0.05, tensor_rng(0, "w", 0))
    b = perturbed_rows(rows, 0.05, tensor_rng(0, "w", 0))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, perturbed_rows(rows, 0.05, tensor_rng(0, "other", 0)))
    np.testing.assert_allclose((a - rows).std(axis=1), [0.05, 5.0], rtol=0.05)


def test_weights_leave_their_grid_and_norms_stay(sample_dir, offgrid_dir):
    from qconv.runtime import quants

    config = json.loads((offgrid_dir / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["architectures"] == ["Gemma3ForCausalLM"]
    with SafetensorsSource(sample_dir) as before, SafetensorsSource(offgrid_dir) as after:
        assert set(after.entries) == set(before.entries)
        for name, entry in before.entries.items():
            assert after.entries[name].dtype == ("BF16" if len(entry.shape) == 2 else "F32"), name
            if len(entry.shape) == 1:
                assert np.array_equal(after.read_f32(name), before.read_f32(name)), name
        for name, type_name in SOURCE_TYPES.items():
            original, moved = (s.read_f32(name, rows=(0, 256)) for s in (before, after))
            requantized = [
                quants.dequantize(quants.quantize(w, type_name), type_name, w.shape) for w in (original, moved)
            ]
            on_grid = np.mean(requantized[0] == original)
            assert on_grid > 0.99, f"{name}: {on_grid:.3f} of the sample's values are on the {type_name} grid"
            assert np.mean(requantized[1] == moved) < 0.01, name
            noise = (moved - original).std(axis=1) / np.sqrt(np.mean(original**2, axis=1))
            np.testing.assert_allclose(noise, 0.05, rtol=0.25, err_msg=name)


def test_cli_builds_the_variant(offgrid_dir, tmp_path):
    from tests.qconv_cli import run

    out = tmp_path / "gemma-3-270m-offgrid"
    code, output = run("sample", "gemma3-offgrid", "-o", out)
    assert code == 0, output
    assert (out / "model.safetensors").read_bytes() == (offgrid_dir / "model.safetensors").read_bytes()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (offgrid_dir / name).read_bytes(), name
    code, output = run("sample", "gemma3-offgrid", "-o", tmp_path / "other", "--seed", "1", "--noise", "0.02")
    assert code == 0, output
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (offgrid_dir / "model.safetensors").read_bytes()
