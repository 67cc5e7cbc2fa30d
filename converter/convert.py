"""HF folder -> GGUF: read the spec and tokenizer, check every tensor, plan types, then stream
read -> (permute) -> quantize -> write one tensor at a time into a temporary file renamed at the end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from tqdm import tqdm

from qconv.converter.plan import TypePlan, make_plan
from qconv.formats.errors import FormatError
from qconv.formats.gguf_write import StreamingGGUFWriter, add_model_metadata, check_writable, llama3_rope_factors
from qconv.formats.hf_config import ModelSpec, read_model_spec
from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.formats.tensor_names import gguf_name, permute_rope_rows, rope_permute_heads
from qconv.formats.tokenizer_meta import read_hf_tokenizer

ROPE_FREQS = "rope_freqs.weight"


@dataclass
class ConvertResult:
    out_path: Path
    plan: TypePlan
    spec: ModelSpec


def _writing_order(name: str) -> tuple:
    """token_embd, rope_freqs, the blocks in order, output_norm, output: the order llama.cpp's converter uses."""
    if name.startswith("blk."):
        return (2, int(name.split(".")[1]), name)
    return ({"token_embd.weight": 0, ROPE_FREQS: 1, "output_norm.weight": 3, "output.weight": 4}.get(name, 5), 0, name)


def map_tensors(spec: ModelSpec, source: SafetensorsSource) -> dict[str, str]:
    """GGUF name -> HF name for every tensor to write; checks names and shapes against config.json first."""
    expected = spec.expected_shapes()
    mapping: dict[str, str] = {}
    for hf, entry in source.entries.items():
        gname = gguf_name(hf)
        if gname is None:
            continue
        if hf not in expected:
            if hf == "lm_head.weight" and spec.tied_embeddings:
                continue  # a tied checkpoint may still carry the copy; llama.cpp uses token_embd
            raise FormatError(f"{entry.file}: tensor '{hf}' is not part of a {spec.architecture} with this config.json")
        if tuple(entry.shape) != expected[hf]:
            raise FormatError(
                f"{entry.file}: tensor '{hf}' has shape {list(entry.shape)}, config.json implies {list(expected[hf])}"
            )
        mapping[gname] = hf
    missing = [hf for hf in expected if hf not in source.entries]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FormatError(f"{source.model_dir}: tensor '{missing[0]}'{more} is missing from the checkpoint")
    return dict(sorted(mapping.items(), key=lambda kv: _writing_order(kv[0])))


def convert_to_gguf(
    model_dir: Path,
    out_path: Path,
    type_name: str = "f16",
    threads: int | None = None,
    progress: bool = True,
) -> ConvertResult:
    from qconv.runtime import quants  # the native quantizers; imported late so `--help` stays fast

    model_dir, out_path = Path(model_dir), Path(out_path)
    check_writable(out_path)
    spec = read_model_spec(model_dir)
    tokenizer = read_hf_tokenizer(model_dir, spec.vocab_size)
    with SafetensorsSource(model_dir) as source:
        mapping = map_tensors(spec, source)
        shapes = {g: tuple(source.entries[hf].shape) for g, hf in mapping.items()}
        if spec.rope_scaling.get("rope_type") == "llama3":
            shapes[ROPE_FREQS] = (spec.head_dim // 2,)
            shapes = dict(sorted(shapes.items(), key=lambda kv: _writing_order(kv[0])))
        plan = make_plan(shapes, type_name)

        with StreamingGGUFWriter(out_path, spec.gguf_arch) as out:
            add_model_metadata(out.writer, spec)
            out.writer.add_file_type(plan.file_type)
            out.writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            tokenizer.add_to(out.writer)
            for choice in plan.choices:
                out.declare(choice.name, choice.shape, choice.ggml_type, choice.nbytes)
            out.begin()
            progress_bar = tqdm(
                total=plan.n_elements, unit="w", unit_scale=True, desc="converting", disable=not progress, leave=False
            )
            with progress_bar as bar:  # closed (and cleared) before any error message is printed
                for choice in plan.choices:
                    weights = _tensor_weights(spec, source, mapping, choice.name)
                    out.write(encode(weights, choice.ggml_type, threads, quants))
                    bar.update(choice.n_elements)
                    del weights
            out.finish()
    return ConvertResult(out_path, plan, spec)


def _tensor_weights(spec: ModelSpec, source: SafetensorsSource, mapping: dict[str, str], name: str) -> np.ndarray:
    """The f32 values of one GGUF tensor, permuted as llama.cpp expects and checked for NaN/Inf."""
    if name == ROPE_FREQS:
        return llama3_rope_factors(spec)
    weights = source.read_f32(mapping[name])
    heads = rope_permute_heads(name) if spec.arch.rope_permute else None
    if heads:
        weights = permute_rope_rows(weights, getattr(spec, heads))
    if not np.isfinite(weights).all():
        bad = np.argwhere(~np.isfinite(weights))[0].tolist()
        raise FormatError(f"tensor '{mapping[name]}' holds NaN or Inf (first at {bad})")
    return weights


def encode(weights: np.ndarray, ggml_type: gguf.GGMLQuantizationType, threads: int | None, quants) -> np.ndarray:
    """f32 weights -> the bytes (or floats) of the GGUF tensor data."""
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return weights.astype(np.float32, copy=False)
    rows = weights.reshape(-1, weights.shape[-1])
    return quants.quantize(rows, ggml_type.name, threads=threads)
