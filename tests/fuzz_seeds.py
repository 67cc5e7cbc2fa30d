"""Seed corpora for the libFuzzer targets in native/programs/fuzz_*.c, written by qconv itself so that mutations
start from files and inputs the runtime accepts (tests/fuzz.sh calls this).

    python3 -m tests.fuzz_seeds gguf|model|tokenizer|quant CORPUS_DIR [VOCAB_DIR]

- gguf, model: tiny random models converted by `qconv to-gguf`, one per weight type and architecture trait (tied
  embeddings, qwen2 biases, qwen3 q/k norms, YaRN rope, and gemma3, smollm3, phi3, qwen3moe and olmoe: a sliding
  window, rope-free layers, fused tensors, LongRoPE, experts), 256 wide where a k-quant needs it, so that a mutation
  reaches the repacking, the forward pass and the sampler rather than stopping at the loader.
- tokenizer: VOCAB_DIR receives tokenizer-only GGUFs (the fuzz target loads them once at start): SmolLM2's byte-level
  BPE under every pre-tokenizer native/tokenizer/pretokenize.c implements, Gemma 3's SentencePiece vocabulary and
  all-MiniLM-L6-v2's WordPiece (bert) vocabulary as `qconv to-gguf` writes it; the corpus is text with specials, digits, punctuation, spaces and malformed UTF-8.
- quant: a few inputs in fuzz_quant.c's layout (a header, then values as bytes).
"""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

# (name, arch, weight type, hidden size, extra build_random_model arguments); 64 wide keeps a file small, the
# k-quants need rows that are a multiple of 256
MODEL_SEEDS = [
    ("llama-f32", "llama", "f32", 64, {"tied": True}),
    ("llama-f16", "llama", "f16", 64, {}),
    ("llama-bf16", "llama", "bf16", 64, {}),
    ("llama-q8_0", "llama", "q8_0", 64, {"tied": True}),
    ("mistral-q4_0", "mistral", "q4_0", 64, {}),
    ("llama-q4_1", "llama", "q4_1", 64, {}),
    ("qwen2-q5_0", "qwen2", "q5_0", 64, {}),
    ("qwen3-q5_1", "qwen3", "q5_1", 64, {}),
    ("llama-iq4_nl", "llama", "iq4_nl", 64, {}),
    (
        "llama-yarn-q8_0",
        "llama",
        "q8_0",
        64,
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}},
    ),
    ("llama-q2_k", "llama", "q2_k", 256, {"tied": True}),
    ("qwen2-q3_k_m", "qwen2", "q3_k_m", 256, {}),
    ("qwen3-q4_k_m", "qwen3", "q4_k_m", 256, {}),
    ("llama-q5_k_m", "llama", "q5_k_m", 256, {}),
    ("mistral-q6_k", "mistral", "q6_k", 256, {}),
    # issue 11's families: a sliding window and GeGLU, rope-free layers, fused tensors with LongRoPE, experts
    ("gemma3-q8_0", "gemma3", "q8_0", 64, {"tied": True, "n_layers": 6, "sliding_window": 4}),
    ("smollm3-q4_0", "smollm3", "q4_0", 64, {"n_layers": 4}),
    (
        "phi3-q8_0",
        "phi3",
        "q8_0",
        64,
        {
            "context_length": 128,
            "rope_scaling": {"rope_type": "longrope", "long_factor": [2.0] * 16, "short_factor": [1.0] * 16},
            "extra_config": {"original_max_position_embeddings": 32},
        },
    ),
    ("qwen3moe-q8_0", "qwen3moe", "q8_0", 64, {"n_experts": 4, "n_experts_used": 2, "expert_ffn": 64}),
    ("olmoe-q4_0", "olmoe", "q4_0", 64, {"n_experts": 4, "n_experts_used": 2, "n_kv_heads": 2}),
]
GGUF_SEED_TYPES = ("llama-f32", "llama-q8_0", "qwen3-q4_k_m")

# tokenizer.ggml.pre values, one per pre-tokenizer family and flag combination of native/tokenizer/tokenizer.c's
# PRE_TYPES (regex stages x ignore_merges x clean_spaces)
PRE_TOKENIZERS = ("default", "gpt-2", "smollm", "starcoder", "llama3", "dbrx", "qwen2", "megrez")

TEXT_SEEDS = [
    b"Hello, world! How are you today?",
    b"<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
    b"<start_of_turn>user\nhi<end_of_turn>\n<bos><eos><pad>",
    "über ünïcödé 你好 世界 \U0001f600 Здравствуй мир 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ١٢٣ ¡¿".encode(),
    b"def f(x):\n\treturn x**2  # squares   \r\n\n\n    ",
    b"I'm you're we'll they've it's DON'T 3.14159 1,000,000 a-b_c",
    b"\xff\xfe\xc3\x28\xe2\x82\x28\xf0\x9f\x98 \x80\x80 broken \xed\xa0\x80 utf8 \x00 nul",
    b"   leading and trailing spaces   ",
    b"",
    "[CLS] Café NAÏVE Ångström\u00a0\u3000\u200b 東京タワー 한국어 👨\u200d👩\u200d👧 [SEP][MASK]".encode(),
    b"unbelievably " + b"x" * 120 + b" !!!???...,,, e\xcc\x81 \xef\xbf\xbd \x7f\x1b",
]


def write_model_seeds(corpus: Path, names: tuple[str, ...] | None = None) -> None:
    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.synthetic import build_random_model

    with tempfile.TemporaryDirectory() as scratch:
        for name, arch, type_name, hidden, extra in MODEL_SEEDS:
            if names is not None and name not in names:
                continue
            shape = {"n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn": hidden, "vocab": 300} | extra
            folder = build_random_model(Path(scratch) / name, arch=arch, hidden=hidden, **shape)
            convert_to_gguf(folder, corpus / f"{name}.gguf", type_name, progress=False)
            shutil.rmtree(folder)


def copy_tokenizer(source: Path, out: Path, pre: str | None = None) -> None:
    """A GGUF holding only `source`'s tokenizer.* metadata (tokenizer.ggml.pre replaced by `pre` if given)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(out), "llama")
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        value = field.contents()
        if field.name == "tokenizer.ggml.pre" and pre is not None:
            value = pre
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
    if pre is not None and "tokenizer.ggml.pre" not in reader.fields:
        writer.add_tokenizer_pre(pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_vocabularies(vocab_dir: Path) -> None:
    from qconv.samples.gemma3 import gemma3_gguf_path
    from qconv.samples.smollm2 import smollm2_gguf_path

    smollm2 = smollm2_gguf_path()
    for pre in PRE_TOKENIZERS:
        copy_tokenizer(smollm2, vocab_dir / f"smollm2-{pre}.gguf", pre)
    copy_tokenizer(gemma3_gguf_path(), vocab_dir / "gemma3-spm.gguf")
    copy_tokenizer(minilm_gguf(), vocab_dir / "minilm-bert.gguf")


def minilm_gguf() -> Path:
    """The MiniLM folder converted once (f32) into the cache, for its bert vocabulary."""
    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.minilm import cached_minilm

    folder = Path(cached_minilm())
    out = folder.parent / "minilm-fuzz-vocab-f32.gguf"
    if not out.exists():
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            convert_to_gguf(folder, Path(scratch) / out.name, "f32", progress=False)
            (Path(scratch) / out.name).replace(out)
    return out


def write_text_seeds(corpus: Path) -> None:
    # the first byte picks the vocabulary (fuzz_tokenizer.c: modulo their count), so each text goes in twice
    for i, text in enumerate(TEXT_SEEDS):
        for pick in (0, 1, 5, 8):  # 1: minilm-bert (gemma3-spm sorts first)
            (corpus / f"text-{i}-{pick}").write_bytes(bytes([pick]) + text)


def write_quant_seeds(corpus: Path) -> None:
    # fuzz_quant.c's header: type pick, rows, blocks per row, flags, exponent shift; then the values
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, 512).astype(np.float32).tobytes()
    extreme = np.array([3e38, -1e-45, 1e20, 1e-38, -3e38, 0.0, 1.0, 6e4] * 32, np.float32).tobytes()
    for pick in [*range(16), 0x80, 0x81]:  # the types of the table, then the block-wise quantizer
        for flags in (0, 1, 2, 3, 0x19, 0x38):
            body = normal if pick % 2 == 0 else extreme
            header = struct.pack("<BBBBb", pick, 2, 1, flags, 0)
            (corpus / f"quant-{pick}-{flags}").write_bytes(header + body)


def main(argv: list[str]) -> None:
    target, corpus = argv[0], Path(argv[1])
    corpus.mkdir(parents=True, exist_ok=True)
    if target == "gguf":
        write_model_seeds(corpus, GGUF_SEED_TYPES)
    elif target == "model":
        write_model_seeds(corpus)
    elif target == "tokenizer":
        vocab_dir = Path(argv[2])
        vocab_dir.mkdir(parents=True, exist_ok=True)
        write_vocabularies(vocab_dir)
        write_text_seeds(corpus)
    elif target == "quant":
        write_quant_seeds(corpus)
    else:
        raise SystemExit(f"tests.fuzz_seeds: unknown target {target!r} (gguf, model, tokenizer, quant)")


if __name__ == "__main__":
    main(sys.argv[1:])
