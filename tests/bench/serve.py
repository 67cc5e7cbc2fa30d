"""Serving speed of `qrun serve` vs llama.cpp's llama-server on the same GGUF, both driven by the same clients.

    python tests/bench/serve.py [--streams 1,4,8] [--types q8_0,q4_k_m] [--threads 2] [--max-tokens 64]
                                [--ctx 512] [--repeats 3] [--only qrun|llama]

The model is the SmolLM2-135M-Instruct sample converted by qconv at each type (tests/bench/run.py's files). Each
server runs alone with `--parallel` = the largest stream count, the same threads (-t) and context per slot
(llama-server's -c is the whole cache, so it gets ctx x parallel). For N streams, N clients each send one streaming
chat completion at once (greedy, max_tokens, `ignore_eos` so every answer has max_tokens tokens, a different
prompt per client and round so no answer is served from a cached prompt), parsed as server-sent events with httpx
in one asyncio loop. Per round:
- aggregate tok/s: the generated tokens of all N answers (their `usage`) / the seconds from sending the requests
  to the last answer's end (prompt processing included, as a user waits for it);
- time to first token: from sending a request to its first chunk with content.
Each cell is the median over --repeats rounds (after one warm-up round per server); ratios are qrun / llama-server
for tok/s (> 1: qrun faster) and llama-server / qrun for time to first token (> 1: qrun answers sooner).
The llama-server is built from the llama-cpp-python sdist (tests/llama_tools.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.measure import median, table  # noqa: E402

HEADER = ["type", "streams", "qrun tok/s", "llama tok/s", "ratio", "qrun TTFT ms", "llama TTFT ms", "TTFT ratio"]
TOPICS = ["the history of bridges", "how bees make honey", "the water cycle", "why the sky is blue",
          "the life of a lighthouse keeper", "how trains changed cities", "a day on a fishing boat",
          "the first computers", "how glass is made", "the rules of chess", "a journey across a desert",
          "the invention of paper"]  # fmt: skip
STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompt(client: int, round_number: int) -> str:
    # a different start per client and round: the cached prefix shared between requests is the chat template's
    topic = TOPICS[client % len(TOPICS)]
    return f"Request {round_number}.{client}: write a long, detailed essay about {topic}, with many examples."


class Server:
    """A server process on 127.0.0.1, its log in a temporary file; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, name: str, command: list[str], port: int, log_dir: Path) -> None:
        self.name, self.command, self.port = name, command, port
        self.log = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.model_id = ""  # what the server calls its model (/v1/models); qrun refuses other names

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.model_id = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"][0]["id"]
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not answer /health within {STARTUP_SECONDS} s:\n{self.tail()}")

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


async def stream_chat(client, url: str, model: str, text: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first content, seconds to the end, generated tokens) of one streamed chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    start = time.perf_counter()
    first, tokens, pieces = None, None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    pieces += 1
                    if first is None:
                        first = time.perf_counter() - start
    end = time.perf_counter() - start
    if first is None:
        raise RuntimeError(f"{url}: a stream ended without content")
    return first, end, tokens if tokens is not None else pieces


async def one_round(server: Server, streams: int, round_number: int, max_tokens: int) -> tuple[float, float]:
    """(aggregate generated tokens per second, median time to first token in seconds) of `streams` clients."""
    import httpx

    limits = httpx.Limits(max_connections=streams + 1)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(
                stream_chat(client, server.url, server.model_id, prompt(i, round_number), max_tokens)
                for i in range(streams)
            )
        )
        wall = time.perf_counter() - start
    tokens = [r[2] for r in results]
    if min(tokens) != max_tokens:
        raise RuntimeError(
            f"{server.name}: answers of {tokens} tokens, not {max_tokens} each (ignore_eos not honoured?)"
        )
    return sum(tokens) / wall, median([r[0] for r in results])


def measure(server: Server, stream_counts: list[int], repeats: int, max_tokens: int) -> dict[int, tuple]:
    """streams -> (median tok/s, median time to first token) over `repeats` rounds, after one warm-up round."""
    asyncio.run(one_round(server, max(stream_counts), 0, max_tokens))
    results = {}
    for streams in stream_counts:
        rounds = [asyncio.run(one_round(server, streams, r + 1, max_tokens)) for r in range(repeats)]
        results[streams] = (median([r[0] for r in rounds]), median([r[1] for r in rounds]))
        rate, ttft = results[streams]
        print(f"  {server.name}: {streams} streams: {rate:.1f} tok/s, TTFT {ttft * 1000:.0f} ms", flush=True)
    return results


def qrun_command(model: Path, parallel: int, threads: int, ctx: int, port: int) -> list[str]:
    return [sys.executable, "-m", "qconv.runtime.cli", "serve", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--parallel", str(parallel), "-t", str(threads), "-c", str(ctx)]  # fmt: skip


def llama_command(tool: Path, model: Path, parallel: int, threads: int, ctx: int, port: int) -> list[str]:
    return [str(tool), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--parallel", str(parallel),
            "-t", str(threads), "-c", str(ctx * parallel)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--types", default="q8_0,q4_k_m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--ctx", type=int, default=512, help="context per slot")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["qrun", "llama"], help="run one server only (the other's columns are -)")
    args = parser.parse_args()

    from tests.bench.run import bench_files
    from tests.llama_tools import build_tools

    stream_counts = [int(s) for s in args.streams.split(",")]
    parallel = max(stream_counts)
    tool = build_tools(("llama-server",))["llama-server"] if args.only != "qrun" else None
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for label, model in bench_files(["135m"], args.types.split(",")):
            type_name = label.split()[-1]
            measured = {}
            for name in ("qrun", "llama"):
                if args.only not in (None, name):
                    continue
                port = free_port()
                command = (qrun_command(model, parallel, args.threads, args.ctx, port) if name == "qrun"
                           else llama_command(tool, model, parallel, args.threads, args.ctx, port))  # fmt: skip
                print(f"{label}: {' '.join(command)}", flush=True)
                with Server(name, command, port, Path(log_dir)) as server:
                    measured[name] = measure(server, stream_counts, args.repeats, args.max_tokens)
            for streams in stream_counts:
                ours, theirs = measured.get("qrun", {}).get(streams), measured.get("llama", {}).get(streams)
                rows.append([
                    type_name, streams,
                    ours[0] if ours else "-", theirs[0] if theirs else "-",
                    ours[0] / theirs[0] if ours and theirs else "-",
                    ours[1] * 1000 if ours else "-", theirs[1] * 1000 if theirs else "-",
                    theirs[1] / ours[1] if ours and theirs else "-",
                ])  # fmt: skip
    cpu = os.cpu_count()
    print(
        f"\nSmolLM2-135M-Instruct, --parallel {parallel}, {args.threads} threads ({cpu} CPUs), {args.max_tokens} "
        f"tokens per answer (greedy, ignore_eos), median of {args.repeats} rounds:\n"
    )
    print(table(HEADER, rows))


if __name__ == "__main__":
    main()
