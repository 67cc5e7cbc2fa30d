"""The token loop shared by the runtimes (the C runtime's Model and the ONNX Runtime backend): sample, stop at an
end-of-generation token or a stop string, stream complete UTF-8 pieces.

A model provides: tokenize(), tokenizer (stream(), is_eog()), n_vocab, n_ctx, _cached (ids in the cache),
_feed_prompt(tokens), _eval(tokens) and current_logits().
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from qconv.formats.errors import FormatError
from qconv.runtime.tokenizer import Sampler


def generate(
    model,
    prompt: str | Sequence[int],
    max_tokens: int = 256,
    *,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 0.95,
    min_p: float = 0.05,
    repeat_penalty: float = 1.0,
    repeat_last_n: int = 64,
    seed: int = 0,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    add_special: bool = True,
    parse_special: bool = True,
    token_ids: list[int] | None = None,
) -> Iterator[str]:
    """Stream the text of up to `max_tokens` generated tokens (temperature <= 0: greedy; max_tokens < 0: no
    limit but the context). Generation ends at an end-of-generation token (unless ignore_eos), at a stop string
    (not included), or when the context is full. `token_ids`, if given, receives the generated ids."""
    tokens = list(prompt) if not isinstance(prompt, str) else model.tokenize(prompt, add_special, parse_special)
    if not tokens:
        raise FormatError("empty prompt")
    sampler = Sampler(
        model.n_vocab,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        repeat_last_n=repeat_last_n,
        seed=seed,
    )
    for t in tokens:
        sampler.accept(t)
    model._feed_prompt(tokens)
    detok = model.tokenizer.stream(special=False)
    held = ""  # text that might be the start of a stop string
    stops = [s for s in stop if s]
    for _ in itertools.count() if max_tokens < 0 else range(max_tokens):
        token = sampler.sample(model.current_logits())
        if not ignore_eos and model.tokenizer.is_eog(token):
            break
        sampler.accept(token)
        if token_ids is not None:
            token_ids.append(token)
        held += detok.feed(token)
        if stops:
            cut = min((i for i in (held.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                if held[:cut]:
                    yield held[:cut]
                return
            keep = max((k for s in stops for k in range(1, len(s)) if held.endswith(s[:k])), default=0)
            if len(held) > keep:
                yield held[: len(held) - keep]
                held = held[len(held) - keep :]
        elif held:
            yield held
            held = ""
        if len(model._cached) >= model.n_ctx:
            break
        model._eval([token])
    tail = held + detok.flush()
    if tail:
        yield tail
