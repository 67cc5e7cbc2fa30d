"""Deploy bundles: one tar.gz with the device binary for a board, the model and a run.sh.

    qconv bundle model.gguf --target rpi5 -o bundle.tar.gz
    # on the board: tar xzf bundle.tar.gz && ./qconv-bundle-rpi5/run.sh -p "Why is the sky blue?"

The binary is `qrun-native` cross-built from native/ (`make -C native TARGET=...`, static, so it runs on the
board's older glibc): in a source checkout into native/build/TARGET, as the README's command does; from an installed
package (which ships native/ as qconv.native, in a folder that may be read-only) into a cache folder keyed by the
sources. A missing compiler is named with the Debian package that installs it. Each aarch64 binary carries the baseline NEON, SDOT and SMMLA kernels and picks the best
the CPU reports at start (getauxval), falling back to baseline NEON on a CPU without the extensions; the target
table below says which variant a board should get, and run.sh prints it with -v. A model the target cannot run
(a tensor type without a kernel, an architecture the runtime does not know, a file larger than the board's
memory or a 32-bit address space) is refused with a message naming the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from qconv.formats.architectures import ENCODER_GGUF_ARCHS, NATIVE_GGUF_ARCHS
from qconv.formats.atomic_write import AtomicFile, check_output_file
from qconv.formats.errors import FormatError
from qconv.formats.gguf_read import read_gguf
from qconv.samples.fetch import cache_dir

# a checkout's native/, or the installed package's copy of it (qconv.native: sources, headers, SOURCES, Makefile)
NATIVE_DIR = Path(__file__).resolve().parent.parent / "native"
NATIVE_FILES = ("Makefile", "SOURCES", "*.c", "*.h", "*.inc")  # what a build reads; pyproject.toml ships the same
HOST = os.uname().machine

# The C compiler for each Makefile TARGET built on another machine, and the Debian package that installs it
CROSS_COMPILERS = {
    "aarch64": ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    "armv7": ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
    "x86_64": ("x86_64-linux-gnu-gcc", "gcc-x86-64-linux-gnu"),
}
HOST_COMPILER = ("gcc", "gcc")

# GGUF type names with a dot kernel in libqrt (kernels_ref.c for all; SIMD variants per architecture)
KERNEL_TYPES = frozenset(
    {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"}
)
ARCHITECTURES = NATIVE_GGUF_ARCHS  # the rows of formats/architectures.py marked native (native/model/model.c)
GIB = 1 << 30


@dataclass(frozen=True)
class Target:
    name: str
    arch: str  # native/Makefile TARGET
    board: str
    kernel: str  # the variant the board's CPU dispatches to
    qemu_cpu: str  # a qemu -cpu model with the same features, for testing without the board
    memory_bytes: int  # the largest model file it can hold (RAM of the largest board, or the address space)


TARGETS = {
    t.name: t
    for t in (
        Target("rpi5", "aarch64", "Raspberry Pi 5 (Cortex-A76, 64-bit OS)", "neon-dotprod", "cortex-a76", 16 * GIB),
        Target("rpi4", "aarch64", "Raspberry Pi 4 (Cortex-A72, 64-bit OS)", "neon", "cortex-a72", 8 * GIB),
        Target("jetson-orin", "aarch64", "Jetson Orin (Cortex-A78AE)", "neon-dotprod", "max", 64 * GIB),
        Target("aarch64", "aarch64", "any ARMv8-A Linux (64-bit)", "best of neon/neon-dotprod", "max", 1 << 62),
        Target("armv7", "armv7", "32-bit Raspberry Pi OS (ARMv7)", "neon if NEON + VFPv4, else scalar", "max", 2 * GIB),
        Target("x86_64", "x86_64", "x86-64 Linux", "best of avx2/avx512", "max", 1 << 62),
    )
}


@dataclass(frozen=True)
class BundleResult:
    path: Path
    target: Target
    model_bytes: int
    binary: Path


def check_model(model: Path, target: Target) -> str:
    """Raise FormatError if `target` cannot run `model`; its general.architecture otherwise."""
    with read_gguf(model) as g:
        arch = g.architecture
        if arch not in ARCHITECTURES:
            raise FormatError(
                f"{model}: architecture {arch!r} is not run by qrun-native (runs: {', '.join(sorted(ARCHITECTURES))})"
            )
        for t in g.tensors.values():
            if len(t.shape) >= 2 and t.type_name not in KERNEL_TYPES:
                raise FormatError(
                    f"{model}: tensor {t.name!r} is {t.type_name}, which has no kernel for target {target.name} "
                    f"({target.arch}); re-quantize it, e.g. qconv to-gguf --type q4_k_m"
                )
    size = model.stat().st_size
    if size > target.memory_bytes:
        raise FormatError(
            f"{model}: {size / GIB:.1f} GiB does not fit target {target.name} ({target.board}: at most "
            f"{target.memory_bytes / GIB:.0f} GiB)"
        )
    return arch


def compiler_for(arch: str) -> tuple[str, str]:
    """The C compiler that builds for `arch` on this machine and its Debian package."""
    return HOST_COMPILER if arch == HOST else CROSS_COMPILERS[arch]


def native_files(native_dir: Path) -> list[Path]:
    files = {p for pattern in NATIVE_FILES for p in native_dir.rglob(pattern) if p.is_file()}
    return sorted(p for p in files if "build" not in p.relative_to(native_dir).parts)


def build_root(native_dir: Path) -> Path:
    """Where make writes: native/build in a source checkout (beside pyproject.toml), else the cache, one folder per
    content of the sources, so that two installed versions never share objects (make compares only times)."""
    if (native_dir.parent / "pyproject.toml").is_file():
        return native_dir / "build"
    digest = hashlib.sha256()
    for path in native_files(native_dir):
        digest.update(str(path.relative_to(native_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return cache_dir() / "native-build" / digest.hexdigest()[:16]


def check_build_tools(arch: str, native_dir: Path) -> str:
    """Before any work: the sources, make and the compiler are there; the compiler."""
    if not (native_dir / "Makefile").is_file():
        raise FormatError(
            f"{native_dir}: the native sources are needed to build qrun-native for {arch}; reinstall qconv"
        )
    compiler, package = compiler_for(arch)
    for tool, tool_package in (("make", "make"), (compiler, package)):
        if shutil.which(tool) is None:
            raise FormatError(
                f"building qrun-native for {arch} needs {tool}, which is not installed "
                f"(Debian/Ubuntu: apt-get install {tool_package}), or pass --binary"
            )
    return compiler


def build_binary(arch: str, native_dir: Path = NATIVE_DIR) -> Path:
    """`make -C native TARGET=arch` into build_root(); the path of qrun-native."""
    compiler = check_build_tools(arch, native_dir)
    out = build_root(native_dir) / arch
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FormatError(f"{out}: cannot create the build folder for qrun-native: {e.strerror}") from None
    binary = out / "qrun-native"
    cmd = ["make", "-s", "-C", str(native_dir), f"-j{os.cpu_count() or 1}", f"TARGET={arch}", f"BUILD={out}"]
    proc = subprocess.run([*cmd, f"CC={compiler}", str(binary)], capture_output=True, text=True)
    if proc.returncode != 0:
        log = out / "build.log"
        log.write_text(proc.stdout + proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines() or ["?"]
        raise FormatError(f"building qrun-native for {arch} with {compiler} failed: {errors[0].strip()} (log: {log})")
    return binary


RUN_SH = """#!/bin/sh
# {board}: runs {model} with qrun-native (kernel variant on this board: {kernel}).
{usage}# QEMU=qemu-aarch64 ./run.sh ... runs the binary under user-mode emulation (testing on another machine).
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -eq 0 ]; then set -- {default}; fi
exec ${{QEMU:+$QEMU}} "$here/qrun-native" "$here/{model}" "$@"
"""
# run.sh's usage lines and default arguments: chat for a decoder, sentence vectors for an encoder (BERT)
DECODER_USAGE = (
    '#   ./run.sh -p "Why is the sky blue?"            one chat turn\n'
    '#   ./run.sh --raw -p "Once upon a time" -n 64    plain continuation; any qrun-native flag works (-h)\n',
    '-p "Hello! Who are you?"',
)
ENCODER_USAGE = (
    '#   ./run.sh --embed "Why is the sky blue?"       one sentence vector, printed as a JSON array\n'
    "#   ./run.sh --embed-file texts.txt               one vector per line of the file; any qrun-native flag works (-h)\n",
    '--embed "Hello! Who are you?"',
)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def make_bundle(model: Path, target_name: str, output: Path, binary: Path | None = None) -> BundleResult:
    """Check, build and write the bundle; `binary` overrides the built qrun-native (must match the target)."""
    if target_name not in TARGETS:
        raise FormatError(f"unknown target {target_name!r} (targets: {', '.join(TARGETS)})")
    target = TARGETS[target_name]
    model = Path(model)
    if not model.is_file():
        raise FormatError(f"{model}: no such file")
    check_output_file(output)
    arch = check_model(model, target)
    binary = Path(binary) if binary else build_binary(target.arch)
    top = f"qconv-bundle-{target.name}"
    manifest = {
        "target": target.name,
        "board": target.board,
        "arch": target.arch,
        "kernel": target.kernel,
        "model": model.name,
        "model_bytes": model.stat().st_size,
    }
    with AtomicFile(output) as tmp, tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        tar.add(binary, f"{top}/qrun-native")
        tar.add(model, f"{top}/{model.name}")
        usage, default = ENCODER_USAGE if arch in ENCODER_GGUF_ARCHS else DECODER_USAGE
        run_sh = RUN_SH.format(board=target.board, model=model.name, kernel=target.kernel, usage=usage, default=default)
        _add_bytes(tar, f"{top}/run.sh", run_sh.encode(), 0o755)
        _add_bytes(tar, f"{top}/bundle.json", (json.dumps(manifest, indent=2) + "\n").encode(), 0o644)
    return BundleResult(output, target, manifest["model_bytes"], binary)
