"""Per-position statistics of a reference and a quantized model's logits, computed in C (native/stats/logit_stats.c):
KL(ref || quant) of the next-token distributions, both argmaxes, both next-token NLLs. Replaces float64 numpy
log-softmaxes over the whole vocabulary (the slow part of `qconv eval` after the forward passes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qconv.runtime._native import ffi, lib


@dataclass
class LogitStats:
    kld: np.ndarray  # float64 [n]: KL(softmax(ref) || softmax(quant)) in nats, >= 0
    argmax_ref: np.ndarray  # int32 [n]: first index of the largest ref logit
    argmax_quant: np.ndarray  # int32 [n]
    nll_ref: np.ndarray  # float64 [n]: -log softmax(ref)[next token]; NaN where the next token is unknown (< 0)
    nll_quant: np.ndarray  # float64 [n]

    @classmethod
    def empty(cls, n: int) -> LogitStats:
        """Arrays for n rows, in the fields' order and types."""
        return cls(*(np.empty(n, dtype=t) for t in (np.float64, np.int32, np.int32, np.float64, np.float64)))


def logit_stats(
    ref_logits: np.ndarray, quant_logits: np.ndarray, next_tokens: np.ndarray | None = None, threads: int = 0
) -> LogitStats:
    """Statistics of each row of two [n, vocab] logit matrices (float32; other float types are converted).
    next_tokens[i] is the token following position i (-1: none). threads <= 0: every CPU."""
    ref = np.ascontiguousarray(ref_logits, dtype=np.float32)
    quant = np.ascontiguousarray(quant_logits, dtype=np.float32)
    if ref.ndim != 2 or ref.shape != quant.shape:
        raise ValueError(f"logit_stats: ref {ref.shape} and quant {quant.shape} must be equal [rows, vocab] shapes")
    n, vocab = ref.shape
    nxt = None
    if next_tokens is not None:
        nxt = np.ascontiguousarray(next_tokens, dtype=np.int32)
        if nxt.shape != (n,):
            raise ValueError(f"logit_stats: next_tokens has shape {nxt.shape}, expected ({n},)")
        if n and int(nxt.max()) >= vocab:
            raise ValueError(f"logit_stats: next token {int(nxt.max())} is outside the vocabulary of {vocab}")
    out = LogitStats.empty(n)
    if n == 0:
        return out
    rc = lib.qrt_logit_stats(
        ffi.from_buffer("float[]", ref),
        ffi.from_buffer("float[]", quant),
        n,
        vocab,
        ffi.NULL if nxt is None else ffi.from_buffer("int32_t[]", nxt),
        int(threads),
        ffi.from_buffer("double[]", out.kld),
        ffi.from_buffer("int32_t[]", out.argmax_ref),
        ffi.from_buffer("int32_t[]", out.argmax_quant),
        ffi.from_buffer("double[]", out.nll_ref),
        ffi.from_buffer("double[]", out.nll_quant),
    )
    if rc != 0:
        raise RuntimeError(f"qrt_logit_stats failed on {n} rows of {vocab} logits")
    return out
