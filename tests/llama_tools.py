"""llama.cpp's command-line tools (llama-imatrix, llama-quantize, llama-perplexity; llama-bench, llama-embedding and
llama-server for the benches) built with cmake from the llama.cpp source vendored in the llama-cpp-python sdist,
once, cached under $QCONV_CACHE/llama-tools.

The build leaves AMX off (tests/llama_cpp_cmake_args.sh): ggml's AMX kernels crash in the VMs we run on.
llama-server is built without OpenSSL (it serves plain HTTP on 127.0.0.1 to the bench) and without its web UI
(LLAMA_USE_PREBUILT_UI would download the UI's assets from Hugging Face at build time; LLAMA_BUILD_UI runs npm).
`python -m tests.llama_tools` builds them ahead of the tests.

build_aarch64_bench cross-builds llama-bench for aarch64 from the same source (tests/bench/arm.py runs it under
qemu-aarch64), once per -march, cached under $QCONV_CACHE/llama-aarch64/<march>: static (the binary runs under
qemu-user without an aarch64 sysroot), GGML_NATIVE off with GGML_CPU_ARM_ARCH naming the ISA, and ggml's own thread
pool instead of OpenMP (a static libgomp is one more cross package, and the bench runs one thread).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from tests.bench.models import cache_root, llama_cpp_source

TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity")
CMAKE_ARGS_SCRIPT = Path(__file__).parent / "llama_cpp_cmake_args.sh"


AARCH64_COMPILERS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++")  # apt: g++-aarch64-linux-gnu


def build_dir() -> Path:
    return cache_root() / "llama-tools"


def tool_path(name: str) -> Path:
    return build_dir() / "bin" / name


def tools_missing_reason() -> str | None:
    """None when cmake and a compiler are available (the tools can be built), else why not."""
    for program in ("cmake", "c++"):
        if shutil.which(program) is None:
            return f"{program} is not installed; cannot build llama.cpp's tools"
    return None


def build_tools(tools: tuple[str, ...] = TOOLS, jobs: int | None = None) -> dict[str, Path]:
    """Build (or reuse) the named tools; returns name -> executable path. Locked, so parallel callers wait."""
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [t for t in tools if not tool_path(t).exists()]
        if missing:
            source = llama_cpp_source()
            flags = subprocess.run(["bash", str(CMAKE_ARGS_SCRIPT)], capture_output=True, text=True, check=True)
            configure = [
                "cmake", "-S", str(source), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON",  # llama-embedding is an example
                "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF", *flags.stdout.split(),
            ]  # fmt: skip
            log = out / "build.log"
            with open(log, "a") as f:
                subprocess.run(configure, check=True, stdout=f, stderr=subprocess.STDOUT)
                subprocess.run(
                    ["cmake", "--build", str(out), "-j", str(jobs or os.cpu_count() or 2), "--target", *missing],
                    check=True, stdout=f, stderr=subprocess.STDOUT,
                )  # fmt: skip
    return {t: tool_path(t) for t in tools}


def build_aarch64_bench(march: str, jobs: int | None = None) -> Path:
    """llama-bench cross-built for aarch64 with -march=`march` (e.g. armv8.2-a+dotprod+fp16); its path."""
    for program in ("cmake", *AARCH64_COMPILERS):
        if shutil.which(program) is None:
            raise RuntimeError(f"{program} is not installed (apt-get install cmake g++-aarch64-linux-gnu)")
    out = cache_root() / "llama-aarch64" / march
    binary = out / "bin" / "llama-bench"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        source = llama_cpp_source()
        configure = [
            "cmake", "-S", str(source), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
            "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
            f"-DCMAKE_C_COMPILER={AARCH64_COMPILERS[0]}", f"-DCMAKE_CXX_COMPILER={AARCH64_COMPILERS[1]}",
            "-DCMAKE_EXE_LINKER_FLAGS=-static", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF",
            f"-DGGML_CPU_ARM_ARCH={march}", "-DGGML_OPENMP=OFF", "-DGGML_CCACHE=OFF", "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
        ]  # fmt: skip
        with open(out / "build.log", "a") as f:
            subprocess.run(configure, check=True, stdout=f, stderr=subprocess.STDOUT)
            subprocess.run(
                ["cmake", "--build", str(out), "-j", str(jobs or os.cpu_count() or 2), "--target", "llama-bench"],
                check=True, stdout=f, stderr=subprocess.STDOUT,
            )  # fmt: skip
    return binary


if __name__ == "__main__":
    for name, path in build_tools().items():
        print(name, path)
