"""The native quantization engine: type table, fp16/bf16 conversion, block layouts (bit-exact against gguf-py's
dequantizers), threading, and bad input. Fast; the comparison with llama.cpp's quantizer is in
test_quant_reference.py."""

from __future__ import annotations

import gguf
import gguf.quants as gq
import numpy as np
import pytest

from qconv.runtime import quants

# Every type gguf-py can dequantize (all but the activation-only q8_K and q8_1).
FILE_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "F16", "BF16"]
QUANTIZED = [t for t in FILE_TYPES if t not in ("F16", "BF16")]


def ggml_type(name: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[name]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def awkward_rows(ncols: int, seed: int = 0) -> np.ndarray:
    """Rows that break naive quantizers: zeros, constants, subnormals, huge outliers, one-sided, tiny, ramps."""
    rng = np.random.default_rng(seed)
    rows = [
        np.zeros(ncols),
        np.full(ncols, 0.5),
        np.full(ncols, -3.0),
        np.full(ncols, 1e-40),  # subnormal constant
        rng.standard_normal(ncols) * 1e-39,  # subnormal noise
        rng.standard_normal(ncols) * 1e-20,
        rng.standard_normal(ncols) * 1e4,
        np.abs(rng.standard_normal(ncols)),  # all positive
        -np.abs(rng.standard_normal(ncols)),  # all negative
        np.linspace(-1, 1, ncols),
        np.where(np.arange(ncols) % 7 == 0, 1.0, 0.0),  # sparse
    ]
    outlier = rng.standard_normal(ncols) * 0.01
    outlier[::97] = 1e4  # huge outliers among small values
    rows.append(outlier)
    one_hot = np.zeros(ncols)
    one_hot[ncols // 3] = -60000.0
    rows.append(one_hot)
    mixed = rng.standard_normal(ncols)
    mixed[: ncols // 2] = 0  # zero blocks next to live ones
    rows.append(mixed)
    rows += list(rng.standard_t(3, size=(6, ncols)) * 0.02)
    return np.stack(rows).astype(np.float32)


# ---------------------------------------------------------------- the type table


def test_type_table_matches_gguf_py_sizes():
    for name, t in quants.TYPES.items():
        if name == "Q8_1":  # activation-only; gguf-py's 40 bytes is an old layout (float d, s), ggml's is 36
            assert (t.block_size, t.block_bytes) == (32, 36)
            continue
        block, size = gguf.GGML_QUANT_SIZES[ggml_type(name)]
        assert (t.block_size, t.block_bytes) == (block, size), name
        assert t.type_id == ggml_type(name).value, name
    assert set(quants.TYPES) >= set(FILE_TYPES) | {"F32", "Q8_K"}


def test_names_are_case_insensitive_and_unknown_names_list_the_valid_ones():
    assert quants.get_type("q4_k") is quants.get_type("Q4_K")
    assert quants.get_type("iq4_nl").name == "IQ4_NL"
    with pytest.raises(ValueError, match="Q4_K.*Q6_K|Q6_K.*Q4_K"):
        quants.get_type("q4_kk")


def test_row_bytes():
    assert quants.row_bytes("q4_k", 512) == 2 * 144
    assert quants.row_bytes("q8_0", 64) == 2 * 34
    assert quants.row_bytes("f16", 3) == 6
    with pytest.raises(ValueError, match="multiple of 256"):
        quants.row_bytes("q4_k", 576)


def test_importance_flag():
    takes = {name for name, t in quants.TYPES.items() if t.takes_importance}
    assert takes == {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"}


# ---------------------------------------------------------------- fp16 / bf16


def test_fp16_decode_every_pattern():
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = patterns[np.isfinite(patterns.view(np.float16))]
    ours = quants.dequantize(finite.view(np.uint8), "F16", (finite.size,))
    assert np.array_equal(bits(ours), bits(finite.view(np.float16).astype(np.float32)))


def test_fp16_encode_rounds_to_nearest_even():
    rng = np.random.default_rng(1)
    patterns = rng.integers(0, 1 << 32, size=1 << 21, dtype=np.uint64).astype(np.uint32)
    values = patterns.view(np.float32)
    values = values[np.isfinite(values)]
    # every half-way point between adjacent halves (ties), their neighbours, and the overflow edge
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)
    edges = np.array([65504, 65519.99, 1e-8, 2.0**-25, 2.0**-24, 5.96e-8, 6.1e-5], np.float32)
    for extra in (mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf), edges, -edges):
        values = np.concatenate([values, extra.astype(np.float32)])
    values = values[np.abs(values) < 65520]  # what rounds to inf is an error (test below)
    ours = quants.quantize(values.reshape(1, -1), "F16").view(np.uint16)[0]
    assert np.array_equal(ours, values.astype(np.float16).view(np.uint16))
    for overflow in (65520.0, -65536.0):
        with pytest.raises(ValueError, match="beyond what F16 can store"):
            quants.quantize(np.array([[1.0, overflow]], np.float32), "F16")


def test_bf16_matches_gguf_py():
    rng = np.random.default_rng(2)
    values = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = values[np.isfinite(values)]
    rounds_to_inf = np.abs(values) >= np.float32(3.3961776e38)  # past bf16's largest finite value + half a step
    values = values[~rounds_to_inf].reshape(1, -1)
    assert np.array_equal(quants.quantize(values, "BF16"), gq.quantize(values, ggml_type("BF16")))
    back = quants.dequantize(quants.quantize(values, "BF16"), "BF16", values.shape)
    assert np.array_equal(bits(back), bits(gq.dequantize(gq.quantize(values, ggml_type("BF16")), ggml_type("BF16"))))


# ---------------------------------------------------------------- block layouts: bit-exact against gguf-py


@pytest.mark.parametrize("type_name", FILE_TYPES)
@pytest.mark.parametrize("with_importance", [False, True])
def test_our_blocks_dequantize_like_gguf_py(type_name, with_importance):
    x = np.concatenate([awkward_rows(512, seed=3), np.random.default_rng(4).standard_normal((8, 512))]).astype(
        np.float32
    )
    imp = np.random.default_rng(5).lognormal(0, 1, 512).astype(np.float32) if with_importance else None
    blocks = quants.quantize(x, type_name, importance=imp)
    ours = quants.dequantize(blocks, type_name, x.shape)
    theirs = gq.dequantize(blocks, ggml_type(type_name))
    assert theirs.shape == x.shape
    assert np.array_equal(bits(ours), bits(theirs))
    assert np.all(np.isfinite(ours))


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_awkward_rows_quantize_sensibly(type_name):
    x = awkward_rows(1024, seed=6)
    y = quants.dequantize(quants.quantize(x, type_name), type_name, x.shape)
    assert np.all(y[0] == 0), "an all-zero row must stay zero"
    scale = np.abs(x).max(axis=1, keepdims=True)
    rel = np.abs(y - x).max(axis=1) / np.maximum(scale[:, 0], 1e-30)
    normal_rows = scale[:, 0] > 1e-30
    # no row may blow up: worst element error within the block range (2-bit types are coarse)
    assert rel[normal_rows].max() < 1.01
    # constant rows are exact up to fp16 rounding of the scale
    for r in (1, 2):
        assert np.allclose(y[r], x[r], rtol=2e-3), (type_name, y[r][:4], x[r][:4])


def test_q8_0_blocks_are_byte_identical_to_gguf_py():
    x = np.concatenate([awkward_rows(4096, seed=7), np.random.default_rng(8).standard_normal((32, 4096))])
    x = x.astype(np.float32)
    with np.errstate(all="ignore"):
        expected = gq.quantize(x, ggml_type("Q8_0"))
    assert np.array_equal(quants.quantize(x, "Q8_0"), expected)


def test_q8_k_activation_blocks():
    """q8_K (not in gguf-py): d = max/-127 of the value of largest magnitude, levels in [-127, 127], bsums."""
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.standard_normal((4, 512)), np.zeros((1, 512))]).astype(np.float32)
    raw = quants.quantize(x, "Q8_K")
    assert raw.shape == (5, 2 * 292)
    blocks = raw.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32)[:, 0]
    qs = blocks[:, 4:260].copy().view(np.int8).astype(np.int32)
    bsums = blocks[:, 260:].copy().view(np.int16)
    assert np.array_equal(bsums, qs.reshape(-1, 16, 16).sum(-1))
    assert qs.min() >= -127 and qs.max() <= 127
    ref_blocks = x.reshape(-1, 256)
    for i, xb in enumerate(ref_blocks):
        if not xb.any():
            assert d[i] == 0 and not qs[i].any()
            continue
        mx = xb[np.abs(xb).argmax()]
        assert np.abs(qs[i]).max() == 127
        assert abs(d[i] - mx / -127) <= 1e-6 * abs(mx)
    y = quants.dequantize(raw, "Q8_K", x.shape).reshape(-1, 256)
    assert np.array_equal(bits(y), bits(d[:, None] * qs.astype(np.float32)))


# ---------------------------------------------------------------- importance


@pytest.mark.parametrize("type_name", [t for t in QUANTIZED if t != "Q8_0"])
def test_importance_lowers_the_weighted_error(type_name):
    rng = np.random.default_rng(10)
    x = (rng.standard_t(4, size=(64, 1024)) * 0.02).astype(np.float32)
    imp = rng.lognormal(0, 1.5, 1024).astype(np.float32)

    def weighted(q):
        y = quants.dequantize(q, type_name, x.shape)
        return float((((y - x) ** 2) * imp).sum())

    assert weighted(quants.quantize(x, type_name, importance=imp)) < weighted(quants.quantize(x, type_name))


def test_bad_importance_is_rejected():
    x = np.ones((2, 256), np.float32)
    with pytest.raises(ValueError, match="importance has 255 values"):
        quants.quantize(x, "q4_k", importance=np.ones(255, np.float32))
    bad = np.ones(256, np.float32)
    bad[17] = -1
    with pytest.raises(ValueError, match="importance weight 17"):
        quants.quantize(x, "q4_k", importance=bad)


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize("type_name", QUANTIZED + ["Q8_K", "F16", "BF16"])
def test_threads_give_the_same_bytes(type_name):
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_normal((61, 1024)), awkward_rows(1024, seed=12)]).astype(np.float32)
    imp = rng.lognormal(0, 1, 1024).astype(np.float32)
    for importance in (None, imp):
        one = quants.quantize(x, type_name, importance=importance, threads=1)
        for threads in (2, 3, 8):
            assert np.array_equal(one, quants.quantize(x, type_name, importance=importance, threads=threads))
    back1 = quants.dequantize(one, type_name, x.shape, threads=1)
    assert np.array_equal(bits(back1), bits(quants.dequantize(one, type_name, x.shape, threads=4)))


def test_many_small_threaded_runs():
    """Pool start-up, hand-out and the end-of-run barrier, exercised many times on tiny jobs."""
    rng = np.random.default_rng(13)
    for rows in (1, 2, 3, 5, 17):
        x = rng.standard_normal((rows, 256)).astype(np.float32)
        expected = quants.quantize(x, "q4_0", threads=1)
        for _ in range(20):
            assert np.array_equal(quants.quantize(x, "q4_0", threads=4), expected)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("type_name", ["Q4_K", "Q8_0", "F16"])
def test_non_finite_input_names_row_and_column(bad, type_name):
    x = np.zeros((40, 512), np.float32)
    x[33, 300] = bad
    x[37, 1] = bad
    with pytest.raises(ValueError, match=r"row 33, column 300 holds (nan|inf|-inf)"):
        quants.quantize(x, type_name, threads=2)


def test_row_length_must_fit_the_block():
    with pytest.raises(ValueError, match="Q4_K needs rows that are a multiple of 256 values, got 576"):
        quants.quantize(np.zeros((2, 576), np.float32), "q4_k")
    with pytest.raises(ValueError, match="needs 288 bytes, got 144"):
        quants.dequantize(np.zeros(144, np.uint8), "q4_k", (2, 256))


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K", "Q6_K", "F16"])
def test_values_beyond_the_fp16_scale_range_are_reported(type_name):
    x = np.random.default_rng(14).standard_normal((8, 512)).astype(np.float32)
    x[6, 300] = 1e9
    with pytest.raises(ValueError, match=rf"row 6 holds values up to 1e\+09, beyond what {type_name} can store"):
        quants.quantize(x, type_name)
    x[6, 300] = 60000.0  # large but representable: fine
    assert np.isfinite(quants.dequantize(quants.quantize(x, type_name), type_name, x.shape)).all()
    assert np.isfinite(quants.dequantize(quants.quantize(x * 1e4, "BF16"), "BF16", x.shape)).all()


EXTREME_CASES = [(t, case) for t in QUANTIZED for case in ("weight 1e20", "weights 3e38", "importance 3e38")]


@pytest.mark.parametrize(
    ("type_name", "case"), [(t, c) for t, c in EXTREME_CASES if c != "importance 3e38" or t != "Q8_0"]
)  # q8_0 takes no importance
def test_extreme_finite_values_are_named_never_a_crash_or_garbage(type_name, case):
    """Finite values whose squares or weighted sums overflow made the searches compute NaN scales: iq4_nl indexed
    its table with (int)NaN (SIGSEGV), q3_K and q6_K wrote blocks of zeros without a word."""
    rng = np.random.default_rng(16)
    x = (rng.standard_normal((8, 512)) * 0.05).astype(np.float32)
    importance = None
    if case == "weight 1e20":
        x[5, 77] = 1e20
    elif case == "weights 3e38":
        x[5] = np.float32(3e38) * np.sign(rng.standard_normal(512))
    else:
        assert quants.TYPES[type_name].takes_importance
        importance = np.full(512, 3e38, np.float32)
    with pytest.raises(ValueError, match=r"row [05] .*(beyond what|compute NaN)"):
        quants.quantize(x, type_name, importance=importance, threads=2)


@pytest.mark.parametrize("type_name", QUANTIZED)
def test_large_but_sound_rows_are_not_refused(type_name):
    """The NaN check must not refuse rows the searches handle: values near 30000 overflow some candidate
    comparisons (they only lose them), importance up to 1e6 on top of that."""
    rng = np.random.default_rng(17)
    x = (rng.standard_normal((16, 512)) * 1000).astype(np.float32)
    x[3, 7] = 30000.0
    importance = (rng.gamma(0.5, 2, 512) * 1e6).astype(np.float32)
    for imp in (None, importance) if quants.TYPES[type_name].takes_importance else (None,):
        y = quants.dequantize(quants.quantize(x, type_name, importance=imp, threads=2), type_name, x.shape)
        assert np.isfinite(y).all()
        assert np.abs(y).max() > 0.5 * np.abs(x).max()


@pytest.mark.parametrize("type_name", [t for t in QUANTIZED if t != "Q8_0"])
def test_columns_with_zero_importance_are_not_zeroed(type_name):
    """Columns never activated during calibration have importance 0: they must still be quantized."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    imp = rng.lognormal(0, 1, 512).astype(np.float32)
    imp[:256] = 0
    y = quants.dequantize(quants.quantize(x, type_name, importance=imp), type_name, x.shape)
    err = np.sqrt(((y - x)[:, :256] ** 2).mean() / (x[:, :256] ** 2).mean())
    assert err < 0.6, f"relative RMSE {err:.2f} on the zero-importance columns"
