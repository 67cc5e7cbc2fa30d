"""Logits of the same token windows from the references the ONNX quality checks compare against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

WINDOW = 256


def transformers_logits(model_dir: Path, ids: list[int], weights: dict | None = None) -> np.ndarray:
    """f32 transformers logits; `weights` (HF name -> array) replaces the checkpoint's values when given."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if weights:
        state = model.state_dict()
        with torch.no_grad():
            for name, values in weights.items():
                state[name].copy_(torch.from_numpy(values.reshape(state[name].shape)))
            if "lm_head.weight" in state and "lm_head.weight" not in weights and model.config.tie_word_embeddings:
                state["lm_head.weight"].copy_(state["model.embed_tokens.weight"])
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def gguf_weights(path: Path, n_heads: int, n_kv_heads: int) -> dict[str, np.ndarray]:
    """The dequantized tensors of a GGUF under their HF names (q/k rows back in HF's rope layout)."""
    from qconv.converter.sources import GGUFSource
    from qconv.formats.tensor_names import hf_name, rope_permute_heads, unpermute_rope_rows

    source = GGUFSource(path, allow_requantize=True)
    heads = {"n_heads": n_heads, "n_kv_heads": n_kv_heads}
    out = {}
    try:
        for name in source.shapes:
            values = source.read_f32(name)
            permuted = rope_permute_heads(name)
            out[hf_name(name)] = unpermute_rope_rows(values, heads[permuted]) if permuted else values
    finally:
        source.close()
    return out


LLAMA_CPP_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from tests import llama_ref
ids = [int(t) for t in sys.argv[3].split(",")]
model = llama_ref.load(sys.argv[2], n_ctx=512)
np.save(sys.argv[4], llama_ref.logits(model, ids))
"""


def llama_cpp_logits(gguf: Path, ids: list[int], work: Path) -> np.ndarray | None:
    """llama.cpp's logits in a child process (a crash there must not take the test run down); None if it fails."""
    out = work / "llama_logits.npy"
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-c", LLAMA_CPP_SCRIPT, str(root), str(gguf), ",".join(map(str, ids)), str(out)]
    result = subprocess.run(cmd, capture_output=True, timeout=600)
    if result.returncode != 0 or not out.exists():
        return None
    return np.load(out)


def heads_of(model_dir: Path) -> tuple[int, int]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
