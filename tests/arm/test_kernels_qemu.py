"""Under qemu, every NEON kernel (baseline, SDOT, SMMLA) equals the scalar reference on random blocks, quantized
blocks and rows of the package's real GGUF, and so does every NEON packed (x16) kernel, and the attention, exp, softmax
and activation-conversion kernels (native/programs/kernel_check.c); a CPU
without the extensions falls back. The 32-bit build the same: NEON kernels on a core with NEON and VFPv4, the scalar
reference on one without (qemu-arm's cortex-a9: NEON without VFPv4's fused multiply-add; cortex-r5f: VFP only)."""

from __future__ import annotations

import re

import pytest

from tests.arm.conftest import run

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"]
INTEGER = set(TYPES) - {"F32", "F16", "BF16"}
LINE = re.compile(r"^(\S+) (\S+): (\d+) rows \((\d+) from the model\), (\d+) mismatches", re.M)
PACKED = re.compile(r"^packed (\S+) (\S+): (\d+) matmuls of \d+ rows, (\d+) mismatches", re.M)
ATTENTION = re.compile(r"^attention neon: (\d+) calls, 0 mismatches", re.M)
PACKED_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_K", "q6_K"]
# the exp of SwiGLU and softmax, the softmax on it, and the q8 activation conversions of the NEON variant
ELEMENTWISE = [
    re.compile(r"^expf16 neon: \d+ values, 0 mismatches", re.M),
    re.compile(r"^softmax neon: \d+ lengths, 0 mismatches", re.M),
    *(re.compile(rf"^act {t} neon: \d+ rows, 0 mismatches", re.M) for t in ("q8_0", "q8_1", "q8_K")),
]


def assert_elementwise_checked(stdout: str) -> None:
    for line in ELEMENTWISE:
        assert line.search(stdout), f"not checked, or mismatched: {line.pattern}"


def packed_results(stdout: str) -> dict[tuple[str, str], tuple[int, int]]:
    return {(m[1], m[2]): (int(m[3]), int(m[4])) for m in PACKED.finditer(stdout)}


def kernel_check_output(build, cpu, model=None, env=None, qemu="qemu-aarch64") -> str:
    proc = run([qemu, "-cpu", cpu, build / "kernel-check", *([model] if model else [])], env=env)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def kernel_check(build, cpu, model=None, env=None, qemu="qemu-aarch64") -> dict[tuple[str, str], tuple[int, int, int]]:
    stdout = kernel_check_output(build, cpu, model, env, qemu)
    return {(m[1].upper(), m[2]): (int(m[3]), int(m[4]), int(m[5])) for m in LINE.finditer(stdout)}


def test_every_neon_kernel_equals_scalar(aarch64_build, smollm2_package_gguf):
    results = kernel_check(aarch64_build, "max", smollm2_package_gguf)
    for t in TYPES:
        assert results[(t, "neon")][2] == 0
    for variant in ("neon-dotprod", "neon-i8mm"):
        for t in INTEGER:
            rows, real, bad = results[(t, variant)]
            assert bad == 0 and rows >= 32, (t, variant)
    # real rows: the package file's Q4_1 matrices and Q8_0 embedding went through every variant
    assert results[("Q4_1", "neon-i8mm")][1] > 0 and results[("Q8_0", "neon-dotprod")][1] > 0


@pytest.mark.parametrize(
    ("cpu", "variants"), [("max", {"neon", "neon-dotprod", "neon-i8mm"}), ("cortex-a72", {"neon"})]
)
def test_packed_kernels_equal_scalar(aarch64_build, cpu, variants):
    """The x16 packed kernels (what qrun multiplies q4_0/q4_1/q5_0/q5_1/q8_0/q4_K/q6_K matrices with) on every variant the
    CPU has, bit for bit against the scalar reference, for 1, 3, 9 and 65 tokens (65: a whole chunk of the preps and
    a one-token tail); and the NEON attention products, exp,
    softmax and q8 activation conversions."""
    stdout = kernel_check_output(aarch64_build, cpu)
    results = packed_results(stdout)
    assert {v for _, v in results} == variants
    assert ATTENTION.search(stdout), "the NEON attention products were not checked"
    assert_elementwise_checked(stdout)
    for t in PACKED_TYPES:
        for v in variants:
            runs, bad = results[(t, v)]
            assert runs == 4 and bad == 0, (t, v)


@pytest.mark.parametrize("cpu", ["cortex-a53", "cortex-a72"])
def test_cpu_without_dotprod_runs_baseline_neon(aarch64_build, cpu):
    results = kernel_check(aarch64_build, cpu)
    assert {v for _, v in results} == {"neon"}


def test_hwcap_mask_hides_dotprod(aarch64_build):
    results = kernel_check(aarch64_build, "max", env={"QRT_HWCAP_MASK": "100000"})
    assert {v for _, v in results} == {"neon"}


def test_armv7_neon_kernels_equal_scalar(armv7_build, smollm2_package_gguf):
    """32-bit NEON (Cortex-A15: NEON + VFPv4, as the Cortex-A7/A53/A72 of 32-bit Raspberry Pi OS): every dot kernel but
    bf16's (ARMv7 NEON has no doubles), every packed kernel, the attention products, exp, softmax and activation
    conversions, bit for bit against the scalar reference (ARMv7 NEON flushes denormals: the exp's edge inputs and
    the conversions' tiny blocks check that it changes nothing)."""
    stdout = kernel_check_output(armv7_build, "cortex-a15", smollm2_package_gguf, qemu="qemu-arm")
    results = {(m[1].upper(), m[2]): (int(m[3]), int(m[4]), int(m[5])) for m in LINE.finditer(stdout)}
    assert {v for _, v in results} == {"neon"}
    for t in set(TYPES) - {"BF16"}:
        rows, _, bad = results[(t, "neon")]
        assert bad == 0 and rows >= 32, t
    assert results[("Q4_1", "neon")][1] > 0 and results[("Q8_0", "neon")][1] > 0
    packed = packed_results(stdout)
    for t in PACKED_TYPES:
        assert packed[(t, "neon")] == (4, 0), t
    assert ATTENTION.search(stdout), "the NEON attention products were not checked"
    assert_elementwise_checked(stdout)


@pytest.mark.parametrize(
    ("cpu", "env"), [("cortex-a9", None), ("cortex-r5f", None), ("cortex-a15", {"QRT_HWCAP_MASK": "1000"})]
)
def test_armv7_without_neon_runs_scalar(armv7_build, cpu, env):
    """No NEON (cortex-r5f, or HWCAP_NEON masked), or NEON without VFPv4 (cortex-a9): no SIMD kernel is registered,
    and the scalar reference runs (on a VFP-only core, with no NEON instruction on the way)."""
    stdout = kernel_check_output(armv7_build, cpu, env=env, qemu="qemu-arm")
    assert "0 type/variant pairs, 0 mismatches" in stdout, stdout
