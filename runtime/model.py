"""`Model`: a GGUF run by libqrt — tokenize, evaluate (all-position logits for evaluation), generate a token
stream, chat with the file's own template, embed; several sequences at once (`n_seq` KV slots, evaluated together
by `evaluate_batch`). It implements qconv.runtime.protocol.SequenceModel.

    with Model("model.gguf", threads=2, ctx=2048) as m:
        ids = m.tokenize("Hello")
        logits = m.logits(ids)                     # (len(ids), n_vocab) float32, one row per position
        for piece in m.generate("Once upon a time", max_tokens=32, temperature=0):
            print(piece, end="")
        for piece in m.chat([{"role": "user", "content": "Hi"}], max_tokens=32):
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
from qconv.runtime.protocol import shared_prefix
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


__all__ = ["Model", "Timings", "TYPE_NAMES", "shared_prefix"]


class Model:
    """A loaded GGUF model. `threads=None` uses every CPU; `ctx` is the KV-cache length in tokens of each of the
    `n_seq` sequences it holds at once;
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
        n_seq: int = 1,
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
        params.n_seq = max(1, int(n_seq))
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
        self.n_seq = lib.qrt_model_n_seq(self._handle)
        self._cached: list[list[int]] = [[] for _ in range(self.n_seq)]  # per sequence, the tokens in its cache

    def close(self) -> None:
        """Free the weights' mapping, the cache and the threads now (else when the object is collected)."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            ffi.release(handle)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, tools=None) -> str:
        template = self.chat_template
        if template is None:
            raise FormatError(f"{self.path}: the file has no tokenizer.chat_template")
        return render_chat_for(template, self.tokenizer, messages, add_generation_prompt, tools=tools)

    # ---- evaluation (qconv.runtime.protocol) ----

    def _check_seq(self, seq: int) -> None:
        if not 0 <= seq < self.n_seq:
            raise FormatError(f"sequence {seq} outside 0..{self.n_seq - 1}")

    def cached(self, seq: int = 0) -> list[int]:
        self._check_seq(seq)
        return list(self._cached[seq])

    def truncate(self, n: int, seq: int = 0) -> bool:
        self._check_seq(seq)
        if not 0 <= n <= len(self._cached[seq]) or lib.qrt_model_seq_set_n_past(self._handle, seq, n) != 0:
            return False
        del self._cached[seq][n:]
        return True

    def reset(self, seq: int | None = None) -> None:
        """Empty one sequence's cache (None: every sequence)."""
        for s in range(self.n_seq) if seq is None else [seq]:
            self._check_seq(s)
            lib.qrt_model_seq_set_n_past(self._handle, s, 0)
            self._cached[s] = []

    @property
    def n_past(self) -> int:
        return lib.qrt_model_n_past(self._handle)

    def evaluate(self, tokens: Sequence[int], seq: int = 0, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the sequence; the logits after the last one (n_vocab,), or of every one."""
        self._refuse_encoder()
        self._check_seq(seq)
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise FormatError("evaluate: no tokens")
        self._check_room(seq, len(tokens))
        if all_logits:
            out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
            self._decode([(seq, tokens)], out, every_row=True)
            return out
        out = np.empty((1, self.n_vocab), dtype=np.float32)
        self._decode([(seq, tokens)], out)
        return out[0]

    def evaluate_batch(self, steps: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        """Several sequences' tokens in one call (each sequence at most once); each step's last logits. Single-token
        steps run as the rows of one forward pass, each with the kernels it runs alone."""
        self._refuse_encoder()
        steps = [(int(seq), [int(t) for t in tokens]) for seq, tokens in steps]
        seen = set()
        for seq, tokens in steps:
            self._check_seq(seq)
            if seq in seen:
                raise FormatError(f"evaluate_batch: sequence {seq} appears twice")
            if not tokens:
                raise FormatError(f"evaluate_batch: no tokens for sequence {seq}")
            seen.add(seq)
            self._check_room(seq, len(tokens))
        out = np.empty((len(steps), self.n_vocab), dtype=np.float32)
        if steps:
            self._decode(steps, out)
        return list(out)

    def _check_room(self, seq: int, n: int) -> None:
        if len(self._cached[seq]) + n > self.n_ctx:
            raise FormatError(
                f"context full: {len(self._cached[seq])} cached + {n} new tokens > context {self.n_ctx} (use a larger ctx)"
            )

    def _decode(self, steps: list[tuple[int, list[int]]], out: np.ndarray, every_row: bool = False) -> None:
        """qrt_model_decode over the steps: a logits row for each step's last token (every token with every_row)."""
        n = sum(len(tokens) for _, tokens in steps)
        entries = ffi.new("qrt_batch_entry[]", n)
        i = 0
        for seq, tokens in steps:
            past = len(self._cached[seq])
            for k, token in enumerate(tokens):
                entries[i].token, entries[i].seq, entries[i].pos = token, seq, past + k
                entries[i].logits = 1 if every_row or k == len(tokens) - 1 else 0
                i += 1
        if lib.qrt_model_decode(self._handle, entries, n, ffi.from_buffer("float[]", out)) != 0:
            raise FormatError(ffi.string(lib.qrt_model_error(self._handle)).decode(errors="replace"))
        for seq, tokens in steps:
            self._cached[seq].extend(tokens)

    def _refuse_encoder(self) -> None:
        if self.is_encoder:
            arch = self.meta_str("general.architecture")
            raise FormatError(f"{self.path}: {arch} is an embedding model: use embed (qrun --embed), not generation")

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Append tokens to sequence 0; the logits after the last one (evaluate's short form)."""
        return self.evaluate(tokens)

    def logits(self, tokens: Sequence[int], seq: int = 0) -> np.ndarray:
        """Logits at every position of `tokens` from an empty cache: shape (len(tokens), n_vocab)."""
        self.reset(seq)
        return self.evaluate(tokens, seq, all_logits=True)

    def record_activations(self, collector) -> None:
        """Add every weight matmul's input rows to an imatrix collector (qconv.runtime.imatrix.ImatrixCollector)
        from now on; None stops it."""
        lib.qrt_model_set_imatrix(self._handle, ffi.NULL if collector is None else collector.native)

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
            self._cached[0] = []  # a decoder's embed ran in sequence 0's cache
        return out

    # ---- generation ----

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, **options) -> Iterator[str]:
        """Stream generated text; see qconv.runtime.generation.generate for the options."""
        self._refuse_encoder()
        return generate(self, prompt, max_tokens, **options)

    def chat(self, messages: list[dict], max_tokens: int = 256, *, tools=None, **options) -> Iterator[str]:
        """Stream the answer to a conversation ([{"role", "content"}, ...]) rendered with the file's chat template;
        the options as generate's. A follow-up turn reuses the cached prefix of the previous one."""
        prompt = self.render_chat(messages, add_generation_prompt=True, tools=tools)
        return self.generate(prompt, max_tokens, **options)  # tokenized as qrun tokenizes a rendered chat
