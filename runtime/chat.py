"""Chat messages -> prompt text with the GGUF's own `tokenizer.chat_template`, rendered as Hugging Face does
(jinja2 sandbox, trim_blocks/lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, `tojson`).

Templates come with downloaded files, so the sandbox also bounds what a render may cost. The renderer itself
counts (no signal, no timer thread: the server renders in worker threads): every loop step, range() element and
call is a step, and every string or list a template builds, and the prompt it writes, is measured before it is
made. Going over a limit is a FormatError naming it.
"""

from __future__ import annotations

import functools
import json
import re
import string
from datetime import datetime

from qconv.formats.errors import FormatError

MAX_TEMPLATE_STEPS = 1_000_000  # loop iterations + range() sizes + calls, per render
MAX_TEMPLATE_CHARS = 1_000_000  # the prompt (and any one value) beyond the size of the messages themselves
MAX_TEMPLATE_INT_BITS = 4096  # integers a template computes (10 ** 10 ** 10 would take hours)
# Everything a render writes, into the prompt and into macros, {% set %} and {% call %} blocks, counted in prompt
# limits: a template may print a message more than once, but a block filled in a loop must not grow unseen.
WRITTEN_PER_PROMPT_LIMIT = 4


def _raise(message: str):
    raise FormatError(f"chat template: {message}")


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    # HF's tojson keeps non-ASCII text as is (templates embed it in prompts)
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _size(value, cutoff: int, indent: int = 0) -> int:
    """About how many characters str(value) takes (or json.dumps with `indent`: each element on a line of its
    own, indented by its depth), counting shared references every time they occur (`[s] * n` is n copies once
    printed); stops counting past `cutoff`, so the cost is bounded by it."""
    total, pending = 0, [(value, 1)]
    while pending and total <= cutoff:
        item, depth = pending.pop()
        if isinstance(item, str):
            total += len(item) + 2
            continue
        if isinstance(item, dict):
            total += 2 + indent * depth + (4 + indent * depth) * len(item)
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + indent * depth + (2 + indent * depth) * len(item)
            children = item
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 1
            continue
        else:
            total += 8
            continue
        if total <= cutoff:
            pending.extend((child, depth + 1) for child in children)
    return total


def _shallow_len(value) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


# Printf (`%`, the `format` filter) and str.format field widths and precisions: the part of a format's output
# that its arguments do not bound.
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?[a-zA-Z%]")
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?(\d*)[,_]?(?:\.(\d*))?[a-zA-Z%]?$")


def _spec_numbers(fmt: str) -> list[str]:
    if "{" in fmt:  # str.format: widths sit in each field's spec; nested fields would take them from arguments
        specs = [spec for _, field, spec, _ in string.Formatter().parse(fmt) if field is not None and spec]
        if any("{" in spec for spec in specs):
            raise FormatError("chat template: nested format fields ('{:{width}}') are not supported")
        matches = [_FORMAT_SPEC.match(spec) for spec in specs]
        return [n for m in matches if m for n in m.groups() if n]
    numbers = [n for m in _PRINTF_SPEC.finditer(fmt) for n in m.groups() if n]
    if "*" in numbers:
        raise FormatError("chat template: '*' widths in % formats are not supported")
    return numbers


class _RenderBudget:
    """The steps and characters one render may still use."""

    def __init__(self, max_chars: int) -> None:
        self.steps = 0
        self.written = 0
        self.max_chars = max_chars

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_TEMPLATE_STEPS:
            raise FormatError(
                f"chat template: over the limit of {MAX_TEMPLATE_STEPS:,} loop steps and calls (MAX_TEMPLATE_STEPS)"
            )

    def check_chars(self, chars: int, what: str) -> None:
        if chars > self.max_chars:
            raise FormatError(
                f"chat template: {what} of {chars:,} characters or items is over the limit of {self.max_chars:,} "
                f"(MAX_TEMPLATE_CHARS beyond the messages)"
            )

    def write(self, chars: int) -> None:
        self.written += chars
        if self.written > WRITTEN_PER_PROMPT_LIMIT * self.max_chars:
            raise FormatError(
                f"chat template: over the limit of {WRITTEN_PER_PROMPT_LIMIT * self.max_chars:,} characters written "
                f"into the prompt, macros and blocks (WRITTEN_PER_PROMPT_LIMIT x MAX_TEMPLATE_CHARS)"
            )

    def check_value(self, value, what: str) -> None:
        self.check_chars(_size(value, self.max_chars), what)

    def check_int_bits(self, bits: int) -> None:
        if bits > MAX_TEMPLATE_INT_BITS:
            raise FormatError(
                f"chat template: an integer of {bits:,} bits is over the limit of {MAX_TEMPLATE_INT_BITS} "
                f"(MAX_TEMPLATE_INT_BITS)"
            )

    def check_format(self, fmt: str, args) -> None:
        widths = sum(int(n) for n in _spec_numbers(fmt))
        self.check_chars(len(fmt) + widths + _size(args, self.max_chars), "a formatted string")


# Predicted result sizes of the filters and str methods whose result can be far larger than their inputs,
# checked before the call (afterwards the memory is already taken). Each gets how far to measure (the budget's
# character limit), then the filter's value or the method's string, then their own arguments.
def _join_size(limit, items, separator="", *_, **__) -> int:
    return _shallow_len(items) * len(str(separator)) + _size(items, limit)


def _replace_size(limit, text, old, new, count=None, *_, **__) -> int:
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(len(new) - len(old), 0)


def _indent_size(limit, text, width=4, *_, **__) -> int:
    per_line = len(width) if isinstance(width, str) else int(width)
    return len(text) + (text.count("\n") + 1) * per_line


def _wordwrap_size(limit, text, width=79, break_long_words=True, wrapstring=None, *_, **__) -> int:
    return len(text) * (1 + len(wrapstring or "\n"))


def _pad_size(limit, text, width=80, *_, **__) -> int:
    return max(len(text), int(width))


def _count_size(limit, items, count, *_, **__) -> int:  # batch / slice: `count` lists, padded
    return _shallow_len(items) + int(count)


def _tojson_size(limit, value, indent=None, *_, **__) -> int:
    return _size(value, limit, len(indent) if isinstance(indent, str) else int(indent or 0))


_PREDICTED_FILTER_SIZE = {
    "join": _join_size,
    "replace": _replace_size,
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "center": _pad_size,
    "batch": _count_size,
    "slice": _count_size,
    "tojson": _tojson_size,
}
_PREDICTED_METHOD_SIZE = {
    "join": lambda limit, separator, items: _join_size(limit, items, separator),  # items: made a list first
    "replace": _replace_size,
    "center": _pad_size,
    "ljust": _pad_size,
    "rjust": _pad_size,
    "zfill": _pad_size,
    "expandtabs": lambda limit, text, tabsize=8: len(text) * max(int(tabsize), 1),
}
# Filters that turn their whole value into text: as large as the value printed.
_STRINGIFYING_FILTERS = {"string", "pprint", "e", "escape", "forceescape", "urlencode", "list"}
# Filters measured before they run, whose value is made a list first when it is an iterator (measuring would
# consume it).
_MATERIALIZED_FILTERS = {"join", "sum"}


@functools.cache
def _bounded_environment_class():
    """The sandbox subclass, built once on first use (jinja2 is imported only when a template is rendered)."""
    from jinja2 import nodes, pass_context
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedCodeGenerator(CodeGenerator):
        def _output_const_repr(self, group) -> str:
            # literal template text is counted where it is written (a macro's or a block's buffer, or the prompt)
            return f"environment.bounded_text({super()._output_const_repr(group)})"

        def visit_Concat(self, node, frame) -> None:
            # `a ~ b` goes through the budget: the parts are measured before they are joined
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    @pass_context
    def loop_steps(context, iterable):
        budget = context.environment.budget
        for item in iterable:
            budget.step()
            yield item

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """ImmutableSandboxedEnvironment whose renders count steps and measure what they build (one budget per
        environment: make one per render)."""

        code_generator_class = BoundedCodeGenerator
        intercepted_binops = frozenset({"*", "+", "**", "%"})
        LOOP_FILTER = "_qconv_loop_steps"

        def __init__(self, budget: _RenderBudget, filters: dict, globals: dict, **options) -> None:
            super().__init__(finalize=self._bounded_output, **options)
            self.budget = budget
            self.globals.update(globals, range=self._bounded_range)
            self.filters.update(filters)
            for name, func in list(self.filters.items()):
                self.filters[name] = self._bounded_filter(name, func)
            self.filters[self.LOOP_FILTER] = loop_steps

        def _parse(self, source, name, filename):
            # every {% for %} iterates through loop_steps, which counts each step
            tree = super()._parse(source, name, filename)
            for loop in list(tree.find_all(nodes.For)):
                steps = nodes.Filter(loop.iter, self.LOOP_FILTER, [], [], None, None, lineno=loop.iter.lineno)
                loop.iter = steps.set_environment(self)
            return tree

        def _bounded_range(self, *args) -> range:
            numbers = range(*args)
            self.budget.step(len(numbers))
            return numbers

        def _bounded_output(self, value):
            size = _size(value, self.budget.max_chars)
            self.budget.check_chars(size, "an output")
            self.budget.write(size)
            return value

        def bounded_text(self, text: str) -> str:
            self.budget.write(len(text))
            return text

        def bounded_concat(self, parts) -> str:
            self.budget.check_chars(sum(_size(p, self.budget.max_chars) for p in parts), "a '~' concatenation")
            return "".join(str(p) for p in parts)

        def _bounded_filter(self, name, func):
            predicted = _PREDICTED_FILTER_SIZE.get(name)
            skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context/environment first

            @functools.wraps(func)
            def bounded(*args, **kwargs):
                self.budget.step()
                value = args[skip] if len(args) > skip else None
                if name in _MATERIALIZED_FILTERS and not isinstance(value, (str, list, tuple, dict)):
                    value = list(value)
                    args = (*args[:skip], value, *args[skip + 1 :])
                if predicted is not None:
                    predicted_size = predicted(self.budget.max_chars, *args[skip:], **kwargs)
                    self.budget.check_chars(predicted_size, f"the result of |{name}")
                elif name == "format":
                    self.budget.check_format(str(value), (args[skip + 1 :], kwargs))
                elif name == "sum":
                    self._charge_sum(value, kwargs.get("start", args[skip + 2] if len(args) > skip + 2 else 0))
                elif name in _STRINGIFYING_FILTERS:
                    self.budget.check_value(value, f"the value of |{name}")
                result = func(*args, **kwargs)
                self.budget.check_chars(_shallow_len(result), f"the result of |{name}")
                return result

            return bounded

        def _charge_sum(self, items, start) -> None:
            # summing lists or strings copies the running total at each item: quadratic work
            if isinstance(start, (list, tuple, str)) and isinstance(items, (list, tuple)):
                self.budget.step(len(items) * sum(_shallow_len(i) for i in items) // 2)

        def call_binop(self, context, operator, left, right):
            self.budget.step()
            both_int = isinstance(left, int) and isinstance(right, int)
            if operator == "*" and isinstance(right, int) and _shallow_len(left):
                self.budget.check_chars(_shallow_len(left) * right, "a '*' repetition")
            elif operator == "*" and isinstance(left, int) and _shallow_len(right):
                self.budget.check_chars(_shallow_len(right) * left, "a '*' repetition")
            elif operator == "*" and both_int:
                self.budget.check_int_bits(left.bit_length() + right.bit_length())
            elif operator == "**" and both_int and abs(left) > 1:
                self.budget.check_int_bits(left.bit_length() * max(right, 0))
            elif operator == "+":
                self.budget.check_chars(_shallow_len(left) + _shallow_len(right), "a '+' concatenation")
            elif operator == "%" and isinstance(left, str):
                self.budget.check_format(left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own spelling)
            __self.budget.step()
            method = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
            subject = getattr(method, "__self__", None)
            if isinstance(subject, str):
                name = getattr(method, "__name__", "")
                if name == "join" and args and not isinstance(args[0], (str, list, tuple, dict)):
                    args = (list(args[0]), *args[1:])
                if name in ("format", "format_map"):
                    __self.budget.check_format(subject, (args, kwargs))
                elif name in _PREDICTED_METHOD_SIZE:
                    predicted = _PREDICTED_METHOD_SIZE[name](__self.budget.max_chars, subject, *args, **kwargs)
                    __self.budget.check_chars(predicted, f"the result of .{name}()")
            result = super().call(__context, __obj, *args, **kwargs)
            __self.budget.check_chars(_shallow_len(result), "a call's result")
            return result

    return BoundedSandbox


def render_chat(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra,
) -> str:
    """Render `messages` ([{"role": ..., "content": ...}]) with a Jinja chat template, within the limits above;
    any failure is a one-line FormatError."""
    from jinja2.exceptions import TemplateError, TemplateSyntaxError

    variables = dict(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token
    )
    variables.update(extra)
    budget = _RenderBudget(MAX_TEMPLATE_CHARS + _size(variables, 2**62))
    env = _bounded_environment_class()(
        budget,
        filters={"tojson": _tojson},
        globals={"raise_exception": _raise, "strftime_now": lambda fmt: datetime.now().strftime(fmt)},
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
    )
    try:
        pieces, written = [], 0
        for piece in env.from_string(template).generate(**variables):
            written += len(piece)
            budget.check_chars(written, "the rendered prompt")
            pieces.append(piece)
        return "".join(pieces)
    except FormatError:
        raise
    except TemplateSyntaxError as exc:
        raise FormatError(f"chat template does not parse: line {exc.lineno}: {_one_line(exc.message)}") from exc
    except TemplateError as exc:
        raise FormatError(f"chat template does not render: {_one_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - a template may raise anything Python does (1/0, 10**-1000000)
        raise FormatError(f"chat template does not render: {type(exc).__name__}: {_one_line(exc)}") from exc


def template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages as chat templates expect them, converted as transformers' callers and llama-server do
    (common/chat.cpp): an assistant message's `tool_calls[i].function.arguments` arrives as JSON text but templates
    print it with `tojson` (Qwen's), so it is parsed into its object; a message with tool calls and no content gets
    "" (templates concatenate content). The caller's messages are not changed."""
    converted = []
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not calls:
            converted.append(message)
            continue
        message = dict(message)
        if message.get("content") is None:
            message["content"] = ""
        message["tool_calls"] = [_parsed_arguments(call, index) for call in calls]
        converted.append(message)
    return converted


def _parsed_arguments(call, message_index: int):
    function = call.get("function") if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if not isinstance(arguments, str):
        return call
    try:
        parsed = json.loads(arguments)
    except ValueError as exc:
        raise FormatError(
            f"messages[{message_index}]: a tool call's arguments are not JSON ({exc.msg} at character {exc.pos})"
        ) from None
    return {**call, "function": {**function, "arguments": parsed}}


def render_chat_for(
    template: str, tokenizer, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None
) -> str:
    """render_chat with the special tokens of a vocabulary (runtime.tokenizer.Tokenizer) as the template sees them,
    OpenAI messages converted by template_messages, and `tools` (OpenAI's list of {"type": "function", "function":
    {...}}) passed to the template as transformers' apply_chat_template passes them (None when there are none)."""

    def text(token: int) -> str:
        return tokenizer.token_text(token).decode("utf-8", errors="replace") if token >= 0 else ""

    bos = text(tokenizer.bos)
    prompt = render_chat(
        template,
        template_messages(messages),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=text(tokenizer.eos),
        tools=tools,
    )
    # a template that writes BOS itself (Gemma's) next to a vocabulary that adds it would give two: the
    # tokenizer's is kept, as llama.cpp's common/chat.cpp does
    if bos and tokenizer.add_bos and prompt.startswith(bos):
        prompt = prompt[len(bos) :]
    return prompt
