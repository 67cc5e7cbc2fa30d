"""A prompt's logits do not depend on the thread count: matmuls whose rows give too few tasks for the threads also
split their tokens into blocks (model.c matmul_split_tokens), and each block passes its place in llama.cpp's
batch to the packed q4_K and q6_K kernels, whose float order depends on it."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.samples.synthetic import build_random_model


@pytest.fixture(scope="module")
def small_q4_k_m(tmp_path_factory):
    """q4_K and q6_K matrices (packed x16 on x86 and ARM) of few rows: 256-row q and o, 64-row k and v (one kv
    head), so that 3 threads and more split them into token blocks."""
    tmp = tmp_path_factory.mktemp("thread_split")
    folder = build_random_model(
        tmp / "llama", arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=1, ffn=512, vocab=512, seed=11
    )
    return convert_to_gguf(folder, tmp / "small-q4_k_m.gguf", "q4_k_m", progress=False).out_path


def prompt_logits(path, tokens: list[int], threads: int, n_batch: int) -> tuple[np.ndarray, int]:
    """Every position's logits of the prompt, and the tasks its pool runs handed out."""
    from qconv.runtime import Model
    from qconv.runtime._native import lib

    with Model(path, threads=threads, ctx=512, n_batch=n_batch) as model:
        model.reset_timings()
        logits = model.logits(tokens)
        return logits, lib.qrt_model_pool_tasks(model._handle)  # the C API itself, below the protocol


# 203 tokens: a short last token block, and q4_K's last 3 tokens (past the batch's whole groups of 4) in another
# order; n_batch 128: a second chunk that starts inside llama.cpp's ubatch and holds those 3 tokens
@pytest.mark.parametrize("n_batch", [512, 128])
def test_prompt_logits_equal_at_any_thread_count(small_q4_k_m, n_batch):
    from qconv.runtime import Model

    with Model(small_q4_k_m, threads=1, ctx=8) as model:
        kernels, n_vocab = model.kernel_variants(), model.n_vocab
    assert {"q4_K", "q6_K"} <= set(kernels)
    tokens = np.random.default_rng(0).integers(1, n_vocab, size=203).tolist()
    one, _ = prompt_logits(small_q4_k_m, tokens, 1, n_batch)
    for threads in (2, 3, 5, 8):  # more threads than cores is fine: the split follows the thread count
        got, _ = prompt_logits(small_q4_k_m, tokens, threads, n_batch)
        diff = np.abs(got - one).max()
        assert np.array_equal(got, one), f"{threads} threads, n_batch {n_batch}, {kernels}: max |diff| {diff}"


def test_few_rows_split_tokens_into_more_tasks(small_q4_k_m):
    """At 8 threads (32 tasks wanted) the matmuls of a 48-token chunk whose rows give fewer split into 2 token
    blocks, those of a 47-token chunk (too short) do not: per layer o (16 row chunks), down (16) and the q/k/v run
    (16 + 4 + 4) each hand out twice their tasks, where the extra token adds a few tasks of attention and rows."""
    tokens = np.random.default_rng(1).integers(1, 512, size=48).tolist()
    _, short = prompt_logits(small_q4_k_m, tokens[:47], 8, 64)
    _, split = prompt_logits(small_q4_k_m, tokens, 8, 64)
    assert split - short >= 2 * (16 + 16 + 24)
