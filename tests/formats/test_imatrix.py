import struct

import gguf
import numpy as np
import pytest

from qconv.formats.errors import FormatError
from qconv.formats.imatrix import ImportanceMatrix, read_imatrix, write_imatrix


def test_gguf_round_trip_and_gguf_py_reads_it(tmp_path):
    m = ImportanceMatrix(
        sums={"blk.0.attn_q.weight": np.arange(8, dtype=np.float32), "blk.0.ffn_down.weight": np.ones(16, np.float32)},
        counts={"blk.0.attn_q.weight": 4.0, "blk.0.ffn_down.weight": 0.0},
        datasets=["suite.txt"], chunk_count=3, chunk_size=512,
    )  # fmt: skip
    path = write_imatrix(tmp_path / "imatrix.gguf", m)
    back = read_imatrix(path)
    np.testing.assert_array_equal(back.mean_squares("blk.0.attn_q.weight"), np.arange(8) / 4)
    np.testing.assert_array_equal(back.mean_squares("blk.0.ffn_down.weight"), np.ones(16))  # no tokens seen
    assert back.mean_squares("blk.0.attn_k.weight") is None
    assert (back.datasets, back.chunk_count, back.chunk_size) == (["suite.txt"], 3, 512)
    reader = gguf.GGUFReader(str(path))  # our own file: safe to hand to gguf-py
    names = {t.name for t in reader.tensors}
    assert names == {
        "blk.0.attn_q.weight.in_sum2",
        "blk.0.attn_q.weight.counts",
        "blk.0.ffn_down.weight.in_sum2",
        "blk.0.ffn_down.weight.counts",
    }
    assert reader.fields["general.type"].contents() == "imatrix"


def _legacy(entries, tail=b""):
    data = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        raw = name.encode()
        data += (
            struct.pack("<i", len(raw))
            + raw
            + struct.pack("<ii", ncall, len(values))
            + np.asarray(values, "<f4").tobytes()
        )
    return data + tail


def test_legacy_dat(tmp_path):
    path = tmp_path / "imatrix.dat"
    path.write_bytes(_legacy([("blk.0.attn_v.weight", 10, [20.0, 40.0])], struct.pack("<ii", 7, 4) + b"wiki"))
    m = read_imatrix(path)
    np.testing.assert_allclose(m.mean_squares("blk.0.attn_v.weight"), [2.0, 4.0])
    assert m.chunk_count == 7 and m.datasets == ["wiki"]


def test_truncated_legacy(tmp_path):
    path = tmp_path / "imatrix.dat"
    path.write_bytes(_legacy([("blk.0.attn_v.weight", 10, [1.0] * 64)])[:-9])
    with pytest.raises(FormatError, match="truncated"):
        read_imatrix(path)


def test_check_against_names_the_first_mismatch(tmp_path):
    m = ImportanceMatrix(
        sums={"blk.0.attn_q.weight": np.ones(8, np.float32)}, counts={"blk.0.attn_q.weight": 1}, path=tmp_path / "x"
    )
    with pytest.raises(FormatError, match="'blk.0.attn_q.weight' has 8 values, the tensor's rows have 16"):
        m.check_against({"blk.0.attn_q.weight": 16})
    with pytest.raises(FormatError, match="not a tensor of this model"):
        m.check_against({"blk.0.attn_k.weight": 8})
