"""The click commands `qconv calibrate`, `qconv eval` and `qconv analyze` (registered in converter/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from qconv.converter.cli_errors import user_errors
from qconv.converter.cli_outputs import FILE_RULE, FOLDER_RULE, force_option
from qconv.converter.work.cli_options import work_options
from qconv.formats.atomic_write import AtomicFile, check_output_file, check_output_folder
from qconv.formats.errors import FormatError


def _log(quiet: bool):
    return None if quiet else (lambda msg: click.echo(msg, err=True))


def work_dir_option(fn):
    """--work-dir of the commands whose units read a temporary GGUF (analyze, to-gguf --type auto)."""
    return click.option(
        "--work-dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
        help="Folder for the run's temporary files (the f32 GGUF of an HF folder). Default: with --ray the output's "
        "folder, else the system's temporary folder. Ray nodes receive a file under 1 GiB through the object store; a "
        "bigger one they read from its path, so put it on storage every node sees.",
    )(fn)  # fmt: skip


def run_folder(work_dir: Path | None, out_path: Path | None, work) -> Path | None:
    """Where a run's temporary folder goes: --work-dir; with Ray, beside the output (a shared disk, the likeliest
    place every node sees); else the system's temporary folder (None)."""
    from qconv.converter.work.executors import ray_address

    if work_dir is not None:
        return work_dir
    if ray_address(work.ray) is not None and out_path is not None:
        return Path(out_path).absolute().parent
    return None


@click.command("calibrate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--data", "data", type=click.Path(path_type=Path), multiple=True,
    help="Calibration text: files or folders (repeatable); a .jsonl file is read as prompt items ({prompt} or "
    "{messages} per line) rendered with the model's chat template. Default: the built-in calibration suites. "
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
@click.argument("quants", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--ref", "ref", type=click.Path(path_type=Path), required=True, help="HF folder or f32/f16/bf16 GGUF.")
@click.option(
    "--suite", "suite_names", multiple=True,
    help="Only these built-in suites (repeatable; default: all; 'none' for only your --text/--tasks). An embedding "
    "model has its own: prose, code, multilingual, queries, retrieval.",
)  # fmt: skip
@click.option(
    "--tasks", "task_files", multiple=True, type=click.Path(path_type=Path),
    help="A JSONL task file (repeatable): one item per line, {capability, prompt|messages, expected, check, "
    "schema, max_tokens, raw}; each capability is a suite.",
)  # fmt: skip
@click.option(
    "--text", "texts", multiple=True, metavar="NAME=FILE",
    help="Your text (repeatable): KLD, top-1 and perplexity ratio, windowed as llama-perplexity -f does.",
)  # fmt: skip
@click.option("-c", "--ctx", type=int, default=512, show_default=True, help="Tokens per scored window.")
@click.option("--long", is_flag=True, help="Passkey items up to the model's context (default: min(context, 2048)).")
@click.option("--max-tokens", type=int, default=None, help="Score at most this many tokens per suite (quick runs).")
@click.option("--max-tasks", type=int, default=None, help="At most this many task items per task suite.")
@click.option(
    "--no-tasks", is_flag=True,
    help="Skip the built-in task checks (--tasks files still run); for an embedding model, the retrieval suite.",
)  # fmt: skip
@click.option(
    "--gate", default=None, metavar="KEY=V,...",
    help="Fail (exit 2) when a suite crosses a threshold: kld (mean), kld_p99, top1, ppl_ratio, task_drop "
    "(only a significant drop, exact McNemar at 0.05); embedding models: cos_mean, cos_min (cosine of the "
    "candidate's vectors to the reference's), retrieval_drop. E.g. kld=0.05,top1=0.90,task_drop=0.10",
)  # fmt: skip
@click.option(
    "--ref-cache", type=click.Path(path_type=Path), default=None,
    help="Keep the reference's results in this file (and FILE.json) and reuse them on the next run.",
)  # fmt: skip
@click.option(
    "-o", "--output", "out_dir", type=click.Path(path_type=Path), default=None,
    help="Folder for report.json (rewritten after every suite; with -j/--ray after every candidate), report.html "
    f"and its charts. {FOLDER_RULE}",
)  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue the unfinished run whose report is in -o DIR.")
@force_option
@click.option(
    "--junit",
    type=click.Path(path_type=Path),
    default=None,
    help=f"JUnit XML, a test case per gate and suite. {FILE_RULE}",
)
@click.option(
    "--sensitivity", type=click.Path(path_type=Path), default=None,
    help="A `qconv analyze -o` JSON whose group KLDs the report charts.",
)  # fmt: skip
@click.option("-t", "--threads", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the table.")
@click.option("-q", "--quiet", is_flag=True)
@work_options
@user_errors
def eval_cmd(quants, ref: Path, suite_names, task_files, texts, ctx, long, max_tokens, max_tasks, no_tasks, gate,
             ref_cache, out_dir, resume, force, junit, sensitivity, threads, as_json, quiet, work) -> None:  # fmt: skip
    """What each quantized candidate QUANTS lost against REF, per capability: KL divergence, top-1 agreement and
    perplexity on the held-out suites and your texts, and task accuracy on the built-in tasks and your task files,
    with 95% intervals; for an embedding model, the cosine of its vectors to the reference's and retrieval accuracy. Exit codes: 0 every gate passed, 1 a user error, 2 a gate failed (the report names it).
    With -j N or --ray, the reference runs once here and each candidate is a unit against it: the same report."""
    from qconv.converter.quality import run_state
    from qconv.converter.quality.embed_eval import check_options, is_encoder_model
    from qconv.converter.quality.evaluate import EvalOptions, chosen_suites, evaluate, load_user_inputs
    from qconv.converter.quality.gates import failure_lines, gate_results, parse_gates
    from qconv.converter.quality.junit import write_junit
    from qconv.converter.quality.report import format_table, write_report

    options = EvalOptions(
        suites=list(suite_names) or None, ctx=ctx, threads=threads, max_tokens=max_tokens, max_tasks=max_tasks,
        tasks=not no_tasks, task_files=list(task_files), texts=list(texts), long=long, ref_cache=ref_cache,
        progress=not quiet,
    )  # fmt: skip
    gates = parse_gates(gate)  # these checks come before minutes of evaluation
    if is_encoder_model(Path(quants[0])):
        check_options(options)  # the embedding suites; --text, --tasks, --long... are refused
    else:
        chosen_suites(options.suites)
        load_user_inputs(options)
    if ref_cache is not None:
        check_output_file(ref_cache)
    if junit is not None:
        check_output_file(junit)
    groups = None
    if sensitivity is not None:
        try:
            groups = json.loads(Path(sensitivity).read_text())["groups"]
        except (OSError, ValueError, KeyError) as e:
            raise FormatError(f"--sensitivity {sensitivity}: not a `qconv analyze` JSON ({e})") from None
    previous = None
    if resume:
        if out_dir is None:
            raise FormatError("--resume needs -o DIR, the folder of the run to continue")
        previous = run_state.load_for_resume(out_dir)
    elif out_dir is not None:
        check_output_folder(out_dir, force)
        run_state.start_output(out_dir, force)
    save = (lambda report: run_state.save_report(out_dir, report)) if out_dir is not None else None
    # the units open the candidates; the reference's rows and GGUF reach them through the executor's sharing
    with work.executor(threads, [Path(q).resolve() for q in quants], progress=not quiet) as executor:
        report = evaluate(list(quants), ref, options, log=_log(quiet), save=save, resume=previous, executor=executor)
    if groups:
        report["sensitivity"] = groups
    report["gates"] = gates
    failures = []
    for candidate in report["candidates"]:
        candidate["gate_results"] = gate_results(candidate, gates)
        candidate["gate_failures"] = failure_lines(candidate["gate_results"])
        failures += [f"{candidate['quant']}: {line}" for line in candidate["gate_failures"]]
    report["gate_failures"] = failures
    if out_dir is not None:
        write_report(report, out_dir)
        if not quiet:
            click.echo(f"report: {Path(out_dir) / 'report.html'}", err=True)
    if junit is not None:
        write_junit(report, junit)
    click.echo(run_state.report_text(report) if as_json else format_table(report))
    if failures:
        click.echo("qconv: gate failed: " + "; ".join(failures), err=True)
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
@work_dir_option
@click.option("-t", "--threads", type=int, default=None)
@click.option("-q", "--quiet", is_flag=True)
@work_options
@user_errors
def analyze_cmd(
    model: Path, imatrix, types, ctx, max_tokens, bands, no_kld, out_path, work_dir, threads, quiet, work
) -> None:
    """Sensitivity of MODEL (HF folder or f32/f16 GGUF): the importance-weighted error of each candidate type per
    tensor, and the KL divergence caused by quantizing one tensor group at a time, ranked. With -j N or --ray, each
    tensor and each group trial is a unit: the same JSON."""
    from qconv.converter.analyze import DEFAULT_TYPES, AnalyzeOptions, analyze, format_analysis

    options = AnalyzeOptions(
        imatrix=imatrix, types=[t.strip() for t in types.split(",") if t.strip()] if types else list(DEFAULT_TYPES),
        ctx=ctx, max_tokens=max_tokens, bands=bands, kld=not no_kld, threads=threads,
        work_dir=run_folder(work_dir, out_path, work),
    )  # fmt: skip
    if out_path is not None:
        check_output_file(out_path)  # before minutes of analysis
    with work.executor(threads, progress=not quiet) as executor:
        result = analyze(model, options, executor=executor, log=_log(quiet))
    if out_path is not None:
        with AtomicFile(out_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2, default=float))
    click.echo(format_analysis(result))
