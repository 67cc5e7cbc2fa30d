"""Helpers for running llama.cpp (llama-cpp-python) as the reference in tests and benches."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs to fd 2 from C; silence it for the duration."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def load(path: Path, n_ctx: int = 1024, f32_kv: bool = True, vocab_only: bool = False, threads: int = 2):
    from llama_cpp import Llama

    kwargs = dict(n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=threads, n_threads_batch=threads, seed=0)
    if f32_kv:
        kwargs |= dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    with quiet_stderr():
        return Llama(str(path), vocab_only=vocab_only, **kwargs)


def logits(model, tokens: list[int]) -> np.ndarray:
    """Next-token logits at every position: (len(tokens), n_vocab)."""
    model.reset()
    with quiet_stderr():
        model.eval(tokens)
    return np.array(model.scores[: len(tokens)], dtype=np.float32)


def greedy_chat(model, prompt: str, max_tokens: int = 48) -> str:
    with quiet_stderr():
        out = model.create_chat_completion(
            [{"role": "user", "content": prompt}], temperature=0.0, top_k=1, max_tokens=max_tokens, seed=0
        )
    return out["choices"][0]["message"]["content"]


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())
