"""One exception type for every bad input: it renders as a single line naming the file."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A media or protocol file that cannot be used. str() is one line: `PATH: reason`."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")

    def to_record(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def check_readable_file(path: Path) -> None:
    """Fail early, with a plain reason, on what decoders would report obscurely."""
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
