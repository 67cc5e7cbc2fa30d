"""The fuzz targets' plain runners (native/programs/fuzz_*.c with -DQRT_FUZZ_MAIN) built with gcc under ASan and
UBSan, over the inputs that once broke a contract and over the extremes every quantizer must survive. tests/fuzz.sh
runs the same targets under libFuzzer.

An uninitialized local is filled with a pattern (-ftrivial-auto-var-init=pattern): otherwise it holds whatever the
stack held, often zeros, and a read of it passes by luck."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz_seeds import TEXT_SEEDS, copy_tokenizer
from tests.native_sources import include_flags, library_sources_in, program

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

SANITIZE = [
    "-fsanitize=address,undefined,float-cast-overflow",
    "-fno-sanitize-recover=all",
    "-ftrivial-auto-var-init=pattern",
]

# fuzz_quant.c's header: byte 0 picks the quantizer (0x80: block-wise), byte 3 holds these flags
BLOCKWISE = 0x80
IMPORTANCE, RAW_BITS, OUTLIERS, BITS_8, SYMMETRIC, BLOCK_16 = 1, 0 << 1, 3 << 1, 8, 16, 1 << 5


def plain_runner(out_dir: Path, target: str, sources: list[str]) -> Path:
    exe = out_dir / target
    cmd = ["gcc", "-std=c11", "-g", "-O1", "-pthread", "-D_GNU_SOURCE", "-DQRT_FUZZ_MAIN", *SANITIZE]
    cmd += [*include_flags(), program(f"{target}.c"), *sources, "-lm", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return exe


def run_clean(exe: Path, files: list[Path], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        [str(exe), *map(str, files)], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )
    report = proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert "runtime error" not in proc.stderr and "Sanitizer" not in proc.stderr, report


@pytest.fixture(scope="module")
def fuzz_quant(tmp_path_factory) -> Path:
    return plain_runner(tmp_path_factory.mktemp("fuzz_quant"), "fuzz_quant", library_sources_in("quant", "base"))


def quant_input(pick: int, rows: int, width: int, flags: int, values, shift: int = 0) -> bytes:
    """fuzz_quant.c's layout; width: blocks per row (block-wise: columns) - 1."""
    return struct.pack("<BBBBb", pick, rows - 1, width, flags, shift) + np.asarray(values, np.float32).tobytes()


def write_inputs(folder: Path, inputs: dict[str, bytes]) -> list[Path]:
    for name, data in inputs.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in inputs]


def test_blockwise_with_infinite_weights_is_an_error_not_garbage_levels(fuzz_quant, tmp_path):
    """Values and importance of 3e38 make every weight infinite and every candidate's score NaN: no candidate was
    kept, and the block's levels were read uninitialized and cast to int (the quantizer fuzzer's first find)."""
    inputs = {
        f"blockwise-{name}": quant_input(BLOCKWISE, 1, 7, IMPORTANCE | RAW_BITS | BITS_8 | kind, [3e38] * 16)
        for name, kind in (("symmetric", SYMMETRIC), ("asymmetric", 0))
    }
    run_clean(fuzz_quant, write_inputs(tmp_path, inputs))


def test_blockwise_whose_dequantized_values_overflow_is_an_error(fuzz_quant, tmp_path):
    """An asymmetric 4-bit block from -3.4e38 to 0: the least-squares scale (2.84e37) times the zero point's 12
    levels is -3.405e38, past float32, and the quantizer wrote it without a word (the quantizer fuzzer's second
    find)."""
    values = [-1.7014118e38, -3.1741791e37, -7.978743e36, -3.4027717e38, 0.0, 0.0, 0.0, 0.0] * 2
    inputs = {"blockwise-wide": quant_input(BLOCKWISE, 1, 15, RAW_BITS | BLOCK_16, values)}
    run_clean(fuzz_quant, write_inputs(tmp_path, inputs))


def test_q5_1_whose_min_leaves_fp16_is_an_error():
    """Values within fp16's range (down to -65320): Q5_1's search stored a min below -65504, which is -inf as fp16,
    and the row was written (only rows beyond fp16's range were dequantized again): the quantizer fuzzer's third
    find."""
    from qconv.runtime import quants

    block = [63228, 34440, -14726, 54610, -33666, -33832, -4996, 14834, 55422, 382, 65148, -14708, -33778, -13312]
    block += [50018, 766, 0, -14372, -65320, 13260, 50560, 1710, -8578, -53064, -47748, 3932, -62594, -23172]
    block += [37602, -12028, 13438, 38904]
    with pytest.raises(ValueError, match="row 0 holds values up to 65320, beyond what Q5_1 can store"):
        quants.quantize(np.array([block], np.float32), "Q5_1")


EXTREMES = {
    "huge": [3e38, -3e38, 1e20, -1e20] * 64,
    "tiny": [1e-45, -1e-45, 1e-40, 1e-38] * 64,
    "mixed": [3e38, 1e-45, -1e-40, 0.0, 1.0, -6e4, 1e-38, -3e38] * 32,
}


def test_every_quantizer_survives_extreme_finite_values(fuzz_quant, tmp_path):
    """Each type of the table (the pick is taken modulo their count) and the block-wise quantizer, with and
    without importance from the same values: success with finite values or an error, never a sanitizer report.
    Among them iq4_nl with one 1e20 weight among small ones, which indexed its table with (int)NaN."""
    inputs = {}
    for pick in [*range(32), BLOCKWISE]:
        for name, values in EXTREMES.items():
            for importance in (0, IMPORTANCE):
                inputs[f"q{pick}-{name}-{importance}"] = quant_input(pick, 2, 1, importance | RAW_BITS, values)
        outlier = bytes([0x7F]) + struct.pack("<f", 1e20) + bytes(range(1, 64))  # fuzz_quant.c's OUTLIERS code
        inputs[f"q{pick}-outlier"] = struct.pack("<BBBBb", pick, 0, 0, OUTLIERS, 0) + outlier
    run_clean(fuzz_quant, write_inputs(tmp_path, inputs))


def test_tokenizer_target_over_its_seeds(smollm2_package_gguf, tmp_path):
    """The tokenizer target (encode, decode and its round trip, pieces, streaming) on SmolLM2's vocabulary under two
    pre-tokenizers, over the seed texts and the texts it once flagged wrongly: bytes SmolLM2 has no token for (0x04;
    0xf2 in a valid 4-byte character) cannot come back."""
    exe = plain_runner(tmp_path, "fuzz_tokenizer", library_sources_in("tokenizer", "loader", "base"))
    vocabs = tmp_path / "vocab"
    vocabs.mkdir()
    for pre in ("smollm", "llama3"):
        copy_tokenizer(smollm2_package_gguf, vocabs / f"smollm2-{pre}.gguf", pre)
    texts = [*TEXT_SEEDS, b">\x04\x00``\x00", "𝔘".encode() + b"\xf2\x9d\x94\xab"]
    # first byte: the vocabulary (0: llama3, 1: smollm, the one that round-trips), then with BOS/EOS
    inputs = {f"t{i}-{pick}": bytes([pick]) + text for i, text in enumerate(texts) for pick in (0, 1, 0x81)}
    run_clean(exe, write_inputs(tmp_path, inputs), {"QRT_FUZZ_VOCABS": str(vocabs)})
