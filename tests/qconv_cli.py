"""Running `qconv` commands in-process and checking their user errors, for the CLI tests."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from qconv.converter.cli import main


def run(*args) -> tuple[int, str]:
    """(exit code, stdout and stderr) of `qconv ARGS...`."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def assert_user_error(code: int, output: str, out: Path | None, *fragments, absent=()) -> None:
    """Exit 1 with one line `qconv: error: ...` holding every fragment and none of `absent`, no traceback; and, when
    the command had an output `out`, neither it nor a temporary of it left behind."""
    assert code == 1, output
    # the message is the one line left once the progress bar (on stderr, cleared with \r) is set aside
    lines = [line for line in output.splitlines() if line.strip() and not line.strip().startswith("converting")]
    assert len(lines) == 1 and lines[0].startswith("qconv: error:"), output
    for fragment in fragments:
        assert str(fragment) in lines[0], output
    for text in absent:
        assert text not in output, output
    assert "Traceback" not in output
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}*")), "a temporary file was left behind"
