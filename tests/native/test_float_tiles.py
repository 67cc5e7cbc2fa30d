"""The f32/f16 prompt tiles (native/kernels/kernels_float_tiles.c) equal the variant's batch_dot bit for bit, forcing each
x86 variant this CPU runs; AVX2's batch_dot (same file) equals the scalar tinyBLAS order bit for bit too.

Bit equality matters: batch_dot follows llama.cpp's tinyBLAS order, so f32 prompt logits stay equal to
llama.cpp's only if the tiles change nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from qconv.runtime._native import ffi, lib

TYPES = {"f32": (0, np.float32), "f16": (1, np.float16)}
TILE_VARIANTS = ["avx2", "avx512"]
MAX_NR = 8  # rows per tile call: 4 (AVX2) or 8 (AVX-512)
LENGTHS = [16, 64, 576, 1536, 40, 200]  # the last two are not multiples of 16: every pair through batch_dot


def exercised() -> list[str]:
    return [v for v in TILE_VARIANTS if lib.qrt_kernel_variant_supported(v.encode())]


def tile(type_id: int, w: np.ndarray, x: np.ndarray, row_step: int = 1) -> np.ndarray | None:
    """One tile over rows 0, row_step, 2 * row_step, ... of w (a weight stride of row_step rows): [4 tokens, nr]."""
    out = np.zeros(64, dtype=np.float32)
    nr = lib.qrt_kernel_tile(
        type_id, ffi.from_buffer(w), w.strides[0] * row_step, ffi.from_buffer("float[]", x), x.shape[1],
        ffi.from_buffer("float[]", out), len(out),
    )  # fmt: skip
    assert nr >= 0, (type_id, w.shape)
    return out[: 4 * nr].reshape(4, nr) if nr else None


def batch_dot(type_id: int, variant: str, row: np.ndarray, x: np.ndarray) -> np.float32:
    out = ffi.new("float *")
    x = np.ascontiguousarray(x)
    rc = lib.qrt_kernel_dot_batch(
        type_id,
        variant.encode(),
        ffi.from_buffer(np.ascontiguousarray(row)),
        ffi.from_buffer("float[]", x),
        len(x),
        out,
    )
    assert rc == 0, (type_id, variant)
    return np.float32(out[0])


def rows(rng, n_rows: int, n: int, dtype) -> np.ndarray:
    w = rng.standard_normal((n_rows, n)).astype(np.float32)
    w[1, ::5] *= 50.0  # outliers
    w[2] *= 1e-3  # a small-scale row
    w[min(10, n_rows - 1)] *= 1e3  # a large-scale row (in the second register tile of an 8-row call)
    return np.ascontiguousarray(w.astype(dtype))


@pytest.fixture
def restore_dispatch():
    yield
    lib.qrt_kernels_force(b"auto")


@pytest.mark.parametrize("name", list(TYPES))
def test_tiles_equal_batch_dot(name, restore_dispatch):
    type_id, dtype = TYPES[name]
    rng = np.random.default_rng(type_id)
    seen = []
    for variant in exercised():
        assert lib.qrt_kernels_force(variant.encode()) == 0
        for n in LENGTHS:
            w_all = rows(rng, 2 * MAX_NR, n, dtype)
            w = w_all[::2]  # every other row: a weight stride of two rows
            x = rng.standard_normal((4, n)).astype(np.float32)
            got = tile(type_id, w_all, x, row_step=2)
            assert got is not None, f"{variant} has no {name} tile"
            nr = got.shape[1]
            assert nr in (4, MAX_NR)
            want = np.array([[batch_dot(type_id, variant, w[r], x[t]) for r in range(nr)] for t in range(4)])
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {variant} n={n}")
        seen.append(variant)
    print(f"{name}: tiles exercised under {seen or 'no x86 variant'}")
    if lib.qrt_kernel_variant_supported(b"avx512"):
        assert seen == TILE_VARIANTS


def test_scalar_has_no_float_tile(restore_dispatch):
    """The scalar variant keeps the per-pair path: the probe reports 0 rows."""
    assert lib.qrt_kernels_force(b"scalar") == 0
    w = np.ones((4, 64), dtype=np.float32)
    assert tile(0, w, np.ones((4, 64), dtype=np.float32)) is None


@pytest.mark.parametrize("name", list(TYPES))
def test_avx2_batch_dot_equals_scalar_order(name):
    """AVX2's batch_dot runs the 16-lane tinyBLAS order in two 8-lane halves: equal to the scalar reference."""
    if not lib.qrt_kernel_variant_supported(b"avx2"):
        pytest.skip("no AVX2 on this CPU")
    type_id, dtype = TYPES[name]
    rng = np.random.default_rng(10 + type_id)
    for n in (16, 576, 1024):
        w = rows(rng, 4, n, dtype)
        x = rng.standard_normal(n).astype(np.float32)
        for r in range(4):
            assert batch_dot(type_id, "avx2", w[r], x) == batch_dot(type_id, "scalar", w[r], x), (name, n, r)


def test_probe_rejects_bad_arguments():
    w = np.ones((4, 64), dtype=np.float32)
    x = np.ones((4, 64), dtype=np.float32)
    out = np.zeros(4, dtype=np.float32)  # too small for a 4 x 4 tile
    nr = lib.qrt_kernel_tile(
        0, ffi.from_buffer(w), w.strides[0], ffi.from_buffer("float[]", x), 64, ffi.from_buffer("float[]", out), 4
    )
    if lib.qrt_kernel_variant_supported(b"avx2"):
        assert nr == -1
    # a weight stride shorter than a row
    assert (
        lib.qrt_kernel_tile(
            0, ffi.from_buffer(w), 16, ffi.from_buffer("float[]", x), 64, ffi.from_buffer("float[]", out), 4
        )
        == -1
    )
