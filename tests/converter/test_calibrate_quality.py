"""With llama.cpp as the runtime, on held-out suites: files quantized with our importance matrix (from the built-in
calibration suites) lose less than files quantized without one, for q3_k_m and q2_k, on the sample model and on its
rotated variant (weights on no 4-bit grid); and `--type auto` at the size of llama.cpp's q4_k_m (made by
llama-quantize with the same imatrix from the same f32 file) loses less than that file."""

from __future__ import annotations

import subprocess

import gguf
import numpy as np
import pytest

from tests.conftest import have, requires_llama_cpp
from tests.llama_tools import build_tools, tools_missing_reason

pytestmark = [
    pytest.mark.reference,
    requires_llama_cpp,
    pytest.mark.skipif(not have("qconv.runtime.model"), reason="the runtime's Model is not built yet"),
]
CALIBRATION_CHUNKS, CALIBRATION_CTX = 8, 256  # spread over every built-in calibration suite
EVAL_TOKENS, EVAL_CTX = 1536, 256


@pytest.fixture(scope="module", params=["smollm2", "smollm2-rotated"])
def sample(request, tmp_path_factory):
    """(HF folder, f32 GGUF, our imatrix from the built-in calibration suites)."""
    from qconv.converter.calibrate import calibrate
    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.smollm2 import cached_smollm2, cached_smollm2_rotated

    folder = cached_smollm2() if request.param == "smollm2" else cached_smollm2_rotated()
    work = tmp_path_factory.mktemp(request.param)
    f32 = work / "f32.gguf"
    convert_to_gguf(folder, f32, "f32", progress=False)
    imatrix = work / "imatrix.gguf"
    calibrate(f32, imatrix, None, ctx=CALIBRATION_CTX, threads=2, max_chunks=CALIBRATION_CHUNKS)
    return request.param, folder, f32, imatrix


@pytest.fixture(scope="module")
def held_out_windows():
    from qconv.converter.quality.suites import get_suites
    from qconv.runtime.tokenizer import Tokenizer
    from qconv.samples.smollm2 import smollm2_gguf_path

    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    per_suite = EVAL_TOKENS // 5
    tokens = []
    for suite in get_suites():
        if suite.whole_documents:
            continue
        text = "\n\n".join(suite.documents("eval"))
        tokens += tok.encode(text, add_special=False)[:per_suite]
    return [tokens[i : i + EVAL_CTX] for i in range(0, len(tokens) - EVAL_CTX + 1, EVAL_CTX)]


def llama_logits(path, windows) -> list[np.ndarray]:
    from tests.llama_ref import load, logits

    model = load(path, n_ctx=EVAL_CTX)
    try:
        return [logits(model, w) for w in windows]
    finally:
        model.close()


def mean_kld(ref: list[np.ndarray], quant_path, windows) -> float:
    from qconv.converter.quality.token_stats import TokenStats

    stats = TokenStats()
    for r, q, w in zip(ref, llama_logits(quant_path, windows), windows):
        stats.add(r, q, np.full(len(w), -1))
    return stats.summary()["kld_mean"]


@pytest.mark.parametrize("type_name", ["q3_k_m", "q2_k"])
def test_calibrated_files_lose_less(sample, held_out_windows, type_name, tmp_path):
    from qconv.converter.convert import ConvertOptions, convert_to_gguf

    name, folder, f32, imatrix = sample
    ref = llama_logits(f32, held_out_windows)
    plain, calibrated = tmp_path / "plain.gguf", tmp_path / "calibrated.gguf"
    convert_to_gguf(folder, plain, ConvertOptions(type_name=type_name, threads=2), progress=False)
    convert_to_gguf(folder, calibrated, ConvertOptions(type_name=type_name, imatrix=imatrix, threads=2), progress=False)
    kld_plain, kld_calibrated = mean_kld(ref, plain, held_out_windows), mean_kld(ref, calibrated, held_out_windows)
    print(f"{name} {type_name}: KLD without imatrix {kld_plain:.5f}, with ours {kld_calibrated:.5f}")
    assert kld_calibrated < kld_plain


@pytest.mark.skipif(tools_missing_reason() is not None, reason=str(tools_missing_reason()))
def test_auto_beats_llama_cpp_q4_k_m_at_its_size(sample, held_out_windows, tmp_path):
    from qconv.converter.analyze import AnalyzeOptions, analyze
    from qconv.converter.auto_types import convert_auto

    name, folder, f32, imatrix = sample
    theirs = tmp_path / "llama-q4_k_m.gguf"
    quantize = build_tools(("llama-quantize",))["llama-quantize"]
    subprocess.run([str(quantize), "--imatrix", str(imatrix), str(f32), str(theirs), "q4_k_m", "2"], check=True,
                   capture_output=True)  # fmt: skip
    reader = gguf.GGUFReader(str(theirs))
    n_elements = sum(int(np.prod(t.shape)) for t in reader.tensors)
    their_bpw = 8 * sum(int(t.n_bytes) for t in reader.tensors) / n_elements
    del reader
    # one layer band per role and 256 scored tokens per trial keep the group trials to a few minutes
    analysis = analyze(f32, AnalyzeOptions(imatrix=imatrix, threads=2, bands=1, max_tokens=256, ctx=256))
    ours = tmp_path / "auto.gguf"
    choice, _ = convert_auto(folder, ours, target_bpw=their_bpw, imatrix=imatrix, threads=2, analysis=analysis,
                             kld_tokens=256)  # fmt: skip
    assert choice.bits_per_weight <= their_bpw + 1e-9
    ref = llama_logits(f32, held_out_windows)
    kld_theirs, kld_ours = mean_kld(ref, theirs, held_out_windows), mean_kld(ref, ours, held_out_windows)
    print(f"{name}: llama.cpp q4_k_m {their_bpw:.3f} bpw KLD {kld_theirs:.5f}; "
          f"auto {choice.bits_per_weight:.3f} bpw KLD {kld_ours:.5f}")  # fmt: skip
    assert kld_ours < kld_theirs
