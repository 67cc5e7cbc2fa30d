"""Outputs written whole or not at all: the one temp-and-rename rule for every file and folder qconv writes.

A writer builds its output under a hidden temporary name beside the target that carries its process id
(`.model.gguf.<pid>.part`), and renames it over the target only when it is complete, so a failed or interrupted run
leaves the previous output as it was. A run killed before it could clean up (SIGKILL, a crash) leaves its temporary
behind; the next writer of the same output removes temporaries whose process is gone, never one a live process is
still writing. New files and folders get the usual mode (0666 / 0777 less the umask), as any new file does.

Folders: a command replaces a folder it wrote earlier (it carries MARKER) or an empty one, and refuses a non-empty
folder it did not write unless forced, so a typo in `-o` cannot delete someone's work. Output paths are checked
(`check_output_file`, `check_output_folder`) before any work starts; a full disk while writing is a one-line
FormatError naming the output, and the temporary is removed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from qconv.formats.errors import FormatError

MARKER = ".qconv-output"  # in every folder qconv writes: a later run may replace the folder
TEMP_SUFFIX = "part"  # the output being written
ASIDE_SUFFIX = "old"  # a replaced folder, between the two renames of a folder swap
PROBE_SUFFIX = "probe"  # the empty file that shows the folder takes new files
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

# Called with (temporary path, True) when a temporary file is created and (path, False) when it is gone: the
# runtime's SIGBUS guard removes the live ones when a mapped input is truncated (runtime/mapped_file_guard.py).
temp_listeners: list[Callable[[Path, bool], None]] = []


def temp_path(target: Path, suffix: str = TEMP_SUFFIX) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.{suffix}")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporaries of `target` left by processes that no longer run; the removed paths."""
    target = Path(target)
    parent = target.parent
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.({TEMP_SUFFIX}|{ASIDE_SUFFIX}|{PROBE_SUFFIX})")
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed = []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or process_alive(int(match.group(1))):
            continue
        _remove(parent / name)
        removed.append(parent / name)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _check_parent(target: Path) -> None:
    """The folder that receives the output exists and takes a new file (tried, so that read-only file systems
    and missing permissions show up now rather than after the work)."""
    parent = target.absolute().parent
    if not parent.exists():
        raise FormatError(f"{target}: cannot write, folder {parent} does not exist")
    if not parent.is_dir():
        raise FormatError(f"{target}: cannot write, {parent} is not a folder")
    probe = temp_path(target, PROBE_SUFFIX)
    try:  # removed even when Ctrl-C or SIGTERM lands in between
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise FormatError(f"{target}: cannot write in folder {parent}: {e.strerror}") from None
    finally:
        probe.unlink(missing_ok=True)


def check_output_file(target: Path) -> Path:
    """Before any work: `target` can be written as a file (an existing file is replaced when the new one is done)."""
    target = Path(target)
    if target.is_dir():
        raise FormatError(f"{target}: is a folder; expected a file path for the output")
    if target.exists() and not target.is_file():
        raise FormatError(f"{target}: exists and is not a regular file; expected a file path for the output")
    _check_parent(target)
    remove_stale_temps(target)
    return target


def written_by_qconv(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def check_output_folder(target: Path, force: bool = False) -> Path:
    """Before any work: `target` can be written as a folder: absent, empty, written by qconv earlier, or `force`."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FormatError(f"{target}: exists and is not a folder; expected a folder for the output")
    if target.is_dir() and not force and not written_by_qconv(target) and any(target.iterdir()):
        raise FormatError(
            f"{target}: folder exists, is not empty and was not written by qconv; choose a new or empty folder, "
            "or --force to replace it"
        )
    _check_parent(target)
    remove_stale_temps(target)
    return target


def disk_full_error(target: Path, error: BaseException) -> FormatError | None:
    """The one-line error for a write that ran out of space (or past a file size limit), else None. numpy's
    tofile reports a short write as "N requested and M written", without an errno."""
    if not isinstance(error, OSError):
        return None
    if error.errno in DISK_FULL_ERRNOS:
        return FormatError(f"{target}: cannot write, {error.strerror.lower()} (disk full?); nothing was written")
    if error.errno is None and re.search(r"requested and \d+ written", str(error)):
        return FormatError(f"{target}: cannot write, short write ({error}; disk full?); nothing was written")
    return None


class _AtomicOutput:
    """The context-manager half shared by files and folders: commit on success, discard on error, and a full disk
    (while writing or renaming) as a one-line error naming the output."""

    target: Path
    temp: Path | None

    def __enter__(self) -> Path:
        return self.open()

    def open(self) -> Path:
        self._check()
        temp = self.temp = temp_path(self.target)  # known before it exists: an interrupt in between removes it
        try:
            self._create(temp)
        except OSError as e:
            self.discard()
            raise FormatError(f"{self.target}: cannot write in folder {temp.parent}: {e.strerror}") from None
        except BaseException:  # `with` runs no __exit__ when __enter__ fails
            self.discard()
            raise
        return temp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            try:
                self.commit()
            except OSError as e:
                self.discard()
                raise disk_full_error(self.target, e) or e from None
            return
        self.discard()
        full = disk_full_error(self.target, exc)
        if full is not None:
            raise full from None


class AtomicFile(_AtomicOutput):
    """`with AtomicFile(target) as tmp:` write the file `tmp`; it replaces `target` when the block ends without an
    error, and is removed otherwise. `open()`, `commit()` and `discard()` do the same for writers that span calls."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.temp = None

    def _check(self) -> None:
        check_output_file(self.target)

    def _create(self, temp: Path) -> None:
        temp.unlink(missing_ok=True)
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))  # mode: the umask's
        for listener in temp_listeners:
            listener(temp, True)

    def commit(self) -> Path:
        os.replace(self.temp, self.target)
        self._forget()
        return self.target

    def discard(self) -> None:
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self._forget()

    def _forget(self) -> None:
        temp, self.temp = self.temp, None
        for listener in temp_listeners:
            listener(temp, False)


class AtomicFolder(_AtomicOutput):
    """`with AtomicFolder(target, force) as tmp:` fill the folder `tmp`; it is marked and swapped in for `target`
    when the block ends without an error (the folder it replaces is removed only once the new one is in place),
    and removed otherwise."""

    def __init__(self, target: Path, force: bool = False):
        self.target = Path(target)
        self.force = force
        self.temp = None

    def _check(self) -> None:
        check_output_folder(self.target, self.force)

    def _create(self, temp: Path) -> None:
        _remove(temp)
        os.mkdir(temp)  # 0777 less the umask

    def commit(self) -> Path:
        (self.temp / MARKER).write_text("written by qconv: a later qconv run may replace this folder\n")
        if not os.path.lexists(self.target):
            os.replace(self.temp, self.target)
        else:  # a folder cannot be renamed over a non-empty one: move the old one aside, then drop it
            aside = temp_path(self.target, ASIDE_SUFFIX)
            _remove(aside)
            os.replace(self.target, aside)
            try:
                os.replace(self.temp, self.target)
            except BaseException:
                os.replace(aside, self.target)
                raise
            _remove(aside)
        self.temp = None
        return self.target

    def discard(self) -> None:
        if self.temp is not None:
            _remove(self.temp)
            self.temp = None
