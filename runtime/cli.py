"""qrun: run a GGUF model on the CPU.

    qrun MODEL.gguf --prompt "Why is the sky blue?"      # one chat turn (the file's chat template)
    qrun MODEL.gguf -f question.txt                      # the prompt from a file
    qrun MODEL.gguf --raw --prompt "Once upon a time"    # plain text continuation
    qrun MODEL.gguf                                      # interactive chat (/reset, /exit, Ctrl-D)
    qrun MODEL.gguf --embed "a sentence"                 # its embedding: one JSON array on stdout
    qrun MODEL.gguf --embed-file texts.txt               # one text per line -> one JSON array per line
    qrun serve MODEL.gguf --port 8080                    # an OpenAI-compatible server (runtime/server/)
    qrun MODEL.gguf -p "A cat" --json-schema cat.json    # the answer: JSON valid for that schema

stdout receives only the generated text, streamed; the speed line and --verbose details go to stderr. Every
error is one line on stderr, `qrun: error: ...`: a bad flag value (exit 2, before the model loads), a bad file or
prompt (exit 1).
"""

from __future__ import annotations

import json
import math
import secrets
import sys
from pathlib import Path

import click

from qconv.formats.errors import FormatError
from qconv.formats.printable import escaped

INT32_MAX = 2**31 - 1  # the C runtime's counts (top-k, context, window) are int32
MAX_THREADS = 1024  # each thread gets a context-long attention buffer; more is a typo, not a machine
HF_CONFIG = "config.json"  # what marks a Hugging Face model folder


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which compare false with every bound)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


class OneLineErrors(click.Command):
    """Usage errors (an unknown flag, a value out of range) as one line, like every other qrun error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"qrun: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            sys.exit(130)
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


class Qrun(OneLineErrors):
    """qrun itself: `qrun serve ...` is the server (runtime/server/command.py), anything else `qrun MODEL ...`."""

    def main(self, args=None, prog_name=None, *rest, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if argv[:1] == ["serve"]:
            from qconv.runtime.server.command import serve

            return serve.main(argv[1:], "qrun serve", *rest, **extra)
        return super().main(args, prog_name, *rest, **extra)


def _fail(message: str) -> None:
    click.echo(f"qrun: error: {escaped(message)}", err=True)  # one line, no terminal controls from files
    sys.exit(1)


def _speed_line(model, generated: int | None = None) -> str:
    """The prompt and generation rates from the runtime's own timers; `generated` tokens when known (the last one
    sampled is never evaluated, so the timers count one fewer)."""
    t = model.timings()
    return (
        f"prompt: {t.prompt_tokens} tokens, {t.prompt_tps:.1f} tok/s | "
        f"generation: {t.gen_tokens if generated is None else generated} tokens, {t.gen_tps:.1f} tok/s"
    )


def _read_prompt_file(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: the prompt file is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the prompt file: {exc.strerror or exc}") from exc


def _check_model_path(path: Path) -> None:
    """Point a new user who passes the Hugging Face folder itself to the conversion step."""
    if path.is_dir() and (path / HF_CONFIG).is_file():
        raise FormatError(
            f"{path} is a Hugging Face model folder: convert it first with `qconv to-gguf {path} -o model.gguf`, "
            f"then run `qrun model.gguf`"
        )
    if path.is_dir():
        raise FormatError(f"{path} is a folder: expected a GGUF file or a folder written by `qconv to-onnx`")


@click.command(cls=Qrun, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("-p", "--prompt", help="Answer this prompt (as a chat turn if the file has a chat template) and exit.")
@click.option(
    "-f", "--file", "prompt_file", metavar="PROMPT_FILE", help="Read the prompt from this UTF-8 file (as --prompt)."
)
@click.option("--raw", is_flag=True, help="Feed --prompt as plain text instead of a chat turn.")
@click.option("--system", "system_prompt", help="System message for chat turns.")
@click.option(
    "-n",
    "--n-predict",
    "max_tokens",
    default=256,
    show_default=True,
    type=click.IntRange(-1, INT32_MAX),
    help="Maximum tokens to generate; -1: until the end of generation or a full context.",
)
@click.option(
    "--temp", "temperature", default=0.8, show_default=True, type=FiniteFloatRange(0), help="Temperature; 0 = greedy."
)
@click.option("--top-k", default=40, show_default=True, type=click.IntRange(0, INT32_MAX), help="0: off.")
@click.option("--top-p", default=0.95, show_default=True, type=FiniteFloatRange(0, 1), help="1: off.")
@click.option("--min-p", default=0.05, show_default=True, type=FiniteFloatRange(0, 1), help="0: off.")
@click.option(
    "--repeat-penalty", default=1.0, show_default=True, type=FiniteFloatRange(0, min_open=True), help="1: off."
)
@click.option("--repeat-last-n", default=64, show_default=True, type=click.IntRange(0, INT32_MAX))
@click.option(
    "--seed", type=click.IntRange(0, 2**64 - 1), help="Sampling seed (default: a random one, printed by -v / --json)."
)
@click.option("--stop", multiple=True, help="Stop when this text is generated (repeatable).")
@click.option(
    "--json-schema",
    "json_schema_file",
    metavar="FILE",
    help="Constrain the answer to JSON valid for the JSON schema in FILE (compact JSON; ends when it is complete).",
)
@click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-generation tokens.")
@click.option("-t", "--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="Threads (default: all CPUs).")
@click.option(
    "-c", "--ctx", default=2048, show_default=True, type=click.IntRange(1, INT32_MAX), help="Context length in tokens."
)
@click.option("--kv-f32", is_flag=True, help="Keep the KV cache in f32 (default f16, as llama.cpp).")
@click.option("--embed", "embed_text", metavar="TEXT", help="Print the embedding of TEXT (one JSON array) and exit.")
@click.option(
    "--embed-file",
    metavar="TEXTS_FILE",
    help="Print the embedding of each line of this UTF-8 file (one JSON array per line) and exit.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object (text, tokens, speeds, seed) instead; with --embed: {tokens, embedding} per text.",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Model shape, threads, seed and the kernel variant per weight type."
)
@click.version_option(package_name="qconv", prog_name="qrun")
def main(
    model_path,
    prompt,
    prompt_file,
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
    json_schema_file,
    ignore_eos,
    threads,
    ctx,
    kv_f32,
    embed_text,
    embed_file,
    as_json,
    verbose,
) -> None:
    """Generate text with MODEL: a GGUF file (the C runtime), or a folder written by `qconv to-onnx` (ONNX Runtime).
    `qrun serve MODEL` serves it over HTTP with OpenAI's API instead (`qrun serve --help`)."""
    from qconv.runtime.model import Model
    from qconv.runtime.onnx_backend import OnnxModel, is_onnx_encoder_folder, is_onnx_folder

    if prompt is not None and prompt_file is not None:
        _fail("give the prompt with -p/--prompt or -f/--file, not both")
    embedding = embed_text is not None or embed_file is not None
    if embed_text is not None and embed_file is not None:
        _fail("give the texts with --embed or --embed-file, not both")
    if embedding and (prompt is not None or prompt_file is not None):
        _fail("--embed/--embed-file and a prompt (-p/-f) are different jobs: give one")
    if embedding and json_schema_file is not None:
        _fail("--json-schema constrains generated text: not with --embed/--embed-file")
    seed = secrets.randbits(32) if seed is None else seed
    try:
        texts = [embed_text] if embed_text is not None else _read_texts_file(embed_file) if embed_file else None
        if prompt_file is not None:
            prompt = _read_prompt_file(prompt_file)
        json_schema = _read_json_schema(json_schema_file) if json_schema_file is not None else None
        if is_onnx_folder(model_path) or is_onnx_encoder_folder(model_path):
            model = OnnxModel(model_path, threads=threads)
        else:
            _check_model_path(Path(model_path))
            model = Model(model_path, threads=threads, ctx=ctx, kv_f32=kv_f32)
    except FormatError as exc:
        _fail(str(exc))
    if embedding:
        try:
            _embed(model, texts, as_json)
        except FormatError as exc:
            _fail(str(exc))
        return
    if getattr(model, "is_encoder", False):
        _fail(f"{model_path} is an embedding model: use --embed TEXT or --embed-file FILE")
    if verbose:
        click.echo(f"qrun: {model_path}: {model.description}", err=True)
        click.echo(
            f"qrun: {model.threads} threads, context {model.n_ctx}, KV cache {model.kv_bytes >> 20} MiB", err=True
        )
        for type_name, variant in model.kernel_variants().items():
            click.echo(f"qrun: kernel {type_name}: {variant}", err=True)
        click.echo(f"qrun: seed {seed}", err=True)

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
    new_constraint = _constraint_factory(model, json_schema, json_schema_file) if json_schema_file else None
    use_chat = not raw and model.chat_template is not None
    try:
        if prompt is not None:
            _one_turn(model, prompt, use_chat, system_prompt, max_tokens, sampling, as_json, new_constraint)
        else:
            Chat(model, system_prompt, max_tokens, sampling, use_chat, new_constraint).run()
    except FormatError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("", err=True)
        sys.exit(130)


def _read_json_schema(path: str):
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the JSON schema: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: the JSON schema is not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not JSON: {exc}") from exc
    except RecursionError as exc:
        raise FormatError(f"{path}: the JSON schema is nested too deeply") from exc


def _constraint_factory(model, schema, path: str):
    """A function giving each answer (an interactive chat has many) a fresh constraint for the schema; a bad schema
    is reported here, before the first prompt."""
    from qconv.runtime.constrained import JsonConstraint

    try:
        JsonConstraint.for_schema(model.tokenizer, schema)
    except FormatError as exc:
        _fail(f"{path}: {exc}")
    return lambda: JsonConstraint.for_schema(model.tokenizer, schema)


def _answer_options(sampling: dict, new_constraint) -> dict:
    return sampling if new_constraint is None else {**sampling, "constraint": new_constraint()}


def _read_texts_file(path: str) -> list[str]:
    """One text per line: split on newlines only (a text may hold other line-breaking characters), a CR before
    the newline dropped, no text after a final newline."""
    data = _read_prompt_file(path)
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def format_float32(value) -> str:
    """The shortest %g form that reads back as the same float32 (qrun-native prints the same text); null for a
    value that is not finite (JSON has no nan)."""
    import numpy as np

    value = np.float32(value)
    if not np.isfinite(value):
        return "null"
    # numpy's shortest round-trip digits give the precision to start from; %g then formats as C does
    digits = np.format_float_scientific(value, unique=True, trim="-").split("e")[0].lstrip("-").replace(".", "")
    for precision in range(max(1, len(digits)), 10):
        text = f"{float(value):.{precision}g}"  # Python's g is C's %g
        if np.float32(text) == value:
            return text
    return f"{float(value):.9g}"


def embedding_line(vector) -> str:
    return "[" + ",".join(format_float32(v) for v in vector) + "]"


def _embed(model, texts: list[str], as_json: bool) -> None:
    import time

    if not hasattr(model, "embed"):
        raise FormatError(f"{model.path}: this model gives no embeddings")
    started = time.perf_counter()
    vectors = model.embed(texts)
    seconds = time.perf_counter() - started
    for text, vector in zip(texts, vectors):
        if as_json:
            limit = getattr(model, "embed_max_tokens", None) or model.max_tokens  # Model / OnnxEncoder
            n_tokens = len(model.tokenizer.encode_truncated(text, limit))
            click.echo(f'{{"tokens": {n_tokens}, "embedding": {embedding_line(vector)}}}')
        else:
            click.echo(embedding_line(vector))
    rate = len(texts) / seconds if seconds > 0 else 0.0
    click.echo(f"embed: {len(texts)} texts, {len(vectors[0]) if len(texts) else 0} dims, {rate:.1f} texts/s", err=True)


def _messages(system_prompt, turns):
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + turns


def _one_turn(model, prompt, use_chat, system_prompt, max_tokens, sampling, as_json, new_constraint=None) -> None:
    if use_chat:
        text = model.render_chat(_messages(system_prompt, [{"role": "user", "content": prompt}]))
    else:
        text = prompt
    ids: list[int] = []
    pieces = []
    for piece in model.generate(text, max_tokens, token_ids=ids, **_answer_options(sampling, new_constraint)):
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
            "seed": sampling["seed"],
        }
        click.echo(json.dumps(record, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
    click.echo(_speed_line(model, len(ids)), err=True)


class Chat:
    """The interactive loop: one line per user turn; Ctrl-C stops a reply, Ctrl-C at the prompt or Ctrl-D ends the
    chat; the oldest turns give way when the context is full (the system prompt stays)."""

    def __init__(self, model, system_prompt, max_tokens, sampling, use_chat, new_constraint=None) -> None:
        self.model = model
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.use_chat = use_chat
        self.new_constraint = new_constraint
        self.turns: list[dict] = []
        self.tty = sys.stdin.isatty()
        # the room a reply needs in the context, kept free when old turns are dropped
        self.reply_room = min(max_tokens if max_tokens >= 0 else model.n_ctx, model.n_ctx // 2)
        self.commands = {"/reset": self.reset, "/exit": lambda: False}  # each returns whether the chat goes on

    def run(self) -> None:
        if self.tty:
            import readline  # noqa: F401 - input() gets line editing and history once it is loaded

            click.echo("qrun: interactive chat; /reset forgets the conversation, /exit or Ctrl-D ends it", err=True)
        while True:
            line = self.read_line()
            if line is None:
                return
            if line.strip() in self.commands:
                if not self.commands[line.strip()]():
                    return
            elif line.strip():
                self.turn(line)

    def read_line(self) -> str | None:
        """The next line, or None at the end of input (Ctrl-D) or on Ctrl-C at the prompt."""
        try:
            if self.tty:
                return input("> ")
            line = sys.stdin.readline()
            return line.rstrip("\n") if line else None
        except EOFError:
            return None
        except KeyboardInterrupt:
            click.echo("", err=True)
            return None

    def reset(self) -> bool:
        self.turns = []
        click.echo("qrun: conversation forgotten", err=True)
        return True

    def turn(self, line: str) -> None:
        if not self.use_chat:
            self.turns = []  # plain text: each line is a prompt of its own
        self.turns.append({"role": "user", "content": line})
        try:
            prompt = self.fitting_prompt()
        except FormatError as exc:
            self.turns.pop()
            click.echo(f"qrun: error: {exc}", err=True)
            return
        reply = []
        self.model.reset_timings()
        try:
            for piece in self.model.generate(
                prompt, self.max_tokens, **_answer_options(self.sampling, self.new_constraint)
            ):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            click.echo("\nqrun: reply stopped", err=True)
        sys.stdout.write("\n")
        sys.stdout.flush()
        self.turns.append({"role": "assistant", "content": "".join(reply)})
        click.echo(_speed_line(self.model), err=True)

    def fitting_prompt(self) -> list[int]:
        """The conversation's tokens, after dropping the oldest turns until it and a reply fit the context."""
        dropped = 0
        while True:
            tokens = self.model.tokenize(self.prompt_text())
            if len(tokens) + self.reply_room <= self.model.n_ctx:
                break
            if len(self.turns) <= 1:
                raise FormatError(
                    f"this message takes {len(tokens)} tokens and a reply {self.reply_room}: more than the context "
                    f"of {self.model.n_ctx} (use a larger -c or a smaller -n)"
                )
            first_kept = next((i for i, t in enumerate(self.turns) if i > 0 and t["role"] == "user"), len(self.turns))
            dropped += first_kept
            del self.turns[:first_kept]
        if dropped:
            click.echo(
                f"qrun: context full: dropped the {dropped} oldest messages (the system prompt stays); "
                f"re-reading the conversation",
                err=True,
            )
        return tokens

    def prompt_text(self) -> str:
        if self.use_chat:
            return self.model.render_chat(_messages(self.system_prompt, self.turns))
        return self.turns[-1]["content"]


if __name__ == "__main__":
    main()
