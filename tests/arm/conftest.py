"""Fixtures for the ARM tests: cross builds of native/ (make -C native TARGET=...), qemu runners, sample GGUFs.

The tests skip only when the cross tools are missing (CI installs them: see .ci/run); everything else fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[2] / "native"
HOST = os.uname().machine
TOOLS = {
    "aarch64": ("aarch64-linux-gnu-gcc", "qemu-aarch64"),
    "armv7": ("arm-linux-gnueabihf-gcc", "qemu-arm"),
    HOST: ("gcc", None),
}
PROMPT = "The sky is"  # short: qemu runs the 135M model at ~1.5 tokens/s
N_TOKENS = 6


def require_tools(target: str) -> None:
    missing = [t for t in TOOLS[target] if t and shutil.which(t) is None]
    if missing or shutil.which("make") is None:
        pytest.skip(f"cross tools for {target} not installed: {', '.join(missing) or 'make'} (see README: ARM)")


def build(target: str) -> Path:
    """make -C native TARGET=target (the documented command); the build folder."""
    require_tools(target)
    proc = subprocess.run(["make", "-s", "-C", str(NATIVE), f"TARGET={target}", "-j2"], capture_output=True, text=True)
    assert proc.returncode == 0, f"make TARGET={target} failed:\n{proc.stderr[-3000:]}"
    return NATIVE / "build" / target


@pytest.fixture(scope="session")
def aarch64_build() -> Path:
    return build("aarch64")


@pytest.fixture(scope="session")
def armv7_build() -> Path:
    return build("armv7")


@pytest.fixture(scope="session")
def host_build() -> Path:
    return build(HOST)


def run(cmd: list, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QRT_")}
    full_env.update(env or {})
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=full_env, timeout=timeout)


def generate(prefix: list, model: Path, *flags, env: dict | None = None) -> str:
    """Greedy --raw generation with qrun-native (prefix: [qemu, -cpu, X, binary] or [binary]); the stdout."""
    proc = run([*prefix, model, "--raw", "-p", PROMPT, "-n", N_TOKENS, "--temp", "0", "-t", "2", *flags], env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def sample_ggufs(tmp_path_factory) -> dict[str, Path]:
    """The sample model (SmolLM2-135M-Instruct) converted by qconv to q4_0 and q4_k_m."""
    from click.testing import CliRunner

    from qconv.converter.cli import main
    from qconv.samples.smollm2 import cached_smollm2

    src = cached_smollm2()
    out = tmp_path_factory.mktemp("arm_models")
    files = {}
    for qtype in ("q4_0", "q4_k_m"):
        path = out / f"smollm2-{qtype}.gguf"
        result = CliRunner().invoke(main, ["to-gguf", str(src), "--type", qtype, "-o", str(path), "-q"])
        assert result.exit_code == 0, result.output
        files[qtype] = path
    return files
