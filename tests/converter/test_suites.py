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
    assert not set(suites.maths_facts("calibration")) & set(suites.maths_facts("eval"))
    assert not set(suites.MATHS_SHOTS) & set(suites.maths_facts("eval"))  # no item is answered in its own prompt
    assert not {r for r, _, _ in suites.tool_calls("calibration")} & {r for r, _, _ in suites.tool_calls("eval")}
    for max_len in (2048, 8192):
        cal = {re.search(r"pass key is (\d+)", d).group(1) for d in suites.long_context("calibration", max_len)}
        assert not cal & {t.expected for t in suites.passkey_tasks(max_len)}


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
    tasks = suites.maths_tasks()
    assert len(tasks) >= 40
    for task in tasks:
        a, op, b = re.fullmatch(r"(\d+) ([-+x]) (\d+) =", task.prompt.splitlines()[-1]).groups()
        assert task.expected == str({"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op])
        assert int(task.expected) >= 0
    for line in tasks[0].prompt.splitlines()[:-1]:  # the shots are solved right too
        a, op, b, c = re.fullmatch(r"(\d+) ([-+x]) (\d+) = (\d+)", line).groups()
        assert int(c) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]


def test_calibration_holds_no_eval_task_fact():
    text = suites.calibration_text(["maths"])
    equations = {line.split(" =")[0] for line in text.splitlines()}
    assert {f"{a} {op} {b}" for a, op, b in suites.maths_facts("calibration")} <= equations  # the lines looked in
    for a, op, b in suites.maths_facts("eval"):
        word = {"+": "+", "-": "-", "x": "times"}[op]
        assert f"{a} {op} {b}" not in equations and f"What is {a} {word} {b}?" not in text, (a, op, b)


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
    assert lengths == sorted(lengths) and lengths[-1] > 1.8 * lengths[0]


def test_passkey_items_are_many_with_distinct_keys_at_varied_depths():
    tasks = suites.passkey_tasks()
    assert len(tasks) >= 20
    assert len({t.expected for t in tasks}) == len(tasks)
    depths = [t.prompt.index(t.expected) / len(t.prompt) for t in tasks]
    assert min(depths) < 0.25 and max(depths) > 0.75
    assert tasks == suites.passkey_tasks() == suites.SUITES["long_context"].tasks()


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special=False)) + 1  # and a BOS


@pytest.mark.parametrize("max_len", [512, 1024, 2048, 8192])
def test_passkey_lengths_spread_up_to_the_bound(max_len, tokenizer):
    tasks = suites.passkey_tasks(max_len)
    lengths = [_tokens(tokenizer, t.prompt) for t in tasks]
    assert lengths == sorted(lengths)
    assert all(n + t.max_new_tokens <= max_len for n, t in zip(lengths, tasks)), (max_len, lengths[-1])
    assert lengths[-1] >= 0.95 * max_len and lengths[0] <= 300
    assert len(set(lengths)) >= (10 if max_len == 512 else 18)
    docs = [_tokens(tokenizer, d) for d in suites.SUITES["long_context"].documents("eval", max_len)]
    assert max(docs) <= max_len and max(docs) >= 0.95 * max_len


def test_passkey_default_bound_and_long_runs():
    """The default stays at MAX_LEN_TOKENS (~14k prompt tokens per model in all); a bound of the context (--long)
    reaches it."""
    assert suites.MAX_LEN_TOKENS == 2048
    reps = [suites.filler_repetitions(n) for n in suites.passkey_lengths()]
    assert 12_000 <= suites.FILLER_TOKENS * sum(reps) <= 20_000
    context = 8192  # SmolLM2's
    longest = suites.passkey_tasks(context)[-1].prompt
    assert suites.FILLER_TOKENS * longest.count(suites.FILLER) >= 0.95 * context - suites.PASSKEY_FRAME_TOKENS
    assert len(suites.passkey_tasks(context)[-1].prompt) > 3.5 * len(suites.passkey_tasks()[-1].prompt)


def test_code_suite_records_the_python_version():
    import platform

    prov = suites.provenance()
    assert prov["python_version"] == platform.python_version()
    assert len(suites.code("eval")) == len(suites.CODE_MODULES["eval"])
    assert "def " in suites.code("eval")[0] or "class " in suites.code("eval")[0]


def test_unknown_suite_is_named():
    with pytest.raises(ValueError, match="unknown suite 'poetry'"):
        suites.get_suites(["poetry"])


@pytest.mark.reference
def test_f32_sample_solves_most_maths_items(smollm2_dir, tmp_path):
    """The maths items are ones the unquantized sample mostly solves (38 of 48 when measured), so a quantization's
    drop is the quantization's, not the model's guessing."""
    from qconv.converter.convert import convert_to_gguf
    from qconv.converter.quality.evaluate import check_answer
    from qconv.converter.quality.runner import Runner

    f32 = tmp_path / "f32.gguf"
    convert_to_gguf(smollm2_dir, f32, "f32", progress=False)
    runner = Runner(f32, 512, threads=2)
    tasks = suites.maths_tasks()
    solved = sum(
        check_answer(t.kind, runner.greedy(runner.tokenize(t.prompt, runner.add_bos), t.max_new_tokens), t.expected)
        for t in tasks
    )
    assert solved >= 0.7 * len(tasks), f"{solved}/{len(tasks)}"
