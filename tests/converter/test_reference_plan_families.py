"""Our type mixtures for the tensors of issue 11's families (fused attn_qkv and ffn_up, stacked experts, the expert
router, llama.cpp's 8-expert bumps) equal llama.cpp's: quantize the same f32 GGUF with llama_model_quantize."""

from __future__ import annotations

import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.samples.synthetic import build_random_model
from tests.conftest import requires_llama_cpp
from tests.converter.test_reference_plan import test_mixture_equals_llama_cpp  # noqa: F401  (run on these models)

pytestmark = [pytest.mark.reference, requires_llama_cpp]

# rows 256 wide so the k-quants apply; 8 layers so the more-bits layers differ from the others
SHAPES = {
    "phi3": dict(arch="phi3", hidden=256, n_layers=8, n_heads=4, n_kv_heads=1, ffn=512, vocab=384),
    "qwen3moe-8": dict(arch="qwen3moe", hidden=256, n_layers=8, n_heads=4, n_kv_heads=1, head_dim=64, ffn=256,
                       expert_ffn=256, n_experts=8, n_experts_used=2, vocab=384),
    "olmoe-4": dict(arch="olmoe", hidden=256, n_layers=8, n_heads=4, n_kv_heads=4, ffn=256, n_experts=4,
                    n_experts_used=2, vocab=384),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(SHAPES))
def f32_model(request, tmp_path_factory):
    folder = build_random_model(tmp_path_factory.mktemp("hf"), **SHAPES[request.param])
    out = tmp_path_factory.mktemp("plan") / f"{request.param}-f32.gguf"
    return convert_to_gguf(folder, out, "f32", progress=False).out_path
