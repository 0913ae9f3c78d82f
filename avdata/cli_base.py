"""The one place that turns user errors into CLI errors, shared by the avdata and avtrain CLIs.

Every user-facing error derives from :class:`avdata.errors.AvmatchError`; a command wrapped in
:func:`user_errors` prints it as ``Error: <one line>`` and exits 1. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import functools

import click

from avdata.errors import AvmatchError, one_line

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def user_errors(command):
    """Decorator for a Click command callback: AvmatchError -> one-line ClickException."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AvmatchError as exc:
            raise click.ClickException(one_line(exc) or type(exc).__name__) from None

    return wrapper
