"""examples/: the CI workflow calls examples/quantize_and_gate.sh, and the script keeps eval's verdict (0 pass, 2 gate
failed, 1 error) and a schema-valid report and JUnit file. The gate runs execute the workflow's own run line on the
SmolLM2 sample with quick eval arguments."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import xml.etree.ElementTree as ET
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import ROOT, have

WORKFLOW = ROOT / "examples" / "github-actions" / "quantize-and-gate.yml"
SCRIPT = "examples/quantize_and_gate.sh"
QUICK_EVAL_ARGS = "--suite maths --max-tokens 128 --max-tasks 2 -t 2"
LAX_GATES = "kld=0.5,top1=0.5,task_drop=1.0"


def workflow_steps() -> list[dict]:
    """The workflow's steps as dicts; without PyYAML, only the `run:` lines, read from the text."""
    text = WORKFLOW.read_text()
    if have("yaml"):
        import yaml

        workflow = yaml.safe_load(text)
        # YAML 1.1 reads the bare key `on` as the boolean true.
        triggers = workflow.get("on", workflow.get(True))
        assert {"push", "workflow_dispatch"} <= set(triggers), f"{WORKFLOW}: triggers {triggers}"
        (job,) = workflow["jobs"].values()
        return job["steps"]
    return [{"run": m.group(1)} for m in re.finditer(r"^\s*(?:- )?run:\s*(.+)$", text, re.MULTILINE)]


def gate_step_command() -> str:
    runs = [step["run"] for step in workflow_steps() if SCRIPT in step.get("run", "")]
    assert len(runs) == 1, f"{WORKFLOW}: expected one run step calling {SCRIPT}, found {len(runs)}"
    return runs[0]


def test_workflow_runs_the_script_and_keeps_its_outputs():
    command = gate_step_command()
    assert '"$MODEL_DIR"' in command and '"$OUT_DIR"' in command, command
    if not have("yaml"):
        return
    steps = workflow_steps()
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"], uses
    gate_index = next(i for i, step in enumerate(steps) if SCRIPT in step.get("run", ""))
    assert any("pip install" in step.get("run", "") for step in steps[:gate_index]), "qconv is installed first"
    # Both keepers come after the gate step and run when it fails: a failed gate is when the report matters.
    later = [step for step in steps[gate_index + 1 :] if step.get("if") == "always()"]
    uploads = [
        step["with"]["path"].splitlines() for step in later if step["uses"].startswith("actions/upload-artifact@")
    ]
    # OUT_DIR is uploaded whole but for exclusions (!PATTERN), and none of them drops the report or the JUnit file.
    assert ["${{ env.OUT_DIR }}"] in [[line for line in path if not line.startswith("!")] for path in uploads], uploads
    excluded = [line for path in uploads for line in path if line.startswith("!")]
    assert not [line for line in excluded if "report" in line or "junit" in line or line.endswith("*")], excluded
    (reporter,) = [step for step in later if step["uses"].startswith("dorny/test-reporter@")]
    assert reporter["if"] == "always()" and reporter["with"]["path"].endswith("/junit.xml"), reporter
    assert reporter["with"]["reporter"] == "java-junit", reporter


def run_gate_step(model_dir: Path, out_dir: Path, gates: str, path_prefix: Path | None = None, **env):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("QCONV_")}
    environment.update(MODEL_DIR=str(model_dir), OUT_DIR=str(out_dir), QCONV_TYPE="q8_0", QCONV_GATES=gates)
    environment.update(QCONV_EVAL_ARGS=QUICK_EVAL_ARGS, **env)
    if path_prefix is not None:
        environment["PATH"] = f"{path_prefix}{os.pathsep}{environment['PATH']}"
    return subprocess.run(
        ["bash", "-c", gate_step_command()], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def checked_report(out_dir: Path) -> dict:
    report = json.loads((out_dir / "report" / "report.json").read_text())
    schema = json.loads(files("qconv.converter.quality").joinpath("report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert report["complete"], report["finished"]
    return report


def junit_cases(out_dir: Path) -> list[ET.Element]:
    cases = ET.parse(out_dir / "junit.xml").getroot().findall(".//testcase")
    assert cases, "junit.xml has no test cases"
    return cases


@pytest.fixture
def task_file(tmp_path) -> Path:
    path = tmp_path / "capitals.jsonl"
    item = {"capability": "capitals", "prompt": "What is the capital of France? Answer with one word.",
            "expected": "Paris", "check": "contains", "max_tokens": 8}  # fmt: skip
    path.write_text(json.dumps(item) + "\n")
    return path


def test_lax_gates_pass_and_keep_a_valid_report(smollm2_dir, tmp_path, task_file):
    out_dir = tmp_path / "out"
    proc = run_gate_step(smollm2_dir, out_dir, LAX_GATES, QCONV_TASKS=str(task_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report.json: valid" in proc.stdout, "the script's schema check did not run"
    assert (out_dir / "model-q8_0.gguf").stat().st_size > 0
    report = checked_report(out_dir)
    assert report["gates"] == {"kld": 0.5, "top1": 0.5, "task_drop": 1.0}
    (candidate,) = report["candidates"]
    assert {"maths", "capitals"} <= set(candidate["tasks"]), "QCONV_TASKS and QCONV_EVAL_ARGS reached qconv eval"
    assert candidate["gate_results"] and all(r["passed"] for r in candidate["gate_results"])
    cases = junit_cases(out_dir)
    assert {case.get("classname") for case in cases} >= {"maths", "capitals"}
    assert not [case for case in cases if case.find("failure") is not None]


def test_failed_gate_exits_2_and_keeps_the_report(smollm2_dir, tmp_path):
    out_dir = tmp_path / "out"
    proc = run_gate_step(smollm2_dir, out_dir, "kld=0.0000001")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "gate failed" in proc.stderr
    report = checked_report(out_dir)
    assert report["gate_failures"] and "KL divergence" in report["gate_failures"][0], report["gate_failures"]
    failures = [case.find("failure") for case in junit_cases(out_dir) if case.find("failure") is not None]
    assert failures and "kld" in failures[0].get("message"), failures


def test_user_error_exits_1_before_any_report(smollm2_dir, tmp_path):
    out_dir = tmp_path / "out"
    proc = run_gate_step(smollm2_dir, out_dir, "bogus=1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "unknown key 'bogus'" in proc.stderr
    assert not (out_dir / "report").exists() and not (out_dir / "junit.xml").exists()


FAKE_QCONV = """#!/usr/bin/env bash
# Stands in for qconv: to-gguf writes an empty -o file; eval writes $FAKE_REPORT (if set) and exits $FAKE_EVAL_RC.
command=$1
while [[ $# -gt 0 ]]; do
    if [[ $1 == -o && $command == to-gguf ]]; then : > "$2"; fi
    if [[ $1 == -o && $command == eval && -n ${FAKE_REPORT:-} ]]; then mkdir -p "$2"; printf %s "$FAKE_REPORT" > "$2/report.json"; fi
    shift
done
if [[ $command == eval ]]; then exit "${FAKE_EVAL_RC:-0}"; fi
"""


@pytest.mark.parametrize(
    "fake_report, eval_rc, expected_rc, message",
    [
        ('{"schema_version": 2}', "0", 1, "does not match qconv's report schema"),
        ('{"schema_version": 1}', "2", 1, "does not match qconv's report schema"),
        ("", "0", 1, "wrote no"),
    ],
    ids=["invalid-report-after-pass", "invalid-report-after-gate-failure", "no-report"],
)
def test_a_report_that_cannot_be_trusted_is_an_error(tmp_path, fake_report, eval_rc, expected_rc, message):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "qconv"
    fake.write_text(FAKE_QCONV)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proc = run_gate_step(
        tmp_path / "model", tmp_path / "out", LAX_GATES, fake_bin, FAKE_REPORT=fake_report, FAKE_EVAL_RC=eval_rc
    )
    assert proc.returncode == expected_rc, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
