"""Hostile and malformed requests: each of 200+ (bad JSON, wrong types, values out of range, huge max_tokens,
prompts over the context, unknown models and paths, unsupported options, bodies over the limit) gets a 4xx with
OpenAI's error object, and the server keeps answering; with --api-key, requests without the Bearer key get 401."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.conftest import CHAT_CTX, serving

MODEL_ID = "chat-q8_0.gguf"
CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 4}
EMBEDDING = {"model": MODEL_ID, "input": "Hi"}

# values each field must refuse (wrong types, out of range, unsupported), for both generation endpoints
SAMPLING_FIELDS = {
    "model": [123, None, [], {"id": MODEL_ID}, True],
    "max_tokens": ["10", -1, 0, 1.5, True, 10**12, 2**31 - 1, CHAT_CTX, [4]],
    "temperature": ["hot", -0.1, 2.5, True, [], {}],
    "top_p": [1.5, -1, "1", False],
    "seed": ["1", 1.5, 2**70, [1]],
    "stop": [5, [1, 2], ["x"] * 100, "x" * 5000, {"a": 1}, [None]],
    "n": [2, 0, -1, "1", 1.5],
    "stream": ["yes", 1, {}],
    "logprobs": [True, 5],
    "presence_penalty": [1.0, 5, "0"],
    "frequency_penalty": [-1.0, 3],
    "logit_bias": [{"1": 5.0}, "x", [1]],
    "top_k": [-1, "40", 1.5],
    "min_p": [2.0, -0.5],
    "repeat_penalty": [0, -1.0, "1"],
    "stream_options": ["x", {"include_usage": "yes"}],
}
CHAT_FIELDS = {
    "messages": [
        "hi",
        [],
        None,
        {},
        [{"role": "robot", "content": "x"}],
        [{"content": "x"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
        [{"role": "user", "content": [{"type": "text"}]}],
        [{"role": "user", "content": "word " * (2 * CHAT_CTX)}],  # over the context
        [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
        [{"role": "user", "content": "x", "tool_calls": "x"}],
    ],
    "max_completion_tokens": [0, "5", 10**10],
    "response_format": [
        "json",
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
    ],
    "tools": [
        "x",
        [{"type": "function"}],
        [{"type": "function", "function": {"name": ""}}],
        [{"type": "retrieval"}],
        [{"type": "function", "function": {"name": "f"}}],  # this template has no tool calls
    ],
    "tool_choice": ["sometimes", 5, {"type": "function"}],
    "top_logprobs": [3, "x"],
}
COMPLETION_FIELDS = {
    "prompt": [
        5,
        None,
        {},
        [["a"]],
        [-1],
        [10**6],
        [[1, 2], [3]],
        ["a", "b"],
        [],
        [1] * (CHAT_CTX + 10),
        "word " * (2 * CHAT_CTX),
    ],
    "echo": [True, "yes"],
    "suffix": ["x", 5],
    "best_of": [2, "1"],
}
EMBEDDING_FIELDS = {
    "model": [5, None, "other-model"],
    "input": [5, None, [], [[]], [-1], [[10**6]], ["x"] * 3000, [[1] * 5000], {"text": "x"}, [1.5], [None]],
    "encoding_format": ["hex", 5, None],
    "dimensions": [3, 0, "x", 1.5],
}
BAD_BODIES = [
    b"",
    b"{",
    b"not json",
    b"[]",
    b"null",
    b'"a string"',
    b"5",
    b'{"model": }',
    b"\xff\xfe\x00",
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b'{"model": "' + MODEL_ID.encode() + b'", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e99999}',
    b'{"model": "' + MODEL_ID.encode() + b'", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b'{"model": "' + MODEL_ID.encode() + b'", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 1}',
]


def hostile_requests() -> list[tuple[str, str, bytes | None]]:
    """(method, path, body) of every hostile request."""
    cases = []

    def post(path, body):
        cases.append(("POST", path, json.dumps(body).encode()))

    for path, base, fields in (
        ("/v1/chat/completions", CHAT, {**SAMPLING_FIELDS, **CHAT_FIELDS}),
        ("/v1/completions", COMPLETION, {**SAMPLING_FIELDS, **COMPLETION_FIELDS}),
        ("/v1/embeddings", EMBEDDING, EMBEDDING_FIELDS),
    ):
        for name, values in fields.items():
            for value in values:
                post(path, {**base, name: value})
        for name in base:  # each required field missing
            if name != "max_tokens":
                post(path, {k: v for k, v in base.items() if k != name})
        post(path, {**base, "model": "gpt-4o"})  # unknown model: 404
        for body in BAD_BODIES:
            cases.append(("POST", path, body))
    cases += [
        ("GET", "/v1/chat/completions", None),
        ("GET", "/v1/completions", None),
        ("POST", "/v1/models", b"{}"),
        ("GET", "/v1/models/gpt-4o", None),
        ("GET", "/v2/anything", None),
        ("DELETE", "/health", None),
        ("PUT", "/v1/embeddings", b"{}"),
        ("GET", "/../../etc/passwd", None),
    ]
    return cases


def assert_openai_error(response: httpx.Response, what: str) -> dict:
    assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, what
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), what
    return error


def test_two_hundred_hostile_requests_get_4xx_json(chat_server):
    cases = hostile_requests()
    assert len(cases) >= 200
    statuses = {}
    with httpx.Client(base_url=chat_server, timeout=60) as http:
        for method, path, body in cases:
            response = http.request(method, path, content=body, headers={"content-type": "application/json"})
            error = assert_openai_error(response, f"{method} {path} {(body or b'')[:120]!r}")
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 404 and body and b"gpt-4o" in body:
                assert error["code"] == "model_not_found" and error["param"] == "model"
        # the server still answers, and answers right
        ok = http.post("/v1/chat/completions", json={**CHAT, "temperature": 0})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
        assert http.get("/health").json() == {"status": "ok"}
        assert "qconv_slots_busy 0" in http.get("/metrics").text
    assert set(statuses) <= {400, 404, 405, 413} and statuses[400] > 150 and statuses[404] >= 3


def test_errors_name_the_field(chat_server):
    with httpx.Client(base_url=chat_server) as http:
        error = assert_openai_error(http.post("/v1/chat/completions", json={**CHAT, "temperature": "hot"}), "t")
        assert error["param"] == "temperature" and "temperature" in error["message"]
        error = assert_openai_error(
            http.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": 5}]}), "c"
        )
        assert error["param"] == "messages.[0].content"
        error = assert_openai_error(http.post("/v1/chat/completions", json={**CHAT, "n": 3}), "n")
        assert error["param"] == "n" and "n must be 1" in error["message"]
        error = assert_openai_error(http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10_000}), "m")
        assert error["code"] == "context_length_exceeded" and "maximum context length is 512" in error["message"]


def test_body_over_the_limit_is_413(chat_server):
    from qconv.runtime.server.app import MAX_BODY_BYTES

    with httpx.Client(base_url=chat_server, timeout=60) as http:
        body = b'{"model": "x", "prompt": "' + b"a" * MAX_BODY_BYTES + b'"}'
        assert_openai_error(http.post("/v1/completions", content=body), "large")
        assert http.get("/health").status_code == 200


@pytest.fixture(scope="module")
def keyed_server(chat_model):
    with serving(chat_model, MODEL_ID, api_key="sekrit") as url:
        yield url


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2Vrcml0"}, {"Authorization": "Bearer"},
     {"Authorization": "sekrit"}, {"Authorization": "Bearer sekrit2"}, {"X-Api-Key": "sekrit"}],
)  # fmt: skip
def test_api_key_required(keyed_server, headers):
    with httpx.Client(base_url=keyed_server, headers=headers) as http:
        for method, path, body in [
            ("POST", "/v1/chat/completions", CHAT),
            ("POST", "/v1/completions", COMPLETION),
            ("POST", "/v1/embeddings", EMBEDDING),
            ("GET", "/v1/models", None),
            ("GET", "/metrics", None),
            ("POST", "/v1/chat/completions", {"garbage": True}),  # the key is checked before the body
        ]:
            response = http.request(method, path, json=body)
            assert response.status_code == 401, (path, response.text)
            assert assert_openai_error(response, path)["code"] == "invalid_api_key"
        assert http.get("/health").status_code == 200  # health checks need no key


def test_the_right_key_is_let_in(keyed_server):
    import openai

    from tests.server.conftest import openai_client

    answer = openai_client(keyed_server, api_key="sekrit").chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert answer.choices[0].message.role == "assistant"
    with pytest.raises(openai.AuthenticationError):
        openai_client(keyed_server, api_key="nope").models.list()
