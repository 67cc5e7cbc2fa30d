"""`qconv eval`: run a quantized GGUF and its reference through the C runtime on the held-out suites and say, per
capability, what quantization lost.

Per suite: mean and 99th-percentile KL divergence KL(P_ref || P_quant) of the next-token distribution, top-1
agreement, and the perplexity of each model on the text (ratio quant / ref). Per task suite: the accuracy of both
models' greedy continuations (maths: exact answer; json: a tool call valid against the schema; passkey: the key).
Gates (`kld=0.05,top1=0.90,task_drop=0.03`) turn the report into an exit code naming the failing suite.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qconv.converter.quality import suites as suite_table
from qconv.converter.quality.runner import Runner
from qconv.formats.errors import FormatError
from qconv.runtime.logit_stats import logit_stats

DEFAULT_CTX = 512
GATE_KEYS = {
    "kld": "mean KL divergence above",
    "kld_p99": "99th-percentile KL divergence above",
    "top1": "top-1 agreement below",
    "ppl_ratio": "perplexity ratio above",
    "task_drop": "task accuracy drop above",
}
LONG_SCORED_TOKENS = 256  # of a long-context document, the last tokens are scored (the rest only fills the cache)


# ---------------------------------------------------------------- metrics


@dataclass
class TokenStats:
    """Per scored position: KL(ref || quant), whether the argmaxes agree, and each model's NLL of the next token."""

    kld: list[np.ndarray] = field(default_factory=list)
    top1: list[np.ndarray] = field(default_factory=list)
    nll_ref: list[np.ndarray] = field(default_factory=list)
    nll_quant: list[np.ndarray] = field(default_factory=list)

    def add(self, ref_logits: np.ndarray, quant_logits: np.ndarray, next_tokens: np.ndarray) -> None:
        """Logits of the same positions from both models; next_tokens[i] follows position i (-1: none known).
        The per-row log-softmaxes run in C (qconv.runtime.logit_stats), threaded, accurate to float64's 1e-6."""
        nxt = np.asarray(next_tokens, dtype=np.int32)
        stats = logit_stats(ref_logits, quant_logits, nxt)
        known = nxt >= 0
        self.kld.append(stats.kld)
        self.top1.append(stats.argmax_ref == stats.argmax_quant)
        self.nll_ref.append(stats.nll_ref[known])
        self.nll_quant.append(stats.nll_quant[known])

    def summary(self) -> dict:
        kld = np.concatenate(self.kld) if self.kld else np.zeros(0)
        nll_r = np.concatenate(self.nll_ref) if self.nll_ref else np.zeros(0)
        nll_q = np.concatenate(self.nll_quant) if self.nll_quant else np.zeros(0)
        ppl_ref = float(np.exp(nll_r.mean())) if nll_r.size else float("nan")
        ppl_quant = float(np.exp(nll_q.mean())) if nll_q.size else float("nan")
        return {
            "tokens": int(kld.size),
            "kld_mean": float(kld.mean()),
            "kld_p99": float(np.percentile(kld, 99)),
            "kld_median": float(np.median(kld)),
            "top1": float(np.concatenate(self.top1).mean()),
            "ppl_ref": ppl_ref,
            "ppl_quant": ppl_quant,
            "ppl_ratio": ppl_quant / ppl_ref,
        }


# ---------------------------------------------------------------- gates


def parse_gates(spec: str | None) -> dict[str, float]:
    """'kld=0.05,top1=0.90,task_drop=0.03' -> {key: threshold}; unknown keys and bad numbers are user errors."""
    gates: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in GATE_KEYS:
            raise FormatError(f"--gate: unknown key '{key}' in '{item}'; valid keys: {', '.join(GATE_KEYS)}")
        try:
            gates[key] = float(value)
        except ValueError:
            raise FormatError(f"--gate: '{item}' needs a number after '=' (e.g. {key}=0.05)") from None
        if not sep:
            raise FormatError(f"--gate: '{item}' needs KEY=VALUE")
    return gates


def gate_failures(report: dict, gates: dict[str, float]) -> list[str]:
    """One line per (suite, gate) crossed: 'maths: task accuracy drop above 0.03 (0.150)'."""
    failures = []
    for s in report["suites"]:
        values = {"kld": s["kld_mean"], "kld_p99": s["kld_p99"], "top1": s["top1"], "ppl_ratio": s["ppl_ratio"]}
        task = report["tasks"].get(s["name"])
        if task is not None:
            values["task_drop"] = task["drop"]
        for key, threshold in gates.items():
            value = values.get(key)
            if value is None:
                continue
            crossed = value < threshold if key == "top1" else value > threshold
            if crossed:
                failures.append(f"{s['name']}: {GATE_KEYS[key]} {threshold:g} ({value:.4f})")
    return failures


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
        from qconv.converter.convert import convert_to_gguf

        out = workdir / "reference-f32.gguf"
        convert_to_gguf(ref, out, "f32", progress=progress)
        return out
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


# ---------------------------------------------------------------- suites and tasks


def suite_windows(runner: Runner, suite, ctx: int, max_tokens: int | None) -> list[tuple[list[int], int | None]]:
    """(tokens, score_last) per window: ctx-sized windows of the suite's text (each starting with BOS when the
    model adds one), or whole documents for long-context suites."""
    bos = runner.add_bos
    docs = suite.documents("eval")
    if suite.whole_documents:  # with max_tokens: only the documents that short (at least the shortest)
        windows = sorted((runner.tokenize(d, bos) for d in docs), key=len)
        keep = [w for w in windows if not max_tokens or len(w) <= max_tokens] or windows[:1]
        return [(w, min(LONG_SCORED_TOKENS, len(w) - 1)) for w in keep]
    stream: list[int] = []
    for doc in docs:
        stream += runner.tokenize(doc + "\n\n", False)
    if max_tokens:
        stream = stream[:max_tokens]
    bos_id = runner.bos
    width = ctx - 1 if bos else ctx
    return [(([bos_id] if bos else []) + stream[i : i + width], None) for i in range(0, len(stream), width)]


def check_answer(kind: str, continuation: str, expected: str) -> bool:
    if kind == "json":
        return suite_table.valid_tool_call(continuation) is not None
    numbers = re.findall(r"-?\d+", continuation)
    return bool(numbers) and numbers[0] == expected


def run_tasks(ref: Runner, quant: Runner, items, max_tasks: int | None, max_tokens: int | None = None) -> dict:
    """Both models' greedy answers to the items. With max_tokens, only prompts that short (at least the shortest)."""
    prompts = [ref.tokenize(item.prompt, ref.add_bos) for item in items]
    pairs = list(zip(items, prompts))
    if max_tokens:
        pairs = [p for p in pairs if len(p[1]) <= max_tokens] or sorted(pairs, key=lambda p: len(p[1]))[:1]
    pairs = pairs[:max_tasks] if max_tasks else pairs
    items = [item for item, _ in pairs]
    rows = []
    for item, tokens in pairs:
        stop = "\n"
        ref_text = ref.greedy(tokens, item.max_new_tokens, stop)
        quant_text = quant.greedy(tokens, item.max_new_tokens, stop)
        rows.append(
            {
                "expected": item.expected,
                "ref": ref_text,
                "quant": quant_text,
                "ref_ok": check_answer(item.kind, ref_text, item.expected),
                "quant_ok": check_answer(item.kind, quant_text, item.expected),
            }
        )
    n = max(1, len(rows))
    ref_acc = sum(r["ref_ok"] for r in rows) / n
    quant_acc = sum(r["quant_ok"] for r in rows) / n
    return {
        "kind": items[0].kind if items else "",
        "n": len(rows),
        "ref_accuracy": ref_acc,
        "quant_accuracy": quant_acc,
        "drop": max(0.0, ref_acc - quant_acc),
        "items": rows,
    }


def longest_input(quant: Path, chosen, options) -> int:
    """Tokens the KV cache must hold: the longest whole document or task prompt plus its answer."""
    from qconv.converter.quality.eval_onnx import metadata_gguf
    from qconv.runtime.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(metadata_gguf(quant))
    longest = 0
    for suite in chosen:
        if suite.whole_documents:
            longest = max([longest] + [len(tokenizer.encode(d)) + 1 for d in suite.documents("eval")])
        if options.tasks:
            items = suite.tasks()
            longest = max([longest] + [len(tokenizer.encode(t.prompt)) + 1 + t.max_new_tokens for t in items])
    return longest


@dataclass
class EvalOptions:
    suites: list[str] | None = None
    ctx: int = DEFAULT_CTX
    threads: int | None = None
    max_tokens: int | None = None  # per suite, for quick runs
    max_tasks: int | None = None  # per task suite
    tasks: bool = True
    layer_errors: bool = True  # per-layer weight error of the quantized file (for the report's chart)
    progress: bool = False


def chosen_suites(names: list[str] | None) -> list:
    """The named suites (all without names); an unknown name is a one-line error listing the valid ones."""
    unknown = [n for n in names or [] if n not in suite_table.SUITES]
    if unknown:
        raise FormatError(f"--suite {unknown[0]}: no such suite; the suites are {', '.join(suite_table.SUITES)}")
    return suite_table.get_suites(names or None)


def evaluate(quant: Path, ref: Path, options: EvalOptions | None = None, log=None) -> dict:
    """The report (a JSON-able dict) of QUANT (a GGUF file or a `qconv to-onnx` folder) against REF on the
    held-out suites."""
    from qconv.converter.quality.eval_onnx import is_onnx_folder, model_bytes, onnx_layer_errors, open_runner

    options = options or EvalOptions()
    quant = Path(quant)
    if not (quant.is_file() or is_onnx_folder(quant)):
        raise FormatError(f"{quant}: no such GGUF file or ONNX folder (model.onnx and genai_config.json)")
    chosen = chosen_suites(options.suites)
    say = log or (lambda msg: None)
    with tempfile.TemporaryDirectory(prefix="qconv-eval-") as tmp:
        ref_path = prepare_reference(Path(ref), Path(tmp), options.progress)
        check_compatible(quant, ref_path)
        model_ctx = max(options.ctx, longest_input(quant, chosen, options) + 8)
        ref_runner = Runner(ref_path, model_ctx, options.threads)
        quant_runner = open_runner(quant, model_ctx, options.threads)
        report = {
            "quant": str(quant),
            "reference": str(ref),
            "quant_bytes": model_bytes(quant),
            "reference_bytes": ref_path.stat().st_size,
            "ctx": options.ctx,
            "suites": [],
            "tasks": {},
            "provenance": suite_table.provenance(),
        }
        for suite in chosen:
            stats = TokenStats()
            for tokens, score_last in suite_windows(ref_runner, suite, options.ctx, options.max_tokens):
                if len(tokens) < 2:
                    continue
                r = ref_runner.logits(tokens, score_last)
                q = quant_runner.logits(tokens, score_last)
                scored = tokens[len(tokens) - len(r) :]
                next_tokens = np.array(scored[1:] + [-1], dtype=np.int64)
                stats.add(r, q, next_tokens)
                del r, q
            row = {"name": suite.name, "description": suite.description, **stats.summary()}
            report["suites"].append(row)
            say(f"{suite.name}: {row['tokens']} tokens, KLD {row['kld_mean']:.4f}, top-1 {row['top1']:.3f}")
            items = suite.tasks() if options.tasks else []
            if items:
                task = run_tasks(ref_runner, quant_runner, items, options.max_tasks, options.max_tokens)
                report["tasks"][suite.name] = task
                say(f"{suite.name} tasks: ref {task['ref_accuracy']:.2f}, quant {task['quant_accuracy']:.2f}")
        report["speed"] = {
            "ref_tokens": ref_runner.tokens,
            "ref_seconds": ref_runner.seconds,
            "quant_tokens": quant_runner.tokens,
            "quant_seconds": quant_runner.seconds,
        }
        report["overall"] = overall(report)
        if options.layer_errors:
            from qconv.converter.quality.report import layer_weight_errors

            errors = onnx_layer_errors if is_onnx_folder(quant) else layer_weight_errors
            report["layer_errors"] = errors(quant, ref_path)
    return report


def overall(report: dict) -> dict:
    rows = report["suites"]
    n = sum(r["tokens"] for r in rows) or 1
    return {
        "tokens": sum(r["tokens"] for r in rows),
        "kld_mean": sum(r["kld_mean"] * r["tokens"] for r in rows) / n,
        "top1": sum(r["top1"] * r["tokens"] for r in rows) / n,
    }
