"""qrun as a new user (and a hostile file) meets it: flags out of range, prompt files, -n -1, --version, seeds,
an HF folder, hostile chat templates, and the interactive chat (/reset, /exit, Ctrl-C, a full context). All on a
tiny GGUF (tests/native/test_loader.write_tiny_model plus a chat template), through CliRunner."""

from __future__ import annotations

import io
import json
import sys

import pytest
from click.testing import CliRunner

from qconv.runtime import cli
from qconv.runtime.model import Model
from tests.native.test_loader import write_tiny_model

TAGS = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
NESTED_RANGES = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


def tiny_chat_model(path, template: str | None = TAGS):
    """write_tiny_model's GGUF (context 256, vocab 48) with `template` as tokenizer.chat_template."""
    import gguf

    class WithTemplate(gguf.GGUFWriter):
        def write_header_to_file(self, *args, **kwargs):
            if template is not None:
                self.add_chat_template(template)
            super().write_header_to_file(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFWriter", WithTemplate)
        return write_tiny_model(path)


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory):
    return tiny_chat_model(tmp_path_factory.mktemp("qrun") / "chat.gguf")


def qrun(*args, input=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qrun: error: "), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


# ---- hostile chat templates ----


@pytest.mark.parametrize(
    "template, limit",
    [
        (NESTED_RANGES, "MAX_TEMPLATE_STEPS"),
        ("{{ 'a' * 10**9 }}", "MAX_TEMPLATE_CHARS"),
        ("{{ 1 / 0 }}", "ZeroDivision"),
    ],
)
def test_hostile_template_is_a_one_line_error(tmp_path, template, limit):
    model = tiny_chat_model(tmp_path / "hostile.gguf", template)
    result = qrun(model, "-p", "hi", "-t", 1)
    assert result.exit_code == 1
    assert "chat template" in one_error_line(result) and limit in result.stderr


# ---- flags ----


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--top-k", "4294967296"),
        ("--top-k", "-1"),
        ("-c", "4294967296"),
        ("-c", "0"),
        ("-t", "0"),
        ("-t", "4294967296"),
        ("-n", "4294967296"),
        ("-n", "-2"),
        ("--repeat-last-n", "4294967296"),
        ("--repeat-penalty", "0"),
        ("--repeat-penalty", "-1"),
        ("--top-p", "1.5"),
        ("--min-p", "-0.1"),
        ("--temp", "-1"),
        ("--temp", "nan"),
        ("--seed", "-1"),
    ],
)
def test_out_of_range_flags_are_refused_before_the_model_loads(tmp_path, flag, value):
    # the model does not exist: the flag must be the error, found before any file is opened
    result = qrun(tmp_path / "missing.gguf", "-p", "x", flag, value)
    assert result.exit_code == 2
    assert f"'{flag}'" in one_error_line(result) and value in result.stderr


def test_unknown_flag_is_one_line(chat_gguf):
    result = qrun(chat_gguf, "--top_k", "4")
    assert result.exit_code == 2 and "--top_k" in one_error_line(result)


def test_version():
    result = qrun("--version")
    assert result.exit_code == 0 and result.stdout.startswith("qrun, version ")


def test_hf_folder_points_to_to_gguf(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = qrun(tmp_path, "-p", "hi")
    assert result.exit_code == 1
    assert f"qconv to-gguf {tmp_path} -o model.gguf" in one_error_line(result)


def greedy_json(*args, input=None) -> dict:
    result = qrun(*args, "--temp", 0, "-t", 1, "--json", input=input)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_prompt_file(chat_gguf, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ab the\nthe ab", encoding="utf-8")
    from_file = greedy_json(chat_gguf, "-f", prompt, "-n", 6)
    from_flag = greedy_json(chat_gguf, "-p", "ab the\nthe ab", "-n", 6)
    assert from_file["tokens"] == from_flag["tokens"] and from_file["prompt_tokens"] == from_flag["prompt_tokens"]


def test_prompt_file_errors(chat_gguf, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    for path, expected in [(latin1, "not UTF-8"), (tmp_path / "none.txt", "cannot read"), (tmp_path, "cannot read")]:
        result = qrun(chat_gguf, "-f", path)
        assert result.exit_code == 1 and expected in one_error_line(result) and str(path) in result.stderr
    both = qrun(chat_gguf, "-f", latin1, "-p", "x")
    assert both.exit_code == 1 and "not both" in one_error_line(both)


def test_n_minus_one_generates_until_the_context_is_full(chat_gguf):
    record = greedy_json(chat_gguf, "--raw", "-p", "ab", "-n", -1, "--ignore-eos", "-c", 64)
    assert record["prompt_tokens"] + record["generated_tokens"] == 64


def test_random_seed_unless_given(chat_gguf):
    sampled = [greedy_json(chat_gguf, "-p", "ab", "-n", 4, "--temp", 1.0) for _ in range(2)]
    assert sampled[0]["seed"] != sampled[1]["seed"]  # two random 32-bit seeds
    given = [greedy_json(chat_gguf, "-p", "ab", "-n", 8, "--temp", 1.0, "--seed", 7) for _ in range(2)]
    assert given[0]["seed"] == given[1]["seed"] == 7 and given[0]["tokens"] == given[1]["tokens"]
    verbose = qrun(chat_gguf, "-p", "ab", "-n", 1, "-t", 1, "-v", "--seed", 12)
    assert "qrun: seed 12" in verbose.stderr


# ---- the interactive chat ----


@pytest.fixture
def rendered(monkeypatch):
    """Every message list the chat renders, in order."""
    calls = []
    original = Model.render_chat

    def recording(self, messages, *args, **kwargs):
        calls.append([dict(m) for m in messages])
        return original(self, messages, *args, **kwargs)

    monkeypatch.setattr(Model, "render_chat", recording)
    return calls


def test_reset_and_exit(chat_gguf, rendered):
    result = qrun(chat_gguf, "-n", 3, "-t", 1, "--temp", 0, input="ab\n/reset\nthe\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("generation:") == 2 and "conversation forgotten" in result.stderr
    assert [m["content"] for m in rendered[-1]] == ["the"]  # the first turn was forgotten
    assert all("never read" not in m["content"] for call in rendered for m in call)


def test_ctrl_c_during_a_reply_stops_only_that_reply(chat_gguf, monkeypatch):
    original = Model.generate
    calls = []

    def interrupted_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            yield "partial"
            raise KeyboardInterrupt
        yield from original(self, *args, **kwargs)

    monkeypatch.setattr(Model, "generate", interrupted_once)
    result = qrun(chat_gguf, "-n", 3, "-t", 1, "--temp", 0, input="ab\nthe\n")
    assert result.exit_code == 0, result.output
    assert "reply stopped" in result.stderr and len(calls) == 2
    assert result.stderr.count("generation:") == 2  # the second turn ran


class InterruptAfterFirstLine(io.RawIOBase):
    """stdin whose user presses Ctrl-C at the second prompt."""

    def __init__(self) -> None:
        self.lines = [b"ab\n"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.lines:
            raise KeyboardInterrupt
        line = self.lines.pop()
        buffer[: len(line)] = line
        return len(line)


def test_ctrl_c_at_the_prompt_ends_the_chat(chat_gguf):
    result = qrun(chat_gguf, "-n", 2, "-t", 1, input=io.BufferedReader(InterruptAfterFirstLine()))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("generation:") == 1 and "Traceback" not in result.output


def test_full_context_drops_the_oldest_turns_and_keeps_the_system_prompt(chat_gguf, rendered):
    lines = "".join(f"ab the ab the {i}\n" for i in range(8))
    result = qrun(chat_gguf, "-c", 64, "-n", 8, "-t", 1, "--temp", 0, "--system", "sys", input=lines)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("generation:") == 8
    assert "qrun: context full: dropped the" in result.stderr
    last = rendered[-1]
    assert last[0] == {"role": "system", "content": "sys"} and last[1]["role"] == "user"
    assert last[-1]["content"] == "ab the ab the 7" and len(last) < 1 + 2 * 8 - 1


def test_a_message_longer_than_the_context_is_an_error_and_the_chat_goes_on(chat_gguf):
    result = qrun(chat_gguf, "-c", 32, "-n", 4, "-t", 1, "--temp", 0, input="ab " * 40 + "\nab\n")
    assert result.exit_code == 0, result.output
    assert "qrun: error: this message takes" in result.stderr and result.stderr.count("generation:") == 1


def test_line_editing_on_a_terminal(chat_gguf, monkeypatch):
    # on a TTY the chat reads through input(), which gets line editing and history from readline
    prompts = []
    answers = iter(["ab", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or next(answers))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.delitem(sys.modules, "readline", raising=False)
    model = Model(chat_gguf, threads=1, ctx=64)
    chat = cli.Chat(model, None, 2, dict(temperature=0.0), use_chat=True)
    chat.run()
    assert prompts == ["> ", "> "] and "readline" in sys.modules and len(chat.turns) == 2
