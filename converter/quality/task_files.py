"""The user's task files (`qconv eval QUANT --ref REF --tasks tasks.jsonl`) and the one line reader that
calibration's .jsonl data (`qconv calibrate --data traffic.jsonl`) shares.

One JSON object per line, blank lines skipped:

    {"capability": "sql", "prompt": "Write a query that ...", "expected": "SELECT", "check": "contains"}
    {"capability": "tools", "messages": [{"role": "user", "content": "..."}], "check": "json", "schema": {...}}
    {"capability": "maths", "prompt": "Q: 17 * 3 =", "raw": true, "expected": "51", "check": "number"}

Every line is checked when the file is read, before any model is loaded: a typo found after minutes of loading and
generating would cost those minutes again. Prompts are fed as `qrun --prompt` feeds them: through the model's chat
template when it has one (unless "raw"), else as plain text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qconv.converter.quality.suites import SUITES
from qconv.formats.errors import FormatError

MAX_FILE_BYTES = 64 << 20
MAX_LINE_BYTES = 1 << 20
DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_LIMIT = 4096
CAPABILITY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
RESERVED_CAPABILITIES = (*SUITES, "none")  # the built-in suites' rows in the report, and `--suites none`
TASK_KEYS = ("capability", "prompt", "messages", "expected", "check", "schema", "max_tokens", "raw", "id")
# A number as answers write it: optional sign, digits (thousands separated by commas or not), optional decimals.
# "1,2345" is 1 then 2345, not 1,234 then 5: a comma group is exactly three digits.
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


@dataclass(frozen=True)
class UserTask:
    capability: str  # "" for a calibration item, which belongs to none
    prompt: str | None
    messages: tuple | None  # of {"role": str, "content": str, ...}
    expected: str | None
    check: str
    schema: dict | None
    max_tokens: int
    raw: bool
    source: str  # "FILE:LINE"
    id: str | None


def _fail(source: str, what: str, expected: str) -> FormatError:
    return FormatError(f"{source}: {what} ({expected})")


# ---- reading ----


def _json_objects(path: Path) -> Iterator[tuple[str, dict]]:
    """(FILE:LINE, object) for every non-blank line of a JSON-lines file."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise FormatError(f"{path}: not a file (a JSON-lines file, one object per line)")
        if size > MAX_FILE_BYTES:
            raise FormatError(f"{path}: {size} bytes (at most {MAX_FILE_BYTES} bytes, 64 MiB)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read: {exc.strerror}") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # the byte-order mark some editors write
    for number, line_bytes in enumerate(data.split(b"\n"), 1):
        source = f"{path}:{number}"
        if len(line_bytes) > MAX_LINE_BYTES:
            raise _fail(source, f"the line is {len(line_bytes)} bytes", f"at most {MAX_LINE_BYTES} bytes, 1 MiB")
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(source, f"not UTF-8 (byte {exc.start + 1} of the line)", "UTF-8 text") from None
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(source, f"not JSON: {exc.msg} at column {exc.colno}", "one JSON object per line") from None
        if not isinstance(item, dict):
            raise _fail(source, f"a JSON {type(item).__name__}, not an object", "one JSON object per line")
        yield source, item


def _prompt_fields(item: dict, source: str) -> tuple[str | None, tuple | None, bool]:
    """prompt, messages and raw, shared by task and calibration items."""
    if ("prompt" in item) == ("messages" in item):
        found = "both prompt and messages" if "prompt" in item else "no prompt or messages"
        raise _fail(source, found, 'exactly one of "prompt": string or "messages": list')
    prompt, messages = item.get("prompt"), item.get("messages")
    if prompt is not None and not (isinstance(prompt, str) and prompt):
        raise _fail(source, f"prompt is {json.dumps(prompt)[:60]}", "a non-empty string")
    if "messages" in item:
        shape = 'a non-empty list of {"role": string, "content": string}'
        if not isinstance(messages, list) or not messages:
            raise _fail(source, f"messages is {json.dumps(messages)[:60]}", shape)
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _fail(source, f"messages[{i}] is {json.dumps(message)[:60]}", shape)
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    raise _fail(source, f"messages[{i}].{key} is {json.dumps(message.get(key))[:60]}", shape)
        messages = tuple(dict(m) for m in messages)
    raw = item.get("raw", False)
    if not isinstance(raw, bool):
        raise _fail(source, f"raw is {json.dumps(raw)[:60]}", "true or false")
    return prompt, messages, raw


def _task(item: dict, source: str, prompt: str | None, messages: tuple | None, raw: bool) -> UserTask:
    unknown = sorted(set(item) - set(TASK_KEYS))
    if unknown:
        raise _fail(source, f"unknown key {', '.join(map(repr, unknown))}", f"keys: {', '.join(TASK_KEYS)}")
    capability = item.get("capability")
    if capability is None:
        raise _fail(source, "no capability", '"capability": a name such as "sql"')
    if not isinstance(capability, str) or not CAPABILITY_NAME.fullmatch(capability):
        raise _fail(source, f"capability {json.dumps(capability)[:80]}", "1 to 64 characters of A-Z a-z 0-9 _ . -")
    if capability in RESERVED_CAPABILITIES:
        raise _fail(
            source,
            f"capability {capability!r} is the name of a built-in suite",
            f"a name other than {', '.join(RESERVED_CAPABILITIES)}",
        )
    check = item.get("check", "contains")
    if not isinstance(check, str) or check not in CHECKS:
        raise _fail(source, f"check {json.dumps(check)[:60]}", f"one of {', '.join(CHECKS)}")
    expected = item.get("expected")
    if expected is None and check != "json":
        raise _fail(source, "no expected", f'"expected": a string, required for check {check}')
    if expected is not None and not isinstance(expected, str):
        raise _fail(source, f"expected is {json.dumps(expected)[:60]}", "a string")
    if "schema" in item and check != "json":
        raise _fail(source, f"a schema with check {check}", "schema only with check json")
    schema = item.get("schema")
    _check_expected(check, expected, schema, source)
    max_tokens = item.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise _fail(source, f"max_tokens is {json.dumps(max_tokens)[:60]}", f"an integer from 1 to {MAX_TOKENS_LIMIT}")
    task_id = item.get("id")
    if task_id is not None and not isinstance(task_id, str):
        raise _fail(source, f"id is {json.dumps(task_id)[:60]}", "a string")
    return UserTask(capability, prompt, messages, expected, check, schema, max_tokens, raw, source, task_id)


def _check_expected(check: str, expected: str | None, schema, source: str) -> None:
    """What no answer could pass is a load error: a regex that does not compile, a number that is not one, a
    schema that is not a schema or that the expected value itself fails."""
    if check == "regex":
        try:
            re.compile(expected)
        except re.error as exc:
            raise _fail(
                source, f"expected is not a regular expression: {exc}", "a Python regex, for check regex"
            ) from None
    elif check == "number":
        try:
            value = float(expected)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise _fail(source, f"expected {expected[:60]!r} is not a number", 'a number such as "42" or "-3.5"')
    elif check == "json":
        if expected is not None:
            try:
                expected_value = json.loads(expected)
            except json.JSONDecodeError as exc:
                raise _fail(source, f"expected is not JSON: {exc.msg}", "a JSON text, for check json") from None
        if schema is None:
            return
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for

        if not isinstance(schema, dict):
            raise _fail(source, f"schema is {json.dumps(schema)[:60]}", "a JSON Schema object")
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise _fail(source, f"schema is not a valid JSON Schema: {exc.message}", "a JSON Schema object") from None
        if expected is not None and not _satisfies(expected_value, schema, source):
            raise _fail(source, "expected does not satisfy the schema", "an expected value the schema accepts")


def read_items(path: str | Path, *, tasks: bool = True) -> list[UserTask]:
    """The items of one JSON-lines file, each line checked. tasks=False reads calibration prompts: only prompt,
    messages and raw are read (and checked); other keys, such as a task's expected or a log's own fields, are
    ignored."""
    path = Path(path)
    items = []
    for source, item in _json_objects(path):
        prompt, messages, raw = _prompt_fields(item, source)
        if tasks:
            items.append(_task(item, source, prompt, messages, raw))
        else:
            items.append(UserTask("", prompt, messages, None, "contains", None, DEFAULT_MAX_TOKENS, raw, source, None))
    if not items:
        raise FormatError(f"{path}: no items (one JSON object per line)")
    return items


def load_task_files(paths: str | Path | Iterable[str | Path]) -> dict[str, list[UserTask]]:
    """capability -> its items, in file order; several files merge in order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    by_capability: dict[str, list[UserTask]] = {}
    for path in paths:
        for task in read_items(path):
            by_capability.setdefault(task.capability, []).append(task)
    return by_capability


# ---- prompts ----


def chat_renderer(model) -> Callable[[list[dict]], str] | None:
    """model.render_chat when the model's file has a chat template, else None (prompts go in as plain text)."""
    return model.render_chat if model.chat_template is not None else None


def item_text(item: UserTask, render: Callable[[list[dict]], str] | None) -> str:
    """The item's prompt as text: rendered by the chat template (render) unless raw or there is none; else the
    prompt, or the messages' contents one per line."""
    if render is not None and not item.raw:
        return render([dict(m) for m in item.messages] if item.messages else [{"role": "user", "content": item.prompt}])
    return item.prompt if item.messages is None else "\n".join(m["content"] for m in item.messages)


def render_prompt(task: UserTask, model) -> list[int]:
    """The tokens to feed model (runtime.model.Model) for task, as `qrun --prompt` feeds a prompt."""
    return model.tokenize(item_text(task, chat_renderer(model)))


# ---- checks ----


def first_number(answer: str) -> float | None:
    found = NUMBER.search(answer)
    return float(found.group().replace(",", "")) if found else None


def first_json_value(answer: str):
    """The JSON object or array that starts at the answer's first { or [ (after any prose or ``` fence), or None."""
    starts = [i for i in (answer.find("{"), answer.find("[")) if i >= 0]
    if not starts:
        return None
    try:
        return json.JSONDecoder().raw_decode(answer, min(starts))[0]
    except json.JSONDecodeError:
        return None


def _satisfies(value, schema: dict, source: str) -> bool:
    from jsonschema.validators import validator_for
    from referencing.exceptions import Unresolvable

    try:
        return validator_for(schema)(schema).is_valid(value)
    except Unresolvable as exc:  # remote references are not fetched (jsonschema >= 4.18)
        raise _fail(source, f"the schema's reference {exc} cannot be resolved", "a self-contained schema") from None


def _same_json(a, b) -> bool:
    """JSON equality: 1 and 1.0 are one number, but true is not 1 (as Python's == says)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _json_answer(task: UserTask, answer: str) -> bool:
    value = first_json_value(answer)
    if value is None:
        return False
    if task.schema is not None and not _satisfies(value, task.schema, task.source):
        return False
    return task.expected is None or _same_json(value, json.loads(task.expected))


def _number_answer(task: UserTask, answer: str) -> bool:
    value = first_number(answer)
    return value is not None and math.isclose(value, float(task.expected), rel_tol=1e-9, abs_tol=0.0)


CHECKS: dict[str, Callable[[UserTask, str], bool]] = {
    "exact": lambda task, answer: answer.strip() == task.expected.strip(),
    "contains": lambda task, answer: task.expected in answer,
    "regex": lambda task, answer: re.search(task.expected, answer) is not None,
    "number": _number_answer,
    "json": _json_answer,
}


def check_answer(task: UserTask, answer: str) -> bool:
    """Whether the model's answer (the generated text, without the prompt) passes the task's check."""
    return CHECKS[task.check](task, answer)
