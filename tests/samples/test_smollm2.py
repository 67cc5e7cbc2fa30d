"""samples.smollm2: the rebuilt HF folder of SmolLM2-135M-Instruct.

Reference checks: transformers loads it and answers the chat prompt; its next-token logits agree with llama.cpp
running the package's original Q4_1 file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.formats.tensor_names import permute_rope_rows, unpermute_rope_rows

requires_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)
requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="transformers is not installed"
)


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py), restated to test our inverse against."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.parametrize(("n_head", "head_dim"), [(9, 64), (3, 64), (4, 128), (2, 8)])
def test_unpermute_inverts_llama_cpp_permute(n_head, head_dim):
    weights = np.random.default_rng(0).standard_normal((n_head * head_dim, 16)).astype(np.float32)
    permuted = llama_cpp_permute(weights, n_head)
    assert not np.array_equal(permuted, weights)
    np.testing.assert_array_equal(unpermute_rope_rows(permuted, n_head), weights)
    np.testing.assert_array_equal(permute_rope_rows(weights, n_head), permuted)
    # Row 1 of a head (rotated with row 1 + head_dim/2 in HF's layout) sits next to row 0 after permuting.
    np.testing.assert_array_equal(permuted[1], weights[head_dim // 2])


def test_folder_has_the_hub_layout(smollm2_dir):
    names = sorted(p.name for p in smollm2_dir.iterdir() if not p.name.startswith("."))
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((smollm2_dir / "config.json").read_text())
    expected = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-05,
        "max_position_embeddings": 8192,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    assert {key: config[key] for key in expected} == expected
    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"].startswith("{% for message in messages %}")
    assert tokenizer_config["eos_token"] == "<|im_end|>"


def test_tensors_are_bf16_with_hf_names_and_no_head(smollm2_dir):
    with SafetensorsSource(smollm2_dir) as source:
        entries = source.entries
        assert len(entries) == 272
        assert {e.dtype for e in entries.values()} == {"BF16"}
        assert "lm_head.weight" not in entries
        assert entries["model.embed_tokens.weight"].shape == (49152, 576)
        assert entries["model.layers.29.self_attn.k_proj.weight"].shape == (192, 576)
        assert entries["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
        norm = source.read_f32("model.norm.weight")
        assert 0.1 < float(np.abs(norm).mean()) < 10


@pytest.mark.reference
@requires_transformers
def test_transformers_answers_paris(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def _llama_without_extra_buffers(path, **kwargs):
    # This machine's CPU has AMX and the AMX buffer type of the llama.cpp build segfaults on decode; plain CPU
    # buffers (use_extra_bufts = false, llama.cpp's --no-extra-bufts) avoid it.
    import llama_cpp
    import llama_cpp.llama

    defaults = llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(str(path), verbose=False, **kwargs)
    finally:
        llama_cpp.llama.llama_cpp.llama_model_default_params = defaults


@pytest.mark.reference
@requires_transformers
@requires_llama_cpp
def test_logits_agree_with_llama_cpp_on_the_package_file(smollm2_dir, smollm2_package_gguf, fixed_text):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smollm2_dir).encode(fixed_text, add_special_tokens=False)[:64]
    llm = _llama_without_extra_buffers(smollm2_package_gguf, n_ctx=128, n_threads=2, logits_all=True)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    agreement = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    print(f"top-1 agreement over {len(ids)} tokens: {agreement:.3f}, max |diff| {np.abs(ours - theirs).max():.3f}")
    # llama.cpp runs the Q4_1 weights with 8-bit activations, we run their bf16 rounding in f32: close, not equal.
    assert agreement >= 0.95


def _llama_cpp_converter() -> str:
    """llama.cpp's convert_hf_to_gguf.py, from the source vendored in the llama-cpp-python sdist (fetched once)."""
    from tests.bench.models import llama_cpp_source

    return str(llama_cpp_source() / "convert_hf_to_gguf.py")


@pytest.mark.reference
@requires_transformers
def test_llama_cpp_converter_gives_back_the_package_file(smollm2_dir, smollm2_package_gguf, tmp_path):
    """llama.cpp's own converter, run on our folder, recovers the package's tokenizer metadata exactly (pre-tokenizer
    detected as "smollm" by its hash of tokenized text) and its tensors up to our bf16 rounding."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    # The converter imports sentencepiece before looking for tokenizer.model; a stub lets it fall through to BPE.
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "sentencepiece.py").write_text("SentencePieceProcessor = None\n")
    out = tmp_path / "llama_cpp.gguf"
    command = [sys.executable, _llama_cpp_converter(), str(smollm2_dir), "--outfile", str(out), "--outtype", "bf16"]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "stub")}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    theirs, package = GGUFReader(out), GGUFReader(smollm2_package_gguf)
    for key, field in package.fields.items():
        if key.startswith("tokenizer.") and key != "tokenizer.ggml.add_space_prefix":
            assert theirs.fields[key].contents() == field.contents(), key
    converted = {t.name: t for t in theirs.tensors}
    for tensor in package.tensors:
        original = dequantize(tensor.data, tensor.tensor_type)
        # bf16 keeps 8 significant bits: half an ulp of the largest value bounds the rounding error.
        bound = float(np.abs(original).max()) * 2.0**-8
        ours = dequantize(converted[tensor.name].data, converted[tensor.name].tensor_type).reshape(original.shape)
        assert np.abs(ours - original).max() <= bound, tensor.name
