"""How every qconv command ends on a user error: one line on stderr naming the problem, exit 1, no traceback."""

from __future__ import annotations

import functools
import sys

import click

from qconv.formats.errors import FormatError


def user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FormatError as e:
            click.echo(f"qconv: error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("qconv: interrupted", err=True)
            sys.exit(130)

    return wrapper
