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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qconv.converter.quality import suites as suite_table
from qconv.converter.quality.task_files import UserTask, chat_renderer, item_text, read_items
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
    # .jsonl items rendered with the model's chat template: their markers (<|im_start|>, ...) are read as the
    # special tokens the model sees in a chat, as `qrun` reads a rendered prompt; plain text is read as text
    parse_special: bool = False


@dataclass
class CalibrationFiles:
    """The calibration data read and checked, its .jsonl items not yet rendered: that takes the template of the
    model being calibrated, which an HF folder only has after conversion."""

    parts: list[str | list[UserTask]]  # a text file's text, or a .jsonl file's items, in order
    name: str

    def rendered(self, render: Callable[[list[dict]], str] | None) -> CalibrationText:
        texts, templated = [], False
        for part in self.parts:
            if isinstance(part, str):
                texts.append(part)
            else:
                texts.extend(item_text(item, render) for item in part)
                templated = templated or (render is not None and not all(item.raw for item in part))
        return CalibrationText("\n\n".join(texts), self.name, templated)


def read_calibration_files(paths: list[Path] | None) -> CalibrationFiles:
    """The user's files (folders: their text files, sorted, recursively; a .jsonl file: one prompt item per line,
    as a task file's), or the built-in calibration suites."""
    if not paths:
        return CalibrationFiles([suite_table.calibration_text()], BUILTIN)
    parts: list[str | list[UserTask]] = []
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
            if f.suffix.lower() == ".jsonl":
                parts.append(read_items(f, tasks=False))
                continue
            try:
                parts.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise FormatError(f"--data {f}: not UTF-8 text") from None
    return CalibrationFiles(parts, ",".join(str(p) for p in paths))


def read_calibration_data(
    paths: list[Path] | None, render: Callable[[list[dict]], str] | None = None
) -> CalibrationText:
    """The calibration text: the files' text, each .jsonl item rendered by render (the chat template of the model
    being calibrated, e.g. Model.render_chat; task_files.chat_renderer(model) gives it or None) unless the item
    is raw; without render, the items' prompt text."""
    return read_calibration_files(paths).rendered(render)


def model_gguf(model: Path, workdir: Path, progress: bool = False) -> Path:
    """A GGUF the runtime can run: the file itself, or the HF folder converted to f32 in workdir."""
    model = Path(model)
    if model.is_dir():
        from qconv.converter.convert import convert_to_gguf

        out = workdir / "f32.gguf"
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
    gguf_path: Path, data: CalibrationFiles, ctx: int = DEFAULT_CTX, threads: int | None = None,
    max_chunks: int | None = None, log=None,
) -> ImportanceMatrix:  # fmt: skip
    from qconv.converter.quality.runner import Runner
    from qconv.runtime.imatrix import ImatrixCollector

    runner = Runner(gguf_path, ctx, threads)
    text = data.rendered(chat_renderer(runner.model))
    tokens = ([runner.bos] if runner.add_bos else []) + runner.tokenizer.encode(
        text.text, add_special=False, parse_special=text.parse_special
    )
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
    data = read_calibration_files(data_paths)  # every file read and checked before minutes of conversion
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
