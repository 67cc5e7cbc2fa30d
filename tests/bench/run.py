"""Speed of qrun vs llama.cpp on the same GGUF files, same thread count, in one run.

    python tests/bench/run.py [--threads 2] [--repeats 3] [--no-1b]

Rows: the SmolLM2 sample converted by qconv at q8_0, q4_0, q4_k_m, the package's own Q4_1 file (a GGUF written
by llama.cpp), and a random 1B llama (hidden 2048, ffn 5632, 22 layers, 32/4 heads) at q4_k_m. Columns: prompt
(128 tokens) and generation (64 tokens) tokens/s for each runtime (medians of --repeats runs), the ratio
qrun/llama.cpp, and generation as a fraction of this machine's bandwidth limit (measured read bandwidth / bytes
of weights read per token; the buffer is larger than the last-level cache, so this is the DRAM limit: the
135M files fit in a large L3 and can run above it).

llama.cpp runs through llama-cpp-python as users run it: weight repacking (extra buffer types) on; the build has no
AMX kernels (tests/llama_cpp_cmake_args.sh: they crash on this machine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.measure import median, table  # noqa: E402
from tests.bench.models import cache_root, random_1b_folder  # noqa: E402

PROMPT_TOKENS = 128
GEN_TOKENS = 64


def convert(folder: Path, type_name: str, out: Path) -> Path:
    if not out.exists():
        tmp = out.with_suffix(".tmp.gguf")
        subprocess.run(
            [sys.executable, "-m", "qconv.converter.cli", "to-gguf", str(folder), "-o", str(tmp), "--type", type_name],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tmp.rename(out)
    return out


def bench_files(include_1b: bool) -> list[tuple[str, Path]]:
    from qconv.samples.smollm2 import cached_smollm2, smollm2_gguf_path

    root = cache_root() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    smollm2 = cached_smollm2()
    rows = [(f"smollm2-135m {t}", convert(smollm2, t, root / f"smollm2-{t}.gguf")) for t in ("q8_0", "q4_0", "q4_k_m")]
    rows.append(("smollm2-135m package Q4_1 (llama.cpp's file)", smollm2_gguf_path()))
    if include_1b:
        rows.append(("random-1b q4_k_m", convert(random_1b_folder(), "q4_k_m", root / "random-1b-q4_k_m.gguf")))
    return rows


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights one decode step reads: every matrix, plus one embedding row (all of it when tied)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)  # our own converter's files
    tensors = {t.name: int(t.n_bytes) for t in reader.tensors}
    total = sum(n for name, n in tensors.items() if name != "token_embd.weight")
    if "output.weight" not in tensors:
        total += tensors["token_embd.weight"]
    return total


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (sysfs), 0 when unknown."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=0)


def read_bandwidth(threads: int, repeats: int = 7) -> float:
    """Bytes/s the machine reads from DRAM with `threads` threads (numpy sums of disjoint parts; GIL released).

    The buffer is 4x the last-level cache (at least 1 GiB): a smaller one is partly served by the cache (this
    machine's L3 is 480 MiB) and reads as a bandwidth DRAM cannot give."""
    n_bytes = max(1 << 30, 4 * last_level_cache_bytes())
    data = np.ones(n_bytes // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start))
    return best


def prompt_tokens(n_vocab: int) -> list[int]:
    rng = np.random.default_rng(0)
    return [int(t) for t in rng.integers(100, min(n_vocab, 40000), PROMPT_TOKENS + GEN_TOKENS)]


def time_prompt_and_decode(model, n_vocab: int) -> tuple[float, float]:
    """Prompt and single-token decode tokens/s of any model with reset() and eval(tokens) (qrun's Model and
    llama-cpp-python's Llama share that interface)."""
    tokens = prompt_tokens(n_vocab)
    model.reset()
    start = time.perf_counter()
    model.eval(tokens[:PROMPT_TOKENS])
    prompt = PROMPT_TOKENS / (time.perf_counter() - start)
    start = time.perf_counter()
    for t in tokens[PROMPT_TOKENS:]:
        model.eval([t])
    gen = GEN_TOKENS / (time.perf_counter() - start)
    return prompt, gen


def run_qrun(path: Path, threads: int) -> tuple[float, float]:
    from qconv.runtime.model import Model

    model = Model(path, threads=threads, ctx=512)
    return time_prompt_and_decode(model, model.n_vocab)


def llama_model(path: Path, threads: int):
    """llama.cpp at full strength: its weight repacking (extra buffer types) on. Our llama-cpp-python build has no
    AMX kernels (tests/llama_cpp_cmake_args.sh), which were what crashed on this machine."""
    import llama_cpp

    from tests.llama_ref import quiet_stderr

    with quiet_stderr():
        return llama_cpp.Llama(
            str(path), n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
        )


def run_llama(model) -> tuple[float, float]:
    return time_prompt_and_decode(model, model.n_vocab())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-1b", action="store_true", help="skip the random 1B model")
    args = parser.parse_args()

    bandwidth = read_bandwidth(args.threads)
    print(
        f"memory read bandwidth ({args.threads} threads, DRAM): {bandwidth / 1e9:.1f} GB/s; last-level cache "
        f"{last_level_cache_bytes() / 2**20:.0f} MiB (a model that fits in it can exceed the limit)",
        flush=True,
    )
    rows = []
    for label, path in bench_files(not args.no_1b):
        ours, ref = [], []
        reference = llama_model(path, args.threads)
        for _ in range(args.repeats):  # interleaved, so background load hits both alike
            ours.append(run_qrun(path, args.threads))
            ref.append(run_llama(reference))
        del reference
        op, og = median([p for p, _ in ours]), median([g for _, g in ours])
        rp, rg = median([p for p, _ in ref]), median([g for _, g in ref])
        limit = bandwidth / weight_bytes_per_token(path)
        rows.append(
            [
                label,
                f"{op:.1f}",
                f"{rp:.1f}",
                f"{op / rp:.2f}",
                f"{og:.1f}",
                f"{rg:.1f}",
                f"{og / rg:.2f}",
                f"{limit:.1f}",
                f"{100 * og / limit:.0f}%",
                f"{100 * rg / limit:.0f}%",
            ]
        )
        print(f"{label}: done", file=sys.stderr, flush=True)
    header = [
        "model",
        "prompt qrun",
        "prompt llama.cpp",
        "ratio",
        "gen qrun",
        "gen llama.cpp",
        "ratio",
        "gen limit",
        "qrun % of limit",
        "llama.cpp % of limit",
    ]
    print(
        f"prompt {PROMPT_TOKENS} / generation {GEN_TOKENS} tokens, {args.threads} threads, tokens/s (median of {args.repeats})"
    )
    print(table(header, rows))


if __name__ == "__main__":
    main()
