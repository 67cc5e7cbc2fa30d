"""native/'s sources for the tests and scripts that compile parts of it by hand (sanitizer, fuzzer and cross
builds): the library's sources as native/SOURCES lists them, the include path as native/Makefile derives it (every
folder holding a header or a kernel .inc), and the programs."""

from __future__ import annotations

from pathlib import Path

NATIVE = Path(__file__).resolve().parents[1] / "native"
LOADER_SOURCE = str(NATIVE / "loader" / "gguf.c")


def library_sources() -> list[str]:
    names = [line.split("#")[0].strip() for line in (NATIVE / "SOURCES").read_text().splitlines()]
    return [str(NATIVE / name) for name in names if name]


def library_sources_in(*folders: str) -> list[str]:
    """The library's sources in these folders of native/ (e.g. "quant", "base"): a part that links on its own."""
    return [source for source in library_sources() if Path(source).parent.relative_to(NATIVE).parts[0] in folders]


def include_flags() -> list[str]:
    headers = [p for p in NATIVE.rglob("*") if p.suffix in (".h", ".inc") and "build" not in p.parts]
    return [f"-I{folder}" for folder in sorted({str(p.parent) for p in headers})]


def program(name: str) -> str:
    return str(NATIVE / "programs" / name)


if __name__ == "__main__":  # for shell scripts: python3 -m tests.native_sources
    print(" ".join(include_flags() + library_sources()))
