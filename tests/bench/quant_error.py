"""Quantization error of ours vs llama.cpp's quantizer, per type, with and without importance weights.

    python -m tests.bench.quant_error [--quick] [--types Q4_K,Q6_K] [--threads 2]

Same input tensors for both (genuine fp32 MiniLM, rotated SmolLM2, grid-bound SmolLM2, random heavy-tailed),
the same synthetic importance vectors, llama.cpp through llama_model_quantize (pure) on an f32 GGUF. Printed
per type: weighted RMSE over all tensors (ours, llama.cpp, ratio), the worst per-tensor ratio and where, and
quantization speed of both (MB of f32 input per second, in-process, same number of threads).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from qconv.runtime import quants
from tests.native import quant_llama as QL

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"]


def load_tensors(quick: bool) -> dict[str, np.ndarray]:
    tensors = dict(QL.random_tensors())
    minilm = QL.minilm_tensors()
    if quick:
        minilm = {k: v for k, v in minilm.items() if ".layer.0." in k or ".layer.5." in k}
    tensors |= minilm
    tensors |= QL.smollm2_rotated_tensors()
    tensors |= QL.smollm2_tensors(layers=(0, 29) if quick else (0, 15, 29))
    return tensors


def compare_type(type_name, tensors, importances, workdir, threads):
    """Rows: (with_importance, ours, ref, ratio, worst_ratio, worst_name, our_mbps, ref_mbps)."""
    block = quants.get_type(type_name).block_size
    names = [n for n, t in tensors.items() if t.shape[1] % block == 0]
    arrays = [tensors[n] for n in names]
    nbytes = sum(a.nbytes for a in arrays)
    rows = []
    for with_imp in (False, True):
        imps = [importances[n] if with_imp else None for n in names]
        ref_blocks = QL.llama_quantize(arrays, type_name, workdir, importance=imps, threads=threads)
        # speed: ours vs ggml_quantize_chunk in-process (llama-quantize's per-chunk call), same thread count,
        # interleaved per tensor so that machine load hits both alike
        our_time = ref_time = 0.0
        our_blocks = []
        for a, w in zip(arrays, imps, strict=True):
            t0 = time.perf_counter()
            QL.ggml_quantize(a, type_name, w, threads=threads)
            ref_time += time.perf_counter() - t0
            t0 = time.perf_counter()
            our_blocks.append(quants.quantize(a, type_name, importance=w, threads=threads))
            our_time += time.perf_counter() - t0
        ours_sq = ref_sq = 0.0
        worst, worst_name = 0.0, ""
        for name, a, w, ob, rb in zip(names, arrays, imps, our_blocks, ref_blocks, strict=True):
            e_our = QL.weighted_rmse(a, quants.dequantize(ob, type_name, a.shape), w)
            e_ref = QL.weighted_rmse(a, quants.dequantize(rb, type_name, a.shape), w)
            ours_sq += e_our**2 * a.size
            ref_sq += e_ref**2 * a.size
            ratio = e_our / e_ref if e_ref > 0 else (1.0 if e_our == 0 else float("inf"))
            if ratio > worst:
                worst, worst_name = ratio, name
        total = sum(a.size for a in arrays)
        ours, ref = (ours_sq / total) ** 0.5, (ref_sq / total) ** 0.5
        rows.append(
            (with_imp, ours, ref, ours / ref, worst, worst_name, nbytes / our_time / 1e6, nbytes / ref_time / 1e6)
        )
    return len(names), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer real tensors")
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if reason := QL.llama_cpp_available():
        raise SystemExit(reason)
    tensors = load_tensors(args.quick)
    importances = {n: QL.synthetic_importance(t.shape[1], seed=i) for i, (n, t) in enumerate(tensors.items())}
    print(f"{len(tensors)} tensors, {sum(t.size for t in tensors.values()) / 1e6:.1f} M values; threads={args.threads}")
    header = f"{'type':7s} {'imp':3s} {'n':>3s} {'ours':>10s} {'llama.cpp':>10s} {'ratio':>7s} {'worst':>7s}  {'ours MB/s':>9s} {'llama MB/s':>10s}  worst tensor"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for type_name in args.types.split(","):
            n, rows = compare_type(type_name.upper(), tensors, importances, Path(tmp), args.threads)
            for with_imp, ours, ref, ratio, worst, worst_name, our_mbps, ref_mbps in rows:
                print(
                    f"{type_name:7s} {'yes' if with_imp else 'no':3s} {n:3d} {ours:10.3e} {ref:10.3e} {ratio:7.4f} "
                    f"{worst:7.4f}  {our_mbps:9.1f} {ref_mbps:10.1f}  {worst_name}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
