"""samples.gemma3: the Gemma 3 270M HF folder rebuilt from the package's Q4_K_M GGUF.

Reference checks: transformers loads it as Gemma3ForCausalLM and its next-token logits agree with llama.cpp running
the package's original file; its chat template renders Gemma's turns.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from qconv.formats.safetensors_stream import SafetensorsSource

requires_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)
requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)


@pytest.fixture(scope="session")
def gemma3_dir():
    from qconv.samples.gemma3 import cached_gemma3

    return cached_gemma3()


@pytest.fixture(scope="session")
def gemma3_package_gguf():
    from qconv.samples.gemma3 import gemma3_gguf_path

    return gemma3_gguf_path()


def test_config_has_the_gguf_shape_and_gemma3_attention(gemma3_dir):
    config = json.loads((gemma3_dir / "config.json").read_text())
    expected = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "sliding_window": 512,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "vocab_size": 262144,
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    assert {key: config[key] for key in expected} == expected
    assert config["layer_types"] == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    tokenizer_config = json.loads((gemma3_dir / "tokenizer_config.json").read_text())
    assert "<start_of_turn>" in tokenizer_config["chat_template"]


def test_tensors_have_hf_names_and_norms_without_llama_cpp_shift(gemma3_dir, gemma3_package_gguf):
    from gguf import GGUFReader

    with SafetensorsSource(gemma3_dir) as source:
        entries = source.entries
        assert len(entries) == 236 and {e.dtype for e in entries.values()} == {"F32"}
        assert "lm_head.weight" not in entries
        assert entries["model.embed_tokens.weight"].shape == (262144, 640)
        assert entries["model.layers.0.self_attn.q_proj.weight"].shape == (1024, 640)
        assert entries["model.layers.17.mlp.down_proj.weight"].shape == (640, 2048)
        for part in ("pre_feedforward_layernorm", "post_feedforward_layernorm", "post_attention_layernorm"):
            assert entries[f"model.layers.3.{part}.weight"].shape == (640,)
        norms = {t.name: t for t in GGUFReader(gemma3_package_gguf).tensors if t.name.endswith("norm.weight")}
        ours = source.read_f32("model.layers.5.self_attn.k_norm.weight")
        np.testing.assert_array_equal(ours + np.float32(1), norms["blk.5.attn_k_norm.weight"].data)
        ours = source.read_f32("model.norm.weight")
        np.testing.assert_array_equal(ours + np.float32(1), norms["output_norm.weight"].data)


def test_chat_template_folds_the_system_message_into_the_first_turn(gemma3_dir):
    from qconv.runtime.chat import render_chat

    template = json.loads((gemma3_dir / "tokenizer_config.json").read_text())["chat_template"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Why?"},
    ]
    assert render_chat(template, messages, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.reference
@requires_transformers
def test_transformers_renders_the_chat_as_runtime_chat_does(gemma3_dir):
    from transformers import AutoTokenizer

    from qconv.runtime.chat import render_chat

    tokenizer = AutoTokenizer.from_pretrained(gemma3_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Why?"},
    ]
    theirs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert theirs == render_chat(tokenizer.chat_template, messages, bos_token="<bos>")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[:3] == [2, 105, 2364] and ids.count(2) == 1  # <bos> <start_of_turn> user: one BOS


@pytest.mark.reference
@requires_transformers
@requires_llama_cpp
def test_logits_agree_with_llama_cpp_on_the_package_file(gemma3_dir, gemma3_package_gguf, fixed_text):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.samples.test_smollm2 import _llama_without_extra_buffers

    ids = AutoTokenizer.from_pretrained(gemma3_dir).encode(fixed_text)[:64]
    assert ids[0] == 2  # <bos>: Gemma is run with it
    llm = _llama_without_extra_buffers(gemma3_package_gguf, n_ctx=128, n_threads=2, logits_all=True)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    model = AutoModelForCausalLM.from_pretrained(gemma3_dir, dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    agreement = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    print(f"top-1 agreement over {len(ids)} tokens: {agreement:.3f}, max |diff| {np.abs(ours - theirs).max():.3f}")
    # The same weights; llama.cpp quantizes the activations to 8 bits for its Q4_K/Q5_0/Q6_K/Q8_0 dot products.
    assert agreement >= 0.95


def test_cli_writes_the_folder_and_refuses_a_foreign_one(gemma3_dir, tmp_path):
    from tests.qconv_cli import assert_user_error, run

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_user_error(*run("sample", "gemma3", "-o", foreign), None, "--force")
    assert (foreign / "notes.txt").read_text() == "mine"

    out = tmp_path / "gemma-3-270m"
    code, output = run("sample", "gemma3", "-o", out)
    assert code == 0, output
    for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (gemma3_dir / name).read_bytes(), name
    assert (out / "model.safetensors").stat().st_size == (gemma3_dir / "model.safetensors").stat().st_size
