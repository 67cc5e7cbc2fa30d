"""`--type auto`: choose each tensor's type from the sensitivity data to minimise the predicted KL divergence at a
size (`--target-bpw`), or the size at a predicted KL divergence (`--max-kld`).

The prediction: a group's measured KLD (quantized alone, at its cheapest type) is shared among its tensors in
proportion to their importance-weighted errors, and each tensor's share scales with its error at the chosen type:
    KLD ~ sum_i c_g(i) * err_i(type_i),   c_g = KLD_g / sum_{i in g} err_i(cheapest).
Without KLD trials every c is 1 (the sum of weighted errors). A greedy knapsack then buys, from the cheapest types
up, the upgrade with the largest predicted KLD drop per byte until the budget is spent.

The result is a list of `--tensor-type` overrides (`^name$=type`), which the converter's existing machinery applies,
and metadata keys (`qconv.auto.*`) recording the choice and its quality.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from qconv.formats.errors import FormatError


@dataclass
class AutoChoice:
    types: dict[str, str]  # tensor -> type name
    nbytes: int  # of the whole file's tensor data
    bits_per_weight: float
    predicted_kld: float
    base_type: str  # the --type whose file_type the GGUF records

    def tensor_type_overrides(self) -> tuple[str, ...]:
        return tuple(f"^{re.escape(name)}$={t}" for name, t in self.types.items())

    def metadata(self, measured_kld: float | None = None) -> dict[str, str | float]:
        meta: dict[str, str | float] = {
            "qconv.auto.bits_per_weight": self.bits_per_weight,
            "qconv.auto.predicted_kld": self.predicted_kld,
            "qconv.auto.types": json.dumps(self.types, separators=(",", ":")),
        }
        if measured_kld is not None:
            meta["qconv.auto.measured_kld"] = measured_kld
        return meta


# the --type whose general.file_type stands for a mixture whose most common type is this one
BASE_FOR_TYPE = {"q2_k": "q2_k", "q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m", "q6_k": "q6_k",
                 "q8_0": "q8_0", "q4_0": "q4_0", "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1"}  # fmt: skip


def group_coefficients(analysis: dict) -> dict[str, float]:
    """tensor -> c (KLD per unit of weighted error) from the group trials, 1.0 without them."""
    coef = {name: 1.0 for name in analysis["tensors"]}
    for g in analysis.get("groups", []):
        errs = {
            n: min(analysis["tensors"][n]["options"].values(), key=lambda o: o["bytes"])["error"] for n in g["tensors"]
        }
        total = sum(errs.values())
        for n in g["tensors"]:
            coef[n] = g["kld"] / total if total > 0 else 0.0
    return coef


def choose_types(analysis: dict, target_bpw: float | None = None, max_kld: float | None = None) -> AutoChoice:
    if (target_bpw is None) == (max_kld is None):
        raise FormatError("--type auto needs exactly one of --target-bpw and --max-kld")
    tensors = analysis["tensors"]
    coef = group_coefficients(analysis)
    # per tensor: options sorted by size
    options = {n: sorted(e["options"].items(), key=lambda kv: kv[1]["bytes"]) for n, e in tensors.items()}
    level = {n: 0 for n in tensors}
    nbytes = analysis["fixed_bytes"] + sum(opts[0][1]["bytes"] for opts in options.values())
    predicted = sum(coef[n] * opts[0][1]["error"] for n, opts in options.items())
    budget = target_bpw * analysis["n_elements"] / 8 if target_bpw is not None else float("inf")
    if nbytes > budget:
        smallest = 8 * nbytes / analysis["n_elements"]
        raise FormatError(
            f"--target-bpw {target_bpw}: the cheapest candidate types already need {smallest:.3f} bits per weight"
        )

    def best_upgrade():
        best = None
        for n, opts in options.items():
            cur = opts[level[n]][1]
            for j in range(level[n] + 1, len(opts)):
                cand = opts[j][1]
                extra = cand["bytes"] - cur["bytes"]
                gain = coef[n] * (cur["error"] - cand["error"])
                if extra <= 0 or gain <= 0 or nbytes + extra > budget:
                    continue
                if best is None or gain / extra > best[0]:
                    best = (gain / extra, n, j, extra, gain)
        return best

    while max_kld is None or predicted > max_kld:
        step = best_upgrade()
        if step is None:
            break
        _, n, j, extra, gain = step
        level[n], nbytes, predicted = j, nbytes + extra, predicted - gain
    types = {n: options[n][level[n]][0] for n in tensors}
    counts: dict[str, int] = {}
    for n, t in types.items():
        counts[t] = counts.get(t, 0) + int(np.prod(tensors[n]["shape"]))
    base = BASE_FOR_TYPE.get(max(counts, key=counts.get), "q8_0")
    return AutoChoice(types, int(nbytes), 8 * nbytes / analysis["n_elements"], float(predicted), base)


def copy_with_metadata(src, out, metadata: dict) -> None:
    """Write the GGUF `src` to `out` with extra key/values (tensors copied as they are)."""
    import gguf

    from qconv.formats.atomic_write import AtomicFile
    from qconv.formats.gguf_read import read_gguf
    from qconv.formats.gguf_write import copy_metadata

    with read_gguf(src) as g, AtomicFile(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=g.architecture or "", endianess=gguf.GGUFEndian.LITTLE)
        copy_metadata(g, writer)
        for key, value in metadata.items():
            if isinstance(value, str):
                writer.add_string(key, value)
            else:
                writer.add_float32(key, float(value))
        for name, t in g.tensors.items():
            raw = g.tensor_data(name).view(np.uint8)
            if t.type_name in ("F32", "F16"):
                writer.add_tensor(name, raw.view(np.float32 if t.type_name == "F32" else np.float16).reshape(t.shape))
            else:  # bytes shaped (rows..., row bytes): gguf-py derives the element shape from it
                raw = raw.reshape(*t.shape[:-1], -1)
                writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType[t.type_name])
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        del writer, raw  # they hold views of the mapping, which closes when the block ends


def convert_auto(
    model, out, target_bpw: float | None = None, max_kld: float | None = None, imatrix=None,
    threads: int | None = None, analysis: dict | None = None, kld_tokens: int = 1024, log=None,
) -> tuple[AutoChoice, float]:  # fmt: skip
    """to-gguf --type auto: analyse (unless given), choose, convert, measure the file's KLD, record both. The file is
    converted and measured in a temporary folder and written to `out` only at the end, with the measurement."""
    import tempfile
    from pathlib import Path

    from qconv.converter.analyze import AnalyzeOptions, analyze, eval_tokens, measure_kld
    from qconv.converter.calibrate import model_gguf
    from qconv.converter.convert import ConvertOptions, convert_to_gguf
    from qconv.converter.quality.runner import Runner
    from qconv.formats.atomic_write import check_output_file

    check_output_file(out)  # before minutes of analysis
    with tempfile.TemporaryDirectory(prefix="qconv-auto-") as tmp:
        f32 = model_gguf(Path(model), Path(tmp))
        if analysis is None:
            analysis = analyze(f32, AnalyzeOptions(imatrix=imatrix, threads=threads, max_tokens=kld_tokens), log)
        choice = choose_types(analysis, target_bpw, max_kld)
        options = ConvertOptions(
            type_name=choice.base_type, pure=True, tensor_types=choice.tensor_type_overrides(), imatrix=imatrix,
            threads=threads,
        )  # fmt: skip
        converted = Path(tmp) / "auto.gguf"
        convert_to_gguf(model, converted, options, progress=False)
        ref = Runner(f32, 256, threads)
        windows = eval_tokens(ref, kld_tokens, 256)
        ref_logits = [ref.logits(w) for w in windows]
        del ref
        measured = measure_kld(ref_logits, Runner(converted, 256, threads), windows)
        copy_with_metadata(converted, out, choice.metadata(measured))
    if log:
        log(f"--type auto: {choice.bits_per_weight:.3f} bits per weight, predicted KLD {choice.predicted_kld:.4f}, "
            f"measured {measured:.4f}")  # fmt: skip
    return choice, measured
