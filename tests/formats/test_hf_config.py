import json

import pytest

from qconv.formats.errors import FormatError
from qconv.formats.hf_config import ARCHITECTURES, read_model_spec

BASE = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
}


def _write(tmp_path, **overrides):
    config = {**BASE, **overrides}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_llama_shapes(tmp_path):
    spec = read_model_spec(_write(tmp_path))
    assert (spec.gguf_arch, spec.head_dim, spec.n_kv_heads) == ("llama", 64, 2)
    shapes = spec.expected_shapes()
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (128, 256)
    assert shapes["lm_head.weight"] == (1000, 256)


def test_qwen2_biases_and_qwen3_norms(tmp_path):
    spec = read_model_spec(_write(tmp_path, architectures=["Qwen2ForCausalLM"], tie_word_embeddings=True))
    assert "model.layers.0.self_attn.q_proj.bias" in spec.expected_shapes()
    assert "model.layers.0.self_attn.o_proj.bias" not in spec.expected_shapes()
    assert "lm_head.weight" not in spec.expected_shapes()
    spec = read_model_spec(_write(tmp_path, architectures=["Qwen3ForCausalLM"], head_dim=96))
    shapes = spec.expected_shapes()
    assert shapes["model.layers.0.self_attn.q_norm.weight"] == (96,)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (384, 256)


def test_missing_config(tmp_path):
    with pytest.raises(FormatError, match="config.json: missing"):
        read_model_spec(tmp_path)


def test_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_model_spec(tmp_path)


def test_unsupported_architecture_lists_supported(tmp_path):
    with pytest.raises(FormatError) as e:
        read_model_spec(_write(tmp_path, architectures=["GPT2LMHeadModel"]))
    for name in ARCHITECTURES:
        assert name in str(e.value)


def test_bad_field(tmp_path):
    with pytest.raises(FormatError, match="hidden_size"):
        read_model_spec(_write(tmp_path, hidden_size="big"))


def test_rope_scaling(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}
    assert read_model_spec(_write(tmp_path, rope_scaling=scaling)).rope_scaling["rope_type"] == "llama3"
    with pytest.raises(FormatError, match="rope_scaling type 'dynamic'"):
        read_model_spec(_write(tmp_path, rope_scaling={"type": "dynamic", "factor": 2}))
