"""Every file of a user's model folder is opened, read or copied through here.

A downloaded folder is untrusted: a `chat_template.jinja` may be a symlink to /etc/passwd, an index may name
`../../outside/x.safetensors`, `model.safetensors` may be a FIFO (an open() that never returns), config.json may
be a nesting bomb that parsing turns into a RecursionError. So each name is resolved (symlinks included) and must
stay inside the folder's real path; it must be a regular file (checked with stat before open, and again on the
open descriptor, opened with O_NONBLOCK so that a FIFO swapped in between cannot block); reads are bounded per
kind of file; JSON is parsed only after its nesting depth is checked. Errors are one line naming the file and
what was expected; they describe the content, never echo its bytes.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from qconv.formats.errors import FormatError

MiB = 2**20
# Largest size of each kind of file, well above real ones (Gemma 3's tokenizer.json is 33 MB, configs a few kB).
MAX_BYTES = {
    "config.json": 4 * MiB,
    "generation_config.json": 4 * MiB,
    "special_tokens_map.json": 4 * MiB,
    "tokenizer_config.json": 64 * MiB,  # may carry chat templates and thousands of added tokens
    "tokenizer.json": 512 * MiB,
    "vocab.txt": 64 * MiB,  # WordPiece vocabularies (BERT's: 230 kB)
    "chat_template.jinja": 4 * MiB,
    "chat_template.json": 4 * MiB,
    "model.safetensors.index.json": 64 * MiB,
    "genai_config.json": 4 * MiB,
}
DEFAULT_MAX_BYTES = 4 * MiB
# Real HF JSON nests about 8 deep (tokenizer.json's normalizer sequences); readers walk these trees recursively.
MAX_JSON_DEPTH = 64
# Hugging Face's cache: snapshots/<revision>/<file> are symlinks to ../../blobs/<hash> of the same repository.
HF_CACHE_SNAPSHOTS = "snapshots"
HF_CACHE_BLOBS = "blobs"

QUOTE, BACKSLASH = ord('"'), ord("\\")
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def _allowed_roots(folder_real: Path) -> tuple[Path, ...]:
    """The folder itself, and for a Hugging Face cache snapshot the blobs of its own repository."""
    if folder_real.parent.name == HF_CACHE_SNAPSHOTS:
        return folder_real, folder_real.parent.parent / HF_CACHE_BLOBS
    return (folder_real,)


def _real_folder(folder: Path) -> Path:
    try:
        real = Path(os.path.realpath(folder, strict=True))
    except OSError as e:
        raise FormatError(f"{folder}: cannot open the folder ({e.strerror})") from None
    if not real.is_dir():
        raise FormatError(f"{folder}: not a folder")
    return real


def entry_exists(folder: Path, name: str) -> bool:
    """Whether the folder has an entry of that name: a broken or looping link counts, so that reading it says why."""
    return os.path.lexists(Path(folder) / name)


def resolve_in_folder(folder: Path, name: str) -> Path:
    """The real path of the regular file `name` in `folder`, or a FormatError: it leaves the folder, is missing,
    a folder, a FIFO/device/socket, or a link loop."""
    folder = Path(folder)
    where = folder / name
    roots = _allowed_roots(_real_folder(folder))
    try:
        real = Path(os.path.realpath(where, strict=True))
    except OSError as e:
        raise FormatError(f"{where}: cannot open ({e.strerror})") from None
    if not any(real.is_relative_to(root) for root in roots):
        raise FormatError(f"{where}: resolves to {real}, outside the model folder {roots[0]}; refusing to read it")
    _check_regular(os.stat(real).st_mode, where)
    return real


def _check_regular(mode: int, where: Path) -> None:
    if stat.S_ISDIR(mode):
        raise FormatError(f"{where}: is a folder, expected a file")
    if not stat.S_ISREG(mode):
        raise FormatError(f"{where}: not a regular file (a FIFO, device or socket); expected a file")


def check_regular_file(path: Path) -> None:
    """A file the user names directly (a GGUF to inspect or convert): it may be a link anywhere, but it must be a
    regular file, so that reading it cannot block (a FIFO) or fail deep inside a reader (a folder)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise FormatError(f"{path}: cannot open ({e.strerror})") from None
    _check_regular(mode, Path(path))


def open_regular(path: Path, where: Path | None = None) -> int:
    """A read-only descriptor of `path`, refused unless it is a regular file when opened (O_NONBLOCK: a FIFO put
    in its place after the stat check cannot block the open)."""
    where = where or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise FormatError(f"{where}: cannot open ({e.strerror})") from None
    try:
        _check_regular(os.fstat(fd).st_mode, where)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(folder: Path, name: str, max_bytes: int | None = None) -> bytes:
    """The bytes of `name` in `folder`, at most max_bytes (by default the limit of that kind of file)."""
    where = Path(folder) / name
    limit = max_bytes if max_bytes is not None else MAX_BYTES.get(Path(name).name, DEFAULT_MAX_BYTES)
    fd = open_regular(resolve_in_folder(folder, name), where)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise FormatError(f"{where}: {size} bytes, more than the {limit} such a file may have")
        data = f.read(limit + 1)
    if len(data) > limit:  # grew since the stat
        raise FormatError(f"{where}: more than the {limit} bytes such a file may have")
    return data


def decode_text(data: bytes, where: Path | str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: not UTF-8 text (invalid byte at offset {e.start})") from None


def read_text(folder: Path, name: str) -> str:
    return decode_text(read_bytes(folder, name), Path(folder) / name)


def _escaped_quotes(raw: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """Which of the quote positions an odd run of backslashes escapes (few in real files: counted one by one)."""
    escaped = np.zeros(len(quotes), dtype=bool)
    candidates = np.flatnonzero(raw[np.maximum(quotes - 1, 0)] == BACKSLASH)
    for k in candidates:
        run, i = 0, int(quotes[k]) - 1
        while i >= 0 and raw[i] == BACKSLASH:
            run, i = run + 1, i - 1
        escaped[k] = run % 2 == 1
    return escaped


def json_depth(data: bytes) -> int:
    """The deepest nesting of [ and { outside JSON strings. Vectorised (a 33 MB tokenizer.json in well under a
    second): a bracket is outside the strings when an even number of unescaped quotes precede it. Exact for valid
    JSON; for invalid JSON json.loads fails anyway (and a RecursionError is caught there too)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    steps = _BRACKET_STEP[raw]
    brackets = np.flatnonzero(steps)
    if len(brackets) == 0:
        return 0
    quotes = np.flatnonzero(raw == QUOTE)
    quotes = quotes[~_escaped_quotes(raw, quotes)]
    outside = np.searchsorted(quotes, brackets) % 2 == 0
    return int(np.cumsum(steps[brackets[outside]], dtype=np.int64).max(initial=0))


def parse_json(data: bytes, where: Path | str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads after checking the nesting depth (a nesting bomb is a RecursionError inside json)."""
    depth = json_depth(data)
    if depth > max_depth:
        raise FormatError(f"{where}: JSON nested {depth} levels deep, more than the {max_depth} allowed")
    text = decode_text(data, where)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:  # its message holds a position, not content
        raise FormatError(
            f"{where}: cannot read JSON: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})"
        ) from None
    except RecursionError:
        raise FormatError(f"{where}: JSON nested too deeply") from None


def read_json(folder: Path, name: str):
    return parse_json(read_bytes(folder, name), Path(folder) / name)


def read_json_object(folder: Path, name: str) -> dict:
    content = read_json(folder, name)
    if not isinstance(content, dict):
        raise FormatError(f"{Path(folder) / name}: expected a JSON object, found {type(content).__name__}")
    return content


def checked_bytes(folder: Path, name: str) -> bytes:
    """The bytes of a file another program reads next (a copy into an output folder): read through the same
    checks, and parsed when it is JSON."""
    data = read_bytes(folder, name)
    if name.endswith(".json"):
        parse_json(data, Path(folder) / name)
    return data


def copy_file(folder: Path, name: str, dest: Path) -> None:
    Path(dest).write_bytes(checked_bytes(folder, name))
