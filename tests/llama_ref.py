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


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per-position KL(ref || model) of the next-token distributions, in nats."""
    ref = ref_logits.astype(np.float64)
    out = logits.astype(np.float64)
    ref_logp = ref - ref.max(-1, keepdims=True)
    ref_logp -= np.log(np.exp(ref_logp).sum(-1, keepdims=True))
    out_logp = out - out.max(-1, keepdims=True)
    out_logp -= np.log(np.exp(out_logp).sum(-1, keepdims=True))
    return (np.exp(ref_logp) * (ref_logp - out_logp)).sum(-1)


def quantize_file(src: Path, dst: Path, type_name: str, threads: int = 2) -> Path:
    """llama.cpp's own quantization of a GGUF (llama_model_quantize) with its type-mixture rules."""
    import ctypes

    import llama_cpp

    from qconv.converter.plan import FILE_TYPES, parse_type

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(FILE_TYPES[parse_type(type_name)][0])
    params.nthread = threads
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}, {type_name}) failed with {rc}")
    return Path(dst)
