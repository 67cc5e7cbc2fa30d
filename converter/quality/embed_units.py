"""`qconv eval A B --ref REF -j N` (or `--ray`) on embedding models: each candidate is one unit of kind
"embed_candidate", its vectors on every suite compared with the reference's, which the driver embeds once (or reads
from --ref-cache) and shares: one array per suite, a few MB for the built-in suites (MiniLM's 384 values for 459
texts). A unit opens its candidate (a GGUF, or a `qconv to-onnx` encoder folder), runs the suites as the in-process
loop does (embed_eval.suite_parts) and returns its parts of the report; the driver merges them in candidate order
(embed_eval.merge_suite), saving each candidate's record as it lands (run_state.run_units). The report is the
one-process report, the speeds' seconds aside.
"""

from __future__ import annotations

from pathlib import Path

from qconv.converter.work.units import register

KIND = "embed_candidate"
SHARED_VECTORS = "embed_reference_vectors"  # suite name -> the reference's vectors (float64, texts x dim)
SHARED_REFERENCE = "embed_reference_gguf"  # the unquantized GGUF, for the per-layer weight errors


def run_candidates(executor, quants: list[Path], ref_path: Path, suites: list, reference_vectors, options,
                   report: dict, save) -> list[dict]:  # fmt: skip
    """Every candidate as a unit against the reference's vectors of `suites` (`reference_vectors(suite, speed)`
    embeds or reads them, adding the time it took to `speed`): per candidate, in order, {"parts": [its
    embed_eval.suite_parts of each suite], "layer_errors"}."""
    from qconv.converter.quality import run_state
    from qconv.converter.quality.eval_units import candidate_units

    def prepare() -> dict:
        speed = {"tokens": 0, "seconds": 0.0, "texts": 0}
        executor.share(SHARED_VECTORS, {suite.name: reference_vectors(suite, speed) for suite in suites})
        if options.layer_errors:
            executor.share(SHARED_REFERENCE, ref_path)
        return speed

    names = [suite.name for suite in suites]
    units = candidate_units(KIND, quants, {"suites": names, "layer_errors": options.layer_errors})
    return run_state.run_units(executor, units, report, save, names, prepare)


@register(KIND)
def embed_candidate(args: dict, shared) -> dict:
    """One candidate through the suites against the shared reference vectors: its parts of the report."""
    from qconv.converter.quality import embed_eval, embed_suites

    vectors = shared.get(SHARED_VECTORS)
    by_name = {suite.name: suite for suite in embed_suites.get_embed_suites(args["suites"])}
    quant = Path(args["quant"])
    model = embed_eval.open_embedder(quant, shared.threads)
    parts = [embed_eval.suite_parts(by_name[name], vectors[name], model, quant) for name in args["suites"]]
    del model
    errors = None
    if args["layer_errors"] and not quant.is_dir():
        from qconv.converter.quality.report import layer_weight_errors

        errors = layer_weight_errors(quant, shared.get(SHARED_REFERENCE))
    return {"parts": parts, "layer_errors": errors}
