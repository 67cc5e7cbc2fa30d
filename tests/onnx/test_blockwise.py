"""The block-wise integer search (native/quant/quant_blockwise.c) through runtime/blockwise.py."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.runtime.blockwise import BITS, BLOCK_SIZES, quantize_blockwise, row_error

RNG = np.random.default_rng(7)
WEIGHTS = (RNG.standard_normal((24, 200)) * 0.05).astype(np.float32)  # 200 columns: a short last block
WEIGHTS[RNG.random(WEIGHTS.shape) < 0.01] *= 12  # outliers, as in real layers
IMPORTANCE = (RNG.random(200) ** 3 * 50).astype(np.float32)


def weighted_error(x, deq, importance=None):
    if importance is None:
        return float(((x.astype(np.float64) - deq) ** 2).sum())
    sigma2 = (x.astype(np.float64) ** 2).mean(-1, keepdims=True)
    w = importance * np.sqrt(sigma2 + x.astype(np.float64) ** 2)
    return float((w * (x - deq) ** 2).sum())


def round_to_nearest(x, bits, block, symmetric):
    """Plain min/max rounding: the baseline the search must beat."""
    out = np.empty_like(x, dtype=np.float64)
    for c0 in range(0, x.shape[1], block):
        xb = x[:, c0 : c0 + block].astype(np.float64)
        if symmetric:
            scale = np.abs(xb).max(1, keepdims=True) / (2 ** (bits - 1) - 1)
            scale[scale == 0] = 1
            out[:, c0 : c0 + block] = np.clip(np.round(xb / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale
        else:
            lo, hi = np.minimum(xb.min(1, keepdims=True), 0), np.maximum(xb.max(1, keepdims=True), 0)
            scale = (hi - lo) / (2**bits - 1)
            scale[scale == 0] = 1
            zp = np.clip(np.round(-lo / scale), 0, 2**bits - 1)
            out[:, c0 : c0 + block] = (np.clip(np.round(xb / scale) + zp, 0, 2**bits - 1) - zp) * scale
    return out


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", BLOCK_SIZES)
@pytest.mark.parametrize("bits", BITS)
def test_levels_in_range_and_better_than_rounding(bits, block, symmetric):
    quant = quantize_blockwise(WEIGHTS, bits, block, symmetric)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert quant.q.min() >= lo and quant.q.max() <= hi
    assert quant.scales.shape == (24, -(-200 // block)) and quant.scales.dtype == np.float32
    if symmetric:
        assert quant.zero_points is None
    else:
        assert quant.zero_points.max() <= hi
    ours = weighted_error(WEIGHTS, quant.dequantize())
    baseline = weighted_error(WEIGHTS, round_to_nearest(WEIGHTS, bits, block, symmetric))
    assert ours < baseline * 0.97, (ours, baseline)


@pytest.mark.parametrize("symmetric", [True, False])
def test_importance_lowers_the_weighted_error(symmetric):
    plain = quantize_blockwise(WEIGHTS, 4, 32, symmetric)
    weighted = quantize_blockwise(WEIGHTS, 4, 32, symmetric, importance=IMPORTANCE)
    assert weighted_error(WEIGHTS, weighted.dequantize(), IMPORTANCE) < weighted_error(
        WEIGHTS, plain.dequantize(), IMPORTANCE
    )
    # the C error function measures the same thing the test does
    c_error = sum(row_error(WEIGHTS, weighted, r, IMPORTANCE) for r in range(WEIGHTS.shape[0]))
    assert c_error == pytest.approx(weighted_error(WEIGHTS, weighted.dequantize(), IMPORTANCE), rel=1e-4)


def test_no_worse_than_q4_0_search_on_its_own_blocks():
    """Symmetric int4 blocks of 32 are q4_0's levels with a float32 scale: the search must match q4_0's."""
    from qconv.runtime import quants

    x = WEIGHTS[:, :192]
    imp = IMPORTANCE[:192]
    q4_0 = quants.dequantize(quants.quantize(x, "Q4_0", importance=imp), "Q4_0", x.shape)
    ours = quantize_blockwise(x, 4, 32, True, importance=imp).dequantize()
    assert weighted_error(x, ours, imp) <= weighted_error(x, q4_0, imp) * 1.001


def test_independent_of_threads():
    a = quantize_blockwise(WEIGHTS, 4, 64, False, IMPORTANCE, threads=1)
    b = quantize_blockwise(WEIGHTS, 4, 64, False, IMPORTANCE, threads=3)
    assert np.array_equal(a.q, b.q) and np.array_equal(a.scales, b.scales)
    assert np.array_equal(a.zero_points, b.zero_points)


def test_zero_and_constant_blocks():
    x = np.zeros((2, 64), np.float32)
    x[1, 32:] = 0.5
    for symmetric in (True, False):
        deq = quantize_blockwise(x, 4, 32, symmetric).dequantize()
        assert np.allclose(deq, x, atol=1e-7)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="valid: 4, 8"):
        quantize_blockwise(WEIGHTS, 3, 32, True)
    with pytest.raises(ValueError, match="valid: 16, 32, 64, 128"):
        quantize_blockwise(WEIGHTS, 4, 48, True)
    bad = WEIGHTS.copy()
    bad[5, 17] = np.nan
    with pytest.raises(ValueError, match="row 5, column 17"):
        quantize_blockwise(bad, 4, 32, True)
    with pytest.raises(ValueError, match="importance"):
        quantize_blockwise(WEIGHTS, 4, 32, True, importance=-IMPORTANCE)
