"""The options of every command that runs units (`qconv analyze`, `to-gguf --type auto`, `qconv eval`): -j/--jobs,
--ray and --units-log, stated once so that each command's --help says them the same way.

`@work_options` above a command adds the three options and hands the command one `work: WorkOptions`;
`with work.executor(threads, paths) as executor:` makes the executor (checking --units-log's path first) and, when
the run succeeds, writes the units log.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from qconv.converter.cli_outputs import FILE_RULE
from qconv.converter.work.executors import Executor, make_executor


@dataclass(frozen=True)
class WorkOptions:
    jobs: int | None = None
    ray: str | None = None
    units_log: Path | None = None

    @contextmanager
    def executor(self, threads: int | None = None, paths=(), progress: bool = True) -> Iterator[Executor]:
        from qconv.formats.atomic_write import AtomicFile, check_output_file

        if self.units_log is not None:
            check_output_file(self.units_log)  # before any unit runs
        with make_executor(self.jobs, self.ray, threads, list(paths), progress) as executor:
            yield executor
        if self.units_log is not None:
            with AtomicFile(self.units_log) as tmp:
                tmp.write_text("".join(json.dumps(entry) + "\n" for entry in executor.log))


def work_options(fn):
    """Add -j/--jobs, --ray and --units-log to a click command; the command receives them as `work`."""

    @functools.wraps(fn)
    def wrapper(*args, jobs, ray, units_log, **kwargs):
        return fn(*args, work=WorkOptions(jobs, ray, units_log), **kwargs)

    options = [
        click.option(
            "-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
            help="Run the units in N local worker processes (each with cores/N threads unless -t); default: serial.",
        ),
        click.option(
            "--ray", default=None, metavar="ADDRESS|auto",
            help="Run the units as Ray tasks: 'auto' starts a local Ray instance, ADDRESS (host:port) joins a cluster "
            "(default: $QCONV_RAY_ADDRESS). Every node must have qconv installed and see the input paths. Needs "
            "pip install 'qconv[ray]'.",
        ),
        click.option(
            "--units-log", type=click.Path(path_type=Path), default=None, metavar="FILE",
            help="Write one JSON line per unit: where it ran (host, pid, Ray node), seconds, attempts. Outputs never "
            f"hold this, so they are identical for every executor. {FILE_RULE}",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
