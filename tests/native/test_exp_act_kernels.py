"""The 16-lane exp of SwiGLU and softmax (ggml's ggml_v_expf, operation for operation) and the q8 activation
conversions: each SIMD variant returns its scalar reference's bits for every input (the exp's edge values
included: denormal results, overflow, inf, NaN), and the references themselves are what they claim to be. The ARM
(NEON) variants are checked the same way under qemu by kernel-check (tests/arm)."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.runtime._native import ffi, lib

Q8_TYPES = {"q8_0": (8, 34), "q8_1": (9, 36), "q8_K": (15, 292)}  # GGUF type id, bytes per block
EDGES = [0.0, -0.0, 2.0**-149, -(2.0**-149), 2.0**-126, 1e-30, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan]
EDGES += [88.0, 88.72, 89.0, -87.33, -100.0, -103.97, -104.0, -133.0, 133.2, 0.5, -1.0]


def expf16(variant: str, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    assert lib.qrt_kernel_expf16(variant.encode(), ffi.from_buffer("float[]", y), ffi.from_buffer("float[]", x), len(x)) == 0
    return y


def exp_inputs(rng) -> np.ndarray:
    sweep = np.linspace(-110, 100, 1 << 16, dtype=np.float32)
    bits = rng.integers(0, 1 << 32, 1 << 15, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([sweep, bits])
    x[rng.integers(0, len(sweep), 4 * len(EDGES))] = np.repeat(np.array(EDGES, dtype=np.float32), 4)
    return x


def test_scalar_exp_is_exp():
    """The reference: within 2 ulp of e^x over ggml's range, 0 below it, inf above it, NaN for NaN."""
    x = np.linspace(-87, 88.5, 1 << 14, dtype=np.float32)
    got = expf16("scalar", x)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 2.5e-7
    edge = expf16("scalar", np.array([-105, -np.inf, 90, np.inf, np.nan] + [0] * 11, dtype=np.float32))
    assert edge[0] == 0 and edge[1] == 0 and edge[2] == np.inf and edge[3] == np.inf and np.isnan(edge[4])


def test_avx512_exp_equals_scalar():
    if not lib.qrt_kernel_variant_supported(b"avx512"):
        pytest.skip("no AVX-512 on this CPU")
    x = exp_inputs(np.random.default_rng(3))
    np.testing.assert_array_equal(expf16("avx512", x).view(np.uint32), expf16("scalar", x).view(np.uint32))


def test_exp_probe_refuses_what_does_not_run():
    y = np.zeros(16, dtype=np.float32)
    buf = ffi.from_buffer("float[]", y)
    assert lib.qrt_kernel_expf16(b"scalar", buf, buf, 15) == -1  # not a multiple of 16
    assert lib.qrt_kernel_expf16(b"no-such", buf, buf, 16) == -1
    if not lib.qrt_kernel_variant_supported(b"neon"):
        assert lib.qrt_kernel_expf16(b"neon", buf, buf, 16) == -1


def act_convert(variant: str, type_name: str, x: np.ndarray) -> bytes | None:
    type_id, block_bytes = Q8_TYPES[type_name]
    block = 256 if type_name == "q8_K" else 32
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = bytearray(len(x) // block * block_bytes)
    rc = lib.qrt_kernel_act_convert(variant.encode(), type_id, ffi.from_buffer("float[]", x), ffi.from_buffer(out), len(x))
    return bytes(out) if rc == 0 else None


def act_rows(rng) -> list[np.ndarray]:
    rows = [rng.standard_normal(1024).astype(np.float32) * s for s in (1.0, 1e-3, 40.0)]
    halves = rng.integers(-127, 127, 1024).astype(np.float32) + 0.5  # rounding ties, the scale 1 (amax 127)
    halves[::32] = 127.0
    signs = rng.standard_normal(1024).astype(np.float32)
    signs[17::256], signs[200::256] = -50.0, 50.0  # the largest magnitude with both signs, the negative first
    tiny = np.zeros(1024, dtype=np.float32)  # blocks of zeros, of tiny values with denormals among them, of one value
    tiny[256:512] = rng.standard_normal(256) * np.exp2(-rng.integers(91, 131, 256))
    tiny[512:544] = rng.standard_normal(32) * 2.0**-112
    tiny[700] = 3.0
    return [*rows, halves, signs, tiny]


@pytest.mark.parametrize("variant", ["avx2", "avx512"])
@pytest.mark.parametrize("type_name", sorted(Q8_TYPES))
def test_simd_act_conversion_equals_scalar(variant, type_name):
    """Each variant's own conversion (what a matmul runs) gives the reference's bytes."""
    if act_convert(variant, type_name, np.zeros(256, dtype=np.float32)) is None:
        pytest.skip(f"no {variant} conversion here")
    for i, x in enumerate(act_rows(np.random.default_rng(7))):
        assert act_convert(variant, type_name, x) == act_convert("scalar", type_name, x), i


def test_act_probe_refuses_what_does_not_run():
    x = np.zeros(256, dtype=np.float32)
    assert act_convert("scalar", "q8_0", x) is not None
    assert act_convert("scalar", "q8_0", x[:31]) is None  # not a whole block
    assert act_convert("no-such", "q8_0", x) is None
    assert lib.qrt_kernel_act_convert(b"scalar", 0, ffi.from_buffer("float[]", x), ffi.from_buffer(bytearray(1024)), 256) == -1
