"""samples.synthetic: random-weight folders that transformers loads, for every supported architecture."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest

from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.samples.synthetic import build_random_model

requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)

SHAPES = [
    dict(arch="llama"),
    dict(arch="llama", tied=True, n_heads=8, n_kv_heads=8, dtype="f32"),
    dict(arch="llama", n_heads=4, n_kv_heads=1, head_dim=96),
    dict(arch="mistral", n_kv_heads=1, dtype="f16"),
    dict(arch="qwen2", tied=True),
    dict(arch="qwen3", head_dim=128, shard_bytes=400_000),
    dict(
        arch="llama",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
    ),
]


def _digest(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = build_random_model(tmp_path / "a", hidden=64, ffn=128, seed=3)
    b = build_random_model(tmp_path / "b", hidden=64, ffn=128, seed=3)
    c = build_random_model(tmp_path / "c", hidden=64, ffn=128, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_sharded_folder_has_a_complete_index(tmp_path):
    folder = build_random_model(tmp_path, arch="qwen2", shard_bytes=300_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    with SafetensorsSource(folder) as source:
        assert set(index["weight_map"]) == set(source.entries)
        assert index["metadata"]["total_size"] == source.total_bytes
        assert {e.file.name for e in source.entries.values()} == {p.name for p in shards}
        assert "model.layers.1.self_attn.k_proj.bias" in source.entries
        layer_norm = source.read_f32("model.layers.0.input_layernorm.weight")
        assert 0.5 < float(layer_norm.mean()) < 1.5


def test_qwen3_has_head_norms_and_head_dim(tmp_path):
    folder = build_random_model(tmp_path, arch="qwen3", hidden=256, n_heads=4, head_dim=128)
    config = json.loads((folder / "config.json").read_text())
    assert config["head_dim"] == 128 and config["architectures"] == ["Qwen3ForCausalLM"]
    with SafetensorsSource(folder) as source:
        assert source.entries["model.layers.0.self_attn.q_norm.weight"].shape == (128,)
        assert source.entries["model.layers.0.self_attn.q_proj.weight"].shape == (512, 256)
        assert not any(name.endswith(".bias") for name in source.entries)


def test_bad_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown arch 'gpt2'"):
        build_random_model(tmp_path, arch="gpt2")
    with pytest.raises(ValueError, match="vocab 100 is too small"):
        build_random_model(tmp_path, vocab=100)
    with pytest.raises(ValueError, match="not a multiple of n_kv_heads"):
        build_random_model(tmp_path, n_heads=4, n_kv_heads=3)


@pytest.mark.reference
@requires_transformers
@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items() if k != "rope_scaling")
)
def test_transformers_loads_and_runs(tmp_path, shape):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_random_model(tmp_path, **shape)
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert type(model).__name__ == json.loads((folder / "config.json").read_text())["architectures"][0]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**prompt).logits
    assert logits.shape == (1, prompt["input_ids"].shape[1], 512)
    assert torch.isfinite(logits).all() and logits.std() > 0.05
