"""The GGUF loader refuses every broken file with a clear message and never crashes.

Truncations at 64 random points, random byte flips in the header and tensor table, huge counts and lengths:
each must raise FormatError through the Python API (or load, when a flip happened to be harmless). The same
files then go through native/programs/fuzz_gguf.c built with AddressSanitizer and UBSan (gcc), which must report nothing.
Unsupported architectures and tensor types are refused with a message naming them.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qconv.formats.errors import FormatError
from qconv.runtime.model import Model
from tests.native_sources import LOADER_SOURCE, include_flags, program



def quantize_rows(type_id: int, values: np.ndarray) -> np.ndarray:
    from qconv.runtime._native import ffi, lib

    rows, cols = values.shape
    out = np.zeros((rows, lib.qrt_row_bytes(type_id, cols)), dtype=np.uint8)
    err = ffi.new("char[256]")
    src = np.ascontiguousarray(values, dtype=np.float32)
    rc = lib.qrt_quantize_rows(
        type_id, ffi.from_buffer("float[]", src), ffi.from_buffer(out), rows, cols, ffi.NULL, 1, err, 256
    )
    assert rc == 0, ffi.string(err).decode()
    return out


def write_tiny_model(
    path: Path,
    arch: str = "llama",
    weight_type: str = "F32",
    seed: int = 0,
    dim: int = 256,
    n_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    context: int = 256,
) -> Path:
    """A llama-shaped GGUF (by default 2 layers, dim 256, 4/2 heads, ffn 256, vocab 48) with a tiny byte-level
    BPE vocab; head_dim other than dim / heads is written as attention.key_length / value_length."""
    import gguf

    rng = np.random.default_rng(seed)
    ffn, vocab = 256, 48
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(context)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = ["<s>", "</s>"] + [chr(c) for c in range(ord("a"), ord("a") + 26)] + ["Ġ", "ab", "Ġa", "the"]
    tokens += [f"x{i}" for i in range(vocab - len(tokens))]
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (vocab - 2))
    w.add_token_merges(["a b", "Ġ a", "t h"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    qtype = getattr(gguf.GGMLQuantizationType, weight_type)

    def add(name: str, shape: tuple[int, ...], norm: bool = False):
        values = np.ones(shape, np.float32) if norm else (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if norm or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, values)
        elif qtype == gguf.GGMLQuantizationType.IQ4_XS:  # gguf-py cannot quantize it: zero blocks will do
            block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
            w.add_tensor(name, np.zeros((shape[0], shape[1] // block * nbytes), np.uint8), raw_dtype=qtype)
        else:
            w.add_tensor(name, quantize_rows(int(qtype), values), raw_dtype=qtype)

    add("token_embd.weight", (vocab, dim))
    add("output_norm.weight", (dim,), norm=True)
    hd = head_dim or dim // heads
    for i in range(n_layers):
        add(f"blk.{i}.attn_norm.weight", (dim,), norm=True)
        add(f"blk.{i}.ffn_norm.weight", (dim,), norm=True)
        add(f"blk.{i}.attn_q.weight", (heads * hd, dim))
        add(f"blk.{i}.attn_k.weight", (kv_heads * hd, dim))
        add(f"blk.{i}.attn_v.weight", (kv_heads * hd, dim))
        add(f"blk.{i}.attn_output.weight", (dim, heads * hd))
        add(f"blk.{i}.ffn_gate.weight", (ffn, dim))
        add(f"blk.{i}.ffn_up.weight", (ffn, dim))
        add(f"blk.{i}.ffn_down.weight", (dim, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _data_offset(data: bytes) -> int:
    """Where the tensor data starts (the end of the tensor table, aligned), read by gguf-py from our own file."""
    import tempfile

    from gguf import GGUFReader

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        return GGUFReader(f.name).data_offset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def broken_files(tiny, tmp_path_factory) -> list[Path]:
    """64 truncations, 64 header/table byte flips, and hand-made huge counts/lengths."""
    out = tmp_path_factory.mktemp("broken")
    data = tiny.read_bytes()
    table_end = _data_offset(data)
    rng = np.random.default_rng(1234)
    files = []
    for i, cut in enumerate(sorted(rng.choice(len(data) - 1, 64, replace=False))):
        files.append(out / f"trunc_{i}.gguf")
        files[-1].write_bytes(data[:cut])
    for i in range(64):
        mutated = bytearray(data)
        for pos in rng.choice(table_end, int(rng.integers(1, 9)), replace=False):
            mutated[pos] ^= 1 << int(rng.integers(0, 8))
        files.append(out / f"flip_{i}.gguf")
        files[-1].write_bytes(bytes(mutated))
    # header: magic, version, n_tensors, n_kv
    for name, offset, value in [
        ("huge_tensor_count", 8, 2**63 - 1),
        ("huge_kv_count", 16, 2**62),
        ("huge_first_key_len", 24, 2**62),
        ("key_len_past_end", 24, len(data)),
    ]:
        mutated = bytearray(data)
        mutated[offset : offset + 8] = struct.pack("<Q", value)
        files.append(out / f"{name}.gguf")
        files[-1].write_bytes(bytes(mutated))
    # an array claiming 2^61 elements: find the token list's length field
    at = data.find(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4
    mutated = bytearray(data)
    mutated[at : at + 8] = struct.pack("<Q", 2**61)
    files.append(out / "huge_array.gguf")
    files[-1].write_bytes(bytes(mutated))
    files.append(write_float_arrays(out / "float_arrays.gguf"))
    return files


def write_float_arrays(path: Path) -> Path:
    """Float arrays holding NaN, infinities and values beyond int64, read by the fuzz target as integers too.

    The CI fuzzer found that converting such an element to an integer was undefined behaviour."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    odd = [float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 9.3e18, 3.5]
    w.add_array("test.f32", odd)
    w.add_key_value("test.f64", odd, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_model_loads_and_runs(tiny):
    model = Model(tiny, threads=1, ctx=64)
    logits = model.logits([0, 5, 7, 9])
    assert logits.shape == (4, 48) and np.isfinite(logits).all()


def test_broken_files_give_clear_errors(broken_files):
    refused = 0
    for path in broken_files:
        try:
            Model(path, threads=1, ctx=32)
        except FormatError as exc:
            message = str(exc)
            assert message and "\n" not in message, (path.name, message)
            refused += 1
    truncated = [p for p in broken_files if p.name.startswith("trunc_")]
    for path in truncated + [p for p in broken_files if p.name.startswith(("huge", "key_len"))]:
        with pytest.raises(FormatError):
            Model(path, threads=1, ctx=32)
    assert refused >= 64 + 5


def test_messages_name_the_problem(broken_files, tiny):
    by_name = {p.name: p for p in broken_files}
    with pytest.raises(FormatError, match="tensor count .* impossible"):
        Model(by_name["huge_tensor_count.gguf"])
    with pytest.raises(FormatError, match="metadata count .* impossible"):
        Model(by_name["huge_kv_count.gguf"])
    with pytest.raises(FormatError, match="length .* more than the .* bytes left"):
        Model(by_name["huge_first_key_len.gguf"])
    with pytest.raises(FormatError, match="claims 2305843009213693952 strings"):
        Model(by_name["huge_array.gguf"])
    with pytest.raises(FormatError, match="truncated|extends past the end"):
        Model(by_name["trunc_63.gguf"])


def duplicate_key(data: bytes) -> bytes:
    """The tiny model with 'llama.rope.freq_base' renamed to the other 20-byte key it carries."""
    assert data.count(b"llama.rope.freq_base") == 1
    return data.replace(b"llama.rope.freq_base", b"llama.context_length")


def overlapping_tensors(data: bytes, name: bytes = b"blk.0.ffn_up.weight", onto: int = 0) -> bytes:
    """The tensor table entry of `name` pointed at data offset `onto` (another tensor's bytes)."""
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, at)
    offset_at = at + 4 + 8 * n_dims + 4
    return data[:offset_at] + struct.pack("<Q", onto) + data[offset_at + 8 :]


def test_duplicate_keys_and_overlapping_tensors_are_refused(tiny, tmp_path):
    """llama.cpp refuses both. Before, qrun used the first copy of a key and `qconv inspect` the last, and
    tensors sharing one offset made repacking copy the same bytes once per tensor (17.9 MB peaked at 3.4 GB)."""
    from qconv.formats.gguf_read import read_gguf

    dup = tmp_path / "dup.gguf"
    dup.write_bytes(duplicate_key(tiny.read_bytes()))
    overlap = tmp_path / "overlap.gguf"
    overlap.write_bytes(overlapping_tensors(tiny.read_bytes()))
    with pytest.raises(FormatError, match="metadata key 'llama.context_length' appears more than once"):
        Model(dup)
    with pytest.raises(FormatError, match="metadata key 'llama.context_length' appears more than once"):
        read_gguf(dup)
    with pytest.raises(FormatError, match="'token_embd.weight' .* and 'blk.0.ffn_up.weight' .* overlap"):
        Model(overlap)
    with pytest.raises(FormatError, match="'token_embd.weight' and 'blk.0.ffn_up.weight' overlap"):
        read_gguf(overlap)


def test_unsupported_architecture_and_type_are_named(tmp_path):
    with pytest.raises(FormatError, match=r"architecture 'falcon' is not supported \(qrun runs: llama, .*gemma3"):
        Model(write_tiny_model(tmp_path / "f.gguf", arch="falcon"))
    with pytest.raises(FormatError, match="type iq4_xs, which qrun does not run"):
        Model(write_tiny_model(tmp_path / "iq.gguf", weight_type="IQ4_XS"))


def test_quantized_tiny_model_runs(tmp_path):
    for weight_type in ["Q8_0", "Q4_0", "Q4_K", "Q6_K"]:
        model = Model(write_tiny_model(tmp_path / f"{weight_type}.gguf", weight_type=weight_type), threads=1, ctx=32)
        assert np.isfinite(model.logits([0, 3, 4])).all(), weight_type


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_broken_files_under_asan_ubsan(broken_files, tiny, tmp_path):
    """The loader over the same files, built with -fsanitize=address,undefined: no report, every file handled."""
    exe = tmp_path / "fuzz_gguf"
    cmd = [
        "gcc",
        "-std=c11",
        "-g",
        "-O1",
        "-D_GNU_SOURCE",
        "-DQRT_FUZZ_MAIN",
        "-fsanitize=address,undefined,float-cast-overflow",
        "-fno-sanitize-recover=all",
        *include_flags(),
        program("fuzz_gguf.c"),
        LOADER_SOURCE,
        "-o",
        str(exe),
    ]
    subprocess.run(cmd, check=True)
    files = [str(tiny)] + [str(p) for p in broken_files]
    run = subprocess.run([str(exe), *files], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "runtime error" not in run.stderr and "AddressSanitizer" not in run.stderr, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == len(files) and lines[0] == "ok"
    assert all(line == "ok" or line.startswith(("/", "fuzz")) for line in lines)
