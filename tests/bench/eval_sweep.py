"""What `qconv eval` costs on the 135M sample: the default evaluation of one candidate, three candidates against one
reference in one run (goal: <= 1.1 x one reference pass + three candidate passes, each pass timed inside the same
run by the runners' own clocks), and the same sweep again with `--ref-cache` (the reference is not run).

    python -m tests.bench.eval_sweep [--threads 2] [--types q8_0,q4_k_m,q2_k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def qconv_eval(quants: list[Path], ref: Path, threads: int, out: Path, *extra) -> tuple[float, dict]:
    command = [sys.executable, "-c", "from qconv.converter.cli import main; main()", "eval", *map(str, quants),
               "--ref", str(ref), "-t", str(threads), "-q", "-o", str(out), "--force", *map(str, extra)]  # fmt: skip
    t0 = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if run.returncode not in (0, 2):
        raise SystemExit(run.stderr)
    return seconds, json.loads((out / "report.json").read_text())


def passes(report: dict) -> tuple[float, list[float]]:
    return report["reference_speed"]["seconds"], [c["speed"]["seconds"] for c in report["candidates"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--types", default="q8_0,q4_k_m,q2_k")
    args = parser.parse_args()

    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.smollm2 import cached_smollm2

    types = args.types.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        f32 = work / "f32.gguf"
        convert_to_gguf(cached_smollm2(), f32, "f32", progress=False)
        quants = []
        for t in types:
            quants.append(work / f"{t}.gguf")
            convert_to_gguf(cached_smollm2(), quants[-1], t, progress=False)

        rows = []
        wall, report = qconv_eval(quants[1:2], f32, args.threads, work / "one")
        ref, cands = passes(report)
        rows.append((f"default, {types[1]}", wall, ref, sum(cands)))
        wall, report = qconv_eval(quants, f32, args.threads, work / "sweep", "--ref-cache", work / "ref.cache")
        ref, cands = passes(report)
        rows.append((f"{len(quants)} candidates", wall, ref, sum(cands)))
        wall, report = qconv_eval(quants, f32, args.threads, work / "cached", "--ref-cache", work / "ref.cache")
        ref2, cands2 = passes(report)
        rows.append((f"{len(quants)} candidates, --ref-cache", wall, ref2, sum(cands2)))

    print(f"\n135M sample, {args.threads} threads; passes timed by the runners inside each run")
    print(f"{'run':<34}{'wall s':>8}{'ref pass s':>12}{'cand passes s':>15}{'wall / passes':>15}")
    for name, wall, ref, cands in rows:
        print(f"{name:<34}{wall:>8.1f}{ref:>12.1f}{cands:>15.1f}{wall / (ref + cands):>15.3f}")


if __name__ == "__main__":
    main()
