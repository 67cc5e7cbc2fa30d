"""The OpenAI API through the official openai client: chat and text completions (streamed and not) equal to qrun's
greedy answers, sampling options, stop strings, usage, JSON-schema output, tool calls, models, health, metrics and
decoder embeddings. One in-process server on a random llama with 8 slots."""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from qconv.runtime import Model, cli
from qconv.runtime.server.app import ChatFormat
from qconv.runtime.server.scheduler import Finished
from tests.server.conftest import CHAT_CTX, openai_client, serving

MODEL_ID = "chat-q8_0.gguf"


def qrun_json(*args) -> dict:
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def greedy(client, content: str, max_tokens: int, **extra):
    return client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        **extra,
    )


# ---- answers equal qrun's ----


@pytest.mark.parametrize("prompt", ["Hello there", "Why is the sky blue?"])
def test_chat_equals_qrun(client, chat_gguf, prompt):
    answer = greedy(client, prompt, 24)
    expected = qrun_json(chat_gguf, "--prompt", prompt, "--temp", 0, "-n", 24, "-t", 2, "-c", CHAT_CTX, "--json")
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected["text"]
    assert answer.usage.completion_tokens == len(expected["tokens"])
    assert answer.usage.prompt_tokens == expected["prompt_tokens"]
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert choice.finish_reason == ("length" if len(expected["tokens"]) == 24 else "stop")
    assert answer.model == MODEL_ID and answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")


def test_streamed_chat_equals_the_whole_answer(client):
    whole = greedy(client, "Tell me a story", 40)
    chunks = list(greedy(client, "Tell me a story", 40, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_completions_equal_qrun_raw(client, chat_gguf):
    expected = qrun_json(
        chat_gguf, "--raw", "--prompt", "Once upon a time", "--temp", 0, "-n", 20, "-c", CHAT_CTX, "--json"
    )
    whole = client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=20, temperature=0)
    assert whole.choices[0].text == expected["text"] and whole.object == "text_completion"
    assert whole.usage.prompt_tokens == expected["prompt_tokens"]
    streamed = client.completions.create(
        model=MODEL_ID, prompt="Once upon a time", max_tokens=20, temperature=0, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == expected["text"]
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_of_token_ids(client, chat_model):
    ids = chat_model.tokenize("Once upon a time")
    by_ids = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=12, temperature=0)
    by_text = client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


# ---- sampling options ----


def test_max_tokens_and_max_completion_tokens(client):
    a = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=5, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert a.usage.completion_tokens == 5 and a.choices[0].finish_reason == "length"


def test_stop_strings(client):
    full = greedy(client, "Count for me", 48, extra_body={"ignore_eos": True}).choices[0].message.content
    stop = full[10:13]
    cut = greedy(client, "Count for me", 48, stop=[stop, "never appears"], extra_body={"ignore_eos": True})
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    one = greedy(client, "Count for me", 48, stop=stop, extra_body={"ignore_eos": True})  # a string, not a list
    assert one.choices[0].message.content == cut.choices[0].message.content


def test_seeded_sampling_repeats_and_seeds_differ(client):
    def sample(seed):
        return client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=24, temperature=1.0, top_p=1.0,
            seed=seed, extra_body={"ignore_eos": True, "top_k": 0, "min_p": 0.0},
        ).choices[0].message.content  # fmt: skip

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1


def test_follow_up_turn_reuses_the_slot_prefix(client, chat_server):
    """The second turn's prompt starts with the first turn's: it is admitted to the slot holding it, and only the
    new tokens are evaluated."""
    first = greedy(client, "A first question", 8)
    messages = [
        {"role": "user", "content": "A first question"},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And a second one"},
    ]
    before = metric(chat_server, "qconv_prompt_tokens_total")
    second = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=4, temperature=0)
    evaluated = metric(chat_server, "qconv_prompt_tokens_total") - before
    assert evaluated < second.usage.prompt_tokens - first.usage.prompt_tokens + 8


# ---- constrained output ----

PERSON = {
    "type": "object",
    "properties": {
        "name": {"enum": ["Ada", "Grace", "Linus"]},
        "admin": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
        "address": {"$ref": "#/$defs/address"},
    },
    "required": ["name", "admin", "address"],
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"zip": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "null"}]}},
            "required": ["zip"],
            "additionalProperties": False,
        }
    },
}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_validate(client, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    kwargs = dict(model=MODEL_ID, max_tokens=200, temperature=0, response_format=response_format)
    messages = [{"role": "user", "content": "A person as JSON"}]
    if stream:
        chunks = list(client.chat.completions.create(messages=messages, stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        answer = client.chat.completions.create(messages=messages, **kwargs)
        text, finish = answer.choices[0].message.content, answer.choices[0].finish_reason
    assert finish == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object(client):
    answer = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "JSON please"}], max_tokens=300, temperature=0.7, seed=3,
        response_format={"type": "json_object"},
    )  # fmt: skip
    if answer.choices[0].finish_reason == "stop":  # a random model may fill its budget inside a string
        assert isinstance(json.loads(answer.choices[0].message.content), dict)
    else:
        assert answer.choices[0].finish_reason == "length"


def test_bad_schema_is_a_400(chat_server):
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "nonsense"}}},
    }
    response = httpx.post(f"{chat_server}/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format"


# ---- tool calls ----


def test_tools_need_a_template_with_tool_calls(chat_server):
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    }
    response = httpx.post(f"{chat_server}/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
    body["tool_choice"] = "none"  # the model answers without seeing them
    assert httpx.post(f"{chat_server}/v1/chat/completions", json={**body, "max_tokens": 2}).status_code == 200


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'


def test_tool_calls_whole_and_streamed():
    """ChatFormat turns `<tool_call>` blocks into tool_calls, the same whole or in pieces of any size."""
    done = Finished("stop", 10, 20)
    answer = "Let me look. " + CALL
    whole = ChatFormat("m", tool_calls=True).whole(answer, done)
    message = whole["choices"][0]["message"]
    assert whole["choices"][0]["finish_reason"] == "tool_calls" and message["content"] == "Let me look."
    call = message["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Zürich"}'} and call["type"] == "function"
    for size in (1, 3, 7, len(answer)):
        fmt = ChatFormat("m", tool_calls=True)
        chunks = [c for i in range(0, len(answer), size) for c in fmt.piece(answer[i : i + size])]
        chunks += fmt.end(done, include_usage=False)
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert "".join(d.get("content", "") for d in deltas) == "Let me look."
        streamed = [d["tool_calls"] for d in deltas if "tool_calls" in d]
        assert streamed == [[{"index": 0, **call, "id": streamed[0][0]["id"]}]]
        assert streamed[0][0]["id"].startswith("call_") and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    plain = ChatFormat("m", tool_calls=True).whole("no calls here", done)
    assert plain["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in plain["choices"][0]["message"]


class ScriptedModel:
    """A SequenceModel over a real one whose generated tokens are a script: the caches, tokenizer and template are
    the real model's, each logits row puts the script's next token first (then end of generation)."""

    def __init__(self, model, script: list[int]) -> None:
        self.model = model
        self.script = script + [model.tokenizer.eos]
        self.position = [0] * model.n_seq
        for name in ("tokenizer", "n_vocab", "n_ctx", "n_seq", "chat_template", "tokenize", "render_chat",
                     "cached", "truncate", "reset"):  # fmt: skip
            setattr(self, name, getattr(model, name))

    def _next(self, seq: int) -> np.ndarray:
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        logits[self.script[min(self.position[seq], len(self.script) - 1)]] = 10.0
        self.position[seq] += 1
        return logits

    def evaluate(self, tokens, seq: int = 0, all_logits: bool = False):
        self.model.evaluate(tokens, seq)
        self.position[seq] = 0  # a prompt: the script starts over
        return self._next(seq)

    def evaluate_batch(self, steps):
        self.model.evaluate_batch(steps)
        return [self._next(seq) for seq, _ in steps]


@pytest.fixture(scope="module")
def qwen3_gguf(tmp_path_factory):
    from qconv.converter.convert import convert_to_gguf
    from qconv.samples.synthetic import build_random_model
    from tests.runtime.test_tool_calls import QWEN3_TEMPLATE

    folder = build_random_model(tmp_path_factory.mktemp("qwen3"), arch="qwen3", hidden=64, ffn=128, vocab=512)
    (folder / "chat_template.jinja").write_text(QWEN3_TEMPLATE)
    return convert_to_gguf(folder, folder.parent / "qwen3.gguf", "q8_0", progress=False).out_path


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_through_the_server(qwen3_gguf, stream):
    """A qwen3 template renders the tools; the model's `<tool_call>` block comes back as tool_calls."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with Model(qwen3_gguf, threads=1, ctx=1024, n_seq=2) as model:
        scripted = ScriptedModel(model, model.tokenize("Checking.\n" + CALL, add_special=False))
        with serving(scripted, "qwen3") as url:
            client = openai_client(url)
            args = dict(model="qwen3", messages=[{"role": "user", "content": "Weather in Zürich?"}], tools=tools)
            plain = client.chat.completions.create(model="qwen3", messages=args["messages"], max_tokens=1)
            if not stream:
                answer = client.chat.completions.create(**args)
                message, finish = answer.choices[0].message, answer.choices[0].finish_reason
                calls = message.tool_calls
                content = message.content
                assert answer.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools are in the prompt
            else:
                chunks = list(client.chat.completions.create(stream=True, **args))
                content = "".join(c.choices[0].delta.content or "" for c in chunks)
                calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
                finish = chunks[-1].choices[0].finish_reason
    assert finish == "tool_calls" and content == "Checking."
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Zürich"} and calls[0].id


# ---- models, health, metrics ----


def test_models_and_health(client, chat_server):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).owned_by == "qconv"
    assert httpx.get(f"{chat_server}/health").json() == {"status": "ok"}


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


def test_metrics(client, chat_server):
    greedy(client, "Hi", 6, extra_body={"ignore_eos": True})
    response = httpx.get(f"{chat_server}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("requests_total", "prompt_tokens_total", "generated_tokens_total", "generation_tokens_per_second",
                 "queue_length", "slots_busy", "slots_total"):  # fmt: skip
        assert f"# TYPE qconv_{name} " in text
    assert 'qconv_requests_total{endpoint="/v1/chat/completions",code="200"}' in text
    assert metric(chat_server, "qconv_generated_tokens_total") >= 6
    assert metric(chat_server, "qconv_generation_tokens_per_second") > 0
    assert metric(chat_server, "qconv_slots_total") == 8 and metric(chat_server, "qconv_queue_length") == 0


# ---- embeddings (a decoder: mean pooling) ----


def test_decoder_embeddings_float_and_base64(client, chat_server, chat_gguf):
    texts = ["The quick brown fox", "jumps over the lazy dog", "!"]
    with Model(chat_gguf, threads=2) as reference:
        expected = reference.embed(texts)
    default = client.embeddings.create(model=MODEL_ID, input=texts)  # the client asks for base64
    as_float = client.embeddings.create(model=MODEL_ID, input=texts, encoding_format="float")
    for response in (default, as_float):
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert [d.index for d in response.data] == [0, 1, 2]
        np.testing.assert_array_equal(got, expected)
        assert response.usage.prompt_tokens == response.usage.total_tokens > 0
    raw = httpx.post(
        f"{chat_server}/v1/embeddings", json={"model": MODEL_ID, "input": "x", "encoding_format": "base64"}
    )
    vector = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (expected.shape[1],)


def test_embedding_between_chats_leaves_them_unchanged(client):
    """A decoder embeds in sequence 0's cache: the scheduler waits for that slot and the next chat is unchanged."""
    before = greedy(client, "Hello there", 16).choices[0].message.content
    client.embeddings.create(model=MODEL_ID, input=["something else entirely"] * 3)
    assert greedy(client, "Hello there", 16).choices[0].message.content == before
