"""The gate table of `qconv eval`: what a `--gate KEY=VALUE` checks, on which suites, and when it fails.

Text gates compare a suite's point estimate with the threshold (its 95% interval is reported beside it). The task
gate is statistical: `task_drop=X` fails a suite only when the quantized model's accuracy drop exceeds X *and* the
paired exact McNemar test finds the drop significant at alpha 0.05, so that a 3-item suite missing one answer
(a "drop" of 0.333) does not fail a file, while a real collapse on 40 items does.

Embedding models (converter/quality/embed_eval.py) have their own rows: `cos_mean` and `cos_min` compare a suite's
mean and worst cosine similarity between the candidate's and the reference's vectors with the threshold (a value
below it fails), and `retrieval_drop=X` is task_drop on the retrieval suite: the share of queries whose partner
stops being the nearest passage must exceed X and be significant (exact McNemar at 0.05). A gate whose rows a run
does not have (a KLD gate on an embedding model, a cosine gate on a decoder) checks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from qconv.formats.errors import FormatError


@dataclass(frozen=True)
class Gate:
    key: str  # the --gate key
    text: str  # how a failure reads: "<suite>: <text> <threshold> (<value>)"
    metric: str  # the field of the suite row (text suites) or of the task comparison (task suites)
    fails_above: bool  # True: a value above the threshold fails; False: below
    on: str  # "text": suites scored by KL divergence; "tasks": suites of task items; "embeddings": suites of
    # vectors compared by cosine; "retrieval": retrieval suites


GATES: dict[str, Gate] = {
    g.key: g
    for g in (
        Gate("kld", "mean KL divergence above", "kld_mean", True, "text"),
        Gate("kld_p99", "99th-percentile KL divergence above", "kld_p99", True, "text"),
        Gate("top1", "top-1 agreement below", "top1", False, "text"),
        Gate("ppl_ratio", "perplexity ratio above", "ppl_ratio", True, "text"),
        Gate("task_drop", "task accuracy drop above", "drop", True, "tasks"),
        Gate("cos_mean", "mean cosine similarity below", "cos_mean", False, "embeddings"),
        Gate("cos_min", "worst cosine similarity below", "cos_min", False, "embeddings"),
        Gate("retrieval_drop", "retrieval accuracy drop above", "drop", True, "retrieval"),
    )
}


def parse_gates(spec: str | None) -> dict[str, float]:
    """'kld=0.05,top1=0.90,task_drop=0.03' -> {key: threshold}; unknown keys and bad numbers are user errors."""
    gates: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in GATES:
            raise FormatError(f"--gate: unknown key '{key}' in '{item}'; valid keys: {', '.join(GATES)}")
        try:
            gates[key] = float(value)
        except ValueError:
            raise FormatError(f"--gate: '{item}' needs a number after '=' (e.g. {key}=0.05)") from None
        if not sep:
            raise FormatError(f"--gate: '{item}' needs KEY=VALUE")
    return gates


def _task_result(gate: Gate, threshold: float, task: dict) -> dict:
    """task_drop on one task suite: the drop must exceed the threshold and be significant (exact McNemar)."""
    from qconv.converter.quality.stats import compare_tasks

    items = task["items"]
    comparison = compare_tasks([i["ref_ok"] for i in items], [i["quant_ok"] for i in items], threshold)
    notes = [f"exact McNemar p={comparison.p_value:.3g} (b={comparison.b}, c={comparison.c})"]
    if comparison.detectable is False:
        notes.append(f"too few items ({comparison.n}) to detect a drop of {threshold:g} at all; "
                     f"{comparison.min_items} needed")  # fmt: skip
    if comparison.too_hard:
        notes.append(f"too hard to measure (reference accuracy {comparison.ref_accuracy:.2f} < 0.2)")
    return {"value": comparison.drop, "passed": not comparison.fails(threshold), "detail": "; ".join(notes)}


def gate_results(candidate: dict, gates: dict[str, float]) -> list[dict]:
    """One row per (suite, gate) that applies: {suite, gate, threshold, value, passed, detail}."""
    rows = []
    for key, threshold in gates.items():
        gate = GATES[key]
        if gate.on == "text":
            for suite in candidate["suites"]:
                value = suite[gate.metric]
                crossed = value > threshold if gate.fails_above else value < threshold
                lo, hi = suite.get(f"{gate.metric}_ci") or (None, None)
                defined = lo is not None and lo == lo  # NaN, or null once read back from report.json
                detail = f"95% CI [{lo:.4g}, {hi:.4g}]" if defined else "95% CI n/a"
                rows.append({"suite": suite["name"], "gate": key, "threshold": threshold, "value": value,
                             "passed": not crossed, "detail": detail})  # fmt: skip
        elif gate.on == "embeddings":
            for suite in candidate.get("embeddings", []):
                value = suite[gate.metric]
                lo, hi = suite.get(f"{gate.metric}_ci") or (None, None)
                if lo is not None and lo == lo:
                    detail = f"95% CI [{lo:.6g}, {hi:.6g}]"
                else:
                    detail = f"worst text {suite['worst']['source']}" if gate.metric == "cos_min" else "95% CI n/a"
                rows.append({"suite": suite["name"], "gate": key, "threshold": threshold, "value": value,
                             "passed": not value < threshold, "detail": detail})  # fmt: skip
        else:
            tables = candidate["tasks"] if gate.on == "tasks" else candidate.get("retrieval", {})
            for name, task in tables.items():
                rows.append({"suite": name, "gate": key, "threshold": threshold, **_task_result(gate, threshold, task)})
    return rows


def failure_lines(results: list[dict]) -> list[str]:
    """'maths: task accuracy drop above 0.03 (0.1500; exact McNemar p=0.002 ...)' per failed row."""
    lines = []
    for r in results:
        if not r["passed"]:
            gate = GATES[r["gate"]]
            value = f"{r['value']:.6f}" if gate.on == "embeddings" else f"{r['value']:.4f}"  # cosines sit near 1
            lines.append(f"{r['suite']}: {gate.text} {r['threshold']:g} ({value}; {r['detail']})")
    return lines
