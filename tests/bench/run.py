"""Speed of qrun vs llama.cpp on the same GGUF files, C against C: qrun-bench (native/programs/qrun_bench.c,
libqrt's own timers) against llama-bench built from the same llama-cpp-python sdist (tests/llama_tools.py, AMX
off as tests/llama_cpp_cmake_args.sh builds it, weight repacking on as llama-bench runs by default). No Python
in either timed loop: a per-token Python loop around llama.cpp roughly halves its generation rate.

    python tests/bench/run.py [--threads 1,2] [--repeats 3] [--models 135m,1b,gemma3,qwen3moe,phi3]
                              [--types q4_0,q4_k_m,q8_0]

Tests, as llama-bench names them: pp62 and pp512 (prompt of 62 / 512 tokens in one eval), tg32 (32 tokens
decoded one at a time) at depth 0 and after 1024 tokens in the cache (tg32 @ d1024). Models: the SmolLM2-135M
sample and a random llama 1.1B (hidden 2048, ffn 5632, 22 layers, 32/4 heads), each converted by qconv; the real
gemma3-270m package file as shipped; random qwen3moe (hidden 1024, 16 layers, 32 experts, 4 per token, expert ffn
512) and phi3 (hidden 2048, 16 layers) folders converted by qconv. Each cell is the median of --repeats runs;
for each file, thread count and repeat the two runtimes run one after the other, and the ratio is the median over
the repeats of qrun / llama.cpp in such a pair of runs (their lowest and highest beside it). qrun's serial share
(eval time with only the calling thread working) is printed beside its figures, and 1.1B decoding is compared with
the machine's DRAM read limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.measure import median, table  # noqa: E402
from tests.bench.models import (  # noqa: E402
    SHAPE_PHI3,
    SHAPE_QWEN3MOE,
    cache_root,
    random_1b_folder,
    random_family_folder,
)

NATIVE = Path(__file__).resolve().parents[2] / "native"
PROMPT_TESTS = dict(p="62,512", n="0", d="0")
GEN_TESTS = dict(p="0", n="32", d="0,1024")


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


def bench_files(models: list[str], types: list[str]) -> list[tuple[str, Path]]:
    from qconv.samples.smollm2 import cached_smollm2

    root = cache_root() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    folders = {
        "135m": ("smollm2-135m", cached_smollm2),
        "1b": ("random-1.1b", random_1b_folder),
        "qwen3moe": ("random-qwen3moe-32x4", lambda: random_family_folder("qwen3moe", SHAPE_QWEN3MOE)),
        "phi3": ("random-phi3-2048x16", lambda: random_family_folder("phi3", SHAPE_PHI3, smollm2_tokenizer=False)),
    }
    rows = []
    for model in models:
        if model == "gemma3":  # the package's own file (a gemma3 GGUF from the wild), as shipped: Q4_K_M
            from qconv.samples.gemma3 import gemma3_gguf_path

            rows.append(("gemma3-270m package q4_k_m", gemma3_gguf_path()))
            continue
        label, folder = folders[model]
        for t in types:
            rows.append((f"{label} {t}", convert(folder(), t, root / f"{label}-{t}.gguf")))
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
    """Bytes/s the machine reads from DRAM with `threads` threads: `qrun-bench --read-bandwidth`, a streaming read
    in C of one buffer in huge pages, as qrun's weights are (a read in 4 KiB pages pays a page walk per 4 KiB: on
    the 2-core AMD VM that halves 2 threads' rate, 35 against 67 GB/s, and qrun's decoding read faster than that
    limit). The buffer is 4x the last-level cache (at least 1 GiB): a smaller one is partly served by the cache."""
    n_bytes = max(1 << 30, 4 * last_level_cache_bytes())
    cmd = [str(NATIVE / "build" / os.uname().machine / "qrun-bench"), "--read-bandwidth", str(n_bytes)]
    cmd += ["-t", str(threads), "-r", str(repeats), "--json"]
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return float(rows[0]["bytes_per_second"])


def test_name(n_prompt: int, n_gen: int, depth: int) -> str:
    name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
    return f"{name} @ d{depth}" if depth else name


def run_qrun(path: Path, threads: int, tests: dict) -> dict[str, tuple[float, float]]:
    """test name -> (tokens/s, serial share) from one run of qrun-bench."""
    cmd = [str(NATIVE / "build" / os.uname().machine / "qrun-bench"), str(path), "-t", str(threads)]
    cmd += ["-r", "1", "-p", tests["p"], "-n", tests["n"], "-d", tests["d"], "--json"]
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {r["test"]: (r["tokens_per_second"], r["serial_share"]) for r in rows}


def run_llama(tool: Path, path: Path, threads: int, tests: dict) -> dict[str, float]:
    """test name -> tokens/s from one run of llama-bench."""
    cmd = [str(tool), "-m", str(path), "-t", str(threads), "-r", "1", "-o", "json"]
    cmd += ["-p", tests["p"], "-n", tests["n"], "-d", tests["d"]]
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {test_name(r["n_prompt"], r["n_gen"], r.get("n_depth", 0)): median(r["samples_ts"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 1
    default_threads = ",".join(str(t) for t in sorted({1, 2, 4, 8, 16, cores}) if t <= cores)
    parser.add_argument("--threads", default=default_threads, help=f"thread counts (default {default_threads})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="135m,1b", help="135m, 1b, gemma3, qwen3moe, phi3")
    parser.add_argument("--types", default="q4_0,q4_k_m,q8_0")
    args = parser.parse_args()

    from tests.llama_tools import build_tools

    subprocess.run(["make", "-s", "-C", str(NATIVE), "-j2"], check=True)
    llama_bench = build_tools(("llama-bench",))["llama-bench"]
    threads = [int(t) for t in args.threads.split(",")]
    files = bench_files(args.models.split(","), args.types.split(","))
    rows, worst = [], {}
    limits, shares = {}, {}  # 1.1B decoding at 2 threads: the DRAM limit (tok/s) per repeat, the medians of the shares
    for label, path in files:
        for t in threads:
            for tests in (PROMPT_TESTS, GEN_TESTS):
                # one run of each per repeat, alternating, so the memory rate of a shared machine, which drifts
                # over minutes, weighs on both sides of each ratio alike; the ratio is the median of the pairs'
                ours, theirs = [], []
                decode_limit = label.startswith("random-1.1b") and t == 2 and tests is GEN_TESTS
                bytes_per_token = weight_bytes_per_token(path) if decode_limit else 0
                for _ in range(args.repeats):
                    if decode_limit:  # the limit measured beside the runs it bounds, as it drifts with them
                        limits.setdefault(label, []).append(read_bandwidth(2) / bytes_per_token)
                    ours.append(run_qrun(path, t, tests))
                    theirs.append(run_llama(llama_bench, path, t, tests))
                if decode_limit:
                    shares[label] = (
                        median([run["tg32"][0] / lim for run, lim in zip(ours, limits[label])]),
                        median([run["tg32"] / lim for run, lim in zip(theirs, limits[label])]),
                    )
                for name in ours[0]:
                    rate = median([run[name][0] for run in ours])
                    serial = median([run[name][1] for run in ours])
                    reference = median([run[name] for run in theirs])
                    pairs = [a[name][0] / b[name] for a, b in zip(ours, theirs)]
                    ratio = median(pairs)
                    spread = f"{min(pairs):.2f}-{max(pairs):.2f}"
                    rows.append(
                        [label, t, name, f"{rate:.1f}", f"{reference:.1f}", f"{ratio:.2f}", spread, f"{serial:.1%}"]
                    )
                    print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)
                    worst[(name, t)] = min(worst.get((name, t), ratio), ratio)
            print(f"{label}, {t} threads: done", file=sys.stderr, flush=True)
    print(f"tokens/s, median of {args.repeats} runs; {cores} cores ({os.uname().machine})")
    header = ["model", "threads", "test", "qrun", "llama.cpp", "ratio", "pairs' ratios", "qrun serial share"]
    print(table(header, rows))
    print("\nlowest ratio per test and thread count:")
    print(table(["test", "threads", "lowest ratio"], [[n, t, f"{r:.2f}"] for (n, t), r in sorted(worst.items())]))

    if shares:
        print(
            "\n1.1B decoding at 2 threads vs the DRAM read limit (qrun-bench --read-bandwidth, 2 threads, measured "
            "before each pair of runs; shares are medians over the repeats):"
        )
        limit_rows = [
            [label, f"{median(limits[label]):.1f}", f"{ours:.0%}", f"{theirs:.0%}"]
            for label, (ours, theirs) in shares.items()
        ]
        print(table(["model", "limit tok/s", "qrun", "llama.cpp"], limit_rows))


if __name__ == "__main__":
    main()
