"""qconv eval end to end through the C runtime: q2_k against f32 of the sample model, with small budgets."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.conftest import have

pytestmark = pytest.mark.skipif(not have("qconv.runtime.model"), reason="the runtime's Model is not built yet")


@pytest.fixture(scope="module")
def smollm2_f32_and_q2k(smollm2_dir, tmp_path_factory):
    from qconv.converter.convert import convert_to_gguf

    out = tmp_path_factory.mktemp("eval")
    f32, q2k = out / "f32.gguf", out / "q2_k.gguf"
    convert_to_gguf(smollm2_dir, f32, "f32", progress=False)
    convert_to_gguf(smollm2_dir, q2k, "q2_k", progress=False)
    return f32, q2k


def run_eval(args):
    from qconv.converter.eval_cli import eval_cmd

    return CliRunner().invoke(eval_cmd, [str(a) for a in args], catch_exceptions=False)


def test_q2k_against_f32_reports_suites_and_tasks_and_fails_a_gate(smollm2_f32_and_q2k, tmp_path):
    f32, q2k = smollm2_f32_and_q2k
    out = tmp_path / "report"
    args = [q2k, "--ref", f32, "--suite", "maths", "--suite", "json", "--suite", "long_context", "--max-tokens", 96,
            "--max-tasks", 1, "-t", 2, "-q", "-o", out, "--gate", "kld=0.01,top1=0.99"]  # fmt: skip
    result = run_eval(args)
    assert result.exit_code == 2, result.output
    full = json.loads((out / "report.json").read_text())
    assert full["complete"] is True
    report = full["candidates"][0]
    names = [s["name"] for s in report["suites"]]
    assert names == ["maths", "json", "long_context"]
    for s in report["suites"]:
        assert s["kld_mean"] > 0.01 and 0 < s["top1"] < 1 and s["tokens"] > 50  # q2_k of a 135M model is lossy
        assert s["name"] in result.output
    assert set(report["tasks"]) == {"maths", "json", "long_context"}
    assert {t["kind"] for t in report["tasks"].values()} == {"maths", "json", "passkey"}
    assert report["gate_failures"] and report["gate_failures"][0].split(":")[0] in names
    assert "gate failed" in result.output  # CliRunner mixes stderr into output
    assert (out / "report.html").is_file() and (out / "layers.png").is_file()
    assert report["layer_errors"]["ffn_down"]["0"] > 0.01


def test_same_file_passes_its_gates(smollm2_f32_and_q2k, tmp_path):
    f32, _ = smollm2_f32_and_q2k
    result = run_eval([f32, "--ref", f32, "--suite", "maths", "--max-tokens", 64, "--no-tasks", "-t", 2, "-q",
                       "--gate", "kld=0.0001,top1=0.999"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "maths" in result.output


def test_unknown_gate_fails_before_running(smollm2_f32_and_q2k):
    f32, q2k = smollm2_f32_and_q2k
    result = run_eval([q2k, "--ref", f32, "--gate", "perplexity=2"])
    assert result.exit_code == 1 and "unknown key 'perplexity'" in result.output


def test_reference_with_another_vocabulary_is_refused(smollm2_f32_and_q2k, random_model_factory):
    _, q2k = smollm2_f32_and_q2k
    other = random_model_factory(arch="llama", hidden=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn=128, vocab=512)
    result = run_eval([q2k, "--ref", other, "--suite", "maths", "-q"])
    assert result.exit_code == 1 and "error:" in result.output and "reference" in result.output
