"""How every qconv command ends on a user error: one line on stderr naming the problem, exit 1, no traceback; and
on Ctrl-C or SIGTERM, with the temporary outputs removed (the writers' `finally` blocks run) and a non-zero exit."""

from __future__ import annotations

import functools
import signal
import sys
import threading

import click

from qconv.formats.errors import FormatError
from qconv.formats.printable import escaped


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C's KeyboardInterrupt is, so that it unwinds the same way."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def stop_on_sigterm() -> None:
    """Handle SIGTERM like SIGINT (Python's default for SIGTERM kills the process before any cleanup runs)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FormatError as e:
            click.echo(f"qconv: error: {escaped(str(e))}", err=True)  # one line, no terminal controls from files
            sys.exit(1)
        except Terminated:
            click.echo("qconv: terminated", err=True)
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            click.echo("qconv: interrupted", err=True)
            sys.exit(128 + signal.SIGINT)

    return wrapper
