"""The eval report people look at: report.json (every number), report.html (tables and PNG charts beside it) and a
plain-text table for the terminal.

Charts: per-suite bars quant vs reference (perplexity, task accuracy), per-suite KL divergence, and a per-layer
chart of each matmul's weight error in the quantized file (relative RMSE against the reference's weights).
"""

from __future__ import annotations

import html
import json
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


def format_table(report: dict) -> str:
    lines = [
        f"{'suite':<14}{'tokens':>8}{'KLD mean':>10}{'KLD p99':>10}{'top-1':>8}{'PPL ref':>10}{'PPL quant':>11}{'ratio':>8}"
    ]
    for s in report["suites"]:
        lines.append(
            f"{s['name']:<14}{s['tokens']:>8}{s['kld_mean']:>10.4f}{s['kld_p99']:>10.4f}{s['top1']:>8.3f}"
            f"{s['ppl_ref']:>10.3f}{s['ppl_quant']:>11.3f}{s['ppl_ratio']:>8.3f}"
        )
    if report.get("tasks"):
        lines += ["", f"{'task':<14}{'kind':<9}{'n':>4}{'ref acc':>9}{'quant acc':>11}{'drop':>7}"]
        for name, t in report["tasks"].items():
            lines.append(
                f"{name:<14}{t['kind']:<9}{t['n']:>4}{t['ref_accuracy']:>9.3f}{t['quant_accuracy']:>11.3f}{t['drop']:>7.3f}"
            )
    if report.get("gate_failures"):
        lines += ["", "gates failed:"] + [f"  {f}" for f in report["gate_failures"]]
    return "\n".join(lines)


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


def _grouped_bars(ax, labels, ref_values, quant_values, ylabel, title):
    x = np.arange(len(labels))
    ax.bar(x - 0.2, ref_values, 0.4, label="reference", color="#4c72b0")
    ax.bar(x + 0.2, quant_values, 0.4, label="quantized", color="#dd8452")
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


def write_charts(report: dict, out_dir: Path) -> dict[str, str]:
    """PNG charts beside the HTML; returns chart id -> file name."""
    charts = {}
    names = [s["name"] for s in report["suites"]]
    if names:
        plt, fig, ax = _figure()
        _grouped_bars(
            ax, names, [s["ppl_ref"] for s in report["suites"]], [s["ppl_quant"] for s in report["suites"]],
            "perplexity", "Perplexity per suite",
        )  # fmt: skip
        charts["perplexity"] = _save(plt, fig, out_dir / "perplexity.png")
        plt, fig, ax = _figure()
        ax.bar(names, [s["kld_mean"] for s in report["suites"]], color="#c44e52", label="mean")
        ax.plot(names, [s["kld_p99"] for s in report["suites"]], "k^", label="99th percentile")
        ax.set_yscale("log")
        ax.set_ylabel("KL divergence (nats)")
        ax.set_title("KL divergence to the reference per suite")
        ax.legend()
        charts["kld"] = _save(plt, fig, out_dir / "kld.png")
    if report.get("tasks"):
        tasks = report["tasks"]
        plt, fig, ax = _figure()
        _grouped_bars(
            ax, list(tasks), [t["ref_accuracy"] for t in tasks.values()], [t["quant_accuracy"] for t in tasks.values()],
            "accuracy", "Task accuracy (greedy)",
        )  # fmt: skip
        ax.set_ylim(0, 1.05)
        charts["tasks"] = _save(plt, fig, out_dir / "tasks.png")
    layers = report.get("layer_errors")
    if layers:
        plt, fig, ax = _figure()
        for role, by_layer in sorted(layers.items()):
            xs = sorted(int(k) for k in by_layer)
            ax.plot(xs, [by_layer[str(k)] for k in xs], marker=".", label=role)
        ax.set_xlabel("layer")
        ax.set_ylabel("relative weight RMSE")
        ax.set_title("Per-layer weight error of the quantized file")
        ax.legend(fontsize="small", ncol=4)
        charts["layers"] = _save(plt, fig, out_dir / "layers.png")
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


SUITE_COLUMNS = ("tokens", "kld_mean", "kld_p99", "top1", "ppl_ref", "ppl_quant", "ppl_ratio")
TASK_COLUMNS = ("kind", "n", "ref_accuracy", "quant_accuracy", "drop")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_html(report: dict, charts: dict[str, str]) -> str:
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qconv eval</title><style>{CSS}</style></head><body>",
        "<h1>qconv eval</h1>",
        f"<p>quantized: <code>{html.escape(report['quant'])}</code> ({report['quant_bytes']:,} bytes); reference: "
        f"<code>{html.escape(report['reference'])}</code>; context {report['ctx']}; Python "
        f"{html.escape(report['provenance']['python_version'])}</p>",
    ]
    if report.get("gate_failures"):
        items = "".join(f"<li>{html.escape(f)}</li>" for f in report["gate_failures"])
        parts.append(f'<h2 class="fail">Gates failed</h2><ul id="gate-failures" class="fail">{items}</ul>')
    parts.append("<h2>Per suite</h2>")
    parts.append(
        _table("suites", ["suite", *SUITE_COLUMNS], [[s["name"], *(_cell(s[c]) for c in SUITE_COLUMNS)] for s in report["suites"]])
    )  # fmt: skip
    if report.get("tasks"):
        parts.append("<h2>Tasks</h2>")
        parts.append(
            _table("tasks", ["suite", *TASK_COLUMNS], [[n, *(_cell(t[c]) for c in TASK_COLUMNS)] for n, t in report["tasks"].items()])
        )  # fmt: skip
    titles = {"perplexity": "Perplexity", "kld": "KL divergence", "tasks": "Tasks", "layers": "Per-layer weight error",
              "sensitivity": "Sensitivity"}  # fmt: skip
    for key, name in charts.items():
        parts.append(f"<h2>{titles.get(key, key)}</h2><img id='chart-{key}' src='{html.escape(name)}' alt='{key}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json, report.html and the PNG charts into out_dir; returns what was written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    charts = write_charts(report, out_dir)
    (out_dir / "report.html").write_text(render_html(report, charts), encoding="utf-8")
    return {
        "json": out_dir / "report.json",
        "html": out_dir / "report.html",
        **{k: out_dir / v for k, v in charts.items()},
    }
