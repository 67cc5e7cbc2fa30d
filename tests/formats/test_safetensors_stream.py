import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from qconv.formats.errors import FormatError
from qconv.formats.safetensors_stream import SafetensorsSource


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_reads_f32_f16_and_bf16(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((7,)).astype(np.float16)
    save_file({"a": a, "b": b}, str(tmp_path / "model.safetensors"))
    with SafetensorsSource(tmp_path) as src:
        assert set(src.entries) == {"a", "b"}
        np.testing.assert_array_equal(src.read_f32("a"), a)
        np.testing.assert_array_equal(src.read_f32("b"), b.astype(np.float32))


def test_bf16_decodes_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 0.0, 65280.0], dtype=np.float32)
    bits = _bf16_bits(values)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    with SafetensorsSource(tmp_path) as src:
        np.testing.assert_array_equal(src.read_f32("w"), values)


def test_sharded_index(tmp_path):
    save_file({"x": np.ones((2, 2), np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"y": np.zeros((4,), np.float32)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with SafetensorsSource(tmp_path) as src:
        assert src.read_f32("x").sum() == 4 and src.read_f32("y").shape == (4,)


def test_missing_shard_named(tmp_path):
    save_file({"x": np.ones((2, 2), np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError, match="model-00002-of-00002.safetensors.*missing"):
        SafetensorsSource(tmp_path)


@pytest.mark.parametrize("keep", [4, 8, 20, -1])
def test_truncated_file_is_reported(tmp_path, keep):
    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones((64, 64), np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(FormatError, match="truncated|not a safetensors|not valid JSON"):
        SafetensorsSource(tmp_path)


def test_offsets_that_contradict_shape(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(FormatError, match="'w'.*expected 16 bytes"):
        SafetensorsSource(tmp_path)


def test_unsupported_dtype(tmp_path):
    save_file({"d": np.arange(4, dtype=np.float64)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(FormatError, match="dtype F64"):
        SafetensorsSource(tmp_path)


def test_integer_tensors_are_buffers(tmp_path):
    """BERT's embeddings.position_ids (I64) and other integer tensors are listed apart, never read as weights."""
    tensors = {"position_ids": np.arange(8, dtype=np.int64)[None], "mask": np.ones(3, dtype=np.bool_)}
    save_file({**tensors, "w": np.ones((2, 4), np.float32)}, str(tmp_path / "model.safetensors"))
    with SafetensorsSource(tmp_path) as source:
        assert set(source.entries) == {"w"}
        assert {n: (e.dtype, e.shape) for n, e in source.buffers.items()} == {
            "position_ids": ("I64", (1, 8)),
            "mask": ("BOOL", (3,)),
        }
        assert source.read_f32("w").sum() == 8


def test_file_truncated_after_its_header_was_read(tmp_path):
    """The header passed its checks, then the file shrank before the tensor was read: one line, not numpy's
    'buffer is smaller than requested size'."""
    save_file(
        {"a": np.ones((64, 64), np.float32), "b": np.ones((64, 64), np.float32)}, str(tmp_path / "model.safetensors")
    )
    with SafetensorsSource(tmp_path) as src:
        path = tmp_path / "model.safetensors"
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 4096)
        last = max(src.entries, key=lambda n: src.entries[n].end)
        with pytest.raises(FormatError, match=f"tensor '{last}' lies past the end of the file"):
            src.read_f32(last)
