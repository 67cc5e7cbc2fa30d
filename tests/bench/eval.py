"""Speed of `qconv eval` beside llama.cpp's perplexity tool on the same tokens.

Both sides score the same held-out text with the same context against an f32 reference:
- qconv: Runner.logits of the reference and the quantized file per window, plus the KLD/top-1/perplexity metrics;
- llama.cpp: `llama-perplexity --kl-divergence-base` on the f32 file, then `--kl-divergence` on the quantized file.
Prints wall seconds and tokens/s per side and the ratio qconv/llama.cpp (goal: <= 1.5).

    python -m tests.bench.eval [--tokens 2048] [--ctx 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def held_out_text() -> str:
    from qconv.converter.quality.suites import get_suites

    return "\n\n".join(d for s in get_suites() if not s.whole_documents for d in s.documents("eval"))


def qconv_side(f32: Path, quant: Path, text: str, n_tokens: int, ctx: int, threads: int) -> tuple[float, int]:
    from qconv.converter.quality.runner import Runner
    from qconv.converter.quality.token_stats import TokenStats

    t0 = time.perf_counter()  # loading counts, as it does in llama-perplexity's wall time
    ref, q = Runner(f32, ctx, threads), Runner(quant, ctx, threads)
    tokens = ref.tokenize(text, False)[:n_tokens]
    windows = [tokens[i : i + ctx] for i in range(0, len(tokens) - ctx + 1, ctx)]
    stats = TokenStats()
    for w in windows:
        stats.add(ref.logits(w), q.logits(w), np.array(w[1:] + [-1]))
    seconds = time.perf_counter() - t0
    print(f"qconv: KLD {stats.summary()['kld_mean']:.4f} over {len(windows) * ctx} tokens")
    return seconds, len(windows) * ctx


def llama_side(f32: Path, quant: Path, text: str, n_tokens: int, ctx: int, threads: int) -> float:
    from tests.llama_tools import build_tools

    tool = build_tools(("llama-perplexity",))["llama-perplexity"]
    with tempfile.TemporaryDirectory() as tmp:
        text_file, base = Path(tmp) / "text.txt", Path(tmp) / "base.kld"
        text_file.write_text(text)
        common = ["-f", str(text_file), "-c", str(ctx), "-b", str(ctx), "-t", str(threads), "--chunks",
                  str(n_tokens // ctx)]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run([str(tool), "-m", str(f32), "--kl-divergence-base", str(base), *common], check=True,
                       capture_output=True)  # fmt: skip
        out = subprocess.run([str(tool), "-m", str(quant), "--kl-divergence-base", str(base), "--kl-divergence",
                              *common], check=True, capture_output=True, text=True)  # fmt: skip
        seconds = time.perf_counter() - t0
    mean = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Mean    KLD")]
    print(f"llama.cpp: {mean[0].strip() if mean else 'no KLD line'}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--type", default="q4_k_m")
    args = parser.parse_args()

    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.smollm2 import cached_smollm2

    with tempfile.TemporaryDirectory() as tmp:
        f32, quant = Path(tmp) / "f32.gguf", Path(tmp) / f"{args.type}.gguf"
        convert_to_gguf(cached_smollm2(), f32, "f32", progress=False)
        convert_to_gguf(cached_smollm2(), quant, args.type, progress=False)
        text = held_out_text()
        ours, n = qconv_side(f32, quant, text, args.tokens, args.ctx, args.threads)
        theirs = llama_side(f32, quant, text, args.tokens, args.ctx, args.threads)
    print(f"\nSmolLM2-135M f32 reference vs {args.type}, {n} tokens per model, ctx {args.ctx}, {args.threads} threads")
    print(f"{'':<12}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'qconv eval':<12}{ours:>10.2f}{2 * n / ours:>10.1f}")
    print(f"{'llama.cpp':<12}{theirs:>10.2f}{2 * n / theirs:>10.1f}")
    print(f"ratio qconv/llama.cpp time: {ours / theirs:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
