"""The user-facing error types. Every one renders as a single line; the CLIs turn any
:class:`AvmatchError` into ``Error: <line>`` with exit status 1, and anything else is a bug
that keeps its traceback.

All of them pickle (they cross process boundaries from build workers): each stores its
constructor arguments in ``args`` so ``pickle`` can rebuild it.
"""

from __future__ import annotations

from pathlib import Path


def one_line(text) -> str:
    return " ".join(str(text).split())


class AvmatchError(Exception):
    """Base of every error caused by the user's input, files or settings (not a bug)."""

    def __init__(self, message: str):
        super().__init__(one_line(message))

    def __str__(self) -> str:
        return one_line(super().__str__())


class InputError(AvmatchError):
    """A media or protocol file that cannot be used. str() is one line: `PATH: reason`.
    A build records it as a reject and goes on."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = one_line(reason)
        Exception.__init__(self, self.path, self.reason)  # args rebuild it when unpickled

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def to_record(self) -> dict:
        return {"path": self.path, "reason": self.reason}


class DecoderCrashError(AvmatchError):
    """The decoder itself failed (killed by a signal, crashed, out of memory), not the file:
    the input may be good, so it is never recorded as a reject. A build fails that shard
    without marking it done, so that a re-run rebuilds it."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = one_line(reason)
        Exception.__init__(self, self.path, self.reason)

    def __str__(self) -> str:
        return f"{self.path}: decoder failed ({self.reason}); not recorded as a bad file, re-run to retry"


class UnsafeInputError(AvmatchError):
    """A shard, tuple directory or checkpoint that is not safe to read (pickle members,
    names leaving their directory, URL schemes, tampered checksums)."""


def check_readable_file(path: Path) -> None:
    """Fail early, with a plain reason, on what decoders would report obscurely (a name the
    OS refuses, such as a component over 255 bytes, is a bad file too, not a crash)."""
    try:
        if not path.exists():
            raise InputError(path, "file not found")
        if not path.is_file():
            raise InputError(path, "not a regular file")
        size = path.stat().st_size
    except OSError as exc:  # ENAMETOOLONG, EACCES on a parent folder, ...
        raise InputError(path, f"cannot access the file ({exc.strerror or type(exc).__name__})") from None
    if size == 0:
        raise InputError(path, "empty file")
