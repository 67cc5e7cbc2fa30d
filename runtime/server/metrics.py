"""The server's counters and gauges, written as Prometheus' text exposition format (version 0.0.4) for GET /metrics.

The scheduler thread records tokens and step times, the request handlers record answered requests; a lock keeps
the counts whole between the two. Gauges (queue length, slots in use) are read from the scheduler when scraped.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable

PREFIX = "qconv_"
RATE_WINDOW_S = 10.0  # tokens/s is measured over the decode steps of the last ten seconds
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status code) -> answered requests
        self.prompt_tokens = 0
        self.prompt_seconds = 0.0
        self.generated_tokens = 0
        self.generation_seconds = 0.0
        self.decode_steps = 0
        self.embedded_texts = 0
        self._recent: deque[tuple[float, int, float]] = deque()  # (when, tokens, seconds) per decode step
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def request_done(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def prompt_done(self, tokens: int, seconds: float) -> None:
        with self._lock:
            self.prompt_tokens += tokens
            self.prompt_seconds += seconds

    def step_done(self, tokens: int, seconds: float) -> None:
        """One decode step that sampled `tokens` tokens (one per stream) in `seconds`."""
        now = time.monotonic()
        with self._lock:
            self.generated_tokens += tokens
            self.generation_seconds += seconds
            self.decode_steps += 1
            self._recent.append((now, tokens, seconds))
            self._drop_old(now)

    def first_token(self) -> None:
        """A token sampled from a prompt's logits (its time is the prompt's)."""
        with self._lock:
            self.generated_tokens += 1

    def texts_embedded(self, count: int) -> None:
        with self._lock:
            self.embedded_texts += count

    def _drop_old(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def generation_rate(self) -> float:
        """Generated tokens per second of decoding over the last RATE_WINDOW_S (0 when idle that long)."""
        with self._lock:
            self._drop_old(time.monotonic())
            seconds = sum(s for _, _, s in self._recent)
            return sum(n for _, n, _ in self._recent) / seconds if seconds > 0 else 0.0

    def render(self) -> str:
        rate = self.generation_rate()
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")
            lines.extend(f"{PREFIX}{name}{labels} {_number(value)}" for labels, value in samples)

        with self._lock:
            requests = sorted(self.requests.items())
            metric(
                "requests_total",
                "counter",
                "HTTP requests answered, by endpoint and status code.",
                [(f'{{endpoint="{endpoint}",code="{code}"}}', n) for (endpoint, code), n in requests],
            )
            metric("prompt_tokens_total", "counter", "Prompt tokens evaluated.", [("", self.prompt_tokens)])
            metric("prompt_seconds_total", "counter", "Seconds spent evaluating prompts.", [("", self.prompt_seconds)])
            metric("generated_tokens_total", "counter", "Tokens generated.", [("", self.generated_tokens)])
            metric(
                "generation_seconds_total", "counter", "Seconds spent in decode steps.", [("", self.generation_seconds)]
            )
            metric(
                "decode_steps_total",
                "counter",
                "Batched decode steps (generated tokens / steps: the streams batched per step).",
                [("", self.decode_steps)],
            )
            metric("embedded_texts_total", "counter", "Texts embedded.", [("", self.embedded_texts)])
        metric(
            "generation_tokens_per_second",
            "gauge",
            f"Tokens generated per second of decoding, all streams together, over the last {RATE_WINDOW_S:g} s.",
            [("", rate)],
        )
        for name, (help_text, read) in self.gauges.items():
            metric(name, "gauge", help_text, [("", read())])
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
