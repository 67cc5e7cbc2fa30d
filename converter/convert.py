"""HF folder or GGUF -> GGUF: open the source, check it, plan the types, then stream
read -> quantize -> write one tensor at a time into a temporary file renamed at the end."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from tqdm import tqdm

from qconv.converter.plan import TypePlan, is_quantized, make_plan, parse_tensor_type
from qconv.converter.sources import open_source
from qconv.formats.atomic_write import check_output_file
from qconv.formats.errors import FormatError
from qconv.formats.gguf_write import StreamingGGUFWriter
from qconv.formats.imatrix import ImportanceMatrix, read_imatrix


@dataclass
class ConvertOptions:
    type_name: str = "f16"
    threads: int | None = None
    imatrix: Path | None = None
    tensor_types: tuple[str, ...] = ()  # REGEX=TYPE overrides
    pure: bool = False
    allow_requantize: bool = False


@dataclass
class ConvertResult:
    out_path: Path | None
    plan: TypePlan
    source_types: dict[str, str]


def plan_for(source, options: ConvertOptions, imatrix: ImportanceMatrix | None) -> TypePlan:
    overrides = [parse_tensor_type(s) for s in options.tensor_types]
    return make_plan(
        source.shapes, options.type_name, n_layers=source.n_layers, n_gqa=source.n_gqa,
        has_imatrix=imatrix is not None, overrides=overrides, pure=options.pure, n_experts=source.n_experts,
    )  # fmt: skip


def load_imatrix(path: Path | None, shapes: dict[str, tuple[int, ...]]) -> ImportanceMatrix | None:
    if path is None:
        return None
    imatrix = read_imatrix(path)
    widths = {name: shape[-1] for name, shape in shapes.items() if len(shape) == 2}
    widths |= {name: (shape[0], shape[-1]) for name, shape in shapes.items() if len(shape) == 3}  # stacked experts
    imatrix.check_against(widths)
    return imatrix


def make_plan_only(model: Path, options: ConvertOptions) -> ConvertResult:
    """What to-gguf would write, without writing it (`qconv plan`)."""
    source = open_source(model, options.allow_requantize)
    try:
        imatrix = load_imatrix(options.imatrix, source.shapes)
        return ConvertResult(None, plan_for(source, options, imatrix), source.source_types)
    finally:
        source.close()


def convert_to_gguf(
    model: Path, out_path: Path, options: ConvertOptions | str = "f16", progress: bool = True, **kw
) -> ConvertResult:
    from qconv.runtime import mapped_file_guard, quants  # native; imported late so `--help` stays fast

    mapped_file_guard.install("qconv")  # the inputs are read through memory maps: a truncated one is one line
    if isinstance(options, str):
        options = ConvertOptions(type_name=options, **kw)
    out_path = Path(out_path)
    check_output_file(out_path)
    source = open_source(model, options.allow_requantize)
    try:
        imatrix = load_imatrix(options.imatrix, source.shapes)
        plan = plan_for(source, options, imatrix)
        with StreamingGGUFWriter(out_path, source.arch) as out:
            source.add_metadata(out.writer)
            out.writer.add_file_type(plan.file_type)
            out.writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            if imatrix is not None:
                add_imatrix_metadata(out.writer, imatrix, plan)
            for choice in plan.choices:
                out.declare(choice.name, choice.shape, choice.ggml_type, choice.nbytes)
            out.begin()
            progress_bar = tqdm(
                total=plan.n_elements, unit="w", unit_scale=True, desc="converting", disable=not progress, leave=False
            )
            with progress_bar as bar:  # closed (and cleared) before any error message is printed
                # reading (and bf16 decoding) of the next row range overlaps the quantization of this one
                stream = _prefetched((c.name, chunk) for c in plan.choices for chunk in source.read_f32_chunks(c.name))
                for choice in plan.choices:
                    experts = choice.shape[0] if len(choice.shape) == 3 else 0
                    importance = imatrix.mean_squares(choice.name, experts) if imatrix is not None else None
                    chunks = stream.chunks_of(choice.name)
                    out.write_chunks(
                        _encoded(
                            chunks,
                            source.describe(choice.name),
                            choice.ggml_type,
                            options.threads,
                            quants,
                            importance,
                            bar,
                        )
                    )
            out.finish()
    except BaseException:
        # The traceback still holds row views of the mapped inputs (a mapping with views cannot close: BufferError);
        # they go with the process or the exception. The error itself is what the user must see.
        with contextlib.suppress(BufferError):
            source.close()
        raise
    source.close()
    return ConvertResult(out_path, plan, source.source_types)


class _prefetched:
    """(tensor name, chunk) pairs produced one ahead on a background thread; chunks_of(name) takes one tensor's."""

    def __init__(self, pairs):
        self._pairs = iter(pairs)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qconv-read")
        self._next = self._pool.submit(next, self._pairs, None)

    def chunks_of(self, name: str):
        while True:
            pair = self._next.result()
            if pair is None or pair[0] != name:
                return
            self._next = self._pool.submit(next, self._pairs, None)
            yield pair[1]

    def __del__(self):
        self._pool.shutdown(wait=False, cancel_futures=True)


def _encoded(chunks, what: str, ggml_type, threads, quants, importance, bar):
    """Encode each row range as it is read. NaN/Inf is reported by tensor name and position: the C quantizers
    refuse non-finite rows themselves, so the (slower) numpy scan runs only for f32 output or to locate a refusal.
    Stacked experts come one expert (1, rows, columns) at a time, each quantized with its own importance row."""
    row = 0
    for weights in chunks:
        weighting = importance
        if importance is not None and importance.ndim == 2:
            weighting = importance[row]  # row counts experts here: each chunk is one expert
        try:
            if ggml_type == gguf.GGMLQuantizationType.F32 and not np.isfinite(weights).all():
                raise ValueError("non-finite value")
            encoded = encode(weights, ggml_type, threads, quants, weighting)
        except ValueError as e:
            if not np.isfinite(weights).all():
                bad = np.argwhere(~np.isfinite(weights))[0].tolist()
                bad[0] += row
                raise FormatError(f"{what} holds NaN or Inf (first at {bad})") from None
            raise FormatError(f"{what}: {e}") from None
        yield encoded
        row += weights.shape[0] if weights.ndim > 1 else 0
        bar.update(weights.size)


def add_imatrix_metadata(writer: gguf.GGUFWriter, imatrix: ImportanceMatrix, plan: TypePlan) -> None:
    """The quantize.imatrix.* keys llama-quantize records."""
    used = sum(1 for c in plan.choices if c.name in imatrix.sums and is_quantized(c.ggml_type))
    writer.add_string("quantize.imatrix.file", str(imatrix.path))
    if imatrix.datasets:
        writer.add_string("quantize.imatrix.dataset", imatrix.datasets[0])
    writer.add_int32("quantize.imatrix.entries_count", used)
    writer.add_int32("quantize.imatrix.chunks_count", imatrix.chunk_count)


def encode(
    weights: np.ndarray, ggml_type: gguf.GGMLQuantizationType, threads: int | None, quants, importance=None
) -> np.ndarray:
    """f32 weights -> the bytes (or floats) of the GGUF tensor data."""
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return weights.astype(np.float32, copy=False)
    rows = weights.reshape(-1, weights.shape[-1])
    use_importance = importance is not None and is_quantized(ggml_type)
    return quants.quantize(rows, ggml_type.name, importance=importance if use_importance else None, threads=threads)
