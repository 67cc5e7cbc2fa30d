"""A 32-bit build of the loader and the model under AddressSanitizer and UBSan: armv7 (32-bit Raspberry Pi OS)
cross-built, run under qemu-arm.

On 32 bits size_t wraps at 4 GiB, so sizes computed from file values that are harmless on x86-64 can wrap into
small buffers there. The GGUF fuzz target (native/programs/fuzz_gguf.c) and the model target (native/programs/fuzz_model.c: open,
tokenizer, a short eval, sampling) run over the loader tests' broken files and over shapes whose KV cache passes
4 GiB; nothing may reach a sanitizer report, and an impossible cache is an out-of-memory line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.arm.conftest import require_tools
from tests.native.test_loader import broken_files, tiny, write_tiny_model  # noqa: F401 (fixtures)
from tests.native_sources import LOADER_SOURCE, include_flags, library_sources, program

pytestmark = pytest.mark.reference

ARMV7 = ["-march=armv7-a", "-mfpu=neon-vfpv4", "-mfloat-abi=hard"]
SANITIZE = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all"]
QEMU = ["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]


def cross_build(tmp_path: Path, target: str, sources: list[str]) -> Path:
    require_tools("armv7")
    exe = tmp_path / target
    cmd = ["arm-linux-gnueabihf-gcc", "-std=c11", "-g", "-O1", "-D_GNU_SOURCE", "-DQRT_FUZZ_MAIN", *ARMV7]
    cmd += [*SANITIZE, *include_flags(), *sources, "-lm", "-pthread", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return exe


def run_under_qemu(exe: Path, *args) -> list[str]:
    # LeakSanitizer cannot run under qemu-user (it needs ptrace); leaks are not what this test looks for
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    proc = subprocess.run([*QEMU, str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "runtime error" not in proc.stderr and "AddressSanitizer" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout.splitlines()


@pytest.fixture(scope="module")
def wide_kv(tmp_path_factory) -> Path:
    """One layer of 16 heads x 1024 and a 262144-token context: 2 x 8 GiB of f16 cache, which a 32-bit size_t
    wrapped to 0 (calloc succeeded and store_kv wrote past the buffer)."""
    return write_tiny_model(
        tmp_path_factory.mktemp("wide") / "wide_kv.gguf",
        weight_type="Q4_0",
        dim=32,
        n_layers=1,
        heads=16,
        kv_heads=16,
        head_dim=1024,
        context=262144,
    )


def test_gguf_loader_32bit(tmp_path, broken_files, tiny):  # noqa: F811
    exe = cross_build(tmp_path, "fuzz_gguf", [program("fuzz_gguf.c"), LOADER_SOURCE])
    files = [tiny, *broken_files]
    lines = run_under_qemu(exe, *files)
    assert len(lines) == len(files) and lines[0] == "ok"


def test_model_32bit(tmp_path, broken_files, tiny, wide_kv):  # noqa: F811
    exe = cross_build(tmp_path, "fuzz_model", [program("fuzz_model.c"), *library_sources()])
    files = [tiny, wide_kv, *broken_files]
    lines = run_under_qemu(exe, *files, "-c", 262144, wide_kv)
    assert len(lines) == len(files) + 1
    assert lines[0] == "ok" and lines[1] == "ok"  # the tiny model, and the wide one at a 64-token context
    oom = "out of memory for a KV cache of 2 sequences x 262144 tokens x 1 layers x 16384 values"
    assert oom in lines[-1], lines[-1]
    assert all(line == "ok" or line.startswith(("/", "fuzz")) for line in lines)
