"""`qconv eval OUT_DIR --ref ...` on ONNX folders: the same suites, tasks, gates and report as for a GGUF."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.onnx.conftest import export


def run_eval(args):
    from qconv.converter.eval_cli import eval_cmd

    return CliRunner().invoke(eval_cmd, [str(a) for a in args], catch_exceptions=False)


def test_eval_of_an_onnx_folder_reports_suites_and_gates(random_model_factory, tmp_path):
    """A random llama (its text is noise, but KLD, top-1, gates and the report do not care)."""
    model_dir = random_model_factory(arch="llama", tied=True)
    folder = export(model_dir, tmp_path / "q4", bits=4, block_size=32)
    out = tmp_path / "report"
    result = run_eval([folder, "--ref", model_dir, "--suite", "maths", "--max-tokens", 48, "--no-tasks", "-t", 2,
                       "-q", "-o", out, "--gate", "kld=0.0000001"])  # fmt: skip
    assert result.exit_code == 2, result.output  # 4-bit weights do lose something
    report = json.loads((out / "report.json").read_text())["candidates"][0]
    assert [s["name"] for s in report["suites"]] == ["maths"]
    row = report["suites"][0]
    assert row["tokens"] >= 40 and row["kld_mean"] > 0 and 0 <= row["top1"] <= 1
    assert report["quant_bytes"] == (folder / "model.onnx").stat().st_size
    errors = report["layer_errors"]
    assert set(errors) == {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
    assert all(0.01 < e < 0.3 for by_layer in errors.values() for e in by_layer.values())  # 4-bit: ~10%
    assert "maths" in result.output and "gate failed" in result.output


def test_eval_rejects_a_folder_that_is_no_onnx_export(random_model_factory, tmp_path):
    model_dir = random_model_factory(arch="llama", tied=True)
    result = run_eval([tmp_path, "--ref", model_dir, "-q"])
    assert result.exit_code == 1
    assert "no such GGUF file or ONNX folder" in result.output


@pytest.mark.reference
def test_eval_4bit_onnx_sample_against_f32(smollm2_onnx, smollm2_dir, tmp_path):
    """The per-suite table of the default 4-bit export against the f32 reference, tasks included."""
    out = tmp_path / "report"
    args = [smollm2_onnx, "--ref", smollm2_dir, "--suite", "maths", "--suite", "json", "--suite", "long_context",
            "--max-tokens", 96, "--max-tasks", 1, "-t", 2, "-q", "-o", out]  # fmt: skip
    result = run_eval(args)
    assert result.exit_code == 0, result.output
    print("\n" + result.output)
    report = json.loads((out / "report.json").read_text())["candidates"][0]
    assert [s["name"] for s in report["suites"]] == ["maths", "json", "long_context"]
    for s in report["suites"]:
        assert 0 < s["kld_mean"] < 1.0 and 0.5 < s["top1"] < 1 and s["tokens"] > 50
        assert 0.9 < s["ppl_ratio"] < 1.5
    assert {t["kind"] for t in report["tasks"].values()} == {"maths", "json", "passkey"}
    assert report["speed"]["tokens"] > 0
    assert (out / "report.html").is_file() and (out / "layers.png").is_file()
