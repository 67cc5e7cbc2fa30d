"""The built-in suites: calibration and evaluation parts never overlap, every evaluation suite is long enough, the
generated tasks carry their answers, and the code suite records the Python it read."""

from __future__ import annotations

import json
import re

import pytest

from qconv.converter.quality import suites

MIN_EVAL_TOKENS = 2000


@pytest.fixture(scope="module")
def tokenizer(smollm2_package_gguf):
    from qconv.runtime.tokenizer import Tokenizer

    return Tokenizer.from_gguf(smollm2_package_gguf)


# lines both parts share by design: the tool schema the calls follow, the passkey question, heading underlines
TEMPLATE = set(suites.TOOL_SCHEMA_TEXT.splitlines()) | {suites.PASSKEY_QUESTION}


def lines(docs: list[str]) -> set[str]:
    found = {line.strip() for doc in docs for line in doc.splitlines() if len(line.strip()) > 30}
    return {line for line in found if line not in TEMPLATE and set(line) != {"*"}}


@pytest.mark.parametrize("name", list(suites.SUITES))
def test_parts_do_not_overlap(name):
    suite = suites.SUITES[name]
    calibration, held_out = suite.documents("calibration"), suite.documents("eval")
    assert calibration and held_out
    shared = lines(calibration) & lines(held_out)
    if name == "long_context":  # the filler sentence repeats by design; the documents and keys differ
        shared = {s for s in shared if "pass key" in s}
    assert not shared, f"{name}: lines in both parts: {sorted(shared)[:3]}"


def test_generated_items_do_not_overlap():
    assert not {q for q, _ in suites.maths_problems("calibration")} & {q for q, _ in suites.maths_problems("eval")}
    assert not {r for r, _, _ in suites.tool_calls("calibration")} & {r for r, _, _ in suites.tool_calls("eval")}
    cal_keys = {re.search(r"pass key is (\d+)", d).group(1) for d in suites.long_context("calibration")}
    assert not cal_keys & {t.expected for t in suites.passkey_tasks()}


@pytest.mark.parametrize("name", list(suites.SUITES))
def test_eval_suites_hold_enough_tokens(name, tokenizer):
    n = sum(len(tokenizer.encode(d, add_special=False)) for d in suites.SUITES[name].documents("eval"))
    assert n >= MIN_EVAL_TOKENS, f"{name}: {n} tokens"


def test_suites_are_deterministic():
    for suite in suites.SUITES.values():
        for part in suites.PARTS:
            assert suite.documents(part) == suite.documents(part)


def test_maths_answers_are_right():
    for q, a in suites.maths_problems("eval"):
        nums = [int(n) for n in re.findall(r"\d+", q)]
        assert a in (nums[0] + nums[1], nums[0] - nums[1], nums[0] * nums[1]), q
    for task in suites.maths_tasks():
        assert task.prompt.endswith("Answer:") and task.expected.lstrip("-").isdigit()


def test_tool_calls_follow_the_schema():
    text = suites.json_calls("eval")[0]
    calls = [line.removeprefix("Call: ") for line in text.splitlines() if line.startswith("Call: ")]
    assert len(calls) == 60
    for call in calls:
        assert suites.valid_tool_call(call) in suites.TOOLS
        assert suites.matches_schema(call), call


def test_valid_tool_call_rejects_broken_json():
    assert suites.valid_tool_call('{"name": "x", "arguments": {}}') == "x"
    assert suites.valid_tool_call('{"name": "x", "arguments": {"a": 1}') is None
    assert suites.valid_tool_call('{"tool": "x"}') is None
    assert not suites.matches_schema('{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}')
    assert suites.valid_tool_call("[1, 2]") is None
    assert not suites.matches_schema(json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}}))


def test_passkey_documents_hold_their_key():
    for task in suites.passkey_tasks():
        assert task.prompt.count(task.expected) == 2 and task.prompt.endswith(suites.PASSKEY_QUESTION)
    lengths = [len(d) for d in suites.long_context("eval")]
    assert lengths == sorted(lengths) and lengths[-1] > 3 * lengths[0]


def test_code_suite_records_the_python_version():
    import platform

    prov = suites.provenance()
    assert prov["python_version"] == platform.python_version()
    assert len(suites.code("eval")) == len(suites.CODE_MODULES["eval"])
    assert "def " in suites.code("eval")[0] or "class " in suites.code("eval")[0]


def test_unknown_suite_is_named():
    with pytest.raises(ValueError, match="unknown suite 'poetry'"):
        suites.get_suites(["poetry"])
