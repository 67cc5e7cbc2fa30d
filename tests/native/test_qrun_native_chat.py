"""qrun-native's C chat prompts (native/programs/qrun_main.c) against the Jinja templates they stand for.

For each family (ChatML, llama-2, llama-3, Gemma, Phi-3, Phi-4-mini) a realistic template is written into a tiny
GGUF (tests/native/test_loader.write_tiny_model); `qrun-native --print-prompt` with earlier turns (-p, --assistant,
-p) must print what runtime.chat renders from the template, less a leading BOS when the vocabulary adds one itself
(llama.cpp's common/chat.cpp rule: one BOS, not two).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qconv.runtime.chat import render_chat
from qconv.samples.gemma3 import CHAT_TEMPLATE as GEMMA3
from tests.native.test_loader import write_tiny_model

BOS, EOS = "<s>", "</s>"  # write_tiny_model's vocabulary

# SmolLM2-135M-Instruct's template: a default system message when none is given.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
    " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# meta-llama/Llama-2-7b-chat-hf
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# microsoft/Phi-3.5-mini-instruct (and Phi-3-mini-4k-instruct's current one): real newlines in the literals.
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# microsoft/Phi-3-mini-4k-instruct's first release: the newline as a separate Jinja escape literal.
PHI3_FIRST = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>' + '\\n' + message['content'] + "
    "'<|end|>' + '\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + "
    "'\\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>' + '\\n' + message['content'] + '<|end|>' + "
    "'\\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' + '\\n' }}{% else %}"
    "{{ eos_token }}{% endif %}"
)
# microsoft/Phi-4-mini-instruct: no newlines.
PHI4_MINI = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is "
    "not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' "
    "+ '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
TEMPLATES = {
    "chatml": CHATML,
    "llama-2": LLAMA2,
    "llama-3": LLAMA3,
    "gemma3": GEMMA3,
    "phi-3": PHI3,
    "phi-3-first": PHI3_FIRST,
    "phi-4-mini": PHI4_MINI,
}

TWO_TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
# Text around the turns that the templates that trim remove (Gemma, llama-2/3) and the others keep.
PADDED = [
    {"role": "user", "content": " Hi there\n"},
    {"role": "assistant", "content": "\tHello! "},
    {"role": "user", "content": "Two lines:\nfirst\nsecond  "},
]
SYSTEM = "You answer in one word."


def chat_gguf(path: Path, template: str, add_bos: bool) -> Path:
    """write_tiny_model's GGUF with `template` as tokenizer.chat_template and add_bos_token as given."""
    import gguf

    class WithTemplate(gguf.GGUFWriter):
        def write_header_to_file(self, *args, **kwargs):
            self.add_chat_template(template)
            self.add_add_bos_token(add_bos)
            super().write_header_to_file(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFWriter", WithTemplate)
        return write_tiny_model(path)


@pytest.fixture(scope="module")
def chat_ggufs(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    folder = tmp_path_factory.mktemp("chat_templates")
    return {
        (name, add_bos): chat_gguf(folder / f"{name}-{int(add_bos)}.gguf", template, add_bos)
        for name, template in TEMPLATES.items()
        for add_bos in (False, True)
    }


def turn_flags(messages: list[dict]) -> list[str]:
    flags = []
    for message in messages:
        if message["role"] == "system":
            flags += ["--system", message["content"]]
        else:
            flags += ["-p" if message["role"] == "user" else "--assistant", message["content"]]
    return flags


def printed_prompt(qrun_native: Path, model: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(qrun_native), str(model), *flags, "--print-prompt"], capture_output=True, text=True)


def jinja_prompt(template: str, messages: list[dict], add_bos: bool) -> str:
    rendered = render_chat(template, messages, add_generation_prompt=True, bos_token=BOS, eos_token=EOS)
    return rendered.removeprefix(BOS) if add_bos else rendered


@pytest.mark.parametrize("add_bos", [False, True], ids=["no-add-bos", "add-bos"])
@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("turns", [TWO_TURNS, PADDED], ids=["two-turns", "padded"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_rendered_prompt_equals_the_jinja_template(qrun_native, chat_ggufs, name, turns, system, add_bos):
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    proc = printed_prompt(qrun_native, chat_ggufs[name, add_bos], *turn_flags(messages))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == jinja_prompt(TEMPLATES[name], messages, add_bos)


def test_gemma_prompt_by_hand(qrun_native, chat_ggufs):
    """The layout spelled out once: no system role (folded into the first user turn), the assistant is "model"."""
    proc = printed_prompt(qrun_native, chat_ggufs["gemma3", True], "--system", SYSTEM, *turn_flags(TWO_TURNS))
    assert proc.stdout == (
        "<start_of_turn>user\nYou answer in one word.\n\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n<start_of_turn>user\nAnd of Italy?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_phi3_prompt_by_hand(qrun_native, chat_ggufs):
    proc = printed_prompt(qrun_native, chat_ggufs["phi-3", True], "--system", SYSTEM, *turn_flags(TWO_TURNS))
    assert proc.stdout == (
        "<|system|>\nYou answer in one word.<|end|>\n<|user|>\nWhat is the capital of France?<|end|>\n"
        "<|assistant|>\nParis.<|end|>\n<|user|>\nAnd of Italy?<|end|>\n<|assistant|>\n"
    )


def test_earlier_turns_generate(qrun_native, chat_ggufs):
    """Without --print-prompt the rendered prompt is evaluated: two turns on the tiny model run to the end."""
    model = chat_ggufs["gemma3", True]
    command = [qrun_native, model, *turn_flags(TWO_TURNS), "-n", "4", "--temp", "0", "-t", "1"]
    proc = subprocess.run(list(map(str, command)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "prompt: " in proc.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-p", "a", "-p", "b"], "two -p in a row"),
        (["--assistant", "a", "-p", "b"], "--assistant must follow a -p"),
        (["-p", "a", "--assistant", "b"], "the last turn must be a -p"),
        (["--raw", "-p", "a", "--assistant", "b", "-p", "c"], "--raw takes one -p"),
    ],
)
def test_turns_that_do_not_alternate_are_refused(qrun_native, chat_ggufs, flags, message):
    proc = printed_prompt(qrun_native, chat_ggufs["gemma3", True], *flags)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qrun-native: error: ") and message in lines[0], proc.stderr


def test_earlier_turns_need_a_template(qrun_native, tmp_path):
    plain = write_tiny_model(tmp_path / "plain.gguf")
    proc = printed_prompt(qrun_native, plain, *turn_flags(TWO_TURNS))
    assert proc.returncode == 1 and "need a chat template" in proc.stderr, proc.stderr
    proc = printed_prompt(qrun_native, plain, "-p", "Once upon a time")
    assert proc.returncode == 0 and proc.stdout == "Once upon a time"
