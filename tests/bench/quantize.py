"""Quantization speed: qconv end to end (reading bf16 safetensors included) vs llama.cpp's quantize step alone
(llama_model_quantize from an f16 GGUF of the same folder), 2 threads each, on a random ~1B-parameter folder.

    python tests/bench/quantize.py [--types q4_k_m,q8_0] [--small] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.measure import median, run_measured, table  # noqa: E402
from tests.bench.models import random_1b_folder  # noqa: E402

LLAMA_QUANTIZE = """
import sys
sys.path.insert(0, {root!r})
from tests.llama_ref import quantize_file
quantize_file(sys.argv[1], sys.argv[2], sys.argv[3], threads=2)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="q4_k_m,q8_0")
    ap.add_argument("--small", action="store_true", help="a ~200M folder instead of ~1B (quick check)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    folder = random_1b_folder(small=args.small)
    root = str(Path(__file__).resolve().parents[2])
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("QCONV_BENCH_TMP")) as tmp:
        f16 = Path(tmp) / "f16.gguf"
        run_measured(
            [sys.executable, "-m", "qconv.converter.cli", "to-gguf", str(folder), "-o", str(f16), "--type", "f16", "-q"]
        )
        for type_name in args.types.split(","):
            ours, theirs = [], []
            for _ in range(args.repeats):
                out = Path(tmp) / "out.gguf"
                cmd = [
                    sys.executable,
                    "-m",
                    "qconv.converter.cli",
                    "to-gguf",
                    str(folder),
                    "-o",
                    str(out),
                    "--type",
                    type_name,
                    "-t",
                    "2",
                    "-q",
                ]
                ours.append(run_measured(cmd)[0])
                out.unlink()
                theirs.append(
                    run_measured(
                        [sys.executable, "-c", LLAMA_QUANTIZE.format(root=root), str(f16), str(out), type_name]
                    )[0]
                )
                out.unlink()
            rows.append([type_name, median(ours), median(theirs), median(ours) / median(theirs)])
    print(
        f"input: {folder}; qconv reads bf16 safetensors, llama.cpp quantizes an f16 GGUF; 2 threads; median of {args.repeats}"
    )
    print(table(["type", "qconv s (end to end)", "llama.cpp s (quantize only)", "ratio qconv/llama.cpp"], rows))


if __name__ == "__main__":
    main()
