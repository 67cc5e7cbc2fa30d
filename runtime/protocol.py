"""The one interface every model runtime offers (the C runtime's `Model`, ONNX Runtime's `OnnxModel`) and every
caller uses (generation, evaluation, calibration, the server): sequences of tokens in a cache, evaluated to logits.

A model holds `n_seq` sequences (KV slots) of up to `n_ctx` tokens each. Tokens are appended to a sequence with
`evaluate` (one sequence) or `evaluate_batch` (several in one forward pass: a decode step of N streams reads each
weight once); a sequence's logits do not depend on what else was in the batch. `cached(seq)` says what a sequence
holds, so a caller can keep the prefix a new prompt shares (`prefill`), `truncate` cuts it back, `reset` empties it.

    with Model("model.gguf", n_seq=4) as m:
        last = prefill(m, m.tokenize("Hello"), seq=2)      # (n_vocab,) float32
        rows = m.evaluate_batch([(0, [1, 2]), (2, [42])])  # each step's last logits
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class SequenceModel(Protocol):
    n_vocab: int
    n_ctx: int  # tokens per sequence
    n_seq: int  # sequences held at once

    @property
    def chat_template(self) -> str | None: ...

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]: ...

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, tools=None) -> str: ...

    def cached(self, seq: int = 0) -> list[int]:
        """The tokens in the sequence's cache, in order (a copy)."""
        ...

    def truncate(self, n: int, seq: int = 0) -> bool:
        """Keep the first n cached tokens of the sequence; False (and nothing changed) when the cache cannot go back
        there (a sliding window has dropped what position n needs)."""
        ...

    def reset(self, seq: int | None = None) -> None:
        """Empty one sequence's cache (None: every sequence)."""
        ...

    def evaluate(self, tokens: Sequence[int], seq: int = 0, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the sequence; the logits after the last one, (n_vocab,) float32, or every position's,
        (len(tokens), n_vocab). FormatError when the context is full or an id is outside the vocabulary."""
        ...

    def evaluate_batch(self, steps: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        """Several sequences' tokens in one call, each sequence at most once: [(seq, tokens), ...] -> each step's
        last logits (n_vocab,), in order; bit-identical to what evaluate gives each alone."""
        ...

    def close(self) -> None: ...


def shared_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens two sequences share (the cache a new prompt can keep)."""
    common = 0
    for a, b in zip(cached, tokens):
        if a != b:
            break
        common += 1
    return common


def prefill(model: SequenceModel, tokens: Sequence[int], seq: int = 0) -> np.ndarray:
    """Evaluate a prompt in a sequence, keeping the cached prefix it shares with what the sequence held (a follow-up
    chat turn, the few-shot prompt of a task suite); the last token is evaluated again at least, so the logits are
    fresh. Returns the logits after the prompt."""
    tokens = list(tokens)
    common = min(shared_prefix(model.cached(seq), tokens), len(tokens) - 1)
    if not model.truncate(common, seq):
        model.reset(seq)
        common = 0
    return model.evaluate(tokens[common:], seq)
