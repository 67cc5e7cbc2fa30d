"""llama.cpp is the judge of the GGUF files qconv writes (issue 2 acceptance)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from tests.conftest import requires_llama_cpp, requires_torch
from tests.llama_ref import greedy_chat, load, logits, top1_agreement

pytestmark = [pytest.mark.reference, requires_llama_cpp]


@pytest.fixture(scope="module")
def smollm2_files(smollm2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2-gguf")
    return {
        t: convert_to_gguf(smollm2_dir, out / f"smollm2-{t}.gguf", t, progress=False).out_path
        for t in ("f32", "f16", "bf16", "q8_0")
    }


@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16", "q8_0"])
def test_llama_cpp_answers_the_chat_prompt(smollm2_files, type_name):
    model = load(smollm2_files[type_name], n_ctx=256, f32_kv=False)
    answer = greedy_chat(model, "What is the capital of France?")
    assert "Paris" in answer, answer


def dequantized_copy(src, dst):
    """An f32 GGUF with the same metadata as `src` (a trusted package file) and every tensor dequantized."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, values.reshape(tuple(reversed([int(d) for d in t.shape]))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_f32_logits_agree_with_the_dequantized_package(smollm2_files, smollm2_package_gguf, fixed_text, tmp_path):
    reference = load(dequantized_copy(smollm2_package_gguf, tmp_path / "package-f32.gguf"), n_ctx=512)
    ours = load(smollm2_files["f32"], n_ctx=512)
    tokens = ours.tokenize(fixed_text.encode(), add_bos=False)[:256]
    assert len(tokens) == 256
    assert tokens == reference.tokenize(fixed_text.encode(), add_bos=False)[:256]
    agreement = top1_agreement(logits(ours, tokens), logits(reference, tokens))
    print(f"top-1 agreement with llama.cpp on the dequantized package file: {agreement:.4f}")
    assert agreement >= 0.99


SHAPES = [
    dict(arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=4, ffn=512, vocab=512, tied=False),
    dict(arch="llama", hidden=256, n_layers=2, n_heads=8, n_kv_heads=2, ffn=640, vocab=512, tied=True),
    dict(arch="llama", hidden=192, n_layers=3, n_heads=4, n_kv_heads=1, head_dim=64, ffn=512, vocab=512, tied=False),
    dict(arch="mistral", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512, tied=False),
    dict(arch="qwen2", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512, tied=True),
    dict(arch="qwen2", hidden=320, n_layers=2, n_heads=5, n_kv_heads=1, ffn=512, vocab=512, tied=False),
    dict(arch="qwen3", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=96, ffn=512, vocab=512, tied=True),
    dict(arch="qwen3", hidden=256, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=32, ffn=512, vocab=512, tied=False),
]


@requires_torch
@pytest.mark.parametrize(
    "shape",
    SHAPES,
    ids=lambda s: f"{s['arch']}-h{s['hidden']}-{s['n_heads']}x{s['n_kv_heads']}-{'tied' if s['tied'] else 'untied'}",
)
def test_llama_cpp_on_our_f32_equals_transformers(random_model_factory, tmp_path, shape):
    import torch
    from transformers import AutoModelForCausalLM

    folder = random_model_factory(dtype="f32", seed=7, **shape)
    out = convert_to_gguf(folder, tmp_path / "m.gguf", "f32", progress=False).out_path
    tokens = np.random.default_rng(3).integers(0, shape["vocab"], size=48).tolist()
    ours = logits(load(out, n_ctx=128), tokens)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        expected = hf(torch.tensor([tokens])).logits[0].numpy()
    assert expected.std() > 0.05, "random logits too flat for the comparison to mean anything"
    diff = np.abs(ours - expected).max()
    print(f"{shape['arch']}: max abs logit diff {diff:.2e} (logit std {expected.std():.3f})")
    assert diff < 1e-3


@requires_torch
def test_the_comparison_catches_a_missing_rope_permutation(random_model_factory, tmp_path, monkeypatch):
    """Guard against a comparison too weak to fail: without the q/k permutation the logits must differ."""
    import torch
    from transformers import AutoModelForCausalLM

    import qconv.converter.sources as sources

    shape = SHAPES[0]
    folder = random_model_factory(dtype="f32", seed=7, **shape)
    monkeypatch.setattr(sources, "permute_rope_rows", lambda w, n_heads: w)
    out = convert_to_gguf(folder, tmp_path / "broken.gguf", "f32", progress=False).out_path
    tokens = np.random.default_rng(3).integers(0, shape["vocab"], size=48).tolist()
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(logits(load(out, n_ctx=128), tokens) - expected).max() > 1e-2
