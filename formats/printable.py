"""Text from a user's file made safe for a terminal: control characters escaped, long values cut.

A GGUF key, a tensor name or a config value may carry "\\x1b]0;..." (an escape sequence that retitles or
rewrites the terminal); whatever qconv prints of a file goes through here.
"""

from __future__ import annotations

MAX_SHOWN = 80  # characters of a value quoted in an error message


def _escape_char(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escaped(text: str) -> str:
    """text with every non-printable character (controls, bidi overrides, line breaks) as \\x1b, \\u202e, ...;
    printable text, non-ASCII letters included, is unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def shown(value, limit: int = MAX_SHOWN) -> str:
    """A value from a file as an error message quotes it: strings escaped, anything cut to `limit` characters."""
    text = escaped(value) if isinstance(value, str) else escaped(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
