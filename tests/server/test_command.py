"""`qrun serve` as a command: its flags and one-line errors, `qrun MODEL` still working beside it, and a real server
process that drains its in-flight requests on SIGTERM and exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from click.testing import CliRunner

from qconv.runtime import cli
from qconv.runtime.server.command import bind


def qrun(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_help():
    result = qrun("serve", "--help")
    assert result.exit_code == 0
    for flag in ("--host", "--port", "--threads", "--ctx", "--parallel", "--api-key"):
        assert flag in result.output
    assert "127.0.0.1" in result.output and "Usage: qrun serve" in result.output
    assert "qrun serve MODEL" in qrun("--help").output


def test_qrun_model_still_generates(chat_gguf):
    result = qrun(chat_gguf, "--prompt", "Hi", "--temp", 0, "-n", 4, "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["tokens"]) <= 4


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--port", "70000"], 2, "--port"),
        (["--parallel", "0"], 2, "--parallel"),
        (["-c", "0"], 2, "--ctx"),
        (["--bogus"], 2, "--bogus"),
        (["--api-key", " "], 1, "--api-key is empty"),
    ],
)
def test_bad_flags_are_one_line(chat_gguf, args, code, message):
    result = qrun("serve", chat_gguf, *args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("qrun: error: ") and message in lines[0]


def test_missing_model_and_busy_port_are_one_line(tmp_path, chat_gguf):
    result = qrun("serve", tmp_path / "missing.gguf", "--port", 0)
    assert result.exit_code == 1 and "no such file" in result.stderr
    busy = bind("127.0.0.1", 0)
    busy.listen()
    try:
        result = qrun("serve", chat_gguf, "--port", busy.getsockname()[1])
    finally:
        busy.close()
    assert result.exit_code == 1 and "cannot listen on 127.0.0.1:" in result.stderr.strip().splitlines()[0]


def free_port() -> int:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    return port


def stream_events(url: str, body: dict, events: list) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])


def test_sigterm_drains_in_flight_requests_and_exits(chat_gguf):
    """One slot: a long stream runs, a second waits in the queue; SIGTERM stops new connections, both finish
    whole, then the process exits."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "qconv.runtime.cli", "serve", str(chat_gguf), "--port", str(port), "-t", "1",
         "--parallel", "1", "-c", "2048"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = {"model": chat_gguf.name, "prompt": "Once", "max_tokens": 1500, "ignore_eos": True, "stream": True,
                "temperature": 0, "stream_options": {"include_usage": True}}  # fmt: skip
        runs = [[], []]
        threads = [threading.Thread(target=stream_events, args=(url, body, events)) for events in runs]
        threads[0].start()
        while not runs[0]:
            time.sleep(0.005)
        threads[1].start()  # queued behind the first
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        for events in runs:
            assert events[-1] == "[DONE]", events[-3:]
            usage = json.loads(events[-2])["usage"]
            assert usage["completion_tokens"] == 1500
            assert json.loads(events[-3])["choices"][0]["finish_reason"] == "length"
        assert process.wait(60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
