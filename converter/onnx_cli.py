"""`qconv to-onnx`: the click command (registered on the `qconv` group by converter/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from qconv.converter.cli_errors import user_errors
from qconv.converter.cli_outputs import FOLDER_RULE, force_option
from qconv.runtime.blockwise import BITS, BLOCK_SIZES


@click.command("to-onnx")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help=f"The folder to write. {FOLDER_RULE}",
)
@force_option
@click.option(
    "--bits",
    type=click.Choice([str(b) for b in BITS]),
    default="4",
    show_default=True,
    help="Bits of the linear layers' weights.",
)
@click.option(
    "--block-size",
    type=click.Choice([str(b) for b in BLOCK_SIZES]),
    default=None,
    help="Values per scale (along each layer's input dimension). Default: 32; 16 for BERT encoders (their outlier "
    "channels share ONNX Runtime's int8 input blocks).",
)
@click.option(
    "--head-bits",
    type=click.Choice([str(b) for b in BITS]),
    default=None,
    help="Bits of the embedding table and output head (shared when tied). Default: --bits.",
)
@click.option(
    "--head-block-size",
    type=click.Choice([str(b) for b in BLOCK_SIZES]),
    default=None,
    help="Values per scale of the embedding table and output head. Default: 16 (or --block-size if smaller).",
)
@click.option(
    "--symmetric",
    is_flag=True,
    help="Signed weights without zero points (int4/int8); default: uint4/uint8 with integer zero points.",
)
@click.option(
    "--imatrix",
    type=click.Path(path_type=Path),
    default=None,
    help="llama.cpp importance matrix (GGUF or legacy .dat) weighting each column's rounding error.",
)
@click.option(
    "--calibrate", "calibrate_data", multiple=True, type=click.Path(path_type=Path),
    help="Calibration text (files/folders, or 'builtin': the built-in suites, the default): ONNX Runtime runs the "
    "unquantized graph over it and the quantizer weights each column's error by its mean squared input.",
)  # fmt: skip
@click.option(
    "--no-calibrate", is_flag=True,
    help="No calibration run: every column's error weighs the same (data-free, lower quality at 4 bits).",
)  # fmt: skip
@click.option(
    "--fuse-linear", is_flag=True,
    help="One MatMulNBits per group of linear layers with the same input (q/k/v, gate/up): faster decoding, fewer "
    "but wider nodes. Default: one per linear layer.",
)  # fmt: skip
@click.option(
    "--opset", type=click.Choice(["21", "23"]), default="23", show_default=True,
    help="ONNX opset: 23 writes norms, rope and attention (with the KV cache) as single nodes (RMSNormalization, "
    "RotaryEmbedding, Attention; far fewer nodes per token); 21 spells them in older ops for runtimes without "
    "opset 23.",
)  # fmt: skip
@click.option("-t", "--threads", type=int, default=None, help="Quantization threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@user_errors
def to_onnx(
    model: Path,
    out_dir: Path,
    force: bool,
    bits: str,
    block_size: str,
    head_bits: str | None,
    head_block_size: str | None,
    symmetric: bool,
    imatrix: Path | None,
    calibrate_data: tuple[Path, ...],
    no_calibrate: bool,
    fuse_linear: bool,
    opset: str,
    threads: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Export MODEL (a Hugging Face folder: llama, mistral, qwen2, qwen3, gemma3, phi3 or smollm3) to OUT_DIR: model.onnx with block-quantized weights
    (DequantizeLinear -> MatMul, fused by ONNX Runtime into MatMulNBits), tokenizer files, chat template and
    genai_config.json (loads in onnxruntime-genai and in `qrun OUT_DIR`).

    A BERT encoder (BertModel, BertForMaskedLM) is written in sentence-transformers' ONNX layout instead:
    onnx/model.onnx (last_hidden_state out), the tokenizer files and sentence-transformers module configs
    (SentenceTransformer(OUT_DIR, backend="onnx") and `qrun OUT_DIR --embed` load it); the word table is
    quantized like the head (--head-bits, --head-block-size).

    Importance weights: --imatrix FILE, or measured first by ONNX Runtime running the unquantized graph over
    --calibrate DATA (default: the built-in calibration text; a few seconds for a small model), or none with
    --no-calibrate."""
    from qconv.converter.onnx_export import OnnxOptions, export_onnx

    if imatrix is not None and calibrate_data:
        click.echo("qconv: error: --imatrix and --calibrate are mutually exclusive: give a ready importance matrix "
                   "or the text to compute one from, not both", err=True)  # fmt: skip
        sys.exit(2)
    if no_calibrate and calibrate_data:
        click.echo("qconv: error: --calibrate and --no-calibrate contradict each other", err=True)
        sys.exit(2)
    options = OnnxOptions(
        bits=int(bits),
        block_size=int(block_size) if block_size else None,
        head_bits=int(head_bits) if head_bits else None,
        head_block_size=int(head_block_size) if head_block_size else None,
        symmetric=symmetric,
        imatrix=imatrix,
        calibrate=not no_calibrate,
        calibration_data=tuple(calibrate_data),
        threads=threads,
        fuse_linear=fuse_linear,
        opset=int(opset),
    )
    bar = None

    def progress(name: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(
                length=total, label="quantizing", file=sys.stderr, show_pos=True, item_show_func=lambda item: item
            )
        bar.update(1, name)

    log = None if quiet or as_json else (lambda msg: click.echo(msg, err=True))
    try:
        result = export_onnx(
            model, out_dir, options, progress=None if quiet or as_json else progress, log=log, force=force
        )
    finally:  # the bar's line ends before any error message
        if bar is not None:
            bar.render_finish()
    options = result.options or options
    summary = {
        "out_dir": str(result.out_dir),
        "files": result.files,
        "model_bytes": result.model_bytes,
        "data_bytes": result.data_bytes,
        "parameters": result.parameters,
        "quantized_layers": result.n_quantized,
        "bits": options.bits,
        "head_bits": options.head_quant_bits,
        "head_block_size": options.head_block,
        "block_size": options.block_size,
        "symmetric": options.symmetric,
        "fuse_linear": options.fuse_linear,
        "imatrix": result.imatrix,
        "bits_per_weight": round(8 * (result.model_bytes + result.data_bytes) / max(1, result.parameters), 3),
        "seconds": round(result.seconds, 2),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        size = (result.model_bytes + result.data_bytes) / 2**20
        click.echo(
            f"{result.out_dir}: {result.parameters:,} weights, {size:.1f} MiB, {summary['bits_per_weight']} bits per "
            f"weight ({options.bits}-bit blocks of {options.block_size}, "
            f"head {options.head_quant_bits}-bit blocks of {options.head_block}, "
            f"{'symmetric' if symmetric else 'zero points'}), {result.n_quantized} quantized layers"
            f"{' (q/k/v and gate/up fused)' if fuse_linear else ''}, "
            f"importance: {result.imatrix or 'none'}, {result.seconds:.1f} s"
        )
