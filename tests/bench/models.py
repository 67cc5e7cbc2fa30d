"""Models and reference tools shared by the benchmarks (built once, cached under $QCONV_CACHE)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"

# TinyLlama-like shape: 22 layers, hidden 2048, ffn 5632, 32/4 heads -> about 1.2B parameters with SmolLM2's
# 49152-token vocabulary, whose tokenizer files the folder gets (llama.cpp's converter only accepts tokenizers it
# recognises by hash, so a synthetic vocabulary would stop it before it reads a weight).
SHAPE_1B = dict(arch="llama", hidden=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn=5632, vocab=49152)
SHAPE_SMALL = dict(arch="llama", hidden=1024, n_layers=8, n_heads=16, n_kv_heads=4, ffn=2816, vocab=49152)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# issue 11's speed shapes: a Qwen3-MoE of 32 experts (4 per token) and a Phi-3 of hidden 2048, 16 layers each
SHAPE_QWEN3MOE = dict(
    arch="qwen3moe", hidden=1024, n_layers=16, n_heads=16, n_kv_heads=4, head_dim=64, ffn=2816, expert_ffn=512,
    n_experts=32, n_experts_used=4, vocab=49152,
)  # fmt: skip
SHAPE_PHI3 = dict(arch="phi3", hidden=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn=5632, vocab=49152)


def cache_root() -> Path:
    root = Path(os.environ.get("QCONV_CACHE", Path.home() / ".cache" / "qconv"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def random_1b_folder(small: bool = False) -> Path:
    from qconv.samples.smollm2 import cached_smollm2
    from qconv.samples.synthetic import build_random_model

    shape = SHAPE_SMALL if small else SHAPE_1B
    folder = cache_root() / "bench" / ("random-small-bf16-v2" if small else "random-1b-bf16-v2")
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        build_random_model(folder, dtype="bf16", seed=0, shard_bytes=500 * 2**20, **shape)
        smollm2 = cached_smollm2()
        for name in TOKENIZER_FILES:
            shutil.copyfile(smollm2 / name, folder / name)
    return folder


def random_family_folder(name: str, shape: dict, smollm2_tokenizer: bool = True) -> Path:
    """A random bf16 folder of `shape` with SmolLM2's tokenizer files (a vocabulary llama.cpp loads), or the random
    folder's own (phi3: llama.cpp's phi3 wants <unk>, <s> and </s> in the vocabulary, which it has)."""
    from qconv.samples.smollm2 import cached_smollm2
    from qconv.samples.synthetic import build_random_model

    folder = cache_root() / "bench" / f"random-{name}-bf16"
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        build_random_model(folder, dtype="bf16", seed=0, shard_bytes=500 * 2**20, **shape)
        if smollm2_tokenizer:
            smollm2 = cached_smollm2()
            for file in TOKENIZER_FILES:
                shutil.copyfile(smollm2 / file, folder / file)
    return folder


def llama_cpp_source() -> Path:
    """The llama.cpp source vendored in the llama-cpp-python sdist (downloaded from PyPI once)."""
    root = cache_root() / "llama-cpp-python-src"
    vendored = next(root.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
    if vendored is not None:
        return vendored
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-build-isolation",
            "--no-binary",
            "llama-cpp-python",
            "-d",
            str(root),
            LLAMA_CPP_PYTHON,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with tarfile.open(next(root.glob("llama_cpp_python-*.tar.gz"))) as tar:
        tar.extractall(root, filter="data")
    return next(root.glob("llama_cpp_python-*/vendor/llama.cpp"))


def llama_cpp_converter() -> Path | None:
    try:
        return llama_cpp_source() / "convert_hf_to_gguf.py"
    except (subprocess.CalledProcessError, StopIteration):
        return None
