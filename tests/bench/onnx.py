"""Prompt and generation speed of ONNX folders and of qrun, same threads, on SmolLM2-135M.

    python tests/bench/onnx.py [--threads 2] [--prompt 256] [--gen 64] [--runs 3]

Rows: ONNX Runtime on our `qconv to-onnx` folder (4-bit blocks of 32; the default, one MatMulNBits per linear
layer at opset 23; with --fuse-linear, one per q/k/v and gate/up group; with --opset 21, norms, rope and
attention spelled out in older ops), onnxruntime-genai on the default folder, onnxruntime-genai on its own model
builder's int4 output for the same HF folder, and qrun (qconv's C runtime) on the q4_0 GGUF when the runtime is
built. Tokens/s are medians over the runs; ratios are to the first row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run as a script, this file's folder heads sys.path and its name would shadow the onnx package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.measure import median, table  # noqa: E402

FIXED_TEXT = Path(__file__).resolve().parents[1] / "data" / "fixed_text.txt"


def time_onnx_model(folder: Path, ids: list[int], gen: int, threads: int, runs: int) -> tuple[float, float]:
    from qconv.runtime.onnx_backend import OnnxModel

    model = OnnxModel(folder, threads=threads)
    model.logits(ids[:8])  # warm-up: session arenas, prepacking
    prompt, generation = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        last = model.logits(ids)[-1]
        prompt.append(len(ids) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(gen):
            last = model.eval([int(np.argmax(last))])[-1]
        generation.append(gen / (time.perf_counter() - t0))
    return median(prompt), median(generation)


def genai_folder(folder: Path, threads: int, work: Path) -> Path:
    """A view of folder whose genai_config.json pins the thread count (files linked, not copied)."""
    view = work / f"genai-{folder.name}"
    view.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name != "genai_config.json" and not (view / item.name).exists():
            (view / item.name).symlink_to(item.resolve())
    config = json.loads((folder / "genai_config.json").read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    options["inter_op_num_threads"] = 1
    (view / "genai_config.json").write_text(json.dumps(config, indent=2))
    return view


def time_genai(folder: Path, ids: list[int], gen: int, runs: int) -> tuple[float, float]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    prompt, generation = [], []
    for run in range(runs + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + gen, do_sample=False)
        generator = og.Generator(model, params)
        t0 = time.perf_counter()
        generator.append_tokens(ids)
        t1 = time.perf_counter()
        for _ in range(gen):
            generator.generate_next_token()
        t2 = time.perf_counter()
        if run:  # the first run warms up
            prompt.append(len(ids) / (t1 - t0))
            generation.append(gen / (t2 - t1))
        del generator
    return median(prompt), median(generation)


def time_qrun(gguf: Path, ids: list[int], gen: int, threads: int, runs: int) -> tuple[float, float] | None:
    try:
        from qconv.runtime.model import Model
    except ImportError:
        return None
    model = Model(str(gguf), threads=threads, ctx=len(ids) + gen + 8)
    prompt, generation = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        last = np.asarray(model.logits(ids))[-1]
        prompt.append(len(ids) / (time.perf_counter() - t0))
        if not hasattr(model, "eval"):  # no incremental API yet: generation is not measured
            return median(prompt), float("nan")
        t0 = time.perf_counter()
        for _ in range(gen):
            last = np.asarray(model.eval([int(np.argmax(last))]))[-1]
        generation.append(gen / (time.perf_counter() - t0))
    return median(prompt), median(generation)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens (of tests/data/fixed_text.txt)")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens (greedy)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from qconv.converter.convert import ConvertOptions, convert_to_gguf
    from qconv.converter.onnx_export import OnnxOptions, export_onnx
    from qconv.runtime.onnx_backend import OnnxModel
    from qconv.samples.smollm2 import cached_smollm2

    hf = cached_smollm2()
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("QCONV_BENCH_TMP")) as tmp:
        work = Path(tmp)
        ours = work / "qconv-onnx"
        export_onnx(hf, ours, OnnxOptions(bits=4, block_size=32, threads=args.threads))
        ids = OnnxModel(ours, threads=1).tokenize(FIXED_TEXT.read_text())[: args.prompt]
        size = sum(p.stat().st_size for p in ours.glob("model.onnx*")) / 2**20
        rows.append(["ORT, qconv to-onnx", size, *time_onnx_model(ours, ids, args.gen, args.threads, args.runs)])
        for flag, variant in (("--fuse-linear", {"fuse_linear": True}), ("--opset 21", {"opset": 21})):
            folder = work / "qconv-onnx-variant"
            export_onnx(hf, folder, OnnxOptions(bits=4, block_size=32, threads=args.threads, **variant))
            variant_size = sum(p.stat().st_size for p in folder.glob("model.onnx*")) / 2**20
            speed = time_onnx_model(folder, ids, args.gen, args.threads, args.runs)
            rows.append([f"ORT, qconv to-onnx {flag}", variant_size, *speed])
            shutil.rmtree(folder)
        try:
            import onnxruntime_genai  # noqa: F401

            have_genai = True
        except ImportError:
            have_genai = False
            print("onnxruntime-genai is not installed (pip install onnxruntime-genai); skipping its rows")
        if have_genai:
            view = genai_folder(ours, args.threads, work)
            rows.append(["genai, qconv to-onnx", size, *time_genai(view, ids, args.gen, args.runs)])
            built = work / "genai-builder"
            cmd = [
                sys.executable,
                "-m",
                "onnxruntime_genai.models.builder",
                "-m",
                "SmolLM2-135M-Instruct",
                "-i",
                str(hf),
                "-o",
                str(built),
                "-p",
                "int4",
                "-e",
                "cpu",
                "-c",
                str(work / "builder-cache"),
            ]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"onnxruntime-genai's builder failed:\n{result.stderr[-2000:]}")
            else:
                size = sum(p.stat().st_size for p in built.glob("model.onnx*")) / 2**20
                view = genai_folder(built, args.threads, work)
                rows.append(["genai, its builder int4", size, *time_genai(view, ids, args.gen, args.runs)])
        gguf = convert_to_gguf(hf, work / "q4_0.gguf", ConvertOptions(type_name="q4_0"), progress=False).out_path
        qrun = time_qrun(gguf, ids, args.gen, args.threads, args.runs)
        if qrun is None:
            print("qrun (qconv.runtime.model) is not available yet; skipping its row")
        else:
            rows.append(["qrun, q4_0 GGUF", gguf.stat().st_size / 2**20, *qrun])
        shutil.rmtree(work / "builder-cache", ignore_errors=True)
    base_prompt, base_gen = rows[0][2], rows[0][3]
    print(
        f"\nSmolLM2-135M, {len(ids)}-token prompt, {args.gen} generated tokens, {args.threads} threads, "
        f"median of {args.runs}"
    )
    print(
        table(
            ["runtime, model", "MiB", "prompt tok/s", "gen tok/s", "prompt ratio", "gen ratio"],
            [
                [
                    r[0],
                    f"{r[1]:.1f}",
                    f"{r[2]:.1f}",
                    f"{r[3]:.1f}",
                    f"{r[2] / base_prompt:.2f}",
                    f"{r[3] / base_gen:.2f}",
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
