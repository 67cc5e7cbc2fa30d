"""`qconv eval A B C --ref REF -j 2`: the reference runs once in the driver, each candidate is a unit in a worker
process, and the report is the one-process report: report.json (the speeds' seconds aside, which are timings),
report.html and the JUnit file, with a new --ref-cache (written the same, byte for byte), with an existing one, and
when a run is resumed. Three random candidates (q4_0, q5_0, q8_0) against their f32 reference, on a small slice of
every kind of suite: a built-in text and task suite, a user text, a user task file."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

TYPES = ("q4_0", "q5_0", "q8_0")


@pytest.fixture(scope="module")
def models(random_model_factory, tmp_path_factory):
    from qconv.converter.convert import convert_to_gguf

    folder = random_model_factory(arch="llama", context_length=2048)
    out = tmp_path_factory.mktemp("eval-units")
    files = {}
    for type_name in ("f32", *TYPES):
        files[type_name] = out / f"{type_name}.gguf"
        convert_to_gguf(folder, files[type_name], type_name, progress=False)
    tasks = out / "tasks.jsonl"
    tasks.write_text("".join(
        json.dumps({"capability": "echo", "prompt": f"item {i}", "expected": "never", "max_tokens": 16}) + "\n"
        for i in range(4)
    ))  # fmt: skip
    text = out / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 120)
    args = [*(files[t] for t in TYPES), "--ref", files["f32"], "--suite", "maths", "--suite", "prose",
            "--max-tokens", 128, "--max-tasks", 2, "--tasks", tasks, "--text", f"mine={text}", "-c", 64, "-q"]  # fmt: skip
    return files, args


QCONV = [sys.executable, "-c", "from qconv.converter.cli import main; main()"]


def qconv_eval(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([*QCONV, "eval", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def without_seconds(value):
    """The report less its timings (how long each model ran differs run to run, and so between executors)."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def report(out: Path) -> dict:
    return without_seconds(json.loads((out / "report.json").read_text()))


def test_the_pool_gives_the_serial_report_and_ref_cache(models, tmp_path):
    files, args = models
    serial, pool = tmp_path / "serial", tmp_path / "pool"
    log = tmp_path / "units.jsonl"
    qconv_eval(*args, "-t", 2, "-o", serial, "--junit", tmp_path / "serial.xml", "--ref-cache", tmp_path / "s.cache")
    qconv_eval(*args, "-j", 2, "--units-log", log, "-o", pool, "--junit", tmp_path / "pool.xml",
               "--ref-cache", tmp_path / "p.cache")  # fmt: skip

    expected = report(serial)
    assert expected["complete"] and [c["quant"] for c in expected["candidates"]] == [str(files[t]) for t in TYPES]
    assert report(pool) == expected
    assert (pool / "report.html").read_bytes() == (serial / "report.html").read_bytes()
    assert (tmp_path / "pool.xml").read_bytes() == (tmp_path / "serial.xml").read_bytes()
    q4, q5, q8 = expected["candidates"]
    assert q4["overall"]["kld_mean"] > q5["overall"]["kld_mean"] > q8["overall"]["kld_mean"] > 0
    assert [s["name"] for s in q4["suites"]] == ["maths", "prose", "mine"] and set(q4["tasks"]) == {"maths", "echo"}

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["key"] for e in entries] == [str(files[t]) for t in TYPES]
    assert {e["kind"] for e in entries} == {"eval_candidate"}
    assert len({e["where"]["pid"] for e in entries}) == 2  # both workers ran candidates

    for suffix in ("", ".json", ".rows"):  # the driver's reference pass wrote the cache one process writes
        pooled, one_process = (Path(f"{tmp_path / name}{suffix}") for name in ("p.cache", "s.cache"))
        assert pooled.read_bytes() == one_process.read_bytes()

    # with the cache made, the reference is not run: the units score from the cache's rows, as one process does
    cached_serial, cached_pool = tmp_path / "cached-serial", tmp_path / "cached-pool"
    qconv_eval(*args, "-t", 2, "-o", cached_serial, "--ref-cache", tmp_path / "s.cache")
    qconv_eval(*args, "-j", 2, "-o", cached_pool, "--ref-cache", tmp_path / "s.cache")
    assert report(cached_pool) == report(cached_serial)
    assert report(cached_pool)["reference_speed"] == {"tokens": 0}


class Stop(Exception):
    pass


def test_a_resumed_run_gives_the_same_report_serial_or_pooled(models, tmp_path):
    """A run stopped after its first suite, resumed in one process and with -j 2: the same report."""
    from qconv.converter.quality import run_state
    from qconv.converter.quality.evaluate import EvalOptions, evaluate

    files, args = models
    partial = tmp_path / "partial"
    run_state.start_output(partial, False)

    def save_then_stop(report: dict) -> None:
        run_state.save_report(partial, report)
        raise Stop

    text = next(a for a in args if str(a).startswith("mine="))
    tasks = args[args.index("--tasks") + 1]
    options = EvalOptions(suites=["maths", "prose"], ctx=64, threads=2, max_tokens=128, max_tasks=2,
                          task_files=[tasks], texts=[text])  # fmt: skip
    with pytest.raises(Stop):
        evaluate([files[t] for t in TYPES], files["f32"], options, save=save_then_stop)
    assert json.loads((partial / "report.json").read_text())["finished"] == ["maths"]
    serial, pool = tmp_path / "serial", tmp_path / "pool"
    shutil.copytree(partial, serial)
    shutil.copytree(partial, pool)
    qconv_eval(*args, "-t", 2, "-o", serial, "--resume")
    qconv_eval(*args, "-j", 2, "-o", pool, "--resume")
    done = report(serial)
    assert done["complete"] and done["finished"] == ["maths", "prose", "mine", "echo"]
    assert report(pool) == done


def landed(report: dict) -> list[int]:
    """The candidates whose unit's record a run of units has saved in its report."""
    return [i for i, record in enumerate(report.get("finished_units", {}).get("records", [])) if record is not None]


def test_a_killed_pooled_run_resumes_without_the_candidates_that_finished(models, tmp_path):
    """-j 2 over six candidates (each file twice), terminated (SIGTERM) as soon as report.json holds a finished
    candidate's record: --resume runs only the others and writes the report of an uninterrupted run."""
    files, args = models
    quants = [files[t] for t in TYPES] * 2
    rest = args[len(TYPES) :]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    qconv_eval(*quants, *rest, "-t", 2, "-o", whole)

    command = [*QCONV, "eval", *map(str, [*quants, *rest, "-j", 2, "-o", killed])]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    saved: dict = {}
    while not landed(saved):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()
        time.sleep(0.01)
        try:
            saved = json.loads((killed / "report.json").read_text())
        except (FileNotFoundError, ValueError):
            continue
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 143 and stderr == "qconv: terminated\n", stderr  # no leaked semaphores either
    saved = json.loads((killed / "report.json").read_text())
    finished = landed(saved)
    assert not saved["complete"] and saved["finished"] == [] and 1 <= len(finished) < len(quants), finished
    schema = json.loads(resources.files("qconv.converter.quality").joinpath("report.schema.json").read_text())
    jsonschema.validate(saved, schema)

    log = tmp_path / "resumed.jsonl"
    qconv_eval(*quants, *rest, "-j", 2, "-o", killed, "--resume", "--units-log", log)
    keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
    assert keys == [f"{q}#{i + 1}" for i, q in enumerate(quants) if i not in finished]
    assert report(killed) == report(whole)
    assert "finished_units" not in report(killed)
    assert (killed / "report.html").read_bytes() == (whole / "report.html").read_bytes()
