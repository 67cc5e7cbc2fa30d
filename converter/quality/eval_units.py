"""`qconv eval A B C --ref REF -j N` (or `--ray`): each candidate is one unit of kind "eval_candidate", its whole
evaluation against a reference pass the driver makes once.

The driver runs the reference as a run in one process does, in the same order: per suite its windows, then its task
items in `case_order`. It keeps the logits of every scored row (float32, the whole vocabulary) and the greedy
answers; when --ref-cache already holds this run's reference, the model is not run and the pass is the cache's
rows (uint16) and answers. A unit loads its candidate, runs the suites as the in-process loop runs them (the same
functions, the same order, against the same reference rows) and returns its parts of the report; the driver merges
them in candidate order. The report is the one-process report bit for bit, the speeds' seconds aside. Each
candidate's record is saved in the report as its unit finishes, so a killed run resumes without the candidates that
finished (converter/quality/run_state.py).

Why the logits and not a --ref-cache file made for the run: the cache keeps llama-perplexity's 16-bit rows, which
move a suite's mean KLD by about 0.2% (evaluate.Reference), so a report scored against it would not be the report of
one process, which scores against the live reference. The logits take n_vocab * 4 bytes per scored row, twice the
cache's rows: the 135M sample's default suites score 8,192 rows of 49,152 logits, 1.6 GB (a suite at most 1,536
rows, 0.3 GB). With --ref-cache FILE the cache is written from the same pass.

The rows travel as one .npy per suite in the run's temp folder, shared by path (converter/work): pool workers map
them (one copy in the page cache); Ray sends a file under 1 GiB through its object store, once per node, and needs
a bigger one on a path every node sees (a built-in suite's rows stay under 1 GiB up to a vocabulary of 174,000
tokens; a long --text may not). The reference GGUF, which the units read for the per-layer weight errors, is
shared the same way (a reference given as a Hugging Face folder is converted on the driver).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.converter.quality.evaluate import Reference, Workload, _progress, case_order, workload_parts
from qconv.converter.work.units import Unit, register

KIND = "eval_candidate"
SHARED_PASS = "eval_reference_pass"
SHARED_ROWS = "eval_reference_rows"
SHARED_REFERENCE = "eval_reference_gguf"  # the unquantized GGUF, for the per-layer weight errors


@dataclass
class ReferencePass:
    """What the units share besides the rows: the suites still to run (their task checks pickle as module
    functions), where each window's rows are in its suite's rows, and the reference's answers."""

    workloads: list[Workload]
    windows: dict[str, list[tuple[int, int]]]  # suite -> (first row, end row) of each window in the suite's rows
    answers: dict[str, str]  # evaluate.answer_key -> the reference's greedy answer


def rows_name(suite: str) -> str:
    return f"{SHARED_ROWS}:{suite}"


class PassedRows:
    """The reference's side of a window's scored rows, read from its suite's rows (mapped, not read whole)."""

    def __init__(self, windows: dict[str, list[tuple[int, int]]], shared):
        self.windows, self.shared = windows, shared
        self.mapped: dict[str, np.ndarray] = {}

    def rows(self, suite: str, index: int) -> np.ndarray:
        if suite not in self.mapped:  # every unit on a node shares the pages
            self.mapped[suite] = np.load(self.shared.get(rows_name(suite)), mmap_mode="r")
        first, end = self.windows[suite][index]
        return np.array(self.mapped[suite][first:end])


def reference_pass(reference: Reference, workloads: list[Workload], n_vocab: int, folder: Path,
                   progress: bool) -> tuple[ReferencePass, dict[str, Path], dict]:  # fmt: skip
    """The reference through every suite once, in the order one process runs it (windows, then the task items in
    case_order; the --ref-cache being written, if any, gets its rows on the way), or its rows and answers read from
    the user's cache: the pass, per suite with windows a .npy of its rows in `folder`, and the reference's speed
    (a model run's tokens and seconds)."""
    from qconv.converter.quality.ref_cache import row_width

    runner = reference.runner
    speed = {"tokens": 0, "seconds": 0.0}
    # float32 logits from a model run; a cache's uint16 rows as they are
    dtype, width = (np.float32, n_vocab) if reference.cache is None else (np.uint16, row_width(n_vocab))
    windows: dict[str, list[tuple[int, int]]] = {}
    files: dict[str, Path] = {}
    for k, w in enumerate(workloads):
        if runner is not None:
            runner.seconds = runner.tokens = 0
        ends = np.cumsum([len(x.tokens) - x.first for x in w.windows]).tolist()
        windows[w.name] = list(zip([0, *ends[:-1]], ends))
        if w.windows:
            files[w.name] = folder / f"reference-rows-{k}.npy"
            rows = np.lib.format.open_memmap(files[w.name], "w+", dtype, (ends[-1], width))
            with _progress(ends[-1], f"reference {w.name}", "tok", progress) as bar:
                for index, window in enumerate(w.windows):
                    first, end = windows[w.name][index]
                    rows[first:end] = reference.window_rows(w, index, window)
                    bar.update(end - first)
            rows.flush()
            del rows
        with _progress(len(w.cases), f"reference {w.name}", "item", progress) as bar:
            for i in case_order(w):
                reference.answer(w.cases[i])
                bar.update(1)
        if runner is not None:
            speed["tokens"] += runner.tokens
            speed["seconds"] += runner.seconds
    return ReferencePass(workloads, windows, dict(reference.answers)), files, speed


def candidate_units(kind: str, quants: list[Path], args: dict) -> list[Unit]:
    """One unit per candidate, keyed by its path; the same file twice is two candidates, two keys. A worker's
    folder is not this one: the candidates go by absolute path."""
    return [
        Unit(kind, str(q) if quants.count(q) == 1 else f"{q}#{i + 1}", {**args, "quant": str(Path(q).resolve())})
        for i, q in enumerate(quants)
    ]


def run_candidates(executor, quants: list[Path], ref_path: Path, workloads: list[Workload], reference: Reference,
                   n_vocab: int, model_ctx: int, options, folder: Path, report: dict, save) -> list[dict]:  # fmt: skip
    """Every candidate as a unit against the reference pass, each one's record saved in the report as it lands
    (run_state.run_units): per candidate, in order, {"parts": [its evaluate.workload_parts of each suite],
    "layer_errors"}."""
    from qconv.converter.quality import run_state

    def prepare() -> dict:
        passed, files, speed = reference_pass(reference, workloads, n_vocab, folder, options.progress)
        for suite, path in files.items():
            executor.share(rows_name(suite), path)
        executor.share(SHARED_PASS, passed)
        if options.layer_errors:
            executor.share(SHARED_REFERENCE, ref_path)
        return speed

    units = candidate_units(KIND, quants, {"model_ctx": model_ctx, "layer_errors": options.layer_errors})
    return run_state.run_units(executor, units, report, save, [w.name for w in workloads], prepare)


@register(KIND)
def eval_candidate(args: dict, shared) -> dict:
    """One candidate through every suite against the shared reference pass: its parts of the report."""
    from qconv.converter.quality.eval_onnx import is_onnx_folder, onnx_layer_errors, open_runner

    passed: ReferencePass = shared.get(SHARED_PASS)
    reference = Reference(None, passed=PassedRows(passed.windows, shared), answers=dict(passed.answers))
    quant = Path(args["quant"])
    runner = open_runner(quant, int(args["model_ctx"]), shared.threads)
    parts = [workload_parts(w, reference, [runner], progress=False)[0] for w in passed.workloads]
    del runner
    errors = None
    if args["layer_errors"]:
        from qconv.converter.quality.report import layer_weight_errors

        ref_path = shared.get(SHARED_REFERENCE)
        errors = (onnx_layer_errors if is_onnx_folder(quant) else layer_weight_errors)(quant, ref_path)
    return {"parts": parts, "layer_errors": errors}
