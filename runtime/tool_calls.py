"""Tool calls in Qwen's (Hermes') format: a chat template that offers `tools` asks the model to answer with
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, and those blocks become OpenAI `tool_calls`.

Text outside the blocks is the answer's content. A block whose JSON is not a call (no name, arguments not an
object, not JSON at all, never closed) stays in the content as the model wrote it, tags included, so nothing the
model said is lost. Whitespace between content and a call is dropped (the template puts newlines around each
block; they are not part of what the model meant to say).

`ToolCallStream` does the parsing for both the whole answer and a streamed one: while streaming, text from a
`<tool_call>` on is held back until its block closes, and trailing whitespace until non-space text follows, so a
streamed answer's content is exactly the content of the same answer parsed at once.
"""

from __future__ import annotations

import json
import re

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_USES_TOOLS = re.compile(r"\btools\b")


def template_has_tool_calls(template: str | None) -> bool:
    """Whether a chat template defines tool calls in the format parsed here: it renders the request's `tools` and
    tells the model to answer with `<tool_call>` blocks (Qwen 2.5 / Qwen 3, Hermes, SmolLM3)."""
    return bool(template) and TOOL_CALL_OPEN in template and _USES_TOOLS.search(template) is not None


def openai_tool_call(block: str, call_id: str) -> dict | None:
    """The OpenAI tool call a block's inner text names, or None when it is not `{"name": str, "arguments": {...}}`
    (arguments may also come as a string holding a JSON object; missing arguments are an empty object)."""
    try:
        call = json.loads(block)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    text = json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": call["name"], "arguments": text}}


def _partial_open_at_end(text: str) -> int:
    """Length of the longest tail of `text` that could begin `<tool_call>` (0 when none)."""
    for length in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-length:]):
            return length
    return 0


class ToolCallStream:
    """Splits generated text into content and tool calls as it arrives.

    feed(piece) returns the content that can be shown now; finish() returns the content held back at the end and
    the tool calls found, each `{"id", "type": "function", "function": {"name", "arguments": JSON text}}` with ids
    `id_prefix + index` (pass something unique per request as the prefix)."""

    def __init__(self, id_prefix: str = "call_") -> None:
        self.id_prefix = id_prefix
        self.tool_calls: list[dict] = []
        self._held = ""  # outside a block: text not yet emitted; inside: the block from its opening tag on
        self._held_space = ""  # outside a block: whitespace before _held's block (or end), dropped before a call
        self._in_block = False
        self._after_call = False  # whitespace right after a parsed call is dropped

    def feed(self, piece: str) -> str:
        self._held += piece
        emitted = []
        while True:
            if self._in_block:
                end = self._held.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return "".join(emitted)
                block, self._held = self._held[: end + len(TOOL_CALL_CLOSE)], self._held[end + len(TOOL_CALL_CLOSE) :]
                self._in_block = False
                call = openai_tool_call(block[len(TOOL_CALL_OPEN) : -len(TOOL_CALL_CLOSE)], self._next_id())
                if call is not None:
                    self.tool_calls.append(call)
                    self._held_space = ""
                    self._after_call = True
                else:
                    emitted.append(self._take_space() + block)
                continue
            if self._after_call:
                stripped = self._held.lstrip()
                if not stripped:
                    self._held = ""
                    return "".join(emitted)
                self._held, self._after_call = stripped, False
            start = self._held.find(TOOL_CALL_OPEN)
            if start >= 0:
                before, self._held = self._held[:start], self._held[start:]
                emitted.append(self._emit_up_to_space(before))
                self._in_block = True
                continue
            keep = _partial_open_at_end(self._held)
            ready, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
            emitted.append(self._emit_up_to_space(ready))
            return "".join(emitted)

    def finish(self) -> tuple[str, list[dict]]:
        """The content still held (an unclosed block comes back as text) and every tool call found."""
        tail = "" if self._after_call else self._take_space() + self._held
        self._held, self._in_block, self._after_call = "", False, False
        return tail, self.tool_calls

    def _next_id(self) -> str:
        return f"{self.id_prefix}{len(self.tool_calls)}"

    def _take_space(self) -> str:
        space, self._held_space = self._held_space, ""
        return space

    def _emit_up_to_space(self, text: str) -> str:
        """Emit text up to its trailing whitespace, which waits: it is dropped if a call comes next."""
        body = text.rstrip()
        if not body:
            self._held_space += text
            return ""
        out = self._take_space() + body
        self._held_space = text[len(body) :]
        return out


def parse_tool_calls(text: str, id_prefix: str = "call_") -> tuple[str, list[dict]]:
    """(content, tool_calls) of a whole generated answer; content is the text itself when there is no call."""
    stream = ToolCallStream(id_prefix)
    content = stream.feed(text)
    tail, calls = stream.finish()
    return content + tail, calls
