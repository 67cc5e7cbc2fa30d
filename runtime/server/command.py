"""`qrun serve MODEL`: load the model, bind the address, serve the OpenAI API with uvicorn until SIGTERM / Ctrl-C.

The address is bound before the model loads, so a port in use is one line at once; on SIGTERM uvicorn stops
accepting connections, the streams in flight finish, then the scheduler thread ends and the process exits.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click

from qconv.formats.errors import FormatError
from qconv.runtime.cli import INT32_MAX, MAX_THREADS, OneLineErrors, _check_model_path, _fail

MAX_PARALLEL = 256


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket for uvicorn (created with IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted
    sockets only then, and without it every answer waits 40 ms for the client's delayed ACK)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise FormatError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def load_model(model_path: str, threads: int | None, ctx: int, parallel: int, kv_f32: bool):
    """A GGUF through the C runtime with `parallel` KV sequences of `ctx` tokens each, or a `qconv to-onnx`
    folder through ONNX Runtime (a decoder holds one sequence; an encoder only embeds)."""
    from qconv.runtime import Model, OnnxModel
    from qconv.runtime.onnx_backend import is_onnx_encoder_folder, is_onnx_folder

    if is_onnx_folder(model_path) or is_onnx_encoder_folder(model_path):
        if parallel > 1 and is_onnx_folder(model_path):
            click.echo("qrun serve: an ONNX folder runs one sequence: requests queue for it", err=True)
        return OnnxModel(model_path, threads=threads)
    _check_model_path(Path(model_path))
    return Model(model_path, threads=threads, ctx=ctx, n_seq=parallel, kv_f32=kv_f32)


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("-t", "--threads", type=click.IntRange(1, MAX_THREADS), default=None, help="Threads (default: all CPUs).")
@click.option(
    "-c", "--ctx", default=2048, show_default=True, type=click.IntRange(1, INT32_MAX), help="Context per slot, tokens."
)
@click.option(
    "--parallel",
    default=4,
    show_default=True,
    type=click.IntRange(1, MAX_PARALLEL),
    help="Slots: requests generated at once, batched in one forward pass (ONNX folders: 1).",
)
@click.option(
    "--api-key",
    envvar="QRUN_API_KEY",
    help="Answer only requests with 'Authorization: Bearer KEY' (also from $QRUN_API_KEY); /health stays open.",
)
@click.option("--kv-f32", is_flag=True, help="Keep the KV cache in f32 (default f16, as llama.cpp).")
@click.option("-v", "--verbose", is_flag=True, help="Log every request (uvicorn's access log).")
def serve(model_path, host, port, threads, ctx, parallel, api_key, kv_f32, verbose) -> None:
    """Serve MODEL (a GGUF file or a `qconv to-onnx` folder) over HTTP with OpenAI's API: /v1/chat/completions,
    /v1/completions, /v1/embeddings, /v1/models, /health and /metrics."""
    import uvicorn

    from qconv.runtime.server.app import create_app

    if api_key is not None and not api_key.strip():
        _fail("--api-key is empty")
    try:
        sock = bind(host, port)
        model = load_model(model_path, threads, ctx, parallel, kv_f32)
    except FormatError as exc:
        _fail(str(exc))
    model_id = Path(model_path).name
    app = create_app(model, model_id, api_key=api_key)
    bound_host, bound_port = sock.getsockname()[:2]
    slots = app.state.served.scheduler.n_slots
    shape = f"{slots} slots of {model.n_ctx} tokens" if slots else "embeddings"
    click.echo(f"qrun serve: {model_id} ({shape}) on http://{_url_host(bound_host)}:{bound_port}", err=True)
    config = uvicorn.Config(
        app,
        log_level="info" if verbose else "warning",
        access_log=verbose,
        timeout_graceful_shutdown=None,  # SIGTERM: every stream in flight finishes
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if hasattr(model, "close"):
            model.close()
    sys.exit(0)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
