"""The Ray executor on a real 2-node local cluster (tests/ray_cluster.py): units spread over both nodes with the
serial records, a worker killed under a unit, one-line errors for a failing unit, an unreachable address and a path a
node cannot read, and Ctrl-C. The cluster starts once for the module: its steps are this file's `step_*` functions,
run as `python -m tests.converter.test_work_ray STEP OUT_DIR` inside the cluster's network namespace, each writing
what it saw as JSON for the tests to check."""

from __future__ import annotations

import hashlib
import json
import os
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

    seen: dict = {}
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
    return seen


HANGING_RUN = """
import sys
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


# ---------------------------------------------------------------- the tests, on what the steps saw

STEPS = ["units", "interrupt"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("ray")
    command = f"{sys.executable} -m tests.converter.test_work_ray {{step}} {out}"
    steps = run_in_cluster({step: command.format(step=step) for step in STEPS}, out / "steps")
    seen = {}
    for step in STEPS:
        result = out / f"{step}.json"
        assert steps[step].rc == 0 and result.exists(), str(steps[step])
        seen[step] = json.loads(result.read_text())
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


def test_ctrl_c_cancels_the_remote_units(cluster):
    seen = cluster["interrupt"]
    assert len(seen["workers"]) >= 2, seen
    assert seen["rc"] != 0 and "KeyboardInterrupt" in seen["stderr"], seen
    assert seen["alive"] == [], seen


if __name__ == "__main__":
    step, out_dir = sys.argv[1], Path(sys.argv[2])
    sys.path.insert(0, str(ROOT))
    result = globals()[f"step_{step}"](out_dir)
    (out_dir / f"{step}.json").write_text(json.dumps(result, indent=1))
