"""Thin Python view of libqrt's tokenizer, streaming detokenizer and sampler (native/api/qrt_tokenizer.h)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qconv.formats.errors import FormatError
from qconv.runtime._native import ffi, lib


class Tokenizer:
    """The tokenizer of a GGUF file (tokenizer.ggml.* metadata), ids identical to llama.cpp's."""

    def __init__(self, handle) -> None:
        self._handle = ffi.gc(handle, lib.qrt_tokenizer_free)

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        err = ffi.new("char[512]")
        handle = lib.qrt_tokenizer_load(str(path).encode(), err, len(err))
        if handle == ffi.NULL:
            raise FormatError(ffi.string(err).decode(errors="replace"))
        return cls(handle)

    @classmethod
    def from_open_gguf(cls, gguf_file, name: str) -> Tokenizer:
        """From a `const gguf_file *` the caller already has open (e.g. lib.qrt_model_gguf(model))."""
        err = ffi.new("char[512]")
        handle = lib.qrt_tokenizer_from_gguf(gguf_file, name.encode(), err, len(err))
        if handle == ffi.NULL:
            raise FormatError(ffi.string(err).decode(errors="replace"))
        return cls(handle)

    @property
    def n_vocab(self) -> int:
        return lib.qrt_tokenizer_n_vocab(self._handle)

    @property
    def bos(self) -> int:
        return lib.qrt_tokenizer_bos(self._handle)

    @property
    def eos(self) -> int:
        return lib.qrt_tokenizer_eos(self._handle)

    @property
    def add_bos(self) -> bool:
        return bool(lib.qrt_tokenizer_add_bos(self._handle))

    @property
    def add_eos(self) -> bool:
        return bool(lib.qrt_tokenizer_add_eos(self._handle))

    @property
    def model_name(self) -> str:
        return ffi.string(lib.qrt_tokenizer_model_name(self._handle)).decode()

    @property
    def pre_name(self) -> str:
        return ffi.string(lib.qrt_tokenizer_pre_name(self._handle)).decode()

    def is_eog(self, token: int) -> bool:
        return bool(lib.qrt_tokenizer_is_eog(self._handle, token))

    def is_control(self, token: int) -> bool:
        return bool(lib.qrt_tokenizer_is_control(self._handle, token))

    def token_text(self, token: int) -> bytes:
        """The raw vocabulary entry (e.g. 'Ġthe' or '▁the'), not the decoded piece."""
        size = ffi.new("size_t *")
        ptr = lib.qrt_tokenizer_token_text(self._handle, token, size)
        if ptr == ffi.NULL:
            raise IndexError(f"token id {token} outside the vocabulary of {self.n_vocab}")
        return ffi.buffer(ptr, size[0])[:]

    def encode(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode() if isinstance(text, str) else bytes(text)
        capacity = len(data) + 8
        while True:
            out = ffi.new("int32_t[]", capacity)
            n = lib.qrt_tokenizer_encode(self._handle, data, len(data), add_special, parse_special, out, capacity)
            if n == -(2**31):
                raise MemoryError(f"tokenizing {len(data)} bytes")
            if n >= 0:
                return list(out[0:n])
            capacity = -n

    def encode_truncated(self, text: str | bytes, max_tokens: int) -> list[int]:
        """Ids with the vocabulary's specials (BOS/EOS, [CLS]/[SEP] for bert), the text's own ids cut so that the
        whole is at most max_tokens (Hugging Face's truncation of one text); special tokens in the text match."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        max_tokens = max(0, min(int(max_tokens), 2**31 - 1))
        capacity = min(len(data) + 8, max_tokens) or 1
        while True:
            out = ffi.new("int32_t[]", capacity)
            n = lib.qrt_tokenizer_encode_truncated(self._handle, data, len(data), max_tokens, out, capacity)
            if n == -(2**31):
                raise MemoryError(f"tokenizing {len(data)} bytes")
            if n >= 0:
                return list(out[0:n])
            capacity = -n

    def wordpiece_words(self, text: str | bytes) -> list[str]:
        """bert vocabularies: the normalized, pre-tokenized words WordPiece sees (each cut at 100 characters)."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        capacity = 4 * len(data) + 16
        while True:
            out = ffi.new("char[]", capacity)
            n = lib.qrt_tokenizer_wordpiece_words(self._handle, data, len(data), out, capacity)
            if n == -(2**31):
                raise ValueError(f"not a WordPiece (bert) vocabulary: {self.model_name}")
            if n >= 0:
                words = ffi.buffer(out, n)[:].decode()
                return words.split(" ") if words else []
            capacity = -n

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        buf = ffi.new("char[]", 64)
        n = lib.qrt_tokenizer_token_to_piece(self._handle, token, buf, 64, special)
        if n < 0:
            buf = ffi.new("char[]", -n)
            n = lib.qrt_tokenizer_token_to_piece(self._handle, token, buf, -n, special)
        return ffi.buffer(buf, n)[:]

    def decode_bytes(self, ids: Iterable[int], remove_special: bool = False, unparse_special: bool = False) -> bytes:
        ids = list(ids)
        arr = ffi.new("int32_t[]", ids)
        capacity = 16 * len(ids) + 16
        while True:
            out = ffi.new("char[]", capacity)
            n = lib.qrt_tokenizer_decode(self._handle, arr, len(ids), out, capacity, remove_special, unparse_special)
            if n == -(2**31):
                raise MemoryError(f"detokenizing {len(ids)} tokens")
            if n >= 0:
                return ffi.buffer(out, n)[:]
            capacity = -n

    def decode(self, ids: Iterable[int], remove_special: bool = False, unparse_special: bool = False) -> str:
        return self.decode_bytes(ids, remove_special, unparse_special).decode("utf-8", errors="replace")

    def stream(self, special: bool = False) -> Detokenizer:
        return Detokenizer(self, special)


class Detokenizer:
    """Token ids in, complete UTF-8 text out (a character split across tokens waits for its last byte)."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self._tokenizer = tokenizer  # keeps the vocabulary alive
        handle = lib.qrt_detokenizer_new(tokenizer._handle, special)
        if handle == ffi.NULL:
            raise MemoryError("creating a detokenizer")
        self._handle = ffi.gc(handle, lib.qrt_detokenizer_free)
        self._len = ffi.new("size_t *")

    def feed_bytes(self, token: int) -> bytes:
        ptr = lib.qrt_detokenizer_feed(self._handle, token, self._len)
        return ffi.buffer(ptr, self._len[0])[:]

    def feed(self, token: int) -> str:
        return self.feed_bytes(token).decode("utf-8")

    def flush(self) -> str:
        ptr = lib.qrt_detokenizer_flush(self._handle, self._len)
        return ffi.buffer(ptr, self._len[0])[:].decode("utf-8")


class Sampler:
    """Penalties, top-k, top-p, min-p, temperature and a seeded draw; temperature <= 0 is greedy."""

    def __init__(
        self,
        n_vocab: int,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        seed: int = 0,
    ) -> None:
        params = ffi.new("qrt_sampler_params *")
        params.temperature = temperature
        params.top_k = top_k
        params.top_p = top_p
        params.min_p = min_p
        params.repeat_penalty = repeat_penalty
        params.repeat_last_n = repeat_last_n
        params.frequency_penalty = frequency_penalty
        params.presence_penalty = presence_penalty
        params.seed = seed & 0xFFFFFFFFFFFFFFFF
        handle = lib.qrt_sampler_new(params, n_vocab)
        if handle == ffi.NULL:
            raise ValueError(
                f"bad sampler parameters: n_vocab={n_vocab}, repeat_penalty={repeat_penalty}, "
                f"repeat_last_n={repeat_last_n}"
            )
        self._handle = ffi.gc(handle, lib.qrt_sampler_free)
        self.n_vocab = n_vocab

    def sample(self, logits) -> int:
        """logits: n_vocab float32 values: a cffi `float *` (e.g. lib.qrt_model_logits(model)) or a buffer
        (numpy array, array('f'))."""
        if isinstance(logits, ffi.CData):
            return lib.qrt_sampler_sample(self._handle, logits, self.n_vocab)
        view = memoryview(logits).cast("B")
        if view.nbytes != 4 * self.n_vocab:
            raise ValueError(f"expected {self.n_vocab} float32 logits, got {view.nbytes} bytes")
        return lib.qrt_sampler_sample(self._handle, ffi.from_buffer("float[]", view), self.n_vocab)

    def accept(self, token: int) -> None:
        lib.qrt_sampler_accept(self._handle, token)

    def reset(self) -> None:
        lib.qrt_sampler_reset(self._handle)
