"""cffi build of native/ into the extension module qconv.runtime._qrt.

The same sources build standalone with `make -C native`; the list of sources lives in native/SOURCES so the
two builds cannot drift. The cdef is native/api/qrt.h itself, minus preprocessor lines, so the public C API is
stated once. Sources include headers by name, so every folder of native/ that holds a header or a kernel .inc
is on the include path (as in native/Makefile).
"""

import os
from pathlib import Path

from cffi import FFI

NATIVE = Path("native")
if not NATIVE.is_dir():  # run from elsewhere than the project root
    NATIVE = Path(__file__).resolve().parent.parent / "native"


def _sources() -> list[str]:
    names = [line.split("#")[0].strip() for line in (NATIVE / "SOURCES").read_text().splitlines()]
    return [str(NATIVE / name) for name in names if name]


def _headers() -> list[Path]:
    return sorted(p for p in NATIVE.rglob("*") if p.suffix in (".h", ".inc") and "build" not in p.parts)


def _cdef(header: str = "qrt.h") -> str:
    """The header's declarations for cffi; `#include "qrt_*.h"` lines are inlined (each part of the API has
    its own header), every other preprocessor line is dropped."""
    lines = []
    for line in (NATIVE / "api" / header).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith('#include "qrt_'):
            lines.append(_cdef(stripped.split('"')[1]))
        elif not stripped.startswith("#"):
            lines.append(line)
    return "\n".join(lines)


EXTRA_CFLAGS = ["-std=c11", "-O3", "-fPIC", "-pthread", "-Wall", "-Wextra", "-D_GNU_SOURCE"]
if os.environ.get("QCONV_WERROR"):
    EXTRA_CFLAGS.append("-Werror")
if os.environ.get("QCONV_SANITIZE"):  # the test build runs the loader under ASan/UBSan
    EXTRA_CFLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]

ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "qconv.runtime._qrt",
    '#include "qrt.h"',
    sources=_sources(),
    include_dirs=sorted({str(h.parent) for h in _headers()}),
    depends=[str(h) for h in _headers()],  # a header-only change rebuilds the extension
    extra_compile_args=EXTRA_CFLAGS,
    extra_link_args=["-pthread", "-lm"]
    + (["-fsanitize=address,undefined"] if os.environ.get("QCONV_SANITIZE") else []),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
