"""The documented cross builds produce binaries of the right architecture, statically linked for the boards."""

from __future__ import annotations

import shutil

import pytest

from tests.arm.conftest import run

EXPECTED = {"aarch64": "ARM aarch64", "armv7": "ARM, EABI5"}


@pytest.mark.parametrize("target", ["aarch64", "armv7"])
def test_cross_build_architecture(target, request):
    build = request.getfixturevalue(f"{target}_build")
    if shutil.which("file") is None:
        pytest.skip("`file` not installed (apt-get install file)")
    for name in ("libqrt.so", "qrun-native", "kernel-check"):
        out = run(["file", "-b", build / name]).stdout
        assert EXPECTED[target] in out, (name, out)
        if name != "libqrt.so":
            assert "statically linked" in out, (name, out)
