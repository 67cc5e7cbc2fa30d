"""The Ray executor (`--ray auto|ADDRESS`): each unit a Ray task of 1 CPU (or -t CPUs), spread over the cluster's nodes.

Before any unit is scheduled: the address must answer (a one-line error naming it otherwise, within CONNECT_SECONDS),
and one probe task per alive node checks that the node can import qconv and read every input path (a one-line error
naming the path and the node otherwise).

Shared inputs: an object (the reference logits) is put in Ray's object store once, and Ray moves it to each node that
runs a unit once; a file under SHIP_LIMIT (a reference cache) travels the same way and is written once per node into
its temp folder; a bigger file, or a folder, is passed as its path, which every node must see (it is probed too).

Faults: a task that dies with its worker or its node (WorkerCrashedError, NodeDiedError, a lost result) is submitted
again, up to MAX_ATTEMPTS starts, on whichever node Ray picks; the driver resubmits rather than Ray's own max_retries so
that the units log counts every attempt exactly, as the pool's does. A unit whose code raises is not retried
(retry_exceptions=False): its one-line message ends the run and the other tasks are cancelled, as Ctrl-C cancels
them (force: a unit deep in C code is stopped with its worker process).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from qconv.converter.work.executors import MAX_ATTEMPTS, Executor, Landed, progress_bar
from qconv.converter.work.units import Shared, Unit, UnitFailed, check_units, run_unit, unit_function
from qconv.formats.errors import FormatError

CONNECT_SECONDS = 30  # for the address to answer, and for each node's probe
SHIP_LIMIT = 1 << 30  # shared files under 1 GiB travel through the object store; bigger ones must be on every node
DEFAULT_PORT = 6379  # the GCS port `ray start --head` uses unless told


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def host_port(address: str) -> tuple[str, int]:
    """ADDRESS as `ray start` prints it (host:port), or a Ray Client ray://host:port; port 6379 when left out."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep:
        return rest, DEFAULT_PORT
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise FormatError(f"--ray {address}: expected auto or HOST:PORT") from None


# ---------------------------------------------------------------- what runs on the nodes


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def probe_node(paths: list[str]) -> dict:
    """On one node: its identity and, per path it cannot read, why (this module importing at all shows qconv is
    installed there)."""
    unreadable = {}
    for path in paths:
        if not os.path.exists(path):
            unreadable[path] = "no such file or folder"
        elif not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
            unreadable[path] = "permission denied"
        elif os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as e:
                unreadable[path] = e.strerror or str(e)
    return {"node": _node_id(), "host": socket.gethostname(), "unreadable": unreadable}


def ray_unit(fn, unit: Unit, shared: Shared) -> dict:
    return run_unit(fn, unit, shared, node=_node_id())


def _shipped_path(name: str, digest: str) -> Path:
    return Path(tempfile.gettempdir()) / "qconv-shared" / f"{digest[:16]}-{name}"


def shipped_file(ref, name: str, digest: str) -> Path:
    """A shared file sent through the object store, written once per node (by the first unit there that needs it);
    the driver's close() removes it from every node."""
    import ray

    target = _shipped_path(name, digest)
    target.parent.mkdir(exist_ok=True)
    if not target.exists():
        temp = target.parent / f".{target.name}.{os.getpid()}.part"
        temp.write_bytes(ray.get(ref))
        os.replace(temp, target)
    return target


def remove_shipped(files: list[tuple[str, str]]) -> None:
    for name, digest in files:
        _shipped_path(name, digest).unlink(missing_ok=True)


# ---------------------------------------------------------------- the driver


def _system_errors() -> tuple[type[BaseException], ...]:
    """Errors that say the worker or node went away under the task, not that the unit failed."""
    import ray.exceptions as rx

    names = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "LocalRayletDiedError", "RaySystemError")
    return tuple(getattr(rx, n) for n in names if hasattr(rx, n))


class RayExecutor(Executor):
    def __init__(self, address: str, threads: int | None = None, paths: list[Path] = (), progress: bool = True):
        super().__init__(threads or 1, progress)
        import ray

        self.address = address
        self._owns_connection = False
        self._connect(address)
        try:
            cpus = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
            if self.threads > max(cpus, default=0):  # Ray would wait for such a node for ever
                raise FormatError(
                    f"-t {self.threads}: each unit would ask {self.threads} CPUs of one Ray node, and the largest node "
                    f"at {address} has {max(cpus, default=0):g}"
                )
            self.nodes = self._probe([str(p) for p in paths])
            self._unit_task = ray.remote(ray_unit).options(
                num_cpus=self.threads, max_retries=0, retry_exceptions=False, scheduling_strategy="SPREAD"
            )
        except BaseException:
            self.close()
            raise

    def _connect(self, address: str) -> None:
        import ray

        if ray.is_initialized():  # a caller (a notebook, a Ray job) is connected already: use its cluster
            return
        if address != "auto":
            host, port = host_port(address)
            try:
                socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
            except OSError as e:
                reason = e.strerror or type(e).__name__
                raise FormatError(f"--ray {address}: cannot reach a Ray cluster there ({reason})") from None
        outcome: list[BaseException | None] = []

        def init() -> None:
            try:
                ray.init(address=None if address == "auto" else address, log_to_driver=False,
                         logging_level=logging.ERROR)  # fmt: skip
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        if address == "auto":  # a local instance, started here unless one runs: in the main thread, as Ray wants
            init()
        else:  # ray.init waits minutes for a port that answers but is no Ray cluster: wait in a thread, bounded
            joining = threading.Thread(target=init, name="qconv-ray-init", daemon=True)
            joining.start()
            joining.join(CONNECT_SECONDS)
        if not outcome:
            raise FormatError(f"--ray {address}: no Ray cluster answered there within {CONNECT_SECONDS} s")
        if outcome[0] is not None:
            raise FormatError(f"--ray {address}: cannot join the Ray cluster: {_one_line(outcome[0])}") from None
        self._owns_connection = True

    def _probe(self, paths: list[str]) -> list[dict]:
        """One probe task pinned to each alive node, before any unit: qconv importable, every path readable."""
        import ray

        refs = self._on_every_node(probe_node, paths, wait=False)
        ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=CONNECT_SECONDS)
        if not_ready:
            node = refs[not_ready[0]]
            ray.cancel(not_ready[0], force=True)
            raise FormatError(
                f"--ray {self.address}: node {node['NodeID'][:12]} ({node['NodeManagerAddress']}) did not answer a "
                f"probe within {CONNECT_SECONDS} s"
            )
        nodes = []
        for ref in ready:
            node = refs[ref]
            try:
                answer = ray.get(ref)
            except Exception as e:
                raise FormatError(
                    f"--ray {self.address}: node {node['NodeID'][:12]} ({node['NodeManagerAddress']}) cannot run qconv "
                    f"(install qconv on every node): {_one_line(getattr(e, 'cause', None) or e)[:300]}"
                ) from None
            for path, reason in answer["unreadable"].items():
                raise FormatError(
                    f"{path}: not readable on Ray node {answer['node'][:12]} ({answer['host']}, "
                    f"{node['NodeManagerAddress']}): {reason}; every node must see the inputs at the same path"
                )
            nodes.append(answer)
        return nodes

    def _on_every_node(self, fn, *args, wait: bool = True):
        """fn(*args) as a task pinned to each alive node (no CPU asked: it runs beside the units); {ref: node} when
        not waiting, else after CONNECT_SECONDS at most."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(fn)
        refs = {
            task.options(
                num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(*args): n
            for n in ray.nodes()
            if n.get("Alive")
        }  # fmt: skip
        if wait:
            ray.wait(list(refs), num_returns=len(refs), timeout=CONNECT_SECONDS)
        return refs

    def share(self, name: str, value: Any) -> None:
        import ray

        if isinstance(value, Path):
            if value.is_file() and value.stat().st_size < SHIP_LIMIT:
                data = value.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                self.shared.entries[name] = ("rayfile", (ray.put(data), value.name, digest))
            else:
                self._probe([str(value)])
                self.shared.entries[name] = ("path", str(value))
            return
        self.shared.entries[name] = ("ray", ray.put(value))

    def run(self, units: list[Unit], desc: str, landed: Landed | None = None) -> list[dict]:
        import ray

        check_units(units)
        system_errors = _system_errors()
        results: dict[int, dict] = {}
        attempts = [0] * len(units)
        tasks: dict[Any, int] = {}

        def submit(i: int) -> None:
            unit = units[i]
            attempts[i] += 1
            tasks[self._unit_task.remote(unit_function(unit.kind), unit, self.shared)] = i

        try:
            with progress_bar(len(units), desc, self.progress) as bar:
                for i in range(len(units)):
                    submit(i)
                while tasks:
                    done, _ = ray.wait(list(tasks), num_returns=1)
                    for ref in done:
                        i = tasks.pop(ref)
                        try:
                            results[i] = ray.get(ref)
                        except system_errors as e:
                            if attempts[i] >= MAX_ATTEMPTS:
                                raise FormatError(
                                    f"{units[i].kind} unit '{units[i].key}': the Ray worker running it died "
                                    f"{attempts[i]} times; giving up (last: {type(e).__name__})"
                                ) from None
                            submit(i)
                            continue
                        except ray.exceptions.RayTaskError as e:
                            raise self._unit_error(units[i], e) from None
                        bar.update(1)
                        if landed is not None:
                            landed(i, results[i]["result"])
        except BaseException:
            for ref in tasks:  # a failed unit, Ctrl-C or SIGTERM: nothing keeps running on the cluster
                ray.cancel(ref, force=True)
            raise
        for i, unit in enumerate(units):
            self._record(unit, results[i], attempts[i])
        return [results[i]["result"] for i in range(len(units))]

    def _unit_error(self, unit: Unit, error) -> FormatError:
        cause = getattr(error, "cause", None)
        if isinstance(cause, UnitFailed):
            return FormatError(cause.message)
        # the task failed before the unit's code ran: qconv missing or different on that node, an argument that
        # does not unpickle there
        return FormatError(
            f"{unit.kind} unit '{unit.key}' failed on a Ray node: {type(cause or error).__name__}: "
            f"{_one_line(cause or error)[:300]}"
        )

    def close(self) -> None:
        import ray

        shipped = [(name, digest) for how, value in self.shared.entries.values() if how == "rayfile"
                   for _, name, digest in [value]]  # fmt: skip
        self.shared.entries.clear()
        if shipped and ray.is_initialized():
            self._on_every_node(remove_shipped, shipped)
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        self._owns_connection = False
