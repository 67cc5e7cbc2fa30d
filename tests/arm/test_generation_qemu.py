"""End to end: greedy generation of the sample model at q4_0 and q4_k_m under qemu equals the x86 build's text
(and so its tokens), for each kernel variant, on a CPU lacking the extensions (fallback), and on armv7.

All builds compile with -std=c11, under which GCC does not contract a*b+c into FMAs (the fused operations the
kernels need are explicit), so no -ffp-contract flag is needed for the equality.
"""

from __future__ import annotations

import sys

import pytest

from tests.arm.conftest import PROMPT, generate, run

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def x86_texts(host_build, sample_ggufs):
    return {q: generate([host_build / "qrun-native"], path) for q, path in sample_ggufs.items()}


@pytest.mark.parametrize("qtype", ["q4_0", "q4_k_m"])
def test_aarch64_equals_x86(qtype, aarch64_build, sample_ggufs, x86_texts):
    text = generate(["qemu-aarch64", "-cpu", "max", aarch64_build / "qrun-native"], sample_ggufs[qtype])
    assert text.strip(), "no text generated"
    assert text == x86_texts[qtype]


@pytest.mark.parametrize("variant", ["neon", "neon-i8mm", "scalar"])
def test_forced_variants_equal(variant, aarch64_build, sample_ggufs, x86_texts):
    text = generate(
        ["qemu-aarch64", "-cpu", "max", aarch64_build / "qrun-native"],
        sample_ggufs["q4_k_m"],
        env={"QRT_KERNEL": variant},
    )
    assert text == x86_texts["q4_k_m"]


def test_fallback_on_cpu_without_extensions(aarch64_build, sample_ggufs, x86_texts):
    """Asking for SDOT on a Cortex-A53 (no dotprod/i8mm) runs baseline NEON instead of crashing."""
    prefix = ["qemu-aarch64", "-cpu", "cortex-a53", aarch64_build / "qrun-native"]
    proc = run([*prefix, sample_ggufs["q4_0"], "--raw", "-p", "Hi", "-n", "1", "--kernel", "neon-dotprod", "-v"])
    assert proc.returncode == 0, proc.stderr
    assert "not available on this CPU" in proc.stderr and "kernel Q4_0: neon, packed x16\n" in proc.stderr, proc.stderr
    assert generate(prefix, sample_ggufs["q4_0"], env={"QRT_KERNEL": "neon-i8mm"}) == x86_texts["q4_0"]


def test_armv7_equals_x86(armv7_build, sample_ggufs, x86_texts):
    """32-bit on a NEON + VFPv4 core: the NEON kernels (packed x16)."""
    prefix = ["qemu-arm", "-cpu", "cortex-a15", armv7_build / "qrun-native"]
    proc = run([*prefix, sample_ggufs["q4_0"], "--raw", "-p", "Hi", "-n", "1", "-v"])
    assert proc.returncode == 0 and "kernel Q4_0: neon, packed x16\n" in proc.stderr, proc.stderr
    assert generate(prefix, sample_ggufs["q4_0"]) == x86_texts["q4_0"]


def test_armv7_vfp_only_core_equals_x86(armv7_build, host_build, sample_ggufs):
    """32-bit on a core without NEON (qemu's cortex-r5f, VFPv3-D16): the scalar reference runs, the text is the x86
    build's (two tokens: the scalar kernels under qemu take ~8 s per token of the 135M model)."""
    model, args = sample_ggufs["q4_0"], ["--raw", "-p", PROMPT, "-n", "2", "--temp", "0", "-t", "2"]
    proc = run(["qemu-arm", "-cpu", "cortex-r5f", armv7_build / "qrun-native", model, *args, "-v"])
    assert proc.returncode == 0 and "kernel Q4_0: scalar\n" in proc.stderr, proc.stderr
    assert proc.stdout.strip() and proc.stdout == run([host_build / "qrun-native", model, *args]).stdout


def test_qrun_native_raw_equals_qrun(host_build, sample_ggufs):
    """With --raw, qrun-native's stdout equals qrun's (Python) for the same arguments: greedy and sampled."""
    model = sample_ggufs["q4_k_m"]
    for args in (
        ["--raw", "-p", "Once upon a time", "-n", "12", "--temp", "0"],
        ["--raw", "-p", "Hi", "-n", "8", "--seed", "7"],
        ["-p", "Hi", "-n", "8", "--temp", "0"],
    ):
        ours = run([host_build / "qrun-native", model, *args])
        assert ours.returncode == 0, ours.stderr
        theirs = run([sys.executable, "-m", "qconv.runtime.cli", model, *args])
        assert theirs.returncode == 0, theirs.stderr
        assert ours.stdout == theirs.stdout, args


@pytest.mark.parametrize("qtype", ["q4_0", "q4_k_m"])
def test_kernels_on_real_rows_of_converted_files(qtype, aarch64_build, sample_ggufs):
    """kernel-check on rows of qconv's own q4_0 / q4_k_m files (Q4_0, Q4_K, Q5_0, Q6_K, Q8_0 real blocks)."""
    proc = run(["qemu-aarch64", "-cpu", "max", aarch64_build / "kernel-check", sample_ggufs[qtype]])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    real = {"q4_0": ["q4_0"], "q4_k_m": ["q4_K", "q6_K"]}[qtype]
    for t in real:
        for v in ("neon", "neon-dotprod", "neon-i8mm"):
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"{t} {v}:"))
            assert " 0 mismatches" in line and "(0 from the model)" not in line, line
