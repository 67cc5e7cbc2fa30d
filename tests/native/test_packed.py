"""The x16 packed kernels (native/kernels/packed.c, packed_simd.inc): every SIMD variant equals the scalar reference bit for
bit on random and real rows, and the reference stays within float rounding of the row-by-row dot kernels (q8_0,
q5_0, q4_1 and q5_1, which keep ggml's lane order, equal them exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.runtime._native import ffi, lib
from qconv.runtime.quants import get_type, quantize
from tests.native.test_kernels import exercised_variants

PACKED_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_K", "q6_K"]
# kept in ggml_vec_dot's lane order, so the packed result equals the row-by-row dot kernels exactly
LANE_ORDER_TYPES = {"q4_1", "q5_0", "q5_1", "q8_0"}


def packed_matmul(type_id: int, variant: str, rows: np.ndarray, x: np.ndarray) -> np.ndarray | None:
    n_rows, n = rows.shape[0], x.shape[1]
    out = np.zeros((x.shape[0], n_rows), np.float32)
    rc = lib.qrt_packed_matmul(type_id, variant.encode(), ffi.from_buffer(rows), n_rows, n,
                               ffi.from_buffer("float[]", x), x.shape[0], ffi.from_buffer("float[]", out))  # fmt: skip
    return out if rc == 0 else None


def row_dots(type_id: int, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], rows.shape[0]), np.float32)
    value = ffi.new("float *")
    for t in range(x.shape[0]):
        for r in range(rows.shape[0]):
            assert lib.qrt_kernel_dot(type_id, b"scalar", ffi.from_buffer(rows[r]), ffi.from_buffer("float[]", x[t]),
                                      x.shape[1], value) == 0  # fmt: skip
            out[t, r] = value[0]
    return out


@pytest.mark.parametrize("name", PACKED_TYPES)
@pytest.mark.parametrize("n_tok", [1, 3, 9])
def test_packed_variants_equal_scalar(name, n_tok):
    rng = np.random.default_rng(n_tok)
    t = get_type(name)
    rows = quantize(rng.standard_normal((48, 512)).astype(np.float32) * rng.uniform(0.1, 4, (48, 1)), name)
    x = (rng.standard_normal((n_tok, 512)) * np.where(rng.random(512) < 0.02, 30, 1)).astype(np.float32)
    ref = packed_matmul(t.type_id, "scalar", rows, x)
    assert ref is not None
    dots = row_dots(t.type_id, rows, x)
    if name in LANE_ORDER_TYPES:
        np.testing.assert_array_equal(ref, dots)
    else:
        np.testing.assert_allclose(ref, dots, rtol=1e-5, atol=1e-5 * float(np.abs(dots).max()))
    ran = []
    for variant in exercised_variants():
        got = packed_matmul(t.type_id, variant, rows, x)
        if got is not None:
            np.testing.assert_array_equal(got, ref, err_msg=f"{name} {variant}")
            ran.append(variant)
    print(f"{name}: packed variants equal to the scalar reference: {ran}")
    assert ran or not exercised_variants()


def test_packed_rejects_shapes_it_cannot_hold():
    t = get_type("q4_0")
    rows = quantize(np.ones((8, 64), np.float32), "q4_0")  # 8 rows: not a whole 16-row group
    assert packed_matmul(t.type_id, "scalar", rows, np.ones((1, 64), np.float32)) is None
    assert packed_matmul(get_type("q3_K").type_id, "scalar", quantize(np.ones((16, 256), np.float32), "q3_K"),
                         np.ones((1, 256), np.float32)) is None  # q3_K has no packed layout  # fmt: skip
