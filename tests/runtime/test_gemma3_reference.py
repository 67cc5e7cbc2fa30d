"""The real Gemma 3 270M (the package's Q4_K_M GGUF, a file from the wild) in qrun and qrun-native vs llama.cpp.

1024 tokens of the fixed text run past the 512-token sliding window, so the sliding layers' kept rows move
forward several times. With an f32 KV cache the logits equal llama.cpp's to the bit (the summation orders are
followed, masked cache cells included, and ggml's GELU table as its build rounds it). The greedy raw continuations
use both runtimes' defaults (f16 cache).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tests.conftest import requires_llama_cpp
from tests.runtime.test_model_reference import assert_greedy_raw_continuation_equal, llama

pytestmark = [pytest.mark.reference, requires_llama_cpp]

N_TOKENS = 1024
PROMPT = "The history of the lighthouse keepers"


@pytest.fixture(scope="module")
def gemma3_gguf():
    from qconv.samples.gemma3 import gemma3_gguf_path

    return gemma3_gguf_path()


@pytest.fixture(scope="module")
def long_text(fixed_text) -> str:
    return "\n\n".join([fixed_text] * 3)  # the fixed text is ~730 Gemma tokens


def test_logits_match_llama_cpp_past_the_window(gemma3_gguf, long_text):
    from qconv.runtime.model import Model
    from tests.llama_ref import kl_divergence
    from tests.llama_ref import logits as llama_logits

    ref_model = llama(gemma3_gguf, f32_kv=True, n_ctx=2048)
    tokens = ref_model.tokenize(long_text.encode(), add_bos=True)[:N_TOKENS]
    assert len(tokens) == N_TOKENS
    ref = llama_logits(ref_model, tokens)
    ours = Model(gemma3_gguf, threads=2, ctx=2048, kv_f32=True)
    assert ours.tokenize(long_text)[:N_TOKENS] == tokens
    got = ours.logits(tokens)
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    diff = np.abs(got - ref).max(-1)
    kld = float(kl_divergence(ref, got).mean())
    print(f"gemma3 q4_k_m: top-1 {top1:.4f}, KLD {kld:.2g}, max |logit diff| {diff.max():.3g}")
    assert top1 >= 0.99
    assert kld < 0.01
    assert diff.max() == 0.0


def test_greedy_raw_continuation_identical(gemma3_gguf, qrun_native):
    from qconv.runtime.model import Model

    ref = assert_greedy_raw_continuation_equal(gemma3_gguf, PROMPT)
    ours = Model(gemma3_gguf, threads=2, ctx=1024)
    native = subprocess.run(
        [qrun_native, gemma3_gguf, "-p", PROMPT, "--raw", "-n", "64", "--temp", "0", "--ignore-eos", "-t", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert native.returncode == 0, native.stderr[-2000:]
    assert native.stdout.rstrip("\n") == ours.detokenize(ref).rstrip("\n")


def test_sliding_window_cache_holds_only_the_window(gemma3_gguf):
    """Global layers keep the context; sliding layers their window and a batch, from a multiple of 64 on."""
    from qconv.runtime.model import Model

    n_ctx, n_batch, window, n_layers, kv_dim = 8192, 64, 512, 18, 256
    model = Model(gemma3_gguf, threads=2, ctx=n_ctx, n_batch=n_batch)
    n_global = n_layers // 6
    sliding_rows = -(-(window + n_batch + 63) // 64) * 64
    assert model.kv_bytes == 2 * kv_dim * 2 * (n_global * n_ctx + (n_layers - n_global) * sliding_rows)
    assert model.kv_bytes < 2 * kv_dim * 2 * n_layers * n_ctx / 4
