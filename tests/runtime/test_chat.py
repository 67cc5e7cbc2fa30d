"""runtime.chat.render_chat: templates render as Hugging Face renders them, and a hostile template (endless loops,
huge strings, Python errors) ends in a one-line FormatError within the render budget, in any thread."""

from __future__ import annotations

import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest

from qconv.formats.errors import FormatError
from qconv.runtime.chat import MAX_TEMPLATE_CHARS, render_chat

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NESTED_RANGES = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


def test_chatml_renders_as_before():
    assert render_chat(CHATML, MESSAGES) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_hf_extras_still_work():
    template = (
        "{% for m in messages %}{{ loop.index }}/{{ loop.length }} {{ m.role }}{% if loop.last %}.{% endif %}"
        "{% break %}{% endfor %}|{{ messages[1:] | tojson }}|{{ '%03d' % 7 }}|{{ '{:>3}'.format('a') }}|"
        "{{ (['x'] * 3) | join(',') }}|{{ (['a', 'b'] * 2) | join }}"
    )
    messages = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "ok"}]
    assert render_chat(template, messages) == ('1/2 user|[{"role": "assistant", "content": "ok"}]|007|  a|x,x,x|abab')


def test_nested_range_loops_stop_at_the_step_limit():
    with pytest.raises(FormatError, match=r"over the limit of 1,000,000 loop steps and calls \(MAX_TEMPLATE_STEPS\)"):
        render_chat(NESTED_RANGES, MESSAGES)


def test_for_loop_steps_are_counted_without_range():
    template = "{% for a in 'x' * 600000 %}{% for b in 'yz' %}{% endfor %}{% endfor %}"
    with pytest.raises(FormatError, match="MAX_TEMPLATE_STEPS"):
        render_chat(template, MESSAGES)


def test_recursive_macros_are_counted(monkeypatch):
    monkeypatch.setattr("qconv.runtime.chat.MAX_TEMPLATE_STEPS", 20_000)  # a macro call is slow: a smaller budget
    template = "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(24) }}"
    with pytest.raises(FormatError, match="MAX_TEMPLATE_STEPS"):
        render_chat(template, MESSAGES)


def test_huge_repetition_is_refused_before_it_is_made():
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=r"a '\*' repetition of 1,000,000,000 characters.*MAX_TEMPLATE_CHARS"):
            render_chat("{{ 'a' * 10**9 }}", MESSAGES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


@pytest.mark.parametrize(
    "template, what",
    [
        ("{{ 10**9 * [1] }}", "repetition"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "'~'"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", r"'\+'"),
        ("{{ 'a'.ljust(10**9) }}", r"\.ljust\(\)"),
        ("{{ 'a' | center(10**9) }}", r"\|center"),
        ("{{ '{:>1000000000}'.format(1) }}", "formatted string"),
        ("{{ '%1000000000d' % 1 }}", "formatted string"),
        ("{{ '%1000000000d' | format(1) }}", "formatted string"),
        ("{{ (['a'] * 1000) | join('x' * 100000) }}", r"\|join"),
        ("{{ ('x' * 100000).join(['a'] * 1000) }}", r"\.join\(\)"),
        ("{{ ('a' * 100000) | replace('', 'b' * 100000) }}", r"\|replace"),
        ("{{ ('a\n' * 100000) | indent('x' * 100000) }}", r"\|indent"),
        ("{{ (['a'] * 100000) | tojson(indent=100000) }}", r"\|tojson"),
        ("{{ [1] | batch(10**8, 'x') | list }}", r"\|batch"),
        # a list that shares itself 2**40 times takes no memory until it is printed
        (
            "{% set ns = namespace(a=['x']) %}{% for i in range(40) %}{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a }}",
            "an output",
        ),
        ("{% for i in range(300000) %}xxxxxxxxxx{% endfor %}", "the rendered prompt"),
    ],
)
def test_sizes_over_the_limit_are_refused(template, what):
    with pytest.raises(FormatError, match=f"{what}.*over the limit.*MAX_TEMPLATE_CHARS"):
        render_chat(template, MESSAGES)


def test_text_written_into_blocks_is_counted():
    # literal text in a loop inside {% set %} (or a macro) never reaches the prompt: it is counted where written
    block = "{% set x %}{% for i in range(100) %}" + "y" * 100_000 + "{% endfor %}{% endset %}{{ x | length }}"
    macro = "{% macro m() %}{% for i in range(100) %}" + "y" * 100_000 + "{% endfor %}{% endmacro %}{{ m()|length }}"
    for template in (block, macro):
        with pytest.raises(FormatError, match="written into the prompt, macros and blocks"):
            render_chat(template, MESSAGES)


def test_huge_integers_are_refused():
    with pytest.raises(FormatError, match="MAX_TEMPLATE_INT_BITS"):
        render_chat("{{ 10 ** (10 ** 10) }}", MESSAGES)


def test_the_limit_grows_with_the_messages():
    # a long conversation is not a hostile template: the budget is on top of what the messages hold
    long = [{"role": "user", "content": "y" * (2 * MAX_TEMPLATE_CHARS)}]
    assert len(render_chat(CHATML, long)) > 2 * MAX_TEMPLATE_CHARS


@pytest.mark.parametrize(
    "template, error",
    [
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ 10.0 ** 1000 }}", "OverflowError"),
        ("{{ 1 + 'a' }}", "TypeError"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
        ("{{ range(10**20) | length }}", "OverflowError"),
        ("{% for %}", "does not parse: line 1"),
        ("{{ raise_exception('no tools here') }}", "chat template: no tools here"),
    ],
)
def test_template_errors_are_one_line(template, error):
    with pytest.raises(FormatError, match=error) as caught:
        render_chat(template, MESSAGES)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("chat template")


def test_a_render_in_a_worker_thread_is_bounded_too():
    # the server renders in worker threads: no signal could stop a render there, the budget does
    with ThreadPoolExecutor(max_workers=2) as pool:
        hostile = pool.submit(render_chat, NESTED_RANGES, MESSAGES)
        fine = pool.submit(render_chat, CHATML, MESSAGES)
        with pytest.raises(FormatError, match="MAX_TEMPLATE_STEPS"):
            hostile.result(timeout=60)
        assert fine.result(timeout=60).endswith("<|im_start|>assistant\n")


def test_budgets_are_per_render():
    # two renders at once, each with its own budget: one near its limit does not fail the other
    template = "{% for i in range(400000) %}{% endfor %}done"
    results = []
    threads = [threading.Thread(target=lambda: results.append(render_chat(template, MESSAGES))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["done"] * 3
