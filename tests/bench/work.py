"""`qconv analyze` serially, with a local pool (-j N) and on a 2-node local Ray cluster (tests/ray_cluster.py): wall
time, speed-up, the units' own seconds (from --units-log) and what is left as overhead, and the unit costs per kind
that the README's scale model starts from. The sens.json of every executor must be identical, byte for byte.

    python -m tests.bench.work [--model DIR] [--jobs 2] [--max-tokens 1024] [--no-ray]

The model defaults to the SmolLM2-135M sample. Overhead: a run's wall time less the driver's own work (the serial
run's wall less its units' seconds) and less its units' seconds spread over the workers. Peak RSS: the largest
process of the run (the driver or one worker).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.ray_cluster import namespaces_work, run_in_cluster

QCONV = [sys.executable, "-m", "qconv.converter.cli"]


def analyze_command(model: Path, out: Path, name: str, extra: list[str], max_tokens: int) -> list[str]:
    return [*QCONV, "analyze", str(model), "-q", "--max-tokens", str(max_tokens), "-o", str(out / f"{name}.json"),
            "--units-log", str(out / f"{name}.units.jsonl"), *extra]  # fmt: skip


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB of the largest process: the driver or one of its workers, which it waits for)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def ray_run(model: Path, out: Path, max_tokens: int) -> float:
    """The analysis on a fresh 2-node cluster; its wall time counts from the driver's start (the connect, the probe
    and the object transfers included), not the cluster's start."""
    command = " ".join(analyze_command(model, out, "ray", ["--ray", "$RAY_TEST_ADDRESS"], max_tokens))
    timing = f's=$(date +%s.%N); {command} && python3 -c "import sys; print($(date +%s.%N) - $s)"'
    # Ray runs its workers at nice 15 (below its raylet): fair on dedicated nodes, but here on a shared 2-core VM the
    # pool's workers at nice 0 would win every contest with other jobs, so both run at 0
    steps = run_in_cluster({"analyze": timing}, out / "steps", timeout=3600, extra_env={"RAY_worker_niceness": "0"})
    step = steps["analyze"]
    if step.rc != 0:
        raise SystemExit(str(step))
    return float(step.out.split()[-1])


def units_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    if args.model is None:
        from qconv.samples.smollm2 import cached_smollm2

        args.model = cached_smollm2()
    out = Path(tempfile.mkdtemp(prefix="qconv-bench-work-"))
    runs, peak = {}, {}
    runs["serial"], peak["serial"] = timed(analyze_command(args.model, out, "serial", [], args.max_tokens))
    one = "serial -t 1"  # the units' work on one core: what -j N and Ray divide
    runs[one], peak[one] = timed(analyze_command(args.model, out, "serial-t1", ["-t", "1"], args.max_tokens))
    pool = f"-j {args.jobs}"
    runs[pool], peak[pool] = timed(analyze_command(args.model, out, "pool", ["-j", str(args.jobs)], args.max_tokens))
    files = {"serial": "serial", one: "serial-t1", pool: "pool"}
    if not args.no_ray and namespaces_work():
        runs["Ray, 2 nodes x 1 CPU"] = ray_run(args.model, out, args.max_tokens)
        files["Ray, 2 nodes x 1 CPU"] = "ray"
    reference = (out / "serial.json").read_bytes()
    for name, stem in files.items():
        assert (out / f"{stem}.json").read_bytes() == reference, f"{name}: sens.json differs from the serial one"

    serial_units = sum(u["seconds"] for u in units_of(out / "serial.units.jsonl"))
    driver = runs["serial"] - serial_units
    print(f"analyze of {args.model.name}, {args.max_tokens} tokens per trial; sens.json identical for every run\n")
    print("| executor | wall s | speed-up | vs -t 1 | units' seconds | overhead s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, stem in files.items():
        units = units_of(out / f"{stem}.units.jsonl")
        unit_seconds = sum(u["seconds"] for u in units)
        workers = 1 if name.startswith("serial") else 2 if "Ray" in name else args.jobs
        overhead = runs[name] - driver - unit_seconds / workers
        nodes = len({u["where"]["node"] or u["where"]["pid"] for u in units})
        print(f"| {name} ({nodes} {'nodes' if 'Ray' in name else 'processes'}) | {runs[name]:.1f} | "
              f"{runs['serial'] / runs[name]:.2f}x | {runs[one] / runs[name]:.2f}x | {unit_seconds:.1f} | "
              f"{overhead:.1f} | "
              f"{f'{peak[name]:.0f}' if name in peak else '-'} |")  # fmt: skip
    print(f"\ndriver (f32 conversion, reference logits, merge): {driver:.1f} s of the serial run\n")
    print("| unit kind | units | median s | total s |")
    print("|---|---:|---:|---:|")
    by_kind: dict[str, list[float]] = {}
    for unit in units_of(out / "serial.units.jsonl"):
        by_kind.setdefault(unit["kind"], []).append(unit["seconds"])
    for kind, seconds in by_kind.items():
        print(f"| {kind} | {len(seconds)} | {statistics.median(seconds):.2f} | {sum(seconds):.1f} |")
    # the tensor units' cost per weight, on -j's single-threaded workers: the scale model's constant
    sens = json.loads(reference)
    pooled = [u for u in units_of(out / "pool.units.jsonl") if u["kind"] == "tensor_errors"]
    weights = sum(math.prod(sens["tensors"][u["key"]]["shape"]) for u in pooled)
    print(f"\ntensor_errors on 1 thread: {sum(u['seconds'] for u in pooled) / weights * 1e6:.3f} s per million weights")
    groups = [u["seconds"] for u in units_of(out / "pool.units.jsonl") if u["kind"] == "group_kld"]
    print(
        f"group_kld on 1 thread: median {statistics.median(groups):.1f} s for {sens['n_elements'] / 1e6:.0f}M weights"
    )
    print(f"\noutputs in {out}")


if __name__ == "__main__":
    main()
