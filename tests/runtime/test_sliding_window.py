"""Sliding-window layers (gemma3) keep only their window: the KV cache's size, and logits that stay right while the
kept rows move forward many times (a 32-token window, hundreds of tokens)."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.samples.synthetic import build_random_model
from tests.conftest import requires_llama_cpp
from tests.family_shapes import FAMILY_SHAPES

SHAPE = dict(FAMILY_SHAPES["gemma3"], context_length=8192)
N_BATCH = 64


@pytest.fixture(scope="module")
def gemma3_f32(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swa")
    folder = build_random_model(tmp / "hf", dtype="f32", seed=11, **SHAPE)
    return convert_to_gguf(folder, tmp / "gemma3.gguf", "f32", progress=False).out_path


def expected_kv_bytes(n_ctx: int, kv_f32: bool) -> int:
    """Global layers hold the context; sliding layers their window plus one batch, from a multiple of 64 on."""
    n_layers, window = SHAPE["n_layers"], SHAPE["sliding_window"]
    n_global = n_layers // 6
    sliding_rows = min(n_ctx, -(-(window + N_BATCH + 63) // 64) * 64)
    kv_dim = SHAPE["n_kv_heads"] * SHAPE["head_dim"]
    return 2 * kv_dim * (4 if kv_f32 else 2) * (n_global * n_ctx + (n_layers - n_global) * sliding_rows)


def test_kv_cache_holds_the_window_after_8192_tokens(gemma3_f32):
    from qconv.runtime.model import Model

    model = Model(gemma3_f32, threads=2, ctx=8192, n_batch=N_BATCH)
    assert model.kv_bytes == expected_kv_bytes(8192, kv_f32=False)
    tokens = np.random.default_rng(0).integers(0, SHAPE["vocab"], size=8192).tolist()
    logits = model.eval(tokens[:-1])
    assert np.isfinite(logits).all()
    assert np.isfinite(model.eval(tokens[-1:])).all()  # the last position, decoded
    assert model.n_past == 8192 and model.kv_bytes == expected_kv_bytes(8192, kv_f32=False)


def test_going_back_past_the_kept_window_is_refused_then_recomputed(gemma3_f32):
    from qconv.runtime import Model, prefill

    model = Model(gemma3_f32, threads=2, ctx=1024, kv_f32=True)
    tokens = np.random.default_rng(1).integers(0, SHAPE["vocab"], size=600).tolist()
    full = model.logits(tokens)
    # a prompt sharing only a short prefix with what the cache holds: the window before it is gone, so the prompt
    # is evaluated from the start, and its logits are those of a fresh model
    assert not model.truncate(29)
    last = prefill(model, tokens[:20] + tokens[:10])
    fresh = Model(gemma3_f32, threads=2, ctx=1024, kv_f32=True).logits(tokens[:20] + tokens[:10])
    np.testing.assert_allclose(last, fresh[-1], rtol=0, atol=1e-5 * np.abs(fresh[-1]).max())
    assert np.isfinite(full).all()


@pytest.mark.reference
@requires_llama_cpp
def test_logits_match_llama_cpp_while_the_window_slides(gemma3_f32):
    from qconv.runtime.model import Model
    from tests.llama_ref import load, logits, top1_agreement

    tokens = np.random.default_rng(2).integers(0, SHAPE["vocab"], size=700).tolist()
    ref = logits(load(gemma3_f32, n_ctx=1024), tokens)
    got = Model(gemma3_f32, threads=2, ctx=1024, kv_f32=True, n_batch=N_BATCH).logits(tokens)
    relative = np.abs(got - ref).max(-1) / ref.std()
    top1 = top1_agreement(got, ref)
    print(f"gemma3, window 32, 700 tokens: max diff / std {relative.max():.2e}, top-1 {top1:.3f}")
    assert relative.max() < 1e-2 and top1 >= 0.99
    # the rounding noise (f16 GELU table, f32 sums) is the same before the first slide as after the last one
    assert relative[400:].max() < 3 * relative[:100].max()
    # and other slide points (a batch of 512 moves the rows less often) give the same numbers
    wide = Model(gemma3_f32, threads=2, ctx=1024, kv_f32=True, n_batch=512).logits(tokens)
    np.testing.assert_allclose(wide, got, rtol=0, atol=1e-5 * float(np.abs(got).max()))
