"""The serial executor and the local process pool (converter/work/): the same records in unit order, shared inputs,
a killed worker's unit retried (and given up after three deaths), deterministic failures not retried, Ctrl-C, and the
-j/--ray/--units-log options. The units are tests/work_units.py's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from qconv.converter.work import UNIT_KINDS, Unit, make_executor, register
from qconv.converter.work.cli_options import WorkOptions, work_options
from qconv.converter.work.executors import PoolExecutor, SerialExecutor
from qconv.formats.errors import FormatError
from tests import work_units
from tests.work_units import squares

ROOT = Path(__file__).resolve().parents[2]


def expected_squares(n: int, offset: float = 0.0) -> list[dict]:
    return [{"x": i, "y": i * i + offset} for i in range(n)]


def test_serial_runs_units_in_order_and_logs_them():
    with make_executor() as executor:
        assert isinstance(executor, SerialExecutor)
        executor.share("offsets", np.array([0.5, 1.0]))
        assert executor.run(squares(5), "squares") == expected_squares(5, 1.5)
    assert [e["key"] for e in executor.log] == [f"x{i}" for i in range(5)]
    entry = executor.log[0]
    assert entry["kind"] == "test_square" and entry["attempts"] == 1 and entry["seconds"] >= 0
    assert entry["where"] == {"host": os.uname().nodename, "pid": os.getpid(), "node": None}


def test_make_executor_choices(monkeypatch):
    monkeypatch.delenv("QCONV_RAY_ADDRESS", raising=False)
    assert isinstance(make_executor(1), SerialExecutor)
    with make_executor(2) as pool:
        assert isinstance(pool, PoolExecutor) and pool.jobs == 2 and pool.threads >= 1
    with make_executor(2, threads=3) as pool:
        assert pool.threads == 3
    with pytest.raises(FormatError, match="at least 1"):
        make_executor(0)
    with pytest.raises(FormatError, match="exclude each other"):
        make_executor(2, ray="127.0.0.1:1")
    monkeypatch.setenv("QCONV_RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(FormatError, match="exclude each other"):
        make_executor(2)  # the environment counts as --ray


def test_ray_missing_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(FormatError, match=r"--ray needs Ray: pip install 'qconv\[ray\]'"):
        make_executor(ray="auto")


def test_units_are_checked_before_running():
    with make_executor() as executor:
        with pytest.raises(ValueError, match="unknown unit kind 'nope'"):
            executor.run([Unit("nope", "a", {})], "x")
        with pytest.raises(ValueError, match="share the key 'x0'"):
            executor.run(squares(1) + squares(1), "x")
    with pytest.raises(ValueError, match="registered twice"):
        register("test_square")(lambda args, shared: {})
    assert UNIT_KINDS["test_square"] is work_units.square


@pytest.mark.parametrize("jobs", [None, 2])
def test_deterministic_failure_is_one_line_and_not_retried(tmp_path, jobs):
    count = tmp_path / "count"
    units = squares(3) + [Unit("test_bad_input", "bad", {"path": "/models/x.gguf", "count": str(count)})]
    with make_executor(jobs) as executor, pytest.raises(FormatError) as error:
        executor.run(units, "failing")
    assert str(error.value) == "/models/x.gguf: not a model (bad magic)"
    assert count.read_text() == "attempt\n"


@pytest.mark.parametrize("jobs", [None, 2])
def test_a_bug_in_a_unit_is_named_on_one_line(jobs):
    with make_executor(jobs) as executor, pytest.raises(FormatError) as error:
        executor.run([Unit("test_bug", "tensor.7", {})], "bug")
    assert str(error.value) == "test_bug unit 'tensor.7' failed: KeyError: 'missing'"


def test_pool_equals_serial_and_uses_every_worker():
    units = squares(8, sleep=0.2)
    with make_executor(2) as pool:
        pool.share("offsets", np.arange(4, dtype=np.float32))
        assert pool.run(units, "squares") == expected_squares(8, 6.0)
        # the same pool again (analyze runs twice), with another shared input
        pool.share("text", Path(__file__))
        assert pool.run([Unit("test_read", "me", {})], "read") == [{"chars": len(Path(__file__).read_text())}]
    pids = {e["where"]["pid"] for e in pool.log[:8]}
    assert len(pids) == 2 and os.getpid() not in pids
    assert [e["key"] for e in pool.log] == [u.key for u in units] + ["me"]
    assert all(e["attempts"] == 1 for e in pool.log)


def test_pool_retries_the_unit_of_a_killed_worker(tmp_path):
    marker = tmp_path / "killed"
    units = squares(6, sleep=0.1)
    units.insert(3, Unit("test_die_once", "dies", {"x": 11, "marker": str(marker)}))
    with make_executor(2) as pool:
        results = pool.run(units, "squares")
    assert marker.exists()  # it did kill its worker once
    assert results == expected_squares(3) + [{"x": 11, "y": 121}] + [{"x": i, "y": i * i} for i in range(3, 6)]
    attempts = {e["key"]: e["attempts"] for e in pool.log}
    assert attempts["dies"] == 2
    assert int(marker.read_text()) != pool.log[3]["where"]["pid"]  # finished in a fresh worker


def test_pool_gives_up_after_three_deaths():
    with make_executor(2) as pool, pytest.raises(FormatError) as error:
        pool.run(squares(2) + [Unit("test_die_always", "doomed", {})], "dying")
    assert str(error.value) == "test_die_always unit 'doomed': the worker process running it died 3 times; giving up"


@pytest.mark.parametrize("jobs", [None, 2])
def test_records_land_as_their_units_finish(jobs):
    """`landed` gets each record as its unit finishes (the pool's slow first unit last), `run` returns them in unit
    order."""
    units = [Unit("test_square", "slow", {"x": 0, "sleep": 3.0})] + squares(4, sleep=0.1)[1:]
    landed = []
    with make_executor(jobs) as executor:
        results = executor.run(units, "squares", landed=lambda i, record: landed.append((i, record)))
    assert results == expected_squares(4)
    assert sorted(landed) == list(enumerate(results))
    assert [i for i, _ in landed] == ([0, 1, 2, 3] if jobs is None else [1, 2, 3, 0])


def test_an_error_where_records_land_stops_the_pool(tmp_path):
    def stop(i, record):
        raise FormatError("cannot save the checkpoint")

    # the hanging unit, first in the queue, has started by the time the other worker's square lands
    units = [Unit("test_hang", "hangs", {"folder": str(tmp_path)}), *squares(1, sleep=0.5)]
    with make_executor(2) as pool, pytest.raises(FormatError, match="cannot save the checkpoint"):
        pool.run(units, "landing", landed=stop)
    hanging = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(hanging) == 1 and process_gone(hanging[0])


INTERRUPTED_RUN = """
import signal
import sys

# Ctrl-C as at a terminal, also under a caller that started the tests with SIGINT ignored (a background job)
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from qconv.converter.work import Unit, make_executor
import tests.work_units
folder = sys.argv[1]
with make_executor(2) as pool:
    pool.run([Unit("test_hang", f"h{i}", {"folder": folder}) for i in range(4)], "hanging")
"""


def test_ctrl_c_stops_the_pool_and_its_workers(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    driver = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_RUN, str(tmp_path)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()
        time.sleep(0.05)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=30)
    assert driver.returncode != 0 and "KeyboardInterrupt" in stderr
    deadline = time.monotonic() + 10  # a killed worker may stay a zombie until init reaps it
    while not all(process_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(process_gone(pid) for pid in workers), workers


def process_gone(pid: int) -> bool:
    """No such process, or only its exit status left (a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


@click.command()
@click.option("-n", type=int, default=4)
@click.option("--sleep", type=float, default=0.0)
@click.option("--fail", "fail_count", default=None, help="A failing unit after the squares; FILE counts its attempts.")
@work_options
def squares_cmd(n: int, sleep: float, fail_count: str | None, work: WorkOptions) -> None:
    from qconv.converter.cli_errors import user_errors

    units = squares(n, sleep)
    if fail_count is not None:
        units.append(Unit("test_bad_input", "bad", {"path": "/models/x.gguf", "count": fail_count}))

    @user_errors
    def body():
        with work.executor(threads=1) as executor:
            click.echo(json.dumps(executor.run(units, "squares")))

    body()


def test_work_options_and_the_units_log(tmp_path, monkeypatch):
    monkeypatch.delenv("QCONV_RAY_ADDRESS", raising=False)
    log = tmp_path / "units.jsonl"
    result = CliRunner().invoke(squares_cmd, ["-n", "3", "-j", "2", "--units-log", str(log)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected_squares(3)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["key"] for e in entries] == ["x0", "x1", "x2"]
    assert set(entries[0]) == {"key", "kind", "where", "seconds", "attempts"}
    result = CliRunner().invoke(squares_cmd, ["-j", "0"])
    assert result.exit_code == 2 and "-j" in result.output
    result = CliRunner().invoke(squares_cmd, ["--units-log", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder" in result.output
    assert "--ray ADDRESS|auto" in CliRunner().invoke(squares_cmd, ["--help"]).output


def squares_cli(*args: str) -> subprocess.CompletedProcess:
    """squares_cmd as a command of its own: what its driver process prints to the end, the resource tracker's
    warnings included."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    code = "from tests.converter.test_work_executors import squares_cmd; squares_cmd()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)


def test_a_pool_run_leaves_no_semaphores_behind(tmp_path):
    """Workers that run a unit under a progress bar, shut down at the end of a run or killed under a unit that is
    still running when another fails: the resource tracker finds nothing left to clean up at exit."""
    done = squares_cli("-n", "4", "-j", "2")
    assert done.returncode == 0 and json.loads(done.stdout) == expected_squares(4), done.stderr
    assert "leaked semaphore" not in done.stderr and done.stderr == "", done.stderr
    failed = squares_cli("-n", "1", "--sleep", "30", "--fail", str(tmp_path / "count"), "-j", "2")
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr == "qconv: error: /models/x.gguf: not a model (bad magic)\n"
