"""HF <-> GGUF tensor names, derived from the rows of formats/architectures.py, and the q/k row permutation
llama.cpp's llama-style rope expects.

Without an architecture, names are looked up in the llama family's rows (with Qwen3's q/k norms), the table
every llama-like family shares.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qconv.formats.architectures import (
    ARCHITECTURES,
    IGNORED,  # noqa: F401 - re-exported
    QK_HEAD_NORM,
    Architecture,
    checkpoint_name,
    match_gguf,
    match_hf,
    unknown_tensor,
)

# The llama-family names, for callers that name no architecture.
_LLAMA_FAMILY = dataclasses.replace(
    ARCHITECTURES["LlamaForCausalLM"], rows=(*ARCHITECTURES["LlamaForCausalLM"].rows, *QK_HEAD_NORM)
)
HF_TO_GGUF: tuple[tuple[str, str], ...] = tuple((r.hf, r.gguf) for r in _LLAMA_FAMILY.rows)
# GGUF tensors whose rows llama.cpp's llama arch wants permuted, and which head count groups the rows.
ROPE_PERMUTED = {r.gguf.removeprefix("blk.{bid}."): r.rope_heads for r in _LLAMA_FAMILY.rows if r.rope_heads}


def _arch(architecture: str | Architecture | None) -> Architecture:
    if architecture is None:
        return _LLAMA_FAMILY
    return architecture if isinstance(architecture, Architecture) else ARCHITECTURES[architecture]


def gguf_name(hf_name: str, architecture: str | Architecture | None = None) -> str | None:
    """The GGUF name of an HF tensor (experts: the stacked tensor's); None for entries to skip. Unknown names raise
    FormatError."""
    arch = _arch(architecture)
    name = checkpoint_name(arch, hf_name)
    if name is None:
        return None
    match = match_hf(arch, name)
    if match is None:
        raise unknown_tensor(arch, hf_name)
    return match.gguf


def hf_name(gguf_tensor: str, architecture: str | Architecture | None = None) -> str:
    """The HF name of a GGUF tensor (for stacked experts, the template with `{xid}` left in)."""
    arch = _arch(architecture)
    found = match_gguf(arch, gguf_tensor)
    if found is None:
        raise unknown_tensor(arch, gguf_tensor)
    row, bid = found
    return row.hf.replace("{bid}", str(bid)) if bid is not None else row.hf


def rope_permute_heads(gguf_tensor: str, architecture: str | Architecture | None = None) -> str | None:
    """Which head count groups the rows of this tensor for the rope permutation, or None if not permuted."""
    arch = _arch(architecture)
    if not arch.rope_permute:
        return None
    found = match_gguf(arch, gguf_tensor)
    return found[0].rope_heads if found else None


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half layout -> llama.cpp interleaved pairs, per head.

    HF's rotary embedding pairs dimension j with j + head_dim/2 of each head; llama.cpp's llama arch pairs 2j with
    2j+1. Row r = h*head_dim + half*head_dim/2 + j moves to h*head_dim + 2j + half.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of permute_rope_rows: llama.cpp's interleaved pairs -> HF's rotate-half layout."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
