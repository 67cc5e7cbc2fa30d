"""Chat messages -> prompt text with the GGUF's own `tokenizer.chat_template`, rendered as Hugging Face does
(jinja2 sandbox, trim_blocks/lstrip_blocks, `raise_exception`, `strftime_now`, `tojson`)."""

from __future__ import annotations

import json
from datetime import datetime

from qconv.formats.errors import FormatError


def _raise(message: str):
    raise FormatError(f"chat template: {message}")


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    # HF's tojson keeps non-ASCII text as is (templates embed it in prompts)
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def render_chat(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra,
) -> str:
    """Render `messages` ([{"role": ..., "content": ...}]) with a Jinja chat template."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        compiled = env.from_string(template)
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except TemplateError as exc:
        raise FormatError(f"chat template does not render: {exc}") from exc
