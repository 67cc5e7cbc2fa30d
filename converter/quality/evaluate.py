"""`qconv eval`: run quantized candidates (GGUF files or `qconv to-onnx` folders) and their unquantized reference
through the runtimes on the held-out suites, the user's texts and the user's task files, and say, per capability,
what quantization lost.

Per text suite: mean and 99th-percentile KL divergence KL(P_ref || P_quant) of the next-token distribution, top-1
agreement and the perplexity ratio quant / ref, each with a 95% bootstrap interval over chunks. Per task suite: both
models' greedy answers checked the same way, the paired comparison (exact McNemar test, an interval on the
difference). Gates (converter/quality/gates.py) turn the report into an exit code naming the failing suite.

The reference runs once per window and item, whatever the number of candidates: every candidate is scored against
the same reference logits (all models are loaded at once), and the reference's greedy answers can be kept in a
file (`--ref-cache`, converter/quality/ref_cache.py) for the next run. With -j N or --ray the reference runs once in
this process and each candidate is a unit in a worker (converter/quality/eval_units.py): the same report. With an
output folder, report.json is rewritten after every finished suite (`"complete": false` until the end; with units,
after every finished candidate) and `--resume` continues such a run.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from qconv.converter.quality import suites as suite_table
from qconv.converter.quality.runner import Runner
from qconv.converter.quality.token_stats import TokenStats
from qconv.formats.errors import FormatError

DEFAULT_CTX = 512
LONG_SCORED_TOKENS = 256  # of a long-context document, the last tokens are scored (the rest only fills the cache)
# of a windowed built-in suite, the first tokens are scored: three windows of 512 (a chunk bootstrap needs two), so
# that the default evaluation of a small model stays within two minutes on two cores (the texts are sized for
# calibration; --text gives a suite of any size)
SUITE_TOKENS = 1536
# a built-in maths or passkey answer is decided by its first number: it ends at the first character after one
BUILTIN_STOPS = {"maths": re.compile(r"\d\D"), "passkey": re.compile(r"\d\D")}
USER_STOP = ""  # user task answers end at end-of-turn / EOS or max_tokens, not at a stop string


# ---------------------------------------------------------------- the two models


def _gguf_identity(path: Path) -> dict:
    from qconv.formats.gguf_read import read_gguf

    with read_gguf(path) as g:
        arch = g.architecture
        tokens = g.metadata.get("tokenizer.ggml.tokens")
        float_types = {"F32", "F16", "BF16"}
        quantized = [t.name for t in g.tensors.values() if t.type_name not in float_types]
        return {
            "arch": arch,
            "tokens": list(tokens) if tokens is not None else None,
            "block_count": g.metadata.get(f"{arch}.block_count"),
            "embedding_length": g.metadata.get(f"{arch}.embedding_length"),
            "quantized": quantized,
            "file_bytes": path.stat().st_size,
            "context_length": g.metadata.get(f"{arch}.context_length"),
        }


def check_compatible(quant: Path, ref: Path) -> None:
    """The reference must be the same network: architecture, shape and vocabulary (quant: a GGUF or an ONNX
    folder, described by its tokenizer.gguf)."""
    from qconv.converter.quality.eval_onnx import metadata_gguf

    q, r = _gguf_identity(metadata_gguf(quant)), _gguf_identity(ref)
    if q["arch"] != r["arch"]:
        raise FormatError(f"reference {ref} is a '{r['arch']}' model, {quant} is a '{q['arch']}' model")
    for key in ("block_count", "embedding_length"):
        if q[key] != r[key]:
            raise FormatError(f"reference {ref} has {key} {r[key]}, {quant} has {q[key]}: not the same model")
    qt, rt = q["tokens"] or [], r["tokens"] or []
    if len(qt) != len(rt):
        raise FormatError(f"reference {ref} has a vocabulary of {len(rt)} tokens, {quant} has {len(qt)}")
    differ = next((i for i, (a, b) in enumerate(zip(qt, rt)) if a != b), None)
    if differ is not None:
        raise FormatError(
            f"reference {ref} has another vocabulary: token {differ} is {rt[differ]!r}, not {qt[differ]!r}"
        )


def prepare_reference(ref: Path, workdir: Path, progress: bool = False) -> Path:
    """An unquantized GGUF of REF: the file itself (f32/f16/bf16), or an HF folder converted to f32 in workdir."""
    ref = Path(ref)
    if ref.is_dir():
        from qconv.converter.calibrate import model_gguf

        return model_gguf(ref, workdir, progress)
    if not ref.is_file():
        raise FormatError(f"reference {ref}: no such file or folder")
    with open(ref, "rb") as f:
        if f.read(4) != b"GGUF":
            raise FormatError(f"reference {ref}: not a GGUF file nor a Hugging Face model folder")
    quantized = _gguf_identity(ref)["quantized"]
    if quantized:
        raise FormatError(
            f"reference {ref}: tensor '{quantized[0]}' is quantized; the reference must be an f32/f16/bf16 GGUF "
            "or the Hugging Face folder"
        )
    return ref


# ---------------------------------------------------------------- what is measured


@dataclass
class Window:
    """Tokens fed from an empty cache; rows first.. of their logits are scored; targets[k] is the token that follows
    row first + k (-1: none known, the row counts for KL divergence and top-1 only)."""

    tokens: list[int]
    first: int
    targets: list[int]


@dataclass
class TaskCase:
    """One task item as both models answer it: greedy from the prompt tokens, up to max_new tokens, end of turn or
    (built-in few-shot items) the stop string."""

    tokens: list[int]
    max_new: int
    stop: str | re.Pattern
    check: Callable[[str], bool]  # a partial of a module function: units receive the cases pickled
    expected: str
    source: str  # the built-in suite's item number or the task file's FILE:LINE


@dataclass
class Workload:
    """One suite as the run measures it: windows scored by KL divergence and/or task items answered greedily."""

    name: str
    description: str
    kind: str  # the built-in task kind ("maths", "json", "passkey"), "text" or "user"
    windows: list[Window] = field(default_factory=list)
    cases: list[TaskCase] = field(default_factory=list)
    left_out: int = 0  # task items that do not fit the context
    text_tokens: list[int] | None = None  # a user's text: its tokens, as the reference cache's header holds them


def _fit(tokens: list[int], limit: int | None, bos: int | None) -> list[int]:
    """The last `limit` tokens (BOS kept first): a document longer than the model's context is windowed to it."""
    if not limit or len(tokens) <= limit:
        return tokens
    keep = tokens[len(tokens) - limit + (1 if bos is not None else 0) :]
    return ([bos] if bos is not None else []) + keep


def builtin_windows(runner: Runner, suite, options, limit: int | None) -> list[Window]:
    """ctx-sized windows of the suite's text (each starting with BOS when the model adds one), or whole documents
    for long-context suites (their last LONG_SCORED_TOKENS positions scored), cut to the model's context."""
    ctx, max_tokens = options.ctx, options.max_tokens
    bos = runner.bos if runner.add_bos else None
    docs = suite.documents("eval", max_len_tokens=long_limit(limit, options.long))
    if suite.whole_documents:  # with max_tokens: only the documents that short (at least the shortest)
        whole = sorted((runner.tokenize(d, bos is not None) for d in docs), key=len)
        keep = [w for w in whole if not max_tokens or len(w) <= max_tokens] or whole[:1]
        windows = [_fit(w, limit, bos) for w in keep]
        return [Window(w, len(w) - min(LONG_SCORED_TOKENS, len(w) - 1), []) for w in windows]
    stream: list[int] = []
    for doc in docs:
        stream += runner.tokenize(doc + "\n\n", False)
    stream = stream[: min(max_tokens or SUITE_TOKENS, SUITE_TOKENS)]
    width = min(ctx, limit or ctx) - (1 if bos is not None else 0)
    windows = [([bos] if bos is not None else []) + stream[i : i + width] for i in range(0, len(stream), width)]
    return [Window(w, 0, []) for w in windows if len(w) >= 2]


def check_answer(kind: str, continuation: str, expected: str) -> bool:
    """A built-in item's answer: json: a valid tool call; maths and passkey: the first number is the answer."""
    if kind == "json":
        return suite_table.valid_tool_call(continuation) is not None
    numbers = re.findall(r"-?\d+", continuation)
    return bool(numbers) and numbers[0] == expected


def _fits(cases: list[TaskCase], limit: int | None, max_tasks: int | None) -> tuple[list[TaskCase], int]:
    kept = [c for c in cases if not limit or len(c.tokens) + c.max_new <= limit]
    return (kept[:max_tasks] if max_tasks else kept), len(cases) - len(kept)


def builtin_cases(runner: Runner, items: list, suite, options, limit: int | None) -> tuple[list[TaskCase], int]:
    cases = [
        TaskCase(runner.tokenize(item.prompt, runner.add_bos), item.max_new_tokens, BUILTIN_STOPS.get(item.kind, "\n"),
                 partial(check_answer, item.kind, expected=item.expected), item.expected,
                 f"{suite.name}#{i + 1}")
        for i, item in enumerate(items)
    ]  # fmt: skip
    if options.max_tokens:  # quick runs: only prompts that short (at least the shortest)
        short = [c for c in cases if len(c.tokens) <= options.max_tokens]
        cases = short or sorted(cases, key=lambda c: len(c.tokens))[:1]
    return _fits(cases, limit, options.max_tasks)


def user_cases(runner: Runner, tasks: list, options, limit: int | None) -> tuple[list[TaskCase], int]:
    from qconv.converter.quality.task_files import check_answer as check_user
    from qconv.converter.quality.task_files import render_prompt

    cases = [
        TaskCase(render_prompt(task, runner.model), task.max_tokens, USER_STOP,
                 partial(check_user, task), task.expected or "", task.source)
        for task in tasks
    ]  # fmt: skip
    return _fits(cases, limit, options.max_tasks)


def text_workload(runner: Runner, text, ctx: int, limit: int | None) -> Workload:
    """A user's text scored as llama-perplexity scores `-f FILE -c CTX` (converter/quality/texts.py): whole chunks
    of ctx tokens, BOS first, the second half of each scored. The chunk's last token is only a target, not fed."""
    from qconv.converter.quality import texts

    n_ctx = min(ctx, limit or ctx)
    tokens = texts.text_tokens(runner, text, n_ctx)
    chunks = texts.text_windows(tokens, n_ctx, runner.bos if runner.add_bos else None)
    windows = [Window(chunk[:-1], first, chunk[first + 1 :]) for chunk, first in chunks]
    return Workload(text.name, f"your text {text.path}", "text", windows, text_tokens=tokens)


def build_workloads(runner: Runner, chosen: list, user: UserInputs, options, limit: int | None) -> list[Workload]:
    """Every suite of the run, in order: the built-in suites, the user's texts, the user's task capabilities."""
    out = []
    for suite in chosen:
        w = Workload(suite.name, suite.description, "text", builtin_windows(runner, suite, options, limit))
        items = suite.tasks(max_len_tokens=long_limit(limit, options.long)) if options.tasks else []
        if items:
            w.kind = items[0].kind
            w.cases, w.left_out = builtin_cases(runner, items, suite, options, limit)
        out.append(w)
    for text in user.texts:
        out.append(text_workload(runner, text, options.ctx, limit))
    for capability, tasks in user.tasks.items():
        w = Workload(capability, f"your tasks ({tasks[0].source.rsplit(':', 1)[0]})", "user")
        w.cases, w.left_out = user_cases(runner, tasks, options, limit)
        out.append(w)
    return out


# ---------------------------------------------------------------- options and the user's inputs


@dataclass
class EvalOptions:
    suites: list[str] | None = None  # None: every built-in suite; ["none"]: none of them
    ctx: int = DEFAULT_CTX
    threads: int | None = None
    max_tokens: int | None = None  # per suite, for quick runs
    max_tasks: int | None = None  # per task suite
    tasks: bool = True  # the built-in task checks (user task files run regardless)
    task_files: list[Path] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # NAME=FILE
    long: bool = False  # passkey items up to the model's context (default: up to min(context, 2048))
    ref_cache: Path | None = None
    layer_errors: bool = True  # per-layer weight error of the quantized file (for the report's chart)
    progress: bool = False


@dataclass
class UserInputs:
    tasks: dict = field(default_factory=dict)  # capability -> [UserTask]
    texts: list = field(default_factory=list)  # texts.EvalText


def load_user_inputs(options: EvalOptions) -> UserInputs:
    """The user's task files and texts, read and checked whole before any model is loaded."""
    from qconv.converter.quality.task_files import load_task_files
    from qconv.converter.quality.texts import read_texts

    user = UserInputs(tasks=load_task_files([Path(p) for p in options.task_files]) if options.task_files else {})
    user.texts = read_texts(options.texts) if options.texts else []
    clash = next((t.name for t in user.texts if t.name in user.tasks), None)
    if clash:
        raise FormatError(f"--text {clash}=...: '{clash}' is also a capability of the task files; choose another name")
    return user


def chosen_suites(names: list[str] | None) -> list:
    """The named built-in suites (all without names, none for 'none'); an unknown name is a one-line error."""
    if names and "none" in names:
        if len(names) > 1:
            raise FormatError("--suite none cannot be combined with other suites")
        return []
    unknown = [n for n in names or [] if n not in suite_table.SUITES]
    if unknown:
        raise FormatError(
            f"--suite {unknown[0]}: no such suite; the suites are {', '.join(suite_table.SUITES)} (or none)"
        )
    return suite_table.get_suites(names or None)


# ---------------------------------------------------------------- the run


def _progress(total: int, desc: str, unit: str, on: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not on, file=sys.stderr, leave=False, dynamic_ncols=True)


class Reference:
    """The reference as the loop uses it: the model itself (and, with --ref-cache naming a new file, a cache being
    written as it runs), a cache file and no model run at all (converter/quality/ref_cache.py), or the logits and
    answers of the reference pass the driver of a unit run made once (converter/quality/eval_units.py). Live
    scoring and the reference pass use the whole vocabulary, bit for bit the same; scoring from a cache uses the
    rows as llama-perplexity keeps them (the top 16 nats, 1.2e-4 nats apart), which moves a suite's mean KLD by
    about 0.2%."""

    def __init__(self, runner: Runner | None, cache=None, writer=None, passed=None, answers: dict | None = None):
        self.runner, self.cache, self.writer, self.passed = runner, cache, writer, passed
        self.answers: dict = answers if answers is not None else cache.answers if cache is not None else {}

    def run_window(self, w: Workload, index: int, window: Window) -> np.ndarray:
        """The reference model's logits of the window's scored rows (into the cache being written, if any)."""
        r = self.runner.logits(window.tokens, len(window.tokens) - window.first)
        if self.writer is not None:
            if w.text_tokens is not None:
                self.writer.add_chunk(r)
            else:
                self.writer.add_window(w.name, window.tokens, r)
        return r

    def window_rows(self, w: Workload, index: int, window: Window) -> np.ndarray:
        """The reference's side of the window's scored rows: float32 logits [rows, n_vocab] (the model run now, or
        the reference pass), or a cache's encoded uint16 rows [rows, ref_cache.row_width]."""
        if self.passed is not None:
            return self.passed.rows(w.name, index)
        if self.cache is None:
            return self.run_window(w, index, window)
        if w.text_tokens is not None:
            chunk = window.tokens + [window.targets[-1]]
            return self.cache.reference(w.name).chunk_rows(index, chunk, window.first)
        return self.cache.windows.window_rows(w.name, index, window.tokens, len(window.tokens) - window.first)

    def window_stats(self, w: Workload, index: int, window: Window, candidates: list, next_tokens) -> list:
        """Per candidate logits of the window's scored rows, compared with the reference's: LogitStats each."""
        from qconv.converter.quality import ref_cache
        from qconv.runtime.logit_stats import logit_stats

        r = self.window_rows(w, index, window)
        if r.dtype == np.uint16:
            wrong = next((q.shape[1] for q in candidates if ref_cache.row_width(q.shape[1]) != r.shape[1]), None)
            if wrong is not None:
                raise FormatError(f"reference cache: its rows are not for a vocabulary of {wrong}; remake the cache")
            return [ref_cache.cached_stats(r, q, next_tokens) for q in candidates]
        return [logit_stats(r, q, next_tokens) for q in candidates]

    def answer(self, case: TaskCase) -> str:
        key = answer_key(case)
        if key not in self.answers:
            if self.runner is None:
                raise FormatError(f"reference cache: no answer for task item {case.source}; remake the cache")
            self.answers[key] = self.runner.greedy(case.tokens, case.max_new, case.stop)
        return self.answers[key]


def score_windows(w: Workload, ref: Reference, runners: list[Runner], progress: bool) -> list[TokenStats]:
    """Each window through the reference once (or from its cache) and through every candidate, compared."""
    stats = [TokenStats() for _ in runners]
    with _progress(sum(len(x.tokens) for x in w.windows), w.name, "tok", progress) as bar:
        for index, window in enumerate(w.windows):
            scored = len(window.tokens) - window.first
            targets = window.targets or (window.tokens[window.first + 1 :] + [-1])
            next_tokens = np.array(targets[:scored] + [-1] * (scored - len(targets)), dtype=np.int32)
            candidates = [runner.logits(window.tokens, scored) for runner in runners]
            for s, row_stats in zip(stats, ref.window_stats(w, index, window, candidates, next_tokens)):
                s.add_stats(row_stats, next_tokens)
            del candidates
            bar.update(len(window.tokens))
    return stats


def answer_cases(w: Workload, ref: Reference, runners: list[Runner], progress: bool) -> list[dict]:
    """Every candidate's task table: per item the expected answer, both answers and whether each is right."""
    from qconv.converter.quality.stats import compare_tasks

    rows: list[list[dict | None]] = [[None] * len(w.cases) for _ in runners]
    with _progress(len(w.cases), w.name, "item", progress) as bar:
        for i in case_order(w):
            case = w.cases[i]
            ref_text = ref.answer(case)
            ref_ok = bool(case.check(ref_text))
            for runner, table in zip(runners, rows):
                text = runner.greedy(case.tokens, case.max_new, case.stop)
                table[i] = {"source": case.source, "expected": case.expected, "ref": ref_text, "quant": text,
                            "ref_ok": ref_ok, "quant_ok": bool(case.check(text))}  # fmt: skip
            bar.update(1)
    out = []
    for table in rows:
        comparison = compare_tasks([r["ref_ok"] for r in table], [r["quant_ok"] for r in table], None)
        out.append({"kind": w.kind, **comparison.as_dict(), "left_out": w.left_out, "items": table})
    return out


def prefix_order(cases: list[TaskCase], cached: list[int]) -> list[int]:
    """The items in the order that reuses the most cached prompt: their prompts' lexicographic order (each shares
    the longest prefix with the one before), started at the item sharing the most with what the cache holds (the
    document just scored). Passkey items share their filler up to the key: about 40% fewer tokens. The tables keep
    the items' own order."""
    from qconv.runtime.model import shared_prefix

    order = sorted(range(len(cases)), key=lambda i: cases[i].tokens)
    if not order:
        return order
    start = max(range(len(order)), key=lambda k: shared_prefix(cached, cases[order[k]].tokens))
    return order[start:] + order[:start]


def case_order(w: Workload) -> list[int]:
    """A suite's items in prefix order from its last window, which every model's cache holds once the windows are
    scored (a suite without windows starts at its first item in that order). It depends on the suite alone, not
    on a model's earlier answers: every candidate answers in the same order in one process or in its own unit,
    and so gets the same bits (a prompt's reused prefix decides where its batches are cut)."""
    return prefix_order(w.cases, w.windows[-1].tokens if w.windows else [])


def answer_key(case: TaskCase) -> str:
    import hashlib

    digest = hashlib.sha256(np.asarray(case.tokens, dtype=np.int64).tobytes()).hexdigest()[:32]
    return f"{digest}:{case.max_new}:{case.stop!r}"


def _model_limit(paths: list[Path]) -> int | None:
    """The smallest trained context of the models (None when no file says)."""
    from qconv.converter.quality.eval_onnx import metadata_gguf

    lengths = [_gguf_identity(metadata_gguf(p))["context_length"] for p in paths]
    lengths = [int(n) for n in lengths if n]
    return min(lengths) if lengths else None


def long_limit(limit: int | None, long: bool) -> int:
    """Long-context documents and passkey items reach min(context, 2048) tokens, or the context with --long."""
    default = suite_table.MAX_LEN_TOKENS
    return (limit or default) if long else min(limit or default, default)


def new_report(quants: list[Path], ref: Path, ref_path: Path, options: EvalOptions, identity: dict) -> dict:
    from qconv.converter.quality.eval_onnx import model_bytes

    return {
        "schema_version": 2,
        "complete": False,
        "reference": str(ref),
        "reference_bytes": ref_path.stat().st_size,
        "ctx": options.ctx,
        "identity": identity,
        "finished": [],
        "provenance": suite_table.provenance(),
        "candidates": [
            {
                "quant": str(q),
                "quant_bytes": model_bytes(q),
                "suites": [],
                "tasks": {},
                "speed": {"tokens": 0, "seconds": 0.0},
            }
            for q in quants
        ],  # fmt: skip
        "reference_speed": {"tokens": 0, "seconds": 0.0},
    }


def evaluate(quants, ref: Path, options: EvalOptions | None = None, log=None, save=None, resume: dict | None = None,
             executor=None) -> dict:  # fmt: skip
    """The report (a JSON-able dict) of the candidates QUANTS (GGUF files or `qconv to-onnx` folders; one path or
    a list) against REF. `save(report)` is called after every finished suite; `resume`, a report an earlier run
    saved (complete false, same identity), is continued: its finished suites are kept, and the candidates whose
    unit finished. `executor` (converter/work): None or a serial one runs every model in this process; a pool or Ray
    runs each candidate as a unit against the reference pass made once here (converter/quality/eval_units.py),
    with the same report, saved after every finished candidate."""
    from qconv.converter.quality import run_state
    from qconv.converter.quality.embed_eval import evaluate_embeddings, is_encoder_model
    from qconv.converter.quality.eval_onnx import is_onnx_folder, onnx_layer_errors, open_runner

    options = options or EvalOptions()
    quants = [Path(q) for q in ([quants] if isinstance(quants, (str, Path)) else quants)]
    if quants and is_encoder_model(quants[0]):  # an embedding model: its vectors are compared (embed_eval.py)
        return evaluate_embeddings(quants, Path(ref), options, log, save, resume, executor)
    for quant in quants:
        if not (quant.is_file() or is_onnx_folder(quant)):
            raise FormatError(f"{quant}: no such GGUF file or ONNX folder (model.onnx and genai_config.json)")
    chosen = chosen_suites(options.suites)
    user = load_user_inputs(options)
    if not chosen and not user.texts and not user.tasks:
        raise FormatError("nothing to evaluate: --suite none and no --text or --tasks")
    say = log or (lambda msg: None)
    identity = run_state.run_identity(quants, Path(ref), options)
    if resume is not None and resume.get("identity") != identity:
        raise FormatError(f"--resume: {run_state.identity_difference(resume.get('identity') or {}, identity)}")
    with tempfile.TemporaryDirectory(prefix="qconv-eval-") as tmp:
        ref_path = prepare_reference(Path(ref), Path(tmp), options.progress)
        for quant in quants:
            check_compatible(quant, ref_path)
        limit = _model_limit([ref_path, *quants])
        probe = Runner(ref_path, 64, options.threads)  # tokenizer and chat template, before the cache is sized
        workloads = build_workloads(probe, chosen, user, options, limit)
        n_vocab = probe.n_vocab
        del probe
        needed = max([len(x.tokens) for w in workloads for x in w.windows]
                     + [len(c.tokens) + c.max_new for w in workloads for c in w.cases] + [options.ctx])  # fmt: skip
        model_ctx = min(needed + 8, limit) if limit else needed + 8
        cache, writer = open_reference_cache(options, Path(ref), user, chosen, workloads, identity, n_vocab, resume)
        ref_runner = None if cache is not None else Runner(ref_path, model_ctx, options.threads)
        if cache is not None:
            say(f"reference: from the cache {options.ref_cache} (the reference model is not run)")
        reference = Reference(ref_runner, cache, writer)
        report = resume if resume is not None else new_report(quants, Path(ref), ref_path, options, identity)
        todo = [w for w in workloads if w.name not in report["finished"]]
        units_on = run_state.units_executor(executor, report, options.threads)
        in_process = units_on is None
        try:
            if in_process:
                runners = [open_runner(q, model_ctx, options.threads) for q in quants]
                for w in todo:
                    run_workload(w, reference, runners, report, options)
                    say(_suite_line(w.name, report["candidates"]))
                    if save is not None:
                        save(report)
                del runners
            else:
                from qconv.converter.quality import eval_units

                results = eval_units.run_candidates(
                    units_on, quants, ref_path, todo, reference, n_vocab, model_ctx, options, Path(tmp), report, save
                )
                for k, w in enumerate(todo):
                    merge_parts(report, w, [result["parts"][k] for result in results])
                    say(_suite_line(w.name, report["candidates"]))
                if save is not None:
                    save(report)
            if writer is not None:
                writer.answers = reference.answers
                writer.commit()
                say(f"reference cache: {options.ref_cache}")
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        for i, (candidate, quant) in enumerate(zip(report["candidates"], quants)):
            candidate["overall"] = overall(candidate)
            if options.layer_errors:
                from qconv.converter.quality.report import layer_weight_errors

                errors = onnx_layer_errors if is_onnx_folder(quant) else layer_weight_errors
                candidate["layer_errors"] = errors(quant, ref_path) if in_process else results[i]["layer_errors"]
        report["complete"] = True
    return report


def workload_parts(w: Workload, reference: Reference, runners: list[Runner], progress: bool) -> list[dict]:
    """One suite through every runner: per runner its parts of the report (the suite's row, its task table, the
    tokens and seconds it took)."""
    for runner in runners:
        runner.seconds = runner.tokens = 0
    parts: list[dict] = [{} for _ in runners]
    if w.windows:
        for part, stats in zip(parts, score_windows(w, reference, runners, progress)):
            part["suite"] = {"name": w.name, "description": w.description, **stats.summary()}
    if w.cases:
        for part, task in zip(parts, answer_cases(w, reference, runners, progress)):
            part["tasks"] = task
    for part, runner in zip(parts, runners):
        part["speed"] = {"tokens": runner.tokens, "seconds": runner.seconds}
    return parts


def merge_parts(report: dict, w: Workload, parts: list[dict]) -> None:
    """Each candidate's parts of one suite into the report, in candidate order; the suite is then finished."""
    for candidate, part in zip(report["candidates"], parts):
        if "suite" in part:
            candidate["suites"].append(part["suite"])
        if "tasks" in part:
            candidate["tasks"][w.name] = part["tasks"]
        candidate["speed"]["tokens"] += part["speed"]["tokens"]
        candidate["speed"]["seconds"] += part["speed"]["seconds"]
    report["finished"].append(w.name)


def run_workload(w: Workload, reference: Reference, runners: list[Runner], report: dict, options) -> None:
    """One suite through every candidate: its rows and task tables into the report, its time into the speeds."""
    ref_runner = reference.runner
    if ref_runner is not None:
        ref_runner.seconds = ref_runner.tokens = 0
    merge_parts(report, w, workload_parts(w, reference, runners, options.progress))
    if ref_runner is not None:
        report["reference_speed"]["tokens"] += ref_runner.tokens
        report["reference_speed"]["seconds"] += ref_runner.seconds


def open_reference_cache(options, ref: Path, user, chosen, workloads, identity, n_vocab, resume):
    """(cache, writer): the --ref-cache file when it was made for this run (then the reference is not run), else
    a writer filling it as the reference runs. A resumed run writes none: its first suites ran before."""
    if options.ref_cache is None:
        return None, None
    from qconv.converter.quality import ref_cache

    settings = {**identity["options"], "task_files": [f["sha256"] for f in identity["task_files"]]}
    # the texts' window: --ctx, or the model's context when that is shorter
    n_ctx = next((len(w.windows[0].tokens) + 1 for w in workloads if w.text_tokens is not None), options.ctx)
    description = ref_cache.describe(ref, user.texts, n_ctx, [s.name for s in chosen], settings)
    cache = ref_cache.load_cache(options.ref_cache, description)
    if cache is not None or resume is not None:
        return cache, None
    text_tokens = [(w.name, w.text_tokens) for w in workloads if w.text_tokens is not None]
    return None, ref_cache.CacheWriter(options.ref_cache, description, n_ctx, n_vocab, text_tokens)


def _suite_line(name: str, candidates: list[dict]) -> str:
    parts = []
    for c in candidates:
        row = next((s for s in c["suites"] if s["name"] == name), None)
        task = c["tasks"].get(name)
        text = f"KLD {row['kld_mean']:.4f}, top-1 {row['top1']:.3f}" if row else ""
        if task:
            text += (", " if text else "") + f"tasks ref {task['ref_accuracy']:.2f} quant {task['quant_accuracy']:.2f}"
        parts.append(text)
    return f"{name}: " + " | ".join(parts)


def overall(candidate: dict) -> dict:
    rows = candidate["suites"]
    n = sum(r["tokens"] for r in rows) or 1
    return {
        "tokens": sum(r["tokens"] for r in rows),
        "kld_mean": sum(r["kld_mean"] * r["tokens"] for r in rows) / n,
        "top1": sum(r["top1"] * r["tokens"] for r in rows) / n,
    }
