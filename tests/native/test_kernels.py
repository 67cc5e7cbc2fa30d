"""Every SIMD dot kernel equals its scalar reference, forcing each dispatch variant this CPU runs.

Integer kernels (quantized weights x q8 activations) must match bit for bit — kernels.h fixes the summation
order every variant follows; so must the AVX-512 f32/f16 kernels (both follow ggml's orders); the AVX2 float
kernels and bf16 reorder sums and must match within 1e-5 of the sum of absolute products. The test prints which variants it exercised per type.
"""

from __future__ import annotations

import numpy as np
import pytest

from qconv.runtime._native import ffi, lib

TYPES = {
    "f32": 0,
    "f16": 1,
    "bf16": 30,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "q2_K": 10,
    "q3_K": 11,
    "q4_K": 12,
    "q5_K": 13,
    "q6_K": 14,
    "iq4_nl": 20,
}
FLOAT_TYPES = {"f32", "f16", "bf16"}
SIMD_VARIANTS = ["avx2", "avx512", "neon"]
N = 1024  # values per row: four k-quant super-blocks, 32 small blocks


def quantize(type_id: int, values: np.ndarray) -> np.ndarray:
    rows, cols = values.shape
    row_bytes = lib.qrt_row_bytes(type_id, cols)
    out = np.zeros((rows, row_bytes), dtype=np.uint8)
    err = ffi.new("char[256]")
    src = np.ascontiguousarray(values, dtype=np.float32)
    rc = lib.qrt_quantize_rows(
        type_id, ffi.from_buffer("float[]", src), ffi.from_buffer(out), rows, cols, ffi.NULL, 1, err, 256
    )
    assert rc == 0, ffi.string(err).decode()
    return out


def dot(type_id: int, variant: str, row: np.ndarray, x: np.ndarray) -> float:
    out = ffi.new("float *")
    rc = lib.qrt_kernel_dot(type_id, variant.encode(), ffi.from_buffer(row), ffi.from_buffer("float[]", x), len(x), out)
    assert rc == 0, (type_id, variant)
    return out[0]


def real_rows(smollm2_package_gguf, rows: int) -> np.ndarray:
    """Rows of a real weight matrix (the package's q8_0 token embedding, dequantized), N values each."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(smollm2_package_gguf)
    tensor = next(t for t in reader.tensors if t.name == "blk.3.ffn_down.weight")
    w = dequantize(np.asarray(tensor.data)[:rows], tensor.tensor_type)
    return np.ascontiguousarray(w[:, :N], dtype=np.float32)


def activations(rng, rows: int) -> np.ndarray:
    x = rng.standard_normal((rows, N)).astype(np.float32)
    x[0] *= 1e-3  # a small-scale row
    x[1, ::7] *= 40.0  # outliers, as real activations have
    return x


def exercised_variants() -> list[str]:
    return [v for v in SIMD_VARIANTS if lib.qrt_kernel_variant_supported(v.encode())]


@pytest.mark.parametrize("name", list(TYPES))
def test_simd_equals_scalar(name, smollm2_package_gguf):
    rng = np.random.default_rng(TYPES[name])
    type_id = TYPES[name]
    weights = np.concatenate([rng.standard_normal((6, N)).astype(np.float32), real_rows(smollm2_package_gguf, 6)])
    weights[2] *= 1e-4
    weights[3, :] = 0.0  # an all-zero row
    rows = quantize(type_id, weights)
    xs = activations(rng, 6)
    ran = []
    for variant in exercised_variants():
        if not lib.qrt_kernel_has_variant(type_id, variant.encode()):
            continue
        ran.append(variant)
        for r, row in enumerate(rows):
            for x in xs:
                ref = dot(type_id, "scalar", row, x)
                got = dot(type_id, variant, row, x)
                if name in ("f32", "f16") and variant == "avx512":  # ggml's own orders, emulated exactly
                    assert got == ref, (name, variant, r, got, ref)
                    out = ffi.new("float *"), ffi.new("float *")
                    for v, o in zip(("scalar", variant), out):
                        assert (
                            lib.qrt_kernel_dot_batch(
                                type_id, v.encode(), ffi.from_buffer(row), ffi.from_buffer("float[]", x), N, o
                            )
                            == 0
                        )
                    assert out[0][0] == out[1][0], (name, "batch", r)
                elif name in FLOAT_TYPES:
                    scale = float(np.abs(weights[r].astype(np.float64) * x).sum()) + 1e-30
                    assert abs(got - ref) <= 1e-5 * scale, (name, variant, r, got, ref)
                else:
                    assert got == ref, (name, variant, r, got, ref)
    print(f"{name}: scalar vs {', '.join(ran) or 'nothing'}")
    # on a CPU with AVX2 / AVX-512 every type has a kernel in each
    assert ran == exercised_variants(), f"{name}: variants without a kernel: {set(exercised_variants()) - set(ran)}"


def test_scalar_reference_tracks_float_dot():
    """The reference itself: the integer dot of quantized weights is close to the float dot of their values."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(N).astype(np.float32)
    for name, type_id in TYPES.items():
        w = rng.standard_normal((1, N)).astype(np.float32)
        row = quantize(type_id, w)[0]
        deq = np.zeros(N, dtype=np.float32)
        assert lib.qrt_dequantize_row(type_id, ffi.from_buffer(row), ffi.from_buffer("float[]", deq), N) == 0
        exact = float(deq.astype(np.float64) @ x)
        got = dot(type_id, "scalar", row, x)
        # q8 activation rounding: ~0.4% of the magnitude for 8-bit blocks
        tol = 1e-5 if name in ("f32",) else 2e-2
        assert abs(got - exact) <= tol * float(np.abs(deq * x).sum()), (name, got, exact)


def test_dispatch_reports_variants():
    """This machine's variants: the dispatched kernel is the best one supported, and forcing works."""
    supported = exercised_variants()
    print("CPU variants:", ["scalar", *supported])
    best = supported[-1] if supported else "scalar"
    try:
        for name, type_id in TYPES.items():
            assert ffi.string(lib.qrt_kernel_variant_for_type(type_id)).decode() == best, name
        for variant in ["scalar", *supported]:
            assert lib.qrt_kernels_force(variant.encode()) == 0
            assert ffi.string(lib.qrt_kernel_variant_for_type(TYPES["q4_K"])).decode() == variant
        assert lib.qrt_kernels_force(b"no-such-variant") == -1
    finally:
        lib.qrt_kernels_force(b"auto")


def test_forced_variants_give_identical_logits(smollm2_package_gguf):
    """The whole forward pass under each forced variant: identical logits (integer kernels are exact)."""
    from qconv.runtime.model import Model

    tokens = [1, 504, 3458, 282, 4649, 314, 260, 1177]
    results = {}
    try:
        for variant in ["scalar", *exercised_variants()]:
            assert lib.qrt_kernels_force(variant.encode()) == 0
            model = Model(smollm2_package_gguf, threads=1, ctx=64, kv_f32=True)
            results[variant] = model.logits(tokens)
    finally:
        lib.qrt_kernels_force(b"auto")
    ref = results.pop("scalar")
    for variant, logits in results.items():
        np.testing.assert_array_equal(logits, ref, err_msg=variant)


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "as-stored"])
@pytest.mark.parametrize(
    ("type_name", "hidden"),
    [("q4_0", 512), ("q8_0", 512), ("q4_1", 512), ("q5_0", 512), ("q4_k_m", 512), ("q4_k_m", 576), ("q6_k", 512)],
)
def test_forced_variants_agree_on_tiles_and_decode(random_model_factory, tmp_path, type_name, hidden, pack):
    """Prompt tiles (several rows x tokens per call, with leftovers) and decode tiles under each forced variant give
    logits identical to the scalar reference, for the types the tile kernels cover; with the weights repacked into
    16-row groups (the default) and as stored."""
    from qconv.converter.convert import convert_to_gguf
    from qconv.runtime.model import Model

    folder = random_model_factory(
        arch="llama", hidden=hidden, n_layers=2, n_heads=8, n_kv_heads=2, ffn=2 * hidden, vocab=512, dtype="f32", seed=5
    )
    path = convert_to_gguf(folder, tmp_path / f"{type_name}.gguf", type_name, progress=False).out_path
    prompt = [1, 17, 230, 41, 99, 7, 300, 12, 8, 64, 3]  # 11 tokens: full 4-token tiles and a remainder
    results = {}
    try:
        for variant in ["scalar", *exercised_variants()]:
            assert lib.qrt_kernels_force(variant.encode()) == 0
            model = Model(path, threads=2, ctx=64, kv_f32=True, pack=pack)
            batch = model.logits(prompt)
            model.reset()
            model.eval(prompt[:5])
            steps = [model.eval([t]) for t in prompt[5:]]  # single-token decode
            results[variant] = (batch, np.stack(steps))
    finally:
        lib.qrt_kernels_force(b"auto")
    ref_batch, ref_steps = results.pop("scalar")
    for variant, (batch, steps) in results.items():
        np.testing.assert_array_equal(batch, ref_batch, err_msg=f"{variant} prompt")
        np.testing.assert_array_equal(steps, ref_steps, err_msg=f"{variant} decode")
