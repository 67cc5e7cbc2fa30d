"""`qconv analyze`: how sensitive each tensor is to quantization.

Two measures:
- per tensor and candidate type, the importance-weighted relative error of its weights,
  sum_j w_j (W - Q(W))_ij^2 / sum_j w_j W_ij^2, with w the imatrix's E[x^2] per input column (1 without one);
- per tensor group (role x layer band, and the output head), the KL divergence to the unquantized model when only
  that group is quantized (to the cheapest candidate type), measured through the C runtime on held-out text.
The second calibrates the first: auto_types assumes a group's KLD grows in proportion to its tensors' errors.

Both are units of work (converter/work): a "tensor_errors" unit per tensor and a "group_kld" unit per group, run by
whichever executor the caller gives (serial, a local process pool, Ray). The reference's logits of the held-out
windows are computed once, here, and shared with every group_kld unit. A unit's record depends only on its inputs,
and the merge is in a fixed order (tensors in the source's order; groups by KLD, ties by name), so the report is the
same, bit for bit, on every executor.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qconv.converter.plan import T, fit_row, role_of, row_bytes
from qconv.converter.work.units import Unit, register
from qconv.formats.errors import FormatError

DEFAULT_TYPES = ("q2_k", "q3_k", "q4_0", "iq4_nl", "q4_1", "q4_k", "q5_0", "q5_1", "q5_k", "q6_k", "q8_0")
CHOOSABLE_ROLES = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "output",
    "token_embd",
)


@dataclass
class AnalyzeOptions:
    imatrix: Path | None = None
    types: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))
    ctx: int = 256
    max_tokens: int = 1024  # scored per KLD trial
    bands: int = 3  # layer bands per role
    kld: bool = True
    threads: int | None = None  # the driver's (the f32 conversion, the reference pass) and a serial run's units
    work_dir: Path | None = None  # where the f32 GGUF of an HF folder goes (a Ray cluster's nodes must see it)


# the analysis' shared inputs (executor.share), by name
SHARED_MODEL = "analyze.model"  # the f32/f16/bf16 GGUF every unit reads
SHARED_IMATRIX = "analyze.imatrix"  # the file, which the trial conversions read
SHARED_IMPORTANCE = "analyze.importance"  # tensor -> its E[x^2] per column from the imatrix (or None)
SHARED_REFERENCE = "analyze.reference_logits"  # the reference's logits of every held-out window, one after another


def ggml_type(name: str) -> T:
    try:
        return T[name.upper()]
    except KeyError:
        raise FormatError(f"unknown tensor type '{name}'") from None


def choosable(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and name.endswith(".weight") and role_of(name) in CHOOSABLE_ROLES


def weighted_error(weights: np.ndarray, decoded: np.ndarray, importance: np.ndarray | None) -> float:
    w = np.ones(weights.shape[-1]) if importance is None else importance.astype(np.float64)
    diff = (weights.astype(np.float64) - decoded) ** 2
    return float((diff * w).sum() / max((weights.astype(np.float64) ** 2 * w).sum(), 1e-30))


def tensor_options(weights: np.ndarray, width: int, importance, types: list[str], threads: int | None) -> dict:
    """{type: {"bytes", "error"}} of one tensor's weights (rows of `width`) over the candidate types, each after
    llama.cpp's row fallback (so a 576-wide q2_k is the q4_0 it becomes)."""
    from qconv.runtime import quants

    options = {}
    for t in (ggml_type(name) for name in types):
        effective, _ = fit_row(t, width)
        key = effective.name.lower()
        if key in options or effective in (T.F16, T.F32):
            continue
        blocks = quants.quantize(weights, effective.name, importance=importance, threads=threads)
        decoded = quants.dequantize(blocks, effective.name, weights.shape, threads=threads)
        nbytes = row_bytes(effective, width) * weights.shape[0]
        options[key] = {"bytes": nbytes, "error": weighted_error(weights, decoded, importance)}
    return options


@register("tensor_errors")
def tensor_errors_unit(args: dict, shared) -> dict:
    """One tensor of the shared source GGUF, read from where the driver found it (`offset`, `nbytes`, `type`, `shape`:
    no unit parses the file's header again): {"shape", "role", "layer", "options"} (tensor_options)."""
    from qconv.runtime import quants

    name, shape = args["tensor"], tuple(args["shape"])
    raw = np.fromfile(shared.get(args["source"]), dtype=np.uint8, count=args["nbytes"], offset=args["offset"])
    if raw.size != args["nbytes"]:
        raise FormatError(f"{shared.get(args['source'])}: tensor '{name}' is cut short ({raw.size} of its "
                          f"{args['nbytes']} bytes)")  # fmt: skip
    weights = raw.view(np.float32) if args["type"] == "F32" else quants.dequantize(raw, args["type"], shape)
    weights = weights.reshape(-1, shape[-1])
    importance = shared.get(args["importance"]).get(name) if args["importance"] else None
    options = tensor_options(weights, shape[-1], importance, args["types"], shared.threads)
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    return {"shape": list(shape), "role": role_of(name), "layer": layer, "options": options}


def groups_of(errors: dict[str, dict], n_layers: int, bands: int) -> dict[str, list[str]]:
    """role@layers a-b -> tensor names; the head (output, or the tied token_embd) is its own group."""
    groups: dict[str, list[str]] = {}
    bands = max(1, min(bands, n_layers))
    for name, e in errors.items():
        if e["layer"] < 0:
            groups.setdefault(e["role"], []).append(name)
            continue
        band = e["layer"] * bands // n_layers
        lo, hi = -(-band * n_layers // bands), -(-(band + 1) * n_layers // bands) - 1
        groups.setdefault(f"{e['role']}@{lo}-{hi}", []).append(name)
    return groups


def cheapest(options: dict[str, dict]) -> str:
    return min(options, key=lambda k: options[k]["bytes"])


def eval_tokens(runner, max_tokens: int, ctx: int) -> list[list[int]]:
    """Held-out windows for the KLD trials: a slice of every evaluation suite but long context, interleaved."""
    from qconv.converter.quality.suites import get_suites

    streams = []
    for suite in get_suites():
        if suite.whole_documents:
            continue
        tokens = []
        for doc in suite.documents("eval"):
            tokens += runner.tokenize(doc, False)
        streams.append(tokens)
    per_suite = max(ctx, max_tokens // max(1, len(streams)))
    width = ctx - 1 if runner.add_bos else ctx
    windows = []
    for tokens in streams:
        for start in range(0, min(per_suite, len(tokens)), width):
            piece = tokens[start : start + width]
            windows.append(([runner.bos] if runner.add_bos else []) + piece)
    return windows[: max(1, -(-max_tokens // width))]


def measure_kld(ref_logits: np.ndarray, runner, windows: list[list[int]]) -> float:
    """Mean KL(reference || runner's model) over every position of the windows; ref_logits holds the reference's
    logits of all the windows' positions, one window after the other."""
    from qconv.converter.quality.token_stats import TokenStats

    stats = TokenStats()
    start = 0
    for tokens in windows:
        ref = ref_logits[start : start + len(tokens)]
        start += len(tokens)
        stats.add(ref, runner.logits(tokens), np.full(len(tokens), -1))
    return float(np.concatenate(stats.kld).mean())


@register("group_kld")
def group_kld_unit(args: dict, shared) -> dict:
    """One group trial: the shared model GGUF converted with this group's overrides (the rest f32) into a temp folder
    of the unit's own, then its KLD to the shared reference logits over the held-out windows. {"kld"}."""
    from qconv.converter.convert import ConvertOptions, convert_to_gguf
    from qconv.converter.quality.runner import Runner

    imatrix = shared.get(args["imatrix"]) if args["imatrix"] else None
    options = ConvertOptions(
        type_name="q8_0", pure=True, tensor_types=tuple(args["overrides"]), imatrix=imatrix, threads=shared.threads
    )
    with tempfile.TemporaryDirectory(prefix="qconv-group-kld-") as tmp:
        trial = Path(tmp) / "trial.gguf"
        convert_to_gguf(shared.get(args["model"]), trial, options, progress=False)
        runner = Runner(trial, args["ctx"], shared.threads)
        kld = measure_kld(shared.get(args["reference_logits"]), runner, args["windows"])
        del runner  # the model's mapping of the trial file, before the folder goes
    return {"kld": kld}


def tensor_errors(executor, tensors: list, importance: bool, options: AnalyzeOptions, log=None) -> dict[str, dict]:
    """{tensor: {"shape", "role", "layer", "options": {type: {"bytes", "error"}}}}, one tensor_errors unit per
    tensor (gguf_read.GGUFTensor of the shared source), in the source's order."""
    units = [
        Unit("tensor_errors", t.name, {
            "source": SHARED_MODEL, "tensor": t.name, "type": t.type_name, "shape": list(t.shape), "offset": t.offset,
            "nbytes": t.nbytes, "types": list(options.types), "importance": SHARED_IMPORTANCE if importance else None,
        })
        for t in tensors
    ]  # fmt: skip
    errors = dict(zip((t.name for t in tensors), executor.run(units, "tensor errors")))
    if log:
        for name, e in errors.items():
            log(f"{name}: " + ", ".join(f"{k} {v['error']:.2e}" for k, v in e["options"].items()))
    return errors


def group_klds(executor, model_gguf: Path, n_layers: int, errors, options: AnalyzeOptions, log=None) -> list[dict]:
    """For each group: quantize it alone (cheapest candidate), keep the rest f32, measure KLD to the f32 model; one
    group_kld unit per group, over the reference logits computed here once and shared. Ranked by KLD, largest
    first (ties by group name)."""
    from qconv.converter.quality.runner import Runner

    groups = groups_of(errors, n_layers, options.bands)
    ref = Runner(model_gguf, options.ctx, options.threads)
    windows = eval_tokens(ref, options.max_tokens, options.ctx)
    reference, start = None, 0  # every window's logits, one after the other (no list of copies to concatenate)
    for tokens in windows:
        logits = ref.logits(tokens)
        if reference is None:
            reference = np.empty((sum(len(w) for w in windows), logits.shape[1]), dtype=np.float32)
        reference[start : start + len(tokens)] = logits
        start += len(tokens)
    del ref
    executor.share(SHARED_REFERENCE, reference)
    units = []
    for group, names in groups.items():
        overrides = [f"^{re.escape(n)}$={cheapest(errors[n]['options'])}" for n in names] + [".*=f32"]
        units.append(Unit("group_kld", group, {
            "model": SHARED_MODEL, "overrides": overrides, "windows": windows, "ctx": options.ctx,
            "imatrix": SHARED_IMATRIX if options.imatrix else None, "reference_logits": SHARED_REFERENCE,
        }))  # fmt: skip
    results = []
    for (group, names), record in zip(groups.items(), executor.run(units, "group KLD trials")):
        types = sorted({cheapest(errors[n]["options"]) for n in names})
        saved = sum(
            4 * np.prod(errors[n]["shape"]) - errors[n]["options"][cheapest(errors[n]["options"])]["bytes"]
            for n in names
        )
        results.append({"group": group, "tensors": names, "types": types, "kld": record["kld"],
                        "bytes_saved": int(saved)})  # fmt: skip
        if log:
            log(f"{group}: {len(names)} tensors at {'/'.join(types)} -> KLD {record['kld']:.5f}")
    results.sort(key=lambda r: (-r["kld"], r["group"]))
    return results


def analyze(model: Path, options: AnalyzeOptions | None = None, executor=None, log=None) -> dict:
    """The sensitivity report of MODEL (HF folder or f32/f16/bf16 GGUF), a JSON-able dict. The units run on
    `executor` (converter.work; None: serially here); the report is the same on every executor.

    An HF folder is converted to an f32 GGUF first, in a temporary folder under options.work_dir (default: the
    system's). The units read that GGUF (and the imatrix) as shared inputs: a pool's workers from the path, Ray's
    nodes through the object store when under 1 GiB, else from the path, which must then be on storage every node
    sees (the work_dir)."""
    from qconv.converter.calibrate import model_gguf
    from qconv.converter.convert import load_imatrix
    from qconv.converter.sources import open_source
    from qconv.converter.work.executors import make_executor

    options = options or AnalyzeOptions()
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(make_executor(threads=options.threads, progress=False))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="qconv-analyze-src-", dir=options.work_dir))
        gguf_path = model_gguf(Path(model), Path(tmp))
        source = open_source(gguf_path)
        try:
            shapes, n_layers = dict(source.shapes), source.n_layers
            tensors = [t for t in source.gguf.tensors.values() if choosable(t.name, t.shape)]
            imatrix = load_imatrix(options.imatrix, shapes)  # a bad imatrix stops here, before any unit
        finally:
            source.close()
        executor.share(SHARED_MODEL, Path(gguf_path).absolute())  # absolute: a Ray worker runs in a folder of its own
        if imatrix is not None:
            executor.share(SHARED_IMPORTANCE, {t.name: imatrix.mean_squares(t.name) for t in tensors})
            executor.share(SHARED_IMATRIX, Path(options.imatrix).absolute())
        errors = tensor_errors(executor, tensors, imatrix is not None, options, log)
        groups = group_klds(executor, gguf_path, n_layers, errors, options, log) if options.kld else []
    n_elements = sum(int(np.prod(s)) for s in shapes.values())
    fixed_bytes = sum(4 * int(np.prod(s)) for n, s in shapes.items() if n not in errors)
    return {
        "model": str(model),
        "imatrix": str(options.imatrix) if options.imatrix else None,
        "types": options.types,
        "n_layers": n_layers,
        "n_elements": n_elements,
        "fixed_bytes": fixed_bytes,  # tensors not chosen per type (norms: f32)
        "tensors": errors,
        "groups": groups,
        "kld_tokens": options.max_tokens if options.kld else 0,
    }


def format_analysis(result: dict) -> str:
    lines = []
    if result["groups"]:
        lines.append(f"{'group':<22}{'tensors':>8}  {'type':<10}{'KLD alone':>11}{'MiB saved':>11}")
        for g in result["groups"]:
            lines.append(
                f"{g['group']:<22}{len(g['tensors']):>8}  {'/'.join(g['types']):<10}{g['kld']:>11.5f}"
                f"{g['bytes_saved'] / 2**20:>11.2f}"
            )
        lines.append("")
    by_role: dict[str, dict[str, list[float]]] = {}
    for e in result["tensors"].values():
        for t, o in e["options"].items():
            by_role.setdefault(e["role"], {}).setdefault(t, []).append(o["error"])
    types = sorted({t for r in by_role.values() for t in r})
    lines.append(f"{'role (mean weighted error)':<28}" + "".join(f"{t:>10}" for t in types))
    for role, per_type in sorted(by_role.items()):
        cells = "".join(f"{np.mean(per_type[t]):>10.2e}" if t in per_type else f"{'-':>10}" for t in types)
        lines.append(f"{role:<28}{cells}")
    return "\n".join(lines)
