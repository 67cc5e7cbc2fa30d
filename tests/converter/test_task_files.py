"""User task files: every load error is one FILE:LINE line, each check passes and fails as it should, and prompts are
the tokens `qrun --prompt` would feed."""

from __future__ import annotations

import json
import re

import pytest

from qconv.converter.quality import task_files as tf
from qconv.formats.errors import FormatError
from tests.conftest import have

needs_runtime = pytest.mark.skipif(not have("qconv.runtime.model"), reason="the runtime's Model is not built yet")

GOOD = {"capability": "sql", "prompt": "Write a query", "expected": "SELECT"}
JSON_TASK = {"capability": "tools", "prompt": "Call a tool", "check": "json"}


def write_lines(path, *lines) -> str:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def task(**fields) -> tf.UserTask:
    defaults = dict(capability="t", prompt="p", messages=None, expected=None, check="contains", schema=None)
    defaults |= dict(max_tokens=64, raw=False, source="t.jsonl:1", id=None)
    return tf.UserTask(**(defaults | fields))


def test_items_load_in_file_order_and_files_merge(tmp_path):
    first = write_lines(
        tmp_path / "a.jsonl",
        GOOD,
        "",
        {"capability": "tools", "messages": [{"role": "user", "content": "hi"}], "check": "json", "id": "t1"},
        {**GOOD, "expected": "FROM", "check": "exact", "max_tokens": 7, "raw": True},
    )
    second = write_lines(tmp_path / "b.jsonl", {**GOOD, "expected": "WHERE"})
    tasks = tf.load_task_files([first, second])
    assert list(tasks) == ["sql", "tools"]
    assert [t.expected for t in tasks["sql"]] == ["SELECT", "FROM", "WHERE"]
    assert [t.source for t in tasks["sql"]] == [f"{first}:1", f"{first}:4", f"{second}:1"]
    sql = tasks["sql"][1]
    assert (sql.check, sql.max_tokens, sql.raw, sql.prompt, sql.messages) == ("exact", 7, True, "Write a query", None)
    tools = tasks["tools"][0]
    assert tools.messages == ({"role": "user", "content": "hi"},) and tools.prompt is None
    assert (tools.expected, tools.check, tools.id, tools.max_tokens) == (None, "json", "t1", 64)
    assert tasks["sql"][0].check == "contains"


ONE_LINE_ERRORS = [
    ("not json", r":2: not JSON: .* \(one JSON object per line\)"),
    ("[1, 2]", r":2: a JSON list, not an object \(one JSON object per line\)"),
    ({"prompt": "x", "expected": "y"}, r":2: no capability \("),
    ({"capability": "c", "prompt": "x"}, r":2: no expected \(\"expected\": a string, required for check contains"),
    ({**GOOD, "messages": [{"role": "user", "content": "x"}]}, r":2: both prompt and messages \(exactly one"),
    ({"capability": "c", "expected": "y"}, r":2: no prompt or messages \(exactly one"),
    ({**GOOD, "expect": "y"}, r":2: unknown key 'expect' \(keys: capability, prompt, "),
    ({**GOOD, "check": "fuzzy"}, r":2: check \"fuzzy\" \(one of exact, contains, regex, number, json\)"),
    ({**GOOD, "check": ["exact"]}, r":2: check \[\"exact\"\] \(one of exact"),
    ({**GOOD, "check": "regex", "expected": "(unclosed"}, r":2: expected is not a regular expression"),
    ({**GOOD, "check": "number", "expected": "forty"}, r":2: expected 'forty' is not a number"),
    ({**GOOD, "check": "number", "expected": "nan"}, r":2: expected 'nan' is not a number"),
    ({**GOOD, "check": "json", "expected": "{oops"}, r":2: expected is not JSON"),
    ({**JSON_TASK, "schema": {"type": 12}}, r":2: schema is not a valid JSON Schema"),
    ({**JSON_TASK, "schema": ["object"]}, r":2: schema is \[\"object\"\] \(a JSON Schema object"),
    ({**GOOD, "schema": {"type": "object"}}, r":2: a schema with check contains \(schema only with check json"),
    (
        {**JSON_TASK, "expected": "[1]", "schema": {"type": "object"}},
        r":2: expected does not satisfy the schema",
    ),
    ({**GOOD, "max_tokens": 0}, r":2: max_tokens is 0 \(an integer from 1 to 4096\)"),
    ({**GOOD, "max_tokens": 4097}, r":2: max_tokens is 4097 \("),
    ({**GOOD, "max_tokens": "64"}, r":2: max_tokens is \"64\" \("),
    ({**GOOD, "max_tokens": True}, r":2: max_tokens is true \("),
    ({**GOOD, "raw": "yes"}, r":2: raw is \"yes\" \(true or false\)"),
    ({**GOOD, "id": 3}, r":2: id is 3 \(a string\)"),
    ({**GOOD, "expected": 42}, r":2: expected is 42 \(a string\)"),
    ({**GOOD, "prompt": ""}, r":2: prompt is \"\" \(a non-empty string\)"),
    ({"capability": "c", "expected": "y", "messages": "hi"}, r":2: messages is \"hi\" \(a non-empty list of"),
    ({"capability": "c", "expected": "y", "messages": []}, r":2: messages is \[\] \("),
    ({"capability": "c", "expected": "y", "messages": ["hi"]}, r":2: messages\[0\] is \"hi\" \("),
    ({"capability": "c", "expected": "y", "messages": [{"role": "user"}]}, r":2: messages\[0\].content is null"),
    ({"capability": "c", "expected": "y", "messages": [{"role": 1, "content": "x"}]}, r":2: messages\[0\].role"),
    ({**GOOD, "capability": "has space"}, r":2: capability \"has space\" \(1 to 64 characters of"),
    ({**GOOD, "capability": "x" * 65}, r":2: capability \"x{65}\" \("),
    ({**GOOD, "capability": ""}, r":2: capability \"\" \("),
    ({**GOOD, "capability": "maths"}, r":2: capability 'maths' is the name of a built-in suite \("),
    ({**GOOD, "capability": "none"}, r":2: capability 'none' is the name of a built-in suite \("),
]


@pytest.mark.parametrize("line, message", ONE_LINE_ERRORS, ids=[m.split(": ")[1][:40] for _, m in ONE_LINE_ERRORS])
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "tasks.jsonl", GOOD, line, GOOD)
    with pytest.raises(FormatError) as caught:
        tf.load_task_files([path])
    text = str(caught.value)
    assert "\n" not in text
    assert re.match(re.escape(path) + message, text), text


def test_file_level_errors(tmp_path):
    with pytest.raises(FormatError, match=r"missing\.jsonl: no such file$"):
        tf.load_task_files([tmp_path / "missing.jsonl"])
    empty = write_lines(tmp_path / "empty.jsonl", "", "  ")
    with pytest.raises(FormatError, match=r"empty\.jsonl: no items \(one JSON object per line\)$"):
        tf.load_task_files([empty])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"capability": "caf\xe9"}\n')
    with pytest.raises(FormatError, match=r"latin\.jsonl:2: not UTF-8 \(byte 20 of the line\) \(UTF-8 text\)$"):
        tf.load_task_files([latin])
    with pytest.raises(FormatError, match=r": not a file"):
        tf.load_task_files([tmp_path])


def test_size_limits(tmp_path, monkeypatch):
    long_line = write_lines(tmp_path / "long.jsonl", GOOD, {**GOOD, "prompt": "x" * (1 << 20)})
    with pytest.raises(FormatError, match=r"long\.jsonl:2: the line is \d+ bytes \(at most 1048576 bytes, 1 MiB\)$"):
        tf.load_task_files([long_line])
    monkeypatch.setattr(tf, "MAX_FILE_BYTES", 100)
    big = write_lines(tmp_path / "big.jsonl", GOOD, GOOD)
    with pytest.raises(FormatError, match=r"big\.jsonl: \d+ bytes \(at most 100 bytes"):
        tf.load_task_files([big])


def test_a_byte_order_mark_and_crlf_lines_are_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n\r\n" + json.dumps(GOOD).encode() + b"\r\n")
    assert [t.source for t in tf.load_task_files(path)["sql"]] == [f"{path}:1", f"{path}:3"]


def test_exact_and_contains():
    exact = task(check="exact", expected=" Paris ")
    assert tf.check_answer(exact, "Paris\n")
    assert not tf.check_answer(exact, "Paris.")
    contains = task(expected="Paris")
    assert tf.check_answer(contains, "The capital is Paris.")
    assert not tf.check_answer(contains, "The capital is paris.")


def test_regex():
    regex = task(check="regex", expected=r"\bSELECT\b.*\bFROM\b")
    assert tf.check_answer(regex, "sure: SELECT name FROM users;")
    assert not tf.check_answer(regex, "SELECTED FROM")


@pytest.mark.parametrize(
    "expected, answer, passes",
    [
        ("1234.5", "The total is 1,234.5 dollars.", True),
        ("1234.5", "1,234.50", True),
        ("1234.5", "1234.5", True),
        ("1234.5", "1,234", False),
        ("-3", "it is -3, then 5", True),
        ("5", "it is -3, then 5", False),  # the first number counts
        ("42", "42.", True),
        ("0.1", "0.30000000000000004 - 0.2", False),
        ("1", "1,2345", True),  # a comma group is three digits: 1, then 2345
        ("1000000", "1,000,000", True),
        ("7", "no number here", False),
        ("3", "3.0000000000001", True),  # within 1e-9 relative
        ("3", "3.001", False),
    ],
)
def test_number(expected, answer, passes):
    assert tf.check_answer(task(check="number", expected=expected), answer) is passes


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.mark.parametrize(
    "expected, schema, answer, passes",
    [
        ('{"name": "get_weather"}', None, 'Here it is:\n```json\n{"name": "get_weather"}\n```', True),
        ('{"name": "get_weather"}', None, '```\n{"name": "get_time"}\n```', False),
        ('{"a": 1}', None, '{"a": 1.0}', True),
        ('{"a": 1}', None, '{"a": true}', False),  # JSON true is not 1, as Python's == would say
        ("[1, 2]", None, "the list [1, 2] and {}", True),
        (None, SCHEMA, '```json\n{"name": "x", "extra": 1}\n```', True),
        (None, SCHEMA, '{"name": 3}', False),
        (None, SCHEMA, '{"nom": "x"}', False),
        ('{"name": "x"}', SCHEMA, '{"name": "x"}', True),
        ('{"name": "x"}', SCHEMA, '{"name": "y"}', False),
        (None, None, '{"name": "x"', False),  # cut off by max_tokens
        (None, None, "no json at all", False),
        (None, None, "{}", True),
    ],
)
def test_json(expected, schema, answer, passes):
    assert tf.check_answer(task(check="json", expected=expected, schema=schema), answer) is passes


def test_checks_loaded_from_a_file_run(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        {"capability": "n", "prompt": "p", "check": "number", "expected": "1234.5"},
        {"capability": "j", "prompt": "p", "check": "json", "schema": SCHEMA},
    )
    tasks = tf.load_task_files([path])
    assert tf.check_answer(tasks["n"][0], "about 1,234.5") and not tf.check_answer(tasks["n"][0], "1,234")
    assert tf.check_answer(tasks["j"][0], '```json\n{"name": "a"}```') and not tf.check_answer(tasks["j"][0], "{}")


def test_calibration_items_need_only_a_prompt(tmp_path):
    path = write_lines(
        tmp_path / "traffic.jsonl",
        {"prompt": "hello", "timestamp": 3, "expected": 5},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "raw": True},
    )
    items = tf.read_items(path, tasks=False)
    assert [tf.item_text(item, None) for item in items] == ["hello", "a\nb"]
    with pytest.raises(FormatError, match=r"traffic\.jsonl:1: unknown key .timestamp."):
        tf.read_items(path)
    bad = write_lines(tmp_path / "bad.jsonl", {"prompt": "x"}, {"text": "y"})
    with pytest.raises(FormatError, match=r"bad\.jsonl:2: no prompt or messages \(exactly one"):
        tf.read_items(bad, tasks=False)


@pytest.fixture(scope="module")
def smollm2(smollm2_package_gguf):
    from qconv.runtime.model import Model

    return Model(smollm2_package_gguf, threads=1, ctx=256)


@needs_runtime
def test_prompts_are_fed_as_qrun_feeds_them(smollm2):
    assert smollm2.chat_template is not None and "<|im_start|>" in smollm2.chat_template
    chat = task(prompt="What is 2+2?")
    expected = smollm2.tokenize(smollm2.render_chat([{"role": "user", "content": "What is 2+2?"}]))
    assert tf.render_prompt(chat, smollm2) == expected
    im_start = smollm2.tokenize("<|im_start|>", add_special=False)
    assert len(im_start) == 1 and im_start[0] in expected  # the template's markers are special tokens
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    assert tf.render_prompt(task(prompt=None, messages=messages), smollm2) == smollm2.tokenize(
        smollm2.render_chat(list(messages))
    )
    raw = task(prompt="Q: 17 * 3 =\nA:", raw=True)
    assert tf.render_prompt(raw, smollm2) == smollm2.tokenize("Q: 17 * 3 =\nA:")
    assert im_start[0] not in tf.render_prompt(raw, smollm2)
    raw_messages = task(prompt=None, messages=messages, raw=True)
    assert tf.render_prompt(raw_messages, smollm2) == smollm2.tokenize("Be brief.\nHi")


class NoTemplate:
    chat_template = None

    def render_chat(self, messages):
        raise AssertionError("no template to render with")

    def tokenize(self, text):
        return [ord(c) for c in text]


def test_without_a_template_the_prompt_is_plain_text():
    assert tf.render_prompt(task(prompt="hi"), NoTemplate()) == [ord("h"), ord("i")]
