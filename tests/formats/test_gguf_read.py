import struct

import gguf
import numpy as np
import pytest

from qconv.formats.errors import FormatError
from qconv.formats.gguf_read import read_gguf


@pytest.fixture
def small_gguf(tmp_path):
    path = tmp_path / "small.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_token_list(["a", "b", "c"])
    w.add_tensor("x", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("y", np.ones(32, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_reads_metadata_and_tensors(small_gguf):
    with read_gguf(small_gguf) as g:
        assert g.architecture == "llama"
        assert g.metadata["llama.block_count"] == 2
        assert g.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
        assert g.tensors["x"].shape == (2, 32) and g.tensors["x"].type_name == "F32"
        np.testing.assert_array_equal(g.tensor_data("x").view(np.float32), np.arange(64, dtype=np.float32))


def test_every_truncation_is_an_error(small_gguf):
    data = small_gguf.read_bytes()
    for cut in range(0, len(data) - 1, 7):
        small_gguf.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            read_gguf(small_gguf)


def test_huge_counts_are_rejected_quickly(tmp_path):
    path = tmp_path / "evil.gguf"
    # 43 bytes: magic, version 3, 0 tensors, 1 kv whose key length claims 2^63 bytes
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 63) + b"abc")
    with pytest.raises(FormatError, match="truncated or corrupt"):
        read_gguf(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60) + bytes(32))
    with pytest.raises(FormatError, match="cannot fit"):
        read_gguf(path)


def test_bad_magic_and_version(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGML" + bytes(40))
    with pytest.raises(FormatError, match="bad magic"):
        read_gguf(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(FormatError, match="version 9"):
        read_gguf(path)


def test_random_flips_never_crash(small_gguf):
    data = bytearray(small_gguf.read_bytes())
    rng = np.random.default_rng(1)
    for _ in range(200):
        corrupt = bytearray(data)
        for pos in rng.integers(0, 200, size=3):
            corrupt[pos] = rng.integers(0, 256)
        small_gguf.write_bytes(bytes(corrupt))
        try:
            read_gguf(small_gguf)
        except FormatError:
            pass
