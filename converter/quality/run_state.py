"""What makes an evaluation run resumable: the run's identity (the models' files, the user's task and text files,
the options) and the partial report saved after every suite, or, when the candidates run as units (-j, --ray), after
every candidate whose unit finished.

A run killed after some suites leaves report.json with `"complete": false`; `qconv eval ... -o DIR --resume`
continues it when the identity is the same and refuses, naming what differs, when it is not. A run of units killed
after some candidates also leaves their records in the report (UNITS); the resumed run runs only the others, and
merges all of them in candidate order, as an uninterrupted run does.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path

from qconv.formats.atomic_write import AtomicFile, AtomicFolder
from qconv.formats.errors import FormatError
from qconv.formats.folder_files import parse_json

REPORT = "report.json"
UNITS = "finished_units"  # in an unfinished report: the candidates' records that have landed in a run of units
MAX_JSON_BYTES = 256 << 20  # a report or cache sidecar read back: far above what a run writes, bounded all the same
OPTION_KEYS = ("suites", "ctx", "max_tokens", "max_tasks", "tasks", "long")  # the options that change the figures


def _file_identity(path: Path) -> dict:
    """A model file or folder by name, size and modification time (hashing gigabytes would cost a model pass)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return {"path": str(path), "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_identity(quants: list[Path], ref: Path, options) -> dict:
    """Everything a resumed run must share with the run it continues."""
    opts = asdict(options) if is_dataclass(options) else dict(options)
    texts = []
    for spec in opts.get("texts") or []:
        name, _, path = spec.partition("=")
        texts.append({"name": name, "sha256": file_sha256(Path(path))})
    return {
        "candidates": [_file_identity(q) for q in quants],
        "reference": _file_identity(ref),
        "task_files": [{"path": str(p), "sha256": file_sha256(Path(p))} for p in opts.get("task_files") or []],
        "texts": texts,
        "options": {k: opts.get(k) for k in OPTION_KEYS},
    }


def identity_difference(saved: dict, now: dict) -> str:
    """The first thing that differs, as a sentence."""
    for key in ("candidates", "reference", "task_files", "texts", "options"):
        if saved.get(key) != now.get(key):
            return f"the saved run differs in its {key.replace('_', ' ')} ({saved.get(key)!r} != {now.get(key)!r})"
    return "the saved run differs"


# ---------------------------------------------------------------- the output folder


def start_output(out_dir: Path, force: bool) -> None:
    """An output folder holding only the qconv marker: partial reports are written into it as suites finish."""
    with AtomicFolder(out_dir, force):
        pass


def json_safe(value):
    """NaN and infinities as null: report.json stays standard JSON (jq and CI tools refuse NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return value


def report_text(report: dict) -> str:
    return json.dumps(json_safe(report), indent=2)


def save_report(out_dir: Path, report: dict) -> None:
    with AtomicFile(Path(out_dir) / REPORT) as tmp:
        tmp.write_text(report_text(report))


def load_for_resume(out_dir: Path) -> dict:
    path = Path(out_dir) / REPORT
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise FormatError(f"--resume: {path}: larger than {MAX_JSON_BYTES >> 20} MiB; not a qconv eval report")
        report = parse_json(path.read_bytes(), f"--resume: {path}")
    except FileNotFoundError:
        raise FormatError(f"--resume: {path}: no report of an earlier run to continue") from None
    except (OSError, ValueError) as e:
        raise FormatError(f"--resume: {path}: not a qconv eval report ({e})") from None
    if not isinstance(report, dict) or report.get("schema_version") != 2 or "identity" not in report:
        raise FormatError(f"--resume: {path}: not a report of this qconv version (schema_version 2)")
    if report.get("complete"):
        raise FormatError(f"--resume: {path}: that run is complete; nothing to continue")
    return report


# ---------------------------------------------------------------- candidates as units, kept as they land


def units_executor(executor, report: dict, threads: int | None):
    """What runs the candidates as units: None to run every model in this process (no executor, or a serial one),
    else the executor. A run that was continued from finished units goes on by units, here in this process when no
    pool or cluster is given, so that its finished candidates are not run again."""
    from qconv.converter.work.executors import SerialExecutor

    if executor is not None and not isinstance(executor, SerialExecutor):
        return executor
    if UNITS not in report:
        return None
    return executor or SerialExecutor(threads, progress=False)


def run_units(executor, units: list, report: dict, save, suites: list[str], prepare) -> list[dict]:
    """The candidates' units (one per candidate, in order) on `executor`, each record kept in report[UNITS] and the
    report saved as it lands, in whatever order; with report[UNITS] from a killed run, only the candidates not in it
    run. `prepare()` shares what the units read (the reference's pass over `suites`) and returns the reference's
    speed; it runs only when some candidate is left. Returns the records in candidate order, with report[UNITS]
    gone and the reference's speed added to the report's."""
    saved = report.get(UNITS) or {}
    records = saved.get("records") if saved.get("suites") == suites else None
    if not isinstance(records, list) or len(records) != len(units):
        records = [None] * len(units)
    # a record of this run has the parts of every suite; anything else in a saved report is run again
    records = [r if isinstance(r, dict) and len(r.get("parts") or ()) == len(suites) else None for r in records]
    state = {"suites": suites, "reference_speed": saved.get("reference_speed"), "records": records}
    left = [i for i, record in enumerate(records) if record is None]
    if left or not isinstance(state["reference_speed"], dict):
        state["reference_speed"] = prepare()
    report[UNITS] = state

    def landed(k: int, record: dict) -> None:
        records[left[k]] = record
        if save is not None:
            save(report)

    if left:
        executor.run([units[i] for i in left], "candidates", landed)
    del report[UNITS]
    for key, value in state["reference_speed"].items():
        report["reference_speed"][key] += value
    return records
