"""qrun: run a GGUF model on the CPU.

    qrun MODEL.gguf --prompt "Why is the sky blue?"      # one chat turn (the file's chat template)
    qrun MODEL.gguf --raw --prompt "Once upon a time"    # plain text continuation
    qrun MODEL.gguf                                      # interactive chat

stdout receives only the generated text, streamed; the speed line and --verbose details go to stderr.
"""

from __future__ import annotations

import json
import sys

import click

from qconv.formats.errors import FormatError


def _fail(message: str) -> None:
    click.echo(f"qrun: error: {message}", err=True)
    sys.exit(1)


def _speed_line(model) -> str:
    t = model.timings()
    return (
        f"prompt: {t.prompt_tokens} tokens, {t.prompt_tps:.1f} tok/s | "
        f"generation: {t.gen_tokens} tokens, {t.gen_tps:.1f} tok/s"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("-p", "--prompt", help="Answer this prompt (as a chat turn if the file has a chat template) and exit.")
@click.option("--raw", is_flag=True, help="Feed --prompt as plain text instead of a chat turn.")
@click.option("--system", "system_prompt", help="System message for chat turns.")
@click.option("-n", "--n-predict", "max_tokens", default=256, show_default=True, help="Maximum tokens to generate.")
@click.option("--temp", "temperature", default=0.8, show_default=True, help="Temperature; 0 = greedy.")
@click.option("--top-k", default=40, show_default=True)
@click.option("--top-p", default=0.95, show_default=True)
@click.option("--min-p", default=0.05, show_default=True)
@click.option("--repeat-penalty", default=1.0, show_default=True)
@click.option("--repeat-last-n", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop when this text is generated (repeatable).")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-generation tokens.")
@click.option("-t", "--threads", type=int, default=None, help="Threads (default: all CPUs).")
@click.option("-c", "--ctx", default=2048, show_default=True, help="Context (KV cache) length in tokens.")
@click.option("--kv-f32", is_flag=True, help="Keep the KV cache in f32 (default f16, as llama.cpp).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text, tokens, speeds) instead.")
@click.option("-v", "--verbose", is_flag=True, help="Model shape, threads and the kernel variant per weight type.")
def main(
    model_path,
    prompt,
    raw,
    system_prompt,
    max_tokens,
    temperature,
    top_k,
    top_p,
    min_p,
    repeat_penalty,
    repeat_last_n,
    seed,
    stop,
    ignore_eos,
    threads,
    ctx,
    kv_f32,
    as_json,
    verbose,
) -> None:
    """Generate text with MODEL: a GGUF file (the C runtime), or a folder written by `qconv to-onnx` (ONNX Runtime)."""
    from qconv.runtime.model import Model
    from qconv.runtime.onnx_backend import OnnxModel, is_onnx_folder

    if max_tokens < 0 or ctx <= 0 or (threads is not None and threads <= 0):
        _fail("-n must be >= 0, -c and -t must be positive")
    try:
        if is_onnx_folder(model_path):
            model = OnnxModel(model_path, threads=threads)
        else:
            model = Model(model_path, threads=threads, ctx=ctx, kv_f32=kv_f32)
    except FormatError as exc:
        _fail(str(exc))
    if verbose:
        click.echo(f"qrun: {model_path}: {model.description}", err=True)
        click.echo(
            f"qrun: {model.threads} threads, context {model.n_ctx}, KV cache {model.kv_bytes >> 20} MiB", err=True
        )
        for type_name, variant in model.kernel_variants().items():
            click.echo(f"qrun: kernel {type_name}: {variant}", err=True)

    sampling = dict(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        repeat_last_n=repeat_last_n,
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
    )
    use_chat = not raw and model.chat_template is not None
    try:
        if prompt is not None:
            _one_turn(model, prompt, use_chat, system_prompt, max_tokens, sampling, as_json)
        else:
            _interactive(model, system_prompt, max_tokens, sampling, use_chat)
    except FormatError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("", err=True)
        sys.exit(130)


def _messages(system_prompt, turns):
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + turns


def _one_turn(model, prompt, use_chat, system_prompt, max_tokens, sampling, as_json) -> None:
    if use_chat:
        text = model.render_chat(_messages(system_prompt, [{"role": "user", "content": prompt}]))
    else:
        text = prompt
    ids: list[int] = []
    pieces = []
    for piece in model.generate(text, max_tokens, token_ids=ids, **sampling):
        if as_json:
            pieces.append(piece)
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()
    t = model.timings()
    if as_json:
        record = {
            "text": "".join(pieces),
            "tokens": ids,
            "prompt_tokens": t.prompt_tokens,
            "generated_tokens": len(ids),
            "prompt_tokens_per_s": round(t.prompt_tps, 2),
            "generation_tokens_per_s": round(t.gen_tps, 2),
        }
        click.echo(json.dumps(record, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
    click.echo(_speed_line(model), err=True)


def _interactive(model, system_prompt, max_tokens, sampling, use_chat) -> None:
    if sys.stdin.isatty():
        click.echo("qrun: interactive chat; end with Ctrl-D", err=True)
    turns: list[dict] = []
    while True:
        if sys.stdin.isatty():
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        turns.append({"role": "user", "content": line})
        text = model.render_chat(_messages(system_prompt, turns)) if use_chat else line
        reply = []
        model.reset_timings()
        for piece in model.generate(text, max_tokens, **sampling):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        turns.append({"role": "assistant", "content": "".join(reply)})
        click.echo(_speed_line(model), err=True)


if __name__ == "__main__":
    main()
