"""`qconv eval` on an embedding model (an encoder such as BERT): what quantization did to the vectors.

Per suite (converter/quality/embed_suites.py): every text embedded by the reference and by each candidate (both
through `.embed(texts)`: runtime.model.Model for a GGUF, runtime.onnx_backend.OnnxModel for a `qconv to-onnx`
encoder folder), the cosine similarity of each text's two vectors -> the suite's mean (with a 95% bootstrap
interval over texts) and its worst text. The retrieval suite also asks, per query, whether its partner is the
nearest of all passages (cosine), under the reference and under the candidate: both accuracies and the paired
comparison of the task suites (exact McNemar test, Newcombe's interval on the drop).

The report keeps the decoders' shape (schema_version 2): a candidate's `suites` and `tasks` stay empty, its
`embeddings` rows and `retrieval` tables are added; gates `cos_mean`, `cos_min` and `retrieval_drop` read them
(converter/quality/gates.py). `--ref-cache FILE` keeps the reference's vectors (an .npz, with the same sidecar
FILE.json as the decoders' cache), `--resume` continues after the last finished suite, as for decoders. With -j N or
--ray each candidate is a unit against the reference's vectors, embedded once here (converter/quality/embed_units.py):
the same report, saved after every finished candidate.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from qconv.converter.quality import embed_suites
from qconv.converter.quality.run_state import file_sha256
from qconv.formats.errors import FormatError
from qconv.runtime.onnx_backend import is_onnx_encoder_folder

CACHE_KIND = "embedding"
MAX_CACHE_BYTES = 1 << 30  # a vectors file read back: far above what the built-in suites need (about 2 MB)
# the options of `qconv eval` that mean nothing for an embedding model: refused at once, naming the flag
DECODER_ONLY_OPTIONS = (
    ("texts", "--text"),
    ("task_files", "--tasks"),
    ("long", "--long"),
    ("max_tokens", "--max-tokens"),
    ("max_tasks", "--max-tasks"),
)


# ---------------------------------------------------------------- which models are encoders


def _gguf_is_encoder(path: Path) -> bool:
    """An encoder GGUF: its attention is not causal (llama.cpp writes `<arch>.attention.causal = false` for bert),
    or its family is an encoder in the architecture table."""
    from qconv.formats.architectures import ARCHITECTURES
    from qconv.formats.gguf_read import read_gguf

    with read_gguf(path) as g:
        arch = g.architecture
        causal = g.metadata.get(f"{arch}.attention.causal")
    if causal is False:
        return True
    return any(a.gguf_arch == arch and a.encoder for a in ARCHITECTURES.values())


def is_encoder_model(path: Path) -> bool:
    """Whether `qconv eval` measures this candidate as an embedding model. False for whatever is not a readable
    model (the decoders' checks name the problem)."""
    path = Path(path)
    if is_onnx_encoder_folder(path):
        return True
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return False
        return _gguf_is_encoder(path)
    except (OSError, ValueError, FormatError):
        return False


def check_options(options) -> list[embed_suites.EmbedSuite]:
    """The suites an embedding run measures; options that only mean something for a decoder are one-line errors
    (before any model is loaded). --no-tasks leaves out the retrieval suite, the embeddings' task."""
    for attribute, flag in DECODER_ONLY_OPTIONS:
        if getattr(options, attribute):
            raise FormatError(
                f"{flag}: not for an embedding model (qconv eval compares its vectors on the suites "
                f"{', '.join(embed_suites.EMBED_SUITES)})"
            )
    names = options.suites
    if names and "none" in names:
        raise FormatError("--suite none: an embedding model has only the built-in suites; nothing to evaluate")
    unknown = [n for n in names or [] if n not in embed_suites.EMBED_SUITES]
    if unknown:
        raise FormatError(
            f"--suite {unknown[0]}: no such suite for an embedding model; the suites are "
            f"{', '.join(embed_suites.EMBED_SUITES)}"
        )
    chosen = embed_suites.get_embed_suites(names or None)
    if not options.tasks:
        chosen = [s for s in chosen if not s.is_retrieval]
    if not chosen:
        raise FormatError("nothing to evaluate: --no-tasks leaves out the retrieval suite, the only one chosen")
    return chosen


# ---------------------------------------------------------------- the models


def open_embedder(path: Path, threads: int | None):
    """The model behind `.embed(texts)`: the C runtime for a GGUF, ONNX Runtime for an encoder folder."""
    if is_onnx_encoder_folder(path):
        from qconv.runtime.onnx_backend import OnnxModel

        model = OnnxModel(path, threads=threads)
    else:
        from qconv.runtime.model import Model

        model = Model(str(path), threads=threads)
    if not hasattr(model, "embed"):
        raise FormatError(f"{path}: this runtime cannot embed texts yet")
    return model


def embed_timed(model, texts, speed: dict, where: Path) -> np.ndarray:
    """model.embed(texts) as float64 (n, dim), its time and count added to speed."""
    t0 = time.perf_counter()
    vectors = np.asarray(model.embed(list(texts)), dtype=np.float64)
    speed["seconds"] += time.perf_counter() - t0
    speed["texts"] = speed.get("texts", 0) + len(texts)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise FormatError(f"{where}: embed returned shape {vectors.shape} for {len(texts)} texts")
    if not np.isfinite(vectors).all():
        raise FormatError(f"{where}: embed returned NaN or infinite values")
    return vectors


# ---------------------------------------------------------------- the figures


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) matrices; a zero row is at cosine 0 from anything but another
    zero row (1: both models gave nothing)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * b).sum(axis=1) / (na * nb)
    out[(na == 0) | (nb == 0)] = 0.0
    out[(na == 0) & (nb == 0)] = 1.0
    return np.clip(out, -1.0, 1.0)


def cosine_row(suite: embed_suites.EmbedSuite, cos: np.ndarray) -> dict:
    """A suite's row of the report: mean cosine (95% bootstrap interval over texts), median, 5th percentile,
    the worst text."""
    from qconv.converter.quality.stats import mean_ci

    worst = int(np.argmin(cos))
    return {
        "name": suite.name,
        "description": suite.description,
        "texts": int(cos.size),
        "cos_mean": float(cos.mean()),
        "cos_mean_ci": list(mean_ci(cos)),
        "cos_median": float(np.median(cos)),
        "cos_p05": float(np.percentile(cos, 5.0)),
        "cos_min": float(cos[worst]),
        "worst": {"source": suite.source(worst), "text": suite.texts[worst][:200]},
    }


def nearest_passages(queries: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """For each query, the index of the passage of highest cosine similarity (the first of equals)."""

    def unit(m):
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.where(norms == 0, 1.0, norms)

    return np.argmax(unit(np.asarray(queries, np.float64)) @ unit(np.asarray(passages, np.float64)).T, axis=1)


def retrieval_table(suite: embed_suites.EmbedSuite, ref: np.ndarray, quant: np.ndarray) -> dict:
    """Is each query's partner its nearest passage, under the reference's vectors and under the candidate's; both
    accuracies and their paired comparison (stats.compare_tasks), per query the two nearest passages."""
    from qconv.converter.quality.stats import compare_tasks

    n = suite.n_queries
    partner = np.asarray(suite.partner)
    ref_nearest = nearest_passages(ref[:n], ref[n:])
    quant_nearest = nearest_passages(quant[:n], quant[n:])
    ref_ok, quant_ok = ref_nearest == partner, quant_nearest == partner
    comparison = compare_tasks(ref_ok.tolist(), quant_ok.tolist(), None)
    items = [
        {"source": suite.source(i), "partner": int(partner[i]), "ref_nearest": int(ref_nearest[i]),
         "quant_nearest": int(quant_nearest[i]), "ref_ok": bool(ref_ok[i]), "quant_ok": bool(quant_ok[i])}
        for i in range(n)
    ]  # fmt: skip
    return {
        "kind": "retrieval",
        **comparison.as_dict(),
        "passages": len(suite.passages),
        "same_nearest": float(np.mean(ref_nearest == quant_nearest)),
        "items": items,
    }


# ---------------------------------------------------------------- the reference's vectors, kept


def _cache_description(ref: Path, suites: list) -> dict:
    from qconv.converter.quality import ref_cache

    return ref_cache.describe(ref, [], 0, [s.name for s in suites],
                              {"kind": CACHE_KIND, "suites": {s.name: s.sha256 for s in suites}})  # fmt: skip


def load_vectors(path: Path, ref: Path, suites: list) -> dict[str, np.ndarray] | None:
    """The reference's vectors per suite from --ref-cache FILE (an .npz; the sidecar FILE.json says what they were
    made for), or None when neither file exists yet. A cache of something else or a damaged one: one line."""
    from qconv.converter.quality import ref_cache

    cache = ref_cache.load_cache(path, _cache_description(ref, suites))
    if cache is None:
        return None
    record = _sidecar(path)
    vectors = record.get("vectors") if isinstance(record, dict) else None
    path = Path(path)
    if not isinstance(vectors, dict) or not path.is_file():
        raise FormatError(f"{path}: not the vectors file its sidecar was written with; delete both and rerun")
    size = path.stat().st_size
    if size > MAX_CACHE_BYTES or vectors.get("bytes") != size or vectors.get("sha256") != file_sha256(path):
        raise FormatError(f"{path}: not the vectors file its sidecar was written with; delete both and rerun")
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {s.name: np.asarray(npz[s.name], dtype=np.float64) for s in suites}
    except (OSError, ValueError, KeyError) as e:
        raise FormatError(f"{path}: not a reference-vectors cache ({e})") from None
    for s in suites:
        if out[s.name].ndim != 2 or out[s.name].shape[0] != len(s.texts):
            raise FormatError(f"{path}: suite '{s.name}' has vectors of shape {out[s.name].shape}, "
                              f"{len(s.texts)} texts expected")  # fmt: skip
    return out


def _sidecar(path: Path) -> dict:
    from qconv.converter.quality.ref_cache import sidecar_path
    from qconv.formats.folder_files import parse_json

    side = sidecar_path(path)
    return parse_json(side.read_bytes(), side)


def save_vectors(path: Path, ref: Path, suites: list, vectors: dict[str, np.ndarray]) -> None:
    """The vectors file, then its sidecar (each written whole under a temporary name)."""
    import json

    from qconv.converter.quality.ref_cache import SIDECAR_FORMAT, sidecar_path
    from qconv.formats.atomic_write import AtomicFile

    path = Path(path)
    with AtomicFile(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
            np.savez(f, **{s.name: vectors[s.name].astype(np.float32) for s in suites})
    record = {
        "format": SIDECAR_FORMAT,
        "description": _cache_description(ref, suites),
        "texts": {},
        "vectors": {"bytes": path.stat().st_size, "sha256": file_sha256(path)},
    }
    with AtomicFile(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


# ---------------------------------------------------------------- the run


def new_report(quants: list[Path], ref: Path, ref_path: Path, options, identity: dict) -> dict:
    """evaluate.new_report's report, of kind "embedding": per candidate its cosine rows and retrieval table, and
    texts counted beside tokens in the speed records."""
    from qconv.converter.quality.evaluate import new_report as decoder_report

    report = {"schema_version": 2, "kind": "embedding", **decoder_report(quants, ref, ref_path, options, identity)}
    for candidate in report["candidates"]:
        candidate.update(embeddings=[], retrieval={})
        candidate["speed"]["texts"] = 0
    report["reference_speed"]["texts"] = 0
    return report


def overall(candidate: dict) -> dict:
    """Over every text of the run: the mean cosine (text-weighted) and the worst."""
    rows = candidate["embeddings"]
    n = sum(r["texts"] for r in rows) or 1
    return {
        "texts": sum(r["texts"] for r in rows),
        "cos_mean": sum(r["cos_mean"] * r["texts"] for r in rows) / n,
        "cos_min": min((r["cos_min"] for r in rows), default=float("nan")),
    }


def suite_line(name: str, candidates: list[dict]) -> str:
    parts = []
    for c in candidates:
        row = next((r for r in c["embeddings"] if r["name"] == name), None)
        text = f"cosine mean {row['cos_mean']:.5f}, min {row['cos_min']:.5f}" if row else ""
        table = c["retrieval"].get(name)
        if table:
            text += f", retrieval ref {table['ref_accuracy']:.3f} quant {table['quant_accuracy']:.3f}"
        parts.append(text)
    return f"{name}: " + " | ".join(parts)


def evaluate_embeddings(quants: list[Path], ref: Path, options, log=None, save=None, resume: dict | None = None,
                        executor=None):  # fmt: skip
    """The report of embedding candidates QUANTS against REF (see the module's docstring); `save`, `resume` and
    `executor` as evaluate.evaluate."""
    from qconv.converter.quality import evaluate, run_state

    chosen = check_options(options)
    for quant in quants:
        if not (quant.is_file() or is_onnx_encoder_folder(quant)):
            raise FormatError(f"{quant}: no such GGUF file or ONNX encoder folder (onnx/model.onnx, modules.json)")
    say = log or (lambda msg: None)
    identity = run_state.run_identity(quants, Path(ref), options)
    if resume is not None and resume.get("identity") != identity:
        raise FormatError(f"--resume: {run_state.identity_difference(resume.get('identity') or {}, identity)}")
    if resume is not None and resume.get("kind") != "embedding":
        raise FormatError("--resume: the saved run is not an evaluation of an embedding model")
    with tempfile.TemporaryDirectory(prefix="qconv-eval-") as tmp:
        ref_path = evaluate.prepare_reference(Path(ref), Path(tmp), options.progress)
        if not _gguf_is_encoder(ref_path):
            raise FormatError(f"reference {ref} is not an embedding model, the candidates are")
        for quant in quants:
            evaluate.check_compatible(quant, ref_path)
        cached = load_vectors(options.ref_cache, Path(ref), chosen) if options.ref_cache is not None else None
        if cached is not None:
            say(f"reference: from the cache {options.ref_cache} (the reference model is not run)")
        report = resume if resume is not None else new_report(quants, Path(ref), ref_path, options, identity)
        ref_vectors = dict(cached or {})
        ref_model = None  # opened when a suite's vectors are first needed

        def reference_vectors(suite, speed: dict) -> np.ndarray:
            nonlocal ref_model
            if suite.name not in ref_vectors:
                if ref_model is None:
                    ref_model = open_embedder(ref_path, options.threads)
                ref_vectors[suite.name] = embed_timed(ref_model, suite.texts, speed, ref_path)
            return ref_vectors[suite.name]

        todo = [suite for suite in chosen if suite.name not in report["finished"]]
        units_on = run_state.units_executor(executor, report, options.threads)
        if units_on is None:
            models = [open_embedder(q, options.threads) for q in quants]
            for suite in todo:
                run_suite(suite, reference_vectors(suite, report["reference_speed"]), models, quants, report)
                say(suite_line(suite.name, report["candidates"]))
                if save is not None:
                    save(report)
            del models
        else:
            from qconv.converter.quality import embed_units

            records = embed_units.run_candidates(units_on, quants, ref_path, todo, reference_vectors, options, report,
                                                 save)  # fmt: skip
            for k, suite in enumerate(todo):
                merge_suite(report, suite, [record["parts"][k] for record in records])
                say(suite_line(suite.name, report["candidates"]))
            if save is not None:
                save(report)
        ref_model = None
        if options.ref_cache is not None and cached is None and resume is None:
            save_vectors(options.ref_cache, Path(ref), chosen, ref_vectors)
            say(f"reference cache: {options.ref_cache}")
        for i, (candidate, quant) in enumerate(zip(report["candidates"], quants)):
            candidate["overall"] = overall(candidate)
            if options.layer_errors and not Path(quant).is_dir():
                from qconv.converter.quality.report import layer_weight_errors

                candidate["layer_errors"] = (
                    layer_weight_errors(quant, ref_path) if units_on is None else records[i]["layer_errors"]
                )
        report["complete"] = True
    return report


def suite_parts(suite, ref: np.ndarray, model, quant: Path) -> dict:
    """One suite through one candidate: its cosine row, its retrieval table (the retrieval suite), and the time and
    texts it took."""
    speed = {"seconds": 0.0, "texts": 0}
    vectors = embed_timed(model, suite.texts, speed, quant)
    if vectors.shape[1] != ref.shape[1]:
        raise FormatError(f"{quant}: vectors of {vectors.shape[1]} values, the reference's have {ref.shape[1]}")
    part = {"embedding": cosine_row(suite, cosines(ref, vectors)), "speed": speed}
    if suite.is_retrieval:
        part["retrieval"] = retrieval_table(suite, ref, vectors)
    return part


def merge_suite(report: dict, suite, parts: list[dict]) -> None:
    """Each candidate's parts of one suite into the report, in candidate order; the suite is then finished."""
    for candidate, part in zip(report["candidates"], parts):
        candidate["embeddings"].append(part["embedding"])
        if "retrieval" in part:
            candidate["retrieval"][suite.name] = part["retrieval"]
        candidate["speed"]["seconds"] += part["speed"]["seconds"]
        candidate["speed"]["texts"] += part["speed"]["texts"]
    report["finished"].append(suite.name)


def run_suite(suite, ref: np.ndarray, models: list, quants: list[Path], report: dict) -> None:
    """One suite through every candidate: its cosine row (and retrieval table) into the report."""
    merge_suite(report, suite, [suite_parts(suite, ref, model, quant) for model, quant in zip(models, quants)])
