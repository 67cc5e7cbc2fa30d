"""ARM kernel work per generated token under qemu: the scalar build vs baseline NEON, SDOT and SMMLA.

    python tests/bench/arm.py [--tokens 4]

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
    """(translation blocks executed, guest instructions executed): `-d in_asm` lists each block's instructions
    once when it is translated, `-d exec,nochain` logs one line per block run; both stream through a FIFO."""
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
        subprocess.run(qemu_cmd(binary, model, n, fifo), env=run_env(variant), check=True, capture_output=True)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4, help="generated tokens measured (beyond the first)")
    ap.add_argument("--repeats", type=int, default=1, help="CPU-time runs per point (median)")
    args = ap.parse_args()

    subprocess.run(["make", "-s", "-C", str(NATIVE), "TARGET=aarch64", "-j2"], check=True)
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


if __name__ == "__main__":
    main()
