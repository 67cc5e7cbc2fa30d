"""The thread that owns the model and batches every request's decoding into one forward call per step.

Each step (continuous batching, as llama-server's slots do it):
1. requests whose client went away leave their slot (their cache stays: a later prompt may share its prefix);
2. waiting requests take free slots, each the free slot whose cached tokens share the longest prefix with its
   prompt (a follow-up chat turn finds its earlier turns there); the rest of a prompt is evaluated there in pieces
   of PREFILL_CHUNK tokens, one piece per request per step, so a long prompt does not stall the other streams
   (pieces cut at llama.cpp's 512-token batches give the logits one call gives, so answers stay qrun's);
3. ONE model.evaluate_batch call evaluates the last sampled token of every active stream together (a decode step
   of N streams reads each weight once); a stream's logits are those it would get alone, so each answer is the
   one it gets alone;
4. each stream samples its next token (TextStream: sampler, constraint, stop strings, UTF-8 pieces); finished
   streams free their slot; the step's text then goes to the requests' sinks together, so the event loop formats and
   sends it while this thread is inside the next forward call, not in between (where both would wait for the GIL).
Other work on the model (embeddings) runs between steps, in this thread, so nothing else ever touches the model;
work that uses a sequence's cache (a decoder embeds in sequence 0's) waits until that slot is free, and no new
request takes the slot meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from qconv.formats.errors import FormatError
from qconv.runtime.generation import TextStream
from qconv.runtime.protocol import shared_prefix
from qconv.runtime.server.metrics import Metrics

log = logging.getLogger("qconv.serve")

# Prompt tokens a request evaluates per step: a multiple of the runtime's 512-token batches (QRT_LLAMA_UBATCH), whose
# kernel choices depend on a token's place in its batch: cut there, a prompt's logits are those of one call.
PREFILL_CHUNK = 512


@dataclass
class Piece:
    """Text a stream completed."""

    text: str


@dataclass
class Finished:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    message: str
    status: int = 500


Event = Piece | Finished | Failed


@dataclass(eq=False)
class GenerationJob:
    """One request's generation: its prompt ids, TextStream's options and where its events go. `sink` is called
    from the scheduler thread and must not block (app.py hands events to the request's event loop)."""

    prompt: list[int]
    options: dict
    sink: Callable[[Event], None]
    constraint: object | None = None
    cancelled: bool = False
    stream: TextStream | None = field(default=None, repr=False)
    pending: list[int] = field(default_factory=list, repr=False)  # prompt tokens its slot has still to evaluate


class Scheduler:
    """Scheduler(model, metrics): start(), submit(job), cancel(job), call(fn) -> Future, stop()."""

    def __init__(self, model, metrics: Metrics) -> None:
        self.model = model
        self.metrics = metrics
        generative = not getattr(model, "is_encoder", False)
        self.slots: list[GenerationJob | None] = [None] * (model.n_seq if generative else 0)
        self.waiting: deque[GenerationJob] = deque()
        self.tasks: deque[tuple[Callable, Future, int | None]] = deque()  # (work, its result, the seq it uses)
        self.stopping = False
        self._outbox: list[tuple[GenerationJob, Event]] = []  # this step's events, sent when it ends
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="qrun-serve-scheduler", daemon=True)

    # ---- the request side (any thread) ----

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    @property
    def slots_busy(self) -> int:
        return sum(job is not None for job in self.slots)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: GenerationJob) -> None:
        with self._wake:
            if self.stopping:
                raise RuntimeError("the server is shutting down")
            self.waiting.append(job)
            self._wake.notify()

    def cancel(self, job: GenerationJob) -> None:
        """The client is gone: the job leaves its slot (or the queue) at the next step."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    def call(self, work: Callable[[object], object], uses_seq: int | None = None) -> Future:
        """Run work(model) in the scheduler thread between two steps (once sequence `uses_seq` is free, when the
        work runs in that sequence's cache); the Future holds its result."""
        future: Future = Future()
        with self._wake:
            if self.stopping:
                raise RuntimeError("the server is shutting down")
            self.tasks.append((work, future, uses_seq))
            self._wake.notify()
        return future

    def stop(self) -> None:
        """Finish what is queued and running (a drain), then end the thread."""
        with self._wake:
            self.stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    # ---- the scheduler thread ----

    def _busy(self) -> bool:
        return bool(self.waiting or self.tasks or self.slots_busy)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._busy() and not self.stopping:
                    self._wake.wait()
                if not self._busy():
                    return
                tasks = [task for task in self.tasks if task[2] is None or self.slots[task[2]] is None]
                self.tasks = deque(task for task in self.tasks if task not in tasks)
            for work, future, _ in tasks:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(work(self.model))
                    except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                        future.set_exception(exc)
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a bug must not stop every other request's stream
                log.exception("scheduler step failed")
                for seq, job in enumerate(self.slots):
                    if job is not None:
                        self._fail(seq, job, "internal error in the scheduler", 500)
            self._flush()

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        self._prefill()
        batch = [
            (seq, job)
            for seq, job in enumerate(self.slots)
            if job is not None and job.stream is not None and job.stream.needs_eval
        ]
        if not batch:
            return
        started = time.perf_counter()
        try:
            rows = self.model.evaluate_batch([(seq, [job.stream.token]) for seq, job in batch])
        except Exception as exc:  # noqa: BLE001 - these requests fail; the server goes on
            for seq, job in batch:
                self._fail(seq, job, str(exc), 500)
            return
        sampled = 0
        for (seq, job), logits in zip(batch, rows):
            sampled += self._advance(seq, job, logits)
        self.metrics.step_done(sampled, time.perf_counter() - started)

    def _drop_cancelled(self) -> None:
        with self._wake:
            if any(job.cancelled for job in self.waiting):
                self.waiting = deque(job for job in self.waiting if not job.cancelled)
        for seq, job in enumerate(self.slots):
            if job is not None and job.cancelled:
                self.slots[seq] = None

    def _admit(self) -> None:
        while True:
            with self._wake:
                reserved = {task[2] for task in self.tasks}
            free = [seq for seq, job in enumerate(self.slots) if job is None and seq not in reserved]
            with self._wake:
                if not free or not self.waiting:
                    return
                job = self.waiting.popleft()
            if job.cancelled:
                continue
            caches = {seq: self.model.cached(seq) for seq in free}
            # the longest shared prefix; among equals the emptiest slot, keeping other slots' prefixes for later
            seq = max(free, key=lambda s: (shared_prefix(caches[s], job.prompt), -len(caches[s])))
            # what the slot keeps (prefill's rule: at least the last prompt token is evaluated again, for logits)
            keep = min(shared_prefix(caches[seq], job.prompt), len(job.prompt) - 1)
            if not self.model.truncate(keep, seq):
                self.model.reset(seq)
                keep = 0
            job.pending = job.prompt[keep:]
            self.slots[seq] = job

    def _prefill(self) -> None:
        """One piece of every admitted prompt; a prompt whose last piece ran starts its stream."""
        for seq, job in enumerate(self.slots):
            if job is None or not job.pending:
                continue
            piece, job.pending = job.pending[:PREFILL_CHUNK], job.pending[PREFILL_CHUNK:]
            started = time.perf_counter()
            try:
                logits = self.model.evaluate(piece, seq)
                if not job.pending:
                    job.stream = TextStream(self.model, job.prompt, constraint=job.constraint, **job.options)
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                self._fail(seq, job, str(exc), 400 if isinstance(exc, FormatError) else 500)
                continue
            self.metrics.prompt_done(len(piece), time.perf_counter() - started)
            if not job.pending and self._advance(seq, job, logits):
                self.metrics.first_token()

    def _advance(self, seq: int, job: GenerationJob, logits) -> int:
        """Sample the job's next token from `logits` and pass on its text; returns the number of tokens sampled."""
        stream = job.stream
        try:
            piece = stream.step(logits)
        except Exception as exc:  # noqa: BLE001 - a sampler or constraint failure ends this request only
            log.exception("sampling failed")
            self._fail(seq, job, f"sampling failed: {exc}", 500)
            return 0
        if piece:
            self._send(job, Piece(piece))
        if stream.finished is not None:
            tail = stream.tail()
            if tail:
                self._send(job, Piece(tail))
            self._send(job, Finished(stream.finished, len(job.prompt), len(stream.tokens)))
            self.slots[seq] = None
        return 0 if stream.token is None else 1

    def _fail(self, seq: int, job: GenerationJob, message: str, status: int) -> None:
        self._send(job, Failed(message, status))
        if self.slots[seq] is job:
            self.slots[seq] = None
        try:
            self.model.reset(seq)  # what a failed call left in this sequence's cache is not trusted
        except FormatError:
            log.exception("could not reset sequence %d", seq)

    def _send(self, job: GenerationJob, event: Event) -> None:
        self._outbox.append((job, event))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        for job, event in outbox:
            try:
                job.sink(event)
            except RuntimeError:  # the request's event loop is closed: nobody is listening
                job.cancelled = True
