"""Executors: where a run's units go. Serial (in this process), a local process pool (`-j N`) or Ray (`--ray`).

Every executor gives the same answer: `run(units)` returns the units' records in the order of `units`, whatever order
they ran in, so the merged outputs (sens.json, the GGUF, report.json) are identical bit for bit. A caller that keeps
progress (eval's checkpoint of finished candidates) also gets each record as its unit finishes, in whatever order
that is, through `run(..., landed=fn)`. What differs is recorded apart, in `log` (where each unit ran, how long, how
many attempts), which `--units-log` writes.

Faults: a unit whose own code raises fails the run at once with its one-line message (a FormatError), the other
units cancelled; it is not retried, since it would fail again. A worker that dies under a unit (a killed process, a
lost node) has the unit run again on a fresh worker, up to MAX_ATTEMPTS starts. Ctrl-C (and SIGTERM) cancels
everything, remote work included.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from qconv.converter.work.units import (
    Shared,
    Unit,
    UnitFailed,
    check_units,
    forget_loaded,
    run_unit,
    unit_function,
)
from qconv.formats.errors import FormatError

MAX_ATTEMPTS = 3  # starts of one unit whose worker died under it, before the run gives up

Landed = Callable[[int, dict], None]  # (index in the run's units, the unit's record), called as each unit finishes


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def progress_bar(total: int, desc: str, progress: bool):
    """One bar over all of a run's units, on stderr; shown on a terminal only (tqdm's disable=None)."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="unit", file=sys.stderr, leave=False, dynamic_ncols=True,
        disable=None if progress else True,
    )  # fmt: skip


class Executor:
    """The interface every executor implements; also a context manager that closes it."""

    def __init__(self, threads: int | None = None, progress: bool = True):
        self.threads = threads  # for each unit's own C calls (Shared.threads)
        self.progress = progress
        self.log: list[dict] = []  # per unit: {"key", "kind", "where": {"host", "pid", "node"}, "seconds", "attempts"}
        self.shared = Shared(threads=threads)

    def share(self, name: str, value: Any) -> None:
        """A big input computed once on the driver and read by many units as `shared.get(name)`: an object (a numpy
        array, any picklable value) or a Path the units open themselves."""
        self.shared.entries[name] = ("path", str(value)) if isinstance(value, Path) else ("value", value)

    def run(self, units: list[Unit], desc: str, landed: Landed | None = None) -> list[dict]:
        """The units' records in the order of `units`; `landed(i, record)` as each one finishes (any order), in this
        process: what it raises ends the run as a failing unit does."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def _record(self, unit: Unit, done: dict, attempts: int) -> None:
        self.log.append(
            {"key": unit.key, "kind": unit.kind, "where": done["where"], "seconds": round(done["seconds"], 6),
             "attempts": attempts}
        )  # fmt: skip


class SerialExecutor(Executor):
    """The units one after another in this process, with the caller's thread count."""

    def run(self, units: list[Unit], desc: str, landed: Landed | None = None) -> list[dict]:
        check_units(units)
        results = []
        with progress_bar(len(units), desc, self.progress) as bar:
            for i, unit in enumerate(units):
                try:
                    done = run_unit(unit_function(unit.kind), unit, self.shared)
                except UnitFailed as e:
                    raise FormatError(e.message) from e.__cause__
                self._record(unit, done, 1)
                results.append(done["result"])
                bar.update(1)
                if landed is not None:
                    landed(i, done["result"])
        return results


# ---------------------------------------------------------------- the local process pool

STOP = "stop"  # in a run's folder of running markers while the driver drops the pool: units taken now do not start


def _start_worker(threads: int) -> None:
    """Each pool worker: Ctrl-C is the driver's to handle (it stops the workers), and libraries that size their own
    thread pools from the environment (BLAS, OpenMP, onnxruntime) keep to the worker's share of the cores.

    tqdm guards its bars with a multiprocessing lock, a named semaphore that the resource tracker unlinks for a
    process that dies without cleaning up, warning about "leaked semaphore objects" as the driver exits; a worker
    killed under a unit is such a process. A worker's bars need only a thread lock."""
    import threading

    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[name] = str(threads)
    tqdm.set_lock(threading.RLock())


def _run_in_worker(fn, unit: Unit, shared: Shared, running: str) -> dict | None:
    """A pool worker runs one unit. `running` marks it started, holding the worker's pid: the driver counts an
    attempt only for a unit that started (units queued behind a dying worker are not charged for it), and kills
    the busy workers by these pids when it drops the pool. The marker comes before the look for STOP, so a worker
    the dropping driver did not see running starts nothing."""
    marker = Path(running)
    marker.write_text(str(os.getpid()))
    try:
        if (marker.parent / STOP).exists():
            return None  # the run is over; nobody reads this
        return run_unit(fn, unit, shared)
    finally:
        marker.unlink(missing_ok=True)


class PoolExecutor(Executor):
    """N worker processes on this machine (spawned fresh: no inherited locks or mapped models), each unit with
    max(1, cores // N) threads unless -t says otherwise. The pool lives across runs (analyze runs two)."""

    def __init__(self, jobs: int, threads: int | None = None, progress: bool = True):
        super().__init__(threads or max(1, cores() // jobs), progress)
        self.jobs = jobs
        self.work_dir = Path(tempfile.mkdtemp(prefix="qconv-work-"))
        self._pool: ProcessPoolExecutor | None = None
        self._runs = 0

    def share(self, name: str, value: Any) -> None:
        """A Path goes as itself; an array is saved as .npy in the run's work folder (each worker maps it once), any
        other object pickled there."""
        if isinstance(value, Path):
            self.shared.entries[name] = ("path", str(value))
            return
        import numpy as np

        index = len(self.shared.entries)
        if isinstance(value, np.ndarray):
            path = self.work_dir / f"shared-{index}.npy"
            np.save(path, value, allow_pickle=False)
            self.shared.entries[name] = ("npy", str(path))
        else:
            path = self.work_dir / f"shared-{index}.pickle"
            path.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            self.shared.entries[name] = ("pickle", str(path))

    def _pool_now(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                initargs=(self.threads,),
            )  # fmt: skip
        return self._pool

    def _drop_pool(self, running_dir: Path | None = None) -> None:
        """Shut the pool down and wait for its workers to be gone. Without `running_dir` the workers are idle and
        exit as asked (cleanly: their exit handlers run); with it, the workers busy with a unit of that run are
        killed at once (the pool then stops the others) and queued units do not start."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if running_dir is not None:
            (running_dir / STOP).touch()
            busy = set()
            for marker in running_dir.iterdir():
                try:
                    busy.add(int(marker.read_text()))
                except (OSError, ValueError):  # STOP, or a marker removed or still being written as we look
                    continue
            # the pids among this process's live children only: a worker that is gone and reaped is not killed
            # under a pid the system may have given to another process since
            for child in multiprocessing.active_children():
                if child.pid in busy:
                    child.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        if running_dir is not None:
            (running_dir / STOP).unlink()

    def run(self, units: list[Unit], desc: str, landed: Landed | None = None) -> list[dict]:
        check_units(units)
        self._runs += 1
        running_dir = self.work_dir / f"running-{self._runs}"
        running_dir.mkdir()
        results: dict[int, dict] = {}
        attempts = [0] * len(units)
        pending = list(range(len(units)))
        try:
            with progress_bar(len(units), desc, self.progress) as bar:
                while pending:
                    pool = self._pool_now()
                    futures: dict[Future, int] = {}
                    broken = False
                    for i in pending:
                        marker = running_dir / f"{i}.{attempts[i]}"
                        args = (unit_function(units[i].kind), units[i], self.shared, str(marker))
                        try:
                            future = pool.submit(_run_in_worker, *args)
                        except BrokenProcessPool:  # a worker died while the units were being handed out
                            broken = True
                            break
                        futures[future] = i
                    broken = self._collect(futures, results, bar, landed) or broken
                    if broken:  # the pool has stopped its other workers
                        self._drop_pool()
                        for i in range(len(units)):  # every unit that started and did not finish: a lost attempt
                            started = [m for m in running_dir.glob(f"{i}.*")]
                            attempts[i] += len(started)
                            for m in started:
                                m.unlink()
                    pending = [i for i in range(len(units)) if i not in results]
                    for i in pending:
                        if attempts[i] >= MAX_ATTEMPTS:
                            raise FormatError(
                                f"{units[i].kind} unit '{units[i].key}': the worker process running it died "
                                f"{attempts[i]} times; giving up"
                            )
        except BaseException:
            self._drop_pool(running_dir)  # a failed unit, Ctrl-C or SIGTERM: nothing keeps running
            raise
        finally:
            shutil.rmtree(running_dir, ignore_errors=True)
        for i, unit in enumerate(units):
            self._record(unit, results[i], attempts[i] + 1)
        return [results[i]["result"] for i in range(len(units))]

    def _collect(self, futures: dict[Future, int], results: dict, bar, landed: Landed | None) -> bool:
        """Wait for the futures, each record into `results` (and to `landed`) as it comes; True when the pool broke
        (a worker died), with the finished ones in `results`."""
        waiting = set(futures)
        broken = False
        while waiting:
            done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    results[futures[future]] = future.result()
                except UnitFailed as e:
                    raise FormatError(e.message) from None
                except BrokenProcessPool:
                    broken = True
                    continue
                bar.update(1)
                if landed is not None:
                    landed(futures[future], results[futures[future]]["result"])
        return broken

    def close(self) -> None:
        self._drop_pool()
        forget_loaded()
        shutil.rmtree(self.work_dir, ignore_errors=True)


# ---------------------------------------------------------------- choosing one


def ray_address(ray: str | None) -> str | None:
    """--ray, or QCONV_RAY_ADDRESS when the flag is absent; "" counts as absent."""
    if ray is None:
        ray = os.environ.get("QCONV_RAY_ADDRESS") or None
    return ray or None


def make_executor(
    jobs: int | None = None,
    ray: str | None = None,
    threads: int | None = None,
    paths: list[Path] | tuple = (),
    progress: bool = True,
) -> Executor:
    """jobs None/1 serial, N a local pool of N spawned workers; ray "auto" (a local Ray instance) or an address
    (a cluster), QCONV_RAY_ADDRESS when `ray` is None. `paths`: the files the units will read, checked on every Ray
    node before any unit is scheduled. `threads`: each unit's threads (serial: the runtime's default when None)."""
    if jobs is not None and jobs < 1:
        raise FormatError(f"-j/--jobs must be at least 1 (got {jobs})")
    address = ray_address(ray)
    if address is not None:
        if jobs not in (None, 1):
            raise FormatError("-j/--jobs and --ray exclude each other: Ray schedules the units over its own CPUs")
        if importlib.util.find_spec("ray") is None:
            raise FormatError("--ray needs Ray: pip install 'qconv[ray]'")
        from qconv.converter.work.ray_executor import RayExecutor

        return RayExecutor(address, threads=threads, paths=[Path(p) for p in paths], progress=progress)
    if jobs is None or jobs == 1:
        return SerialExecutor(threads, progress)
    return PoolExecutor(jobs, threads, progress)
