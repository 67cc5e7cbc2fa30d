"""Issue 11 acceptance: on a Gemma 3 whose weights sit on no quantization grid (`qconv sample gemma3-offgrid`),
qconv's q4_k_m is at least as accurate as llama-quantize's q4_k_m at the same size, both made from our f32 file of
the folder with the same importance matrix, and measured with llama.cpp as the runtime against that f32 file."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tests.conftest import requires_llama_cpp
from tests.llama_tools import build_tools, tools_missing_reason

pytestmark = [
    pytest.mark.reference,
    requires_llama_cpp,
    pytest.mark.skipif(tools_missing_reason() is not None, reason=str(tools_missing_reason())),
]

N_TOKENS = 1024
CALIBRATION_CHARS = 12000  # ~3000 tokens: five 512-token chunks of the built-in calibration text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("gemma3-offgrid")


@pytest.fixture(scope="module")
def f32_gguf(workdir):
    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.gemma3_offgrid import cached_gemma3_offgrid

    return convert_to_gguf(cached_gemma3_offgrid(), workdir / "f32.gguf", "f32", progress=False).out_path


@pytest.fixture(scope="module")
def imatrix(f32_gguf, workdir):
    """llama-imatrix's, over the start of the built-in calibration text, given to both quantizers (ours computes
    the same sums: tests/converter/test_calibrate_reference.py)."""
    from qconv.converter.quality.suites import calibration_text

    text = workdir / "calibration.txt"
    text.write_text(calibration_text()[:CALIBRATION_CHARS])
    out = workdir / "imatrix.gguf"
    cmd = [str(build_tools()["llama-imatrix"]), "-m", str(f32_gguf), "-f", str(text), "-c", "512", "-b", "512",
           "-t", "2", "--no-ppl", "-o", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def quantized(f32_gguf, imatrix, workdir):
    from qconv.converter.convert import convert_to_gguf

    ours = convert_to_gguf(f32_gguf, workdir / "qconv-q4_k_m.gguf", "q4_k_m", progress=False, imatrix=imatrix)
    theirs = workdir / "llama-q4_k_m.gguf"
    run = subprocess.run(
        [str(build_tools()["llama-quantize"]), "--imatrix", str(imatrix), str(f32_gguf), str(theirs), "q4_k_m", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return {"qconv": ours.out_path, "llama-quantize": theirs}


def test_q4_k_m_kld_no_worse_than_llama_quantize(f32_gguf, quantized, fixed_text):
    from tests.llama_ref import kl_divergence, load, logits

    reference = load(f32_gguf, n_ctx=N_TOKENS)
    tokens = reference.tokenize("\n\n".join([fixed_text] * 3).encode(), add_bos=True)[:N_TOKENS]
    assert len(tokens) == N_TOKENS
    ref = logits(reference, tokens)
    del reference
    rows = {}
    for tool, path in quantized.items():
        out = logits(load(path, n_ctx=N_TOKENS), tokens)
        kld = np.concatenate([kl_divergence(ref[i : i + 128], out[i : i + 128]) for i in range(0, N_TOKENS, 128)])
        top1 = float((out.argmax(-1) == ref.argmax(-1)).mean())
        rows[tool] = dict(kld=float(kld.mean()), p99=float(np.percentile(kld, 99)), top1=top1, size=path.stat().st_size)
        del out
    for tool, r in rows.items():
        print(f"\ngemma3-offgrid q4_k_m {tool}: KLD {r['kld']:.5f} (p99 {r['p99']:.4f}), top-1 {r['top1']:.4f}, "
              f"{r['size'] / 2**20:.2f} MiB")  # fmt: skip
    ours, theirs = rows["qconv"], rows["llama-quantize"]
    assert ours["size"] <= 1.01 * theirs["size"]
    assert ours["kld"] <= 1.02 * theirs["kld"], f"mean KLD {ours['kld']:.5f} > 1.02 x {theirs['kld']:.5f}"
