"""End-to-end quantization quality, with llama.cpp as the runtime: KL divergence to the f32 model, top-1
agreement and file size, for qconv's files and llama.cpp's files of the same names made from the same folder.

    python tests/bench/quant_quality.py [--types q4_k_m,q3_k_m,q2_k] [--models smollm2,smollm2-rotated] [--tokens 1024]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.measure import table  # noqa: E402
from tests.llama_ref import kl_divergence, load, logits, quantize_file  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"


def model_folder(name: str) -> Path:
    from qconv.samples.smollm2 import cached_smollm2, cached_smollm2_rotated

    return {"smollm2": cached_smollm2, "smollm2-rotated": cached_smollm2_rotated}[name]()


def eval_tokens(model, n_tokens: int) -> list[int]:
    text = (DATA / "fixed_text.txt").read_text()
    tokens = model.tokenize(text.encode(), add_bos=False)
    while len(tokens) < n_tokens:
        tokens += tokens
    return tokens[:n_tokens]


def compare(folder: Path, types: list[str], n_tokens: int, workdir: Path) -> list[dict]:
    """One row per (type, tool): mean/p99 KLD, top-1 agreement, size."""
    from qconv.converter.convert import convert_to_gguf

    f32 = convert_to_gguf(folder, workdir / "f32.gguf", "f32", progress=False).out_path
    reference = load(f32, n_ctx=n_tokens)
    tokens = eval_tokens(reference, n_tokens)
    ref_logits = logits(reference, tokens)
    del reference
    rows = []
    for type_name in types:
        files = {
            "qconv": convert_to_gguf(folder, workdir / f"qconv-{type_name}.gguf", type_name, progress=False).out_path,
            "llama.cpp": quantize_file(f32, workdir / f"llama-{type_name}.gguf", type_name),
        }
        for tool, path in files.items():
            out = logits(load(path, n_ctx=n_tokens), tokens)
            kld = kl_divergence(ref_logits, out)
            rows.append(
                dict(type=type_name, tool=tool, kld=float(kld.mean()), kld_p99=float(np.percentile(kld, 99)),
                     top1=float((out.argmax(-1) == ref_logits.argmax(-1)).mean()), size=path.stat().st_size)
            )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="q4_k_m,q3_k_m,q2_k")
    ap.add_argument("--models", default="smollm2,smollm2-rotated")
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args()
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows = compare(model_folder(name), args.types.split(","), args.tokens, Path(tmp))
        out = []
        for type_name in args.types.split(","):
            ours, ref = (
                next(r for r in rows if r["type"] == type_name and r["tool"] == t) for t in ("qconv", "llama.cpp")
            )
            for r in (ours, ref):
                out.append([type_name, r["tool"], r["kld"], r["kld_p99"], r["top1"], r["size"] / 2**20, "", ""])
            out.append(
                [
                    type_name,
                    "ratio qconv/llama.cpp",
                    ours["kld"] / ref["kld"],
                    "",
                    "",
                    "",
                    "",
                    ours["size"] / ref["size"],
                ]
            )
        print(f"\n{name}: {args.tokens} tokens of tests/data/fixed_text.txt, llama.cpp as the runtime")
        print(table(["type", "tool", "mean KLD", "p99 KLD", "top-1", "MiB (ratio: size ratio)"], out))


if __name__ == "__main__":
    main()
