"""qconv eval as a run people rely on, on small random models: every built-in suite on a model whose context is
2048 tokens, a run killed after its first suite and resumed, several candidates in one run, the JUnit file and the
report's schema, and bad input refused before any model is loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import jsonschema
import pytest


@pytest.fixture(scope="module")
def small_models(random_model_factory, tmp_path_factory):
    """A random llama with a 2048-token context, its f32 file and two quantized candidates."""
    from qconv.converter.convert import convert_to_gguf

    folder = random_model_factory(arch="llama", context_length=2048)
    out = tmp_path_factory.mktemp("eval-runs")
    files = {}
    for type_name in ("f32", "q8_0", "q4_0"):
        files[type_name] = out / f"{type_name}.gguf"
        convert_to_gguf(folder, files[type_name], type_name, progress=False)
    return folder, files


def qconv_command() -> list[str]:
    """`qconv` as a separate process (a run is killed with SIGKILL, as a CI job's timeout would)."""
    return [sys.executable, "-c", "from qconv.converter.cli import main; main()"]


def qconv_eval(*args, check_rc: int | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*qconv_command(), "eval", *map(str, args)], capture_output=True, text=True)
    if check_rc is not None:
        assert result.returncode == check_rc, result.stderr
    return result


def schema() -> dict:
    return json.loads(resources.files("qconv.converter.quality").joinpath("report.schema.json").read_text())


def test_every_builtin_suite_completes_on_a_2048_token_model(small_models, tmp_path):
    """The long-context suite holds a ~4k-token document: it is windowed to the model's context, not a failure."""
    folder, files = small_models
    out = tmp_path / "report"
    qconv_eval(files["q4_0"], "--ref", files["f32"], "--max-tasks", 2, "-t", 2, "-q", "-o", out, check_rc=0)
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, schema())
    assert report["complete"] is True
    names = [s["name"] for s in report["candidates"][0]["suites"]]
    assert names == ["prose", "code", "maths", "json", "multilingual", "long_context"]
    long_row = report["candidates"][0]["suites"][-1]
    assert long_row["tokens"] > 0 and long_row["chunks"] >= 1


def facts_file(path: Path, n: int = 60) -> Path:
    lines = [
        json.dumps({"capability": "echo", "prompt": f"item {i}", "expected": "never", "max_tokens": 48})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_killed_run_leaves_a_partial_report_and_resume_finishes_it(small_models, tmp_path):
    _, files = small_models
    out = tmp_path / "report"
    tasks = facts_file(tmp_path / "tasks.jsonl")
    args = [files["q8_0"], "--ref", files["f32"], "--suite", "maths", "--tasks", tasks, "--max-tokens", 256,
            "-t", 2, "-q", "-o", out]  # fmt: skip
    proc = subprocess.Popen([*qconv_command(), "eval", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    report_file = out / "report.json"
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline and proc.poll() is None:
        if report_file.is_file():
            partial = json.loads(report_file.read_text())
            if partial["finished"]:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads(report_file.read_text())  # readable: every write replaced the file whole
    jsonschema.validate(partial, schema())
    assert partial["complete"] is False and partial["finished"] == ["maths"]
    assert [s["name"] for s in partial["candidates"][0]["suites"]] == ["maths"]

    other = tmp_path / "other.jsonl"
    other.write_text(tasks.read_text().replace("item 0", "item zero"))
    refused = qconv_eval(*[other if a == tasks else a for a in args], "--resume", check_rc=1)
    assert "--resume" in refused.stderr and "task files" in refused.stderr and "Traceback" not in refused.stderr

    qconv_eval(*args, "--resume", check_rc=0)
    done = json.loads(report_file.read_text())
    jsonschema.validate(done, schema())
    assert done["complete"] is True and done["finished"] == ["maths", "echo"]
    assert done["candidates"][0]["suites"] == partial["candidates"][0]["suites"]  # kept, not recomputed
    assert done["candidates"][0]["tasks"]["echo"]["n"] == 60
    assert (out / "report.html").is_file()


def test_several_candidates_one_reference_junit_and_exit_code(small_models, tmp_path):
    _, files = small_models
    out, junit = tmp_path / "report", tmp_path / "junit.xml"
    result = qconv_eval(files["q8_0"], files["q4_0"], "--ref", files["f32"], "--suite", "maths", "--suite", "json",
                        "--max-tokens", 200, "--max-tasks", 2, "-t", 2, "-q", "-o", out, "--junit", junit,
                        "--gate", "kld=0.002,task_drop=0.5")  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, schema())
    q8, q4 = report["candidates"]
    assert q4["overall"]["kld_mean"] > q8["overall"]["kld_mean"] > 0
    # one reference pass: the reference scored each window once, not once per candidate
    assert report["reference_speed"]["tokens"] == q8["speed"]["tokens"] == q4["speed"]["tokens"]
    failing = [c["quant"] for c in report["candidates"] if c["gate_failures"]]
    assert failing == [str(files["q4_0"])] and result.returncode == 2
    assert str(files["q4_0"]) in result.stderr and "mean KL divergence above 0.002" in result.stderr
    for key in ("size-kld-maths", "size-kld-json", "size-tasks-maths", "size-tasks-json"):
        assert (out / f"{key}.png").is_file()
    tree = ET.parse(junit).getroot()
    suites = tree.findall("testsuite")
    assert [s.get("name") for s in suites] == [str(files["q8_0"]), str(files["q4_0"])]
    for suite_el, candidate in zip(suites, report["candidates"]):
        cases = {(c.get("classname"), c.get("name")) for c in suite_el.findall("testcase")}
        assert cases == {(s, g) for s in ("maths", "json") for g in ("kld=0.002", "task_drop=0.5")}
        failed = {
            (c.get("classname"), c.get("name")) for c in suite_el.findall("testcase") if c.find("failure") is not None
        }
        assert len(failed) == len(candidate["gate_failures"])
    assert int(tree.get("failures")) == len(q4["gate_failures"]) > 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", ":1: "),
        ('{"capability": "x", "prompt": "p"}', ":1: "),
        ('{"capability": "x", "prompt": "p", "expected": "e", "check": "fuzzy"}', "fuzzy"),
    ],
)
def test_bad_task_files_are_refused_before_any_model_loads(tmp_path, line, message):
    """The reference does not exist: had a model been loaded first, the error would name it, not the task file."""
    bad = tmp_path / "tasks.jsonl"
    bad.write_text(line + "\n")
    result = qconv_eval(tmp_path / "missing.gguf", "--ref", tmp_path / "missing-ref.gguf", "--tasks", bad, check_rc=1)
    assert str(bad) in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_suite_none_needs_something_to_evaluate(small_models, tmp_path):
    _, files = small_models
    result = qconv_eval(files["q8_0"], "--ref", files["f32"], "--suite", "none", check_rc=1)
    assert "nothing to evaluate" in result.stderr


def test_no_tasks_skips_only_the_builtin_tasks(small_models, tmp_path):
    _, files = small_models
    tasks = facts_file(tmp_path / "tasks.jsonl", n=3)
    result = qconv_eval(files["q8_0"], "--ref", files["f32"], "--suite", "maths", "--no-tasks", "--tasks", tasks,
                        "--max-tokens", 64, "-t", 2, "-q", "--json", check_rc=0)  # fmt: skip
    [candidate] = json.loads(result.stdout)["candidates"]
    assert list(candidate["tasks"]) == ["echo"] and candidate["tasks"]["echo"]["n"] == 3
    assert [s["name"] for s in candidate["suites"]] == ["maths"]


def test_long_context_reaches_min_context_2048_or_the_context_with_long():
    from qconv.converter.quality.evaluate import long_limit

    assert long_limit(8192, long=False) == 2048 and long_limit(8192, long=True) == 8192
    assert long_limit(1024, long=False) == long_limit(1024, long=True) == 1024
    assert long_limit(None, long=False) == 2048
