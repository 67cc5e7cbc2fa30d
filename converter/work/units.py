"""The work model: analysis trials and candidate evaluations as independent units that any executor can run.

A unit is a kind (a key of UNIT_KINDS), a key unique within its run, and JSON-able args (paths as str, options, the
unit's plan). Its function gets the args and a `Shared` view of the big inputs the driver computed once, and returns
a small JSON-able record. The record depends only on the args and the shared inputs, never on where, in what order or
on how many threads it ran: that is what lets the serial, pool and Ray executors merge identical outputs.

The modules that define units register their kinds with `@register("kind")` at import. An executor sends a worker the
unit's function itself, which pickles by reference (module and name), so a fresh worker imports the module (and its
registrations) before it runs the first unit of that kind.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qconv.formats.errors import FormatError


@dataclass(frozen=True)
class Unit:
    kind: str  # a key of UNIT_KINDS
    key: str  # unique within a run and stable: a tensor name, a group name, a candidate path
    args: dict = field(hash=False)  # JSON-able inputs; big shared inputs by name, through Shared


UnitFunction = Callable[[dict, "Shared"], dict]
UNIT_KINDS: dict[str, UnitFunction] = {}


def register(kind: str) -> Callable[[UnitFunction], UnitFunction]:
    """`@register("tensor_errors")` on a module-level function(args, shared) -> record."""

    def add(fn: UnitFunction) -> UnitFunction:
        known = UNIT_KINDS.get(kind)
        if known is not None and (known.__module__, known.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"unit kind '{kind}' is registered twice ({known.__module__}, {fn.__module__})")
        UNIT_KINDS[kind] = fn
        return fn

    return add


def unit_function(kind: str) -> UnitFunction:
    try:
        return UNIT_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown unit kind '{kind}' (known: {', '.join(sorted(UNIT_KINDS)) or 'none'})") from None


def check_units(units: list[Unit]) -> None:
    seen: set[str] = set()
    for unit in units:
        unit_function(unit.kind)
        if unit.key in seen:
            raise ValueError(f"two units share the key '{unit.key}'")
        seen.add(unit.key)


# ---------------------------------------------------------------- shared inputs

# How a shared input travels (see each executor's `share`): "value" the object itself (serial), "npy" a numpy array
# saved by the driver, "pickle" any other object saved by the driver (pool), "ray" an object in Ray's object store,
# "rayfile" a small file sent through it, "path" a path the units read themselves (every worker must see it).
_loaded: dict[tuple[str, str], Any] = {}  # per worker process: a shared file is read once, not once per unit


@dataclass
class Shared:
    """What a unit sees of the run: the shared inputs by name, and the threads it may use for its own C calls."""

    entries: dict[str, tuple[str, Any]] = field(default_factory=dict)
    threads: int | None = None  # None: the runtime's default (all cores), as a serial run without -t

    def get(self, name: str) -> Any:
        try:
            how, value = self.entries[name]
        except KeyError:
            raise KeyError(f"no shared input '{name}' (shared: {', '.join(sorted(self.entries)) or 'none'})") from None
        if how == "value":
            return value
        if how == "path":
            return Path(value)
        if (how, value) not in _loaded:
            _loaded[(how, value)] = _load(how, value)
        return _loaded[(how, value)]

    def with_threads(self, threads: int | None) -> Shared:
        return Shared(dict(self.entries), threads)


def _load(how: str, path: Any) -> Any:
    if how == "npy":
        import numpy as np

        return np.load(path, mmap_mode="r")  # read-only and paged in as used: many units on one node share the pages
    if how == "pickle":
        with open(path, "rb") as f:
            return pickle.load(f)
    if how == "ray":  # an object reference: Ray moves the object to this node once
        import ray

        return ray.get(path)
    if how == "rayfile":  # (object reference, file name, digest): a small file, written once on this node
        from qconv.converter.work.ray_executor import shipped_file

        return shipped_file(*path)
    raise ValueError(f"unknown shared input kind '{how}'")


def forget_loaded() -> None:
    """Drop the cached shared inputs (a run's work folder is about to be removed)."""
    _loaded.clear()


# ---------------------------------------------------------------- running one unit


class UnitFailed(Exception):
    """A unit's own code raised: the run fails with `message` (one line); not retried, since it would fail again."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def one_line(kind: str, key: str, error: BaseException) -> str:
    """A unit's error as the run's one-line message: a FormatError says what it says (it names its file or tensor);
    anything else is named with its unit and type."""
    text = " ".join(str(error).split())
    if isinstance(error, FormatError):
        return text
    name = f"{kind} unit '{key}' failed: {type(error).__name__}"
    return f"{name}: {text}" if text else name


def where_here(node: str | None = None) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "node": node}


def run_unit(fn: UnitFunction, unit: Unit, shared: Shared, node: str | None = None) -> dict:
    """Run one unit where this is called: {"result", "where", "seconds"}; a failure in the unit's code as UnitFailed
    (picklable, one line) so that every executor reports it the same way."""
    start = time.perf_counter()
    try:
        result = fn(unit.args, shared)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        raise UnitFailed(one_line(unit.kind, unit.key, e)) from e
    return {"result": result, "where": where_here(node), "seconds": time.perf_counter() - start}
