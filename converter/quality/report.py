"""The eval report people look at: report.json (every number), report.html (tables and PNG charts beside it) and a
plain-text table for the terminal.

Charts: per-suite bars quant vs reference (perplexity, task accuracy), per-suite KL divergence, and a per-layer
chart of each matmul's weight error in the quantized file (relative RMSE against the reference's weights).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

CHART_SIZE = (8.0, 4.0)  # inches
CHART_DPI = 100  # -> 800 x 400 pixel PNGs


# ---------------------------------------------------------------- per-layer weight error


def layer_weight_errors(quant: Path, ref: Path) -> dict:
    """{role: {layer: relative RMSE}} of every blk.N.<role>.weight matmul: ||deq(quant) - ref|| / ||ref||."""
    from qconv.formats.gguf_read import read_gguf
    from qconv.runtime import quants

    def values(g, name):
        t = g.tensors[name]
        raw = g.tensor_data(name)
        if t.type_name == "F32":
            return raw.view(np.float32).reshape(t.shape).copy()  # a copy: the mapping closes after the loop
        return quants.dequantize(raw, t.type_name, t.shape)

    out: dict[str, dict[str, float]] = {}  # string layer keys: the same in JSON
    with read_gguf(quant) as q, read_gguf(ref) as r:
        for name, t in q.tensors.items():
            parts = name.split(".")
            if parts[0] != "blk" or len(t.shape) != 2 or name not in r.tensors:
                continue
            a, b = values(q, name), values(r, name)
            denom = float(np.sqrt((b.astype(np.float64) ** 2).mean())) or 1.0
            err = float(np.sqrt(((a.astype(np.float64) - b) ** 2).mean())) / denom
            out.setdefault(parts[2], {})[parts[1]] = err
    return out


# ---------------------------------------------------------------- text


def _ci(row: dict, key: str) -> str:
    lo, hi = row.get(f"{key}_ci") or (None, None)
    return "n/a" if _undefined(lo) else f"[{lo:.4f}, {hi:.4f}]"


def format_table(report: dict) -> str:
    """The terminal view: per candidate its suites (with 95% intervals) and task comparisons; with several
    candidates, a comparison table last."""
    lines = []
    for c in report["candidates"]:
        lines += [f"{c['quant']} ({c['quant_bytes']:,} bytes) against {report['reference']}"]
        if c["suites"]:
            lines.append(
                f"{'suite':<14}{'tokens':>8}{'KLD mean':>10}{'95% CI':>20}{'KLD p99':>10}{'top-1':>8}{'PPL ref':>10}"
                f"{'PPL quant':>11}{'ratio':>8}"
            )
            for s in c["suites"]:
                lines.append(
                    f"{s['name']:<14}{s['tokens']:>8}{s['kld_mean']:>10.4f}{_ci(s, 'kld_mean'):>20}{s['kld_p99']:>10.4f}"
                    f"{s['top1']:>8.3f}{s['ppl_ref']:>10.3f}{s['ppl_quant']:>11.3f}{s['ppl_ratio']:>8.3f}"
                )
        if c["tasks"]:
            lines += [
                "",
                f"{'task':<14}{'kind':<9}{'n':>4}{'ref acc':>9}{'quant acc':>11}{'drop':>8}{'95% CI':>18}{'p':>8}",
            ]
            for name, t in c["tasks"].items():
                lo, hi = t["drop_ci"]
                interval = "n/a" if _undefined(lo) else f"[{lo:.3f}, {hi:.3f}]"
                lines.append(
                    f"{name:<14}{t['kind']:<9}{t['n']:>4}{t['ref_accuracy']:>9.3f}{t['quant_accuracy']:>11.3f}"
                    f"{t['drop']:>8.3f}{interval:>18}{t['p_value']:>10.3g}"
                    + ("  too hard to measure" if t.get("too_hard") else "")
                )
        if c.get("embeddings"):
            lines += embedding_lines(c)
        if c.get("gate_failures"):
            lines += ["", "gates failed:"] + [f"  {f}" for f in c["gate_failures"]]
        lines.append("")
    if len(report["candidates"]) > 1:
        lines += comparison_lines(report)
    return "\n".join(lines).rstrip()


def _cos_ci(row: dict) -> str:
    lo, hi = row.get("cos_mean_ci") or (None, None)
    return "n/a" if _undefined(lo) else f"[{lo:.6f}, {hi:.6f}]"


def embedding_lines(c: dict) -> list[str]:
    """An embedding candidate's suites: cosine of its vectors to the reference's per text (mean with its 95%
    interval, 5th percentile, worst and which text), then the retrieval accuracies of both models."""
    lines = [f"{'suite':<14}{'texts':>6}{'cos mean':>11}{'95% CI':>24}{'cos p05':>10}{'cos min':>10}  worst"]
    for r in c["embeddings"]:
        lines.append(f"{r['name']:<14}{r['texts']:>6}{r['cos_mean']:>11.6f}{_cos_ci(r):>24}{r['cos_p05']:>10.6f}"
                     f"{r['cos_min']:>10.6f}  {r['worst']['source']}")  # fmt: skip
    if c.get("retrieval"):
        lines += ["", f"{'retrieval':<14}{'n':>5}{'pool':>6}{'ref acc':>9}{'quant acc':>11}{'drop':>8}{'95% CI':>18}"
                      f"{'p':>10}{'same NN':>9}"]  # fmt: skip
        for name, t in c["retrieval"].items():
            lo, hi = t["drop_ci"]
            interval = "n/a" if _undefined(lo) else f"[{lo:.3f}, {hi:.3f}]"
            lines.append(f"{name:<14}{t['n']:>5}{t['passages']:>6}{t['ref_accuracy']:>9.3f}{t['quant_accuracy']:>11.3f}"
                         f"{t['drop']:>8.3f}{interval:>18}{t['p_value']:>10.3g}{t['same_nearest']:>9.3f}")  # fmt: skip
    return lines


def comparison_rows(report: dict) -> list[dict]:
    """Per candidate: size, overall KLD and top-1, per-suite KLD and task accuracy, and whether its gates pass."""
    rows = []
    for c in report["candidates"]:
        rows.append({
            "quant": c["quant"], "bytes": c["quant_bytes"],
            "kld_mean": c.get("overall", {}).get("kld_mean", float("nan")),
            "top1": c.get("overall", {}).get("top1", float("nan")),
            "suites": {s["name"]: s["kld_mean"] for s in c["suites"]},
            "tasks": {n: t["quant_accuracy"] for n, t in c["tasks"].items()},
            "gates": "fail" if c.get("gate_failures") else "pass",
            "cos_mean": c.get("overall", {}).get("cos_mean", float("nan")),
            "cos_min": c.get("overall", {}).get("cos_min", float("nan")),
            "retrieval": {n: t["quant_accuracy"] for n, t in c.get("retrieval", {}).items()},
        })  # fmt: skip
    return rows


def comparison_lines(report: dict) -> list[str]:
    if report.get("kind") == "embedding":
        lines = ["comparison", f"{'candidate':<40}{'bytes':>14}{'cos mean':>11}{'cos min':>10}{'retrieval':>11}  gates"]
        for r in comparison_rows(report):
            accuracy = next(iter(r["retrieval"].values()), float("nan"))
            lines.append(f"{r['quant'][-40:]:<40}{r['bytes']:>14,}{r['cos_mean']:>11.6f}{r['cos_min']:>10.6f}"
                         f"{accuracy:>11.3f}  {r['gates']}")  # fmt: skip
        return lines
    lines = ["comparison", f"{'candidate':<40}{'bytes':>14}{'KLD mean':>10}{'top-1':>8}  gates"]
    for r in comparison_rows(report):
        lines.append(f"{r['quant'][-40:]:<40}{r['bytes']:>14,}{r['kld_mean']:>10.4f}{r['top1']:>8.3f}  {r['gates']}")
    return lines


# ---------------------------------------------------------------- charts


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=CHART_SIZE, dpi=CHART_DPI)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=CHART_DPI)
    plt.close(fig)
    return path.name


COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _grouped_bars(ax, labels, series: list[tuple[str, list[float]]], ylabel, title):
    """Bars per label, one bar per series (the reference first, then each candidate)."""
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series):
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=name, color=COLORS[i % len(COLORS)])
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")


def _label(candidate: dict, candidates: list[dict]) -> str:
    return "quantized" if len(candidates) == 1 else Path(candidate["quant"]).name


def _layer_chart(plt, fig, ax, layers: dict, title: str) -> None:
    for role, by_layer in sorted(layers.items()):
        xs = sorted(int(k) for k in by_layer)
        ax.plot(xs, [by_layer[str(k)] for k in xs], marker=".", label=role)
    ax.set_xlabel("layer")
    ax.set_ylabel("relative weight RMSE")
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=4)


def _size_chart(out_dir: Path, chart_id: str, points: list[tuple[int, float, str]], ylabel: str, title: str) -> str:
    plt, fig, ax = _figure()
    points = sorted(points)
    ax.plot([p[0] / 2**20 for p in points], [p[1] for p in points], "o-", color=COLORS[0])
    for size, value, name in points:
        ax.annotate(name, (size / 2**20, value), textcoords="offset points", xytext=(4, 4), fontsize="small")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(plt, fig, out_dir / f"{chart_id}.png")


def _embedding_charts(report: dict, out_dir: Path) -> dict[str, str]:
    """Per suite 1 - cosine (mean as bars, worst as ^, log scale: cosines sit near 1), and the retrieval accuracies
    of the reference and each candidate."""
    charts = {}
    candidates = report["candidates"]
    first = candidates[0]
    names = [r["name"] for r in first["embeddings"]]
    plt, fig, ax = _figure()
    distance = [(_label(c, candidates), [max(1.0 - r["cos_mean"], 1e-9) for r in c["embeddings"]]) for c in candidates]
    _grouped_bars(ax, names, distance, "1 - cosine similarity",
                  "Cosine distance to the reference's vectors per suite (mean; ^ worst text)")  # fmt: skip
    width = 0.8 / len(candidates)
    for i, c in enumerate(candidates):
        xs = np.arange(len(names)) - 0.4 + width * (i + 0.5)
        ax.plot(xs, [max(1.0 - r["cos_min"], 1e-9) for r in c["embeddings"]], "k^")
    ax.set_yscale("log")
    charts["cosine"] = _save(plt, fig, out_dir / "cosine.png")
    if first.get("retrieval"):
        tables = list(first["retrieval"])
        plt, fig, ax = _figure()
        series = [("reference", [first["retrieval"][n]["ref_accuracy"] for n in tables])]
        series += [(_label(c, candidates), [c["retrieval"][n]["quant_accuracy"] for n in tables]) for c in candidates]
        _grouped_bars(ax, tables, series, "accuracy", "Retrieval: the partner is the nearest passage")
        ax.set_ylim(0, 1.05)
        charts["retrieval"] = _save(plt, fig, out_dir / "retrieval.png")
    return charts


def write_charts(report: dict, out_dir: Path) -> dict[str, str]:
    """PNG charts beside the HTML; returns chart id -> file name. With several candidates, a size-vs-KLD chart per
    text suite and a size-vs-accuracy chart per task suite."""
    charts = {}
    candidates = report["candidates"]
    first = candidates[0]
    names = [s["name"] for s in first["suites"]]
    if names:
        plt, fig, ax = _figure()
        series = [("reference", [s["ppl_ref"] for s in first["suites"]])]
        series += [(_label(c, candidates), [s["ppl_quant"] for s in c["suites"]]) for c in candidates]
        _grouped_bars(ax, names, series, "perplexity", "Perplexity per suite")
        charts["perplexity"] = _save(plt, fig, out_dir / "perplexity.png")
        plt, fig, ax = _figure()
        _grouped_bars(ax, names, [(_label(c, candidates), [s["kld_mean"] for s in c["suites"]]) for c in candidates],
                      "KL divergence (nats)", "KL divergence to the reference per suite (mean; ^ 99th percentile)")  # fmt: skip
        width = 0.8 / len(candidates)
        for i, c in enumerate(candidates):
            xs = np.arange(len(names)) - 0.4 + width * (i + 0.5)
            ax.plot(xs, [s["kld_p99"] for s in c["suites"]], "k^")
        ax.set_yscale("log")
        charts["kld"] = _save(plt, fig, out_dir / "kld.png")
    if first["tasks"]:
        tasks = list(first["tasks"])
        plt, fig, ax = _figure()
        series = [("reference", [first["tasks"][n]["ref_accuracy"] for n in tasks])]
        series += [(_label(c, candidates), [c["tasks"][n]["quant_accuracy"] for n in tasks]) for c in candidates]
        _grouped_bars(ax, tasks, series, "accuracy", "Task accuracy (greedy)")
        ax.set_ylim(0, 1.05)
        charts["tasks"] = _save(plt, fig, out_dir / "tasks.png")
    if first.get("embeddings"):
        charts.update(_embedding_charts(report, out_dir))
    for i, c in enumerate(candidates):
        if c.get("layer_errors"):
            plt, fig, ax = _figure()
            _layer_chart(plt, fig, ax, c["layer_errors"], f"Per-layer weight error of {_label(c, candidates)}")
            key = "layers" if len(candidates) == 1 else f"layers-{i + 1}"
            charts[key] = _save(plt, fig, out_dir / f"{key}.png")
    if len(candidates) > 1:
        for name in names:
            points = [(c["quant_bytes"], next(s["kld_mean"] for s in c["suites"] if s["name"] == name),
                       Path(c["quant"]).name) for c in candidates]  # fmt: skip
            charts[f"size-kld-{name}"] = _size_chart(out_dir, f"size-kld-{name}", points, "mean KL divergence",
                                                     f"{name}: size vs KL divergence")  # fmt: skip
        for name in first["tasks"]:
            points = [(c["quant_bytes"], c["tasks"][name]["quant_accuracy"], Path(c["quant"]).name) for c in candidates]
            charts[f"size-tasks-{name}"] = _size_chart(out_dir, f"size-tasks-{name}", points, "task accuracy",
                                                       f"{name}: size vs task accuracy")  # fmt: skip
    sensitivity = report.get("sensitivity")
    if sensitivity:
        plt, fig, ax = _figure()
        groups = sensitivity[:20]
        ax.barh([g["group"] for g in groups][::-1], [g["kld"] for g in groups][::-1], color="#8172b3")
        ax.set_xlabel("KL divergence when only this group is quantized")
        ax.set_title("Most sensitive tensor groups")
        charts["sensitivity"] = _save(plt, fig, out_dir / "sensitivity.png")
    return charts


# ---------------------------------------------------------------- html

CSS = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}td.name{text-align:left}.fail{color:#b00}"


def _table(table_id: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="name">{html.escape(c)}</td>' if i == 0 else f"<td>{html.escape(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


SUITE_COLUMNS = ("tokens", "kld_mean", "kld_mean_ci", "kld_p99", "top1", "top1_ci", "ppl_ref", "ppl_quant", "ppl_ratio",
                 "ppl_ratio_ci")  # fmt: skip
TASK_COLUMNS = ("kind", "n", "ref_accuracy", "quant_accuracy", "drop", "drop_ci", "p_value")
EMBEDDING_COLUMNS = ("texts", "cos_mean", "cos_mean_ci", "cos_median", "cos_p05", "cos_min")
RETRIEVAL_COLUMNS = ("n", "passages", "ref_accuracy", "quant_accuracy", "drop", "drop_ci", "p_value", "same_nearest")


def _undefined(value) -> bool:
    """NaN in a report being written, null in one read back (report.json has no NaN)."""
    return value is None or value != value


def _cell(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return "n/a" if _undefined(value[0]) else f"[{value[0]:.4g}, {value[1]:.4g}]"
    if value is None or isinstance(value, float):
        return "n/a" if _undefined(value) else f"{value:.6g}"
    return str(value)


def _cosine_cell(value) -> str:
    """Cosines sit near 1: six decimals, where _cell's four significant digits would show 1.000 for all."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return "n/a" if _undefined(value[0]) else f"[{value[0]:.6f}, {value[1]:.6f}]"
    if isinstance(value, float):
        return "n/a" if _undefined(value) else f"{value:.6f}"
    return _cell(value)


def render_html(report: dict, charts: dict[str, str]) -> str:
    candidates = report["candidates"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qconv eval</title><style>{CSS}</style></head><body>",
        "<h1>qconv eval</h1>",
        f"<p>reference: <code>{html.escape(report['reference'])}</code>; "
        + ("embedding model (vectors compared)" if report.get("kind") == "embedding" else f"context {report['ctx']}")
        + "; Python "
        f"{html.escape(report['provenance']['python_version'])}"
        + ("" if report.get("complete", True) else "; <b>incomplete run</b>")
        + "</p>",
    ]
    if report.get("gate_failures"):
        items = "".join(f"<li>{html.escape(f)}</li>" for f in report["gate_failures"])
        parts.append(f'<h2 class="fail">Gates failed</h2><ul id="gate-failures" class="fail">{items}</ul>')
    if len(candidates) > 1 and report.get("kind") == "embedding":
        rows = [[r["quant"], _cell(r["bytes"]), _cosine_cell(r["cos_mean"]), _cosine_cell(r["cos_min"]),
                 *(_cell(v) for v in r["retrieval"].values()), r["gates"]] for r in comparison_rows(report)]  # fmt: skip
        retrieval = [f"{n} accuracy" for n in candidates[0].get("retrieval", {})]
        parts.append("<h2>Comparison</h2>")
        parts.append(_table("comparison", ["candidate", "bytes", "cos_mean", "cos_min", *retrieval, "gates"], rows))
    elif len(candidates) > 1:
        rows = [[r["quant"], _cell(r["bytes"]), _cell(r["kld_mean"]), _cell(r["top1"]), r["gates"]]
                for r in comparison_rows(report)]  # fmt: skip
        parts.append("<h2>Comparison</h2>")
        parts.append(_table("comparison", ["candidate", "bytes", "kld_mean", "top1", "gates"], rows))
    for i, c in enumerate(candidates):
        suffix = "" if len(candidates) == 1 else f"-{i + 1}"
        parts.append(
            f"<h2>{html.escape(Path(c['quant']).name)}</h2><p>quantized: <code>{html.escape(c['quant'])}</code> "
            f"({c['quant_bytes']:,} bytes)</p>"
        )
        if c["suites"]:
            parts.append(
                _table(f"suites{suffix}", ["suite", *SUITE_COLUMNS],
                       [[s["name"], *(_cell(s.get(col)) for col in SUITE_COLUMNS)] for s in c["suites"]])
            )  # fmt: skip
        if c["tasks"]:
            parts.append(
                _table(f"tasks{suffix}", ["suite", *TASK_COLUMNS],
                       [[n, *(_cell(t.get(col)) for col in TASK_COLUMNS)] for n, t in c["tasks"].items()])
            )  # fmt: skip
        if c.get("embeddings"):
            parts.append(
                _table(f"embeddings{suffix}", ["suite", *EMBEDDING_COLUMNS, "worst text"],
                       [[r["name"], *(_cosine_cell(r.get(col)) for col in EMBEDDING_COLUMNS),
                         f"{r['worst']['source']}: {r['worst']['text']}"] for r in c["embeddings"]])
            )  # fmt: skip
        if c.get("retrieval"):
            parts.append(
                _table(f"retrieval{suffix}", ["suite", *RETRIEVAL_COLUMNS],
                       [[n, *(_cell(t.get(col)) for col in RETRIEVAL_COLUMNS)] for n, t in c["retrieval"].items()])
            )  # fmt: skip
    titles = {"perplexity": "Perplexity", "kld": "KL divergence", "tasks": "Tasks", "layers": "Per-layer weight error",
              "sensitivity": "Sensitivity", "cosine": "Cosine similarity", "retrieval": "Retrieval"}  # fmt: skip
    for key, name in charts.items():
        parts.append(f"<h2>{titles.get(key, key)}</h2><img id='chart-{key}' src='{html.escape(name)}' alt='{key}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json, report.html and the PNG charts into out_dir, each file replaced whole; returns what was
    written."""
    from qconv.converter.quality.run_state import save_report
    from qconv.formats.atomic_write import AtomicFile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_report(out_dir, report)
    charts = write_charts(report, out_dir)
    with AtomicFile(out_dir / "report.html") as tmp:
        tmp.write_text(render_html(report, charts), encoding="utf-8")
    return {
        "json": out_dir / "report.json",
        "html": out_dir / "report.html",
        **{k: out_dir / v for k, v in charts.items()},
    }
