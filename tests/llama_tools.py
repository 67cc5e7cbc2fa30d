"""llama.cpp's command-line tools (llama-imatrix, llama-quantize, llama-perplexity; llama-bench, llama-embedding and
llama-server for the benches) built with cmake from the llama.cpp source vendored in the llama-cpp-python sdist,
once, cached under $QCONV_CACHE/llama-tools.

The build leaves AMX off (tests/llama_cpp_cmake_args.sh): ggml's AMX kernels crash in the VMs we run on.
llama-server is built without OpenSSL (it serves plain HTTP on 127.0.0.1 to the bench) and without its web UI
(LLAMA_USE_PREBUILT_UI would download the UI's assets from Hugging Face at build time; LLAMA_BUILD_UI runs npm).
`python -m tests.llama_tools` builds them ahead of the tests.
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


if __name__ == "__main__":
    for name, path in build_tools().items():
        print(name, path)
