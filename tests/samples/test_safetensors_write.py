"""samples.safetensors_write: bf16 rounding and files the safetensors library reads back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.samples.safetensors_write import TensorEntry, bf16_bits_to_f32, f32_to_bf16_bits, write_safetensors


def test_bf16_rounds_to_nearest_even():
    # 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5, 0.0, np.inf], dtype=np.float32)
    expected = np.array([1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -2.5, 0.0, np.inf], dtype=np.float32)
    np.testing.assert_array_equal(bf16_bits_to_f32(f32_to_bf16_bits(values)), expected)
    assert np.isnan(bf16_bits_to_f32(f32_to_bf16_bits(np.array([np.nan], dtype=np.float32))))[0]


def test_bf16_matches_torch_on_random_values():
    torch = pytest.importorskip("torch")
    values = (np.random.default_rng(0).standard_normal(100_000) * 10.0 ** np.arange(-20, 20, 0.0004)).astype(np.float32)
    ours = f32_to_bf16_bits(values)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_written_file_reads_back(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    rng = np.random.default_rng(1)
    tensors = {
        "a.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float32),
    }
    entries = [TensorEntry(name, dtype, value.shape) for name, value in tensors.items()]
    write_safetensors(tmp_path / "m.safetensors", entries, lambda e: tensors[e.name])
    loaded = load_file(tmp_path / "m.safetensors")
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    for name, value in tensors.items():
        assert loaded[name].dtype == torch_dtype
        expected = torch.from_numpy(value).to(torch_dtype)
        assert torch.equal(loaded[name], expected), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary file left


def test_shape_mismatch_is_reported_and_leaves_no_file(tmp_path):
    entries = [TensorEntry("w", "F32", (2, 2))]
    with pytest.raises(ValueError, match="tensor 'w' produced shape"):
        write_safetensors(tmp_path / "m.safetensors", entries, lambda e: np.zeros(3, dtype=np.float32))
    assert not list(tmp_path.iterdir())
