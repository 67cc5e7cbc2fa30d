"""`qconv calibrate`: run the unquantized model through the C runtime over calibration text and write, for every
matmul weight of the blocks, the sum of squared input activations per column and the token count: llama.cpp's
imatrix, in its GGUF form.

As llama-imatrix does (tools/imatrix/imatrix.cpp): the text is tokenized whole, cut into chunks of ctx tokens, the
first token of each chunk replaced by BOS when the vocabulary adds one, and every chunk run from an empty cache.
Only `blk.*` weights are kept (llama-imatrix leaves out the output head unless asked).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qconv.converter.quality import suites as suite_table
from qconv.formats.atomic_write import check_output_file
from qconv.formats.errors import FormatError
from qconv.formats.imatrix import ImportanceMatrix, write_imatrix

DEFAULT_CTX = 512
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".c", ".h", ".js", ".ts", ".html", ".csv", ".yaml")
BUILTIN = "qconv-builtin-calibration"


@dataclass
class CalibrationText:
    text: str
    name: str  # recorded as imatrix.datasets


def read_calibration_data(paths: list[Path] | None) -> CalibrationText:
    """The user's files (folders: their text files, sorted, recursively), or the built-in calibration suites."""
    if not paths:
        return CalibrationText(suite_table.calibration_text(), BUILTIN)
    texts = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not files:
                raise FormatError(f"--data {path}: the folder holds no text files ({', '.join(TEXT_SUFFIXES)})")
        elif path.is_file():
            files = [path]
        else:
            raise FormatError(f"--data {path}: no such file or folder")
        for f in files:
            try:
                texts.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise FormatError(f"--data {f}: not UTF-8 text") from None
    return CalibrationText("\n\n".join(texts), ",".join(str(p) for p in paths))


def model_gguf(model: Path, workdir: Path, progress: bool = False) -> Path:
    """A GGUF the runtime can run: the file itself, or the HF folder converted to f32 in workdir."""
    model = Path(model)
    if model.is_dir():
        from qconv.converter.convert import convert_to_gguf

        out = workdir / "calibration-f32.gguf"
        convert_to_gguf(model, out, "f32", progress=progress)
        return out
    if not model.is_file():
        raise FormatError(f"{model}: no such GGUF file or Hugging Face folder")
    return model


def chunks_of(tokens: list[int], ctx: int, bos: int | None) -> list[list[int]]:
    """Whole chunks of ctx tokens (the remainder is dropped, as llama-imatrix does), BOS first when given."""
    out = []
    for start in range(0, len(tokens) - ctx + 1, ctx):
        chunk = tokens[start : start + ctx]
        if bos is not None:
            chunk = [bos] + chunk[1:]
        out.append(chunk)
    return out


def collect_imatrix(
    gguf_path: Path, data: CalibrationText, ctx: int = DEFAULT_CTX, threads: int | None = None,
    max_chunks: int | None = None, log=None,
) -> ImportanceMatrix:  # fmt: skip
    from qconv.converter.quality.runner import Runner
    from qconv.runtime.imatrix import ImatrixCollector

    runner = Runner(gguf_path, ctx, threads)
    tokens = runner.tokenize(data.text, runner.add_bos)
    if len(tokens) < ctx:
        raise FormatError(
            f"calibration text ({data.name}) is {len(tokens)} tokens, shorter than one context window of {ctx}; "
            "give more text or a smaller -c"
        )
    chunks = chunks_of(tokens, ctx, runner.bos if runner.add_bos else None)
    if max_chunks and max_chunks < len(chunks):  # spread over the whole text, so every suite is seen
        step = len(chunks) / max_chunks
        chunks = [chunks[int(i * step)] for i in range(max_chunks)]
    with ImatrixCollector(runner.model) as collector:
        for i, chunk in enumerate(chunks):
            runner.run(chunk)
            if log:
                log(f"chunk {i + 1}/{len(chunks)} ({runner.tokens / max(runner.seconds, 1e-9):.0f} tokens/s)")
        stats = collector.stats()
    result = ImportanceMatrix(datasets=[data.name], chunk_count=len(chunks), chunk_size=ctx)
    for name, s in sorted(stats.items()):
        if name.startswith("blk."):
            result.sums[name] = s.sums
            result.counts[name] = float(s.count)
            if s.expert_counts is not None:  # stacked experts: llama-imatrix's count per expert
                result.expert_counts[name] = s.expert_counts
    return result


def calibrate(
    model: Path, out: Path, data_paths: list[Path] | None = None, ctx: int = DEFAULT_CTX,
    threads: int | None = None, max_chunks: int | None = None, log=None, progress: bool = False,
) -> ImportanceMatrix:  # fmt: skip
    """Write the importance matrix of MODEL (HF folder or GGUF) over the calibration data to out."""
    check_output_file(out)  # before minutes of calibration
    data = read_calibration_data(data_paths)
    with tempfile.TemporaryDirectory(prefix="qconv-calibrate-") as tmp:
        gguf_path = model_gguf(model, Path(tmp), progress)
        imatrix = collect_imatrix(gguf_path, data, ctx, threads, max_chunks, log)
    write_imatrix(out, imatrix)
    imatrix.path = Path(out)
    return imatrix


@contextlib.contextmanager
def calibrated_imatrix(model: Path, data: list[Path] | tuple = (), ctx: int = DEFAULT_CTX, threads=None, log=None):
    """`to-gguf --calibrate DATA`: an importance matrix of MODEL over DATA ('builtin' or nothing: the built-in
    suites) in a temporary file that lives as long as the context."""
    paths = [Path(p) for p in data if str(p) != "builtin"] or None
    with tempfile.TemporaryDirectory(prefix="qconv-imatrix-") as tmp:
        out = Path(tmp) / "imatrix.gguf"
        calibrate(model, out, paths, ctx, threads, log=log)
        yield out
