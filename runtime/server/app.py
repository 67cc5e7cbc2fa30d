"""The HTTP side of `qrun serve`: OpenAI's routes over FastAPI, each request turned into a job for the scheduler.

Prompts are built exactly as `qrun` builds them (the model's chat template through render_chat, then tokenize with
specials), and the same TextStream samples them, so a greedy answer here is `qrun --temp 0`'s answer. Sampling
fields left out take TextStream's defaults, which are qrun's (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05),
as llama-server takes its own.

Every error is OpenAI's JSON, {"error": {"message", "type", "param", "code"}}: a body that does not parse or
validate is 400, a model other than the one served 404, a prompt and max_tokens over the context 400
(context_length_exceeded), a missing or wrong Bearer key (with --api-key) 401, a server fault 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from qconv.formats.errors import FormatError
from qconv.runtime.server.metrics import CONTENT_TYPE, Metrics
from qconv.runtime.server.scheduler import Failed, Finished, GenerationJob, Piece, Scheduler
from qconv.runtime.server.schemas import (
    MAX_TEXTS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerationRequest,
)
from qconv.runtime.tool_calls import ToolCallStream, parse_tool_calls, template_has_tool_calls

log = logging.getLogger("qconv.serve")

MAX_BODY_BYTES = 32 << 20  # a request body larger than this is refused (413) before it is read whole
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n")  # TextStream's names
SHOWN_CHARS = 100  # of a client's value quoted back in an error
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/health",
    "/metrics",
)
CLIENT_GONE = 499  # nginx's code for a client that closed the connection; never sent, only counted


class ApiError(Exception):
    """An error answered as OpenAI's JSON error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _param(loc) -> str | None:
    """OpenAI's `param` for an error location: field names and [indexes], up to pydantic's name for the member
    of a union it was trying (`str`, `list[...]`, a class name)."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in UNION_TAGS or not all(c.islower() or c.isdigit() or c == "_" for c in part):
            break
        elif part != "body":
            parts.append(part)
    return ".".join(parts) or None


def validation_error(exc: ValidationError | RequestValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    param = _param(first.get("loc", ()))
    message = f"{param}: {first['msg']}" if param else first["msg"]
    if len(exc.errors()) > 1:
        message += f" (and {len(exc.errors()) - 1} more)"
    return ApiError(400, message, param=param, code="invalid_value" if param else "invalid_json")


class ServedModel:
    """What the routes share: the model, its name, the scheduler that owns it, the counters and the key."""

    def __init__(self, model, model_id: str, api_key: str | None = None) -> None:
        self.model = model
        self.model_id = model_id
        self.api_key = api_key
        self.created = int(time.time())
        self.metrics = Metrics()
        self.scheduler = Scheduler(model, self.metrics)
        self.metrics.add_gauge("queue_length", "Requests waiting for a slot.", lambda: self.scheduler.queue_length)
        self.metrics.add_gauge("slots_busy", "Slots (KV sequences) generating now.", lambda: self.scheduler.slots_busy)
        self.metrics.add_gauge("slots_total", "Slots (KV sequences) the model holds.", lambda: self.scheduler.n_slots)

    @property
    def generative(self) -> bool:
        return self.scheduler.n_slots > 0

    def check_model(self, name: str) -> None:
        if name != self.model_id:
            raise ApiError(
                404,
                f"The model '{_shown(name)}' does not exist: this server serves '{self.model_id}'",
                param="model",
                code="model_not_found",
            )


def create_app(model, model_id: str, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving `model` (a Model or OnnxModel, loaded by the caller, who also closes it) as
    `model_id`. Its lifespan starts the scheduler thread and, at shutdown, lets it finish what is running."""
    served = ServedModel(model, model_id, api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(served.scheduler.stop)

    app = FastAPI(title="qrun serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = served
    _install_error_handlers(app)
    app.add_middleware(RequestCounter, metrics=served.metrics)

    def authorized(request: Request) -> None:
        if served.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), served.api_key.encode()):
            raise ApiError(
                401, "Missing or incorrect API key: send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    keyed = [Depends(authorized)]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", dependencies=keyed)
    async def metrics() -> Response:
        return Response(served.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=keyed)
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(served)]}

    @app.get("/v1/models/{name:path}", dependencies=keyed)
    async def get_model(name: str) -> dict:
        served.check_model(name)
        return _model_card(served)

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat_completions(request: Request) -> Response:
        body = await _parse(request, ChatCompletionRequest)
        served.check_model(body.model)
        tools = _tools(served, body)
        prompt = await run_in_threadpool(_chat_prompt, served, body, tools)
        constraint = await run_in_threadpool(_constraint, served, body)
        job_options = _sampling(served, body, prompt, "messages", body.max_completion_tokens or body.max_tokens)
        answer = ChatFormat(served.model_id, tool_calls=tools is not None)
        return await _respond(request, served, body, prompt, job_options, constraint, answer)

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(request: Request) -> Response:
        body = await _parse(request, CompletionRequest)
        served.check_model(body.model)
        prompt = await run_in_threadpool(_completion_prompt, served, body)
        job_options = _sampling(served, body, prompt, "prompt", body.max_tokens)
        return await _respond(request, served, body, prompt, job_options, None, CompletionFormat(served.model_id))

    @app.post("/v1/embeddings", dependencies=keyed)
    async def embeddings(request: Request) -> Response:
        body = await _parse(request, EmbeddingRequest)
        served.check_model(body.model)
        return JSONResponse(await _embed(served, body))

    return app


def _shown(value: str) -> str:
    return value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + f"... ({len(value)} characters)"


def _model_card(served: ServedModel) -> dict:
    return {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "qconv"}


# ---- errors and request counting ----


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {message}").response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return ApiError(500, f"internal server error: {type(exc).__name__}").response()


class RequestCounter:
    """Counts answered requests by endpoint and status code (plain ASGI: streamed answers pass untouched)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "/v1/models" if path.startswith("/v1/models/") else "other"
        status = [CLIENT_GONE]

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.request_done(endpoint, status[0])


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {MAX_BODY_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over the limit of {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse(request: Request, schema):
    raw = await _read_body(request)
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None


# ---- prompts ----


def _refuse_unsupported(body: GenerationRequest) -> None:
    if body.n != 1:
        raise ApiError(400, f"n must be 1 (this server generates one choice per request), found {body.n}", param="n")
    if body.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported", param="logit_bias")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise ApiError(400, f"{name} is not supported (use repeat_penalty)", param=name)


def _check_generative(served: ServedModel) -> None:
    if not served.generative:
        raise ApiError(400, f"'{served.model_id}' is an embedding model: use /v1/embeddings", param="model")


def _chat_messages(body: ChatCompletionRequest) -> list[dict]:
    """The messages as a chat template reads them (Hugging Face's apply_chat_template input)."""
    messages = []
    for message in body.messages:
        role = "system" if message.role == "developer" else message.role  # templates know no "developer"
        entry: dict = {"role": role, "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            entry["tool_calls"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
        messages.append(entry)
    return messages


def _chat_prompt(served: ServedModel, body: ChatCompletionRequest, tools: list[dict] | None) -> list[int]:
    _check_generative(served)
    _refuse_unsupported(body)
    if body.top_logprobs:
        raise ApiError(400, "top_logprobs are not supported", param="top_logprobs")
    model = served.model
    if model.chat_template is None:
        raise ApiError(400, f"'{served.model_id}' has no chat template: use /v1/completions", param="messages")
    try:
        if tools is not None:
            text = model.render_chat(_chat_messages(body), add_generation_prompt=True, tools=tools)
        else:
            text = model.render_chat(_chat_messages(body), add_generation_prompt=True)
        return model.tokenize(text)  # as qrun: the template's specials parsed, BOS as the vocabulary says
    except FormatError as exc:
        raise ApiError(400, str(exc), param="messages") from None


def _tools(served: ServedModel, body: ChatCompletionRequest) -> list[dict] | None:
    """The request's tools as the chat template takes them; None when there are none or tool_choice is "none"
    (the model then answers without seeing them)."""
    if not body.tools or body.tool_choice == "none":
        return None
    if body.tool_choice not in (None, "auto"):
        raise ApiError(400, "tool_choice 'required' or a named function is not supported", param="tool_choice")
    if not template_has_tool_calls(served.model.chat_template):
        raise ApiError(
            400, f"'{served.model_id}': its chat template defines no <tool_call> format for tools", param="tools"
        )
    return [tool.model_dump(exclude_none=True) for tool in body.tools]


def _completion_prompt(served: ServedModel, body: CompletionRequest) -> list[int]:
    _check_generative(served)
    _refuse_unsupported(body)
    if body.echo or body.suffix is not None or (body.best_of or 1) != 1:
        param = "echo" if body.echo else "suffix" if body.suffix is not None else "best_of"
        raise ApiError(400, f"{param} is not supported", param=param)
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            raise ApiError(400, f"one prompt per request, found {len(prompt)}", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        try:
            tokens = served.model.tokenize(prompt)  # as qrun --raw
        except FormatError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
    else:
        tokens = list(prompt)
        bad = next((t for t in tokens if t >= served.model.n_vocab), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary of {served.model.n_vocab}", param="prompt")
    if not tokens:
        raise ApiError(400, "the prompt is empty", param="prompt")
    return tokens


def _constraint(served: ServedModel, body: ChatCompletionRequest):
    response_format = body.response_format
    if response_format is None or response_format.type == "text":
        return None
    schema = None
    if response_format.type == "json_schema":
        if response_format.json_schema is None or response_format.json_schema.schema_ is None:
            raise ApiError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        schema = response_format.json_schema.schema_
    from qconv.runtime.constrained import JsonConstraint

    try:
        return JsonConstraint.for_schema(served.model.tokenizer, schema)
    except (FormatError, ValueError, TypeError) as exc:
        raise ApiError(400, f"response_format: {exc}", param="response_format") from None


def _sampling(served: ServedModel, body: GenerationRequest, prompt: list[int], what: str, requested) -> dict:
    """TextStream's options for this request; the prompt and the answer must fit a slot's context."""
    n_ctx = served.model.n_ctx
    if len(prompt) >= n_ctx or (requested is not None and len(prompt) + requested > n_ctx):
        wanted = (
            f"{len(prompt) + (requested or 1)} tokens ({len(prompt)} in the {what}, {requested or 1} in the completion)"
        )
        raise ApiError(
            400,
            f"This model's maximum context length is {n_ctx} tokens. However, you requested {wanted}. "
            f"Please reduce the length of the {what} or completion.",
            param=what,
            code="context_length_exceeded",
        )
    options = {name: getattr(body, name) for name in SAMPLING_FIELDS if getattr(body, name) is not None}
    options.update(
        max_tokens=requested if requested is not None else n_ctx - len(prompt),
        seed=(body.seed % 2**64) if body.seed is not None else secrets.randbits(32),
        stop=tuple(body.stops()),
        ignore_eos=body.ignore_eos,
    )
    return options


# ---- answers ----


class ChatFormat:
    """chat.completion objects, whole or as chat.completion.chunk events; with tools, `<tool_call>` blocks in the
    answer become tool_calls (runtime/tool_calls.py), streamed once each block has closed."""

    def __init__(self, model_id: str, tool_calls: bool = False) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.model_id = model_id
        self.created = int(time.time())
        self.tool_calls = ToolCallStream(f"call_{secrets.token_hex(6)}_") if tool_calls else None

    def _chunk(self, delta: dict | None, finish_reason: str | None = None) -> dict:
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id,
                "choices": choices}  # fmt: skip

    def start(self) -> list[dict]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def piece(self, text: str) -> list[dict]:
        if self.tool_calls is not None:
            text = self.tool_calls.feed(text)
        return [self._chunk({"content": text})] if text else []

    def end(self, finished: Finished, include_usage: bool) -> list[dict]:
        chunks, reason = [], finished.reason
        if self.tool_calls is not None:
            tail, calls = self.tool_calls.finish()
            if tail:
                chunks.append(self._chunk({"content": tail}))
            if calls:
                indexed = [{"index": i, **call} for i, call in enumerate(calls)]
                chunks.append(self._chunk({"tool_calls": indexed}))
                reason = "tool_calls"
        chunks.append(self._chunk({}, reason))
        if include_usage:
            chunks.append({**self._chunk(None), "usage": _usage(finished)})
        return chunks

    def whole(self, text: str, finished: Finished) -> dict:
        message: dict = {"role": "assistant", "content": text}
        reason = finished.reason
        if self.tool_calls is not None:
            content, calls = parse_tool_calls(text, self.tool_calls.id_prefix)
            if calls:
                message = {"role": "assistant", "content": content or None, "tool_calls": calls}
                reason = "tool_calls"
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_id,
                "choices": [choice], "usage": _usage(finished)}  # fmt: skip


class CompletionFormat:
    """text_completion objects, whole or streamed."""

    def __init__(self, model_id: str) -> None:
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.model_id = model_id
        self.created = int(time.time())

    def _object(self, text: str | None, finish_reason: str | None = None) -> dict:
        choices = [] if text is None else [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_id,
                "choices": choices}  # fmt: skip

    def start(self) -> list[dict]:
        return []

    def piece(self, text: str) -> list[dict]:
        return [self._object(text)]

    def end(self, finished: Finished, include_usage: bool) -> list[dict]:
        chunks = [self._object("", finished.reason)]
        if include_usage:
            chunks.append({**self._object(None), "usage": _usage(finished)})
        return chunks

    def whole(self, text: str, finished: Finished) -> dict:
        return {**self._object(text, finished.reason), "usage": _usage(finished)}


def _usage(finished: Finished) -> dict:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def _sse(data: dict | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


def _failed_error(event: Failed) -> ApiError:
    return ApiError(event.status, event.message)


class Mailbox:
    """Events from the scheduler thread to one event loop's request queues, with one wake-up of the loop per burst
    (a decode step of N streams posts N events; waking the loop N times costs more than handing them over)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.posted: list[tuple[asyncio.Queue, object]] = []

    def post(self, queue: asyncio.Queue, event) -> None:
        with self.lock:
            self.posted.append((queue, event))
            if len(self.posted) > 1:
                return  # a delivery is scheduled already
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            posted, self.posted = self.posted, []
        for queue, event in posted:
            queue.put_nowait(event)


_MAILBOXES: dict[asyncio.AbstractEventLoop, Mailbox] = {}


def _mailbox() -> Mailbox:
    loop = asyncio.get_running_loop()
    if loop not in _MAILBOXES:
        for old in [old for old in _MAILBOXES if old.is_closed()]:
            del _MAILBOXES[old]
        _MAILBOXES[loop] = Mailbox(loop)
    return _MAILBOXES[loop]


async def _respond(request, served, body, prompt, options, constraint, answer) -> Response:
    mailbox = _mailbox()
    events: asyncio.Queue = asyncio.Queue()

    def sink(event) -> None:
        if mailbox.loop.is_closed():
            raise RuntimeError("the request's event loop is closed")
        mailbox.post(events, event)

    job = GenerationJob(prompt, options, sink, constraint)
    try:
        served.scheduler.submit(job)
    except RuntimeError:
        raise ApiError(503, "the server is shutting down", code="server_shutting_down") from None
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return JobStream(served.scheduler, job, _stream_events(events, answer, include_usage))
    return await _whole_answer(request, served.scheduler, job, events, answer)


async def _next_events(events: asyncio.Queue) -> list:
    """The next event and those queued behind it, consecutive pieces joined: a client (or a loop) that fell behind
    gets fewer, longer deltas of the same text."""
    out = [await events.get()]
    while not events.empty():
        event = events.get_nowait()
        if isinstance(event, Piece) and isinstance(out[-1], Piece):
            out[-1] = Piece(out[-1].text + event.text)
        else:
            out.append(event)
    return out


async def _stream_events(events: asyncio.Queue, answer, include_usage: bool) -> AsyncIterator[str]:
    for chunk in answer.start():
        yield _sse(chunk)
    ended = False
    while not ended:
        text = ""
        for event in await _next_events(events):
            if isinstance(event, Piece):
                text += "".join(_sse(chunk) for chunk in answer.piece(event.text))
                continue
            if isinstance(event, Finished):
                text += "".join(_sse(chunk) for chunk in answer.end(event, include_usage))
            else:  # the status line is sent already: the error goes as an event, as OpenAI's streams do
                error = _failed_error(event)
                text += _sse({"error": {"message": error.message, "type": error.kind, "param": None, "code": None}})
            ended = True
            break
        if text:
            yield text
    yield _sse("[DONE]")


class JobStream(StreamingResponse):
    """Server-sent events of one job; however the stream ends (done, client gone, server stopping), the job
    leaves the scheduler."""

    def __init__(self, scheduler: Scheduler, job: GenerationJob, content: AsyncIterator[str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.scheduler = scheduler
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.scheduler.cancel(self.job)


async def _whole_answer(request: Request, scheduler: Scheduler, job, events: asyncio.Queue, answer) -> Response:
    watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, scheduler, job, events))
    pieces = []
    try:
        while True:
            event = await events.get()
            if isinstance(event, Piece):
                pieces.append(event.text)
            elif isinstance(event, Finished):
                return JSONResponse(answer.whole("".join(pieces), event))
            else:
                raise _failed_error(event)
    finally:
        watcher.cancel()
        scheduler.cancel(job)  # a no-op when it finished


async def _cancel_on_disconnect(receive: Callable, scheduler: Scheduler, job, events: asyncio.Queue) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scheduler.cancel(job)
    events.put_nowait(Failed("the client disconnected", CLIENT_GONE))


# ---- embeddings ----


async def _embed(served: ServedModel, body: EmbeddingRequest) -> dict:
    model = served.model
    if not hasattr(model, "embed"):
        raise ApiError(400, f"'{served.model_id}' gives no embeddings", param="model")
    n_embd = model.n_embd
    if body.dimensions is not None and body.dimensions != n_embd:
        raise ApiError(
            400, f"dimensions: this model's vectors have {n_embd}, found {body.dimensions}", param="dimensions"
        )
    inputs = body.input
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    if not inputs:
        raise ApiError(400, "input is empty", param="input")
    if len(inputs) > MAX_TEXTS:
        raise ApiError(400, f"at most {MAX_TEXTS} inputs per request, found {len(inputs)}", param="input")
    ids = await run_in_threadpool(_embedding_ids, served, inputs)
    if hasattr(model, "embed_tokens"):
        work = lambda m: m.embed_tokens(ids)  # noqa: E731
    else:
        work = lambda m: m.embed(inputs)  # noqa: E731
    try:
        vectors = await asyncio.wrap_future(served.scheduler.call(work))
    except RuntimeError:
        raise ApiError(503, "the server is shutting down", code="server_shutting_down") from None
    except FormatError as exc:
        raise ApiError(400, str(exc), param="input") from None
    served.metrics.texts_embedded(len(inputs))
    n_tokens = sum(len(seq) for seq in ids)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(vector, body.encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": served.model_id,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }


def _embedding_ids(served: ServedModel, inputs: list) -> list[list[int]]:
    """Each input's ids as the model sees them: texts tokenized with the vocabulary's specials and cut to the
    model's embedding length (as Hugging Face truncates); token-id inputs checked, not cut."""
    model = served.model
    limit = getattr(model, "embed_max_tokens", None) or model.max_tokens  # Model / OnnxEncoder
    if isinstance(inputs[0], str):
        ids = [model.tokenizer.encode_truncated(text, limit) for text in inputs]
        empty = next((i for i, seq in enumerate(ids) if not seq), None)
        if empty is not None:
            raise ApiError(400, f"input {empty} is empty (no tokens)", param="input")
        return ids
    if not hasattr(model, "embed_tokens"):
        raise ApiError(400, f"'{served.model_id}' takes texts, not token ids", param="input")
    for i, seq in enumerate(inputs):
        if not 0 < len(seq) <= limit:
            raise ApiError(400, f"input {i}: {len(seq)} tokens, expected 1 to {limit}", param="input")
        bad = next((t for t in seq if t >= model.n_vocab), None)
        if bad is not None:
            raise ApiError(
                400, f"input {i}: token id {bad} is outside the vocabulary of {model.n_vocab}", param="input"
            )
    return inputs


def _encode_vector(vector: np.ndarray, encoding_format: str):
    if encoding_format == "base64":  # what the openai client asks for: little-endian float32 bytes
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()
