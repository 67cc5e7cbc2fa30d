"""The click commands `qconv calibrate`, `qconv eval` and `qconv analyze` (registered in converter/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from qconv.converter.cli_errors import user_errors
from qconv.converter.cli_outputs import FILE_RULE, FOLDER_RULE, force_option
from qconv.formats.atomic_write import AtomicFile, AtomicFolder, check_output_file, check_output_folder
from qconv.formats.errors import FormatError


def _log(quiet: bool):
    return None if quiet else (lambda msg: click.echo(msg, err=True))


@click.command("calibrate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--data", "data", type=click.Path(path_type=Path), multiple=True,
    help="Calibration text: files or folders (repeatable). Default: the built-in calibration suites. "
    "Text from your own task is the recommended calibration.",
)  # fmt: skip
@click.option("-c", "--ctx", type=int, default=512, show_default=True, help="Tokens per chunk (context window).")
@click.option("--chunks", "max_chunks", type=int, default=None, help="Use at most this many chunks.")
@click.option(
    "-o", "--output", "out_path", type=click.Path(path_type=Path), required=True,
    help=f"The imatrix.gguf to write. {FILE_RULE}",
)  # fmt: skip
@click.option("-t", "--threads", type=int, default=None)
@click.option("-q", "--quiet", is_flag=True)
@user_errors
def calibrate_cmd(model: Path, data, ctx: int, max_chunks, out_path: Path, threads, quiet: bool) -> None:
    """Importance matrix of MODEL (HF folder or f32/f16 GGUF): per matmul weight, the sum of squared input
    activations per column and the token count, in llama.cpp's GGUF imatrix format."""
    from qconv.converter.calibrate import calibrate

    imatrix = calibrate(model, out_path, list(data) or None, ctx, threads, max_chunks, _log(quiet), not quiet)
    click.echo(
        f"{out_path}: {len(imatrix.sums)} weights, {imatrix.chunk_count} chunks of {imatrix.chunk_size} tokens "
        f"({imatrix.datasets[0]})"
    )


@click.command("eval")
@click.argument("quant", type=click.Path(path_type=Path))
@click.option("--ref", "ref", type=click.Path(path_type=Path), required=True, help="HF folder or f32/f16/bf16 GGUF.")
@click.option("--suite", "suite_names", multiple=True, help="Only these suites (repeatable; default: all).")
@click.option("-c", "--ctx", type=int, default=512, show_default=True, help="Tokens per scored window.")
@click.option("--max-tokens", type=int, default=None, help="Score at most this many tokens per suite (quick runs).")
@click.option("--max-tasks", type=int, default=None, help="At most this many task items per task suite.")
@click.option("--no-tasks", is_flag=True, help="Skip the greedy task checks.")
@click.option(
    "--gate", default=None, metavar="KEY=V,...",
    help="Fail (exit 2) when a suite crosses a threshold: kld (mean), kld_p99, top1, ppl_ratio, task_drop. "
    "E.g. kld=0.05,top1=0.90,task_drop=0.03",
)  # fmt: skip
@click.option(
    "-o", "--output", "out_dir", type=click.Path(path_type=Path), default=None,
    help=f"Folder for report.json, report.html and its charts. {FOLDER_RULE}",
)  # fmt: skip
@force_option
@click.option(
    "--sensitivity", type=click.Path(path_type=Path), default=None,
    help="A `qconv analyze -o` JSON whose group KLDs the report charts.",
)  # fmt: skip
@click.option("-t", "--threads", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the table.")
@click.option("-q", "--quiet", is_flag=True)
@user_errors
def eval_cmd(quant: Path, ref: Path, suite_names, ctx, max_tokens, max_tasks, no_tasks, gate, out_dir, force,
             sensitivity, threads, as_json, quiet) -> None:  # fmt: skip
    """What QUANT lost against REF, per capability: KL divergence, top-1 agreement and perplexity on the
    held-out suites, and maths/JSON/passkey task accuracy."""
    from qconv.converter.quality.evaluate import EvalOptions, chosen_suites, evaluate, gate_failures, parse_gates
    from qconv.converter.quality.report import format_table, write_report

    gates = parse_gates(gate)  # these checks come before minutes of evaluation
    chosen_suites(suite_names)
    if out_dir is not None:
        check_output_folder(out_dir, force)
    options = EvalOptions(
        suites=list(suite_names) or None, ctx=ctx, threads=threads, max_tokens=max_tokens, max_tasks=max_tasks,
        tasks=not no_tasks, progress=not quiet,
    )  # fmt: skip
    groups = None
    if sensitivity is not None:
        try:
            groups = json.loads(Path(sensitivity).read_text())["groups"]
        except (OSError, ValueError, KeyError) as e:
            raise FormatError(f"--sensitivity {sensitivity}: not a `qconv analyze` JSON ({e})") from None
    report = evaluate(quant, ref, options, log=_log(quiet))
    if groups:
        report["sensitivity"] = groups
    report["gates"] = gates
    report["gate_failures"] = gate_failures(report, gates)
    if out_dir is not None:
        with AtomicFolder(out_dir, force) as folder:
            write_report(report, folder)
        if not quiet:
            click.echo(f"report: {Path(out_dir) / 'report.html'}", err=True)
    click.echo(json.dumps(report, indent=2, default=float) if as_json else format_table(report))
    if report["gate_failures"]:
        click.echo("qconv: gate failed: " + "; ".join(report["gate_failures"]), err=True)
        sys.exit(2)


@click.command("analyze")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--imatrix", type=click.Path(path_type=Path), default=None, help="Importance matrix (GGUF or .dat).")
@click.option(
    "--types", default=None, help="Candidate types, comma-separated (default: q2_k..q8_0 and the 32-block types)."
)
@click.option("-c", "--ctx", type=int, default=256, show_default=True)
@click.option("--max-tokens", type=int, default=1024, show_default=True, help="Tokens scored per trial.")
@click.option("--bands", type=int, default=3, show_default=True, help="Layer bands per role for the KLD trials.")
@click.option("--no-kld", is_flag=True, help="Only the importance-weighted errors (no model runs).")
@click.option(
    "-o", "--output", "out_path", type=click.Path(path_type=Path), default=None,
    help=f"The sensitivity JSON to write (for `to-gguf --type auto` and `eval --sensitivity`). {FILE_RULE}",
)  # fmt: skip
@click.option("-t", "--threads", type=int, default=None)
@click.option("-q", "--quiet", is_flag=True)
@user_errors
def analyze_cmd(model: Path, imatrix, types, ctx, max_tokens, bands, no_kld, out_path, threads, quiet) -> None:
    """Sensitivity of MODEL (HF folder or f32/f16 GGUF): the importance-weighted error of each candidate type per
    tensor, and the KL divergence caused by quantizing one tensor group at a time, ranked."""
    from qconv.converter.analyze import DEFAULT_TYPES, AnalyzeOptions, analyze, format_analysis

    options = AnalyzeOptions(
        imatrix=imatrix, types=[t.strip() for t in types.split(",") if t.strip()] if types else list(DEFAULT_TYPES),
        ctx=ctx, max_tokens=max_tokens,
        bands=bands, kld=not no_kld, threads=threads,
    )  # fmt: skip
    if out_path is not None:
        check_output_file(out_path)  # before minutes of analysis
    result = analyze(model, options, log=_log(quiet))
    if out_path is not None:
        with AtomicFile(out_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2, default=float))
    click.echo(format_analysis(result))
