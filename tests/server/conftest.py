"""Server fixtures: small GGUF files (random-weight models converted once per session), `serving(model)` to run the
app in this process on a free 127.0.0.1 port, and the official openai client pointed at it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from qconv.converter.convert import convert_to_gguf
from qconv.runtime import Model

CHAT_SHAPE = dict(arch="llama", hidden=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn=256, vocab=512)
CHAT_CTX = 512
CHAT_SLOTS = 8


@contextmanager
def serving(model, model_id: str = "test-model", api_key: str | None = None) -> Iterator[str]:
    """Run create_app(model) under uvicorn in a thread; yields the base URL; stops it (a drain) on exit."""
    import uvicorn

    from qconv.runtime.server.app import create_app
    from qconv.runtime.server.command import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(model, model_id, api_key=api_key), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def openai_client(base_url: str, api_key: str = "unused"):
    import openai

    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def chat_gguf(random_model_factory, tmp_path_factory) -> Path:
    """A random llama (vocab 512, ChatML template) at q8_0."""
    folder = random_model_factory(**CHAT_SHAPE)
    return convert_to_gguf(folder, tmp_path_factory.mktemp("serve") / "chat-q8_0.gguf", "q8_0", progress=False).out_path


@pytest.fixture(scope="module")
def chat_model(chat_gguf):
    with Model(chat_gguf, threads=2, ctx=CHAT_CTX, n_seq=CHAT_SLOTS) as model:
        yield model


@pytest.fixture(scope="module")
def chat_server(chat_model) -> Iterator[str]:
    with serving(chat_model, "chat-q8_0.gguf") as url:
        yield url


@pytest.fixture
def client(chat_server):
    return openai_client(chat_server)
