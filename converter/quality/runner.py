"""One model in the C runtime, as the evaluation, calibration and analysis drive it: fresh-context logits of a
window, long prefixes whose last positions alone are scored, greedy answers, and plain runs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from qconv.formats.errors import FormatError
from qconv.runtime.protocol import prefill


class Runner:
    """One model in the C runtime (runtime.model.Model): fresh-context logits of a window, long prefixes whose
    last positions alone are scored, greedy continuations, and plain runs (calibration). Time and tokens are
    counted for the speed line."""

    def __init__(self, path: Path, ctx: int, threads: int | None, model=None):
        """model: any qconv.runtime.protocol.SequenceModel (default: the C runtime's Model of path)."""
        from qconv.runtime.model import Model  # the native library loads with the first runner

        self.path = Path(path)
        self.model = model if model is not None else Model(str(path), threads=threads, ctx=ctx)
        self.tokenizer = self.model.tokenizer
        self.add_bos = self.tokenizer.add_bos
        self.bos = self.tokenizer.bos
        self.n_vocab = self.tokenizer.n_vocab
        self.seconds = 0.0
        self.tokens = 0

    def tokenize(self, text: str, bos: bool) -> list[int]:
        tokens = list(self.tokenizer.encode(text, add_special=False))
        return ([self.bos] if bos else []) + tokens

    def _eval(self, tokens: list[int], all_logits: bool) -> np.ndarray:
        """Append tokens to the cache; the logits of every position, or only of the last (one row)."""
        try:
            out = self.model.evaluate(tokens, all_logits=all_logits)
        except FormatError as e:
            raise FormatError(f"{self.path}: {e}") from None
        return out if all_logits else out[None, :]

    def _reset(self) -> None:
        self.model.reset()

    @property
    def kv(self) -> list[int]:
        """The tokens in the cache, in order (what a greedy prompt may reuse)."""
        return self.model.cached()

    def _prefill(self, tokens: list[int]) -> np.ndarray:
        """The logits after tokens, reusing the cached prefix they share with what ran before: items of one task
        suite share their few-shot prompt, and a passkey item is the long-context document just scored."""
        return prefill(self.model, tokens)

    def logits(self, tokens: list[int], score_last: int | None = None) -> np.ndarray:
        """Logits at every position of tokens from an empty cache (only the last score_last rows if given)."""
        t0 = time.perf_counter()
        if score_last is None or score_last >= len(tokens):
            self._reset()
            out = self._eval(tokens, all_logits=True)  # from an empty cache
        else:
            self._reset()
            self._eval(tokens[: len(tokens) - score_last], all_logits=False)
            out = self._eval(tokens[len(tokens) - score_last :], all_logits=True)
        self.seconds += time.perf_counter() - t0
        self.tokens += len(tokens)
        return out

    def run(self, tokens: list[int]) -> None:
        """Evaluate tokens from an empty cache, only for their side effects (activation statistics)."""
        t0 = time.perf_counter()
        self._reset()
        self._eval(tokens, all_logits=False)
        self.seconds += time.perf_counter() - t0
        self.tokens += len(tokens)

    def greedy(self, tokens: list[int], max_new: int, stop: str | re.Pattern = "\n") -> str:
        """The greedy continuation of tokens, up to max_new tokens, end of generation, or the first stop string
        (or match of a stop pattern) in the text after its leading spaces."""
        t0 = time.perf_counter()
        last = self._prefill(tokens)
        out: list[int] = []
        text = ""
        for _ in range(max_new):
            token = int(np.argmax(last))
            if self.tokenizer.is_eog(token):
                break
            out.append(token)
            text = self.tokenizer.decode(out)
            if stop and (stop.search(text.lstrip()) if isinstance(stop, re.Pattern) else stop in text.lstrip()):
                break
            last = self._eval([token], all_logits=False)[0]
        self.seconds += time.perf_counter() - t0
        self.tokens += len(tokens) + len(out)
        return text
