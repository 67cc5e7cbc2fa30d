"""`qconv eval --text NAME=FILE`: a user's text scored the way llama-perplexity scores `-f FILE -c CTX`, so the
KLD, top-1 and perplexity ratio of a file read the same in both tools.

llama-perplexity (tools/perplexity/perplexity.cpp, `perplexity` and `kl_divergence`) tokenizes the whole file once
with the vocabulary's special tokens (BOS when the vocabulary adds one, never EOS), cuts it into
n_chunk = n_tokens / n_ctx whole windows (the tail is dropped), puts BOS in place of each window's first token
when the vocabulary adds one, and scores only the second half of each window: the logits of positions
first = n_ctx/2 .. n_ctx-2 against the tokens at first+1 .. n_ctx-1, so that every scored token has at least
n_ctx/2 tokens of context. It asks for two windows; one is enough here (the caller bootstraps over chunks).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.formats.errors import FormatError

MAX_TEXT_BYTES = 256 << 20
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# ---------------------------------------------------------------- the option and the file


def parse_text_option(spec: str) -> tuple[str, Path]:
    """'NAME=FILE' -> (NAME, FILE). The name labels the report's row, so it may not be a built-in suite's."""
    from qconv.converter.quality.suites import SUITES

    name, sep, file = spec.partition("=")
    if not sep or not file:
        raise FormatError(f"--text {spec}: expected NAME=FILE (e.g. wiki=wiki.test.raw)")
    if not NAME_PATTERN.fullmatch(name):
        raise FormatError(f"--text {spec}: the name '{name}' must be 1 to 64 of the characters A-Z a-z 0-9 _ . -")
    if name in SUITES:
        raise FormatError(f"--text {spec}: '{name}' is a built-in suite's name; choose another for the text")
    return name, Path(file)


def load_text(path: Path) -> str:
    """The file's text, checked before any model is loaded: it exists, is not empty, is at most 256 MiB of UTF-8."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FormatError(f"{path}: cannot read the text file: {e.strerror}") from None
    if not path.is_file():
        raise FormatError(f"{path}: not a regular file; expected a text file")
    if size > MAX_TEXT_BYTES:
        raise FormatError(f"{path}: {size} bytes, more than the {MAX_TEXT_BYTES >> 20} MiB a text may have")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read the text file: {e.strerror}") from None
    if not data:
        raise FormatError(f"{path}: the text file is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) {e.reason}") from None


@dataclass(frozen=True)
class EvalText:
    """One `--text NAME=FILE`: its name, file, text and the text's sha256 (what a reference cache records)."""

    name: str
    path: Path
    text: str
    sha256: str


def read_texts(specs: list[str]) -> list[EvalText]:
    """Every --text option parsed and its file read; a name given twice is an error."""
    texts: list[EvalText] = []
    for spec in specs:
        name, path = parse_text_option(spec)
        if any(t.name == name for t in texts):
            raise FormatError(f"--text {spec}: the name '{name}' is given twice")
        text = load_text(path)
        texts.append(EvalText(name, path, text, hashlib.sha256(text.encode("utf-8")).hexdigest()))
    return texts


def text_tokens(runner, text: EvalText, n_ctx: int) -> list[int]:
    """The whole text tokenized once, BOS first when the vocabulary adds one; at least one window of n_ctx."""
    tokens = runner.tokenize(text.text, runner.add_bos)
    if len(tokens) < n_ctx:
        raise FormatError(f"{text.path}: {len(tokens)} tokens, fewer than one window of {n_ctx}")
    return tokens


# ---------------------------------------------------------------- windows


def text_windows(tokens: list[int], n_ctx: int, bos: int | None) -> list[tuple[list[int], int]]:
    """llama-perplexity's windows: (window tokens, first scored position) per whole chunk of n_ctx tokens. With a
    bos id, it replaces each window's first token. Position j in first .. n_ctx-2 predicts window[j + 1]."""
    if n_ctx < 4:
        raise ValueError(f"text_windows: n_ctx {n_ctx} leaves nothing to score")
    first = n_ctx // 2
    windows = []
    for start in range(0, len(tokens) // n_ctx * n_ctx, n_ctx):
        window = list(tokens[start : start + n_ctx])
        if bos is not None:
            window[0] = bos
        windows.append((window, first))
    return windows


def scored_logits(runner, window: list[int], first: int) -> np.ndarray:
    """The logits of positions first .. n_ctx-2 (the scored ones) from an empty cache. The window's last token
    is never an input of a scored position, so it is left out; the positions before `first` fill the cache."""
    return runner.logits(window[:-1], score_last=len(window) - 1 - first)
