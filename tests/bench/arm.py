"""ARM kernel work under qemu: per generated token the scalar build vs baseline NEON, SDOT and SMMLA; per prompt and
per generated token qrun against llama.cpp's own aarch64 build.

    python tests/bench/arm.py [--tokens 4] [--only variants|llama] [--prompt 62] [--rows i8mm] [--models small]
                              [--types q4_0]

Debian's qemu 7.2 has no TCG plugins, so work is measured two ways, each as the difference between a run that
generates 1 token and one that generates 1 + --tokens (load and prompt cancel out), divided by --tokens:
  * guest instructions and translation blocks executed (`-d in_asm,exec,nochain`: each block's instructions are
    listed when it is translated, one line is logged per block run; counted through a FIFO) on a small random
    llama (hidden 512, ffn 1536, 4 layers): exact, but slow to log, hence the small model. Blocks alone cannot
    tell SDOT from the baseline (a loop body is one block either way); instructions can;
  * qemu's CPU seconds (user + sys of the emulator) on the sample model (SmolLM2-135M), a coarser proxy.
One aarch64 binary serves every row: QRT_KERNEL forces the variant (what a build without the others would run);
"stored" rows keep the weights as the GGUF stores them (QRT_PACK=0), the others multiply q4_0/q4_K/q6_K (and q4_1, q5_0, q5_1, q8_0) matrices
repacked into 16-row groups (native/packed*). The scalar row is the stored layout (what armv7 runs).
Ratios are scalar / this row (higher = less work than the scalar build).

The llama table (C against C, the same GGUF files): qrun-bench against llama-bench cross-built for aarch64 from the
llama-cpp-python sdist the x86 benches use (tests/llama_tools.py build_aarch64_bench: static, GGML_NATIVE off,
-march per row, no OpenMP), both on one thread with no warm-up run, under the same qemu CPU:
  * neon-dotprod: -cpu cortex-a76 (SDOT, fp16, no I8MM; Raspberry Pi 5), llama.cpp at -march=armv8.2-a+dotprod+fp16;
  * i8mm: -cpu max (SDOT and SMMLA; qemu's SVE left unused: llama.cpp is built without +sve, as for the boards),
    llama.cpp at -march=armv8.6-a+dotprod+fp16+i8mm (its SMMLA gemm for repacked q4_0/q4_K/iq4_nl).
qrun picks its kernels as on a board (the best the CPU reports). Guest instructions of three runs per runtime:
tg1 (load + one decode step), tg(1 + --tokens) and pp(--prompt); per generated token (tg(1+N) - tg1) / N, per prompt
token (pp - tg1 + one decode step) / prompt tokens. Ratios: ours / llama.cpp (below 1 = fewer instructions).
Models: a small random llama (hidden 512, 4 layers, its own 512-token vocabulary) and the SmolLM2-135M sample, at
q4_0, q4_k_m and q8_0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.measure import median, table  # noqa: E402

NATIVE = Path(__file__).resolve().parents[2] / "native"
# (row, qemu -cpu, llama.cpp's -march)
LLAMA_ROWS = [
    ("neon-dotprod", "cortex-a76", "armv8.2-a+dotprod+fp16"),
    ("i8mm", "max", "armv8.6-a+dotprod+fp16+i8mm"),
]
LLAMA_TYPES = ("q4_0", "q4_k_m", "q8_0")
SMALL_SHAPE = dict(arch="llama", hidden=512, ffn=1536, n_layers=4, n_heads=8, n_kv_heads=4, vocab=512)
# (row label, QRT_KERNEL, QRT_PACK)
POINTS = [("scalar", "scalar", "0")] + [
    (f"{v}{label}", v, pack)
    for v in ("neon", "neon-dotprod", "neon-i8mm")
    for label, pack in ((" stored", "0"), ("", "1"))
]


def qemu_cmd(binary: Path, model: Path, n: int, log: Path | None = None) -> list[str]:
    cmd = ["qemu-aarch64", "-cpu", "max"]
    if log:
        cmd += ["-d", "in_asm,exec,nochain", "-D", str(log)]
    return cmd + [str(binary), str(model), "--raw", "-p", "The", "-n", str(n), "--temp", "0", "-t", "1", "--ignore-eos"]


def run_env(point: str) -> dict:
    _, kernel, pack = next(p for p in POINTS if p[0] == point)
    return {**{k: v for k, v in os.environ.items() if not k.startswith("QRT_")}, "QRT_KERNEL": kernel, "QRT_PACK": pack}


def count_work(binary: Path, model: Path, n: int, variant: str) -> tuple[int, int]:
    return count_instructions(lambda log: qemu_cmd(binary, model, n, log), run_env(variant))


def count_instructions(command, env: dict) -> tuple[int, int]:
    """(translation blocks executed, guest instructions executed) of command(log path), a qemu command line that
    logs with `-d in_asm,exec,nochain -D log`: `in_asm` lists each block's instructions once when it is
    translated, `exec,nochain` logs one line per block run; both stream through a FIFO."""
    with tempfile.TemporaryDirectory() as tmp:
        fifo = Path(tmp) / "exec.log"
        os.mkfifo(fifo)
        totals = [0, 0]

        def reader():
            insns_at: dict[bytes, int] = {}
            current, size = None, 0
            blocks = insns = 0
            with open(fifo, "rb", buffering=1 << 20) as f:
                for line in f:
                    if line.startswith(b"Trace"):
                        blocks += 1
                        insns += insns_at.get(line.split(b"/", 2)[1], 0)
                    elif line.startswith(b"0x"):
                        if current is None:
                            current = line[2 : line.index(b":")].rjust(16, b"0")
                        size += 1
                    elif current is not None:
                        insns_at[current] = size
                        current, size = None, 0
            totals[0], totals[1] = blocks, insns

        t = threading.Thread(target=reader)
        t.start()
        proc = subprocess.run(command(fifo), env=env, capture_output=True, text=True)
        if proc.returncode != 0:  # the reader ends at the FIFO's end of file either way
            t.join()
            raise RuntimeError(f"{' '.join(command(fifo))} failed:\n{proc.stderr[-2000:]}")
        t.join()
        return totals[0], totals[1]


def cpu_seconds(binary: Path, model: Path, n: int, variant: str) -> float:
    proc = subprocess.Popen(
        qemu_cmd(binary, model, n), env=run_env(variant), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"qemu run of {model} ({variant}) failed")
    return usage.ru_utime + usage.ru_stime


def convert(src: Path, qtype: str, out: Path) -> Path:
    from click.testing import CliRunner

    from qconv.converter.cli import main

    result = CliRunner().invoke(main, ["to-gguf", str(src), "--type", qtype, "-o", str(out), "-q"])
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    return out


def variants_table(args) -> None:
    binary = NATIVE / "build" / "aarch64" / "qrun-native"
    from qconv.samples.smollm2 import cached_smollm2
    from qconv.samples.synthetic import build_random_model

    work = Path(tempfile.mkdtemp(prefix="bench_arm_"))
    small_src = build_random_model(
        work / "small", hidden=512, ffn=1536, n_layers=4, n_heads=8, n_kv_heads=4, vocab=512, dtype="f32"
    )
    sample_src = cached_smollm2()
    rows = []
    for qtype in ("q4_0", "q4_k_m"):
        small = convert(small_src, qtype, work / f"small-{qtype}.gguf")
        sample = convert(sample_src, qtype, work / f"smollm2-{qtype}.gguf")
        blocks, insns, secs = {}, {}, {}
        for v, _, _ in POINTS:
            (b1, i1), (b0, i0) = count_work(binary, small, 1 + args.tokens, v), count_work(binary, small, 1, v)
            blocks[v], insns[v] = (b1 - b0) / args.tokens, (i1 - i0) / args.tokens
            long_runs = [cpu_seconds(binary, sample, 1 + args.tokens, v) for _ in range(args.repeats)]
            short_runs = [cpu_seconds(binary, sample, 1, v) for _ in range(args.repeats)]
            secs[v] = (median(long_runs) - median(short_runs)) / args.tokens
            print(f"{qtype} {v}: {blocks[v]:.0f} TBs, {insns[v]:.0f} insns, {secs[v]:.3f} s per token", file=sys.stderr)
        for v, _, _ in POINTS:
            rows.append(
                [
                    qtype,
                    v,
                    f"{insns[v] / 1e6:.1f}M",
                    insns["scalar"] / insns[v],
                    f"{blocks[v] / 1e6:.2f}M",
                    blocks["scalar"] / blocks[v],
                    secs[v],
                    secs["scalar"] / secs[v],
                ]
            )
    print(f"qemu-aarch64 -cpu max, 1 thread, {args.tokens} generated tokens per point; ratios: scalar / this")
    header = ["type", "kernel", "insns/token (small llama)", "ratio", "TBs/token", "ratio"]
    print(table(header + ["qemu CPU s/token (SmolLM2-135M)", "ratio"], rows))


def llama_files(models: list[str], types: tuple[str, ...] | list[str] = LLAMA_TYPES) -> list[tuple[str, Path]]:
    """(label, GGUF) of the small random llama and the SmolLM2 sample at `types`, converted once (cached)."""
    from tests.bench.models import cache_root, random_family_folder
    from tests.bench.run import bench_files
    from tests.bench.run import convert as convert_cached

    files = []
    if "small" in models:
        small = random_family_folder("arm-small", SMALL_SHAPE, smollm2_tokenizer=False)
        root = cache_root() / "bench"
        files += [(f"small {t}", convert_cached(small, t, root / f"random-arm-small-{t}.gguf")) for t in types]
    if "smollm2" not in models:
        return files
    return files + [
        (label.replace("smollm2-135m", "SmolLM2"), path) for label, path in bench_files(["135m"], list(types))
    ]


def runtime_counts(command, cpu: str, tokens: int, prompt: int) -> tuple[float, float]:
    """(instructions per prompt token, per generated token) of command(n_prompt, n_gen) under qemu -cpu cpu."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRT_")}

    def insns(n_prompt: int, n_gen: int) -> int:
        return count_instructions(
            lambda log: (
                ["qemu-aarch64", "-cpu", cpu, "-d", "in_asm,exec,nochain", "-D", str(log)]
                + [str(c) for c in command(n_prompt, n_gen)]
            ),
            env,
        )[1]

    tg1, tg_n, pp = insns(0, 1), insns(0, 1 + tokens), insns(prompt, 0)
    per_gen = (tg_n - tg1) / tokens
    return (pp - tg1 + per_gen) / prompt, per_gen


def llama_table(args) -> None:
    ours = NATIVE / "build" / "aarch64" / "qrun-bench"
    from tests.llama_tools import build_aarch64_bench

    def ours_cmd(model):
        return lambda p, n: [ours, model, "-p", p, "-n", n, "-t", 1, "-r", 1, "--no-warmup"]

    def llama_cmd(binary, model):
        return lambda p, n: [binary, "-m", model, "-p", p, "-n", n, "-t", 1, "-r", 1, "--no-warmup"]

    files = llama_files(args.models.split(","), args.types.split(","))
    rows = []
    for row, cpu, march in [r for r in LLAMA_ROWS if r[0] in args.rows.split(",")]:
        theirs = build_aarch64_bench(march)
        for label, model in files:
            op, og = runtime_counts(ours_cmd(model), cpu, args.tokens, args.prompt)
            tp, tg = runtime_counts(llama_cmd(theirs, model), cpu, args.tokens, args.prompt)
            print(f"{row} {label}: ours {op:.0f}/{og:.0f}, llama.cpp {tp:.0f}/{tg:.0f} insns", file=sys.stderr)
            rows.append([row, label, f"{op / 1e6:.2f}M", f"{tp / 1e6:.2f}M", op / tp])
            rows[-1] += [f"{og / 1e6:.2f}M", f"{tg / 1e6:.2f}M", og / tg]
    print(
        f"qemu-aarch64, 1 thread: guest instructions per token of pp{args.prompt} and of tg{args.tokens}, qrun-bench "
        "vs llama-bench (llama.cpp's aarch64 build); ratios: ours / llama.cpp"
    )
    header = ["cpu", "model", "ours/prompt tok", "llama.cpp", "ratio", "ours/gen tok", "llama.cpp", "ratio"]
    print(table(header, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4, help="generated tokens measured (beyond the first)")
    ap.add_argument("--prompt", type=int, default=62, help="prompt tokens of the llama.cpp comparison")
    ap.add_argument("--repeats", type=int, default=1, help="CPU-time runs per point (median)")
    ap.add_argument("--only", choices=("variants", "llama"), help="one of the two tables (default: both)")
    ap.add_argument("--rows", default="neon-dotprod,i8mm", help="CPU rows of the llama.cpp comparison")
    ap.add_argument("--models", default="small,smollm2", help="models of the llama.cpp comparison")
    ap.add_argument("--types", default=",".join(LLAMA_TYPES), help="weight types of the llama.cpp comparison")
    args = ap.parse_args()

    subprocess.run(["make", "-s", "-C", str(NATIVE), "TARGET=aarch64", "-j2"], check=True)
    if args.only != "llama":
        variants_table(args)
    if args.only != "variants":
        llama_table(args)


if __name__ == "__main__":
    main()
