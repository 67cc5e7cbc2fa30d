"""`--type auto`: choose each tensor's type from the sensitivity data to minimise the predicted KL divergence at a
size (`--target-bpw`), or the size at a KL divergence (`--max-kld`).

The prediction: a group's measured KLD (quantized alone, at its cheapest type) is shared among its tensors in
proportion to their importance-weighted errors, and each tensor's share scales with its error at the chosen type:
    KLD ~ sum_i c_g(i) * err_i(type_i),   c_g = KLD_g / sum_{i in g} err_i(cheapest).
Without KLD trials every c is 1 (the sum of weighted errors). A greedy knapsack then buys, from the cheapest types
up, the upgrade with the largest predicted KLD drop per byte until the budget is spent.

With the user's data (`--eval-text`, `--eval-tasks`) `--max-kld` is measured instead of predicted. The greedy path
without a budget orders the mixtures from the cheapest to the largest; `search_measured` converts and measures a few
of them, each a pass over the user's data: first the mixture the prediction names, then a bisection over the bytes
between the largest known to measure over the bound and the smallest known to measure under it, until the two are
within 1% of the file's size or 8 files were measured. It assumes the measured KLD falls along the path (it need not
fall strictly); the file written is always one whose measurement is under the bound.

Everything the user gives (the analysis JSON, the texts and task files, a --target-bpw the candidate types cannot
reach) is checked by `check_auto_inputs` from the model's shapes alone, before the minutes of analysis.

The result is a list of `--tensor-type` overrides (`^name$=type`), which the converter's existing machinery applies,
and metadata keys (`qconv.auto.*`) recording the choice and its quality.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qconv.converter.analyze import DEFAULT_TYPES, choosable, ggml_type
from qconv.converter.plan import T, fit_row, row_bytes
from qconv.formats.errors import FormatError

DEFAULT_EVAL_CTX = 512  # qconv eval's -c, and llama-perplexity's
HELD_OUT_CTX = 256  # the built-in held-out windows, as the analysis' trials score them
MAX_MEASUREMENTS = 8
BYTES_TOLERANCE = 0.01  # of the file's size: the measured search stops within it


@dataclass
class AutoChoice:
    types: dict[str, str]  # tensor -> type name
    nbytes: int  # of the whole file's tensor data
    bits_per_weight: float
    predicted_kld: float
    base_type: str  # the --type whose file_type the GGUF records
    measured_kld: float | None = None
    measured_on: str = ""  # which data, e.g. "measured on notes.txt, 1984 tokens"

    def tensor_type_overrides(self) -> tuple[str, ...]:
        return tuple(f"^{re.escape(name)}$={t}" for name, t in self.types.items())

    def metadata(self) -> dict[str, str | float]:
        meta: dict[str, str | float] = {
            "qconv.auto.bits_per_weight": self.bits_per_weight,
            "qconv.auto.predicted_kld": self.predicted_kld,
            "qconv.auto.types": json.dumps(self.types, separators=(",", ":")),
        }
        if self.measured_kld is not None:
            meta["qconv.auto.measured_kld"] = self.measured_kld
            meta["qconv.auto.measured_on"] = self.measured_on
        return meta


# the --type whose general.file_type stands for a mixture whose most common type is this one
BASE_FOR_TYPE = {"q2_k": "q2_k", "q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m", "q6_k": "q6_k",
                 "q8_0": "q8_0", "q4_0": "q4_0", "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1"}  # fmt: skip


# ---------------------------------------------------------------- what the model's shapes allow


def candidate_sizes(shape, types) -> dict[str, int]:
    """type -> bytes of a tensor auto chooses, at each candidate type after the converter's row fallback
    (plan.fit_row): a 576-wide q2_k is the q4_0 it becomes, and a type that falls back to f16 is no candidate.
    These are the options analyze.tensor_errors measures."""
    rows = int(np.prod(shape[:-1]))
    sizes: dict[str, int] = {}
    for name in types:
        effective, _ = fit_row(ggml_type(name), shape[-1])
        if effective not in (T.F16, T.F32):
            sizes.setdefault(effective.name.lower(), row_bytes(effective, shape[-1]) * rows)
    return sizes


def reachable_bpw(shapes: dict, types) -> tuple[float, float]:
    """The smallest and largest bits per weight of a mixture of `types` over tensors of these shapes. The tensors
    auto does not choose (norms) stay f32, as the analysis' fixed_bytes counts them."""
    low = high = n_elements = 0
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        n_elements += count
        sizes = candidate_sizes(shape, types) if choosable(name, shape) else {}
        low += min(sizes.values(), default=4 * count)
        high += max(sizes.values(), default=4 * count)
    return 8 * low / n_elements, 8 * high / n_elements


def check_target_bpw(target_bpw: float, shapes: dict, types) -> None:
    low, high = reachable_bpw(shapes, types)
    if not low <= target_bpw <= high:  # also refuses NaN
        # rounded inwards, so that any target between the printed figures is reachable
        shown = f"{math.ceil(low * 1000) / 1000:.3f}..{math.floor(high * 1000) / 1000:.3f}"
        raise FormatError(
            f"--target-bpw {target_bpw}: this model's tensors reach {shown} bits per weight with the candidate types"
        )


def model_shapes(model) -> dict[str, tuple[int, ...]]:
    """GGUF name -> shape of MODEL (HF folder or GGUF), read from its headers."""
    from qconv.converter.sources import open_source

    source = open_source(Path(model))
    try:
        return dict(source.shapes)
    finally:
        source.close()


# ---------------------------------------------------------------- a saved analysis (`qconv analyze -o`)


def read_sensitivity(path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise FormatError(f"{path}: cannot read the sensitivity JSON: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{path}: not JSON ({e}); expected a `qconv analyze -o` file") from None


def _is_number(value, minimum: float = 0.0) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= minimum


def check_analysis(analysis, shapes: dict, model, source) -> None:
    """An analysis (a `qconv analyze -o` JSON, a user's file) fits this model: the keys auto reads; every tensor auto
    chooses, with the model's shape and the sizes its candidate types give it, and no other; the group trials. A
    mismatch names the first differing tensor, in the model's order."""

    def fail(what: str) -> FormatError:
        return FormatError(f"{source}: {what}")

    if not isinstance(analysis, dict):
        raise fail("not a JSON object; expected a `qconv analyze -o` file")
    for key, kind in (("types", list), ("n_elements", int), ("fixed_bytes", int), ("tensors", dict), ("groups", list)):
        value = analysis.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise fail(f"'{key}' is missing or not a JSON {kind.__name__}; expected a `qconv analyze -o` file")
    for name in analysis["types"]:
        try:
            ggml_type(str(name))
        except FormatError:
            raise fail(f"unknown candidate type {name!r} in 'types'") from None
    types = analysis["types"]
    other = f" (the analysis is of {analysis['model']})" if isinstance(analysis.get("model"), str) else ""
    expected = {n: list(s) for n, s in shapes.items() if choosable(n, s)}
    tensors = analysis["tensors"]
    for name, shape in expected.items():
        entry = tensors.get(name)
        if entry is None:
            raise fail(f"no tensor {name}, which {model} has{other}")
        if not isinstance(entry, dict):
            raise fail(f"tensor {name}: expected an object with 'shape' and 'options', found {json.dumps(entry)[:40]}")
        if entry.get("shape") != shape:
            found = entry.get("shape")
            raise fail(f"tensor {name} has shape {found}, {model} has {shape}{other}")
    for name in tensors:
        if name not in expected:
            what = "a tensor --type auto chooses" if name in shapes else "a tensor"
            raise fail(f"tensor {name} is not {what} of {model}{other}")
    for name, shape in expected.items():
        sizes = candidate_sizes(shape, types)
        options = tensors[name].get("options")
        if not isinstance(options, dict) or not options:
            raise fail(f"tensor {name}: no 'options' object of candidate types")
        for type_name, option in options.items():
            if type_name not in sizes:
                raise fail(
                    f"tensor {name}: option '{type_name}' is not among the types the candidates give a "
                    f"{shape[-1]}-wide row ({', '.join(sizes)})"
                )
            if not isinstance(option, dict) or option.get("bytes") != sizes[type_name]:
                found = option.get("bytes") if isinstance(option, dict) else option
                raise fail(f"tensor {name}: option {type_name} has {found} bytes, expected {sizes[type_name]}")
            if not _is_number(option.get("error")):
                raise fail(f"tensor {name}: option {type_name} has error {option.get('error')!r}, expected >= 0")
    n_elements = sum(int(np.prod(s)) for s in shapes.values())
    fixed_bytes = sum(4 * int(np.prod(s)) for n, s in shapes.items() if n not in expected)
    for key, value in (("n_elements", n_elements), ("fixed_bytes", fixed_bytes)):
        if analysis[key] != value:
            raise fail(f"'{key}' is {analysis[key]}, {model} has {value}{other}")
    for number, group in enumerate(analysis["groups"], 1):
        label = group.get("group", number) if isinstance(group, dict) else number
        names = group.get("tensors") if isinstance(group, dict) else None
        if not isinstance(names, list) or not names:
            raise fail(f"group {label}: no 'tensors' list")
        unknown = [n for n in names if not isinstance(n, str) or n not in tensors]
        if unknown:
            raise fail(f"group {label}: tensor {unknown[0]} is not in the analysis")
        if not _is_number(group.get("kld")):
            raise fail(f"group {label}: 'kld' is {group.get('kld')!r}, expected a number >= 0")


# ---------------------------------------------------------------- the inputs, checked before any work


@dataclass
class AutoInputs:
    """--type auto's inputs, every one checked from the files and the model's headers (to-gguf checks them before it
    calibrates, convert_auto before it analyses)."""

    target_bpw: float | None
    max_kld: float | None
    analysis: dict | None  # a checked analysis, or None: analyse the model
    texts: list = field(default_factory=list)  # texts.EvalText
    tasks: list = field(default_factory=list)  # (file, [task_files.UserTask])
    eval_ctx: int = DEFAULT_EVAL_CTX

    @property
    def user_data(self) -> bool:
        return bool(self.texts or self.tasks)


def check_auto_inputs(
    model, target_bpw: float | None = None, max_kld: float | None = None, *, analysis: dict | None = None,
    sensitivity=None, eval_texts=(), eval_tasks=(), eval_ctx: int | None = None,
) -> AutoInputs:  # fmt: skip
    from qconv.converter.quality import texts as text_files
    from qconv.converter.quality.task_files import load_task_files

    if (target_bpw is None) == (max_kld is None):
        raise FormatError("--type auto needs exactly one of --target-bpw and --max-kld")
    if max_kld is not None and not (_is_number(max_kld) and max_kld > 0):
        raise FormatError(f"--max-kld {max_kld}: expected a KL divergence above 0")
    if eval_ctx is not None and not (eval_texts or eval_tasks):
        raise FormatError(f"--eval-ctx {eval_ctx} needs --eval-text or --eval-tasks (the data it windows)")
    eval_ctx = DEFAULT_EVAL_CTX if eval_ctx is None else eval_ctx
    if eval_ctx < 8:
        raise FormatError(f"--eval-ctx {eval_ctx}: expected at least 8 tokens per window")
    if analysis is not None and sensitivity is not None:
        raise FormatError(f"--sensitivity {sensitivity}: an analysis is given already")
    shapes = model_shapes(model)
    texts = []
    for path in eval_texts:
        text = text_files.load_text(Path(path))
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        texts.append(text_files.EvalText(Path(path).name, Path(path), text, digest))
    tasks = [(Path(p), [t for items in load_task_files(Path(p)).values() for t in items]) for p in eval_tasks]
    if sensitivity is not None:
        analysis = read_sensitivity(sensitivity)
    if analysis is not None:
        check_analysis(analysis, shapes, model, sensitivity or "the analysis")
    if target_bpw is not None:
        check_target_bpw(target_bpw, shapes, analysis["types"] if analysis is not None else DEFAULT_TYPES)
    return AutoInputs(target_bpw, max_kld, analysis, texts, tasks, eval_ctx)


# ---------------------------------------------------------------- the greedy knapsack


def group_coefficients(analysis: dict) -> dict[str, float]:
    """tensor -> c (KLD per unit of weighted error) from the group trials, 1.0 without them."""
    coef = {name: 1.0 for name in analysis["tensors"]}
    for g in analysis.get("groups", []):
        errs = {
            n: min(analysis["tensors"][n]["options"].values(), key=lambda o: o["bytes"])["error"] for n in g["tensors"]
        }
        total = sum(errs.values())
        for n in g["tensors"]:
            coef[n] = g["kld"] / total if total > 0 else 0.0
    return coef


@dataclass(frozen=True)
class Step:
    """One upgrade on the greedy path, and the whole file after it."""

    tensor: str
    type_name: str
    nbytes: int
    predicted_kld: float


class Knapsack:
    """The greedy knapsack over one analysis: from every tensor at its cheapest option, the path of upgrades, each
    the largest predicted KLD drop per byte that still fits the budget."""

    def __init__(self, analysis: dict):
        self.analysis = analysis
        self.coef = group_coefficients(analysis)
        self.options = {
            n: sorted(e["options"].items(), key=lambda kv: kv[1]["bytes"]) for n, e in analysis["tensors"].items()
        }
        self.start_bytes = analysis["fixed_bytes"] + sum(opts[0][1]["bytes"] for opts in self.options.values())
        self.start_kld = sum(self.coef[n] * opts[0][1]["error"] for n, opts in self.options.items())

    def path(self, budget: float = math.inf) -> Iterator[Step]:
        level = dict.fromkeys(self.options, 0)
        nbytes, predicted = self.start_bytes, self.start_kld

        def best(n: str):
            """(KLD drop per byte, level, extra bytes, KLD drop) of n's best upgrade that fits, first on ties."""
            opts, found = self.options[n], None
            cur = opts[level[n]][1]
            for j in range(level[n] + 1, len(opts)):
                cand = opts[j][1]
                extra, gain = cand["bytes"] - cur["bytes"], self.coef[n] * (cur["error"] - cand["error"])
                if extra <= 0 or gain <= 0 or nbytes + extra > budget:
                    continue
                if found is None or gain / extra > found[0]:
                    found = (gain / extra, j, extra, gain)
            return found

        # Each tensor's best upgrade changes only when the tensor moves or that upgrade stops fitting (what fits
        # only shrinks), so one pass over the tensors per step finds the step a full scan would.
        cached = {n: best(n) for n in self.options}
        while True:
            pick = None
            for n in self.options:
                if cached[n] is not None and nbytes + cached[n][2] > budget:
                    cached[n] = best(n)
                if cached[n] is not None and (pick is None or cached[n][0] > cached[pick][0]):
                    pick = n
            if pick is None:
                return
            _, j, extra, gain = cached[pick]
            level[pick], nbytes, predicted = j, nbytes + extra, predicted - gain
            cached[pick] = best(pick)
            yield Step(pick, self.options[pick][j][0], nbytes, predicted)

    def choice(self, steps: list[Step], k: int) -> AutoChoice:
        """The mixture after the first k steps."""
        types = {n: opts[0][0] for n, opts in self.options.items()}
        for step in steps[:k]:
            types[step.tensor] = step.type_name
        nbytes, predicted = (
            (steps[k - 1].nbytes, steps[k - 1].predicted_kld) if k else (self.start_bytes, self.start_kld)
        )
        counts: dict[str, int] = {}
        for n, t in types.items():
            counts[t] = counts.get(t, 0) + int(np.prod(self.analysis["tensors"][n]["shape"]))
        base = BASE_FOR_TYPE.get(max(counts, key=counts.get), "q8_0")
        return AutoChoice(types, int(nbytes), 8 * nbytes / self.analysis["n_elements"], float(predicted), base)


def choose_types(analysis: dict, target_bpw: float | None = None, max_kld: float | None = None) -> AutoChoice:
    if (target_bpw is None) == (max_kld is None):
        raise FormatError("--type auto needs exactly one of --target-bpw and --max-kld")
    knapsack = Knapsack(analysis)
    budget = target_bpw * analysis["n_elements"] / 8 if target_bpw is not None else math.inf
    if knapsack.start_bytes > budget:
        smallest = 8 * knapsack.start_bytes / analysis["n_elements"]
        raise FormatError(
            f"--target-bpw {target_bpw}: the cheapest candidate types already need {smallest:.3f} bits per weight"
        )
    steps: list[Step] = []
    if max_kld is None or knapsack.start_kld > max_kld:
        for step in knapsack.path(budget):
            steps.append(step)
            if max_kld is not None and step.predicted_kld <= max_kld:
                break
    return knapsack.choice(steps, len(steps))


def search_measured(
    analysis: dict, max_kld: float, measure: Callable[[AutoChoice], float], log=None
) -> tuple[AutoChoice, float]:
    """The smallest mixture on the greedy path (no budget) whose measure(choice) is under max_kld, found as the
    module's docstring says; (choice, its measured KLD). The mixture the prediction names is measured first."""
    knapsack = Knapsack(analysis)
    steps = list(knapsack.path())
    sizes = [knapsack.start_bytes] + [s.nbytes for s in steps]
    last = len(steps)
    predicted = [knapsack.start_kld] + [s.predicted_kld for s in steps]
    start = next((k for k in range(last + 1) if predicted[k] <= max_kld), last)
    measured: dict[int, float] = {}

    def at(k: int) -> float:
        measured[k] = measure(knapsack.choice(steps, k))
        if log:
            log(f"--type auto: {8 * sizes[k] / analysis['n_elements']:.3f} bits per weight measures KLD "
                f"{measured[k]:.4f} (predicted {predicted[k]:.4f}, bound {max_kld})")  # fmt: skip
        return measured[k]

    if at(start) <= max_kld:
        good, bad = start, -1  # -1: below the cheapest mixture, not measured
    elif start == last or at(last) > max_kld:
        raise FormatError(
            f"--max-kld {max_kld}: the largest mixture of the candidate types measures KLD {measured[last]:.4f} on "
            "the evaluation data"
        )
    else:
        good, bad = last, start
    while good - bad > 1 and len(measured) < MAX_MEASUREMENTS:
        low = sizes[max(bad, 0)]
        if sizes[good] - low <= BYTES_TOLERANCE * sizes[good]:
            break
        k = max(bad + 1, bisect.bisect_right(sizes, (low + sizes[good]) / 2, bad + 1, good) - 1)
        if at(k) <= max_kld:
            good = k
        else:
            bad = k
    return knapsack.choice(steps, good), measured[good]


# ---------------------------------------------------------------- measuring a file's KLD


@dataclass
class Piece:
    """One forward pass of a measurement: a text window scored from position `first` on (texts.scored_logits), or a
    prompt or held-out window scored at every position (first None)."""

    tokens: list[int]
    first: int | None = None

    def logits(self, runner) -> np.ndarray:
        from qconv.converter.quality import texts

        return (
            runner.logits(self.tokens) if self.first is None else texts.scored_logits(runner, self.tokens, self.first)
        )


@dataclass
class KldSource:
    """One file of the user's data (or the built-in held-out text): its pieces and how many positions they score."""

    name: str
    pieces: list[Piece]
    tokens: int = 0


def user_sources(runner, inputs: AutoInputs) -> list[KldSource]:
    """Each --eval-text windowed as `qconv eval --text` windows it, each --eval-tasks file's prompts rendered as
    `qconv eval --tasks` renders them (chat template, special tokens); the KLD over every prompt token."""
    from qconv.converter.quality import texts as text_files
    from qconv.converter.quality.task_files import render_prompt

    sources = []
    bos = runner.bos if runner.add_bos else None
    for text in inputs.texts:
        tokens = text_files.text_tokens(runner, text, inputs.eval_ctx)
        windows = text_files.text_windows(tokens, inputs.eval_ctx, bos)
        sources.append(KldSource(str(text.path), [Piece(w, first) for w, first in windows]))
    for path, tasks in inputs.tasks:
        pieces = []
        for task in tasks:
            prompt = render_prompt(task, runner.model)
            if not 0 < len(prompt) <= inputs.eval_ctx:
                raise FormatError(
                    f"{task.source}: the prompt is {len(prompt)} tokens; expected 1 to --eval-ctx {inputs.eval_ctx}"
                )
            pieces.append(Piece(list(prompt)))
        sources.append(KldSource(str(path), pieces))
    return sources


def held_out_sources(runner, kld_tokens: int) -> list[KldSource]:
    from qconv.converter.analyze import eval_tokens

    windows = eval_tokens(runner, kld_tokens, HELD_OUT_CTX)
    return [KldSource("the built-in held-out text", [Piece(w) for w in windows])]


class KldMeasure:
    """The reference's logits of every piece, kept on disk (a long text's would not fit in memory), and the KLD of a
    candidate file against them: per source, the mean over its scored positions."""

    def __init__(self, reference: Path, ctx: int, threads: int | None, folder: Path, sources_of):
        from qconv.converter.quality.runner import Runner

        self.ctx, self.threads = ctx, threads
        runner = Runner(reference, ctx, threads)
        self.sources: list[KldSource] = sources_of(runner)
        self.ref_files: list[list[Path]] = []
        for i, source in enumerate(self.sources):
            files = []
            for j, piece in enumerate(source.pieces):
                logits = piece.logits(runner)
                source.tokens += len(logits)
                files.append(Path(folder) / f"ref-{i}-{j}.npy")
                np.save(files[-1], logits)
            self.ref_files.append(files)

    def klds(self, candidate: Path) -> list[float]:
        from qconv.converter.quality.runner import Runner
        from qconv.runtime.logit_stats import logit_stats

        runner = Runner(candidate, self.ctx, self.threads)
        out = []
        for source, files in zip(self.sources, self.ref_files):
            total = 0.0
            for piece, path in zip(source.pieces, files):
                total += float(logit_stats(np.load(path, mmap_mode="r"), piece.logits(runner)).kld.sum())
            out.append(total / source.tokens)
        return out

    def describe(self, klds: list[float]) -> str:
        """Which data a measurement is of; with several files, each one's KLD (the largest is the file's figure)."""
        if len(self.sources) == 1:
            return f"measured on {self.sources[0].name}, {self.sources[0].tokens} tokens"
        each = ", ".join(f"{s.name} {k:.4f} ({s.tokens} tokens)" for s, k in zip(self.sources, klds))
        return f"the largest measured on each of {each}"


def copy_with_metadata(src, out, metadata: dict) -> None:
    """Write the GGUF `src` to `out` with extra key/values (tensors copied as they are)."""
    import gguf

    from qconv.formats.atomic_write import AtomicFile
    from qconv.formats.gguf_read import read_gguf
    from qconv.formats.gguf_write import copy_metadata

    with read_gguf(src) as g, AtomicFile(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=g.architecture or "", endianess=gguf.GGUFEndian.LITTLE)
        copy_metadata(g, writer)
        for key, value in metadata.items():
            if isinstance(value, str):
                writer.add_string(key, value)
            else:
                writer.add_float32(key, float(value))
        for name, t in g.tensors.items():
            raw = g.tensor_data(name).view(np.uint8)
            if t.type_name in ("F32", "F16"):
                writer.add_tensor(name, raw.view(np.float32 if t.type_name == "F32" else np.float16).reshape(t.shape))
            else:  # bytes shaped (rows..., row bytes): gguf-py derives the element shape from it
                raw = raw.reshape(*t.shape[:-1], -1)
                writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType[t.type_name])
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        del writer, raw  # they hold views of the mapping, which closes when the block ends


def convert_auto(
    model, out, target_bpw: float | None = None, max_kld: float | None = None, imatrix=None,
    threads: int | None = None, analysis: dict | None = None, kld_tokens: int = 1024, log=None,
    inputs: AutoInputs | None = None, executor=None, work_dir: Path | None = None,
) -> tuple[AutoChoice, float]:  # fmt: skip
    """to-gguf --type auto: check the inputs (unless checked already: `inputs`), measure the reference on the data
    (the user's, else the built-in held-out text), analyse (unless given; its units on `executor`, None: serially),
    choose, convert, measure the file's KLD, record both. With --max-kld and the user's data the choice is measured
    (search_measured). Files are converted and measured in a temporary folder under work_dir (default: the system's;
    the analysis' units read its f32 GGUF); `out` is written only at the end, with the measurement."""
    from qconv.converter.analyze import AnalyzeOptions, analyze
    from qconv.converter.calibrate import model_gguf
    from qconv.converter.convert import ConvertOptions, convert_to_gguf
    from qconv.formats.atomic_write import check_output_file

    inputs = inputs or check_auto_inputs(model, target_bpw, max_kld, analysis=analysis)
    check_output_file(out)  # before minutes of analysis
    with tempfile.TemporaryDirectory(prefix="qconv-auto-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        f32 = model_gguf(Path(model), tmp)
        # the reference pass comes first: a text shorter than a window or a prompt longer than one stops here
        if inputs.user_data:
            data = KldMeasure(f32, inputs.eval_ctx, threads, tmp, lambda runner: user_sources(runner, inputs))
        else:
            data = KldMeasure(f32, HELD_OUT_CTX, threads, tmp, lambda runner: held_out_sources(runner, kld_tokens))
        analysis = inputs.analysis
        if analysis is None:
            options = AnalyzeOptions(imatrix=imatrix, threads=threads, max_tokens=kld_tokens, work_dir=work_dir)
            analysis = analyze(f32, options, executor=executor, log=log)

        def convert(choice: AutoChoice, path: Path) -> list[float]:
            options = ConvertOptions(
                type_name=choice.base_type, pure=True, tensor_types=choice.tensor_type_overrides(), imatrix=imatrix,
                threads=threads,
            )  # fmt: skip
            convert_to_gguf(model, path, options, progress=False)
            return data.klds(path)

        if inputs.max_kld is not None and inputs.user_data:
            kept: dict[int, tuple[Path, list[float]]] = {}  # the smallest file measured under the bound so far

            def measure(choice: AutoChoice) -> float:
                path = tmp / f"trial-{choice.nbytes}.gguf"
                klds = convert(choice, path)
                if max(klds) <= inputs.max_kld:  # smaller than the one kept: the search only moves down from a good one
                    for old, _ in kept.values():
                        old.unlink()
                    kept.clear()
                    kept[choice.nbytes] = (path, klds)
                else:
                    path.unlink()
                return max(klds)

            choice, _ = search_measured(analysis, inputs.max_kld, measure, log)
            converted, klds = kept[choice.nbytes]
        else:
            choice = choose_types(analysis, inputs.target_bpw, inputs.max_kld)
            converted = tmp / "auto.gguf"
            klds = convert(choice, converted)
        choice.measured_kld, choice.measured_on = max(klds), data.describe(klds)
        copy_with_metadata(converted, out, choice.metadata())
    if log:
        log(f"--type auto: {choice.bits_per_weight:.3f} bits per weight, predicted KLD {choice.predicted_kld:.4f}, "
            f"KLD {choice.measured_kld:.4f} {choice.measured_on}")  # fmt: skip
    return choice, choice.measured_kld
