"""`qconv eval --ref-cache FILE`: the reference's results computed once and kept, so later candidates are scored
without the reference model.

FILE holds the reference's log-probabilities of every --text in llama-perplexity's `--kl-divergence-base` layout
(tools/perplexity/perplexity.cpp: written by `perplexity` with a logits file, read by `kl_divergence`), so
`llama-perplexity -m QUANT.gguf --kl-divergence-base FILE --kl-divergence` reads it too. Little-endian:

    char     magic[8]                   "_logits_"
    int32    n_ctx, n_vocab, n_chunk
    int32    tokens[n_chunk * n_ctx]    the text's tokens as tokenized (not the BOS put at each window's start)
    per chunk, per scored position (n_ctx - 1 - n_ctx/2 of them, from n_ctx/2):
      float32  scale, min_log_prob      (as 4 uint16)
      uint16   q[n_vocab]               log-prob = scale * q + min_log_prob
      uint16   0 when n_vocab is odd    rows are 2*((n_vocab+1)/2) + 4 uint16 wide

Each row keeps the top 16 nats of logits: min = max(min logit, max logit - 16), q = round((logit - min) / scale)
with scale = (max - min) / 65535 (round-half-even, as llama's nearest_int), q = 0 at and below min. A log-prob is
thus off by at most scale/2 <= 16/65535/2 = 1.2e-4 nats. Several texts share one file: their whole chunks follow
each other (each chunk is evaluated from an empty cache, so llama-perplexity neither knows nor cares).

FILE + ".json", the sidecar, says what was cached: the reference's identity, the texts' sha256, ctx, the suites and
options, where each text's chunks are, the binary's size and header hash; plus the reference's greedy task answers.
A run whose description differs is refused with the first difference named. Both files are written under a
temporary name and renamed when complete (formats/atomic_write.py); the log-probs stream to disk chunk by chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qconv.formats.atomic_write import AtomicFile
from qconv.formats.errors import FormatError

MAGIC = b"_logits_"
HEADER = np.dtype([("magic", "S8"), ("n_ctx", "<u4"), ("n_vocab", "<i4"), ("n_chunk", "<i4")])
LOG_PROB_RANGE = 16.0  # nats below the top kept per row; llama's KLD skips base log-probs at or below -16
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "qconv-ref-cache/1"
ROW_BLOCK = 32  # rows encoded or scored at once: bounds the float temporaries to ROW_BLOCK * n_vocab
IDENTITY_SAMPLE = 1 << 20  # bytes hashed at each end of a reference file (hashing 16 GB would take minutes)


def row_width(n_vocab: int) -> int:
    """uint16 per row: scale and min as two float32, the vocabulary, padded to an even count."""
    return 2 * ((n_vocab + 1) // 2) + 4


def scored_rows(n_ctx: int) -> int:
    return n_ctx - 1 - n_ctx // 2


# ---------------------------------------------------------------- rows


def encode_log_probs(logits: np.ndarray) -> np.ndarray:
    """[rows, n_vocab] logits -> [rows, row_width] uint16 rows, the float32 arithmetic of llama-perplexity's writer
    (a float32 expf summed in double, log taken in double and rounded to float)."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    n, n_vocab = logits.shape
    out = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    header = out[:, :4].view(np.float32)  # [n, 2]: scale, min_log_prob
    for lo in range(0, n, ROW_BLOCK):
        block = logits[lo : lo + ROW_BLOCK]
        top = block.max(axis=1, keepdims=True)
        low = np.maximum(block.min(axis=1, keepdims=True), top - np.float32(LOG_PROB_RANGE))
        sum_exp = np.exp(block - top).sum(axis=1, dtype=np.float64, keepdims=True)
        log_sum_exp = np.log(sum_exp).astype(np.float32)
        scale = (top - low) / np.float32(65535)
        header[lo : lo + ROW_BLOCK, 0:1] = scale
        header[lo : lo + ROW_BLOCK, 1:2] = low - top - log_sum_exp
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_scale = np.float32(1) / scale
            steps = np.rint(inv_scale * (block - low))
        q = np.where((block > low) & (scale > 0), steps, 0)
        out[lo : lo + ROW_BLOCK, 4 : 4 + n_vocab] = q.astype(np.uint16)
    return out


def row_scales(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, min_log_prob) per row, float32."""
    header = np.ascontiguousarray(rows[:, :4]).view(np.float32)
    return header[:, 0], header[:, 1]


def decode_log_probs(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """[rows, row_width] uint16 -> [rows, n_vocab] float32 log-probabilities (scale * q + min_log_prob)."""
    scale, low = row_scales(rows)
    return scale[:, None] * rows[:, 4 : 4 + n_vocab].astype(np.float32) + low[:, None]


def cached_stats(rows: np.ndarray, quant_logits: np.ndarray, next_tokens: np.ndarray):
    """The per-row statistics of qconv.runtime.logit_stats (a LogitStats), with the reference given as cached
    rows. As llama-perplexity's kl_divergence: KL = sum over base log-probs above -16 of p_base * (log p_base -
    log p_quant), base top-1 = the first largest q, NLL_base = -(log-prob of the next token)."""
    from qconv.runtime.logit_stats import LogitStats

    quant_logits = np.ascontiguousarray(quant_logits, dtype=np.float32)
    n, n_vocab = quant_logits.shape
    nxt = np.asarray(next_tokens, dtype=np.int64)
    if rows.shape != (n, row_width(n_vocab)) or nxt.shape != (n,):
        raise ValueError(f"cached_stats: rows {rows.shape}, logits {quant_logits.shape}, next {nxt.shape} differ")
    out = LogitStats.empty(n)
    for lo in range(0, n, ROW_BLOCK):
        hi = min(n, lo + ROW_BLOCK)
        base = decode_log_probs(rows[lo:hi], n_vocab).astype(np.float64)
        block = quant_logits[lo:hi].astype(np.float64)
        log_norm = block.max(axis=1, keepdims=True)
        log_norm += np.log(np.exp(block - log_norm).sum(axis=1, keepdims=True))
        quant = block - log_norm
        terms = np.where(base > -LOG_PROB_RANGE, np.exp(base) * (base - quant), 0.0)
        out.kld[lo:hi] = terms.sum(axis=1)
        out.argmax_ref[lo:hi] = rows[lo:hi, 4 : 4 + n_vocab].argmax(axis=1)
        out.argmax_quant[lo:hi] = block.argmax(axis=1)
        at = np.arange(hi - lo)
        out.nll_ref[lo:hi] = -base[at, nxt[lo:hi]]
        out.nll_quant[lo:hi] = -quant[at, nxt[lo:hi]]
    return out


# ---------------------------------------------------------------- the log-prob file


class _CommitOnExit:
    """`with writer:` commits when the block ends without an error and discards otherwise."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.commit()
        else:
            self.discard()


class LogProbWriter(_CommitOnExit):
    """Streams a log-prob file: the header and tokens now, then each chunk's scored rows as they are computed.
    `commit()` renames it into place once every chunk is written; `discard()` (or an error in a `with` block)
    removes the temporary."""

    def __init__(self, path: Path, n_ctx: int, n_vocab: int, tokens: list[int]):
        self.path = Path(path)
        self.n_ctx, self.n_vocab = int(n_ctx), int(n_vocab)
        if self.n_ctx < 4 or len(tokens) % self.n_ctx or not tokens:
            raise ValueError(f"LogProbWriter: {len(tokens)} tokens are not whole chunks of {n_ctx}")
        self.n_chunk = len(tokens) // self.n_ctx
        self.written = 0
        self.bytes = 0
        self.header_sha256 = ""
        self._atomic = AtomicFile(self.path)
        self._file = open(self._atomic.open(), "wb")
        header = np.array([(MAGIC, self.n_ctx, self.n_vocab, self.n_chunk)], dtype=HEADER).tobytes()
        header += np.asarray(tokens, dtype="<i4").tobytes()
        self.header_sha256 = hashlib.sha256(header).hexdigest()
        self._write(header)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes += len(data)

    def add_chunk(self, logits: np.ndarray) -> None:
        """The reference's logits of one chunk's scored positions ([n_ctx - 1 - n_ctx/2, n_vocab])."""
        expected = (scored_rows(self.n_ctx), self.n_vocab)
        if logits.shape != expected:
            raise ValueError(f"LogProbWriter.add_chunk: logits {logits.shape}, expected {expected}")
        if self.written == self.n_chunk:
            raise ValueError(f"LogProbWriter.add_chunk: all {self.n_chunk} chunks are written")
        self._write(encode_log_probs(logits).astype("<u2", copy=False).tobytes())
        self.written += 1

    def commit(self) -> None:
        if self.written != self.n_chunk:
            self.discard()
            raise ValueError(f"LogProbWriter.commit: {self.written} of {self.n_chunk} chunks written")
        self._file.close()
        self._atomic.commit()

    def discard(self) -> None:
        self._file.close()
        self._atomic.discard()


@dataclass
class LogProbFile:
    """A log-prob file, checked against its size before use (it is a user's file); the rows are mapped, not read."""

    path: Path
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray  # int32 [n_chunk * n_ctx]
    rows: np.ndarray  # uint16 [n_chunk, scored_rows(n_ctx), row_width(n_vocab)], memory-mapped
    header_sha256: str

    def chunk_tokens(self, index: int) -> np.ndarray:
        return self.tokens[index * self.n_ctx : (index + 1) * self.n_ctx]

    def chunk_rows(self, index: int) -> np.ndarray:
        """One chunk's rows, read from disk and their scales checked."""
        rows = np.array(self.rows[index])
        scale, low = row_scales(rows)
        bad = ~(np.isfinite(scale) & np.isfinite(low) & (scale >= 0))
        if bad.any():
            row = int(np.argmax(bad))
            raise FormatError(
                f"{self.path}: chunk {index} row {row} has scale {scale[row]} and minimum {low[row]}; expected "
                "finite numbers, scale >= 0"
            )
        return rows


def open_log_probs(path: Path) -> LogProbFile:
    """Read and check the header; map the rows. Every size is checked against the file's size in Python's
    unbounded integers, so a hostile header cannot overflow its way past the check."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER.itemsize)
            if len(head) < HEADER.itemsize:
                raise FormatError(
                    f"{path}: {size} bytes, too short for a log-prob file's {HEADER.itemsize}-byte header"
                )
            header = np.frombuffer(head, dtype=HEADER)[0]
            if header["magic"] != MAGIC:
                raise FormatError(
                    f"{path}: starts with {bytes(header['magic'])!r}, expected {MAGIC!r} (a log-prob file)"
                )
            n_ctx, n_vocab, n_chunk = int(header["n_ctx"]), int(header["n_vocab"]), int(header["n_chunk"])
            if not (4 <= n_ctx < 2**31 and 1 <= n_vocab and 1 <= n_chunk):
                raise FormatError(
                    f"{path}: header says n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}; expected n_ctx >= 4, "
                    "n_vocab >= 1, n_chunk >= 1"
                )
            n_tokens = n_chunk * n_ctx
            expected = HEADER.itemsize + 4 * n_tokens + 2 * n_chunk * scored_rows(n_ctx) * row_width(n_vocab)
            if size != expected:
                raise FormatError(
                    f"{path}: {size} bytes; n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk} need {expected}"
                )
            token_bytes = f.read(4 * n_tokens)
    except OSError as e:
        raise FormatError(f"{path}: cannot read the log-prob file: {e.strerror}") from None
    tokens = np.frombuffer(token_bytes, dtype="<i4").astype(np.int32)
    outside = (tokens < 0) | (tokens >= n_vocab)
    if outside.any():
        at = int(np.argmax(outside))
        raise FormatError(f"{path}: token {at} is {tokens[at]}, outside the vocabulary of {n_vocab}")
    rows = np.memmap(
        path, dtype="<u2", mode="r", offset=HEADER.itemsize + 4 * n_tokens,
        shape=(n_chunk, scored_rows(n_ctx), row_width(n_vocab)),
    )  # fmt: skip
    return LogProbFile(path, n_ctx, n_vocab, n_chunk, tokens, rows, hashlib.sha256(head + token_bytes).hexdigest())


class CachedReference:
    """The reference of one text as its cached rows (evaluate.Reference scores a candidate against it): chunk `index` of the text is chunk
    first_chunk + index of the file. The windows must be the cached ones (same tokens), or the cache is stale."""

    def __init__(self, log_probs: LogProbFile, first_chunk: int = 0, n_chunks: int | None = None):
        self.log_probs = log_probs
        self.first_chunk = first_chunk
        self.n_chunks = log_probs.n_chunk - first_chunk if n_chunks is None else n_chunks

    def chunk_rows(self, index: int, window: list[int], first: int) -> np.ndarray:
        """The cached rows of the text's chunk `index`, checked to be this window's."""
        f = self.log_probs
        chunk = self.first_chunk + index
        if index >= self.n_chunks or len(window) != f.n_ctx or first != f.n_ctx // 2:
            raise FormatError(f"{f.path}: has no chunk {index} of {len(window)} tokens for this text; remake the cache")
        cached = f.chunk_tokens(chunk)
        if not np.array_equal(cached[1:], np.asarray(window[1:])):
            raise FormatError(f"{f.path}: chunk {chunk} holds other tokens than this text's; remake the cache")
        return f.chunk_rows(chunk)

    def chunk_stats(self, index: int, window: list[int], first: int, quant_logits: np.ndarray):
        rows = self.chunk_rows(index, window, first)
        if quant_logits.shape[1] != self.log_probs.n_vocab:
            raise FormatError(
                f"{self.log_probs.path}: vocabulary of {self.log_probs.n_vocab}, the model has {quant_logits.shape[1]}"
            )
        return cached_stats(rows, quant_logits, np.asarray(window[first + 1 :]))


# ---------------------------------------------------------------- the built-in suites' windows


ROWS_SUFFIX = ".rows"
ROWS_MAGIC = b"qconvrow"
ROWS_HEADER = np.dtype([("magic", "S8"), ("n_vocab", "<i4"), ("n_rows", "<i8")])


def rows_path(path: Path) -> Path:
    return Path(str(path) + ROWS_SUFFIX)


def tokens_sha256(tokens) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype="<i4").tobytes()).hexdigest()


class WindowRowsWriter:
    """FILE.rows: the reference's rows (the encoding above) of the built-in suites' windows, which have any length
    and are scored from any position, so they do not fit llama-perplexity's fixed chunks. A 24-byte header
    (magic, n_vocab, n_rows), then the rows one window after another; the sidecar says where each window is."""

    def __init__(self, path: Path, n_vocab: int):
        self.n_vocab = int(n_vocab)
        self.n_rows = 0
        self.windows: dict[str, list[dict]] = {}
        self._atomic = AtomicFile(Path(path))
        self._file = open(self._atomic.open(), "wb")
        self._file.write(bytes(ROWS_HEADER.itemsize))  # the row count is known at the end

    def add(self, suite: str, tokens, logits: np.ndarray) -> None:
        rows = encode_log_probs(logits)
        self.windows.setdefault(suite, []).append(
            {"offset": self.n_rows, "rows": len(rows), "tokens_sha256": tokens_sha256(tokens)}
        )
        self._file.write(rows.astype("<u2", copy=False).tobytes())
        self.n_rows += len(rows)

    def commit(self) -> int:
        self._file.seek(0)
        self._file.write(np.array([(ROWS_MAGIC, self.n_vocab, self.n_rows)], dtype=ROWS_HEADER).tobytes())
        self._file.close()
        self._atomic.commit()
        return ROWS_HEADER.itemsize + 2 * self.n_rows * row_width(self.n_vocab)

    def discard(self) -> None:
        self._file.close()
        self._atomic.discard()


class CachedWindows:
    """The built-in suites' cached rows: FILE.rows checked against its size, each window against its entry."""

    def __init__(self, path: Path, windows: dict, n_vocab: int):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(ROWS_HEADER.itemsize)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read the reference cache's rows: {e.strerror}") from None
        if len(head) < ROWS_HEADER.itemsize or np.frombuffer(head, ROWS_HEADER)[0]["magic"] != ROWS_MAGIC:
            raise FormatError(f"{self.path}: not a qconv reference-cache rows file (magic {ROWS_MAGIC!r})")
        header = np.frombuffer(head, ROWS_HEADER)[0]
        n_rows, width = int(header["n_rows"]), row_width(n_vocab)
        if int(header["n_vocab"]) != n_vocab or n_rows < 0 or size != ROWS_HEADER.itemsize + 2 * n_rows * width:
            raise FormatError(
                f"{self.path}: {size} bytes with n_vocab {int(header['n_vocab'])} and {n_rows} rows; expected "
                f"n_vocab {n_vocab} and {ROWS_HEADER.itemsize} + 2 * rows * {width} bytes"
            )
        for suite, entries in windows.items():
            for i, e in enumerate(entries):
                offset, count = e.get("offset"), e.get("rows")
                if not (isinstance(offset, int) and isinstance(count, int) and 0 <= offset and 1 <= count
                        and offset + count <= n_rows):  # fmt: skip
                    raise FormatError(f"{self.path}: window {i} of suite '{suite}' lies outside its {n_rows} rows")
        self.windows = windows
        self.rows = (
            np.memmap(self.path, dtype="<u2", mode="r", offset=ROWS_HEADER.itemsize, shape=(n_rows, width))
            if n_rows else np.zeros((0, width), dtype=np.uint16)
        )  # fmt: skip

    def window_rows(self, suite: str, index: int, tokens, n_rows: int) -> np.ndarray:
        entries = self.windows.get(suite) or []
        if index >= len(entries) or entries[index]["rows"] != n_rows:
            raise FormatError(f"{self.path}: has no window {index} of {n_rows} rows for suite '{suite}'; remake it")
        entry = entries[index]
        if entry["tokens_sha256"] != tokens_sha256(tokens):
            raise FormatError(f"{self.path}: window {index} of suite '{suite}' holds other tokens; remake the cache")
        rows = np.array(self.rows[entry["offset"] : entry["offset"] + n_rows])
        scale, low = row_scales(rows)
        if not (np.isfinite(scale) & np.isfinite(low) & (scale >= 0)).all():
            raise FormatError(f"{self.path}: window {index} of suite '{suite}' has a row with a bad scale")
        return rows


# ---------------------------------------------------------------- the sidecar


def reference_identity(path: Path) -> dict:
    """What tells one reference from another without hashing gigabytes: per file (a GGUF, or each file of an HF
    folder) its size and the sha256 of its first and last MiB."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    identity = {}
    for file in files:
        size = file.stat().st_size
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            digest.update(f.read(IDENTITY_SAMPLE))
            if size > IDENTITY_SAMPLE:
                f.seek(max(IDENTITY_SAMPLE, size - IDENTITY_SAMPLE))
                digest.update(f.read(IDENTITY_SAMPLE))
        name = str(file.relative_to(path)) if path.is_dir() else file.name
        identity[name] = {"bytes": size, "ends_sha256": digest.hexdigest()}
    return identity


def describe(reference: Path, texts, ctx: int, suites: list[str], options: dict | None = None) -> dict:
    """What a cache is valid for: the reference, each text (name -> sha256), ctx, the suites and the options that
    change the reference's answers (e.g. max_tasks). texts: texts.EvalText."""
    return {
        "reference": reference_identity(reference),
        "texts": {t.name: t.sha256 for t in texts},
        "ctx": int(ctx),
        "suites": list(suites),
        "options": dict(options or {}),
    }


def first_difference(cached, wanted, where: str = "") -> tuple[str, object, object] | None:
    """(dotted key, cached value, wanted value) of the first difference between two descriptions, or None."""
    if isinstance(cached, dict) and isinstance(wanted, dict):
        for key in list(cached) + [k for k in wanted if k not in cached]:
            inner = f"{where}.{key}" if where else str(key)
            if key not in cached or key not in wanted:
                return inner, cached.get(key, "(absent)"), wanted.get(key, "(absent)")
            found = first_difference(cached[key], wanted[key], inner)
            if found:
                return found
        return None
    return None if cached == wanted else (where, cached, wanted)


def sidecar_path(path: Path) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class ReferenceCache:
    """A cache in use: its description, where each text's chunks are, the reference's task answers, the log-probs."""

    path: Path
    description: dict
    texts: dict[str, dict]  # name -> {"first_chunk", "chunks", "tokens"}
    answers: dict = field(default_factory=dict)  # suite -> the reference's greedy answers, as the caller stored them
    log_probs: LogProbFile | None = None
    windows: CachedWindows | None = None  # the built-in suites' windows

    def reference(self, name: str) -> CachedReference:
        """The cached reference of the text `name`."""
        entry = self.texts[name]
        return CachedReference(self.log_probs, entry["first_chunk"], entry["chunks"])


def load_cache(path: Path, description: dict) -> ReferenceCache | None:
    """The cache at path if it was made for `description`; None when there is none yet (neither file exists).
    A cache made for something else, half a cache, or a damaged one is a one-line error."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.exists() and not side.exists():
        return None
    if not side.is_file():
        raise FormatError(f"{path}: its sidecar {side.name} is missing; delete {path} or pass another --ref-cache")
    try:
        from qconv.converter.quality.run_state import MAX_JSON_BYTES
        from qconv.formats.folder_files import parse_json

        if side.stat().st_size > MAX_JSON_BYTES:
            raise FormatError(f"{side}: larger than {MAX_JSON_BYTES >> 20} MiB; not a reference-cache sidecar")
        record = parse_json(side.read_bytes(), side)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{side}: not a readable reference-cache sidecar ({e})") from None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise FormatError(f"{side}: format {_short(record.get('format') if isinstance(record, dict) else record)}, "
                          f"expected {SIDECAR_FORMAT!r}")  # fmt: skip
    difference = first_difference(record.get("description"), description)
    if difference:
        key, old, new = difference
        raise FormatError(
            f"{path}: cached for {key} = {_short(old)}, this run has {_short(new)}; delete it or pass another "
            "--ref-cache"
        )
    texts = record.get("texts")
    if not isinstance(texts, dict) or set(texts) != set(description.get("texts", {})):
        raise FormatError(f"{side}: its text table does not list the texts {sorted(description.get('texts', {}))}")
    log_probs = None
    if texts:
        if not path.is_file():
            raise FormatError(f"{path}: missing, though its sidecar {side.name} lists texts; delete the sidecar")
        log_probs = open_log_probs(path)
        binary = record.get("log_probs", {})
        if binary.get("bytes") != os.path.getsize(path) or binary.get("header_sha256") != log_probs.header_sha256:
            raise FormatError(f"{path}: not the log-prob file its sidecar {side.name} was written with; remake it")
        if log_probs.n_ctx != description.get("ctx"):
            raise FormatError(f"{path}: n_ctx {log_probs.n_ctx}, the sidecar says ctx {description.get('ctx')}")
        for name, entry in texts.items():
            first, chunks = entry.get("first_chunk"), entry.get("chunks")
            if not (isinstance(first, int) and isinstance(chunks, int) and 0 <= first and 1 <= chunks):
                raise FormatError(f"{side}: text '{name}' has first_chunk {first!r}, chunks {chunks!r}")
            if first + chunks > log_probs.n_chunk:
                raise FormatError(
                    f"{side}: text '{name}' ends at chunk {first + chunks}, {path} has {log_probs.n_chunk}"
                )
    windows = None
    if record.get("windows"):
        if not isinstance(record["windows"], dict) or not isinstance(record.get("n_vocab"), int):
            raise FormatError(f"{side}: its window table is not a table of suites")
        windows = CachedWindows(rows_path(path), record["windows"], record["n_vocab"])
    return ReferenceCache(path, record["description"], texts, record.get("answers") or {}, log_probs, windows)


class CacheWriter(_CommitOnExit):
    """Writes a cache: the log-prob file streamed chunk by chunk (add_chunk, in the order of `texts`, as
    evaluate.Reference does), the answers set by the caller, and on commit the binary then its sidecar.

        with CacheWriter(path, description, ctx, n_vocab, [(name, tokens), ...]) as cache:
            for each text's chunk: cache.add_chunk(the reference's logits of its scored positions)
            cache.answers["maths"] = [...]
    """

    def __init__(self, path: Path, description: dict, n_ctx: int, n_vocab: int, texts: list[tuple[str, list[int]]]):
        self.path = Path(path)
        self.description = description
        self.answers: dict = {}
        self.texts: dict[str, dict] = {}
        stream: list[int] = []
        for name, tokens in texts:
            chunks = len(tokens) // n_ctx
            self.texts[name] = {"first_chunk": len(stream) // n_ctx, "chunks": chunks, "tokens": len(tokens)}
            stream += tokens[: chunks * n_ctx]
        self._sidecar = AtomicFile(sidecar_path(self.path))
        self._sidecar.open()  # checked now, before any model run
        self.n_vocab = int(n_vocab)
        self.log_probs = LogProbWriter(self.path, n_ctx, n_vocab, stream) if stream else None
        self.window_rows: WindowRowsWriter | None = None

    def add_window(self, suite: str, tokens, logits: np.ndarray) -> None:
        """A built-in suite's window: its tokens and the reference's logits of its scored positions."""
        if self.window_rows is None:
            self.window_rows = WindowRowsWriter(rows_path(self.path), self.n_vocab)
        self.window_rows.add(suite, tokens, logits)

    def add_chunk(self, logits: np.ndarray) -> None:
        self.log_probs.add_chunk(logits)

    def commit(self) -> ReferenceCache:
        record = {
            "format": SIDECAR_FORMAT,
            "description": self.description,
            "texts": self.texts,
            "log_probs": {"bytes": self.log_probs.bytes, "header_sha256": self.log_probs.header_sha256}
            if self.log_probs
            else {},
            "answers": self.answers,
            "n_vocab": self.n_vocab,
            "windows": self.window_rows.windows if self.window_rows else {},
        }
        if self.log_probs is not None:
            self.log_probs.commit()
        if self.window_rows is not None:
            self.window_rows.commit()
        try:
            Path(self._sidecar.temp).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            self._sidecar.commit()
        except BaseException:
            self._sidecar.discard()
            raise
        return load_cache(self.path, self.description)

    def discard(self) -> None:
        if self.log_probs is not None:
            self.log_probs.discard()
        if self.window_rows is not None:
            self.window_rows.discard()
        self._sidecar.discard()
