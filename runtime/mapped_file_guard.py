"""A file truncated while memory-mapped ends the process with one line instead of SIGBUS (native qrt_mapped_file_guard.h).

Both the C loader (qrun) and the converter's readers (safetensors and GGUF inputs) read their inputs through
memory maps; a page beyond the end of a file that shrank meanwhile raises SIGBUS, which Python cannot catch. The
guard prints "<program>: error: <file> changed while being read (truncated?)", removes the temporary outputs the
atomic writer (formats.atomic_write) has open, and exits with status 1.
"""

from __future__ import annotations

from pathlib import Path

from qconv.formats import atomic_write
from qconv.runtime._native import lib

_installed = False


def install(program: str) -> None:
    """Once per process; the first caller names the program in the message (the qconv CLI before a Model's
    "qrun")."""
    global _installed
    if _installed:
        return
    _installed = True
    lib.qrt_mapped_file_guard_install(program.encode())
    atomic_write.temp_listeners.append(_track_temp)


def _track_temp(path: Path, alive: bool) -> None:
    encoded = str(Path(path).absolute()).encode()  # absolute: the handler may run after a chdir
    if alive:
        lib.qrt_mapped_file_guard_add_temp(encoded)
    else:
        lib.qrt_mapped_file_guard_remove_temp(encoded)
