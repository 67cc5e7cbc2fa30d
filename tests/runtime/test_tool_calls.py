"""Tool calls: OpenAI `tools` and tool-call conversations rendered through Qwen3's real chat template as
transformers' apply_chat_template renders them (a random qwen3 folder carrying the template, converted by qconv),
and `<tool_call>` blocks in an answer parsed into OpenAI tool calls, whole or streamed piece by piece."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from qconv.formats.errors import FormatError
from qconv.runtime.chat import render_chat_for, template_messages
from qconv.runtime.model import Model
from qconv.runtime.tool_calls import ToolCallStream, parse_tool_calls, template_has_tool_calls
from tests.conftest import have
from tests.qconv_cli import run

# Qwen3's chat template as llama.cpp keeps it (models/templates/Qwen-Qwen3-0.6B.jinja, the tokenizer_config.json
# chat_template of Qwen/Qwen3-0.6B), from the llama.cpp vendored in llama-cpp-python 0.3.36
QWEN3_TEMPLATE = (Path(__file__).parents[1] / "data" / "qwen3_chat_template.jinja").read_text()

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Zürich"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]


def openai_conversation() -> list[dict]:
    """A conversation as the openai client sends it: the assistant's calls carry their arguments as JSON text and
    no content, the results come back as `tool` messages."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather and the time in Zürich?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Zürich","unit":"celsius"}'},
                },
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"city":"Zürich"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temperature": 21, "sky": "clear"}'},
        {"role": "tool", "tool_call_id": "call_1", "content": "14:05"},
        {"role": "assistant", "content": "It is 21 °C and clear, and 14:05."},
        {"role": "user", "content": "And in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temperature": 18}'},
    ]


def hf_conversation() -> list[dict]:
    """The same conversation as transformers' chat-template docs write it: arguments as objects, content ""."""
    messages = copy.deepcopy(openai_conversation())
    for message in messages:
        if message.get("content") is None:
            message["content"] = ""
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return messages


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory) -> Path:
    from qconv.samples.synthetic import build_random_model

    folder = build_random_model(tmp_path_factory.mktemp("qwen3-tools"), arch="qwen3", hidden=64, ffn=128, vocab=512)
    # chat_template.jinja is read before tokenizer_config.json's chat_template, by transformers and qconv alike
    (folder / "chat_template.jinja").write_text(QWEN3_TEMPLATE)
    return folder


@pytest.fixture(scope="module")
def qwen3_model(qwen3_folder, tmp_path_factory) -> Model:
    out = tmp_path_factory.mktemp("qwen3-tools-gguf") / "qwen3.gguf"
    code, output = run("to-gguf", qwen3_folder, "-o", out, "--type", "f32")
    assert code == 0, output
    return Model(out, threads=1, ctx=256)


requires_transformers = pytest.mark.skipif(not have("transformers"), reason="transformers is not installed")


def test_the_gguf_carries_qwen3s_template(qwen3_model):
    assert qwen3_model.chat_template == QWEN3_TEMPLATE
    assert template_has_tool_calls(qwen3_model.chat_template)


@requires_transformers
@pytest.mark.parametrize("with_tools", [True, False])
def test_tool_conversation_renders_as_transformers_does(qwen3_folder, qwen3_model, with_tools):
    from transformers import AutoTokenizer

    tools = TOOLS if with_tools else None
    expected = AutoTokenizer.from_pretrained(qwen3_folder).apply_chat_template(
        hf_conversation(), tools=tools, add_generation_prompt=True, tokenize=False
    )
    messages = openai_conversation()
    ours = render_chat_for(qwen3_model.chat_template, qwen3_model.tokenizer, messages, True, tools=tools)
    assert ours == expected
    assert messages == openai_conversation()  # the caller's messages are left as they were
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}\n</tool_call>' in ours
    )
    assert ("# Tools" in ours) == with_tools and ('"description": "The local time in a city."' in ours) == with_tools


@requires_transformers
def test_plain_chat_still_renders_as_transformers_does(qwen3_folder, qwen3_model):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "Hi"}]
    expected = AutoTokenizer.from_pretrained(qwen3_folder).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert render_chat_for(qwen3_model.chat_template, qwen3_model.tokenizer, messages) == expected


def test_arguments_that_are_not_json_are_refused_by_message():
    messages = [
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{"}}]}
    ]
    with pytest.raises(FormatError, match=r"messages\[0\]: a tool call's arguments are not JSON"):
        template_messages(messages)


def test_messages_without_calls_pass_unchanged():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]
    assert template_messages(messages) == messages


def test_which_templates_define_tool_calls():
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert template_has_tool_calls(QWEN3_TEMPLATE)
    assert not template_has_tool_calls(chatml)
    assert not template_has_tool_calls(None)
    assert not template_has_tool_calls("{% if tools %}{{ tools | tojson }}{% endif %}")  # tools, but no <tool_call>


CALL_WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'
CALL_TIME = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>'


def weather_call(call_id: str) -> dict:
    arguments = json.dumps({"city": "Zürich"}, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def test_an_answer_of_one_call():
    content, calls = parse_tool_calls(CALL_WEATHER, id_prefix="call_7_")
    assert content == "" and calls == [weather_call("call_7_0")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Zürich"}


def test_text_and_two_calls():
    text = f"<think>\nTwo lookups.\n</think>\n\n{CALL_WEATHER}\n{CALL_TIME}\nDone."
    content, calls = parse_tool_calls(text)
    assert content == "<think>\nTwo lookups.\n</think>Done."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [c["id"] for c in calls] == ["call_0", "call_1"]


def test_plain_answers_are_left_alone():
    for text in ("", "Hello.\n", "  a < b and b > c  ", "<tool_", "x <tool_call"):
        assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>\nnot json\n</tool_call>",
        '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',
        '<tool_call>\n["f", {}]\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}}',  # never closed
    ],
)
def test_malformed_blocks_stay_text(block):
    text = f"Before.\n{block}\nAfter."
    assert parse_tool_calls(text) == (text, [])


def test_string_and_missing_arguments():
    text = '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call><tool_call>{"name": "g"}</tool_call>'
    _, calls = parse_tool_calls(text)
    assert [c["function"]["arguments"] for c in calls] == ['{"a": 1}', "{}"]


ANSWERS = [
    CALL_WEATHER,
    f"Checking.\n\n{CALL_WEATHER}\n\n{CALL_TIME}",
    f"Checking.\n{CALL_WEATHER}\nAnd <b>this</b> too.\n",
    "<tool_call>\nnot json\n</tool_call> and then " + CALL_TIME,
    "a < b, <tool_ca and " + CALL_TIME + " <tool_call>{unfinished",
    "No calls here, just text with <tags>.\n\n",
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_streamed_pieces_give_the_whole_answers_parse(answer):
    whole = parse_tool_calls(answer)
    rng = random.Random(0)
    splits = [[answer[i : i + 1] for i in range(len(answer))]]  # a character at a time
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(answer)), k=min(len(answer) - 1, rng.randint(1, 12))))
        splits.append([answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)])])
    for pieces in splits:
        stream = ToolCallStream()
        emitted = [stream.feed(piece) for piece in pieces]
        tail, calls = stream.finish()
        assert ("".join(emitted) + tail, calls) == whole
        if calls:  # nothing inside a parsed call was ever shown
            assert all('"arguments"' not in text for text in emitted)


def test_held_back_text_waits_only_for_what_could_open_a_call():
    stream = ToolCallStream()
    assert stream.feed("The answer") == "The answer"
    assert stream.feed(" is <") == " is"  # " <" could begin <tool_call>
    assert stream.feed("b>") == " <b>"
    assert stream.feed("\n") == ""  # trailing whitespace waits: it is dropped if a call comes next
    assert stream.feed('<tool_call>\n{"name": "f",') == ""
    assert stream.feed(' "arguments": {}}\n</tool_call>') == ""
    assert stream.feed("\nok") == "ok"
    tail, calls = stream.finish()
    assert tail == "" and [c["function"]["name"] for c in calls] == ["f"]
