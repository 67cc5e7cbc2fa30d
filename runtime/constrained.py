"""JSON output held to a JSON schema while it is sampled (OpenAI's response_format `json_object` and
`json_schema`), through llguidance: before each token its matcher gives the set of tokens that keep the text a
prefix of some valid answer, every other logit goes to -inf, and the sampled token advances the matcher. When the
answer is complete nothing but end-of-generation is allowed, so a constrained stream always ends with "stop" or at
its token limit.

llguidance's tokenizer is built from the GGUF's own token table (qconv.runtime.tokenizer.Tokenizer), not from a
Hugging Face tokenizer: the model file is all qrun has. Building it walks the whole vocabulary, so it is built once
per Tokenizer and shared by every constraint on that model (llguidance's matchers are independent of each other).
"""

from __future__ import annotations

import threading
import weakref

import llguidance
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from qconv.formats.errors import FormatError
from qconv.runtime.tokenizer import Tokenizer

ANY_JSON_OBJECT = {"type": "object"}  # response_format {"type": "json_object"}

# No free whitespace between JSON tokens (`{"a":1,"b":[2]}`): a small model left to choose may emit spaces or
# newlines for ever, and compact JSON is the fewest tokens. Given as overrides, so a schema's own `x-guidance`
# cannot turn it back on.
JSON_OPTIONS = {"whitespace_flexible": False}

SPECIAL_TOKEN_MARKER = b"\xff"  # llguidance's prefix for a token that stands for itself, never for its text's bytes


class _GgufVocabulary:
    """What llguidance.TokenizerWrapper reads from a tokenizer: each id's bytes, its specials, BOS/EOS, and a
    tokenize function (llguidance calls it only to re-tokenize text it forces, which JsonConstraint never asks)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos
        self.bos_token_id = tokenizer.bos if tokenizer.bos >= 0 else None
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        for token in range(tokenizer.n_vocab):
            piece = tokenizer.token_to_piece(token, special=True)
            if tokenizer.is_control(token):
                # `<|im_end|>` written by the model is the control token, not the bytes "<|im_end|>" in a string
                self.tokens.append(SPECIAL_TOKEN_MARKER + piece)
                self.special_token_ids.append(token)
            else:
                self.tokens.append(piece)

    def __call__(self, text: bytes) -> list[int]:
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


_ll_tokenizers: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_ll_tokenizers_lock = threading.Lock()


def ll_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """The llguidance tokenizer of this vocabulary, built on first use (about 0.2 s for 49k tokens) and cached for
    as long as the Tokenizer lives."""
    with _ll_tokenizers_lock:
        built = _ll_tokenizers.get(tokenizer)
        if built is None:
            # every end-of-generation token ends an answer, the tokenizer's EOS first (llguidance's own EOS)
            first = [tokenizer.eos] if tokenizer.eos >= 0 else []
            eog = first + [t for t in range(tokenizer.n_vocab) if tokenizer.is_eog(t) and t != tokenizer.eos]
            wrapper = llguidance.TokenizerWrapper(_GgufVocabulary(tokenizer))
            built = llguidance.LLTokenizer(wrapper, n_vocab=tokenizer.n_vocab, eos_token=eog or None)
            _ll_tokenizers[tokenizer] = built
        return built


def _one_line(message: str, limit: int = 400) -> str:
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JsonConstraint:
    """One answer's constraint, used by the token loop (generation.TextStream): mask(logits) before each draw,
    accept(token) after it, is_finished() when the answer is complete. Make a new one for each answer."""

    def __init__(self, matcher: llguidance.LLMatcher, n_tokens: int) -> None:
        self._matcher = matcher
        self._n_tokens = n_tokens
        self._bitmask = allocate_token_bitmask(1, n_tokens)  # int32 words: token t is bit t % 32 of word t // 32

    @classmethod
    def for_schema(cls, tokenizer: Tokenizer, schema: dict | None) -> JsonConstraint:
        """None: any JSON object (json_object); a dict: a JSON value that validates against that schema
        (json_schema: objects, arrays, enums, anyOf, oneOf of disjoint types, $ref to $defs/definitions, string
        and number bounds).
        A schema llguidance cannot compile (a bad type, a missing $ref, an unsatisfiable bound, an unimplemented
        keyword such as `not` or `if`) is a FormatError with its reason on one line."""
        if schema is None:
            schema = ANY_JSON_OBJECT
        if not isinstance(schema, dict):
            raise FormatError(f"JSON schema: expected an object, got {type(schema).__name__}")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
        except (ValueError, TypeError) as exc:  # not serialisable as JSON
            raise FormatError(f"JSON schema: {_one_line(str(exc))}") from exc
        matcher = llguidance.LLMatcher(ll_tokenizer(tokenizer), grammar, log_level=0)
        if matcher.is_error():
            raise FormatError(f"JSON schema: {_one_line(matcher.get_error())}")
        return cls(matcher, tokenizer.n_vocab)

    def allowed(self) -> np.ndarray:
        """A bool per token id: may it come next?"""
        fill_next_token_bitmask(self._matcher, self._bitmask)
        self._check()
        little_endian = self._bitmask.astype("<i4", copy=False)  # a copy only on a big-endian host
        bits = np.unpackbits(little_endian.view(np.uint8), bitorder="little")
        return bits[: self._n_tokens].view(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """The logits (changed in place) with every token the schema does not allow next at -inf; logits beyond
        the vocabulary (a padded output layer) are never allowed."""
        allowed = self.allowed()
        n = min(len(logits), self._n_tokens)
        logits[:n][~allowed[:n]] = -np.inf
        logits[n:] = -np.inf
        return logits

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            raise FormatError(f"constrained output: token {token} does not fit the JSON schema here: {self._error()}")

    def is_finished(self) -> bool:
        """The answer is complete and the schema allows nothing more (only end of generation)."""
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def _check(self) -> None:
        if self._matcher.is_error():
            raise FormatError(f"constrained output: {self._error()}")

    def _error(self) -> str:
        return _one_line(self._matcher.get_error() or self._matcher.stop_reason())
