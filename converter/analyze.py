"""`qconv analyze`: how sensitive each tensor is to quantization.

Two measures:
- per tensor and candidate type, the importance-weighted relative error of its weights,
  sum_j w_j (W - Q(W))_ij^2 / sum_j w_j W_ij^2, with w the imatrix's E[x^2] per input column (1 without one);
- per tensor group (role x layer band, and the output head), the KL divergence to the unquantized model when only
  that group is quantized (to the cheapest candidate type), measured through the C runtime on held-out text.
The second calibrates the first: auto_types assumes a group's KLD grows in proportion to its tensors' errors.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qconv.converter.plan import T, fit_row, role_of, row_bytes
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
    threads: int | None = None


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


def tensor_errors(source, imatrix, types: list[str], threads: int | None, log=None) -> dict[str, dict]:
    """{tensor: {"shape", "role", "layer", "options": {type: {"bytes", "error"}}}} over the candidate types, each
    after llama.cpp's row fallback (so a 576-wide q2_k is the q4_0 it becomes)."""
    from qconv.runtime import quants

    out = {}
    wanted = [ggml_type(t) for t in types]
    for name, shape in source.shapes.items():
        if not choosable(name, shape):
            continue
        weights = source.read_f32(name).reshape(-1, shape[-1])
        importance = imatrix.mean_squares(name) if imatrix is not None else None
        options = {}
        for t in wanted:
            effective, _ = fit_row(t, shape[-1])
            key = effective.name.lower()
            if key in options or effective in (T.F16, T.F32):
                continue
            blocks = quants.quantize(weights, effective.name, importance=importance, threads=threads)
            decoded = quants.dequantize(blocks, effective.name, weights.shape, threads=threads)
            nbytes = row_bytes(effective, shape[-1]) * weights.shape[0]
            options[key] = {"bytes": nbytes, "error": weighted_error(weights, decoded, importance)}
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        out[name] = {"shape": list(shape), "role": role_of(name), "layer": layer, "options": options}
        if log:
            log(f"{name}: " + ", ".join(f"{k} {v['error']:.2e}" for k, v in options.items()))
    return out


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


def measure_kld(ref_logits: list[np.ndarray], runner, windows) -> float:
    from qconv.converter.quality.token_stats import TokenStats

    stats = TokenStats()
    for ref, tokens in zip(ref_logits, windows):
        stats.add(ref, runner.logits(tokens), np.full(len(tokens), -1))
    return float(np.concatenate(stats.kld).mean())


def group_klds(model_gguf: Path, source, errors, options: AnalyzeOptions, imatrix_path, log=None) -> list[dict]:
    """For each group: quantize it alone (cheapest candidate), keep the rest f32, measure KLD to the f32 model."""
    from qconv.converter.convert import ConvertOptions, convert_to_gguf
    from qconv.converter.quality.runner import Runner

    groups = groups_of(errors, source.n_layers, options.bands)
    ref = Runner(model_gguf, options.ctx, options.threads)
    windows = eval_tokens(ref, options.max_tokens, options.ctx)
    ref_logits = [ref.logits(w) for w in windows]
    del ref
    results = []
    with tempfile.TemporaryDirectory(prefix="qconv-analyze-") as tmp:
        trial = Path(tmp) / "trial.gguf"
        for group, names in groups.items():
            overrides = tuple(f"^{re.escape(n)}$={cheapest(errors[n]['options'])}" for n in names) + (".*=f32",)
            convert_to_gguf(
                model_gguf, trial,
                ConvertOptions(type_name="q8_0", pure=True, tensor_types=overrides, imatrix=imatrix_path,
                               threads=options.threads),
                progress=False,
            )  # fmt: skip
            runner = Runner(trial, options.ctx, options.threads)
            kld = measure_kld(ref_logits, runner, windows)
            del runner
            types = sorted({cheapest(errors[n]["options"]) for n in names})
            saved = sum(
                4 * np.prod(errors[n]["shape"]) - errors[n]["options"][cheapest(errors[n]["options"])]["bytes"]
                for n in names
            )
            results.append({"group": group, "tensors": names, "types": types, "kld": kld, "bytes_saved": int(saved)})
            if log:
                log(f"{group}: {len(names)} tensors at {'/'.join(types)} -> KLD {kld:.5f}")
    results.sort(key=lambda r: -r["kld"])
    return results


def analyze(model: Path, options: AnalyzeOptions | None = None, log=None) -> dict:
    """The sensitivity report of MODEL (HF folder or f32/f16/bf16 GGUF), a JSON-able dict."""
    from qconv.converter.calibrate import model_gguf
    from qconv.converter.convert import load_imatrix
    from qconv.converter.sources import open_source

    options = options or AnalyzeOptions()
    with tempfile.TemporaryDirectory(prefix="qconv-analyze-src-") as tmp:
        gguf_path = model_gguf(Path(model), Path(tmp))
        source = open_source(gguf_path)
        try:
            imatrix = load_imatrix(options.imatrix, source.shapes)
            errors = tensor_errors(source, imatrix, options.types, options.threads, log)
            groups = group_klds(gguf_path, source, errors, options, options.imatrix, log) if options.kld else []
            n_elements = sum(int(np.prod(s)) for s in source.shapes.values())
            fixed_bytes = sum(4 * int(np.prod(s)) for n, s in source.shapes.items() if n not in errors)
            n_layers = source.n_layers
        finally:
            source.close()
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
