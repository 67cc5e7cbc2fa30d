"""The token loop shared by the runtimes and the server: sample, stop at an end-of-generation token, a stop string
or a finished constraint, stream complete UTF-8 pieces.

`TextStream` is one sequence's state (sampler, constraint, stop strings, detokenizer): the caller evaluates, the
stream turns each row of logits into a token and text. `generate` is the loop for one sequence of any
qconv.runtime.protocol.SequenceModel; the server steps many streams off one batched evaluation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from qconv.formats.errors import FormatError
from qconv.runtime.protocol import prefill
from qconv.runtime.tokenizer import Sampler

FINISH_STOP = "stop"  # an end-of-generation token, a stop string, or a constraint that allows nothing more
FINISH_LENGTH = "length"  # max_tokens, or the context is full


class TextStream:
    """One sequence's generation after its prompt: `step(logits)` samples a token and returns the text it
    completes. `constraint` (qconv.runtime.constrained) masks the logits before sampling and sees every token.
    After the stream finishes (`finished` is "stop" or "length"), `tail()` gives the text held back for a stop
    string or an incomplete UTF-8 character."""

    def __init__(
        self,
        model,
        prompt_tokens: Sequence[int],
        max_tokens: int = 256,
        *,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        constraint=None,
        **sampling,
    ) -> None:
        """sampling: the Sampler's options (temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed),
        with its defaults."""
        self.tokenizer = model.tokenizer
        self.max_tokens = max_tokens
        # the tokens that fit the sequence's context after the prompt, plus the one sampled from the logits of a
        # full cache
        self.room = model.n_ctx - len(prompt_tokens) + 1
        self.ignore_eos = ignore_eos
        self.constraint = constraint
        self.sampler = Sampler(model.n_vocab, **sampling)
        for t in prompt_tokens:
            self.sampler.accept(t)
        self.detok = self.tokenizer.stream(special=False)
        self.stops = [s for s in stop if s]
        self.held = ""  # text that might be the start of a stop string
        self.at_stop_string = False
        self.tokens: list[int] = []
        self.token: int | None = None
        self.finished: str | None = None if max_tokens != 0 else FINISH_LENGTH

    @property
    def needs_eval(self) -> bool:
        """The token just sampled must be evaluated before the next step."""
        return self.finished is None and self.token is not None

    def step(self, logits) -> str:
        """Sample one token from the logits after the last one; the text it completes ("" if held back)."""
        if self.finished is not None:
            raise RuntimeError("step after the stream finished")
        if self.constraint is not None:
            logits = self.constraint.mask(np.asarray(logits, dtype=np.float32))
        token = self.sampler.sample(logits)
        self.token = None
        if not self.ignore_eos and self.tokenizer.is_eog(token):
            self.finished = FINISH_STOP
            return ""
        self.token = token
        self.sampler.accept(token)
        self.tokens.append(token)
        self.held += self.detok.feed(token)
        piece = self._release()
        if self.finished is None:
            if self.constraint is not None:
                self.constraint.accept(token)
                if self.constraint.is_finished():
                    self.finished = FINISH_STOP
            if self.finished is None and 0 <= self.max_tokens <= len(self.tokens):
                self.finished = FINISH_LENGTH
            if self.finished is None and len(self.tokens) >= self.room:
                self.finished = FINISH_LENGTH
        return piece

    def _release(self) -> str:
        """The text of `held` that no stop string can still claim; finishes the stream at a stop string."""
        if not self.stops:
            piece, self.held = self.held, ""
            return piece
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            piece, self.held = self.held[:cut], ""
            self.finished = FINISH_STOP
            self.at_stop_string = True
            return piece
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.held.endswith(s[:k])), default=0)
        piece, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return piece

    def tail(self) -> str:
        """The text still held back, once the stream has finished (a stop string's start that did not complete, an
        incomplete character)."""
        if self.at_stop_string:
            return ""
        out = self.held + self.detok.flush()
        self.held = ""
        return out


def generate(
    model,
    prompt: str | Sequence[int],
    max_tokens: int = 256,
    *,
    add_special: bool = True,
    parse_special: bool = True,
    token_ids: list[int] | None = None,
    seq: int = 0,
    **options,
) -> Iterator[str]:
    """Stream the text of up to `max_tokens` generated tokens of sequence `seq` (temperature <= 0: greedy;
    max_tokens < 0: no limit but the context). Generation ends at an end-of-generation token (unless ignore_eos),
    at a stop string (not included), when a constraint is complete, or when the context is full. The options are
    TextStream's (temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop, ignore_eos,
    constraint). `token_ids`, if given, receives the generated ids."""
    tokens = list(prompt) if not isinstance(prompt, str) else model.tokenize(prompt, add_special, parse_special)
    if not tokens:
        raise FormatError("empty prompt")
    stream = TextStream(model, tokens, max_tokens, **options)
    if stream.finished is None:
        logits = prefill(model, tokens, seq)
    for _ in itertools.count():
        if stream.finished is not None:
            break
        piece = stream.step(logits)
        if stream.token is not None and token_ids is not None:
            token_ids.append(stream.token)
        if piece:
            yield piece
        if stream.needs_eval:
            logits = model.evaluate([stream.token], seq)
    tail = stream.tail()
    if tail:
        yield tail
