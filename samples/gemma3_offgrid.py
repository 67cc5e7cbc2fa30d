"""gemma3-offgrid: the Gemma 3 270M sample with every weight matrix moved off the quantization grid it came from.

The Gemma 3 sample is dequantized from a Q4_K_M file, so its weights sit exactly on Q8_0/Q5_0/Q4_K/Q6_K grids; a
quantizer run on it can find those grids again, which real checkpoints (bf16 from training) never offer. For
SmolLM2, samples/rotate.py moves the weights off the grid without changing the function, by rotating the residual
stream. That does not carry over to Gemma: each block's output passes through a post-norm (post_attention_layernorm,
post_feedforward_layernorm) before it is added to the stream, and a per-channel gain applied after an RMSNorm
neither commutes with a rotation nor folds into the layer before the norm (scaling o_proj's rows changes the RMS the
norm divides by).

So this variant changes the function instead: every 2-D weight (the embedding, which is also the tied
output head, and every linear layer) gets seeded Gaussian noise whose standard deviation is ``relative_noise``
times the RMS of its row. The norms (1-D) are copied unchanged, so the model keeps Gemma's scale structure.
Measured at the default 0.05 (first 256 rows of a tensor, requantized with qconv to the type it came from): about
0.2% of the values come back exactly (100% before), and the error is the error of a tensor from another grid for
Q8_0 and Q6_K, 90% of it for Q5_0 and 64% of it for Q4_K (the largest steps, so the noise covers the smallest part
of one). Gemma 3 270M is sensitive to its weights: against the sample, over 512 tokens of the fixed text, the
variant's next-token distributions are KL 0.11 nats away and its top token agrees 75% of the time (0.02 and 87%
from the embedding's noise alone; at 0.1 it would be 0.52 and 58%): a different, slightly worse Gemma, whose own f32
file is the reference the quantizers are compared against (tests/converter/test_gemma3_quality.py). The weight
matrices are stored as ``dtype`` (bf16 by default, as Gemma checkpoints ship), the norms as float32.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from qconv.formats.safetensors_stream import SafetensorsSource
from qconv.samples.safetensors_write import DTYPE_NAMES, TensorEntry, write_safetensors, write_variant_folder_files

RELATIVE_NOISE = 0.05
ROWS_PER_BLOCK = 16384  # the 262144 x 640 embedding is read, perturbed and written in blocks of rows
# Bump when build_offgrid's output changes, so cached folders are rebuilt.
BUILD_VERSION = "2"


def perturbed_rows(rows: np.ndarray, relative_noise: float, rng: np.random.Generator) -> np.ndarray:
    """rows + N(0, (relative_noise * rms(row))^2) per element, in float32."""
    rms = np.sqrt(np.mean(np.square(rows, dtype=np.float64), axis=1, keepdims=True)).astype(np.float32)
    noise = rng.standard_normal(rows.shape, dtype=np.float32)
    noise *= np.float32(relative_noise) * rms
    return rows + noise


def tensor_rng(seed: int, name: str, block: int) -> np.random.Generator:
    """One generator per (seed, tensor, block of rows): the noise does not depend on the order tensors are written."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), block])


def build_offgrid(
    src_dir: Path, out_dir: Path, seed: int = 0, relative_noise: float = RELATIVE_NOISE, dtype: str = "bf16"
) -> Path:
    """Write the off-grid variant of the HF folder ``src_dir`` (a Gemma 3 sample) into ``out_dir``."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = DTYPE_NAMES[dtype]
    with SafetensorsSource(src_dir) as source:

        def produce(entry: TensorEntry):
            if len(entry.shape) != 2:  # norms: unchanged
                return source.read_f32(entry.name)
            return (
                perturbed_rows(
                    source.read_f32(entry.name, rows=(start, min(start + ROWS_PER_BLOCK, entry.shape[0]))),
                    relative_noise,
                    tensor_rng(seed, entry.name, start // ROWS_PER_BLOCK),
                )
                for start in range(0, entry.shape[0], ROWS_PER_BLOCK)
            )

        # the norms stay float32: their exact values, as the sample has them
        entries = [
            TensorEntry(name, stored if len(e.shape) == 2 else "F32", tuple(e.shape))
            for name, e in sorted(source.entries.items())
        ]
        write_safetensors(out_dir / "model.safetensors", entries, produce)

    config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    write_variant_folder_files(src_dir, out_dir, config, dtype)
    return out_dir


def build_gemma3_offgrid(out_dir: Path, seed: int = 0, relative_noise: float = RELATIVE_NOISE) -> Path:
    """The off-grid Gemma 3 variant, built from the cached sample folder."""
    from qconv.samples.gemma3 import cached_gemma3

    return build_offgrid(cached_gemma3(), out_dir, seed=seed, relative_noise=relative_noise)


def cached_gemma3_offgrid() -> Path:
    """The off-grid Gemma 3 variant (seed 0, default noise, bf16), built once into ``$QCONV_CACHE/gemma3-offgrid-hf``."""
    from qconv.samples.fetch import cached_build

    return cached_build("gemma3-offgrid-hf", BUILD_VERSION, build_gemma3_offgrid)
