"""`Model`: a GGUF run by libqrt — tokenize, evaluate (all-position logits for evaluation), generate a token
stream, render chats with the file's own template.

    m = Model("model.gguf", threads=2, ctx=2048)
    ids = m.tokenize("Hello")
    logits = m.logits(ids)                     # (len(ids), n_vocab) float32, one row per position
    for piece in m.generate("Once upon a time", max_tokens=32, temperature=0):
        print(piece, end="")
    vectors = m.embed(["first text", "second text"])   # (2, n_embd) float32, pooled and normalised as the file says

An encoder (bert) answers only embed; every family answers it (decoders: the mean of the rows after the final norm).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.formats.errors import FormatError
from qconv.runtime import mapped_file_guard
from qconv.runtime._native import ffi, lib
from qconv.runtime.chat import render_chat_for
from qconv.runtime.generation import generate
from qconv.runtime.tokenizer import Tokenizer

TYPE_NAMES = {
    0: "f32",
    1: "f16",
    2: "q4_0",
    3: "q4_1",
    6: "q5_0",
    7: "q5_1",
    8: "q8_0",
    10: "q2_K",
    11: "q3_K",
    12: "q4_K",
    13: "q5_K",
    14: "q6_K",
    20: "iq4_nl",
    30: "bf16",
}


@dataclass
class Timings:
    prompt_tokens: int
    prompt_seconds: float
    gen_tokens: int
    gen_seconds: float

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        return self.gen_tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0


def shared_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens two sequences share (the cache a new prompt can keep)."""
    common = 0
    for a, b in zip(cached, tokens):
        if a != b:
            break
        common += 1
    return common


class Model:
    """A loaded GGUF model. `threads=None` uses every CPU; `ctx` is the KV-cache length in tokens;
    `kv_f32=True` keeps the cache in f32 (exact comparisons), else f16 as llama.cpp does; `pack=False` keeps the
    weights as stored instead of repacking q4_0/q4_1/q5_0/q5_1/q8_0/q4_K/q6_K matrices into 16-row groups (slower; for comparisons)."""

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        ctx: int = 2048,
        *,
        kv_f32: bool = False,
        n_batch: int = 64,
        pack: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FormatError(f"{self.path}: no such file")
        mapped_file_guard.install("qrun")  # the weights stay mapped: a truncated file is one line, not SIGBUS
        params = lib.qrt_model_default_params()
        params.n_ctx = int(ctx)
        params.n_threads = int(threads) if threads else 0
        params.n_batch = int(n_batch)
        params.kv_f32 = 1 if kv_f32 else 0
        params.no_pack = 0 if pack else 1
        err = ffi.new("char[1024]")
        handle = lib.qrt_model_open(str(self.path).encode(), ffi.new("qrt_model_params *", params), err, len(err))
        if handle == ffi.NULL:
            raise FormatError(ffi.string(err).decode(errors="replace"))
        self._handle = ffi.gc(handle, lib.qrt_model_free)
        self.tokenizer = Tokenizer.from_open_gguf(lib.qrt_model_gguf(self._handle), str(self.path))
        self.n_vocab = lib.qrt_model_n_vocab(self._handle)
        self.n_ctx = lib.qrt_model_n_ctx(self._handle)
        self.n_embd = lib.qrt_model_n_embd(self._handle)
        self.is_encoder = bool(lib.qrt_model_is_encoder(self._handle))
        self.embed_max_tokens = lib.qrt_model_embed_max_tokens(self._handle)
        self._cached: list[int] = []  # the tokens whose keys/values are in the cache, in order

    # ---- metadata ----

    @property
    def threads(self) -> int:
        return lib.qrt_model_n_threads(self._handle)

    @property
    def description(self) -> str:
        return ffi.string(lib.qrt_model_describe(self._handle)).decode()

    @property
    def file_bytes(self) -> int:
        return lib.qrt_model_file_bytes(self._handle)

    @property
    def kv_bytes(self) -> int:
        return lib.qrt_model_kv_bytes(self._handle)

    def meta_str(self, key: str) -> str | None:
        ptr, length = ffi.new("const char **"), ffi.new("size_t *")
        if lib.qrt_model_meta_str(self._handle, key.encode(), ptr, length) != 0:
            return None
        return ffi.unpack(ptr[0], length[0]).decode("utf-8", errors="replace")

    @property
    def chat_template(self) -> str | None:
        return self.meta_str("tokenizer.chat_template")

    def kernel_variants(self) -> dict[str, str]:
        """Weight type -> the kernel variant its matmuls dispatch to on this machine ("avx512", or "avx512, packed
        x16" when its matrices were repacked into 16-row groups at load)."""
        types = ffi.new("int[32]")
        n = lib.qrt_model_weight_types(self._handle, types, 32)
        out = {}
        for t in types[0:n]:
            variant = lib.qrt_kernel_variant_for_type(t)
            name = ffi.string(variant).decode() if variant != ffi.NULL else "none"
            out[TYPE_NAMES.get(t, str(t))] = name + (
                ", packed x16" if lib.qrt_model_type_packed(self._handle, t) else ""
            )
        return out

    # ---- text ----

    def tokenize(self, text: str | bytes, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), unparse_special=special)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        template = self.chat_template
        if template is None:
            raise FormatError(f"{self.path}: the file has no tokenizer.chat_template")
        return render_chat_for(template, self.tokenizer, messages, add_generation_prompt)

    # ---- evaluation ----

    def reset(self) -> None:
        """Empty the KV cache."""
        lib.qrt_model_set_n_past(self._handle, 0)
        self._cached = []

    @property
    def n_past(self) -> int:
        return lib.qrt_model_n_past(self._handle)

    def _refuse_encoder(self) -> None:
        if self.is_encoder:
            arch = self.meta_str("general.architecture")
            raise FormatError(f"{self.path}: {arch} is an embedding model: use embed (qrun --embed), not generation")

    def _eval(self, tokens: Sequence[int], all_logits: np.ndarray | None = None) -> None:
        self._refuse_encoder()
        if not tokens:
            return
        if len(self._cached) + len(tokens) > self.n_ctx:
            raise FormatError(
                f"context full: {len(self._cached)} cached + {len(tokens)} new tokens > context {self.n_ctx} (use a larger ctx)"
            )
        arr = np.ascontiguousarray(tokens, dtype=np.int32)
        out = ffi.NULL if all_logits is None else ffi.from_buffer("float[]", all_logits)
        if lib.qrt_model_eval(self._handle, ffi.from_buffer("int32_t[]", arr), len(arr), out) != 0:
            raise FormatError(ffi.string(lib.qrt_model_error(self._handle)).decode(errors="replace"))
        self._cached.extend(int(t) for t in tokens)

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Append tokens to the cache; returns the logits after the last one (a copy)."""
        self._eval(tokens)
        return self.last_logits()

    def last_logits(self) -> np.ndarray:
        ptr = lib.qrt_model_logits(self._handle)
        if ptr == ffi.NULL:
            raise FormatError("no logits yet: evaluate some tokens first")
        return np.frombuffer(ffi.buffer(ptr, 4 * self.n_vocab), dtype=np.float32).copy()

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits at every position of `tokens` from an empty cache: shape (len(tokens), n_vocab)."""
        self.reset()
        out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
        self._eval(tokens, out)
        return out

    def _feed_prompt(self, tokens: list[int]) -> None:
        """Evaluate a prompt, reusing the cached prefix it shares with what was evaluated before."""
        common = min(shared_prefix(self._cached, tokens), len(tokens) - 1)  # one token at least: fresh logits
        if lib.qrt_model_set_n_past(self._handle, common) != 0:  # too far back for a sliding-window cache
            common = 0
            lib.qrt_model_set_n_past(self._handle, 0)
        self._cached = self._cached[:common]
        self._eval(tokens[common:])

    def timings(self) -> Timings:
        ps, pt, gs, gt = ffi.new("double *"), ffi.new("int *"), ffi.new("double *"), ffi.new("int *")
        lib.qrt_model_timings(self._handle, ps, pt, gs, gt)
        return Timings(pt[0], ps[0], gt[0], gs[0])

    def reset_timings(self) -> None:
        lib.qrt_model_reset_timings(self._handle)

    # ---- embeddings ----

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """One vector per text, shape (len(texts), n_embd) float32: each text tokenized with the vocabulary's
        specials and cut to the model's embedding length (Hugging Face's truncation), its hidden states pooled and
        normalised as the file says. batch_size texts go through each forward pass (an encoder runs them as one
        batch of rows; a decoder one after the other from an empty cache)."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("embed takes a sequence of texts; wrap a single text in a list")
        ids = [self.tokenizer.encode_truncated(text, self.embed_max_tokens) for text in texts]
        return self.embed_tokens(ids, batch_size)

    def embed_tokens(self, sequences: Sequence[Sequence[int]], batch_size: int = 32) -> np.ndarray:
        """embed for token ids already made (each sequence 1..embed_max_tokens ids, specials included)."""
        out = np.empty((len(sequences), self.n_embd), dtype=np.float32)
        step = max(1, int(batch_size))
        for first in range(0, len(sequences), step):
            batch = sequences[first : first + step]
            lens = np.array([len(seq) for seq in batch], dtype=np.int32)
            flat = np.ascontiguousarray(np.concatenate([np.asarray(seq, dtype=np.int64) for seq in batch]))
            if flat.size and (flat.min() < 0 or flat.max() >= self.n_vocab):
                raise FormatError(f"embed: token id outside the vocabulary (0..{self.n_vocab - 1})")
            tokens = flat.astype(np.int32)
            rows = out[first : first + len(batch)]
            status = lib.qrt_model_embed(
                self._handle,
                ffi.from_buffer("int32_t[]", tokens),
                ffi.from_buffer("int32_t[]", lens),
                len(batch),
                ffi.from_buffer("float[]", rows),
            )
            if status != 0:
                raise FormatError(ffi.string(lib.qrt_model_error(self._handle)).decode(errors="replace"))
        if not self.is_encoder:
            self._cached = []  # a decoder's embed ran in its cache
        return out

    # ---- generation ----

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, **options) -> Iterator[str]:
        """Stream generated text; see qconv.runtime.generation.generate for the options."""
        self._refuse_encoder()
        return generate(self, prompt, max_tokens, **options)

    def current_logits(self):
        """The logits after the last evaluated token, as the sampler takes them (a pointer into the run state)."""
        return lib.qrt_model_logits(self._handle)
