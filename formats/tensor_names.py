"""The HF -> GGUF tensor-name table for the llama family, and the q/k row permutation llama.cpp expects.

Names are rows, `{bid}` standing for the block index, as in gguf-py's tensor_mapping.py.
"""

from __future__ import annotations

import re

import numpy as np

from qconv.formats.errors import FormatError

HF_TO_GGUF: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight"),
    ("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight"),
    ("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight"),
    ("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight"),
    ("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight"),
    ("model.layers.{bid}.self_attn.q_proj.bias", "blk.{bid}.attn_q.bias"),
    ("model.layers.{bid}.self_attn.k_proj.bias", "blk.{bid}.attn_k.bias"),
    ("model.layers.{bid}.self_attn.v_proj.bias", "blk.{bid}.attn_v.bias"),
    ("model.layers.{bid}.self_attn.o_proj.bias", "blk.{bid}.attn_output.bias"),
    ("model.layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight"),
    ("model.layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight"),
    ("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight"),
    ("model.layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight"),
    ("model.layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight"),
    ("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight"),
)

# Checkpoint entries that carry no weights (buffers some exporters save); skipped, never an error.
IGNORED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)

# GGUF tensors whose rows llama.cpp's llama arch wants permuted, and which head count groups the rows.
ROPE_PERMUTED = {
    "attn_q.weight": "n_heads",
    "attn_k.weight": "n_kv_heads",
    "attn_q.bias": "n_heads",
    "attn_k.bias": "n_kv_heads",
}


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)") + "$")


_HF_PATTERNS = [(_pattern(hf), gguf) for hf, gguf in HF_TO_GGUF]
_GGUF_PATTERNS = [(_pattern(gguf), hf) for hf, gguf in HF_TO_GGUF]


def _translate(name: str, patterns) -> str | None:
    for pattern, target in patterns:
        m = pattern.match(name)
        if m:
            return target.format(bid=m.group("bid")) if "bid" in pattern.groupindex else target
    return None


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of an HF tensor; None for entries to skip. Unknown names raise FormatError."""
    if any(p.fullmatch(hf_name) for p in IGNORED):
        return None
    name = _translate(hf_name, _HF_PATTERNS)
    if name is None:
        raise FormatError(f"tensor '{hf_name}' has no GGUF name in the llama-family table")
    return name


def hf_name(gguf_tensor: str) -> str:
    name = _translate(gguf_tensor, _GGUF_PATTERNS)
    if name is None:
        raise FormatError(f"GGUF tensor '{gguf_tensor}' has no HF name in the llama-family table")
    return name


def rope_permute_heads(gguf_tensor: str) -> str | None:
    """Which head count groups the rows of this tensor for the rope permutation, or None if not permuted."""
    return ROPE_PERMUTED.get(gguf_tensor.split(".", 2)[-1] if gguf_tensor.startswith("blk.") else gguf_tensor)


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
