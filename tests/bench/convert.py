"""Conversion memory and time: qconv to-gguf vs llama.cpp's convert_hf_to_gguf.py on a random ~1B bf16 folder.

    python tests/bench/convert.py [--type f16] [--small]

Peak RSS counts file-backed pages; the goal is qconv's peak below 40% of the input size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.measure import run_measured, table  # noqa: E402
from tests.bench.models import llama_cpp_converter, random_1b_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="f16", help="output type for both tools (f16, bf16, q8_0, f32)")
    ap.add_argument("--small", action="store_true", help="a ~100M folder instead of ~1B (quick check)")
    args = ap.parse_args()

    folder = random_1b_folder(small=args.small)
    input_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("QCONV_BENCH_TMP")) as tmp:
        out = Path(tmp) / "qconv.gguf"
        qconv = [
            sys.executable,
            "-m",
            "qconv.converter.cli",
            "to-gguf",
            str(folder),
            "-o",
            str(out),
            "--type",
            args.type,
            "-q",
            "-t",
            "2",
        ]
        seconds, rss = run_measured(qconv)
        rows.append(["qconv to-gguf", seconds, rss / 2**20, 100 * rss / input_bytes])
        out.unlink()
        converter = llama_cpp_converter()
        if converter is None:
            print("llama.cpp's convert_hf_to_gguf.py not found (install the llama-cpp-python sdist); skipping it")
        else:
            ref = [
                sys.executable,
                str(converter),
                str(folder),
                "--outfile",
                str(Path(tmp) / "ref.gguf"),
                "--outtype",
                args.type,
            ]
            ref_seconds, ref_rss = run_measured(ref)
            rows.append(["llama.cpp convert_hf_to_gguf.py", ref_seconds, ref_rss / 2**20, 100 * ref_rss / input_bytes])
            rows.append(["ratio qconv/llama.cpp", seconds / ref_seconds, rss / ref_rss, ""])
    print(f"input: {folder} ({input_bytes / 2**30:.2f} GiB bf16), output type {args.type}")
    print(table(["tool", "seconds", "peak RSS MiB", "RSS % of input"], rows))


if __name__ == "__main__":
    main()
