"""qconv eval on an embedding model: the cosine and retrieval figures, their gates and the report, first on models
whose vectors the test controls (the statistics and gate logic), then on the real all-MiniLM-L6-v2 folder converted
at f32 and q4_0 through the command."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from qconv.converter.quality import embed_eval, embed_suites, run_state
from qconv.converter.quality.gates import failure_lines, gate_results, parse_gates
from qconv.converter.work.executors import Executor, SerialExecutor
from qconv.formats.errors import FormatError

DIM = 48


def schema() -> dict:
    return json.loads(resources.files("qconv.converter.quality").joinpath("report.schema.json").read_text())


def text_vector(text: str, salt: str = "") -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256((salt + text).encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM)
    return v / np.linalg.norm(v)


class FakeEmbedder:
    """An embedding model whose vectors the test sets: a fixed random unit vector per text (a query and its partner
    share theirs, up to a little noise), moved by `noise` (the candidate's error) and, for the queries in
    `misroute`, the vector of another pair (the candidate retrieves the wrong passage)."""

    def __init__(self, noise: float = 0.0, misroute: set[int] = frozenset(), salt: str = "q"):
        suite = embed_suites.retrieval_suite()
        self.base = {}
        for query, passage in zip(suite.queries, suite.passages):
            shared = text_vector(passage)
            self.base[passage] = shared
            self.base[query] = shared + 0.3 * text_vector(query, "query")
        for i in misroute:
            self.base[suite.queries[i]] = text_vector(suite.passages[(i + 1) % suite.n_queries])
        self.noise, self.salt = noise, salt
        self.n_embd = DIM
        self.is_encoder = True

    def embed(self, texts):
        out = []
        for t in texts:
            v = self.base.get(t, text_vector(t))
            out.append(v + self.noise * text_vector(t, self.salt))
        return np.array(out, dtype=np.float32)


def fake_report(tmp_path: Path, candidates: list[FakeEmbedder], names=None) -> dict:
    """A report as evaluate_embeddings builds it, with FakeEmbedders for the reference and candidates."""
    ref_file = tmp_path / "ref.gguf"
    ref_file.write_bytes(b"GGUF" + bytes(60))
    quants = []
    for i in range(len(candidates)):
        quants.append(tmp_path / f"q{i}.gguf")
        quants[-1].write_bytes(b"GGUF" + bytes(20))
    options = embed_eval_options()
    report = embed_eval.new_report(quants, ref_file, ref_file, options, {"candidates": [], "reference": {},
                                                                          "task_files": [], "texts": [], "options": {}})  # fmt: skip
    reference = FakeEmbedder()
    for suite in embed_suites.get_embed_suites(names):
        ref = embed_eval.embed_timed(reference, suite.texts, report["reference_speed"], ref_file)
        embed_eval.run_suite(suite, ref, candidates, quants, report)
    for c in report["candidates"]:
        c["overall"] = embed_eval.overall(c)
    report["complete"] = True
    return report


def embed_eval_options(**kw):
    from qconv.converter.quality.evaluate import EvalOptions

    return EvalOptions(**kw)


def with_gates(report: dict, spec: str) -> dict:
    gates = parse_gates(spec)
    report["gates"] = gates
    report["gate_failures"] = []
    for c in report["candidates"]:
        c["gate_results"] = gate_results(c, gates)
        c["gate_failures"] = failure_lines(c["gate_results"])
        report["gate_failures"] += c["gate_failures"]
    return report


# ---------------------------------------------------------------- the suites


def test_suites_are_large_distinct_and_retrieval_has_200_pairs():
    suites = {s.name: s for s in embed_suites.get_embed_suites()}
    assert list(suites) == ["prose", "code", "multilingual", "queries", "retrieval"]
    for name in ("prose", "code", "multilingual", "queries"):
        texts = suites[name].texts
        assert 40 <= len(texts) <= 60 and len(set(texts)) == len(texts), name
    retrieval = suites["retrieval"]
    assert retrieval.n_queries >= 200
    assert len(retrieval.passages) > retrieval.n_queries  # near-miss distractors in the pool
    assert len(set(retrieval.queries)) == retrieval.n_queries and len(set(retrieval.passages)) == len(
        retrieval.passages
    )
    assert retrieval.source(0) == "retrieval#q1" and retrieval.source(retrieval.n_queries) == "retrieval#p1"


# ---------------------------------------------------------------- the figures on controlled vectors


def test_cosine_row_mean_min_and_interval():
    suite = embed_suites.sentence_suite("prose")
    cos = np.full(len(suite.texts), 0.999)
    cos[7] = 0.9
    row = embed_eval.cosine_row(suite, cos)
    assert row["cos_min"] == pytest.approx(0.9) and row["worst"]["source"] == "prose#8"
    assert row["cos_mean"] == pytest.approx((0.999 * (len(cos) - 1) + 0.9) / len(cos))
    lo, hi = row["cos_mean_ci"]
    assert lo <= row["cos_mean"] <= hi and hi - lo > 0
    assert embed_eval.cosines(np.eye(2), np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx([1.0, 0.0])
    assert embed_eval.cosines(np.zeros((1, 3)), np.zeros((1, 3))) == pytest.approx([1.0])


def test_cosine_gates_fail_below_threshold_naming_suite_and_value(tmp_path):
    report = with_gates(fake_report(tmp_path, [FakeEmbedder(noise=0.05)]), "cos_min=0.9999,cos_mean=0.9")
    c = report["candidates"][0]
    rows = [r for r in c["gate_results"] if r["gate"] == "cos_min"]
    assert [r["suite"] for r in rows] == list(embed_suites.EMBED_SUITES) and not any(r["passed"] for r in rows)
    assert all(r["passed"] for r in c["gate_results"] if r["gate"] == "cos_mean")
    prose = next(r for r in c["embeddings"] if r["name"] == "prose")
    assert f"prose: worst cosine similarity below 0.9999 ({prose['cos_min']:.6f}; worst text prose#" in "\n".join(
        c["gate_failures"]
    )
    jsonschema.validate(json.loads(json.dumps(report)), schema())


def test_retrieval_drop_gate_needs_a_significant_drop(tmp_path):
    significant = with_gates(fake_report(tmp_path, [FakeEmbedder(misroute=set(range(30)))], ["retrieval"]),
                             "retrieval_drop=0.05")  # fmt: skip
    table = significant["candidates"][0]["retrieval"]["retrieval"]
    assert table["ref_accuracy"] == 1.0 and table["b"] == 30 and table["c"] == 0
    assert table["drop"] == pytest.approx(30 / table["n"]) and table["p_value"] < 1e-6
    assert (
        significant["gate_failures"]
        and "retrieval: retrieval accuracy drop above 0.05" in significant["gate_failures"][0]
    )
    # 3 queries lost: a drop of 1.5% exceeds 0.01, but 3 discordant pairs cannot be significant (p = 0.25)
    few = with_gates(fake_report(tmp_path, [FakeEmbedder(misroute={0, 1, 2})], ["retrieval"]), "retrieval_drop=0.01")
    result = few["candidates"][0]["gate_results"][0]
    assert result["value"] > 0.01 and result["passed"] and "p=0.25" in result["detail"]
    assert few["candidates"][0]["retrieval"]["retrieval"]["same_nearest"] == pytest.approx(1 - 3 / table["n"])


def test_text_gates_do_not_apply_to_embeddings_nor_cosine_gates_to_decoders(tmp_path):
    report = with_gates(fake_report(tmp_path, [FakeEmbedder(noise=0.05)], ["prose"]), "kld=0.0,task_drop=0.0")
    assert report["candidates"][0]["gate_results"] == []
    decoder = {"suites": [], "tasks": {}}
    assert gate_results(decoder, parse_gates("cos_mean=0.99,retrieval_drop=0.1")) == []


def test_table_html_junit_and_schema_of_two_candidates(tmp_path):
    from qconv.converter.quality.junit import write_junit
    from qconv.converter.quality.report import format_table, write_report

    report = with_gates(fake_report(tmp_path, [FakeEmbedder(noise=0.01), FakeEmbedder(noise=0.2, salt="x")]),
                        "cos_mean=0.99")  # fmt: skip
    jsonschema.validate(json.loads(json.dumps(report)), schema())
    table = format_table(report)
    assert "cos mean" in table and "retrieval" in table and "comparison" in table
    out = tmp_path / "out"
    written = write_report(report, out)
    assert {"cosine", "retrieval"} <= set(written)
    page = (out / "report.html").read_text()
    assert "id='embeddings-1'" in page.replace('"', "'") and "retrieval-2" in page
    write_junit(report, tmp_path / "junit.xml")
    cases = ET.parse(tmp_path / "junit.xml").getroot().findall(".//testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(cases) == 2 * len(embed_suites.EMBED_SUITES) and len(failed) == len(embed_suites.EMBED_SUITES)


def test_options_that_mean_nothing_for_an_embedding_model_are_refused():
    with pytest.raises(FormatError, match="--text: not for an embedding model"):
        embed_eval.check_options(embed_eval_options(texts=["a=b.txt"]))
    with pytest.raises(FormatError, match="--suite maths: no such suite for an embedding model"):
        embed_eval.check_options(embed_eval_options(suites=["maths"]))
    chosen = embed_eval.check_options(embed_eval_options(tasks=False))
    assert "retrieval" not in [s.name for s in chosen]


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """evaluate_embeddings with FakeEmbedders behind the files ref.gguf (the reference), q.gguf (noise 0.02) and
    r.gguf (noise 0.05); returns (run(**options), the list of files whose model was opened). The candidates are
    q.gguf unless `quants` names others."""
    from qconv.converter.quality import evaluate

    ref = tmp_path / "ref.gguf"
    ref.write_bytes(b"GGUF" + bytes(60))
    noise = {"q.gguf": 0.02, "r.gguf": 0.05}
    for name in noise:
        (tmp_path / name).write_bytes(b"GGUF" + bytes(20))
    opened = []

    def open_embedder(path, threads):
        opened.append(Path(path).name)
        return FakeEmbedder() if Path(path) == ref else FakeEmbedder(noise=noise[Path(path).name], salt=Path(path).name)

    monkeypatch.setattr(embed_eval, "open_embedder", open_embedder)
    monkeypatch.setattr(embed_eval, "_gguf_is_encoder", lambda path: True)
    monkeypatch.setattr(evaluate, "check_compatible", lambda quant, ref: None)
    monkeypatch.setattr(evaluate, "prepare_reference", lambda ref, workdir, progress=False: Path(ref))

    def run(save=None, resume=None, executor=None, quants=("q.gguf",), **kw):
        options = embed_eval_options(layer_errors=False, **kw)
        candidates = [tmp_path / name for name in quants]
        return embed_eval.evaluate_embeddings(candidates, ref, options, save=save, resume=resume, executor=executor)

    return run, opened


def test_a_killed_embedding_run_resumes_after_its_last_suite(fake_run):
    run, opened = fake_run
    fresh = run()
    saved = []

    def save_then_die(report):
        saved.append(json.loads(json.dumps(report)))
        if len(saved) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(save=save_then_die)
    partial = saved[-1]
    assert partial["complete"] is False and partial["finished"] == ["prose", "code"]
    jsonschema.validate(partial, schema())
    done = run(resume=partial)
    assert done["complete"] and done["finished"] == list(embed_suites.EMBED_SUITES)
    resumed, whole = done["candidates"][0], fresh["candidates"][0]
    assert [r["cos_mean"] for r in resumed["embeddings"]] == pytest.approx([r["cos_mean"] for r in whole["embeddings"]])
    assert resumed["retrieval"] == whole["retrieval"]
    with pytest.raises(FormatError, match="--resume: the saved run differs in its options"):
        run(resume=partial, suites=["prose"])


def test_ref_cache_keeps_the_reference_vectors(fake_run, tmp_path):
    run, opened = fake_run
    cache = tmp_path / "vectors.npz"
    first = run(ref_cache=cache, suites=["queries", "retrieval"])
    assert cache.is_file() and (tmp_path / "vectors.npz.json").is_file() and "ref.gguf" in opened
    opened.clear()
    second = run(ref_cache=cache, suites=["queries", "retrieval"])
    assert opened == ["q.gguf"]  # the reference model is not opened
    a, b = first["candidates"][0], second["candidates"][0]
    assert b["embeddings"][0]["cos_mean"] == pytest.approx(a["embeddings"][0]["cos_mean"], abs=1e-6)
    assert b["retrieval"] == a["retrieval"]
    with pytest.raises(FormatError, match="cached for suites"):
        run(ref_cache=cache, suites=["prose"])
    cache.write_bytes(cache.read_bytes()[:-10])
    with pytest.raises(FormatError, match="not the vectors file its sidecar was written with"):
        run(ref_cache=cache, suites=["queries", "retrieval"])


class UnitsHere(Executor):
    """The units one after another in this process, as the serial executor runs them, but not the serial executor:
    evaluate_embeddings runs the candidates as units, as with -j or --ray (the fake models exist only here)."""

    run = SerialExecutor.run


def as_saved(report: dict) -> dict:
    """The report as report.json holds it, less its timings."""
    from tests.converter.test_eval_units import without_seconds

    return without_seconds(json.loads(run_state.report_text(report)))


def test_candidates_as_units_give_the_same_report_and_resume_without_the_finished_ones(fake_run):
    run, opened = fake_run
    both = ("q.gguf", "r.gguf")
    whole = as_saved(run(quants=both))
    with UnitsHere(progress=False) as executor:
        assert as_saved(run(quants=both, executor=executor)) == whole
    assert [e["kind"] for e in executor.log] == ["embed_candidate"] * 2

    saved = []

    def save_then_die(report):
        saved.append(json.loads(run_state.report_text(report)))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), UnitsHere(progress=False) as executor:
        run(quants=both, executor=executor, save=save_then_die)
    partial = saved[-1]  # the first candidate's record, saved as it landed
    assert partial["complete"] is False and partial["finished"] == []
    assert [record is not None for record in partial["finished_units"]["records"]] == [True, False]
    jsonschema.validate(partial, schema())
    opened.clear()
    done = run(quants=both, resume=partial)  # no executor: the rest by units in this process
    assert opened == ["ref.gguf", "r.gguf"]  # the finished candidate is not run again
    assert as_saved(done) == whole and "finished_units" not in done


# ---------------------------------------------------------------- the real MiniLM through the command


def qconv(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from qconv.converter.cli import main; main()", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if check_rc is not None:
        assert result.returncode == check_rc, result.stderr
    return result


@pytest.fixture(scope="module")
def minilm_files(tmp_path_factory):
    from qconv.samples.minilm import cached_minilm

    folder = cached_minilm()
    out = tmp_path_factory.mktemp("minilm-eval")
    files = {"folder": folder}
    for type_name in ("f32", "q4_0", "q8_0"):
        files[type_name] = out / f"{type_name}.gguf"
        qconv("to-gguf", folder, "-o", files[type_name], "--type", type_name)
    return files


def test_minilm_q4_0_against_f32_prints_cosine_and_retrieval(minilm_files, tmp_path):
    out = tmp_path / "report"
    result = qconv("eval", minilm_files["q4_0"], "--ref", minilm_files["f32"], "-t", 2, "-q", "-o", out)
    assert "cos mean" in result.stdout and "retrieval" in result.stdout
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, schema())
    c = report["candidates"][0]
    assert [r["name"] for r in c["embeddings"]] == list(embed_suites.EMBED_SUITES)
    for row in c["embeddings"]:
        assert 0.9 < row["cos_min"] <= row["cos_mean"] < 0.9999, row  # q4_0: about 0.97 mean, 0.93 worst
    table = c["retrieval"]["retrieval"]
    assert table["ref_accuracy"] > 0.8 and abs(table["drop"]) < 0.05, table
    print(result.stdout)


def test_minilm_candidates_on_two_workers_give_the_serial_report(minilm_files, tmp_path):
    """q4_0 and q8_0 as units on -j 2 (one each, 1 thread) against the reference's vectors embedded once: the
    report of one process on 2 threads (timings aside), report.html byte for byte."""
    from tests.converter.test_eval_units import without_seconds

    args = ("eval", minilm_files["q4_0"], minilm_files["q8_0"], "--ref", minilm_files["f32"], "--suite", "queries",
            "--suite", "retrieval", "-q")  # fmt: skip
    serial, pool, log = tmp_path / "serial", tmp_path / "pool", tmp_path / "units.jsonl"
    qconv(*args, "-t", 2, "-o", serial)
    pooled = qconv(*args, "-j", 2, "-o", pool, "--units-log", log)
    assert pooled.stderr == ""  # no leaked semaphores at exit either
    expected = without_seconds(json.loads((serial / "report.json").read_text()))
    assert without_seconds(json.loads((pool / "report.json").read_text())) == expected
    assert (pool / "report.html").read_bytes() == (serial / "report.html").read_bytes()
    q4, q8 = expected["candidates"]
    assert q4["overall"]["cos_mean"] < q8["overall"]["cos_mean"] < 1.0 and set(q4["retrieval"]) == {"retrieval"}
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["key"] for e in entries] == [str(minilm_files["q4_0"]), str(minilm_files["q8_0"])]
    assert {e["kind"] for e in entries} == {"embed_candidate"} and len({e["where"]["pid"] for e in entries}) == 2


def test_minilm_cosine_gates_exit_codes(minilm_files, tmp_path):
    failed = qconv("eval", minilm_files["q4_0"], "--ref", minilm_files["f32"], "-t", 2, "-q", "--suite", "prose",
                   "--gate", "cos_min=0.9999,cos_mean=0.9", check_rc=2)  # fmt: skip
    assert "prose: worst cosine similarity below 0.9999 (0.9" in failed.stderr
    assert "mean cosine" not in failed.stderr
    qconv("eval", minilm_files["q4_0"], "--ref", minilm_files["f32"], "-t", 2, "-q", "--suite", "prose",
          "--gate", "cos_mean=0.9,retrieval_drop=0.1", check_rc=0)  # fmt: skip
    refused = qconv("eval", minilm_files["q4_0"], "--ref", minilm_files["f32"], "--text", "x=y.txt", check_rc=1)
    assert "--text: not for an embedding model" in refused.stderr and "Traceback" not in refused.stderr


def test_minilm_hf_reference_and_ref_cache(minilm_files, tmp_path):
    """The HF folder as --ref is converted to f32 first; --ref-cache keeps its vectors and a second run reads them
    (same figures, no reference run)."""
    cache = tmp_path / "ref.npz"
    args = ("eval", minilm_files["q4_0"], "--ref", minilm_files["folder"], "-t", 2, "--suite", "queries", "--json")
    first = qconv(*args, "--ref-cache", cache)
    second = qconv(*args, "--ref-cache", cache)
    assert "from the cache" in second.stderr
    a, b = (json.loads(r.stdout)["candidates"][0]["embeddings"][0] for r in (first, second))
    assert b["cos_mean"] == pytest.approx(a["cos_mean"], abs=1e-6)


def test_minilm_onnx_encoder_folder_as_candidate(minilm_files, tmp_path):
    """A `qconv to-onnx` encoder folder is measured like a GGUF candidate (ONNX Runtime embeds its texts)."""
    folder = tmp_path / "onnx4"
    qconv("to-onnx", minilm_files["folder"], "-o", folder, "--bits", "4", "--no-calibrate", "-t", 2)
    result = qconv("eval", folder, "--ref", minilm_files["f32"], "-t", 2, "-q", "--suite", "queries", "--json")
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    row = report["candidates"][0]["embeddings"][0]
    assert row["name"] == "queries" and 0.9 < row["cos_min"] <= row["cos_mean"] < 1.0, row
    onnx_bytes = sum(p.stat().st_size for p in (folder / "onnx").iterdir())
    assert report["candidates"][0]["quant_bytes"] == onnx_bytes > 10 << 20  # the weights, not the folder entry
