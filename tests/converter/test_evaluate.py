"""qconv eval without running models: the metrics, the gates, the reference checks and the report's rendering."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import gguf
import numpy as np
import pytest

from qconv.converter.quality import evaluate as ev
from qconv.converter.quality.gates import failure_lines, gate_results, parse_gates
from qconv.converter.quality.report import CHART_DPI, CHART_SIZE, SUITE_COLUMNS, TASK_COLUMNS, write_report
from qconv.formats.errors import FormatError


def test_identical_logits_cost_nothing():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((10, 50)).astype(np.float32)
    stats = ev.TokenStats()
    stats.add(logits, logits.copy(), np.arange(10) % 50)
    s = stats.summary()
    assert s["kld_mean"] < 1e-12 and s["top1"] == 1.0 and s["ppl_ratio"] == pytest.approx(1.0)


def test_kld_matches_the_definition():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((70, 30)).astype(np.float32).astype(np.float64)  # logits arrive as float32
    quant = rng.standard_normal((70, 30)).astype(np.float32).astype(np.float64)
    stats = ev.TokenStats()
    stats.add(ref, quant, np.full(70, -1))
    p = np.exp(ref) / np.exp(ref).sum(-1, keepdims=True)
    q = np.exp(quant) / np.exp(quant).sum(-1, keepdims=True)
    expected = (p * np.log(p / q)).sum(-1)
    kld = np.concatenate(stats.kld)
    np.testing.assert_allclose(kld, expected, rtol=1e-6)
    assert stats.summary()["kld_p99"] == pytest.approx(np.percentile(expected, 99))


def test_perplexity_uses_the_next_tokens():
    ref = np.log(np.array([[0.5, 0.5], [0.25, 0.75]]))
    quant = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    stats = ev.TokenStats()
    stats.add(ref, quant, np.array([0, 1]))
    s = stats.summary()
    assert s["ppl_ref"] == pytest.approx(np.exp(-(np.log(0.5) + np.log(0.75)) / 2))
    assert s["ppl_quant"] == pytest.approx(2.0)


def test_gates_parse_and_name_the_suite():
    gates = parse_gates("kld=0.05, top1=0.90,task_drop=0.03")
    assert gates == {"kld": 0.05, "top1": 0.9, "task_drop": 0.03}
    candidate = {
        "suites": [
            {"name": "prose", "kld_mean": 0.01, "kld_p99": 0.1, "top1": 0.95, "ppl_ratio": 1.01},
            {"name": "maths", "kld_mean": 0.02, "kld_p99": 0.2, "top1": 0.85, "ppl_ratio": 1.05},
        ],
        "tasks": {"maths": {"items": task_items(40, ref_right=22, quant_right=4)}},
    }
    failures = failure_lines(gate_results(candidate, gates))
    assert len(failures) == 2 and all(f.startswith("maths:") for f in failures)
    assert "top-1 agreement below 0.9" in failures[0] and "exact McNemar p=" in failures[1]
    assert failure_lines(gate_results(candidate, {"kld": 0.5})) == []


def task_items(n: int, ref_right: int, quant_right: int) -> list[dict]:
    """n paired items: the quantized model right on the first quant_right of the reference's right ones."""
    return [{"ref_ok": i < ref_right, "quant_ok": i < min(quant_right, ref_right)} for i in range(n)]


def test_task_drop_fails_only_a_significant_drop():
    """One miss in 3 items is a 'drop' of 0.333 but no evidence; 22 -> 4 right of 40 is."""
    gates = {"task_drop": 0.10}
    small = {"suites": [], "tasks": {"passkey": {"items": task_items(3, ref_right=3, quant_right=2)}}}
    [row] = gate_results(small, gates)
    assert row["value"] == pytest.approx(1 / 3) and row["passed"]
    assert "too few items (3) to detect a drop of 0.1" in row["detail"]
    big = {"suites": [], "tasks": {"facts": {"items": task_items(40, ref_right=22, quant_right=4)}}}
    [row] = gate_results(big, gates)
    assert not row["passed"] and row["value"] == pytest.approx(18 / 40)


@pytest.mark.parametrize(
    "spec, message",
    [("kdl=0.05", "unknown key 'kdl'"), ("kld=abc", "needs a number"), ("kld", "needs a number|KEY=VALUE")],
)
def test_bad_gates_are_user_errors(spec, message):
    with pytest.raises(FormatError, match=message):
        parse_gates(spec)


def write_tiny_gguf(path: Path, arch: str = "llama", tokens=("a", "b", "c"), quantized: bool = False) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_token_list(list(tokens))
    values = np.zeros((4, 32), dtype=np.float32)
    if quantized:
        writer.add_tensor("blk.0.ffn_down.weight", gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # fmt: skip
    else:
        writer.add_tensor("blk.0.ffn_down.weight", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_reference_of_another_model_is_refused(tmp_path):
    quant = write_tiny_gguf(tmp_path / "q.gguf")
    ev.check_compatible(quant, write_tiny_gguf(tmp_path / "same.gguf"))
    with pytest.raises(FormatError, match="'qwen2' model"):
        ev.check_compatible(quant, write_tiny_gguf(tmp_path / "arch.gguf", arch="qwen2"))
    with pytest.raises(FormatError, match="vocabulary of 4 tokens"):
        ev.check_compatible(quant, write_tiny_gguf(tmp_path / "v4.gguf", tokens=("a", "b", "c", "d")))
    with pytest.raises(FormatError, match="token 1 is 'x'"):
        ev.check_compatible(quant, write_tiny_gguf(tmp_path / "vx.gguf", tokens=("a", "x", "c")))


def test_quantized_or_missing_reference_is_refused(tmp_path):
    with pytest.raises(FormatError, match="is quantized"):
        ev.prepare_reference(write_tiny_gguf(tmp_path / "q8.gguf", quantized=True), tmp_path)
    with pytest.raises(FormatError, match="no such file"):
        ev.prepare_reference(tmp_path / "missing.gguf", tmp_path)


# ---------------------------------------------------------------- the report


def sample_report() -> dict:
    rng = np.random.default_rng(3)
    suites = []
    for name in ("prose", "code", "maths"):
        kld = float(rng.uniform(0.01, 0.3))
        suites.append({
            "name": name, "description": name, "tokens": int(rng.integers(2000, 3000)), "kld_mean": kld,
            "kld_p99": kld * 8, "kld_median": kld / 2, "top1": float(rng.uniform(0.7, 0.95)),
            "ppl_ref": float(rng.uniform(5, 20)), "ppl_quant": float(rng.uniform(6, 25)), "ppl_ratio": 1.2,
            "kld_mean_ci": [kld * 0.9, kld * 1.1], "top1_ci": [0.6, 0.99], "ppl_ratio_ci": [1.1, 1.3],
        })  # fmt: skip
    tasks = {
        "maths": {"kind": "maths", "n": 20, "ref_accuracy": 0.45, "quant_accuracy": 0.3, "drop": 0.15,
                  "drop_ci": [0.01, 0.3], "p_value": 0.03, "items": []}
    }  # fmt: skip
    layers = {"attn_q": {str(i): 0.05 + 0.001 * i for i in range(30)}, "ffn_down": {str(i): 0.1 for i in range(30)}}
    candidate = {"quant": "q2_k.gguf", "quant_bytes": 1, "suites": suites, "tasks": tasks, "layer_errors": layers}
    return {
        "reference": "ref", "reference_bytes": 2, "ctx": 512, "candidates": [candidate],
        "provenance": {"python_version": "3.x"}, "gate_failures": ["maths: task accuracy drop above 0.03 (0.1500)"],
    }  # fmt: skip


class TableParser(HTMLParser):
    """Tables by id -> rows of cell texts; img src by id."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: dict[str, str] = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images[attrs["id"]] = attrs["src"]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = None


def test_html_report_shows_the_json_values_and_real_charts(tmp_path):
    from PIL import Image

    written = write_report(sample_report(), tmp_path)
    report = json.loads(written["json"].read_text())
    parser = TableParser()
    parser.feed(written["html"].read_text())
    suites_table = parser.tables["suites"]
    assert suites_table[0] == ["suite", *SUITE_COLUMNS]
    for row, suite in zip(suites_table[1:], report["candidates"][0]["suites"], strict=True):
        assert row[0] == suite["name"]
        for cell, column in zip(row[1:], SUITE_COLUMNS):
            values = suite[column] if column.endswith("_ci") else [suite[column]]
            cells = [float(v) for v in cell.strip("[]").split(",")]
            assert cells == pytest.approx(values, rel=1e-3), (suite["name"], column)
    task_row = parser.tables["tasks"][1]
    assert task_row[0] == "maths" and float(task_row[1 + TASK_COLUMNS.index("drop")]) == pytest.approx(0.15)
    assert set(parser.images) == {"chart-perplexity", "chart-kld", "chart-tasks", "chart-layers"}
    expected_size = (int(CHART_SIZE[0] * CHART_DPI), int(CHART_SIZE[1] * CHART_DPI))
    for src in parser.images.values():
        with Image.open(tmp_path / src) as img:
            img.load()
            assert img.size == expected_size
            pixels = np.asarray(img.convert("L"), dtype=np.float32)
        assert pixels.std() > 5 and (pixels < 128).mean() > 0.005, f"{src} looks blank"
    assert "task accuracy drop" in written["html"].read_text()
