"""Mixture of experts in qrun: only the experts a token is routed to are read.

The experts no token chooses (found from transformers' router logits on the same random folder) are overwritten
with NaN in our f32 file: the logits stay finite and equal to the untouched file's, in a prompt and when decoding
token by token."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.formats.gguf_read import read_gguf
from qconv.samples.synthetic import build_random_model
from tests.conftest import requires_torch
from tests.family_shapes import FAMILY_SHAPES

pytestmark = [pytest.mark.reference, requires_torch]

TOKENS = [5, 77, 300]  # 3 tokens x top-3 of 8 experts: some experts stay unchosen in every layer


def _routed_experts(folder, shape) -> list[set[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([TOKENS]), output_router_logits=True)
    k = shape["n_experts_used"]
    return [set(torch.topk(logits, k, dim=-1).indices.flatten().tolist()) for logits in out.router_logits]


def _poison_unrouted(path, routed: list[set[int]], n_experts: int) -> int:
    """NaN into every expert slab no token uses; returns how many were poisoned."""
    with read_gguf(path) as gguf:
        slabs = []
        for layer, used in enumerate(routed):
            for kind in ("gate", "up", "down"):
                t = gguf.tensors[f"blk.{layer}.ffn_{kind}_exps.weight"]
                per_expert = t.nbytes // n_experts
                slabs += [(t.offset + e * per_expert, per_expert) for e in range(n_experts) if e not in used]
    with open(path, "r+b") as f:
        for offset, nbytes in slabs:
            f.seek(offset)
            f.write(np.full(nbytes // 4, np.nan, dtype=np.float32).tobytes())
    return len(slabs)


@pytest.mark.parametrize("family", ["qwen3moe", "olmoe"])
def test_unrouted_experts_are_never_read(tmp_path, family):
    from qconv.runtime.model import Model

    shape = FAMILY_SHAPES[family]
    folder = build_random_model(tmp_path / "hf", dtype="f32", seed=7, **shape)
    clean = convert_to_gguf(folder, tmp_path / "clean.gguf", "f32", progress=False).out_path
    poisoned = shutil.copy(clean, tmp_path / "poisoned.gguf")
    routed = _routed_experts(folder, shape)
    assert _poison_unrouted(poisoned, routed, shape["n_experts"]) > 0

    expected = Model(clean, threads=2, ctx=64).logits(TOKENS)
    model = Model(poisoned, threads=2, ctx=64)
    got = model.logits(TOKENS)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, expected)
    model.reset()
    for i, token in enumerate(TOKENS):  # decoding: one token at a time
        logits = model.eval([token])
        assert np.isfinite(logits).all()
        np.testing.assert_allclose(logits, expected[i], rtol=0, atol=1e-4 * np.abs(expected[i]).max())
