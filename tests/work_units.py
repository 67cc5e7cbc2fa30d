"""Unit kinds for the executor tests (tests/converter/test_work_executors.py, test_work_ray.py): small, fast, and
some that fail or kill their own worker on purpose. Workers import this module (by the functions' pickled names)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from qconv.converter.work import Shared, Unit, register
from qconv.formats.errors import FormatError


@register("test_square")
def square(args: dict, shared: Shared) -> dict:
    """x^2 plus the shared offsets' sum; `sleep` seconds first, so that units overlap across workers. Under a
    progress bar (disabled, as the real units' bars are in a worker): tqdm makes its locks where it first runs."""
    from tqdm import tqdm

    with tqdm(total=1, disable=True) as bar:
        time.sleep(args.get("sleep", 0))
        bar.update(1)
    offset = float(shared.get("offsets").sum()) if "offsets" in shared.entries else 0.0
    return {"x": args["x"], "y": args["x"] ** 2 + offset}


@register("test_read")
def read_text(args: dict, shared: Shared) -> dict:
    """The length of a shared file (a Path or a small file shipped to the node)."""
    return {"chars": len(Path(shared.get("text")).read_text())}


@register("test_bad_input")
def bad_input(args: dict, shared: Shared) -> dict:
    """Fails deterministically; `count` gets a line per attempt, so a test can see it was not retried."""
    with open(args["count"], "a") as f:
        f.write("attempt\n")
    raise FormatError(f"{args['path']}: not a model (bad magic)")


@register("test_bug")
def bug(args: dict, shared: Shared) -> dict:
    return {"value": {}["missing"]}


@register("test_die_once")
def die_once(args: dict, shared: Shared) -> dict:
    """Kills its own worker process on its first attempt (the marker file says one was made), then succeeds."""
    marker = Path(args["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return {"x": args["x"], "y": args["x"] ** 2}


@register("test_die_always")
def die_always(args: dict, shared: Shared) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


@register("test_hang")
def hang(args: dict, shared: Shared) -> dict:
    """Writes its pid into `folder` and sleeps: a test interrupts the run and checks the process is gone."""
    Path(args["folder"], f"{os.getpid()}.pid").write_text("")
    time.sleep(args.get("seconds", 600))
    return {}


def squares(n: int, sleep: float = 0.0) -> list[Unit]:
    return [Unit("test_square", f"x{i}", {"x": i, "sleep": sleep}) for i in range(n)]
