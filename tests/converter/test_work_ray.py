"""The Ray executor on a real 2-node local cluster (tests/ray_cluster.py): units spread over both nodes with the
serial records, a worker killed under a unit, one-line errors for a failing unit, an unreachable address and a path a
node cannot read, and Ctrl-C. The cluster starts once for the module: its steps are this file's `step_*` functions,
run as `python -m tests.converter.test_work_ray STEP OUT_DIR` inside the cluster's network namespace, each writing
what it saw as JSON for the tests to check."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.ray_cluster import ROOT, namespaces_work, run_in_cluster

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not namespaces_work(), reason="Ray, or `unshare -n` for a loopback-only cluster, is missing"),
]
pytest.importorskip("ray")


# ---------------------------------------------------------------- steps, run inside the cluster


SHIPPED = Path(tempfile.gettempdir()) / "qconv-shared"  # where the nodes (all on this machine) write shared files


def _address() -> str:
    return os.environ["RAY_TEST_ADDRESS"]


def _error_of(call) -> str | None:
    from qconv.formats.errors import FormatError

    try:
        call()
    except FormatError as e:
        return str(e)
    return None


def step_units(out: Path) -> dict:
    import numpy as np

    from qconv.converter.work import Unit, make_executor
    from tests.work_units import squares

    seen: dict = {"address": _address()}
    os.environ["QCONV_RAY_ADDRESS"] = _address()  # the environment stands for --ray
    with make_executor(paths=[Path(__file__)]) as executor:
        seen["executor"] = type(executor).__name__
        executor.share("offsets", np.arange(4, dtype=np.float64))  # through the object store
        executor.share("text", Path(__file__))  # a small file, sent to each node
        seen["squares"] = executor.run(squares(8, sleep=0.3), "squares")
        seen["read"] = executor.run([Unit("test_read", "me", {})], "read")
        marker = out / "killed"
        killing = squares(4, sleep=0.1)
        killing.insert(2, Unit("test_die_once", "dies", {"x": 11, "marker": str(marker)}))
        seen["killed"] = executor.run(killing, "killing")
        seen["killed_pid"] = int(marker.read_text())
        count = out / "count"
        bad = squares(2) + [Unit("test_bad_input", "bad", {"path": "/models/x.gguf", "count": str(count)})]
        seen["bad_input"] = _error_of(lambda: executor.run(bad, "bad"))
        seen["bad_input_attempts"] = count.read_text().count("attempt")
        seen["bug"] = _error_of(lambda: executor.run([Unit("test_bug", "tensor.7", {})], "bug"))
        seen["log"] = executor.log
        shipped = SHIPPED / f"{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}-{Path(__file__).name}"
        seen["shipped_during"] = shipped.exists()
    seen["shipped_after"] = shipped.exists()  # removed from the nodes
    del os.environ["QCONV_RAY_ADDRESS"]
    missing = out / "missing.gguf"
    seen["unreadable"] = _error_of(lambda: make_executor(ray=_address(), paths=[Path(__file__), missing]))
    seen["unreachable"] = _error_of(lambda: make_executor(ray="127.0.0.1:1"))
    seen["too_many_threads"] = _error_of(lambda: make_executor(ray=_address(), threads=2))  # nodes of 1 CPU
    return seen


HANGING_RUN = """
import signal
import sys

# Ctrl-C as at a terminal, also under a caller that started the tests with SIGINT ignored (a background job)
signal.signal(signal.SIGINT, signal.default_int_handler)
from qconv.converter.work import Unit, make_executor
import tests.work_units
with make_executor(ray=sys.argv[1]) as executor:
    executor.run([Unit("test_hang", f"h{i}", {"folder": sys.argv[2]}) for i in range(4)], "hanging")
"""


def step_interrupt(out: Path) -> dict:
    """Ctrl-C on a driver whose units hang on both nodes: it exits, and the units' worker processes are gone."""
    folder = out / "hanging"
    folder.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-c", HANGING_RUN, _address(), str(folder)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(list(folder.glob("*.pid"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.stem) for p in folder.glob("*.pid")]
    driver.send_signal(signal.SIGINT)
    try:
        _, stderr = driver.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        driver.kill()
        _, stderr = driver.communicate()
    time.sleep(1)  # a force-cancelled task's worker is killed by its raylet
    alive = []
    for pid in workers:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return {"workers": workers, "rc": driver.returncode, "stderr": stderr[-2000:], "alive": alive}


# ---------------------------------------------------------------- qconv's commands on the cluster

QCONV = [sys.executable, "-m", "qconv.converter.cli"]
SHAPE = dict(arch="llama", hidden=64, n_layers=12, n_heads=4, n_kv_heads=2, ffn=128, vocab=320)
ANALYZE = ["--max-tokens", "256", "-c", "64", "-q"]  # four windows of 64 tokens per group trial
AUTO = ["--type", "auto", "--target-bpw", "5.0", "-q"]
CANDIDATES = ("q4_0", "q5_0", "q8_0")
EMBED_CANDIDATES = ("q4_0", "q8_0")


@pytest.fixture(scope="module")
def inputs(random_model_factory, tmp_path_factory) -> dict[str, Path]:
    """A random 12-layer folder (analyze, to-gguf --type auto), an f32 reference with three candidates (eval), and
    MiniLM at f32 with two candidates (eval of an embedding model)."""
    from qconv.converter.convert import convert_to_gguf

    folder = random_model_factory(**SHAPE)
    out = tmp_path_factory.mktemp("ray-inputs")
    files = {"folder": folder, "out": out}
    for type_name in ("f32", *CANDIDATES):
        files[type_name] = out / f"{type_name}.gguf"
        convert_to_gguf(folder, files[type_name], type_name, progress=False)
    files["tasks"] = out / "tasks.jsonl"
    files["tasks"].write_text("".join(
        json.dumps({"capability": "echo", "prompt": f"item {i}", "expected": "never", "max_tokens": 16}) + "\n"
        for i in range(4)
    ))  # fmt: skip
    files["text"] = out / "text.txt"
    files["text"].write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 120)
    from qconv.samples.minilm import cached_minilm

    for type_name in ("f32", *EMBED_CANDIDATES):  # an embedding model's candidates are units too
        files[f"minilm-{type_name}"] = out / f"minilm-{type_name}.gguf"
        convert_to_gguf(cached_minilm(), files[f"minilm-{type_name}"], type_name, progress=False)
    return files


def eval_args(files: dict[str, Path]) -> list[str]:
    return [*(str(files[t]) for t in CANDIDATES), "--ref", str(files["f32"]), "--suite", "maths", "--suite", "prose",
            "--max-tokens", "128", "--max-tasks", "2", "--tasks", str(files["tasks"]), "--text", f"mine={files['text']}",
            "-c", "64", "-q", "--json"]  # fmt: skip


def embed_eval_args(files: dict[str, Path]) -> list[str]:
    return [*(str(files[f"minilm-{t}"]) for t in EMBED_CANDIDATES), "--ref", str(files["minilm-f32"]),
            "--suite", "queries", "-q", "--json"]  # fmt: skip


def qconv_steps(files: dict[str, Path]) -> dict[str, str]:
    """The commands whose outputs must equal the serial and -j 2 ones, with --ray."""
    out, ray = files["out"], ["--ray", "$RAY_TEST_ADDRESS"]

    def command(*args) -> str:
        return " ".join(QCONV + [str(a) if str(a).startswith("$") else shlex.quote(str(a)) for a in args])

    return {
        "analyze": command("analyze", files["folder"], *ANALYZE, "-o", out / "analyze-ray.json", *ray,
                           "--units-log", out / "analyze-ray.units.jsonl"),
        "eval": command("eval", *eval_args(files), *ray, "--units-log", out / "eval-ray.units.jsonl")
        + f" > {out / 'eval-ray.json'}",
        "embed": command("eval", *embed_eval_args(files), *ray, "--units-log", out / "embed-ray.units.jsonl")
        + f" > {out / 'embed-ray.json'}",
        "auto": command("to-gguf", files["folder"], "-o", out / "auto-ray.gguf", *AUTO, *ray,
                        "--units-log", out / "auto-ray.units.jsonl"),
        "unreachable": command("analyze", files["folder"], *ANALYZE, "-o", out / "never.json",
                               "--ray", "127.0.0.1:1"),
    }  # fmt: skip


# ---------------------------------------------------------------- the tests, on what the steps saw

STEPS = ["units", "interrupt"]


@pytest.fixture(scope="module")
def cluster(inputs, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("ray")
    command = f"{sys.executable} -m tests.converter.test_work_ray {{step}} {out}"
    steps = {step: command.format(step=step) for step in STEPS}
    steps.update(qconv_steps(inputs))
    ran = run_in_cluster(steps, out / "steps")
    seen = {}
    for step in STEPS:
        result = out / f"{step}.json"
        assert ran[step].rc == 0 and result.exists(), str(ran[step])
        seen[step] = json.loads(result.read_text())
    seen["qconv"] = ran
    return seen


def test_units_ran_on_both_nodes_with_the_serial_records(cluster):
    from tests.work_units import squares

    seen = cluster["units"]
    assert seen["executor"] == "RayExecutor"
    assert seen["squares"] == [{"x": i, "y": i * i + 6.0} for i in range(8)]
    assert seen["read"] == [{"chars": len(Path(__file__).read_text())}]
    assert seen["shipped_during"] and not seen["shipped_after"]
    log = seen["log"][:8]
    assert [e["key"] for e in log] == [u.key for u in squares(8)]
    assert len({e["where"]["node"] for e in log}) == 2, log
    assert all(e["attempts"] == 1 for e in log)


def test_a_killed_worker_s_unit_is_retried_with_the_same_records(cluster):
    seen = cluster["units"]
    offset = 6.0  # the shared offsets
    squares = [{"x": i, "y": i * i + offset} for i in range(4)]
    assert seen["killed"] == squares[:2] + [{"x": 11, "y": 121}] + squares[2:]
    entry = next(e for e in seen["log"] if e["key"] == "dies")
    assert entry["attempts"] == 2 and entry["where"]["pid"] != seen["killed_pid"]


def test_failing_units_are_one_line_and_not_retried(cluster):
    seen = cluster["units"]
    assert seen["bad_input"] == "/models/x.gguf: not a model (bad magic)"
    assert seen["bad_input_attempts"] == 1
    assert seen["bug"] == "test_bug unit 'tensor.7' failed: KeyError: 'missing'"


def test_unreachable_address_and_unreadable_path(cluster):
    seen = cluster["units"]
    assert seen["unreachable"] == "--ray 127.0.0.1:1: cannot reach a Ray cluster there (Connection refused)"
    message = seen["unreadable"]
    assert "missing.gguf: not readable on Ray node " in message and "no such file" in message
    assert "\n" not in message
    assert seen["too_many_threads"] == (
        f"-t 2: each unit would ask 2 CPUs of one Ray node, and the largest node at {seen['address']} has 1"
    )


def test_ctrl_c_cancels_the_remote_units(cluster):
    seen = cluster["interrupt"]
    assert len(seen["workers"]) >= 2, seen
    assert seen["rc"] != 0 and "KeyboardInterrupt" in seen["stderr"], seen
    assert seen["alive"] == [], seen


def qconv(*args) -> str:
    proc = subprocess.run([*QCONV, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def units_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_ran_on_both_nodes(step, log: Path) -> None:
    assert step.rc == 0, str(step)
    entries = units_log(log)
    assert len({e["where"]["node"] for e in entries}) == 2, entries


def test_analyze_on_ray_equals_serial_and_the_pool(cluster, inputs, tmp_path):
    assert_ran_on_both_nodes(cluster["qconv"]["analyze"], inputs["out"] / "analyze-ray.units.jsonl")
    serial, pooled = tmp_path / "serial.json", tmp_path / "pooled.json"
    qconv("analyze", inputs["folder"], *ANALYZE, "-o", serial)
    qconv("analyze", inputs["folder"], *ANALYZE, "-o", pooled, "-j", 2)
    assert pooled.read_bytes() == serial.read_bytes()
    assert (inputs["out"] / "analyze-ray.json").read_bytes() == serial.read_bytes()


def test_eval_on_ray_equals_without(cluster, inputs):
    from tests.converter.test_eval_units import without_seconds

    assert_ran_on_both_nodes(cluster["qconv"]["eval"], inputs["out"] / "eval-ray.units.jsonl")
    serial = json.loads(qconv("eval", *eval_args(inputs), "-t", 2))
    on_ray = json.loads((inputs["out"] / "eval-ray.json").read_text())
    assert without_seconds(on_ray) == without_seconds(serial)
    assert [c["quant"] for c in serial["candidates"]] == [str(inputs[t]) for t in CANDIDATES]


def test_embedding_eval_on_ray_equals_without(cluster, inputs):
    from tests.converter.test_eval_units import without_seconds

    assert_ran_on_both_nodes(cluster["qconv"]["embed"], inputs["out"] / "embed-ray.units.jsonl")
    assert {e["kind"] for e in units_log(inputs["out"] / "embed-ray.units.jsonl")} == {"embed_candidate"}
    serial = json.loads(qconv("eval", *embed_eval_args(inputs), "-t", 2))
    on_ray = json.loads((inputs["out"] / "embed-ray.json").read_text())
    assert without_seconds(on_ray) == without_seconds(serial)
    assert serial["kind"] == "embedding" and len(serial["candidates"]) == 2


def test_to_gguf_auto_on_ray_writes_the_same_bytes(cluster, inputs, tmp_path):
    assert_ran_on_both_nodes(cluster["qconv"]["auto"], inputs["out"] / "auto-ray.units.jsonl")
    pooled = tmp_path / "pooled.gguf"  # the pool's file is the serial one (tests/converter/test_analyze_units.py)
    qconv("to-gguf", inputs["folder"], "-o", pooled, *AUTO, "-j", 2)
    assert (inputs["out"] / "auto-ray.gguf").read_bytes() == pooled.read_bytes()


def test_an_unreachable_address_is_one_line_before_any_work(cluster, inputs):
    step = cluster["qconv"]["unreachable"]
    assert step.rc == 1 and "Traceback" not in step.err, str(step)
    assert step.err.strip().splitlines() == [
        "qconv: error: --ray 127.0.0.1:1: cannot reach a Ray cluster there (Connection refused)"
    ]
    assert not (inputs["out"] / "never.json").exists()


if __name__ == "__main__":
    step, out_dir = sys.argv[1], Path(sys.argv[2])
    sys.path.insert(0, str(ROOT))
    result = globals()[f"step_{step}"](out_dir)
    (out_dir / f"{step}.json").write_text(json.dumps(result, indent=1))
